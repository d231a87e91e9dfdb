"""A real MLflow tracking server (`mlflow server` with a SQLite store, installed by `make test` in its own
virtual environment): the mlflow exporter creates a run per agent and version for the period, logs
the interval's span, cost and SLO metrics with log-batch, and sends the traces to MLflow's OTLP
endpoint; all of it is read back through MLflow's REST API.  A restart finds the run again."""

from __future__ import annotations

import json
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.servers import start_mlflow


def rest(url: str, method: str, path: str, payload: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(payload).encode() if payload else None, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run_pipeline(tmp_path, ports: Ports, mlflow_url: str) -> Service:
    extra = f"  mlflow:\n    tracking_uri: {mlflow_url}\n    interval: 1h\n    experiment_name: agents\n"
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters="duckdb, mlflow", extra=extra)
    service = Service(parse_config(text.replace("  batch:\n", "  cost: {}\n  batch:\n", 1), "test"))
    service.start()
    return service


def send(ports: Ports, n: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "writer"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}",
                                                                     insecure=True)))
    tracer = provider.get_tracer("test")
    for _ in range(n):
        with tracer.start_as_current_span("write", attributes={"gen_ai.operation.name": "invoke_agent",
                                                               "agent.did": "writer", "agent.version": "2.0"}):
            with tracer.start_as_current_span("chat", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "agent.did": "writer",
                    "agent.version": "2.0", "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}):
                pass
    provider.shutdown()


def flush(service: Service) -> None:
    service.exporters["duckdb"].store.sync()
    (exporter,) = [e for e in service.exporters.values() if e.id.type == "mlflow"]
    assert exporter.flush() > 0


@pytest.mark.slow
def test_runs_metrics_and_traces_read_back_from_a_real_mlflow(tmp_path):
    mlflow = start_mlflow(tmp_path)
    ports = Ports.allocate()
    try:
        service = run_pipeline(tmp_path, ports, mlflow.url)
        try:
            send(ports, 3)
            flush(service)
        finally:
            service.shutdown()  # drains the queue
        experiment = rest(mlflow.url, "GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=agents")
        eid = experiment["experiment"]["experiment_id"]
        (run,) = rest(mlflow.url, "POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [eid]})["runs"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert (tags["agent_sre.agent_id"], tags["agent_sre.agent_version"]) == ("writer", "2.0")
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert (metrics["spans"], metrics["llm_calls"], metrics["input_tokens"], metrics["output_tokens"]) == (
            6.0, 3.0, 3000.0, 300.0)
        assert metrics["cost_usd"] > 0 and metrics["error_rate"] == 0.0
        traces = rest(mlflow.url, "POST", "/api/3.0/mlflow/traces/search", {
            "locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": eid}}],
            "max_results": 10})["traces"]
        assert len(traces) == 3 and {t["tags"]["service.name"] for t in traces} == {"writer"}

        service = run_pipeline(tmp_path, ports, mlflow.url)  # a restart: the day's run is found again
        try:
            send(ports, 1)
            flush(service)
        finally:
            service.shutdown()
        (again,) = rest(mlflow.url, "POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [eid]})["runs"]
        assert again["info"]["run_id"] == run["info"]["run_id"]
        history = rest(mlflow.url, "GET", f"/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}"
                                          "&metric_key=spans")["metrics"]
        assert sorted(m["value"] for m in history) == [2.0, 6.0]  # one point per interval
    finally:
        mlflow.stop()
