"""Admission: whether a receiver takes a request, decided before it reads or decodes it.

Two checks, both answered with the retryable refusal (HTTP 503 + Retry-After, gRPC UNAVAILABLE +
RetryInfo), so clients back off and nothing is lost:

- **memory pressure**: the memory limiter measures every process of the pipeline (its own and the
  receiver workers') and sets one byte of shared memory that the receivers in every process read
  before they take a request.  (Refusing only in the pipeline process, after a worker has read and
  decoded a request, let 24 concurrent 15 MiB requests take the workers to 4.3 + 4.9 GiB.)
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


class Admission:
    """The memory limiter's verdict, shared with the receiver workers (pass ``shared`` to them)."""

    def __init__(self, shared: Any = None):
        # RawValue: one byte (refusing) and one double (retry after, seconds); no lock is needed for a
        # flag a single writer sets.  From the spawn context, so spawned workers can inherit it.
        ctx = multiprocessing.get_context("spawn")
        self.shared = shared if shared is not None else (ctx.RawValue("b", 0), ctx.RawValue("d", 1.0))
        self._refusing: set[str] = set()  # which limiters refuse (one per pipeline may run)

    def refuse(self, refusing: bool, retry_after: float = 1.0, source: str = "") -> None:
        (self._refusing.add if refusing else self._refusing.discard)(source)
        self.shared[1].value = retry_after
        self.shared[0].value = 1 if self._refusing else 0

    @property
    def refusing(self) -> bool:
        return bool(self.shared[0].value)

    def check(self) -> None:
        if self.shared[0].value:
            raise RefusedError("data refused due to high memory usage (memory_limiter)", self.shared[1].value)


class InflightBytes:
    """Request bytes this process holds; ``admit`` refuses beyond ``limit`` (one request is always
    admitted when nothing else is in flight, so a limit below the largest request cannot wedge)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
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

    def _take(self, nbytes: int, held: int) -> None:
        if self.limit is None:
            return
        with self._lock:
            if self.used > held and self.used + nbytes > self.limit:
                raise RefusedError(f"too much data in flight in this receiver ({self.used // _MIB} MiB of requests "
                                   f"being processed, limit {self.limit // _MIB} MiB): try again", 1.0)
            self.used += nbytes


class Ticket:
    """What one admitted request holds; it grows when the request turns out larger than announced
    (a gzip body inflating), and may be refused then."""

    def __init__(self, inflight: InflightBytes):
        self._inflight = inflight
        self.held = 0

    def grow(self, nbytes: int) -> None:
        if nbytes > 0:
            self._inflight._take(nbytes, self.held)
            self.held += nbytes
