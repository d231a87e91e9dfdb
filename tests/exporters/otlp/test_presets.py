"""Presets and the langfuse exporter: contract checks against a local server that checks the documented
endpoint path, content type and auth headers of each service, and decodes the spans strictly
(tests/otlp_sink.py).  Langfuse cloud, LangSmith and Braintrust cannot be reached from here, so this
is what can be checked: that we send what their documentation asks for."""

from __future__ import annotations

import base64
import json
import time

import pytest

from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request
from tests.otlp_sink import Sink

LLM = {"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
       "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 80, "session.id": "s-1"}


def run(tmp_path, name: str, settings: str, spans: int = 1) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters=f"duckdb, {name}", extra=f"  {name}:\n{settings}")
    service = Service(parse_config(text.replace("  batch:\n", "  cost: {}\n  batch:\n", 1), "test"))
    service.start()
    service.receivers[0].ingest.export(request(spans, attrs=LLM, start_ns=time.time_ns()), "test")
    return service


def received(sink: Sink) -> dict:
    deadline = time.monotonic() + 20
    while not sink.got.requests:
        assert time.monotonic() < deadline, "nothing arrived"
        time.sleep(0.05)
    return sink.got.requests[0]


def test_langfuse_gets_basic_auth_its_ingestion_header_and_generations_with_model_usage_and_cost(tmp_path):
    sink = Sink(path="/api/public/otel/v1/traces")
    service = run(tmp_path, "langfuse", f"    host: {sink.url}\n    public_key: pk-lf-1\n    secret_key: sk-lf-1\n"
                                        "    environment: prod\n")
    try:
        got = received(sink)
        headers = {k.lower(): v for k, v in got["headers"].items()}
        assert headers["authorization"] == "Basic " + base64.b64encode(b"pk-lf-1:sk-lf-1").decode()
        assert headers["x-langfuse-ingestion-version"] == "4"
        assert headers["content-type"] == "application/x-protobuf"
        (span,) = got["request"].resource_spans[0].scope_spans[0].spans
        attrs = {kv.key: kv.value for kv in span.attributes}
        assert attrs["langfuse.observation.type"].string_value == "generation"
        assert attrs["langfuse.observation.model.name"].string_value == "gpt-4o-mini"
        assert json.loads(attrs["langfuse.observation.usage_details"].string_value) == {
            "input": 1200, "output": 80, "total": 1280}
        cost = json.loads(attrs["langfuse.observation.cost_details"].string_value)["total"]
        store = service.exporters["duckdb"].store
        store.sync()
        (stored,) = store.read("SELECT cost_usd FROM spans")[0]
        assert cost == pytest.approx(stored) and cost > 0  # priced by genai-prices, shown by Langfuse
        assert attrs["langfuse.session.id"].string_value == "s-1"
        assert attrs["langfuse.environment"].string_value == "prod"
        assert attrs["gen_ai.usage.input_tokens"].int_value == 1200  # the client's own attributes stay
    finally:
        service.shutdown()
        sink.close()


@pytest.mark.parametrize("preset,headers,path", [
    ("langsmith", {"x-api-key": "lsv2_k", "langsmith-project": "agents"}, "/otel/v1/traces"),
    ("braintrust", {"authorization": "Bearer sk-bt", "x-bt-parent": "project_id:p1"}, "/otel/v1/traces"),
])
def test_presets_send_the_headers_their_service_documents(tmp_path, preset, headers, path):
    sink = Sink(path=path)
    lines = "".join(f"      {k}: {v}\n" for k, v in headers.items())
    service = run(tmp_path, "otlphttp", f"    preset: {preset}\n    endpoint: {sink.url}/otel\n    headers:\n{lines}")
    try:
        got = {k.lower(): v for k, v in received(sink)["headers"].items()}
        assert {k: got[k] for k in headers} == headers
    finally:
        service.shutdown()
        sink.close()


@pytest.mark.parametrize("exporter,preset,missing", [
    ("otlphttp", "langsmith", "x-api-key"), ("otlphttp", "braintrust", "authorization, x-bt-parent"),
    ("otlp", "arize", "authorization, arize-space-id")])
def test_a_preset_without_its_headers_is_refused_naming_them(exporter, preset, missing):
    text = pipeline_yaml(Ports.allocate(), "/tmp", exporters=f"duckdb, {exporter}",
                         extra=f"  {exporter}:\n    preset: {preset}\n")
    with pytest.raises(ConfigError, match=f"exporters::{exporter}: .*preset {preset} needs headers: {missing}"):
        parse_config(text, "test")
