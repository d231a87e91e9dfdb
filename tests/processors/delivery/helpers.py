"""A real span store, a host and the delivery processor on a clock the test moves; agent tasks written as
stored spans (canonical columns), back-dated to the minute the test wants."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import pyarrow as pa

from agent_sre.delivery import Router
from agent_sre.pipeline.client.decisions import DecisionClient
from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.capabilities import SpanStore as SpanStoreCapability
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.delivery.factory import DeliveryConfig, DeliveryProcessor
from agent_sre.processors.sli.factory import SliConfig, SliProcessor

MINUTE_NS = 60 * 10**9
HOUR_NS = 60 * MINUTE_NS
T0 = 28_333_333 * MINUTE_NS  # a minute boundary (2023-11-14)
AGENT = "support-bot"
BASE, CAND = "1.4.0", "1.5.0"
_ids = itertools.count(1)


def task(version: str, end_ns: int, ok: bool = True, seconds: float = 1.0, cost: float = 0.0,
         hallucination: float | None = None, input_id: str | None = None, output: str | None = None,
         agent: str = AGENT) -> list[dict]:
    """One task: its agent_task span (and an LLM span carrying its cost) ending at ``end_ns``."""
    n = next(_ids)
    trace = f"{n:032x}"
    start = end_ns - int(seconds * 1e9)
    attributes = {}
    if hallucination is not None:
        attributes["eval.hallucination.score"] = str(hallucination)
    if input_id is not None:
        attributes["agent_sre.input.id"] = input_id
    if output is not None:
        attributes["output.value"] = output
    root = {"trace_id": trace, "span_id": f"{n:016x}", "parent_span_id": "", "name": "invoke_agent",
            "kind": "internal", "start_ns": start, "end_ns": end_ns, "duration_ns": end_ns - start,
            "status_code": "unset" if ok else "error", "span_role": "agent_task", "agent_id": agent,
            "agent_version": version, "service_name": agent, "attributes": attributes, "links": [], "events": []}
    llm = {**root, "span_id": f"{n + 10**12:016x}", "parent_span_id": root["span_id"], "name": "chat",
           "span_role": "llm", "status_code": "unset", "start_ns": start + 1, "end_ns": start + 2,
           "duration_ns": 1, "cost_usd": cost, "attributes": {}}
    return [root, llm]


@dataclass
class Rig:
    store: SpanStore
    host: Host
    proc: DeliveryProcessor
    now_ns: int = T0
    events: list[dict] = field(default_factory=list)

    def at(self, ns: int) -> None:
        self.now_ns = ns

    def add(self, *tasks: list[dict]) -> None:
        rows = [row for t in tasks for row in t]
        self.store.append(pa.Table.from_pylist(rows, schema=SPAN_SCHEMA))

    def start(self, text: str, who: str = "tester") -> dict:
        return self.proc.start_rollout(text, who)

    def evaluate(self, at_ns: int | None = None):
        if at_ns is not None:
            self.at(at_ns)
        return self.proc.evaluate()

    def shutdown(self) -> None:
        self.proc.shutdown()


def host_with(store: SpanStore) -> Host:
    host = Host(telemetry=Telemetry())
    host.provide(SpanStoreCapability, "duckdb", store)
    host.events.persist_to(store.record_events)
    return host


def delivery(host: Host, clock, **config) -> DeliveryProcessor:
    proc = DeliveryProcessor(Settings(ComponentID("delivery"), Kind.PROCESSOR, host.telemetry),
                             DeliveryConfig(interval="1h", **config))
    proc.clock = clock
    return proc


def rig(tmp_path, store: SpanStore | None = None, **config) -> Rig:
    """A store with the built-in SLIs rolled up (hallucination_rate among them) and a started processor."""
    store = store or SpanStore(tmp_path / "spans.duckdb")
    host = host_with(store)
    SliProcessor(Settings(ComponentID("sli"), Kind.PROCESSOR, host.telemetry), SliConfig()).start(host)
    box = Rig(store, host, None)  # type: ignore[arg-type]
    box.proc = delivery(host, lambda: box.now_ns / 1e9, **config)
    host.events.subscribe(box.events.extend, ("rollout",))
    box.proc.start(host)
    return box


def canary(name: str = "bot-1-5", min_samples: int = 20, extra: str = "") -> str:
    return f"""
apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: {name}}}
spec:
  agent: {AGENT}
  baseline: "{BASE}"
  candidate: "{CAND}"
  template: default_canary
  analysis: {{min_samples: {min_samples}}}
{extra}"""


def shadow(name: str = "bot-shadow", min_samples: int = 10) -> str:
    return f"""
apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: {name}}}
spec:
  agent: {AGENT}
  baseline: "{BASE}"
  candidate: "{CAND}"
  template: default_shadow
  analysis: {{min_samples: {min_samples}}}
"""


class BoardClient(DecisionClient):
    """The real DecisionClient (its cache is the router's refresh), asking the host's decisions board
    in-process instead of over HTTP (tests/integration/test_rollout_loop.py goes over HTTP)."""

    def __init__(self, host: Host, clock, refresh: float = 1.0):
        super().__init__("http://127.0.0.1:9", cache_ttl=refresh, clock=clock)
        self.host = host

    def _ask(self, agent_id, tool, task):
        return json.loads(json.dumps(self.host.decisions.decide(agent_id)))


def share(router: Router, sessions: int = 4000) -> float:
    return sum(router.route(f"session-{i}") == CAND for i in range(sessions)) / sessions
