"""Circuit breakers, clock-free: closed → open → half-open → closed (or open again).

    closed     every call passes.  ``failure_threshold`` failed calls within ``window`` open it.
    open       the agent (or its tool) should not call: decision ``circuit_open`` until
               ``recovery_timeout`` has passed, then half-open.
    half_open  up to ``half_open_max_calls`` probe calls are let through; a failed probe opens it
               again, ``success_threshold`` successful probes close it.

Calls are the agent's spans as they are committed (``record``: end times and failed flags of one
batch, in end-time order): the failure window is measured on the spans' end times, the recovery
timeout on the clock (``tick``).  In the closed state only failures matter, so a batch without
failures costs one numpy test; the search for the point where the threshold is reached is
vectorised.  Calls seen while open are ignored (they were made before or despite the decision);
in half-open, calls that ended since it began are the probes.

Shared by a fleet (``fleet``: a ``FleetBreaker``, e.g. ``SharedState.breaker(agent, tool)`` on Redis):
failures are counted over every pipeline's (a sorted set trimmed to the window, so the run that opens
the breaker may span pipelines), every transition is published, and a pipeline adopts a later
transition made elsewhere before it records calls (``sync``).  When the fleet does not answer, the
breaker counts its own failures as without a fleet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5
    window_s: float = 60.0
    recovery_timeout_s: float = 30.0
    half_open_max_calls: int = 3
    success_threshold: int = 2

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_max_calls < 1 or self.success_threshold < 1:
            raise ValueError("failure_threshold, half_open_max_calls and success_threshold must be >= 1")
        if self.success_threshold > self.half_open_max_calls:
            raise ValueError("success_threshold cannot exceed half_open_max_calls: the breaker could never close")


@dataclass(frozen=True)
class Transition:
    old: str
    new: str
    at: float  # Unix time (the clock)
    reason: str


class FleetBreaker(Protocol):
    """One breaker's state shared by the fleet (``pipeline/storage/shared_state.py``)."""

    def failures(self, end_ns: np.ndarray, window_s: float) -> np.ndarray | None: ...
    def clear_failures(self) -> None: ...
    def publish(self, state: str, since: float, open_until: float | None, ttl_s: float, reason: str = "") -> None: ...
    def read(self) -> dict | None: ...


@dataclass
class CircuitBreaker:
    settings: BreakerSettings
    state: str = CLOSED
    since: float = 0.0  # when the current state began (the clock)
    open_until: float | None = None
    failures: deque = field(default_factory=deque)  # end_ns of recent failures (closed state)
    probes: int = 0  # calls seen in half-open
    successes: int = 0
    fleet: FleetBreaker | None = None

    def record(self, end_ns: np.ndarray, failed: np.ndarray, now: float) -> list[Transition]:
        """Feed one batch of calls (sorted by end time); returns the transitions it caused."""
        out = self.sync(now)
        i = 0
        while i < len(end_ns):
            if self.state == CLOSED:
                i = self._closed(end_ns, failed, i, now, out)
            elif self.state == HALF_OPEN:
                i = self._half_open(end_ns, failed, i, now, out)
            else:
                break  # open: calls are ignored until the recovery timeout
        return out

    def _closed(self, end_ns: np.ndarray, failed: np.ndarray, i: int, now: float, out: list) -> int:
        fails = end_ns[i:][failed[i:]]
        if not len(fails):
            return len(end_ns)
        n, window = self.settings.failure_threshold, int(self.settings.window_s * 1e9)
        # Sorted: a late batch can hold failures from before the ones kept (a run of old ones alone
        # would have opened the breaker already, so any run found includes a new failure).  With a
        # fleet, the fleet's failures within the window (ours included), else our own.
        shared = self.fleet.failures(fails, self.settings.window_s) if self.fleet is not None else None
        times = shared if shared is not None and len(shared) else \
            np.sort(np.concatenate([np.fromiter(self.failures, np.int64, len(self.failures)), fails]))
        # the first failure that closes a run of n failures within the window
        ends = np.arange(n - 1, len(times))
        hit = ends[times[ends] - times[ends - (n - 1)] <= window]
        if not len(hit):
            self.failures = deque(times[times >= times[-1] - window][-(n - 1):] if n > 1 else [], maxlen=None)
            return len(end_ns)
        at_ns = times[hit[0]]
        if self.fleet is not None:
            self.fleet.clear_failures()  # they opened it: the next run starts after it closes
        self._go(OPEN, now, f"{n} failed calls within {self.settings.window_s:g}s", out,
                 now + self.settings.recovery_timeout_s)
        return i + int(np.searchsorted(end_ns[i:], at_ns, side="right"))

    def _half_open(self, end_ns: np.ndarray, failed: np.ndarray, i: int, now: float, out: list) -> int:
        start = i + int(np.searchsorted(end_ns[i:], int(self.since * 1e9), side="left"))  # probes only
        for j in range(start, len(end_ns)):  # probes are few (half_open_max_calls)
            self.probes += 1
            if failed[j]:
                self._go(OPEN, now, "a probe call failed", out, now + self.settings.recovery_timeout_s)
                return j + 1
            self.successes += 1
            if self.successes >= self.settings.success_threshold:
                self._go(CLOSED, now, f"{self.successes} probe calls succeeded", out)
                self.failures.clear()
                return j + 1
        return len(end_ns)

    def tick(self, now: float) -> list[Transition]:
        """Time-driven: open → half-open once the recovery timeout has passed."""
        out: list[Transition] = []
        if self.state == OPEN and self.open_until is not None and now >= self.open_until:
            self._go(HALF_OPEN, now, f"recovery timeout of {self.settings.recovery_timeout_s:g}s passed", out)
        return out

    def _go(self, new: str, now: float, reason: str, out: list, open_until: float | None = None) -> None:
        out.append(Transition(self.state, new, now, reason))
        self.state, self.since = new, now
        self.probes = self.successes = 0
        self.open_until = open_until if new == OPEN else None
        if self.fleet is not None:
            ttl = self.settings.recovery_timeout_s + self.settings.window_s + 3600
            self.fleet.publish(new, now, self.open_until, ttl, reason)

    def sync(self, now: float) -> list[Transition]:
        """Adopt the fleet's transition of this breaker if it is later than ours (another pipeline opened
        or closed it); its transition, or nothing."""
        remote = self.fleet.read() if self.fleet is not None else None
        if remote is None or remote["since"] <= self.since or remote["state"] == self.state:
            return []
        t = Transition(self.state, remote["state"], now,
                       f"{remote.get('reason') or remote['state']} (seen by pipeline {remote.get('by', '?')})")
        self.state, self.since, self.open_until = remote["state"], remote["since"], remote["open_until"]
        self.probes = self.successes = 0
        if self.state == CLOSED:
            self.failures.clear()
        return [t]

    def probes_left(self) -> int:
        return max(self.settings.half_open_max_calls - self.probes, 0) if self.state == HALF_OPEN else 0

    def blocks(self) -> bool:
        """Whether calls should not be made now: open, or half-open with every probe call used."""
        return self.state == OPEN or (self.state == HALF_OPEN and self.probes_left() == 0)
