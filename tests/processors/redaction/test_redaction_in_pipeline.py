"""End to end: spans with secrets sent by the OpenTelemetry SDK through a pipeline with the redaction
processor; the store holds none of them, and each redacted span says how many values it lost."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml

SECRETS = ("sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789", "AKIAIOSFODNN7EXAMPLE", "jane.doe@example.com",
           "4111 1111 1111 1111", "hunter2-password", "Tell me a secret about the moon")

REDACTION = """  redaction:
    presets: [secrets, pii, genai-content]
  batch:
"""


def _send(http_port: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot",
                                                        "deployment.owner": "jane.doe@example.com"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10)))
    tracer = provider.get_tracer("redaction-test")
    with tracer.start_as_current_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "agent.id": "did:web:bot",
            "gen_ai.prompt": "Tell me a secret about the moon", "db.password": "hunter2-password",
            "http.request.header.x": "key sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"}) as span:
        span.add_event("exception", {"exception.message": "denied for AKIAIOSFODNN7EXAMPLE, card 4111 1111 1111 1111"})
    with tracer.start_as_current_span("tool lookup", attributes={"agent.id": "did:web:bot", "q": "weather"}):
        pass
    provider.shutdown()


def test_stored_spans_hold_no_secret_and_count_what_was_redacted(tmp_path):
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, redaction, agent_semconv, batch")
    service = Service(parse_config(text.replace("  batch:\n", REDACTION, 1), "test"))
    service.start()
    try:
        _check(RunningPipeline(service, ports, tmp_path))
    finally:
        service.shutdown()


def _check(p: RunningPipeline) -> None:
    _send(p.ports.http)
    rows = eventually(lambda: p.sql("SELECT name, CAST(attributes AS VARCHAR), CAST(resource_attributes AS VARCHAR), "
                                    "CAST(events AS VARCHAR), attributes['agent_sre.redacted_count'], "
                                    "attributes['gen_ai.prompt.length'] FROM spans ORDER BY name"))
    assert len(rows) == 2, rows
    stored = repr(rows)
    for secret in SECRETS:
        assert secret not in stored
    (chat, tool) = rows
    assert chat[4] == "5"  # prompt, password, header, event message (2 secrets, one value), resource owner
    assert chat[5] == str(len("Tell me a secret about the moon"))
    assert tool[4] == "1" and "weather" in tool[1]  # its resource's owner; its own attributes are clean
    assert 'rule="openai_key"' in p.metrics()
