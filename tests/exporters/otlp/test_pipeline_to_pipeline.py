"""Our own receiver as an OTLP backend: pipeline A (the OTel SDK sends to it) exports with `otlp`
(gRPC) or `otlphttp` (protobuf, JSON) to pipeline B; B stores the same spans, attributes intact,
with the cost A computed added as agent_sre.cost_usd."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, RunningPipeline, pipeline_yaml

SPAN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status_code",
                "service_name", "agent_id", "span_role", "model", "input_tokens", "tool_name")

EXPORTERS = {
    "otlp": "  otlp:\n    endpoint: 127.0.0.1:{grpc}\n    tls: {{insecure: true}}\n",
    "otlphttp-proto": "  otlphttp:\n    endpoint: http://127.0.0.1:{http}\n",
    "otlphttp-json": "  otlphttp:\n    endpoint: http://127.0.0.1:{http}\n    encoding: json\n    compression: none\n",
}


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)
    return value


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_spans_arrive_in_the_second_pipeline_as_they_were_stored_in_the_first(name, start_pipeline, tmp_path):
    b = start_pipeline()
    exporter = name.split("-")[0]
    extra = EXPORTERS[name].format(grpc=b.ports.grpc, http=b.ports.http)
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    ports = Ports.allocate()
    text = pipeline_yaml(ports, a_dir, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters=f"duckdb, {exporter}", extra=extra).replace("  batch:\n", "  cost: {}\n  batch:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    a = RunningPipeline(service, ports, a_dir)
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "planner", "tenant.id": "acme"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}",
                                                                         insecure=True)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("invoke_agent planner", attributes={
                "gen_ai.operation.name": "invoke_agent", "agent.did": "did:web:planner", "tags": ["a", "b"]}):
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 80, "agent.did": "did:web:planner",
                    "gen_ai.request.temperature": 0.2, "stream": True}):
                pass
            with tracer.start_as_current_span("execute_tool search", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}) as tool:
                tool.add_event("retry", {"attempt": 2})
        provider.shutdown()
        _until(lambda: a.sql("SELECT count(*) FROM spans")[0][0] == 3)
        _until(lambda: b.sql("SELECT count(*) FROM spans")[0][0] == 3)
        cols = ", ".join(SPAN_COLUMNS)
        order = " ORDER BY start_ns, name"
        assert b.sql(f"SELECT {cols} FROM spans{order}") == a.sql(f"SELECT {cols} FROM spans{order}")
        a_attrs = a.sql(f"SELECT attributes, resource_attributes, events FROM spans{order}")
        b_attrs = b.sql(f"SELECT attributes, resource_attributes, events FROM spans{order}")
        (a_cost,) = a.sql("SELECT cost_usd FROM spans WHERE span_role = 'llm'")[0]
        assert a_cost > 0
        for (a_map, a_res, a_ev), (b_map, b_res, b_ev) in zip(a_attrs, b_attrs, strict=True):
            extra_cost = {k: v for k, v in b_map.items() if k not in a_map}
            assert {k: b_map[k] for k in a_map} == a_map and a_res == b_res and a_ev == b_ev
            assert extra_cost in ({}, {"agent_sre.cost_usd": repr(a_cost)})
        assert b.sql("SELECT cost_usd FROM spans WHERE span_role = 'llm'") == [(a_cost,)]  # priced by A, read by B
        sent = a.metrics()
        assert f'agent_sre_exporter_sent_spans_total{{exporter="{exporter}"}} 3.0' in sent
    finally:
        service.shutdown()


SIGNAL_PIPELINES = """    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [{exporters}]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [{exporters}]
"""


@pytest.mark.parametrize("name,workers", [("otlp", 2), ("otlphttp-proto", 0), ("otlphttp-json", 0)])
def test_metrics_and_logs_arrive_in_the_second_pipeline_too(name, workers, tmp_path):
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    b_dir, a_dir = tmp_path / "b", tmp_path / "a"
    b_dir.mkdir()
    a_dir.mkdir()
    b_ports = Ports.allocate()
    b_text = pipeline_yaml(b_ports, b_dir).replace("  telemetry:\n", SIGNAL_PIPELINES.format(exporters="duckdb")
                                                   + "  telemetry:\n", 1)
    b = Service(parse_config(b_text, "b"))
    b.start()
    exporter = name.split("-")[0]
    ports = Ports.allocate()
    extra = EXPORTERS[name].format(grpc=b_ports.grpc, http=b_ports.http)
    text = pipeline_yaml(ports, a_dir, exporters=f"duckdb, {exporter}", extra=extra, workers=workers)
    text = text.replace("  telemetry:\n", SIGNAL_PIPELINES.format(exporters=f"duckdb, {exporter}") + "  telemetry:\n", 1)
    a = Service(parse_config(text, "a"))
    a.start()
    try:
        resource = Resource.create({"service.name": "writer"})
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"127.0.0.1:{ports.grpc}", insecure=True),
                                               export_interval_millis=3_600_000)
        meters = MeterProvider(resource=resource, metric_readers=[reader])
        meters.get_meter("m").create_histogram("gen_ai.client.token.usage").record(42, {"gen_ai.token.type": "input"})
        meters.get_meter("m").create_counter("calls").add(2)
        logs = LoggerProvider(resource=resource)
        logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"127.0.0.1:{ports.grpc}",
                                                                               insecure=True)))
        logs.get_logger("l").emit(event_name="gen_ai.assistant.message", body={"content": "hello"},
                                  attributes={"gen_ai.usage.input_tokens": 5})
        reader.force_flush(10_000)
        logs.shutdown()
        meters.shutdown()
        stores = (a.exporters["duckdb"].store, b.exporters["duckdb"].store)
        metric_cols = "metric_name, metric_type, temporality, value, count, sum, bucket_counts, explicit_bounds, attributes"
        log_cols = "event_name, body, body_type, attributes, severity_number, time_ns"
        _until(lambda: len(stores[1].read("SELECT 1 FROM logs")) == 1 and
               len(stores[1].read("SELECT 1 FROM metrics")) == len(stores[0].read("SELECT 1 FROM metrics")) > 0)
        for cols, table in ((metric_cols, "metrics"), (log_cols, "logs")):
            sql = f"SELECT {cols} FROM {table} ORDER BY ALL"
            assert stores[1].read(sql) == stores[0].read(sql)
    finally:
        a.shutdown()
        b.shutdown()
