"""Typed capabilities: how components find each other (the Collector's extensions-by-id).

A component *provides* a capability under its own id when it starts
(``host.provide(SloReports, self.id, self)``); another one asks for it by the capability's type and,
where there may be several, by the id its config names (``host.get(SpanStore, config.storage)``).
Nobody scans for a type string or reaches into another component's attributes.

    capability      provided by            asked for by
    SpanStore       duckdb exporter        sli, slo, cost, anomaly, incidents; admin; prometheus
    SloReports      slo processor          admin (/v1/slos); prometheus, datadog, mlflow, wandb exporters
    CostReports     cost processor         admin (/v1/costs); incidents (postmortem budgets)
    Incidents       incidents processor    admin (/v1/incidents)
    Health          duckdb exporter        health_check (503 while any reports a problem)
    SendingQueue    queued exporters       admin (/v1/status: queue size, on_full, rows dropped)
    TraceAnalysis   replay extension       admin (/v1/traces/{id}, /v1/diff, /v1/golden/check, /v1/what-if)
    Rollouts        delivery processor     admin (/v1/rollouts: list, show, start, promote, pause, abort)
    ChaosExperiments  chaos processor      admin (/v1/chaos: templates, start, stop, list, report); incidents
    MemoryLimit     memory_limiter         the service, before anything starts: ``host.memory_limit_bytes``,
                                           which the store and the cost processor size their caches from;
                                           ``host.memory_headroom()``, which a query's extra pool is sized by
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

Query = Callable[[str, list], list[tuple]]


@runtime_checkable
class MemoryLimit(Protocol):
    """A component that bounds the memory of the whole pipeline (the memory limiter): the service reads
    the smallest limit after building the graph, before anything starts (``Host.memory_limit_bytes``);
    ``memory_headroom_bytes``: what the pipeline may still take before the limiter refuses data (its soft
    limit less what the pipeline held at the last measurement; negative when over it)."""

    @property
    def memory_limit_bytes(self) -> int: ...
    def memory_headroom_bytes(self) -> int: ...


@runtime_checkable
class SpanStore(Protocol):
    """The span store's face to the SRE stages after the durable point (storage/store.py)."""

    def read(self, sql: str, params: list | None = None) -> list[tuple]: ...
    def write(self, statements: list[tuple[str, list]]) -> None: ...
    def sync(self, timeout: float = 60.0) -> None: ...
    def catch_up(self, wait: float) -> int: ...
    def query(self, sql: str, max_rows: int = 1000, timeout_s: float = 10.0, limits: Any = None) -> Any: ...
    def on_commit(self, callback: Callable[[pa.Table], None]) -> None: ...
    def on_charges(self, callback: Callable[[list[tuple]], None], by_task: bool = False) -> None: ...
    def on_task_spend(self, callback: Callable[[list[tuple]], None]) -> None: ...
    def on_rollup(self, callback: Callable[[], None]) -> None: ...
    def remove_callback(self, callback: Callable[..., None]) -> None: ...
    def record_events(self, events: pa.Table) -> None: ...


@runtime_checkable
class Health(Protocol):
    """A component's own view of whether it does its job: ``None``, or what is wrong (health_check
    answers 503 with it, as the Collector's health check does on a component's error status)."""

    def health(self) -> str | None: ...


@runtime_checkable
class SendingQueue(Protocol):
    """An exporter's sending queue as /v1/status shows it (exporters/helper)."""

    def queue_status(self) -> dict: ...


@runtime_checkable
class SloReports(Protocol):
    last_report: list[dict]
    config: Any  # the processor's SloConfig (what-if recomputes with its objectives)

    def report(self) -> list[dict]: ...
    # Every pipeline's SLOs from the fleet store (``source``: its URL or an open FleetStore), with these
    # objectives and the SLIs this pipeline's store rolls up: {"slos": rows, "skipped": {sli: why}}.
    def fleet_report(self, source: Any) -> dict: ...


@runtime_checkable
class CostReports(Protocol):
    config: Any  # the processor's CostConfig (what-if re-prices and replays its budgets)

    def costs(self, days: int = 7) -> dict: ...
    def budgets(self) -> list[dict]: ...  # every budget's account of the current period, from memory
    def budget_specs(self) -> Sequence[Any]: ...
    # Every pipeline's spend from the fleet store, with these budgets: what costs() answers, and
    # "skipped": the tenant budgets left out (the fleet's rollup has no tenant).
    def fleet_costs(self, source: Any, days: int = 7) -> dict: ...


@runtime_checkable
class Incidents(Protocol):
    config: Any  # the processor's IncidentsConfig (what-if replays its breakers)

    def list(self, every: bool = False) -> list[dict]: ...
    def show(self, incident_id: str) -> dict | None: ...
    def transition(self, incident_id: str, action: str, who: str, why: str = "") -> dict: ...
    def postmortem(self, incident_id: str) -> str | None: ...


@runtime_checkable
class TraceAnalysis(Protocol):
    """One stored trace, or a delegation chain across traces, as a tree (processors/replay/traces.py) or
    as OTLP/JSON (processors/replay/otlp_io.py); None for a trace that is not stored.  ``agents``: only
    traces all of whose agents are among them (a tenant's), the others are left out of a chain."""

    def trace(self, trace_id: str, follow_links: bool = True,
              agents: frozenset[str] | None = None) -> dict | None: ...
    def export(self, trace_id: str, agents: frozenset[str] | None = None, follow_links: bool = False) -> dict | None: ...
    # The questions (processors/replay: diff.py, golden.py, whatif.py), each raising ``QuestionError``
    # with the HTTP status to answer when it cannot be answered as asked.
    def diff(self, body: dict, agents: frozenset[str] | None = None) -> dict: ...
    def golden_check(self, body: dict, agents: frozenset[str] | None = None) -> dict: ...
    def what_if(self, body: dict) -> dict: ...
    # What each LLM and tool span of a trace was asked and answered, where recorded: {span_id: {input, output}}.
    def contents(self, trace_id: str, agents: frozenset[str] | None = None) -> dict[str, dict]: ...


@runtime_checkable
class Rollouts(Protocol):
    """Canary and shadow rollouts of agent versions (processors/delivery): listed, shown with their last
    analysis and history, started from a Rollout document (YAML text; ``ConfigError`` with every problem
    and its path; ``agents``: only rollouts of these, a tenant's), and moved by a person: ``act`` with
    promote (``full``: straight to 100 %), pause, resume or abort; ``TransitionError`` 404 (no such
    rollout, or not the tenant's agent), 409 (not now: e.g. a promote refused while the agent's releases
    are frozen, with the reason) or 400 (an unknown action)."""

    def rollouts(self) -> list[dict]: ...
    def rollout(self, name: str) -> dict | None: ...
    def start_rollout(self, document: str, who: str = "", agents: frozenset[str] | None = None) -> dict: ...
    def act(self, name: str, action: str, who: str, why: str = "", full: bool = False) -> dict: ...


@runtime_checkable
class ChaosExperiments(Protocol):
    """Chaos experiments (processors/chaos): the templates; experiments started on agents (``duration``:
    '10m' or seconds, else the template's; ``overrides``: template fields laid over it), stopped,
    listed (running ones unless ``include_ended``) and shown; their report from the stored spans (None
    for an unknown id).  A request that is not valid raises ``ValueError`` (400), an unknown id
    ``LookupError`` (404).  ``feed_incidents``: injected faults feed breakers and policy signals."""

    feed_incidents: bool

    def templates(self) -> list[dict]: ...
    def start_experiment(self, template: str, agents: list[str] | str, duration: str | float | None = None,
                         overrides: dict | None = None, by: str = "") -> dict: ...
    def stop_experiment(self, experiment_id: str, by: str = "", why: str = "") -> dict: ...
    def experiments(self, include_ended: bool = False) -> list[dict]: ...
    def experiment(self, experiment_id: str) -> dict | None: ...
    def report(self, experiment_id: str) -> dict | None: ...
