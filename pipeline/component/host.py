"""What a running component can reach: shared HTTP endpoints, self-telemetry, the event bus, the
decisions board, and its peers' capabilities by type and id (component/capabilities.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from agent_sre.pipeline.component.admission import Admission
from agent_sre.pipeline.component.capabilities import MemoryLimit
from agent_sre.pipeline.component.decisions import DecisionBoard
from agent_sre.pipeline.component.events import EventBus
from agent_sre.pipeline.component.httpserver import HttpServers
from agent_sre.pipeline.component.telemetry import Telemetry

if TYPE_CHECKING:
    from agent_sre.pipeline.component import Component, ComponentID

T = TypeVar("T")


class CapabilityError(LookupError):
    """A capability a component needs is not provided (or ambiguous without an id)."""


@dataclass
class Host:
    telemetry: Telemetry
    http: HttpServers = field(default_factory=HttpServers)
    components: dict[str, Component] = field(default_factory=dict)  # "exporters::duckdb" -> component
    ready: bool = False
    events: EventBus = field(default_factory=EventBus)  # derived events: alerts, budgets, decisions, ...
    decisions: DecisionBoard = field(init=False)  # per-agent decisions from cost budgets and breakers
    admission: Admission = field(default_factory=Admission)  # the memory limiter's verdict, for receivers
    memory_limit_bytes: int | None = None  # the smallest memory limiter's limit_mib (None: no limiter)
    memory_limits: list[MemoryLimit] = field(default_factory=list)  # the memory limiters (memory_headroom)

    _capabilities: dict[type, dict[str, object]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.decisions = DecisionBoard(self.events)
        closed = self.telemetry.http_connections_closed
        self.http.count_closed = lambda endpoint, reason: closed.labels(endpoint, reason).inc()

    def memory_share(self, fraction: float, default: int, floor: int = 1) -> int:
        """A cache's bound: ``default``, or ``fraction`` of the pipeline's memory limit when that is less,
        but not under ``floor`` (what the cache needs to work at all).  The loop's caches are sized for a
        pipeline of ~1 GiB (the memory limiter's default); under a small limit (a 256 MiB sidecar) they
        held the pipeline over its soft limit after one burst (issue #11's soak), so a cache whose size
        is not set in the config shrinks with the limit."""
        if self.memory_limit_bytes is None:
            return default
        return min(default, max(floor, int(self.memory_limit_bytes * fraction)))

    def memory_headroom(self) -> int | None:
        """What the pipeline may still grow by before a memory limiter refuses data (its soft limit), as
        the limiters last measured it (negative: over it already); None without a memory limiter.  For
        memory taken for a while on demand, as an ad hoc query's extra pool: a share of the limit fits an
        idle pipeline, not one that holds most of its limit already, and a query must not make the
        limiter refuse ingest (issue #11)."""
        if not self.memory_limits:
            return None
        return min(m.memory_headroom_bytes() for m in self.memory_limits)

    def provide(self, capability: type[T], id_: ComponentID | str, provider: T) -> None:
        """``provider`` offers ``capability`` under its component id (called from its start)."""
        with self._lock:
            self._capabilities.setdefault(capability, {})[str(id_)] = provider

    def withdraw(self, capability: type, id_: ComponentID | str) -> None:
        with self._lock:
            self._capabilities.get(capability, {}).pop(str(id_), None)

    def all(self, capability: type[T]) -> list[T]:
        """Every provider of ``capability``, in the order they started."""
        with self._lock:
            return list(self._capabilities.get(capability, {}).values())  # type: ignore[arg-type]

    def providers(self, capability: type[T]) -> dict[str, T]:
        """Every provider of ``capability`` by component id, in the order they started."""
        with self._lock:
            return dict(self._capabilities.get(capability, {}))  # type: ignore[arg-type]

    def get(self, capability: type[T], id_: ComponentID | str = "", user: str = "") -> T:
        """The provider of ``capability`` with this id, or the only one when ``id_`` is empty;
        ``CapabilityError`` naming ``user`` (the asking component) otherwise."""
        with self._lock:
            found = self._capabilities.get(capability, {})
            if id_:
                if str(id_) in found:
                    return found[str(id_)]  # type: ignore[return-value]
                raise CapabilityError(f"{user}: no {capability.__name__} named {str(id_)!r} is running "
                                      f"(running: {sorted(found) or 'none'})")
            if len(found) == 1:
                return next(iter(found.values()))  # type: ignore[return-value]
        raise CapabilityError(f"{user}: needs exactly one {capability.__name__}, found "
                              f"{len(found)}{'; name one with its id' if found else ''}")
