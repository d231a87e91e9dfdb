"""chaos: experiments declared to the pipeline, announced to agents through the decisions API, stopped
on schedule or when an abort condition holds, and judged from the stored spans.

A ``Stage`` (declared in a pipeline's ``processors``, not on the data path): the experiments live in
the span store (``chaos_experiments``, through the ``SpanStore`` capability's ``write``/``read``), so a
restart keeps them; running ones are a decision provider whose ``allow`` carries
``{"chaos": [experiment, ...]}`` for each agent in their blast radius, which ``agent_sre.chaos`` in
every agent process reads (no redeploy) and acts on.  Every ``check_interval`` (1 s) the processor
ends experiments whose time is up and aborts those whose abort condition holds, judged from per-second
tallies of the committed spans of their agents (``monitor.py``, fed by ``on_commit``); an ended
experiment drops out of the decisions, so agents stop injecting at their next refresh.  Once the
after window (as long as the experiment) has passed, the report (``report.py``) is computed and kept
with the experiment.  Experiments are ``chaos`` events: ``started`` (firing), ``ended`` / ``stopped``
/ ``aborted`` (firing, ``ticket`` for an abort), ``result`` (resolved, with the resilience score).

Spans of injected faults (``chaos.fault.type``) feed no circuit breaker or policy signal of the
incidents processor unless ``feed_incidents`` is set; they do count in SLIs, SLOs and budgets: that
is what an experiment measures.

With ``state: redis://…`` the experiments are the fleet's (``pipeline/storage/shared_state.py``,
``SharedRecords``): one started on any pipeline is adopted by every pipeline with the same ``state``
within ``state_refresh`` (each serves it from memory in its decisions), and it is ended once: the
first pipeline whose schedule, abort condition or stop request ends it writes the end to Redis
(final wins, atomically) and announces it; the others adopt that end silently.  Abort conditions
are judged by each pipeline over the spans *it* receives.  Redis unreachable: each pipeline keeps
serving, ending and aborting from its local view (``/v1/status`` says so) and refuses new
experiments; its ends are merged when Redis is back (a Redis restarted empty gets every running
experiment back from the pipelines).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import ChaosExperiments, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration, parse_duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.errors import TransitionError
from agent_sre.pipeline.component.events import event
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.storage.shared_state import SharedRecord, StateUrl
from agent_sre.processors.chaos.monitor import Monitor, SpanSli, tally_input, tally_sql
from agent_sre.processors.chaos.report import (
    EXPERIMENT_COLUMNS,
    EXPERIMENTS_DDL,
    experiment_report,
    experiment_row,
    list_experiments,
    load_experiment,
    span_slis,
)
from agent_sre.processors.chaos.spec import (
    AbortCondition,
    Template,
    TemplateError,
    announced,
    apply_overrides,
    experiment_spec,
    load_templates,
)

_NS = 1_000_000_000


class UnknownExperiment(LookupError):
    """No experiment with this id (the admin API answers 404)."""


class ChaosConfig(ConfigModel):
    storage: str = ""  # which duckdb exporter's store; empty: the only one
    templates_dir: str = ""  # YAML templates besides the shipped ones (a file of the same name replaces one)
    templates: dict[str, dict[str, Any]] = {}  # name -> template fields laid over that template (or a new one)
    abort: list[AbortCondition] = []  # conditions every experiment gets besides its template's
    check_interval: Duration = Field(default="1s", gt=0)  # how often abort conditions and schedules are checked
    max_duration: Duration = Field(default="24h", gt=0)
    settle: Duration = Field(default="5s", ge=0)  # after the after window, before the result is computed
    recovery_tolerance: float = Field(default=0.05, ge=0, le=1)  # SLIs back within this of the baseline
    feed_incidents: bool = False  # injected faults feed circuit breakers and policy signals too
    # Experiments shared by the fleet: redis://host:port/db.  Decisions serve the local view, refreshed
    # every state_refresh (the staleness bound across the fleet); state_instance names this pipeline.
    state: StateUrl = ""
    state_refresh: Duration = Field(default="250ms", gt=0)
    state_instance: str = ""

    @model_validator(mode="after")
    def _templates_load(self) -> ChaosConfig:
        self.load()  # TemplateError (a ValueError) with every problem
        return self

    def load(self) -> dict[str, Template]:
        return load_templates(self.templates_dir or None, self.templates)


@dataclass
class _Running:
    record: dict
    announced: dict
    monitor: Monitor


class ChaosProcessor(Stage):
    config: ChaosConfig

    def __init__(self, settings, config: ChaosConfig):
        super().__init__(settings, config)
        self.clock: Callable[[], float] = time.time
        self.feed_incidents = config.feed_incidents
        self._templates = config.load()
        self._running: dict[str, _Running] = {}
        self._by_agent: dict[str, list[dict]] = {}  # what decisions answer: agent -> announced experiments
        self._pending: dict[str, dict] = {}  # ended experiments waiting for their after window: id -> record
        self._next = 1
        self._lock = threading.Lock()  # experiments
        self._tally_lock = threading.Lock()  # monitors and the tally connection
        self._slis: list[SpanSli] = []
        self._slis_read = float("-inf")  # when _slis was last read again for a missing SLI (monotonic)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._store: Any = None
        self._host: Any = None
        self._worker = PeriodicWorker(f"chaos-{settings.id}", config.check_interval, self.check, self.logger)
        # with `state:` (the fleet's experiments on Redis)
        self._state: Any = None
        self._fleet: Any = None  # SharedRecords
        self._versions: dict[str, int] = {}  # experiment -> the fleet's version this pipeline last saw
        self._finals: dict[str, SharedRecord] = {}  # ends this pipeline made or saw: merged at a reconcile
        self._docs: dict[str, dict] = {}  # running experiment -> its record as the fleet holds it
        self._announced_end: set[str] = set()  # ends this pipeline announced (so announces the result too)
        self._end_lock = threading.RLock()  # one end at a time: who announces it is decided under it
        self._refresher: PeriodicWorker | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    def _start(self, host) -> None:
        self._host = host
        self._store = host.get(SpanStore, self.config.storage, str(self.id))
        self._store.write([(EXPERIMENTS_DDL, [])])
        self._con = duckdb.connect(config={"threads": 1, "memory_limit": "64MB"})
        if self.config.state:
            from agent_sre.pipeline.storage.shared_state import SharedState

            self._state = SharedState(self.config.state, self.config.state_instance, component=str(self.id))
            self._state.bind_metrics(host.telemetry.registry)
            self._fleet = self._state.records("chaos")
        self._restore()
        self._store.on_commit(self._committed)
        host.provide(ChaosExperiments, self.id, self)
        host.decisions.register(str(self.id), self)
        self._worker.start()
        if self._fleet is not None:
            self.sync_fleet()
            self._refresher = PeriodicWorker(f"chaos-{self.id}-state", self.config.state_refresh,
                                             self.sync_fleet, self.logger)
            self._refresher.start()

    def _shutdown(self) -> None:
        self._worker.stop()
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self._state is not None:
            self._state.close()
        if self._store is not None:
            self._store.remove_callback(self._committed)
        if self._host is not None:
            self._host.withdraw(ChaosExperiments, self.id)
        with self._tally_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def _restore(self) -> None:
        read = self._store.read
        numbers = read("SELECT max(TRY_CAST(substr(id, 5) AS BIGINT)) FROM chaos_experiments "
                       "WHERE starts_with(id, 'CHX-')", [])
        self._next = (numbers[0][0] or 0) + 1
        self._slis = span_slis(read)
        now = self.clock()
        rows = read(f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM chaos_experiments "
                    "WHERE state = 'running' OR result IS NULL ORDER BY id", [])
        for rec in (experiment_row(r) for r in rows):
            if rec["state"] != "running":
                self._pending[rec["id"]] = rec
            elif rec["until_ns"] <= now * _NS:  # its time ran out while the pipeline was stopped
                self._resume(rec)
                self._end(rec["id"], "ended", "the schedule ended (while the pipeline was stopped)", rec["until_ns"])
            else:
                self._resume(rec)
                self._rebuild(self._running[rec["id"]].monitor)

    def _resume(self, rec: dict) -> None:
        spec = json.loads(self._store.read("SELECT spec FROM chaos_experiments WHERE id = ?", [rec["id"]])[0][0])
        monitor = Monitor(rec["id"], rec["agents"], spec["start"], [AbortCondition(**a) for a in spec["abort"]])
        with self._lock:
            self._running[rec["id"]] = _Running(rec, announced(spec), monitor)
            self._index()

    def _rebuild(self, monitor: Monitor) -> None:
        """A resumed experiment's tallies, from the spans stored since it started."""
        slis = [s for s in self._slis if s.name in monitor.slis()]
        rows = self._store.read(tally_sql(slis, "spans", "WHERE list_contains(?::VARCHAR[], agent_id) AND end_ns >= ?"),
                                [sorted(monitor.agents), monitor.start_second * _NS])
        with self._tally_lock:
            monitor.add_rows(rows, [s.name for s in slis])

    def _index(self) -> None:
        """``_by_agent`` from ``_running`` (under the lock): what the decisions answer reads."""
        by_agent: dict[str, list[dict]] = {}
        for run in self._running.values():
            for agent in run.record["agents"]:
                by_agent.setdefault(agent, []).append(run.announced)
        self._by_agent = by_agent

    # --- the API (ChaosExperiments) -----------------------------------------------------------------

    def templates(self) -> list[dict]:
        return [t.summary() for _, t in sorted(self._templates.items())]

    def start_experiment(self, template: str, agents: list[str] | str, duration: str | float | None = None,
                         overrides: dict | None = None, by: str = "") -> dict:
        """Start ``template`` on ``agents`` now (for ``duration``, else the template's); ValueError when
        the request is not valid (unknown template, no agent, a bad override, an unknown SLI)."""
        found = self._templates.get(template)
        if found is None:
            raise TemplateError([f"unknown template {template!r} (valid values: [{', '.join(sorted(self._templates))}])"])
        tpl = apply_overrides(found, overrides)
        seconds = tpl.duration if duration is None else parse_duration(duration)
        if not 0 < seconds <= self.config.max_duration:
            raise TemplateError([f"duration must be more than 0 and at most max_duration "
                                 f"({self.config.max_duration:g}s); got {seconds:g}s"])
        agents = [agents] if isinstance(agents, str) else list(agents or tpl.blast_radius.agents)
        self._check_slis([*tpl.abort, *self.config.abort])
        now = self.clock()
        exp_id = self._new_id()
        spec = experiment_spec(tpl, exp_id, agents, now, seconds, self.config.abort)
        row = (exp_id, tpl.name, spec["blast_radius"]["agents"], "running", None, int(now * _NS),
               int(spec["start"] * _NS), int(spec["until"] * _NS), None, by or None, json.dumps(spec), None)
        self._store.write([(f"INSERT INTO chaos_experiments ({', '.join(EXPERIMENT_COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(EXPERIMENT_COLUMNS))})", list(row))])
        rec = experiment_row(row)
        monitor = Monitor(exp_id, rec["agents"], spec["start"], [AbortCondition(**a) for a in spec["abort"]])
        with self._lock:
            self._running[exp_id] = _Running(rec, announced(spec), monitor)
            self._index()
        if self._fleet is not None:  # unreachable now: merged at the reconcile, as a running record
            self._versions[exp_id] = 0
            self._fleet.put(exp_id, -1, self._stored_doc(exp_id))
        self.logger.info("chaos experiment %s (%s) started on %s for %gs%s", exp_id, tpl.name,
                         ", ".join(rec["agents"]), seconds, f" by {by}" if by else "")
        self._announce(rec, "started", "firing", "info",
                       f"chaos experiment {exp_id} ({tpl.name}) started on {', '.join(rec['agents'])} for {seconds:g}s",
                       int(now * _NS))
        return rec

    def _new_id(self) -> str:
        """The next experiment id: from the fleet's counter with ``state``, so no two pipelines give one id."""
        if self._fleet is None:
            with self._lock:
                self._next += 1
                return f"CHX-{self._next - 1:05d}"
        n = self._fleet.next_number(self._next - 1, "CHX-%05d")
        if n is None:
            st = self._state.status()
            raise TransitionError(f"shared state {st['url']} is unreachable ({st['last_error']}): an experiment "
                                  "started now would run on this pipeline only; start it when Redis is back "
                                  "(GET /v1/status shows the state)", 503)
        with self._lock:
            self._next = max(self._next, n + 1)
        return f"CHX-{n:05d}"

    def _check_slis(self, conditions: list[AbortCondition]) -> None:
        named = {c.metric[4:] for c in conditions if c.metric.startswith("sli:")}
        if not named:
            return
        self._slis = span_slis(self._store.read)  # the sli processor may have started after this one
        missing = sorted(named - {s.name for s in self._slis})
        if missing:
            raise TemplateError([f"abort conditions name SLIs that are not span SLIs of this pipeline: {missing} "
                                 f"(defined: [{', '.join(s.name for s in self._slis)}]); add them to the sli "
                                 "processor or override the template's abort"])

    def stop_experiment(self, experiment_id: str, by: str = "", why: str = "") -> dict:
        """End a running experiment now (an ended one is returned as it is)."""
        reason = why or (f"stopped by {by}" if by else "stopped")
        if not self._end(experiment_id, "stopped", reason, int(self.clock() * _NS)):
            found = self.experiment(experiment_id)
            if found is None:
                raise UnknownExperiment(f"no chaos experiment {experiment_id!r}")
            return found
        found = self.experiment(experiment_id)
        assert found is not None
        return found

    def experiments(self, include_ended: bool = False) -> list[dict]:
        return list_experiments(self._store.read, include_ended)

    def experiment(self, experiment_id: str) -> dict | None:
        return load_experiment(self._store.read, experiment_id)

    def report(self, experiment_id: str) -> dict | None:
        found = self.experiment(experiment_id)
        if found is None:
            return None
        pending = self._store.catch_up(5.0)  # what was acknowledged is part of the report, unless hopelessly behind
        if pending:
            self.logger.warning("span store is %d spans behind: the report of %s is of what it has inserted",
                                pending, experiment_id)
        return experiment_report(self._store.read, found, int(self.clock() * _NS), self.config.recovery_tolerance)

    # --- the fleet's experiments (state: redis://…) ---------------------------------------------------

    def _stored_doc(self, experiment_id: str) -> dict:
        """An experiment's row (all but its result) as the fleet's record holds it."""
        cols = EXPERIMENT_COLUMNS[:-1]
        (row,) = self._store.read(f"SELECT {', '.join(cols)} FROM chaos_experiments WHERE id = ?", [experiment_id])
        return {**dict(zip(cols, row, strict=True)), "agents": list(row[2] or [])}

    def _running_doc(self, experiment_id: str) -> dict:
        """A running experiment's record (it does not change while it runs: read from the store once)."""
        found = self._docs.get(experiment_id)
        if found is None:
            found = self._docs[experiment_id] = self._stored_doc(experiment_id)
        return found

    def sync_fleet(self) -> None:
        """Every ``state_refresh``: reconcile with Redis when it is back, then adopt what other pipelines
        started or ended (started: served and monitored here; ended: ended here without an announcement)."""
        if self._fleet is None:
            return
        with self._end_lock:
            with self._lock:
                running = list(self._running)
            horizon = self.clock() - self._fleet.retention_s
            self._finals = {i: f for i, f in self._finals.items() if f.doc["ended_ns"] / _NS >= horizon}
            local = {i: SharedRecord(self._versions.get(i, 0), False, self._running_doc(i)) for i in running}
            local.update(self._finals)
            remote = self._fleet.sync(local, lambda rec: rec.doc["ended_ns"] / _NS, self.clock())
            for experiment_id, held in (remote or {}).items():
                self._versions[experiment_id] = held.version
                self._adopt(experiment_id, held)

    def _adopt(self, experiment_id: str, held: SharedRecord) -> None:
        doc = held.doc
        if experiment_id in self._running:
            if held.final:
                self._end(experiment_id, doc["state"], doc["reason"], int(doc["ended_ns"]), adopted=True)
            return
        known = self.experiment(experiment_id)
        if held.final:
            self._finals[experiment_id] = held
        if known is not None:
            if held.final and [known[k] for k in ("state", "reason", "ended_ns")] != [doc[k] for k in ("state", "reason", "ended_ns")]:
                # two ends made while Redis was unreachable: the fleet keeps the first in Redis
                self._store.write([("UPDATE chaos_experiments SET state = ?, reason = ?, ended_ns = ? WHERE id = ?",
                                    [doc["state"], doc["reason"], doc["ended_ns"], experiment_id])])
            return
        row = [doc[c] for c in EXPERIMENT_COLUMNS[:-1]] + [None]
        self._store.write([(f"INSERT OR IGNORE INTO chaos_experiments ({', '.join(EXPERIMENT_COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(EXPERIMENT_COLUMNS))})", row)])
        rec = experiment_row(tuple(row))
        if held.final:
            self._pending[experiment_id] = rec  # judged here too, from this pipeline's spans
            return
        self._resume(rec)
        self._rebuild(self._running[experiment_id].monitor)
        self.logger.info("chaos experiment %s (%s) on %s adopted from the fleet (started by %s)", experiment_id,
                         rec["template"], ", ".join(rec["agents"]), rec["created_by"] or "another pipeline")

    # --- decisions ----------------------------------------------------------------------------------

    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision:
        """From memory: the experiments in force for ``agent`` (what its chaos helper injects)."""
        found = self._by_agent.get(agent)
        if not found:
            return ALLOW
        now = self.clock()
        live = [a for a in found if a["until"] > now]
        return Decision("allow", details={"chaos": live}) if live else ALLOW

    def agents(self) -> set[str]:
        return set(self._by_agent)

    # --- committed spans, schedules and abort conditions -------------------------------------------

    def _committed(self, rows: pa.Table) -> None:
        with self._lock:
            monitors = [r.monitor for r in self._running.values()]
        if not monitors:
            return
        agents = pa.array(sorted({a for m in monitors for a in m.agents}))
        mine = rows.filter(pc.fill_null(pc.is_in(rows.column("agent_id"), value_set=agents), False))
        if not mine.num_rows:
            return
        names = set().union(*(m.slis() for m in monitors))
        if names - {s.name for s in self._slis} and time.monotonic() - self._slis_read > 10:
            # the sli processor started after this one (restored experiments), or its SLIs changed
            self._slis, self._slis_read = span_slis(self._store.read), time.monotonic()
        slis = [s for s in self._slis if s.name in names]
        mine, source = tally_input(mine, slis)
        sql = tally_sql(slis, source, tag="tag")
        with self._tally_lock:
            if self._con is None:
                return
            self._con.register("_batch", mine)
            try:
                tallies = self._con.execute(sql).fetchall()
            finally:
                self._con.unregister("_batch")
            for monitor in monitors:
                monitor.add_rows(tallies, [s.name for s in slis])

    def check(self) -> None:
        """Every ``check_interval``: end what is due, abort what must be, and judge what has settled."""
        now = self.clock()
        with self._lock:
            running = list(self._running.values())
        for run in running:
            rec = run.record
            if now * _NS >= rec["until_ns"]:
                self._end(rec["id"], "ended", "the schedule ended", rec["until_ns"])
                continue
            with self._tally_lock:
                breach = run.monitor.breached(now)
            if breach is not None:
                condition, value = breach
                self._end(rec["id"], "aborted", f"abort condition {condition.describe()} held ({value:.4g})",
                          int(now * _NS))
        for rec in list(self._pending.values()):
            if now * _NS >= rec["ended_ns"] + (rec["ended_ns"] - rec["start_ns"]) + self.config.settle * _NS:
                self._judge(rec)

    def _end(self, experiment_id: str, state: str, reason: str, ended_ns: int, adopted: bool = False) -> bool:
        """End a running experiment (False: it was not running).  With ``state``, the end is the fleet's
        first: a pipeline that finds one already in Redis adopts it and does not announce it again
        (``adopted``: the end came from the fleet)."""
        with self._end_lock:
            with self._lock:
                run = self._running.get(experiment_id)
            if run is None:
                return False
            ended_ns = max(ended_ns, run.record["start_ns"])
            if self._fleet is not None:
                state, reason, ended_ns, adopted = self._fleet_end(experiment_id, state, reason, ended_ns, adopted)
            with self._lock:
                self._running.pop(experiment_id, None)
                self._index()
            self._docs.pop(experiment_id, None)
            self._ended(run, state, reason, ended_ns, announce=not adopted)
        return True

    def _fleet_end(self, experiment_id: str, state: str, reason: str, ended_ns: int,
                   adopted: bool) -> tuple[str, str, int, bool]:
        """(state, reason, ended_ns, adopted) of the end the fleet keeps: this one if it is the first."""
        doc = {**self._stored_doc(experiment_id), "state": state, "reason": reason, "ended_ns": ended_ns}
        version = self._versions.get(experiment_id, 0)
        reply = None if adopted else self._fleet.merge(experiment_id, version, doc, True)
        if reply is not None:
            written, held = reply
            version, doc = held.version, held.doc
            adopted = not written
        self._versions[experiment_id] = version  # unreachable: this end is merged at the reconcile
        self._finals[experiment_id] = SharedRecord(version, True, doc)
        return doc["state"], doc["reason"], int(doc["ended_ns"]), adopted

    def _ended(self, run: _Running, state: str, reason: str, ended_ns: int, announce: bool) -> None:
        experiment_id = run.record["id"]
        self._store.write([("UPDATE chaos_experiments SET state = ?, reason = ?, ended_ns = ? WHERE id = ?",
                            [state, reason, ended_ns, experiment_id])])
        rec = {**run.record, "state": state, "reason": reason, "ended_ns": ended_ns}
        self._pending[experiment_id] = rec
        log = self.logger.warning if state == "aborted" else self.logger.info
        log("chaos experiment %s %s: %s%s", experiment_id, state, reason, "" if announce else " (by the fleet)")
        if announce:
            self._announced_end.add(experiment_id)
            self._announce(rec, state, "firing", "ticket" if state == "aborted" else "info",
                           f"chaos experiment {experiment_id} ({rec['template']}) {state}: {reason}", ended_ns,
                           {"reason": reason})

    def _judge(self, rec: dict) -> None:
        """The report once the after window has passed: kept with the experiment, announced as its result."""
        self._pending.pop(rec["id"], None)
        try:
            doc = experiment_report(self._store.read, rec, int(self.clock() * _NS), self.config.recovery_tolerance)
        except Exception:  # noqa: BLE001 - logged; the report can still be asked for
            self.logger.exception("chaos experiment %s: the report failed", rec["id"])
            return
        result = {k: doc[k] for k in ("resilience_score", "score_terms", "degradation", "injected")}
        result.update(recovery_seconds=doc["recovery"]["seconds"], fault_tolerance=doc["fault_tolerance"]["value"],
                      cost_impact=doc["cost"]["impact"])
        self._store.write([("UPDATE chaos_experiments SET result = ? WHERE id = ?", [json.dumps(result), rec["id"]])])
        score = doc["resilience_score"]
        if self._fleet is not None and rec["id"] not in self._announced_end:
            return  # the pipeline that announced the end announces the result (each keeps its own report)
        self._announced_end.discard(rec["id"])
        self._announce(rec, "result", "resolved", "ticket" if rec["state"] == "aborted" else "info",
                       f"chaos experiment {rec['id']} ({rec['template']}): resilience score "
                       f"{'-' if score is None else score}", int(self.clock() * _NS),
                       {"resilience_score": "" if score is None else f"{score:g}", "experiment_state": rec["state"]})

    def _announce(self, rec: dict, name: str, state: str, severity: str, summary: str, time_ns: int,
                  extra: dict | None = None) -> None:
        labels = {"experiment_id": rec["id"], "template": rec["template"], "agent_id": ",".join(rec["agents"]),
                  **(extra or {})}
        self._host.events.publish([event("chaos", state, severity, name, labels, summary,
                                         identity={"experiment_id": rec["id"]}, time_ns=time_ns,
                                         started_ns=rec["start_ns"])])

    def describe(self) -> list[str]:
        lines = [f"chaos: {len(self._templates)} templates; experiments announced at /v1/decisions/{{agent}}, "
                 f"abort conditions checked every {self.config.check_interval:g}s"]
        if self._state is not None:
            lines.append(self._state.describe_line(
                "shared experiments", self.config.state_refresh,
                "serving, ending and aborting from the local view, new experiments refused"))
        return lines


factory = Factory(
    type="chaos",
    kind=Kind.PROCESSOR,
    config_model=ChaosConfig,
    create=ChaosProcessor,
    description="Chaos experiments: faults announced to agents through /v1/decisions, aborted from the "
                "committed spans, reported with a resilience score.",
)
