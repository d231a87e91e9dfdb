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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pydantic import Field, field_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import Rollouts, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.errors import ConfigError, TransitionError
from agent_sre.pipeline.component.events import event
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.periodic import PeriodicWorker
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
        host.decisions.register(str(self.id), self)
        host.provide(Rollouts, self.id, self)  # type: ignore[type-abstract]  # a Protocol (python/mypy#4717)
        self.settings.telemetry.registry.register(self._collector)
        self._worker = PeriodicWorker(f"{self.id}-analyse", self.config.interval, self.evaluate, self.logger)
        self._worker.start()

    def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        if self._host is not None:
            self._host.withdraw(Rollouts, self.id)
        try:
            self.settings.telemetry.registry.unregister(self._collector)
        except KeyError:
            pass

    def describe(self) -> list[str]:
        active = [r.name for r in self._runs.values() if r.active]
        return [f"delivery: rollouts analysed every {self.config.interval:g}s"
                + (f" (active: {', '.join(active)})" if active else "")]

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
            change = act(run, action, now_ns, frozen, who, why, full)
            self._record(run, change, now_ns)
        return self.rollout(name) or {}

    # --- the loop -----------------------------------------------------------------------------

    def evaluate(self) -> list[Change]:
        """Analyse every active rollout now and act on what the analyses say; start declared rollouts
        that are not frozen.  Returns the decisions taken."""
        if self._store is None:
            return []
        try:
            self._store.sync(_SYNC_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a store behind is analysed as it is; the next tick sees the rest
            self.logger.warning("span store is behind: analysing what it has inserted")
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
        change = on_analysis(run, verdict, now_ns, frozen)
        if change is not None:
            self._record(run, change, now_ns)
        else:
            store.write([records.save(str(self.id), run)])  # the latest analysis, for `rollout status`
        return change

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
            self._runs[run.name] = run
            self._record(run, change, now_ns)
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
