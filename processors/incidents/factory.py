"""incidents: signals correlated into incidents with a lifecycle; circuit breakers per agent (or tool).

Signals come from the event bus (``alert`` from slo, ``budget`` at the kill point, ``decision``
kill, ``anomaly``) and from committed spans (policy violations; the breakers' own transitions).
The correlation rules are in ``correlate.py``, the breaker in ``breaker.py``; this module wires
them to the pipeline, keeps their state in the store (``incidents``, ``incident_log``,
``breakers``), announces ``incident`` and ``circuit`` events, and answers ``circuit_open`` to
the decisions board while a breaker is open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import ChaosExperiments, CostReports, Incidents, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.events import event, fingerprint
from agent_sre.pipeline.pdata.maps import rows_with_key
from agent_sre.pipeline.pdata.schema import SPAN_ROLES
from agent_sre.pipeline.storage.shared_state import StateUrl
from agent_sre.processors.incidents.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSettings,
    CircuitBreaker,
    Transition,
)
from agent_sre.processors.incidents.correlate import (
    DEFAULT_PRIORITIES,
    STATES,
    Correlator,
    Entry,
    Incident,
    Signal,
    SignalState,
    TransitionError,
)
from agent_sre.processors.incidents.postmortem import postmortem_markdown

DDL = (
    "CREATE TABLE IF NOT EXISTS incidents (id VARCHAR PRIMARY KEY, agent_id VARCHAR, title VARCHAR, "
    "priority VARCHAR, state VARCHAR, opened_ns BIGINT, updated_ns BIGINT, resolved_ns BIGINT, "
    "last_signal_ns BIGINT, signals BIGINT, duplicates BIGINT)",
    "CREATE TABLE IF NOT EXISTS incident_log (incident_id VARCHAR, time_ns BIGINT, entry VARCHAR, kind VARCHAR, "
    "name VARCHAR, state VARCHAR, priority VARCHAR, fingerprint VARCHAR, summary VARCHAR, who VARCHAR, why VARCHAR)",
    "CREATE TABLE IF NOT EXISTS breakers (processor VARCHAR, agent_id VARCHAR, tool VARCHAR, state VARCHAR, "
    "since DOUBLE, open_until DOUBLE, probes BIGINT, successes BIGINT, PRIMARY KEY (processor, agent_id, tool))",
)

_PRIORITY = {"P1": 1, "P2": 2, "P3": 3, "P4": 4}
_EVENT_SEVERITY = {1: "page", 2: "page", 3: "ticket", 4: "info"}
ACTIONS = {"ack": "acknowledged", "acknowledge": "acknowledged", "investigate": "investigating",
           "mitigate": "mitigated", "resolve": "resolved"}


class BreakerConfig(ConfigModel):
    enabled: bool = True
    roles: list[str] = ["tool", "llm"]  # the spans that are calls of the agent
    per_tool: bool = False  # one breaker per (agent, tool) instead of per agent
    failure_threshold: int = Field(default=5, ge=1)
    window: Duration = Field(default="60s", gt=0)
    recovery_timeout: Duration = Field(default="30s", gt=0)
    half_open_max_calls: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=2, ge=1)

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in SPAN_ROLES]
        if bad:
            raise ValueError(f"unknown span roles {bad} (valid values: [{', '.join(SPAN_ROLES)}])")
        return v

    @model_validator(mode="after")
    def _valid(self) -> BreakerConfig:
        self.settings()  # raises ValueError with the reason
        return self

    def settings(self) -> BreakerSettings:
        return BreakerSettings(self.failure_threshold, self.window, self.recovery_timeout, self.half_open_max_calls,
                               self.success_threshold)


class IncidentsConfig(ConfigModel):
    correlation_window: Duration = Field(default="5m", gt=0)
    dedup_window: Duration = Field(default="10m", ge=0)
    open_at: str = Field(default="P3", pattern="^P[1-4]$")  # signals at this priority or higher open incidents
    priorities: dict[str, str] = {}  # signal type -> P1..P4, over DEFAULT_PRIORITIES
    auto_resolve: bool = True
    policy_violations: list[str] = ["deny", "denied", "block", "blocked", "violation", "fail", "failed"]
    breakers: BreakerConfig = BreakerConfig()
    storage: str = ""
    # Breakers shared by the fleet: redis://host:port/db (failure counts and transitions on Redis).
    state: StateUrl = ""
    state_instance: str = ""  # this pipeline in the fleet (default: the host name)


    @field_validator("priorities")
    @classmethod
    def _priorities(cls, v: dict[str, str]) -> dict[str, str]:
        for key, p in v.items():
            if key not in DEFAULT_PRIORITIES:
                raise ValueError(f"unknown signal {key!r} (valid values: [{', '.join(DEFAULT_PRIORITIES)}])")
            if p not in _PRIORITY:
                raise ValueError(f"{key}: priority must be P1, P2, P3 or P4 (got {p!r})")
        return v

    def priority(self, signal_type: str) -> int:
        return _PRIORITY[self.priorities[signal_type]] if signal_type in self.priorities \
            else DEFAULT_PRIORITIES[signal_type]


def signal_from_event(row: dict, priority: Callable[[str], int]) -> Signal | None:
    """The signal an event is, or None for events that are no incident's business."""
    kind, labels, sev = row["kind"], row["labels"], row["severity"]
    if kind == "alert":
        sig = f"slo_{sev}" if sev in ("page", "ticket") else None
    elif kind == "budget":
        sig = "budget_exhausted" if sev == "page" else "budget_step"
    elif kind == "decision":
        sig = {"kill": "kill", "throttle": "throttle", "allow": "kill"}.get(row["name"])
    elif kind == "anomaly":
        sig = "anomaly_critical" if labels.get("detector_severity") == "critical" else "anomaly_warning"
    else:
        sig = None
    if sig is None:
        return None
    return Signal(row["time_ns"], labels.get("agent_id", ""), sig, kind, row["name"], row["fingerprint"],
                  row["state"], priority(sig), row["summary"] or "")


class IncidentsProcessor(Stage):
    config: IncidentsConfig

    def __init__(self, settings, config: IncidentsConfig):
        super().__init__(settings, config)
        self.clock: Callable[[], float] = time.time
        prefix = "INC" + (f"-{settings.id.name}" if settings.id.name else "")
        self.correlator = Correlator(config.correlation_window, config.dedup_window, _PRIORITY[config.open_at],
                                     config.auto_resolve, prefix)
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}  # (agent, tool or "")
        self._not_closed: dict[str, dict[str, CircuitBreaker]] = {}  # agent -> tool -> breaker: what decides
        self._lock = threading.Lock()  # correlator and breakers
        self._publish_lock = threading.Lock()  # changes are stored and announced in the order they happened
        self._store = None
        self._host = None
        self._state = None  # SharedState with `state:`

    def _breaker(self, key: tuple[str, str]) -> CircuitBreaker:
        fleet = self._state.breaker(*key) if self._state is not None else None
        return CircuitBreaker(self.config.breakers.settings(), fleet=fleet)

    # --- lifecycle ------------------------------------------------------------------

    def _start(self, host) -> None:
        self._host = host
        self._store = host.get(SpanStore, self.config.storage, str(self.id))
        self._store.write([(sql, []) for sql in DDL])
        if self.config.state:
            from agent_sre.pipeline.storage.shared_state import SharedState

            self._state = SharedState(self.config.state, self.config.state_instance, component=str(self.id))
            self._state.bind_metrics(host.telemetry.registry)
        self._restore()
        host.events.subscribe(self._on_events, ("alert", "budget", "decision", "anomaly"))
        self._store.on_commit(self._committed)
        host.provide(Incidents, self.id, self)
        if self.config.breakers.enabled:
            host.decisions.register(str(self.id), self)

    def _shutdown(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None
        if self._host is not None:
            self._host.withdraw(Incidents, self.id)
            self._host.events.unsubscribe(self._on_events)
        if self._store is not None:
            self._store.remove_callback(self._committed)

    def _restore(self) -> None:
        read = self._store.read
        prefix = self.correlator.id_prefix + "-"
        numbers = read("SELECT max(TRY_CAST(substr(id, ?) AS BIGINT)) FROM incidents WHERE starts_with(id, ?)",
                       [len(prefix) + 1, prefix])
        self.correlator.next_number = (numbers[0][0] or 0) + 1
        for row in read("SELECT id, agent_id, title, priority, state, opened_ns, updated_ns, last_signal_ns, "
                        "signals, duplicates FROM incidents WHERE state <> 'resolved' AND starts_with(id, ?)",
                        [prefix]):
            inc = Incident(row[0], row[1], row[2], _PRIORITY[row[3]], row[4], row[5], row[6], row[7],
                           signal_count=row[8], duplicates=row[9], event_ns=row[6])  # no event after updated_ns
            self.correlator.active[inc.id] = inc
        for iid, fp, kind, name, state, priority, last in read(
                "SELECT incident_id, fingerprint, arg_max(kind, time_ns), arg_max(name, time_ns), "
                "arg_max(state, time_ns), arg_max(priority, time_ns), max(time_ns) FROM incident_log "
                "WHERE entry = 'signal' GROUP BY ALL"):
            inc = self.correlator.active.get(iid)
            if inc is not None:
                inc.signals[fp] = SignalState(_stored_type(kind, name, priority), kind, name, state,
                                              _PRIORITY[priority], last)
        settings = self.config.breakers.settings()
        for agent, tool, state, since, until, probes, successes in read(
                "SELECT agent_id, tool, state, since, open_until, probes, successes FROM breakers "
                "WHERE processor = ?", [str(self.id)]):
            self.breakers[(agent, tool)] = CircuitBreaker(settings, state, since, until, probes=probes,
                                                          successes=successes,
                                                          fleet=self._state.breaker(agent, tool) if self._state else None)
            self._index((agent, tool))

    # --- signals from events ------------------------------------------------------------

    def _on_events(self, rows: list[dict]) -> None:
        signals = [s for s in (signal_from_event(r, self.config.priority) for r in rows) if s is not None]
        if signals:
            self._apply(lambda: [e for s in signals for e in self.correlator.add(s)])

    def _apply(self, change: Callable[[], list[Entry]], extra: list[tuple[str, list]] | None = None,
               events: list[dict] | None = None) -> list[Entry]:
        """Run ``change`` on the correlator, store its entries (and ``extra`` statements) in one
        transaction, then announce them (and ``events``)."""
        with self._publish_lock:
            with self._lock:
                entries = change()
                touched = {e.incident_id for e in entries} | self.correlator.dirty
                self.correlator.dirty = set()
                incidents = [self.correlator.take(i) for i in sorted(touched)]
            # stamped before the rows are written: an event's time moves the incident's updated_ns
            announce = list(events or []) + [incident_event(inc, entries) for inc in incidents
                                             if inc is not None and _news(inc, entries)]
            statements = list(extra or [])
            statements += [("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            list(inc.row().values())) for inc in incidents if inc is not None]
            statements += [("INSERT INTO incident_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [e.incident_id, e.time_ns, e.entry, e.kind, e.name, e.state, e.priority, e.fingerprint,
                             e.summary, e.who, e.why]) for e in entries]
            if statements:
                self._store.write(statements)
            if announce:
                self._host.events.publish(announce)
        return entries

    # --- signals from spans: breakers and policy violations -------------------------------

    def _committed(self, rows: pa.Table) -> None:
        now = self.clock()
        rows = self._without_injected_faults(rows)
        policy = self._policy_signals(rows)
        transitions = self._feed_breakers(rows, now) if self.config.breakers.enabled else []
        if policy or transitions:
            self._change(policy, transitions, now)

    def _without_injected_faults(self, rows: pa.Table) -> pa.Table:
        """Spans of faults a chaos experiment injected (``chaos.fault.type``) open no breaker and raise no
        policy signal, unless a chaos processor asks for it (``feed_incidents``).  Columnar, as the
        store's replay_mask: one comparison per attribute key, and a batch without them is returned."""
        if self._host is not None and any(c.feed_incidents for c in self._host.all(ChaosExperiments)):
            return rows
        mask = rows_with_key(rows.column("attributes"), "chaos.fault.type")
        return rows if mask is None else rows.filter(pa.array(~mask))

    def _policy_signals(self, rows: pa.Table) -> list[Signal]:
        # Only the columns read here are filtered (the rows carry every attribute list).
        checks = rows.select(["span_role", "policy_decision", "agent_id", "policy_name", "end_ns"])
        checks = checks.filter(pc.fill_null(pc.equal(checks.column("span_role"), "policy_check"), False))
        if not checks.num_rows:
            return []
        hit = pc.is_in(pc.utf8_lower(checks.column("policy_decision")), pa.array(self.config.policy_violations))
        bad = checks.filter(pc.fill_null(hit, False))
        if not bad.num_rows:
            return []
        keyed = pa.table({"agent": pc.fill_null(bad.column("agent_id"), ""),
                          "policy": pc.fill_null(bad.column("policy_name"), ""), "end_ns": bad.column("end_ns")})
        out = []
        for r in keyed.group_by(["agent", "policy"]).aggregate([("end_ns", "max"), ("end_ns", "count")]).to_pylist():
            n = r["end_ns_count"]
            out.append(Signal(r["end_ns_max"], r["agent"], "policy_violation", "policy", f"policy {r['policy']}",
                              fingerprint({"kind": "policy", "agent_id": r["agent"], "policy": r["policy"]}),
                              "firing", self.config.priority("policy_violation"),
                              f"{n} policy violation{'s' if n != 1 else ''} of {r['policy'] or '(unnamed policy)'}"))
        return out

    def _feed_breakers(self, rows: pa.Table, now: float) -> list[tuple[tuple[str, str], Transition]]:
        cfg = self.config.breakers
        calls = rows.select(["span_role", "agent_id", "tool_name", "status_code", "end_ns"])
        calls = calls.filter(pc.fill_null(pc.and_(pc.is_in(calls.column("span_role"), pa.array(cfg.roles)),
                                                  pc.is_valid(calls.column("agent_id"))), False))
        if not calls.num_rows:
            return []
        tool = pc.fill_null(calls.column("tool_name"), "") if cfg.per_tool else pa.nulls(calls.num_rows, pa.string())
        key = pc.binary_join_element_wise(calls.column("agent_id"), pc.fill_null(tool, ""), "\x1f")
        key = key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key
        encoded = pc.dictionary_encode(key)
        ids = encoded.indices.to_numpy(zero_copy_only=False)
        failed = pc.fill_null(pc.equal(calls.column("status_code"), "error"), False).to_numpy(zero_copy_only=False)
        end_ns = pc.fill_null(calls.column("end_ns"), 0).to_numpy(zero_copy_only=False)
        keys = [tuple(k.split("\x1f", 1)) for k in encoded.dictionary.to_pylist()]
        out = []
        with self._lock:
            busy = {i for i, k in enumerate(keys) if k in self.breakers and self.breakers[k].state != CLOSED}
            for i in sorted(set(np.unique(ids[failed]).tolist()) | busy):  # a closed breaker needs failures
                if cfg.per_tool and not keys[i][1]:
                    continue  # a call without a tool name has no per-tool breaker
                mine = np.flatnonzero(ids == i)
                order = mine[np.argsort(end_ns[mine], kind="stable")]
                breaker = self.breakers.get(keys[i]) or self.breakers.setdefault(keys[i], self._breaker(keys[i]))
                out += [(keys[i], t) for t in breaker.record(end_ns[order], failed[order], now)]
                self._index(keys[i])
        return out

    def _index(self, key: tuple[str, str]) -> None:
        """Keep ``_not_closed`` (what decisions read) in step with one breaker (under the lock)."""
        agent, tool = key
        breaker = self.breakers.get(key)
        if breaker is not None and breaker.state != CLOSED:
            self._not_closed.setdefault(agent, {})[tool] = breaker
        elif agent in self._not_closed:
            self._not_closed[agent].pop(tool, None)
            if not self._not_closed[agent]:
                del self._not_closed[agent]

    def tick(self) -> None:
        """Every second (the decisions board): recovery timeouts, idle breakers forgotten, and incidents
        whose signals aged out."""
        now = self.clock()
        horizon = int((now - self.config.breakers.window) * 1e9)
        remote = self._state.breakers_not_closed() if self._state is not None else None
        with self._lock:
            transitions = []
            # breakers the fleet opened (or moved) elsewhere: adopted, also for agents not seen here
            mine = {(agent, tool) for agent, tools in self._not_closed.items() for tool in tools}
            for key in (set(remote) | mine) if remote is not None else ():
                b = self.breakers.get(key) or self.breakers.setdefault(key, self._breaker(key))
                transitions += [(key, t) for t in b.sync(now)]
                self._index(key)
            for agent, tools in list(self._not_closed.items()):
                for tool, b in list(tools.items()):
                    transitions += [((agent, tool), t) for t in b.tick(now)]
                    self._index((agent, tool))
            # A closed breaker whose failures are all outside the window decides nothing: forgotten.
            for key in [k for k, b in self.breakers.items()
                        if b.state == CLOSED and (not b.failures or b.failures[-1] < horizon)]:
                del self.breakers[key]
        self._change([], transitions, now)

    def _change(self, signals: list[Signal], transitions: list[tuple[tuple[str, str], Transition]],
                now: float) -> None:
        now_ns = int(now * 1e9)
        circuit_events = [circuit_event(agent, tool, t, now_ns) for (agent, tool), t in transitions]
        signals = signals + [circuit_signal(ev, self.config.priority("circuit_open")) for ev in circuit_events]
        saves = [("INSERT OR REPLACE INTO breakers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  [str(self.id), agent, tool, b.state, b.since, b.open_until, b.probes, b.successes])
                 for (agent, tool), b in ((k, self.breakers[k]) for k in {k for k, _ in transitions})]
        for (agent, tool), t in transitions:
            self.logger.warning("circuit of agent %s%s: %s -> %s (%s)", agent, f" tool {tool}" if tool else "",
                                t.old, t.new, t.reason)
        self._apply(lambda: [e for s in signals for e in self.correlator.add(s)] + self.correlator.tick(now_ns),
                    saves, circuit_events)
        if transitions and self._host is not None:
            self._host.decisions.check({agent for (agent, _), _ in transitions})

    # --- decisions ------------------------------------------------------------------------

    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision:
        with self._lock:
            mine = [(t, b) for t, b in self._not_closed.get(agent, {}).items() if not t or tool is None or t == tool]
            blocking = [(t, b) for t, b in mine if b.blocks() and (not t or t == tool)]
            circuits = [{"tool": t or None, "state": b.state, "since": b.since, "until": b.open_until,
                         "probes_left": b.probes_left()} for t, b in mine]
        if blocking:
            t, b = blocking[0]
            what = f"tool {t}" if t else "agent"
            reason = (f"circuit of {what} is open" if b.state == OPEN
                      else f"circuit of {what} is half-open and its probe calls are in flight")
            return Decision("circuit_open", reason, b.open_until, {"circuits": circuits})
        if circuits:  # half-open with probes left, or a tool's breaker when no tool was asked about
            return Decision("allow", "", None, {"circuits": circuits})
        return ALLOW

    def agents(self) -> set[str]:
        with self._lock:
            return set(self._not_closed)

    def scopes(self) -> list[tuple[str, str | None, str | None]]:
        """(agent, tool, task) decisions the board announces besides the agents': per-tool breakers."""
        with self._lock:
            return [(a, t, None) for a, tools in self._not_closed.items() for t in tools if t]

    # --- the incident API (admin extension, CLI) --------------------------------------------

    def list(self, include_resolved: bool = False, limit: int = 100) -> list[dict]:
        return incident_list(self._store.read, include_resolved, limit)

    def show(self, incident_id: str) -> dict | None:
        return incident_detail(self._store.read, incident_id)

    def transition(self, incident_id: str, action: str, who: str, why: str) -> dict:
        state = ACTIONS.get(action, action)
        if state not in STATES:
            raise TransitionError(f"unknown action {action!r} (valid values: [{', '.join(ACTIONS)}])")
        self._apply(lambda: self.correlator.transition(incident_id, state, int(self.clock() * 1e9), who, why))
        detail = self.show(incident_id)
        assert detail is not None
        return detail

    def postmortem(self, incident_id: str) -> str | None:
        budgets = [spec for c in self._host.all(CostReports) for spec in c.budget_specs()]
        self._store.sync()  # the spans acknowledged so far are part of the story
        return postmortem_markdown(self._store.read, incident_id, budgets, int(self.config.correlation_window * 1e9),
                                   int(self.clock() * 1e9))

    def describe(self) -> list[str]:
        b = self.config.breakers
        breakers = (f"; breakers per {'tool' if b.per_tool else 'agent'} on {', '.join(b.roles)} spans "
                    f"({b.failure_threshold} failures in {b.window:g}s)" if b.enabled else "")
        lines = [f"incidents: correlation {self.config.correlation_window:g}s, dedup {self.config.dedup_window:g}s"
                 + breakers]
        if self._state is not None:
            st = self._state.status()
            lines.append(f"shared breakers {st['url']} as {st['instance']}: " + (
                "fleet view" if st["available"] else
                f"UNREACHABLE ({st['last_error']}): counting this pipeline's failures only"))
        return lines



def incident_list(read: Callable[..., list[tuple]], include_resolved: bool = False, limit: int = 100) -> list[dict]:
    """The newest incidents (open ones only unless ``include_resolved``): ``GET /v1/incidents`` and
    ``agent-sre incidents list`` on a stopped pipeline's file alike."""
    where = "" if include_resolved else "WHERE state <> 'resolved'"
    cols = ("id", "agent_id", "title", "priority", "state", "opened_ns", "updated_ns", "resolved_ns",
            "last_signal_ns", "signals", "duplicates")
    return [dict(zip(cols, r, strict=True)) for r in read(
        f"SELECT {', '.join(cols)} FROM incidents {where} ORDER BY opened_ns DESC LIMIT ?", [limit])]


def incident_detail(read: Callable[..., list[tuple]], incident_id: str) -> dict | None:
    cols = ("id", "agent_id", "title", "priority", "state", "opened_ns", "updated_ns", "resolved_ns",
            "last_signal_ns", "signals", "duplicates")
    rows = read(f"SELECT {', '.join(cols)} FROM incidents WHERE id = ?", [incident_id])
    if not rows:
        return None
    log_cols = ("time_ns", "entry", "kind", "name", "state", "priority", "fingerprint", "summary", "who", "why")
    log = [dict(zip(log_cols, r, strict=True)) for r in read(
        f"SELECT {', '.join(log_cols)} FROM incident_log WHERE incident_id = ? ORDER BY time_ns, rowid",
        [incident_id])]
    return {**dict(zip(cols, rows[0], strict=True)), "log": log}


def _stored_type(kind: str, name: str, priority: str) -> str:
    """A stored signal's type, from its log entry (for ageing and families after a restart)."""
    if kind == "policy":
        return "policy_violation"
    if kind == "circuit":
        return "circuit_open"
    if kind == "alert":
        return "slo_page" if priority in ("P1", "P2") else "slo_ticket"
    if kind == "decision":
        return "kill" if name in ("kill", "allow") else "throttle"
    if kind == "budget":
        return "budget_exhausted" if priority in ("P1", "P2") else "budget_step"
    return "anomaly_critical" if priority in ("P1", "P2", "P3") else "anomaly_warning"


def _news(inc: Incident, entries: list[Entry]) -> bool:
    """Whether this change is worth an incident event: opened, a priority or state change."""
    return any(e.incident_id == inc.id and e.entry in ("state", "priority") for e in entries)


def incident_event(inc: Incident, entries: list[Entry]) -> dict:
    last = [e for e in entries if e.incident_id == inc.id and e.entry in ("state", "priority")][-1]
    labels = {"agent_id": inc.agent_id, "incident_id": inc.id, "priority": inc.label, "incident_state": inc.state,
              "title": inc.title}
    state = "resolved" if inc.state == "resolved" else "firing"
    verb = {"open": "opened", "resolved": "resolved"}.get(inc.state, inc.state) if last.entry == "state" \
        else f"raised to {inc.label}"
    return event("incident", state, _EVENT_SEVERITY[inc.priority], f"{inc.id} {inc.label}", labels,
                 f"incident {inc.id} ({inc.label}) {verb}: {inc.title}", identity={"incident_id": inc.id},
                 time_ns=inc.stamp_event(last.time_ns), started_ns=inc.opened_ns)


def circuit_event(agent: str, tool: str, t: Transition, now_ns: int) -> dict:
    labels = {"agent_id": agent, "circuit_state": t.new, "reason": t.reason}
    if tool:
        labels["tool"] = tool
    what = f"agent {agent}" + (f" tool {tool}" if tool else "")
    state = "resolved" if t.new == CLOSED else "firing"
    severity = "ticket" if t.new == HALF_OPEN else "page"
    return event("circuit", state, severity, t.new, labels, f"circuit of {what}: {t.old} -> {t.new} ({t.reason})",
                 identity={"agent_id": agent, "tool": tool}, time_ns=now_ns)


def circuit_signal(ev: dict, priority: int) -> Signal:
    return Signal(ev["time_ns"], ev["labels"]["agent_id"], "circuit_open", "circuit", ev["name"], ev["fingerprint"],
                  ev["state"], priority, ev["summary"])


factory = Factory(
    type="incidents",
    kind=Kind.PROCESSOR,
    config_model=IncidentsConfig,
    create=IncidentsProcessor,
    description="Signals correlated into incidents (P1-P4, lifecycle, postmortems); circuit breakers per agent.",
)
