"""The agent-sre command line, run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import Ports, free_port, pipeline_yaml, spawn_pipeline, wait_http

DATA = Path(__file__).parent / "testdata"
CLI = [sys.executable, "-m", "agent_sre.pipeline.cli"]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _send_llm_spans(http_port: int, n: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "cli-test"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10)))
    tracer = provider.get_tracer("cli")
    for i in range(n):
        with tracer.start_as_current_span("chat", attributes={
                "agent.did": "did:web:cli", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10 + i}):
            pass
    provider.shutdown()


def _send_log_and_metric(http_port: int) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    logs = LoggerProvider()
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
        endpoint=f"http://127.0.0.1:{http_port}/v1/logs", timeout=10)))
    logs.get_logger("cli").emit(event_name="gen_ai.user.message", body="hello")
    logs.shutdown()
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/metrics",
                                                              timeout=10), export_interval_millis=3_600_000)
    meters = MeterProvider(metric_readers=[reader])
    meters.get_meter("cli").create_counter("calls").add(1)
    meters.shutdown()  # exports once, at shutdown


def test_validate_reports_every_error_with_its_path():
    res = cli("validate", "--config", str(DATA / "many_errors.yaml"))
    assert res.returncode == 2
    assert "(6 problems)" in res.stderr
    assert "processors::batch::timeout: must be a duration" in res.stderr
    assert "receivers::otlp::protocols::grpc::endpoint: must be host:port" in res.stderr


def test_validate_accepts_the_shipped_configs():
    for name in ("default.yaml", "sidecar.yaml"):
        res = cli("validate", "--config", str(Path(__file__).parents[2] / "config" / name))
        assert res.returncode == 0, res.stderr
        assert "valid" in res.stdout


def test_run_refuses_to_start_on_a_bad_config(tmp_path):
    res = cli("run", "--config", str(DATA / "unknown_type.yaml"), cwd=tmp_path)
    assert res.returncode == 2
    assert 'unknown type "otlpp"' in res.stderr
    assert not (tmp_path / "agent-sre-data").exists()


def test_components_lists_the_types():
    res = cli("components")
    assert res.returncode == 0
    for name in ("otlp", "memory_limiter", "batch", "agent_semconv", "duckdb", "debug", "health_check", "admin"):
        assert f"  {name} " in res.stdout


@pytest.mark.slow
def test_query_while_running_and_after_stopping(tmp_path, tmp_path_factory):
    ports = Ports.allocate()
    proc = spawn_pipeline(pipeline_yaml(ports, tmp_path), ports, tmp_path, tmp_path / "run.log")
    config = str(proc.config)
    sql = "SELECT agent_id, model, count(*), sum(input_tokens) FROM spans GROUP BY ALL"
    try:
        _send_llm_spans(ports.http, 3)
        live = cli("query", sql, "--config", config)
        assert live.returncode == 0, live.stderr
        assert live.stdout.splitlines()[0].split()[0] == "agent_id"
        assert "did:web:cli | gpt-4o | 3" in live.stdout and "| 33" in live.stdout
        refused = cli("query", "DELETE FROM spans", "--config", config)
        assert refused.returncode == 1 and "only read-only statements" in refused.stderr
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
    after = cli("query", sql, "--config", config, "--format", "csv")
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[1] == "did:web:cli,gpt-4o,3,33"
    out = tmp_path_factory.mktemp("parquet-elsewhere")  # outside the store's directory
    parquet = cli("export-parquet", "--config", config, "--out", str(out))
    assert parquet.returncode == 0, parquet.stderr
    files = list(out.rglob("*.parquet"))
    assert files and all("date=" in str(f) and "hour=" in str(f) for f in files)


@pytest.mark.slow
def test_run_on_the_embedded_default_prints_where_it_listens(tmp_path):
    ports = Ports.allocate()
    env = {"AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}",
           "AGENT_SRE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports.http}",
           "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
        _send_llm_spans(ports.http, 2)
        res = cli("query", "SELECT count(*) AS n FROM spans", "--endpoint", f"127.0.0.1:{ports.admin}", "--format",
                  "csv")
        assert res.stdout.splitlines() == ["n", "2"]
        _send_log_and_metric(ports.http)  # the embedded default takes all three signals
        res = cli("query", "SELECT (SELECT count(*) FROM logs) AS logs, (SELECT count(*) FROM metrics) AS points",
                  "--endpoint", f"127.0.0.1:{ports.admin}", "--format", "csv")
        assert res.stdout.splitlines() == ["logs,points", "1,1"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"OTLP/gRPC on 127.0.0.1:{ports.grpc}" in out
    assert f"OTLP/HTTP on http://127.0.0.1:{ports.http} (/v1/traces, /v1/metrics, /v1/logs" in out
    assert f"http://127.0.0.1:{ports.admin}" in out and f"http://127.0.0.1:{ports.metrics}/metrics" in out
    assert str(tmp_path / "agent-sre-data" / "spans.duckdb") in out
    assert (tmp_path / "agent-sre-data" / "spans.duckdb").exists()


@pytest.mark.slow
def test_run_stops_on_sigterm_even_when_signals_come_in_a_burst(tmp_path):
    """A signal handler that set a threading.Event while the main thread waited on it could deadlock
    (seen: `agent-sre run` hung for ever after a few SIGTERMs); the handler now only sets a flag."""
    ports = Ports.allocate()
    env = {"AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}", "AGENT_SRE_OTLP_HTTP_ENDPOINT":
           f"127.0.0.1:{ports.http}", "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}", "AGENT_SRE_RECEIVER_WORKERS": "0",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}"}
    for _ in range(3):
        proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
            for _ in range(50):
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
