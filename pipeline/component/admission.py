"""Admission: whether a receiver takes a request, decided before it reads or decodes it.

Two checks, both answered with the retryable refusal (HTTP 503 + Retry-After, gRPC UNAVAILABLE +
RetryInfo), so clients back off and nothing is lost:

- **memory pressure**: the memory limiter measures every process of the pipeline (its own and the
  receiver workers') and sets a level in shared memory that the receivers in every process read
  before they take a request.  (Refusing only in the pipeline process, after a worker has read and
  decoded a request, let 24 concurrent 15 MiB requests take the workers to 4.3 + 4.9 GiB.)  The limiter
  also says how many bytes the requests in flight in each process may take (what it saw left under
  its refusing line, divided among the processes), so a burst between two checks cannot carry the
  pipeline past its limit.  Below the soft limit requests are taken within that room (``ACCEPT``);
  over it one request at a time per process, within that room (``ONE_AT_A_TIME``); near the limit,
  or on crossing the soft limit until what was in flight drains, none (``REFUSE``).
- **bytes in flight** per process: the requests this process is reading, decoding and committing
  may hold at most ``limit`` bytes of body between them (the Collector's admission control:
  ``request_limit_mib``), so the memory between two limiter checks is bounded too.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent_sre.pipeline.component.errors import RefusedError

_MIB = 1 << 20


ACCEPT, ONE_AT_A_TIME, REFUSE = 0, 1, 2  # admission levels: under the soft limit, over it, near the limit


class Admission:
    """The memory limiter's verdict, shared with the receiver workers (pass ``shared`` to them)."""

    def __init__(self, shared: Any = None):
        # RawValues: the level (one byte), retry after (seconds) and the bytes the requests in flight may
        # take in each process (-1: no bound); no lock is needed for values a single writer sets.  From
        # the spawn context, so spawned workers can inherit them.
        ctx = multiprocessing.get_context("spawn")
        self.shared = shared if shared is not None else (ctx.RawValue("b", 0), ctx.RawValue("d", 1.0),
                                                         ctx.RawValue("d", -1.0))
        self._levels: dict[str, tuple[int, float]] = {}  # per limiter (one per pipeline may run): level, room

    def set_level(self, level: int, retry_after: float = 1.0, source: str = "", room: float | None = None) -> None:
        """This limiter's level and the bytes the requests in flight in each process may take (None: no
        bound); the highest level of every limiter applies, and the least room."""
        self._levels[source] = (level, -1.0 if room is None else max(room, 0.0))
        if level == ACCEPT and room is None:
            del self._levels[source]
        rooms = [r for _, r in self._levels.values() if r >= 0]
        self.shared[1].value = retry_after
        self.shared[2].value = min(rooms) if rooms else -1.0
        self.shared[0].value = max((lv for lv, _ in self._levels.values()), default=ACCEPT)

    def refuse(self, refusing: bool, retry_after: float = 1.0, source: str = "") -> None:
        self.set_level(REFUSE if refusing else ACCEPT, retry_after, source)

    @property
    def level(self) -> int:
        return int(self.shared[0].value)

    @property
    def refusing(self) -> bool:
        return self.level == REFUSE

    def check(self) -> tuple[float | None, bool]:
        """Raise at REFUSE; else (the bytes the requests in flight here may take, or None; whether only
        one request at a time is taken)."""
        level = self.shared[0].value
        if level == REFUSE:
            raise RefusedError("data refused due to high memory usage (memory_limiter)", self.shared[1].value)
        room = self.shared[2].value
        return (None if room < 0 else room), level == ONE_AT_A_TIME


class InflightBytes:
    """Request bytes this process holds; ``admit`` refuses beyond ``limit`` (one request is always
    admitted when nothing else is in flight, so a limit below the largest request cannot wedge)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.requests = 0  # admitted requests in flight
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, nbytes: int) -> Iterator[Ticket]:
        ticket = Ticket(self)
        ticket.grow(nbytes)
        try:
            yield ticket
        finally:
            with self._lock:
                self.used -= ticket.held
                self.requests -= ticket.counted

    def _take(self, nbytes: int, ticket: Ticket, room: float | None = None, alone: bool = False) -> None:
        """Hold ``nbytes`` more for ``ticket``.  Within ``limit``, past which only a request alone in
        flight here is taken (so a limit below the largest request cannot wedge); within ``room`` (what
        the memory limiter saw left under its line), past which none is taken at ONE_AT_A_TIME (``alone``:
        one request at a time, over the soft limit) and only one alone otherwise."""
        with self._lock:
            others = self.requests - ticket.counted
            after = self.used + nbytes
            if alone and others > 0:
                raise RefusedError("data refused due to high memory usage (memory_limiter): one request at a time "
                                   f"while the pipeline is over its soft limit ({others} in flight here)", 1.0)
            if room is not None and after > room and (alone or others > 0):
                raise RefusedError(f"data refused due to high memory usage (memory_limiter): {after / _MIB:.1f} MiB "
                                   f"decoded in flight here would pass the {room / _MIB:.1f} MiB left under the limit",
                                   1.0)
            if self.limit is not None and others > 0 and after > self.limit:
                raise RefusedError(f"too much data in flight in this receiver ({self.used // _MIB} MiB of requests "
                                   f"being processed, limit {self.limit // _MIB} MiB): try again", 1.0)
            self.used = after
            if not ticket.counted:
                self.requests += 1
                ticket.counted = 1


class Ticket:
    """What one admitted request holds; it grows when the request turns out larger than announced
    (a gzip body inflating), and may be refused then."""

    def __init__(self, inflight: InflightBytes):
        self._inflight = inflight
        self.held = 0
        self.counted = 0  # 1 once counted among the requests in flight

    def grow(self, nbytes: int, room: float | None = None, alone: bool = False) -> None:
        if nbytes > 0:
            self._inflight._take(nbytes, self, room, alone)
            self.held += nbytes
