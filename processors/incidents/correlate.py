"""Incidents from signals, clock-free: correlation by agent and time, dedup, priority, lifecycle.

A signal is one event about one agent (an SLO alert, a budget at its kill point, a kill decision,
a cost anomaly, a policy violation, a circuit that opened), with a priority P1–P4 from its type
(``DEFAULT_PRIORITIES``).  A firing signal joins the agent's incident that is not resolved and
either still has a firing signal or had one within ``correlation_window``; otherwise, if its
priority is at least ``open_at`` (P3 by default), it opens a new incident; weaker signals only
join.  The same signal again (same fingerprint, name and state) within ``dedup_window`` is
counted, not added.  A resolved signal updates the incident that holds it.

An incident's priority is the highest of its signals (never lowered), raised to P1 when signals
of two different families are firing at P2 or above at the same time (an SLO page and an open
circuit; a budget at its kill point and the kill decision are one family).
Its lifecycle is open → acknowledged → investigating → mitigated → resolved (steps may be
skipped, never taken back), each step with who, when and why.  With ``auto_resolve`` it is
resolved by ``agent-sre`` once every signal it holds has resolved and its point signals (policy
violations, which never resolve) are older than the correlation window.

Every change is returned as log entries (``Entry``) for the caller to store and announce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_sre.pipeline.component.errors import TransitionError  # noqa: F401 - raised here, re-exported

STATES = ("open", "acknowledged", "investigating", "mitigated", "resolved")
POINT_SIGNALS = ("policy_violation",)  # signals that have no resolve of their own
# Signals of one family tell one story (a budget at its kill point and the kill decision it caused).
FAMILIES = {"slo_page": "slo", "slo_ticket": "slo", "budget_exhausted": "budget", "budget_step": "budget",
            "kill": "budget", "throttle": "budget", "anomaly_critical": "anomaly", "anomaly_warning": "anomaly",
            "policy_violation": "policy", "circuit_open": "circuit"}
DEFAULT_PRIORITIES = {
    "slo_page": 2, "slo_ticket": 3, "budget_exhausted": 2, "budget_step": 4, "kill": 2, "throttle": 4,
    "anomaly_critical": 3, "anomaly_warning": 4, "policy_violation": 3, "circuit_open": 2,
}


@dataclass(frozen=True)
class Signal:
    time_ns: int
    agent_id: str
    type: str  # a key of DEFAULT_PRIORITIES
    kind: str  # the event kind it came from (alert, budget, decision, anomaly, policy, circuit)
    name: str
    fingerprint: str
    state: str  # firing | resolved
    priority: int
    summary: str


@dataclass
class SignalState:
    type: str
    kind: str
    name: str
    state: str
    priority: int
    last_ns: int


@dataclass(frozen=True)
class Entry:
    """One line of an incident's log: a signal, a state change, or a priority change."""

    incident_id: str
    time_ns: int
    entry: str  # signal | state | priority
    kind: str = ""
    name: str = ""
    state: str = ""
    priority: str = ""
    fingerprint: str = ""
    summary: str = ""
    who: str = ""
    why: str = ""


@dataclass
class Incident:
    id: str
    agent_id: str
    title: str
    priority: int
    state: str
    opened_ns: int
    updated_ns: int
    last_signal_ns: int
    resolved_ns: int | None = None
    signal_count: int = 0
    duplicates: int = 0
    signals: dict[str, SignalState] = field(default_factory=dict)
    event_ns: int = 0  # the time of its last incident event: each next one strictly later

    def stamp_event(self, time_ns: int) -> int:
        """The time of its next incident event: ``time_ns``, or just after its last event when a late
        signal carried an older time -- a store that keeps an incident's newest event by time (the fleet's)
        must find the latest one.  ``updated_ns`` follows."""
        self.event_ns = max(time_ns, self.event_ns + 1)
        self.updated_ns = max(self.updated_ns, self.event_ns)
        return self.event_ns

    @property
    def label(self) -> str:
        return f"P{self.priority}"

    def firing(self) -> bool:
        return any(s.state == "firing" and s.type not in POINT_SIGNALS for s in self.signals.values())

    def row(self) -> dict:
        return {"id": self.id, "agent_id": self.agent_id, "title": self.title, "priority": self.label,
                "state": self.state, "opened_ns": self.opened_ns, "updated_ns": self.updated_ns,
                "resolved_ns": self.resolved_ns, "last_signal_ns": self.last_signal_ns,
                "signals": self.signal_count, "duplicates": self.duplicates}



class Correlator:
    def __init__(self, correlation_window_s: float = 300, dedup_window_s: float = 600, open_at: int = 3,
                 auto_resolve: bool = True, id_prefix: str = "INC", next_number: int = 1):
        self.window_ns = int(correlation_window_s * 1e9)
        self.dedup_ns = int(dedup_window_s * 1e9)
        self.open_at = open_at
        self.auto_resolve = auto_resolve
        self.id_prefix = id_prefix
        self.next_number = next_number
        self.active: dict[str, Incident] = {}  # not resolved, by id
        self._closed: dict[str, Incident] = {}  # resolved since the caller last took them
        self.dirty: set[str] = set()  # incidents changed without a log entry (a duplicate counted)

    def take(self, incident_id: str) -> Incident | None:
        """The incident as it is now (an active one, or one just resolved, which is then let go)."""
        return self.active.get(incident_id) or self._closed.pop(incident_id, None)

    def _find(self, signal: Signal) -> Incident | None:
        for inc in sorted(self.active.values(), key=lambda i: -i.opened_ns):
            if inc.agent_id != signal.agent_id:
                continue
            if signal.fingerprint in inc.signals:
                return inc
            if signal.state == "firing" and (inc.firing() or signal.time_ns - inc.last_signal_ns <= self.window_ns):
                return inc
        return None

    def add(self, signal: Signal) -> list[Entry]:
        inc = self._find(signal)
        if inc is None:
            if signal.state != "firing" or signal.priority > self.open_at:
                return []  # a resolve of nothing we hold, or too weak to open an incident
            inc = self._open(signal)
            entries = [Entry(inc.id, signal.time_ns, "state", state="open", priority=inc.label, who="agent-sre",
                             why=f"opened by {signal.type}: {signal.summary}")]
        else:
            entries = []
        known = inc.signals.get(signal.fingerprint)
        if (known is not None and (known.name, known.state) == (signal.name, signal.state)
                and signal.time_ns - known.last_ns < self.dedup_ns):
            inc.duplicates += 1
            self.dirty.add(inc.id)
            known.last_ns = max(known.last_ns, signal.time_ns) if signal.type in POINT_SIGNALS else known.last_ns
            return entries
        inc.signals[signal.fingerprint] = SignalState(signal.type, signal.kind, signal.name, signal.state,
                                                      signal.priority, signal.time_ns)
        inc.signal_count += 1
        inc.updated_ns = max(inc.updated_ns, signal.time_ns)
        if signal.state == "firing":
            inc.last_signal_ns = max(inc.last_signal_ns, signal.time_ns)
        entries.append(Entry(inc.id, signal.time_ns, "signal", signal.kind, signal.name, signal.state,
                             f"P{signal.priority}", signal.fingerprint, signal.summary))
        entries += self._reprioritise(inc, signal.time_ns)
        entries += self._maybe_resolve(inc, signal.time_ns)
        return entries

    def _open(self, signal: Signal) -> Incident:
        number = self.next_number
        self.next_number += 1
        who = signal.agent_id or "(no agent)"
        inc = Incident(f"{self.id_prefix}-{number:05d}", signal.agent_id, f"{who}: {signal.summary}"[:200],
                       signal.priority, "open", signal.time_ns, signal.time_ns, signal.time_ns)
        self.active[inc.id] = inc
        return inc

    def _reprioritise(self, inc: Incident, now_ns: int) -> list[Entry]:
        strong = {FAMILIES.get(s.type, s.type) for s in inc.signals.values() if s.state == "firing" and s.priority <= 2}
        wanted = min([inc.priority, *(s.priority for s in inc.signals.values())])
        if len(strong) >= 2:
            wanted = 1
        if wanted >= inc.priority:
            return []
        inc.priority = wanted
        why = f"signals of {' and '.join(sorted(strong))} at P2 or above" if len(strong) >= 2 else "a stronger signal"
        return [Entry(inc.id, now_ns, "priority", priority=inc.label, who="agent-sre", why=why)]

    def _maybe_resolve(self, inc: Incident, now_ns: int) -> list[Entry]:
        if not self.auto_resolve or inc.firing():
            return []
        points = [s.last_ns for s in inc.signals.values() if s.type in POINT_SIGNALS]
        if points and now_ns - max(points) <= self.window_ns:
            return []
        return self._set_state(inc, "resolved", now_ns, "agent-sre", "every signal resolved")

    def tick(self, now_ns: int) -> list[Entry]:
        """What the clock resolves: incidents whose last point signal aged out."""
        out: list[Entry] = []
        for inc in list(self.active.values()):
            out += self._maybe_resolve(inc, now_ns)
        return out

    def transition(self, incident_id: str, state: str, now_ns: int, who: str, why: str) -> list[Entry]:
        inc = self.active.get(incident_id)
        if inc is None:
            raise TransitionError(f"no open incident {incident_id!r}", 404)
        if state not in STATES:
            raise TransitionError(f"unknown state {state!r} (valid values: [{', '.join(STATES)}])")
        if STATES.index(state) <= STATES.index(inc.state):
            raise TransitionError(f"incident {incident_id} is {inc.state}; it cannot become {state}", 409)
        return self._set_state(inc, state, now_ns, who, why)

    def _set_state(self, inc: Incident, state: str, now_ns: int, who: str, why: str) -> list[Entry]:
        inc.state = state
        inc.updated_ns = max(inc.updated_ns, now_ns)
        if state == "resolved":
            inc.resolved_ns = now_ns
            del self.active[inc.id]
            self._closed[inc.id] = inc
        return [Entry(inc.id, now_ns, "state", state=state, priority=inc.label, who=who, why=why)]
