"""anomaly: the detectors run over the store's per-minute agent series in the running pipeline; an
anomalous minute is an event with its value and expected range, resolved at the next normal minute;
the marks survive a restart (no minute judged twice, a firing series still resolves)."""

from __future__ import annotations

import os
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import kv
from tests.processors.sli.test_sli import MINUTE, T0

ANOMALY_YAML = """  anomaly:
    interval: 1h
    series:
      - {metric: latency, method: zscore}
      - {metric: cost_per_task, method: iqr}
      - {metric: error_rate}
"""


def tasks(specs: list[tuple[int, float, float, bool]], agent: str = "a1") -> ExportTraceServiceRequest:
    """(minute, task duration ms, LLM cost USD, failed) per task: an agent_task span and one LLM span under it."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for minute, ms, usd, failed in specs:
        trace, root = os.urandom(16), os.urandom(8)
        start = T0 + minute * MINUTE + 1_000_000_000
        task = ss.spans.add()
        task.trace_id, task.span_id, task.name = trace, root, "task"
        task.start_time_unix_nano, task.end_time_unix_nano = start, start + int(ms * 1e6)
        task.attributes.extend([kv("agent.did", agent), kv("gen_ai.operation.name", "invoke_agent")])
        if failed:
            task.status.code = 2
        llm = ss.spans.add()
        llm.trace_id, llm.span_id, llm.parent_span_id, llm.name = trace, os.urandom(8), root, "chat"
        llm.start_time_unix_nano, llm.end_time_unix_nano = start, start + 1_000_000
        llm.attributes.extend([kv("agent.did", agent), kv("gen_ai.operation.name", "chat"),
                               kv("gen_ai.request.model", "m"), kv("gen_ai.usage.cost", usd)])
    return req


def normal(minute: int) -> list[tuple[int, float, float, bool]]:
    # latency 100 +/- 10 ms and cost 0.010 +/- 0.001 USD, alternating by minute: mean 100, sd 10
    sign = 1 if minute % 2 else -1
    return [(minute, 100 + 10 * sign, 0.010 + 0.001 * sign, False)] * 3


def start(tmp_path, ports: Ports) -> Service:
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, anomaly, batch")
    service = Service(parse_config(text.replace("  batch:\n", ANOMALY_YAML + "  batch:\n", 1), "test"))
    service.start()
    return service


def evaluate_at(service: Service, minute: int) -> list[dict]:
    (proc,) = service.components_of("anomaly")
    proc.clock = lambda: (T0 + minute * MINUTE) / 1e9
    return proc.evaluate()


def test_a_latency_spike_fires_with_its_expected_range_and_resolves_at_the_next_normal_minute(tmp_path):
    ports = Ports.allocate()
    service = start(tmp_path, ports)
    try:
        ingest = service.receivers[0].ingest
        ingest.export(tasks([t for m in range(40) for t in normal(m)]), "test")
        assert evaluate_at(service, 41) == []  # latency: minutes up to 39 are due; the first look judges 39 only
        ingest.export(tasks([(40, 1000.0, 0.010, False)] * 3), "test")  # 10x slower
        (ev,) = evaluate_at(service, 42)
        labels = ev["labels"]
        assert (ev["kind"], ev["state"], ev["name"], labels["agent_id"], labels["metric"]) == (
            "anomaly", "firing", "latency:zscore", "a1", "latency")
        # the 60 points before minute 40 (40 of them) have mean 100 and sd 10: expected 100 +/- 3 x 10
        assert (labels["value"], labels["expected_low"], labels["expected_high"]) == ("1000", "70", "130")
        assert (ev["severity"], labels["detector_severity"]) == ("ticket", "critical")
        ingest.export(tasks(normal(41)), "test")
        (back,) = evaluate_at(service, 43)
        assert (back["state"], back["fingerprint"]) == ("resolved", ev["fingerprint"])
        store = service.exporters["duckdb"].store
        assert store.read("SELECT state FROM events WHERE kind = 'anomaly' ORDER BY time_ns") == [
            ("firing",), ("resolved",)]
    finally:
        service.shutdown()


def test_failures_and_cost_per_task_are_series_too_and_the_marks_survive_a_restart(tmp_path):
    ports = Ports.allocate()
    service = start(tmp_path, ports)
    try:
        ingest = service.receivers[0].ingest
        ingest.export(tasks([t for m in range(30) for t in normal(m)]), "test")
        store = service.exporters["duckdb"].store
        store.finalize_tasks(time.time_ns() + 120 * 10**9)  # every task's trace has gone quiet
        assert evaluate_at(service, 34) == []  # cost per task: due up to minute 29 (delay 3)
        ingest.export(tasks([(30, 100.0, 0.050, True)] * 3), "test")  # 5x the cost, and every task failed
        store.finalize_tasks(time.time_ns() + 120 * 10**9)
        got = {e["labels"]["metric"]: e for e in evaluate_at(service, 35)}
        assert set(got) == {"cost_per_task", "error_rate"}
        assert got["cost_per_task"]["name"] == "cost_per_task:iqr" and got["cost_per_task"]["labels"]["value"] == "0.05"
        assert got["error_rate"]["labels"]["value"] == "0.5"  # the failed task spans, not their LLM spans
    finally:
        service.shutdown()

    restarted = start(tmp_path, ports)
    try:
        assert evaluate_at(restarted, 35) == []  # judged already: not announced again
        restarted.receivers[0].ingest.export(tasks(normal(31)), "test")
        restarted.exporters["duckdb"].store.finalize_tasks(time.time_ns() + 120 * 10**9)
        resolved = evaluate_at(restarted, 36)
        assert sorted((e["labels"]["metric"], e["state"]) for e in resolved) == [
            ("cost_per_task", "resolved"), ("error_rate", "resolved")]
    finally:
        restarted.shutdown()
