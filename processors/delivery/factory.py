"""delivery: canary and shadow rollouts of agent versions, judged from the stored spans and enforced
through the decisions board.

A ``Stage`` (like slo and incidents): declared in a pipeline's ``processors`` so it is configured,
validated, started after the span store (it needs the ``SpanStore`` at start, to resume its rollouts,
which an extension, started before the exporters, would not have), and not on the data path.  Every
``interval`` it analyses each active rollout over the current step so far (analysis.py), decides
(machine.py), keeps the rollout in the store's ``rollouts`` table (records.py) and announces each
decision as a ``rollout`` event.  As a decision provider it answers ``allow`` with
``details.rollout`` (baseline, candidate, weight, state) for the rollout's agent, which
``GET /v1/decisions/{agent}`` shows and ``agent_sre.delivery.route`` follows; an agent's ``freeze``
on the same board (an exhausted error budget, the slo processor) refuses starts, advances and
promotes, with its reason.

    processors:
      delivery:
        rollouts: [deploy/support-bot-1.5.yaml]   # started when the pipeline starts (GitOps)
        interval: 30s
        state: redis://redis:6379/0               # optional: rollouts shared by the fleet

With ``state`` (``pipeline/storage/shared_state.py``, ``SharedRecords``) a rollout is the fleet's:
its step, weight and state live in Redis, each pipeline routes from its copy (refreshed every
``state_refresh``: the staleness bound of the weight ``agent_sre.delivery.route()`` sees, plus the
client's own decision cache), and every change (start, advance, pause, resume, promote, rollback,
abort) is a compare-and-set on the rollout's version: every pipeline may analyse, the first change
computed from a version is applied, and one computed from a version that has moved on is dropped
(that pipeline adopts the fleet's rollout instead).  So a step changes once, never twice or
backwards.  Redis unreachable: only changes that stop a rollout (rollback, fail, abort) are made
from the local view, advances wait and requests that move a rollout on are refused (503); a stop is
merged when Redis returns (a finished rollout wins over a progressing one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pydantic import Field, field_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import Rollouts, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.errors import ConfigError, TransitionError
from agent_sre.pipeline.component.events import event
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.storage.shared_state import SharedRecord, StateUrl
from agent_sre.processors.delivery import records
from agent_sre.processors.delivery.analysis import Verdict, analyse, judge
from agent_sre.processors.delivery.machine import FINAL, Change, RolloutRun, act, begin, on_analysis
from agent_sre.processors.delivery.metrics import RolloutCollector
from agent_sre.processors.delivery.rollout import Rollout, load_rollout, parse_rollout

_SYNC_TIMEOUT_S = 5.0  # how long an analysis waits for spooled spans to be in DuckDB


class DeliveryConfig(ConfigModel):
    rollouts: list[str] = []  # Rollout files started at start (one whose name the store knows resumes instead)
    interval: Duration = Field(default=30.0, gt=0)  # seconds (or "30s"): how often active rollouts are analysed
    storage: str = ""  # which duckdb exporter; empty: the only one
    # Rollouts shared by the fleet: redis://host:port/db.  Routes serve the local view, refreshed every
    # state_refresh (the staleness bound across the fleet); state_instance names this pipeline.
    state: StateUrl = ""
    state_refresh: Duration = Field(default="250ms", gt=0)
    state_instance: str = ""

    @field_validator("rollouts")
    @classmethod
    def _valid_files(cls, v: list[str]) -> list[str]:
        problems = []
        for path in v:
            try:
                load_rollout(path)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return v


class DeliveryProcessor(Stage):
    config: DeliveryConfig

    def __init__(self, settings, config: DeliveryConfig):
        super().__init__(settings, config)
        self.clock: Callable[[], float] = time.time  # tests run hours of rollout on their own clock
        self._runs: dict[str, RolloutRun] = {}
        self._routes: dict[str, dict] = {}  # agent -> its rollout's route, replaced whole (read lock-free)
        self._counts: dict[tuple[str, str, str], int] = {}  # (rollout, agent, decision) -> since start
        self._pending_files: list[Rollout] = []  # declared rollouts not started yet (refused while frozen)
        self._lock = threading.RLock()
        self._store: SpanStore | None = None
        self._host: Host | None = None
        self._collector = RolloutCollector(lambda: list(self._runs.values()), lambda: dict(self._counts))
        self._worker: PeriodicWorker | None = None
        self._state: Any = None  # SharedState with `state:`
        self._fleet: Any = None  # its SharedRecords("rollouts")
        self._versions: dict[str, int] = {}  # rollout -> the fleet's version this pipeline's copy is of
        self._refresher: PeriodicWorker | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def _start(self, host: Host) -> None:
        self._host = host
        store = self._store = host.get(SpanStore, self.config.storage, str(self.id))  # type: ignore[type-abstract]
        store.write([(records.DDL, [])])
        with self._lock:
            for run in records.load(store.read, str(self.id)):
                self._runs[run.name] = run
            self._pending_files = [r for r in (load_rollout(p) for p in self.config.rollouts)
                                   if r.name not in self._runs]
            self._refresh_routes()
        if self.config.state:
            from agent_sre.pipeline.storage.shared_state import SharedState

            self._state = SharedState(self.config.state, self.config.state_instance, component=str(self.id))
            self._state.bind_metrics(host.telemetry.registry)
            self._fleet = self._state.records("rollouts")
            self.sync_fleet()
            self._refresher = PeriodicWorker(f"{self.id}-state", self.config.state_refresh, self.sync_fleet,
                                             self.logger)
            self._refresher.start()
        host.decisions.register(str(self.id), self)
        host.provide(Rollouts, self.id, self)  # type: ignore[type-abstract]  # a Protocol (python/mypy#4717)
        self.settings.telemetry.registry.register(self._collector)
        self._worker = PeriodicWorker(f"{self.id}-analyse", self.config.interval, self.evaluate, self.logger)
        self._worker.start()

    def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self._state is not None:
            self._state.close()
        if self._host is not None:
            self._host.withdraw(Rollouts, self.id)
        try:
            self.settings.telemetry.registry.unregister(self._collector)
        except KeyError:
            pass

    def describe(self) -> list[str]:
        active = [r.name for r in self._runs.values() if r.active]
        lines = [f"delivery: rollouts analysed every {self.config.interval:g}s"
                 + (f" (active: {', '.join(active)})" if active else "")]
        if self._state is not None:
            lines.append(self._state.describe_line(
                "shared rollouts", self.config.state_refresh,
                "routing from the local view; rollbacks and aborts only, advances wait"))
        return lines

    # --- the Rollouts capability (admin API) --------------------------------------------------

    def rollouts(self) -> list[dict]:
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: (-r.started_ns, r.name))
            return [r.summary() for r in runs]

    def rollout(self, name: str) -> dict | None:
        with self._lock:
            run = self._runs.get(name)
            return records.detail(run, self._started_store().read) if run is not None else None

    def start_rollout(self, document: str, who: str = "", agents: frozenset[str] | None = None) -> dict:
        """Start the rollout a YAML document describes.  ``ConfigError`` for an invalid document,
        ``TransitionError`` 404 when ``agents`` (a tenant's) does not hold its agent, 409 when it cannot
        start now (its name or its agent has a rollout in progress, or the agent's releases are frozen)."""
        rollout = parse_rollout(document, "rollout")
        if agents is not None and rollout.spec.agent not in agents:
            raise TransitionError(f"agent {rollout.spec.agent!r} is not one of the caller's", 404)
        self._begin(rollout, who)
        return self.rollout(rollout.name) or {}

    def act(self, name: str, action: str, who: str, why: str = "", full: bool = False) -> dict:
        now_ns = self._now_ns()
        with self._lock:
            run = self._runs.get(name)
            if run is None:
                raise TransitionError(f"no rollout {name!r}", 404)
            frozen = self._frozen(run.spec.agent) if action == "promote" else None
            trial = replace(run)
            change = act(trial, action, now_ns, frozen, who, why, full)
            shared = self._share(trial)
            if shared == "moved":
                raise TransitionError(f"rollout {name} was changed by another pipeline meanwhile (now {self._runs[name].state}, "
                                      f"step {self._runs[name].step}: {self._runs[name].reason}); ask again", 409)
            if shared == "held":
                raise TransitionError(f"{action} of rollout {name} refused: the shared state is unreachable "
                                      f"({self._state.status()['last_error']}); only abort works until Redis is back", 503)
            self._apply(trial, change, now_ns)
        return self.rollout(name) or {}

    # --- the loop -----------------------------------------------------------------------------

    def evaluate(self) -> list[Change]:
        """Analyse every active rollout now and act on what the analyses say; start declared rollouts
        that are not frozen.  Returns the decisions taken."""
        if self._store is None:
            return []
        pending = self._store.catch_up(_SYNC_TIMEOUT_S)  # bounded read-your-writes, as queries have it
        if pending:  # a store behind is analysed as it is; the next tick sees the rest
            self.logger.warning("span store is %d spans behind: analysing what it has inserted", pending)
        changes = []
        with self._lock:
            for rollout in list(self._pending_files):
                try:
                    changes.append(self._begin(rollout, "config"))
                    self._pending_files.remove(rollout)
                except TransitionError as exc:
                    self.logger.info("declared rollout %s not started yet: %s", rollout.name, exc)
            for run in [r for r in self._runs.values() if r.active]:
                change = self._analyse(run, self._now_ns())
                if change is not None:
                    changes.append(change)
        return changes

    def _analyse(self, run: RolloutRun, now_ns: int) -> Change | None:
        store = self._started_store()
        result = analyse(store.read, run.spec, run.step_started_ns, now_ns)
        step_over = run.state == "progressing" and run.step_over(now_ns)
        verdict: Verdict = judge(result, run.spec, run.current, step_over)
        needs_freeze = verdict.outcome == "pass" or (run.state == "paused" and run.paused_by == "freeze")
        frozen = self._frozen(run.spec.agent) if needs_freeze else None
        run.analysis = {**result, "at_ns": now_ns, "step": run.step,
                        "verdict": {"outcome": verdict.outcome, "reasons": verdict.reasons}}
        trial = replace(run)
        change = on_analysis(trial, verdict, now_ns, frozen)
        shared = self._share(trial) if change is not None else "none"
        if change is not None and shared == "applied":
            self._apply(trial, change, now_ns)
            return change
        if shared == "none":
            run.reason = trial.reason
        elif shared == "held" and change is not None:
            run.reason = f"{change.reason}; {change.decision} waits for the shared state (Redis unreachable)"
            self.logger.warning("rollout %s: %s", run.name, run.reason)
        self._started_store().write([records.save(str(self.id), self._runs[run.name])])  # the latest analysis
        return None

    def _begin(self, rollout: Rollout, who: str) -> Change:
        now_ns = self._now_ns()
        agent = rollout.spec.agent
        with self._lock:
            known = self._runs.get(rollout.name)
            if known is not None and known.active:
                raise TransitionError(f"rollout {rollout.name} is already {known.state}", 409)
            busy = next((r for r in self._runs.values() if r.active and r.spec.agent == agent), None)
            if busy is not None:
                raise TransitionError(f"agent {agent} already has rollout {busy.name} {busy.state}; "
                                      "abort it first", 409)
            frozen = self._frozen(agent)
            if frozen is not None:
                raise TransitionError(f"rollout {rollout.name} refused: {frozen}", 409)
            run, change = begin(rollout, now_ns, who)
            shared = self._share(run)
            if shared == "moved" and not self._runs[run.name].active:
                shared = self._share(run)  # an earlier run of this name, finished, was not adopted yet
            if shared == "moved":
                raise TransitionError(f"rollout {rollout.name} was started by another pipeline meanwhile", 409)
            if shared == "held":
                raise TransitionError(f"rollout {rollout.name} refused: the shared state is unreachable "
                                      f"({self._state.status()['last_error']}); a rollout started now would route "
                                      "on this pipeline only", 503)
            self._apply(run, change, now_ns)
            return change

    # --- decisions ----------------------------------------------------------------------------

    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision:
        """From memory: the agent's rollout (active, else its last), for the router in each agent."""
        route = self._routes.get(agent)
        return ALLOW if route is None else Decision("allow", details={"rollout": route})

    def agents(self) -> list[str]:
        return list(self._routes)

    def _frozen(self, agent: str) -> str | None:
        """Why the agent's releases are frozen (a ``freeze`` on the decisions board), or None."""
        if self._host is None:
            return None
        for source in self._host.decisions.decide(agent).get("sources", []):
            if source.get("action") == "freeze":
                return f"releases of agent {agent} are frozen by {source.get('source')}: {source.get('reason')}"
        return None

    # --- bookkeeping --------------------------------------------------------------------------

    def _started_store(self) -> SpanStore:
        if self._store is None:
            raise RuntimeError(f"{self.id} is not started")
        return self._store

    def _now_ns(self) -> int:
        return int(self.clock() * 1e9)

    def _apply(self, run: RolloutRun, change: Change, now_ns: int) -> None:
        self._runs[run.name] = run
        self._record(run, change, now_ns)

    # --- the fleet's rollouts (state: redis://…) --------------------------------------------------

    def _share(self, run: RolloutRun) -> str:
        """Write a changed rollout to the fleet if its copy here is still the fleet's: "applied" (also
        without ``state``, and for a stop made while Redis is unreachable, merged at the reconcile),
        "moved" (another pipeline changed it first: its rollout is adopted here) or "held" (Redis is
        unreachable and the change moves the rollout on)."""
        if self._fleet is None:
            return "applied"
        final = run.state in FINAL
        expected = self._versions.get(run.name, 0 if run.name in self._runs else -1)
        reply = self._fleet.put(run.name, expected, _doc(run), final)
        if reply is not None and not reply[0] and reply[1].version < 0:  # Redis restarted empty, not reconciled
            reply = self._fleet.merge(run.name, max(expected, 0), _doc(run), final)
        if reply is None:
            return "applied" if final else "held"
        written, held = reply
        if not written:
            self._adopt(run.name, held)
            return "moved"
        self._versions[run.name] = held.version
        return "applied"

    def sync_fleet(self) -> None:
        """Every ``state_refresh``: reconcile with Redis when it is back, then adopt the rollouts other
        pipelines started or changed (stored and routed here; their decisions were announced there)."""
        if self._fleet is None:
            return
        with self._lock:
            local = {name: SharedRecord(self._versions.get(name, 0), run.state in FINAL, _doc(run))
                     for name, run in self._runs.items()}
        remote = self._fleet.sync(local, lambda rec: rec.doc["updated_ns"] / 1e9, self.clock())
        if remote:
            with self._lock:
                for name, held in remote.items():
                    self._adopt(name, held)

    def _adopt(self, name: str, held: SharedRecord) -> None:
        """The fleet's copy of a rollout replaces this pipeline's (under the lock)."""
        mine = self._runs.get(name)
        known = self._versions.get(name, -1)
        if not held.doc or (mine is not None and (held.version < known or (held.version == known and _doc(mine) == held.doc))):
            return  # this pipeline changed it since (its own write is newer), or holds it already
        run = _run(held.doc)
        if mine is not None and mine.started_ns == run.started_ns:
            run.analysis = mine.analysis  # each pipeline keeps its own last analysis
        self._runs[name] = run
        self._versions[name] = held.version
        self._pending_files = [r for r in self._pending_files if r.name != name]
        self._refresh_routes()
        self._started_store().write([records.save(str(self.id), run)])
        self.logger.info("rollout %s (agent %s) from the fleet: %s, step %d, %g%% to the candidate", name,
                         run.spec.agent, run.state, run.step, run.weight)

    def _record(self, run: RolloutRun, change: Change, now_ns: int) -> None:
        """Store, count, route and announce one decision (under the lock: in the order taken)."""
        self._started_store().write([records.save(str(self.id), run)])
        key = (run.name, run.spec.agent, change.decision)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._refresh_routes()
        self.logger.info("rollout %s (agent %s): %s: %s", run.name, run.spec.agent, change.decision, change.reason)
        if self._host is not None:
            self._host.events.publish([_event(run, change, now_ns)])

    def _refresh_routes(self) -> None:
        latest: dict[str, RolloutRun] = {}
        for run in self._runs.values():  # an active rollout wins; else the agent's most recent one
            best = latest.get(run.spec.agent)
            if best is None or (run.active, run.updated_ns) > (best.active, best.updated_ns):
                latest[run.spec.agent] = run
        self._routes = {agent: run.route() for agent, run in latest.items()}


def _doc(run: RolloutRun) -> dict:
    """A rollout as the fleet's record holds it (its analysis stays with each pipeline)."""
    return {"document": run.rollout.document(), "state": run.state, "step": run.step, "paused_by": run.paused_by,
            "reason": run.reason, "started_ns": run.started_ns, "step_started_ns": run.step_started_ns,
            "updated_ns": run.updated_ns}


def _run(doc: dict) -> RolloutRun:
    return RolloutRun(Rollout.model_validate(doc["document"]), started_ns=doc["started_ns"], state=doc["state"],
                      step=doc["step"], step_started_ns=doc["step_started_ns"], paused_by=doc["paused_by"],
                      reason=doc["reason"], updated_ns=doc["updated_ns"])


def _event(run: RolloutRun, change: Change, now_ns: int) -> dict:
    spec = run.spec
    labels = {"rollout": run.name, "agent_id": spec.agent, "baseline": spec.baseline, "candidate": spec.candidate,
              "strategy": spec.strategy, "state": run.state, "weight": f"{run.weight:g}", "step": str(run.step)}
    if change.who:
        labels["by"] = change.who
    return event("rollout", "resolved" if run.state in FINAL else "firing",
                 "ticket" if change.decision in ("rollback", "fail") else "info", change.decision, labels,
                 f"rollout {run.name} of agent {spec.agent} ({spec.baseline} -> {spec.candidate}): "
                 f"{change.decision}, {run.weight:g}% to the candidate: {change.reason}",
                 identity={"rollout": run.name, "started_ns": str(run.started_ns)}, time_ns=now_ns,
                 started_ns=run.started_ns)


factory = Factory(
    type="delivery",
    kind=Kind.PROCESSOR,
    config_model=DeliveryConfig,
    create=DeliveryProcessor,
    description="Canary and shadow rollouts of agent versions: judged from the stored spans, routed through "
                "the decisions API, frozen by exhausted error budgets.",
)
