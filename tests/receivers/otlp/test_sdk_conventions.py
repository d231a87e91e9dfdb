"""The real OpenTelemetry SDK (OTLP gRPC and HTTP exporters) sends spans in each convention;
the canonical columns in DuckDB are checked value by value."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

COLUMNS = ["agent_id", "agent_name", "agent_version", "session_id", "task_name", "task_success", "span_role",
           "tool_name", "model", "provider", "input_tokens", "output_tokens", "cached_tokens", "cost_usd",
           "delegation_from", "delegation_to", "trust_score", "policy_name", "policy_decision", "error_type"]

# name -> (attributes sent, canonical columns expected; unlisted columns must be NULL)
CASES = {
    "seed-task": (
        {"agent.did": "did:web:billing", "agent.name": "billing", "agent.version": "2.1.0",
         "agent.task.name": "refund", "agent.session.id": "s-1", "agent.task.success": True},
        {"agent_id": "did:web:billing", "agent_name": "billing", "agent_version": "2.1.0", "task_name": "refund",
         "session_id": "s-1", "task_success": True, "span_role": "agent_task"}),
    "seed-tool": (
        {"agent.did": "did:web:billing", "agent.tool.name": "stripe.refund", "agent.trust_score": 0.87},
        {"agent_id": "did:web:billing", "tool_name": "stripe.refund", "trust_score": 0.87, "span_role": "tool"}),
    "seed-delegation": (
        {"agent.delegation.from": "triage", "agent.delegation.to": "billing"},
        {"delegation_from": "triage", "delegation_to": "billing", "span_role": "delegation"}),
    "seed-policy": (
        {"agent.policy.name": "pii-guard", "agent.policy.decision": "deny", "agent.model.name": "gpt-4o"},
        {"policy_name": "pii-guard", "policy_decision": "deny", "model": "gpt-4o", "span_role": "policy_check"}),
    "genai-current": (
        {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
         "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 120,
         "gen_ai.usage.output_tokens": 30, "gen_ai.usage.cache_read.input_tokens": 64,
         "gen_ai.agent.name": "support", "gen_ai.agent.id": "asst_1", "gen_ai.conversation.id": "conv-1"},
        {"provider": "openai", "model": "gpt-4o-2024-08-06", "input_tokens": 120, "output_tokens": 30,
         "cached_tokens": 64, "agent_name": "support", "agent_id": "asst_1", "session_id": "conv-1",
         "span_role": "llm"}),
    "genai-deprecated": (
        {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-3-5-sonnet",
         "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 7},
        {"provider": "anthropic", "model": "claude-3-5-sonnet", "input_tokens": 11, "output_tokens": 7,
         "span_role": "llm"}),
    "genai-tool": (
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "agent.task.name": "plan"},
        {"tool_name": "get_weather", "task_name": "plan", "span_role": "tool"}),
    "openinference-llm": (
        {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
         "llm.token_count.prompt": 50, "llm.token_count.completion": 5,
         "llm.token_count.prompt_details.cache_read": 10, "session.id": "sess-9", "llm.cost.total": 0.0012},
        {"model": "gpt-4o-mini", "provider": "openai", "input_tokens": 50, "output_tokens": 5, "cached_tokens": 10,
         "session_id": "sess-9", "cost_usd": 0.0012, "span_role": "llm"}),
    "openinference-tool": (
        {"openinference.span.kind": "TOOL", "tool.name": "lookup_order"},
        {"tool_name": "lookup_order", "span_role": "tool"}),
    "openinference-agent": (
        {"openinference.span.kind": "AGENT", "agent.name": "router"},
        # an agent named only by its name is identified by it (its children are attributed to it)
        {"agent_id": "router", "agent_name": "router", "span_role": "agent_task", "task_success": True}),
    "openllmetry-llm": (
        {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-3.5-turbo",
         "gen_ai.usage.prompt_tokens": 9, "gen_ai.usage.completion_tokens": 3, "llm.usage.total_tokens": 12,
         "traceloop.workflow.name": "triage_flow"},
        {"provider": "openai", "model": "gpt-3.5-turbo", "input_tokens": 9, "output_tokens": 3,
         "task_name": "triage_flow", "span_role": "llm"}),
    "openllmetry-tool": (
        {"traceloop.span.kind": "tool", "traceloop.entity.name": "web_search"},
        {"tool_name": "web_search", "span_role": "tool"}),
    "plain": ({"http.route": "/health"}, {"span_role": "other"}),
}


def _send(exporter, case_filter=None) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "conventions", "agent.version": "9.9"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # export on end: the OK comes before we query
    tracer = provider.get_tracer("tests.conventions", "1.0")
    for name, (attrs, _) in CASES.items():
        with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs):
            pass
    with tracer.start_as_current_span("failing-task", attributes={"agent.task.name": "charge"}) as span:
        span.record_exception(TimeoutError("payment gateway timed out"))
        span.set_status(Status(StatusCode.ERROR, "gateway timeout"))
    provider.shutdown()


@pytest.fixture(params=["grpc", "http"])
def sent(request, pipeline):
    if request.param == "grpc":
        exporter = GrpcExporter(endpoint=f"127.0.0.1:{pipeline.ports.grpc}", insecure=True, timeout=10)
    else:
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{pipeline.ports.http}/v1/traces", timeout=10)
    _send(exporter)
    return pipeline


def _row(p, name: str) -> dict:
    cols = ", ".join(COLUMNS)
    rows = p.sql(f"SELECT {cols} FROM spans WHERE name = ?", [name])
    assert len(rows) == 1, f"{name}: {len(rows)} rows"
    return dict(zip(COLUMNS, rows[0], strict=False))


@pytest.mark.parametrize("case", list(CASES))
def test_canonical_columns_value_by_value(sent, case):
    row = _row(sent, case)
    expected = {c: None for c in COLUMNS}
    expected["agent_version"] = "9.9"  # from the resource, where no span attribute gives one
    # Each case is a trace of its own: a span with no agent in its trace belongs to its service.
    expected["agent_id"] = "conventions"
    expected.update(CASES[case][1])
    if expected["span_role"] != "agent_task":
        expected.setdefault("task_success", None)
    assert row == expected


def test_unmapped_and_mapped_attributes_stay_in_the_map(sent):
    attrs, resource, service, scope = sent.sql(
        "SELECT attributes, resource_attributes, service_name, scope_name FROM spans WHERE name = 'openllmetry-llm'")[0]
    assert attrs["llm.usage.total_tokens"] == "12"
    assert attrs["gen_ai.request.model"] == "gpt-3.5-turbo"
    assert resource["service.name"] == "conventions" and service == "conventions"
    assert scope == "tests.conventions"


def test_failed_task_has_status_error_type_and_event(sent):
    row = _row(sent, "failing-task")
    assert row["span_role"] == "agent_task"
    assert row["task_success"] is False
    assert row["error_type"] == "TimeoutError"
    status, message, events = sent.sql(
        "SELECT status_code, status_message, events FROM spans WHERE name = 'failing-task'")[0]
    assert (status, message) == ("error", "gateway timeout")
    assert events[0]["name"] == "exception"
    assert events[0]["attributes"]["exception.message"] == "payment gateway timed out"


def test_ids_and_times_are_consistent(sent):
    rows = sent.sql("SELECT trace_id, span_id, parent_span_id, kind, start_ns, end_ns, duration_ns FROM spans")
    assert len(rows) == len(CASES) + 1
    for trace_id, span_id, parent, kind, start, end, duration in rows:
        assert len(trace_id) == 32 and len(span_id) == 16 and parent is None
        assert kind in ("client", "internal")
        assert duration == end - start >= 0
