"""slo: objectives over the SLIs the ``sli`` processor rolls up; budgets, burn rates, alerts.

Every ``interval`` (and on demand, for ``/v1/slos`` and ``agent-sre slo status``)
each objective is evaluated per agent from the per-minute rollups in
``sli_minutes``: the SLI value and error budget over the objective's window, the
burn rate over every window its alert rules use, the rules firing, and a status
(healthy / warning / critical / exhausted).  Alerts fire and resolve once each;
they are logged and published as ``alert`` events (kept in the store's ``events``
table, routed by an events pipeline from the ``alerts`` receiver).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from pydantic import Field, field_validator, model_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import SloReports, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.processors.slo.alerts import DEFAULT_RULES, AlertEvent, AlertTracker, BurnRateRule, slo_status
from agent_sre.processors.slo.budget import WindowCounts, allowed_error_rate, window_label
from agent_sre.processors.slo.openslo import load_openslo

log = logging.getLogger("agent_sre.slo")
Query = Callable[[str, list], list[tuple]]


class RuleConfig(ConfigModel):
    severity: str
    factor: float = Field(gt=0)
    long_window: Duration
    short_window: Duration

    @model_validator(mode="after")
    def _valid(self) -> RuleConfig:
        self.to_rule()  # raises ValueError with the reason
        return self

    def to_rule(self) -> BurnRateRule:
        return BurnRateRule(self.severity, self.factor, _minutes(self.long_window), _minutes(self.short_window))


def _minutes(seconds: float) -> int:
    if seconds < 60 or seconds % 60:
        raise ValueError(f"windows are whole minutes, got {seconds:g}s")
    return int(seconds // 60)


class Objective(ConfigModel):
    name: str
    sli: str
    target: float
    window: Duration = "30d"
    rules: list[RuleConfig] | None = None  # default: the Google SRE Workbook's four
    per_version: bool = False  # evaluate per (agent_id, agent_version) instead of per agent_id

    @field_validator("target")
    @classmethod
    def _target(cls, v: float) -> float:
        allowed_error_rate(v)
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: float) -> float:
        _minutes(v)
        return v

    @property
    def burn_rules(self) -> tuple[BurnRateRule, ...]:
        return tuple(r.to_rule() for r in self.rules) if self.rules is not None else DEFAULT_RULES


class SloConfig(ConfigModel):
    objectives: list[Objective] = []
    openslo: list[str] = []  # OpenSLO v1 files whose SLOs are added to objectives (see openslo.py)
    # Evaluated after every commit of new spans (at most once per min_interval), and at least every
    # interval with no traffic: an alert leaves within about half a second of its condition holding
    # (bench/slo.py: acknowledged -> paged, which adds the spool's commit delay).
    interval: Duration = Field(default="30s", gt=0)
    min_interval: Duration = Field(default="500ms", gt=0)
    storage: str = ""  # which duckdb exporter; empty: the only one

    @model_validator(mode="after")
    def _unique(self) -> SloConfig:
        for path in self.openslo:
            self.objectives.extend(Objective(**o) for o in load_openslo(path))
        self.openslo = []  # loaded: validating this model again must not add them twice
        if not self.objectives:
            raise ValueError("needs at least one objective (objectives, or SLOs in openslo files)")
        names = [o.name for o in self.objectives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"objective names must be unique; repeated: {dupes}")
        return self


def window_end(now: float) -> int:
    """The minute every window ends before, for the Unix time ``now``: the one after the minute in
    progress, so what was committed a moment ago counts at once (at a minute boundary, exactly the
    whole minutes before it).  ``report`` and ``agent-sre slo status`` on a stopped pipeline's file
    both evaluate at this minute, so both count the same spans."""
    return math.ceil(now / 60)


def evaluate(query: Query, objectives: list[Objective], now_minute: int,
             trackers: dict[tuple[str, str, str], AlertTracker] | None = None,
             transitions: list[tuple[Objective, tuple[str, str], AlertEvent]] | None = None) -> list[dict]:
    """One row per (objective, agent[, version]) with data in the longest window any of its rules or its
    budget needs.  With ``trackers``, alert transitions are recorded there, logged, and appended
    to ``transitions``."""
    rows = []
    counted = window_counts(query, objectives, now_minute)
    for obj in objectives:
        rules = obj.burn_rules
        window = _minutes(obj.window)
        alerting = _alerting(obj)
        for (agent, ver), series in sorted(counted[obj.name].items()):
            subject = (agent, ver)
            burns = {window_label(m): round(float(series.burn_rates(now_minute, m, obj.target)), 6) for m in alerting}
            budget = series.budget(now_minute, window, obj.target)
            who = (agent or "(none)") + (f"@{ver}" if obj.per_version else "")
            if trackers is not None:
                tracker = trackers.setdefault((obj.name, agent, ver), AlertTracker(obj.target, rules))
                for ev in tracker.evaluate(series, now_minute):
                    if transitions is not None:
                        transitions.append((obj, subject, ev))
                    log.warning("SLO %s, agent %s: alert %s %s (burn %.2f over %s, %.2f over %s)", obj.name, who,
                                ev.rule.name, ev.state, ev.long_burn, window_label(ev.rule.long_minutes),
                                ev.short_burn, window_label(ev.rule.short_minutes))
                firing = sorted(r.name for r in tracker.firing)
            else:
                firing = sorted(r.name for r in rules if r.firing(series, now_minute, obj.target))
            rows.append({
                "slo": obj.name, "sli": obj.sli, "agent_id": agent,
                "agent_version": ver if obj.per_version else None, "target": obj.target,
                "window": window_label(window), "events": budget.total, "bad_events": budget.bad,
                "sli_value": None if budget.total == 0 else round((budget.total - budget.bad) / budget.total, 6),
                "budget_remaining": round(budget.remaining, 6), "burn_rates": burns, "firing": firing,
                "status": slo_status(series, now_minute, obj.target, window, rules).value,
            })
    return rows


def _alerting(obj: Objective) -> list[int]:
    """The windows (minutes) of an objective's burn-rate rules."""
    return sorted({m for r in obj.burn_rules for m in (r.long_minutes, r.short_minutes)})


def _windows(obj: Objective) -> list[int]:
    """The windows (minutes) an objective's evaluation needs: its own and those of its burn-rate rules."""
    return sorted({_minutes(obj.window), *_alerting(obj)})


def window_counts(query: Query, objectives: list[Objective], now_minute: int) -> dict[str, dict[tuple[str, str], WindowCounts]]:
    """Per objective, (good, total) of each subject over each window it needs, ending at ``now_minute``:
    one aggregate over the rollup for every objective, per SLI, agent, version and slice between two
    window starts (a handful of rows per subject, whatever the number of minutes), summed into windows
    here.  Measured: an aggregate per objective with two FILTERed sums per window took ~5 ms of CPU to
    plan each (three objectives, 15 ms per evaluation, twice a second under load); this one ~2 ms.
    Fetching every (agent, minute) row instead took 0.6 s per evaluation (100 agents, a week of minutes)."""
    out: dict[str, dict[tuple[str, str], WindowCounts]] = {obj.name: {} for obj in objectives}
    if not objectives:
        return out
    starts = sorted({now_minute - m for obj in objectives for m in _windows(obj)}, reverse=True)
    # slice i holds the minutes in [starts[i], starts[i - 1]): in a window of m minutes iff starts[i] >= now - m
    slices = "CASE " + " ".join(f"WHEN minute >= {b} THEN {i}" for i, b in enumerate(starts)) + " END"
    slis = sorted({obj.sli for obj in objectives})
    data = query(f"SELECT sli, agent_id, agent_version, {slices}, sum(good), sum(total) FROM sli_minutes "
                 f"WHERE sli IN ({', '.join('?' * len(slis))}) AND minute >= ? AND minute < ? GROUP BY ALL",
                 [*slis, starts[-1], now_minute])
    slice_of = {start: i for i, start in enumerate(starts)}
    by_sli: dict[str, list[tuple]] = {}
    for row in data:
        by_sli.setdefault(row[0], []).append(row)
    for obj in objectives:
        windows = _windows(obj)
        last = slice_of[now_minute - windows[-1]]  # slices 0..last lie in the objective's longest window
        per_slice: dict[tuple[str, str], list[list[int]]] = {}
        for _, agent, version, i, good, total in by_sli.get(obj.sli, ()):
            if i <= last:
                cells = per_slice.setdefault((agent, version if obj.per_version else ""), [[0, 0] for _ in range(last + 1)])
                cells[i][0] += int(good)
                cells[i][1] += int(total)
        ends = {m: slice_of[now_minute - m] for m in windows}  # a window of m minutes: slices 0..ends[m]
        for subject, cells in per_slice.items():
            running, good_sum, total_sum = [], 0, 0
            for g, t in cells:
                good_sum, total_sum = good_sum + g, total_sum + t
                running.append((good_sum, total_sum))
            out[obj.name][subject] = WindowCounts(now_minute, {m: running[ends[m]] for m in windows})
    return out


class SloProcessor(Stage):
    config: SloConfig

    def __init__(self, settings, config: SloConfig):
        super().__init__(settings, config)
        self.clock: Callable[[], float] = time.time  # tests replay scenarios with their own clock
        self._trackers: dict[tuple[str, str, str], AlertTracker] = {}
        self._lock = threading.Lock()
        # After every rollup of new spans (at most once per min_interval), at least every interval.
        self._worker = PeriodicWorker(f"{self.id}-evaluate", config.interval, self._evaluate, log,
                                      min_interval=config.min_interval, run_first=True)
        self._store = None
        self._host = None
        self._bus = None
        self.last_report: list[dict] = []
        self._subscribers: list[Callable[[list[dict]], None]] = []
        self._alert_started: dict[tuple[str, str, str, str], int] = {}
        self._exhausted: dict[str, list[str]] = {}  # agent -> SLOs whose error budget is exhausted

    def _start(self, host) -> None:
        self._store = host.get(SpanStore, self.config.storage, str(self.id))
        self._bus = host.events
        self._restore_firing()
        self._store.on_rollup(self._rolled_up)
        host.decisions.register(str(self.id), self)
        host.provide(SloReports, self.id, self)
        self._host = host
        self._worker.start()

    def _rolled_up(self) -> None:
        """New SLI events are in the rollups: evaluate (at most once per ``min_interval``)."""
        self._worker.wake()

    def _restore_firing(self) -> None:
        """Alerts still firing when the pipeline stopped (the ``alerts`` table) stay firing: a restart
        neither notifies them again nor forgets to resolve them."""
        rows = self._store.read(
            "SELECT arg_max(state, time_ns), arg_max(labels, time_ns), arg_max(started_ns, time_ns) FROM alerts "
            "WHERE kind = 'alert' GROUP BY fingerprint")
        objectives = {o.name: o for o in self.config.objectives}
        for state, labels, started in rows:
            labels = dict(labels)
            obj = objectives.get(labels.get("slo", ""))
            rule = obj and next((r for r in obj.burn_rules if r.name == labels.get("rule")), None)
            if state != "firing" or rule is None:
                continue
            agent, version = labels.get("agent_id", ""), labels.get("agent_version", "") if obj.per_version else ""
            tracker = self._trackers.setdefault((obj.name, agent, version), AlertTracker(obj.target, obj.burn_rules))
            tracker.firing.add(rule)
            self._alert_started[(obj.name, agent, version, rule.name)] = started

    def fleet_report(self, source) -> dict:
        """Every pipeline's SLOs from the fleet store (processors/slo/fleet.py), evaluated now with these
        objectives and the SLIs this pipeline's store rolls up (its ``sli_rollups``)."""
        from agent_sre.pipeline.storage.rollups import SliRollup
        from agent_sre.processors.slo.fleet import fleet_slos

        slis = ([SliRollup(*r) for r in self._store.read(
            "SELECT name, total, good, coalesce(scope, 'span') FROM sli_rollups ORDER BY position")]
                if self._store is not None else [])
        rows, skipped = fleet_slos(source, self.config.objectives, slis, window_end(self.clock()))
        return {"slos": rows, "skipped": skipped}

    def subscribe(self, callback: Callable[[list[dict]], None]) -> None:
        """``callback(alerts)`` after every evaluation that fired or resolved alerts (the alerts receiver)."""
        self._subscribers.append(callback)

    def report(self) -> list[dict]:
        """Evaluate every objective now (everything acknowledged so far included)."""
        if self._store is not None:
            self._store.sync()
        return self._evaluate()

    def _evaluate(self) -> list[dict]:
        """Evaluate every objective over what is committed: the worker's evaluation, after commits.  It does
        not wait for the spans acknowledged and not yet inserted, as ``report`` does: that wait made the
        loader insert what was pending at once, twice a second under load, in commits smaller than it
        would make (measured with bench/loop_cpu.py: 29-33 commits per 400k spans against 25), and those
        spans are committed within the spool's flush interval, which wakes the worker again."""
        store = self._store
        if store is None:
            return []
        store.finalize_tasks()  # tasks whose trace went quiet count now, with or without new traffic
        transitions: list[tuple[Objective, tuple[str, str], AlertEvent]] = []
        with self._lock:
            now = self.clock()
            # Windows end now, so they hold the minute in progress (see window_end).
            self.last_report = evaluate(store.read, self.config.objectives, window_end(now), self._trackers,
                                        transitions)
            report = self.last_report
            exhausted: dict[str, list[str]] = {}
            for row in report:
                if row["status"] == "exhausted":
                    exhausted.setdefault(row["agent_id"], []).append(row["slo"])
            self._exhausted = exhausted
            alerts = [self._alert(obj, subject, ev, int(now * 1e9)) for obj, subject, ev in transitions]
            if alerts and self._bus is not None:  # under the lock: published in the order they happened
                self._bus.publish(alerts)  # into the events history (what a restart resumes from), then routed
        for callback in self._subscribers:
            if alerts:
                callback(alerts)
        return report

    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision:
        """An exhausted error budget freezes the agent's releases (the SRE rule: no budget, no
        changes); calls go on.  From the last evaluation, in memory."""
        slos = self._exhausted.get(agent)
        if not slos:
            return ALLOW
        return Decision("freeze", f"error budget exhausted: SLO {', '.join(slos)}; releases are frozen",
                        None, {"exhausted_slos": slos})

    def agents(self) -> set[str]:
        return {row["agent_id"] for row in self.last_report}

    def _alert(self, obj: Objective, subject: tuple[str, str], ev: AlertEvent, now_ns: int) -> dict:
        rule = ev.rule
        agent, version = subject
        key = (obj.name, agent, version, rule.name)
        if ev.state == "firing":
            self._alert_started[key] = now_ns
        started = self._alert_started.pop(key, now_ns) if ev.state == "resolved" else self._alert_started[key]
        long, short = window_label(rule.long_minutes), window_label(rule.short_minutes)
        verb = "burns" if ev.state == "firing" else "no longer burns"
        return {"time_ns": now_ns, "state": ev.state, "severity": rule.severity, "name": rule.name,
                "started_ns": started,
                "labels": {"alertname": "AgentSloBurnRate", "slo": obj.name, "sli": obj.sli, "agent_id": agent,
                           **({"agent_version": version} if obj.per_version else {}),
                           "severity": rule.severity, "rule": rule.name},
                "summary": (f"SLO {obj.name} ({obj.sli}, target {obj.target:g}) of agent {agent or '(none)'}"
                            f"{f' version {version}' if obj.per_version else ''} {verb} "
                            f"its error budget at >= {rule.factor:g}x: {ev.long_burn:.1f}x over {long}, "
                            f"{ev.short_burn:.1f}x over {short}")}


    def describe(self) -> list[str]:
        return [f"SLOs evaluated every {self.config.interval:g}s: {', '.join(o.name for o in self.config.objectives)}"]

    def _shutdown(self) -> None:
        if self._host is not None:
            self._host.withdraw(SloReports, self.id)
        self._worker.stop()
        if self._store is not None:
            self._store.remove_callback(self._rolled_up)


factory = Factory(
    type="slo",
    kind=Kind.PROCESSOR,
    config_model=SloConfig,
    create=SloProcessor,
    description="Objectives over SLIs: error budgets, burn rates and multiwindow burn-rate alerts per agent.",
)

