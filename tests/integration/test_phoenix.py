"""A real Arize Phoenix (`phoenix serve`, installed by `make test` in its own virtual environment):
spans the OTel SDK sends to our pipeline and we export to Phoenix — over OTLP/gRPC with `otlp` and
over OTLP/HTTP protobuf with `otlphttp` — are readable back through Phoenix's REST API with the
agent attributes intact (typed where the conventions know the type) and the cost we computed."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.servers import start_phoenix


def phoenix_spans(url: str, project: str) -> list[dict]:
    try:
        with urllib.request.urlopen(f"{url}/v1/projects/{project}/spans?limit=100", timeout=10) as r:
            return json.loads(r.read())["data"]
    except OSError:
        return []  # the project does not exist until its first span


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["otlp", "otlphttp"])
def test_spans_we_export_read_back_from_phoenix_with_their_agent_attributes(exporter, tmp_path):
    phoenix = start_phoenix(tmp_path)
    ports = Ports.allocate()
    settings = (f"  otlp:\n    endpoint: 127.0.0.1:{phoenix.grpc}\n    tls: {{insecure: true}}\n" if exporter == "otlp"
                else f"  otlphttp:\n    endpoint: {phoenix.url}\n    compression: none\n")
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters=f"duckdb, {exporter}", extra=settings)
    service = Service(parse_config(text.replace("  batch:\n", "  cost: {}\n  batch:\n", 1), "test"))
    service.start()
    project = f"agents-{exporter}"
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "researcher",
                                                            "openinference.project.name": project}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}",
                                                                         insecure=True)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("research", attributes={
                "openinference.span.kind": "AGENT", "agent.did": "did:web:researcher", "agent.task.name": "answer"}):
            with tracer.start_as_current_span("ChatCompletion", attributes={
                    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
                    "llm.token_count.prompt": 1500, "llm.token_count.completion": 120,
                    "agent.did": "did:web:researcher"}):
                pass
        provider.shutdown()
        deadline = time.monotonic() + 60
        while len(spans := phoenix_spans(phoenix.url, project)) < 2:
            assert time.monotonic() < deadline, f"Phoenix has {spans}"
            time.sleep(0.5)
    finally:
        service.shutdown()
        phoenix.stop()
    by_name = {s["name"]: s for s in spans}
    llm, agent = by_name["ChatCompletion"], by_name["research"]
    assert llm["span_kind"] == "LLM" and agent["span_kind"] == "AGENT"
    assert llm["parent_id"] == agent["context"]["span_id"]
    a = llm["attributes"]
    assert (a["llm.model_name"], a["agent.did"]) == ("gpt-4o-mini", "did:web:researcher")
    assert a["llm.token_count.prompt"] == 1500 and a["llm.token_count.completion"] == 120  # ints, not text
    assert a["agent_sre.cost_usd"] > 0  # what our cost processor computed, shown by Phoenix
    assert agent["attributes"]["agent.task.name"] == "answer"
