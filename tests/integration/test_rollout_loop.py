"""The rollout loop end to end: a pipeline started from YAML with a declared Rollout file; an agent loop that
picks its version per session with agent_sre.delivery over real HTTP (GET /v1/decisions/{agent}) and sends
its task spans as OTLP/HTTP; the delivery processor judges the stored spans, rolls the worse candidate back, and
the agent stops sending sessions to it at its next refresh.  Spans are back-dated to the processor's clock, so
the first half hour of the 5 % step takes a second."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.delivery import Router, to_candidate
from agent_sre.pipeline.client.decisions import DecisionClient
from agent_sre.pipeline.component.registry import registry
from agent_sre.processors.delivery.factory import factory as delivery_factory
from tests.conftest import pipeline_yaml, start_on_free_ports
from tests.otlp_builders import kv

registry.register(delivery_factory)  # until the lead adds it to the built-in registry (same object: no conflict)

AGENT, BASE, CAND, NAME = "support-bot", "1.4.0", "1.5.0", "bot-canary"
MINUTE_NS = 60 * 10**9
T0 = 28_333_333 * MINUTE_NS
SESSIONS = [f"session-{i}" for i in range(600)]


def _rollout(tmp_path) -> str:
    path = tmp_path / "rollout.yaml"
    path.write_text(f"""apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: {NAME}}}
spec: {{agent: {AGENT}, baseline: "{BASE}", candidate: "{CAND}", template: default_canary,
        analysis: {{min_samples: 20}}}}
""")
    return str(path)


def _tasks(routed: list[tuple[str, str]]) -> ExportTraceServiceRequest:
    """One invoke_agent span per session, a second apart from T0; every 5th candidate task fails."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", AGENT))
    spans = rs.scope_spans.add()
    failed = 0
    for i, (session, version) in enumerate(routed):
        sp = spans.spans.add()
        sp.trace_id, sp.span_id, sp.name = os.urandom(16), os.urandom(8), "invoke_agent support-bot"
        sp.start_time_unix_nano = T0 + i * 10**9
        sp.end_time_unix_nano = sp.start_time_unix_nano + 800_000_000
        sp.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.id", AGENT),
                              kv("agent.version", version), kv("session.id", session)])
        if version == CAND:
            failed += 1
            if failed % 5 == 0:
                sp.status.code = 2  # STATUS_CODE_ERROR
    return req


def _post(port: int, req: ExportTraceServiceRequest) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=req.SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200


@pytest.mark.slow
def test_a_worse_canary_is_rolled_back_and_the_agents_router_follows_at_its_next_refresh(tmp_path):
    rollout = _rollout(tmp_path)
    processors = "memory_limiter, agent_semconv, sli, delivery, batch"

    def text(ports, attempt):
        base = pipeline_yaml(ports, tmp_path / f"run{attempt}", processors=processors)
        return base.replace("  batch:\n", f"  sli: {{}}\n  delivery:\n    interval: 1h\n    rollouts: [{rollout}]\n"
                                          "  batch:\n", 1)

    service, ports, _ = start_on_free_ports(text)
    try:
        (proc,) = service.components_of("delivery")
        proc.clock = lambda: T0 / 1e9
        (started,) = proc.evaluate()  # the declared rollout starts (nothing freezes this agent)
        assert (started.decision, started.who) == ("start", "config")

        mono = [0.0]  # the router's refresh clock (its answers go over real HTTP)
        agent = Router(AGENT, default=BASE, client=DecisionClient(f"127.0.0.1:{ports.admin}", cache_ttl=1.0,
                                                                  clock=lambda: mono[0]))
        routed = [(s, agent.route(s)) for s in SESSIONS]
        expected = [s for s in SESSIONS if to_candidate(5, NAME, s)]
        assert [s for s, v in routed if v == CAND] == expected and len(expected) >= 20
        _post(ports.http, _tasks(routed))

        proc.clock = lambda: (T0 + 30 * MINUTE_NS) / 1e9
        (change,) = proc.evaluate()
        failed = len(expected) // 5
        assert change.decision == "rollback"
        assert change.reason == (f"rollback condition error_rate >= 0.05 holds (candidate: "
                                 f"{failed / len(expected):.4g})")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/v1/decisions/{AGENT}", timeout=10) as r:
            decision = json.loads(r.read())
        assert decision["action"] == "allow"
        assert (decision["rollout"]["state"], decision["rollout"]["weight"]) == ("rolled_back", 0.0)

        assert agent.route(expected[0]) == CAND  # the agent's answer holds until its refresh ...
        mono[0] += 1.0
        assert {agent.route(s) for s in SESSIONS} == {BASE}  # ... and then no session goes to the candidate

        with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert (f'agent_sre_rollout_weight{{agent_id="{AGENT}",baseline="{BASE}",candidate="{CAND}",'
                f'rollout="{NAME}",strategy="canary"}} 0.0') in metrics
        events = service.exporters["duckdb"].store.read(
            "SELECT name, state FROM events WHERE kind = 'rollout' ORDER BY time_ns")
        assert events == [("start", "firing"), ("rollback", "resolved")]
    finally:
        service.shutdown()


def _scored_tasks(specs: list[tuple[str, bool, float]]) -> ExportTraceServiceRequest:
    """(version, ok, hallucination score) per task, ending now."""
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for version, ok, score in specs:
        sp = spans.spans.add()
        sp.trace_id, sp.span_id, sp.name = os.urandom(16), os.urandom(8), "invoke_agent"
        sp.start_time_unix_nano, sp.end_time_unix_nano = now - 10**9, now
        sp.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), kv("agent.did", AGENT),
                              kv("agent.version", version), kv("eval.hallucination.score", score)])
        if not ok:
            sp.status.code = 2
    return req


def _queries() -> dict[str, str]:
    """The docs' queries with their arguments filled in: Argo's by metric name, Flagger's by template name."""
    import yaml

    docs = Path(__file__).resolve().parents[2] / "docs" / "delivery"
    argo = yaml.safe_load((docs / "argo-analysis-template.yaml").read_text())
    args = {"agent-id": AGENT, "canary-version": CAND, "stable-version": BASE, "min-samples": "20"}
    out = {}
    for metric in argo["spec"]["metrics"]:
        query = metric["provider"]["prometheus"]["query"]
        for k, v in args.items():
            query = query.replace(f"{{{{args.{k}}}}}", v)
        out[f"argo:{metric['name']}"] = query
    for doc in yaml.safe_load_all((docs / "flagger-metric-template.yaml").read_text()):
        query = (doc["spec"]["query"].replace("{{ variables.agent_id }}", AGENT)
                 .replace("{{ variables.canary_version }}", CAND).replace("{{ interval }}", "10m"))
        out[f"flagger:{doc['metadata']['name']}"] = query
    assert "{{" not in "".join(out.values())
    return out


@pytest.mark.slow
def test_the_argo_and_flagger_examples_query_the_pipelines_metrics_in_a_real_prometheus(tmp_path):
    from tests.prometheus_server import prometheus

    def text(ports, attempt):
        base = pipeline_yaml(ports, tmp_path / f"run{attempt}", processors="memory_limiter, agent_semconv, sli, batch",
                             exporters="duckdb, prometheus",
                             extra=f"  prometheus:\n    endpoint: 127.0.0.1:{ports.prometheus}\n")
        return base.replace("  batch:\n", "  sli: {}\n  batch:\n", 1)

    service, ports, _ = start_on_free_ports(text)
    ingest = service.receivers[0].ingest
    try:
        # before the window: 100 good, unhallucinated tasks of each version (the counters' series exist)
        ingest.export(_scored_tasks([(v, True, 0.1) for v in (BASE, CAND) for _ in range(100)]), "test")
        with prometheus(tmp_path, ports.prometheus) as prom:
            prom.query_until(f'agent_sre_sli_events_total{{agent_version="{CAND}"}}')
            time.sleep(2.5)  # a few scrapes of the starting values
            # the window: the stable version 40 good tasks; the canary 40, 4 failed, 8 scored as hallucinations
            ingest.export(_scored_tasks([(BASE, True, 0.1)] * 40 + [(CAND, i >= 4, 0.9 if i < 8 else 0.1)
                                                                    for i in range(40)]), "test")
            got = {}
            for name, query in _queries().items():
                got[name] = float(prom.query_until(query)[0]["value"][1])
            time.sleep(2.5)  # later scrapes: the same answers
            again = {name: float(prom.query_until(query)[0]["value"][1]) for name, query in _queries().items()}
        # increase() extrapolates both series of a ratio alike (same scrapes), so the ratios are exact:
        # canary success 36 / 40, stable 40 / 40, hallucinations 8 / 40
        expected = {"argo:task-success-rate": 0.9, "argo:task-success-vs-stable": -0.1,
                    "argo:hallucination-rate": 0.2, "flagger:agent-sre-task-success": 90.0,
                    "flagger:agent-sre-hallucination-rate": 20.0}
        assert got == pytest.approx(expected, abs=1e-9)
        assert again == pytest.approx(expected, abs=1e-9)
    finally:
        service.shutdown()
