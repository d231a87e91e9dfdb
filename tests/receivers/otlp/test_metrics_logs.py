"""OTLP metrics and logs in: the full OpenTelemetry SDK (traces, metrics and logs; gRPC and HTTP)
pointed at us logs no error; metric points and log records land in DuckDB's `metrics` and `logs`
tables; a GenAI event joins its span by trace and span id; bad bodies get the OTLP answers."""

from __future__ import annotations

import gzip
import logging
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml

SIGNALS = """    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [duckdb]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [duckdb]
"""


def start(tmp_path) -> tuple[Service, Ports]:
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path).replace("  telemetry:\n", SIGNALS + "  telemetry:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service, ports


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_full_sdk_sends_all_three_signals_without_an_error(transport, tmp_path, caplog):
    service, ports = start(tmp_path)
    resource = Resource.create({"service.name": "planner"})
    if transport == "grpc":
        target = f"127.0.0.1:{ports.grpc}"
        spans, metrics, logs = (GrpcSpans(endpoint=target, insecure=True), GrpcMetrics(endpoint=target, insecure=True),
                                GrpcLogs(endpoint=target, insecure=True))
    else:
        base = f"http://127.0.0.1:{ports.http}"
        spans, metrics, logs = (HttpSpans(endpoint=f"{base}/v1/traces"), HttpMetrics(endpoint=f"{base}/v1/metrics"),
                                HttpLogs(endpoint=f"{base}/v1/logs"))
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = PeriodicExportingMetricReader(metrics, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    try:
        meter = meter_provider.get_meter("gen_ai")
        tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
        calls = meter.create_counter("agent.calls")
        tracer = tracer_provider.get_tracer("planner")
        otel_logger = logger_provider.get_logger("planner")
        with tracer.start_as_current_span("chat gpt-4o", attributes={"gen_ai.operation.name": "chat",
                                                                     "agent.did": "planner"}) as span:
            otel_logger.emit(event_name="gen_ai.user.message", body={"content": "plan my trip", "role": "user"},
                             attributes={"gen_ai.system": "openai"})
            tokens.record(1200, {"gen_ai.token.type": "input", "gen_ai.request.model": "gpt-4o"})
            tokens.record(80, {"gen_ai.token.type": "output", "gen_ai.request.model": "gpt-4o"})
            calls.add(3, {"agent.id": "planner"})
        otel_logger.emit(body="done", severity_text="INFO")
        assert reader.force_flush(10_000)
        span_ctx = span.get_span_context()
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        logger_provider.shutdown()
    try:
        store = service.exporters["duckdb"].store
        store.sync()
        # the SDK exports cumulative points at the flush and again at shutdown: the last of each series
        points = store.read("SELECT metric_name, metric_type, temporality, value, count, sum, bucket_counts, "
                            "attributes['gen_ai.token.type'] FROM metrics QUALIFY row_number() OVER (PARTITION BY "
                            "metric_name, attributes ORDER BY time_ns DESC) = 1 ORDER BY metric_name, sum")
        by_name = {}
        for p in points:
            by_name.setdefault(p[0], []).append(p)
        (counter,) = by_name["agent.calls"]
        assert counter[1:4] == ("sum", "cumulative", 3.0)
        out, inp = by_name["gen_ai.client.token.usage"]
        assert (inp[1], inp[4], inp[5], inp[7]) == ("histogram", 1, 1200.0, "input") and sum(inp[6]) == 1
        assert (out[5], out[7]) == (80.0, "output")
        # the GenAI event is joinable to its span
        (joined,) = store.read("SELECT l.event_name, l.body, l.body_type, s.name FROM logs l JOIN spans s "
                               "USING (trace_id, span_id)")
        assert joined[0] == "gen_ai.user.message" and joined[2] == "kvlist" and joined[3] == "chat gpt-4o"
        assert '"content":"plan my trip"' in joined[1]
        (trace_id,) = store.read("SELECT trace_id FROM logs WHERE event_name = 'gen_ai.user.message'")[0]
        assert trace_id == f"{span_ctx.trace_id:032x}"
        assert store.read("SELECT body, severity_text, trace_id FROM logs WHERE event_name IS NULL") == [
            ("done", "INFO", None)]
        metrics_text = service.telemetry.exposition().decode()
        assert f'agent_sre_receiver_accepted_log_records_total{{receiver="otlp",transport="{transport}"}} 2.0' in metrics_text
    finally:
        service.shutdown()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


def test_bad_metrics_and_logs_bodies_get_the_otlp_answers(tmp_path):
    service, ports = start(tmp_path)
    url = f"http://127.0.0.1:{ports.http}"

    def post(path: str, body: bytes, content_type: str = "application/x-protobuf", encoding: str = "") -> tuple[int, bytes]:
        headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
        req = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        assert post("/v1/metrics", b"\xff\xff not protobuf")[0] == 400
        assert post("/v1/logs", b"{not json", "application/json")[0] == 400
        assert post("/v1/logs", b"", "text/plain")[0] == 415
        req = ExportLogsServiceRequest()
        records = req.resource_logs.add().scope_logs.add().log_records
        records.add(body={"string_value": "ok"})
        records.add(body={"string_value": "bad"}, trace_id=b"\x01" * 15)  # not 16 bytes
        status, body = post("/v1/logs", gzip.compress(req.SerializeToString()), encoding="gzip")
        answer = ExportLogsServiceResponse.FromString(body)
        assert status == 200 and answer.partial_success.rejected_log_records == 1
        assert "trace_id must be empty or 16 bytes, got 15" in answer.partial_success.error_message
        store = service.exporters["duckdb"].store
        assert store.read("SELECT body FROM logs") == [("ok",)]  # what was valid is kept
    finally:
        service.shutdown()
