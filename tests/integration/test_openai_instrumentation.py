"""Real instrumentation libraries drive the real `openai` client against a small local server that
answers /v1/chat/completions (a stand-in for the OpenAI API, which cannot be reached here); the spans
they produce land in DuckDB with model and token columns filled."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

COMPLETION = {
    "id": "chatcmpl-test-1", "object": "chat.completion", "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_test",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Your refund is on its way."}}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
              "prompt_tokens_details": {"cached_tokens": 4}},
}


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body.get("model") != "gpt-4o-mini":
            self.send_error(404)
            return
        data = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _instrumentor(name: str):
    if name == "opentelemetry-instrumentation-openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    else:
        from openinference.instrumentation.openai import OpenAIInstrumentor
    return OpenAIInstrumentor()


@pytest.mark.parametrize("library", ["opentelemetry-instrumentation-openai-v2", "openinference-instrumentation-openai"])
def test_instrumented_openai_call_lands_with_model_and_tokens(pipeline, chat_server, library):
    provider = TracerProvider(resource=Resource.create({"service.name": "refund-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"127.0.0.1:{pipeline.ports.grpc}", insecure=True, timeout=10)))
    instrumentor = _instrumentor(library)
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=chat_server, api_key="test-key", max_retries=0)
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Where is my refund?"}])
        assert answer.choices[0].message.content == "Your refund is on its way."
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    rows = pipeline.sql("SELECT span_role, model, provider, input_tokens, output_tokens, service_name, scope_name "
                        "FROM spans")
    assert len(rows) == 1, rows
    role, model, provider_name, input_tokens, output_tokens, service, scope = rows[0]
    assert role == "llm"
    assert model == "gpt-4o-mini-2024-07-18" if library.startswith("opentelemetry") else model in (
        "gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert provider_name == "openai"
    assert (input_tokens, output_tokens) == (21, 9)
    assert service == "refund-agent"
    assert scope
