"""Normalisation of agent conventions onto the canonical columns, end to end from OTLP."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent_sre.pipeline.pdata.normalize import (
    PURE_NUMPY_ENV,
    SHIPPED_CONVENTIONS,
    Conventions,
    _c_normalize,
    load_conventions,
    normalize,
)
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.schema import AGENT_COLUMNS, SPAN_SCHEMA

CONVENTIONS = load_conventions()
NON_AGENT_COLUMNS = [name for name in SPAN_SCHEMA.names if name not in AGENT_COLUMNS]


# --- building OTLP requests ---------------------------------------------------------


def _kv(key: str, value: object) -> KeyValue:
    if value is None:
        return KeyValue(key=key, value=AnyValue())  # an empty AnyValue: a null map value
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _request(*spans: dict, resource: dict | None = None) -> ExportTraceServiceRequest:
    """One span per dict: {"attrs": {...}, "error": bool, "events": [(name, {...}), ...]}."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_kv(k, v) for k, v in {"service.name": "svc", **(resource or {})}.items())
    ss = rs.scope_spans.add()
    for i, spec in enumerate(spans):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id = os.urandom(16), os.urandom(8)
        sp.name, sp.kind = f"span-{i}", Span.SPAN_KIND_INTERNAL
        sp.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        sp.end_time_unix_nano = sp.start_time_unix_nano + 1_000
        sp.attributes.extend(_kv(k, v) for k, v in spec.get("attrs", {}).items())
        if spec.get("error"):
            sp.status.code = Status.STATUS_CODE_ERROR
        for name, attrs in spec.get("events", []):
            ev = sp.events.add()
            ev.name = name
            ev.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return req


def _table(*spans: dict, resource: dict | None = None) -> pa.Table:
    return request_to_table(_request(*spans, resource=resource)).table


def _rows(*spans: dict, resource: dict | None = None, conventions: Conventions = CONVENTIONS) -> list[dict]:
    return normalize(_table(*spans, resource=resource), conventions).to_pylist()


def _row(attrs: dict, resource: dict | None = None, **spec) -> dict:
    return _rows({"attrs": attrs, **spec}, resource=resource)[0]


def _agent(row: dict, *columns: str) -> dict:
    return {c: row[c] for c in columns}


# --- each convention --------------------------------------------------------------------


def test_seed_agent_attributes_fill_their_columns():
    row = _row({
        "agent.did": "did:web:triage", "agent.name": "triage", "agent.version": "2.1",
        "agent.session.id": "s-1", "agent.task.name": "answer_ticket", "agent.task.success": True,
        "agent.tool.name": "search_kb", "agent.model.name": "gpt-4o", "agent.model.provider": "openai",
        "agent.tokens.input": 120, "agent.tokens.output": 30, "agent.cost.usd": 0.0042,
        "agent.delegation.from": "router", "agent.delegation.to": "triage", "agent.trust_score": 0.93,
        "agent.policy.name": "pii", "agent.policy.decision": "allow",
    })
    assert _agent(row, *[c for c in AGENT_COLUMNS if c not in ("span_role", "cached_tokens", "error_type")]) == {
        "agent_id": "did:web:triage", "agent_name": "triage", "agent_version": "2.1", "session_id": "s-1",
        "task_name": "answer_ticket", "task_success": True, "tool_name": "search_kb", "model": "gpt-4o",
        "provider": "openai", "input_tokens": 120, "output_tokens": 30, "cost_usd": 0.0042,
        "delegation_from": "router", "delegation_to": "triage", "trust_score": 0.93,
        "policy_name": "pii", "policy_decision": "allow",
    }


def test_agent_id_attribute_fills_agent_id_when_there_is_no_did():
    assert _row({"agent.id": "a-7"})["agent_id"] == "a-7"


def test_genai_current_names_fill_their_columns():
    row = _row({
        "gen_ai.operation.name": "chat", "gen_ai.agent.id": "asst_1", "gen_ai.agent.name": "helper",
        "gen_ai.agent.version": "3", "gen_ai.conversation.id": "conv-9", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-x", "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.cache_read.input_tokens": 800, "gen_ai.usage.cost": 0.01, "error.type": "timeout",
    })
    assert _agent(row, "span_role", "agent_id", "agent_name", "agent_version", "session_id", "provider",
                  "model", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "error_type") == {
        "span_role": "llm", "agent_id": "asst_1", "agent_name": "helper", "agent_version": "3",
        "session_id": "conv-9", "provider": "anthropic", "model": "claude-x", "input_tokens": 1000,
        "output_tokens": 50, "cached_tokens": 800, "cost_usd": 0.01, "error_type": "timeout",
    }


def test_genai_tool_and_workflow_names_fill_tool_and_task_columns():
    tool = _row({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather"})
    workflow = _row({"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "triage_flow"})
    assert (tool["span_role"], tool["tool_name"]) == ("tool", "get_weather")
    assert (workflow["span_role"], workflow["task_name"]) == ("agent_task", "triage_flow")


def test_genai_deprecated_names_fill_their_columns():
    row = _row({
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 7,
        "gen_ai.usage.cache_read_input_tokens": 5,
    })
    assert _agent(row, "provider", "input_tokens", "output_tokens", "cached_tokens", "span_role") == {
        "provider": "openai", "input_tokens": 11, "output_tokens": 7, "cached_tokens": 5, "span_role": "llm",
    }


def test_openinference_attributes_fill_their_columns():
    row = _row({
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o", "llm.provider": "azure",
        "llm.system": "openai", "llm.token_count.prompt": 200, "llm.token_count.completion": 20,
        "llm.token_count.prompt_details.cache_read": 150, "llm.cost.total": 0.003,
        "session.id": "sess-1", "agent.name": "researcher",
    })
    assert _agent(row, "span_role", "model", "provider", "input_tokens", "output_tokens", "cached_tokens",
                  "cost_usd", "session_id", "agent_name") == {
        "span_role": "llm", "model": "gpt-4o", "provider": "azure", "input_tokens": 200, "output_tokens": 20,
        "cached_tokens": 150, "cost_usd": 0.003, "session_id": "sess-1", "agent_name": "researcher",
    }


def test_openinference_llm_system_is_the_provider_when_no_hosting_provider_is_given():
    assert _row({"openinference.span.kind": "LLM", "llm.system": "anthropic"})["provider"] == "anthropic"


def test_openinference_tool_span_fills_tool_name():
    row = _row({"openinference.span.kind": "TOOL", "tool.name": "calculator"})
    assert (row["span_role"], row["tool_name"]) == ("tool", "calculator")


def test_openllmetry_attributes_fill_their_columns():
    row = _row({
        "traceloop.span.kind": "workflow", "traceloop.workflow.name": "support_flow",
        "traceloop.entity.name": "support_flow",
        "traceloop.association.properties.session_id": "chat-42",
    })
    llm = _row({
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 90,
        "gen_ai.usage.completion_tokens": 9, "gen_ai.usage.cache_read_input_tokens": 64,
        "llm.usage.total_tokens": 99,
    })
    assert _agent(row, "span_role", "task_name", "session_id") == {
        "span_role": "agent_task", "task_name": "support_flow", "session_id": "chat-42",
    }
    assert _agent(llm, "span_role", "provider", "model", "input_tokens", "output_tokens", "cached_tokens") == {
        "span_role": "llm", "provider": "openai", "model": "gpt-4o-2024-08-06", "input_tokens": 90,
        "output_tokens": 9, "cached_tokens": 64,
    }


def test_llm_usage_total_tokens_is_not_taken_as_input_tokens():
    row = _row({"llm.usage.total_tokens": 99})
    assert (row["input_tokens"], row["output_tokens"]) == (None, None)


def test_traceloop_entity_name_names_the_tool_only_on_tool_spans():
    tool = _row({"traceloop.span.kind": "tool", "traceloop.entity.name": "web_search"})
    agent = _row({"traceloop.span.kind": "agent", "traceloop.entity.name": "planner"})
    task = _row({"traceloop.span.kind": "task", "traceloop.entity.name": "summarise"})
    assert (tool["span_role"], tool["tool_name"], tool["agent_name"]) == ("tool", "web_search", None)
    assert (agent["span_role"], agent["tool_name"], agent["agent_name"]) == ("agent_task", None, "planner")
    assert (task["tool_name"], task["agent_name"]) == (None, None)


# --- precedence ----------------------------------------------------------------------------


def test_span_attribute_beats_resource_attribute():
    row = _row({"agent.name": "from-span"}, resource={"agent.name": "from-resource"})
    assert row["agent_name"] == "from-span"


def test_any_span_level_key_beats_any_resource_level_key():
    # Span level wins as a level: a lower-ranked span key beats a higher-ranked resource key.
    row = _row({"gen_ai.agent.name": "span-genai"}, resource={"agent.name": "resource-seed"})
    assert row["agent_name"] == "span-genai"


def test_resource_attribute_fills_the_column_when_the_span_has_none():
    row = _row({}, resource={"agent.did": "did:web:fleet", "agent.version": "9"})
    assert (row["agent_id"], row["agent_version"]) == ("did:web:fleet", "9")


def test_response_model_beats_request_model():
    row = _row({"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06"})
    assert row["model"] == "gpt-4o-2024-08-06"


def test_request_model_is_used_when_there_is_no_response_model():
    assert _row({"gen_ai.request.model": "gpt-4o"})["model"] == "gpt-4o"


def test_current_genai_names_beat_deprecated_names():
    row = _row({
        "gen_ai.usage.prompt_tokens": 1, "gen_ai.usage.input_tokens": 2,
        "gen_ai.usage.completion_tokens": 3, "gen_ai.usage.output_tokens": 4,
        "gen_ai.system": "old", "gen_ai.provider.name": "new",
        "gen_ai.usage.cache_read_input_tokens": 5, "gen_ai.usage.cache_read.input_tokens": 6,
    })
    assert _agent(row, "input_tokens", "output_tokens", "provider", "cached_tokens") == {
        "input_tokens": 2, "output_tokens": 4, "provider": "new", "cached_tokens": 6,
    }


def test_seed_names_beat_other_conventions():
    row = _row({"gen_ai.agent.name": "genai", "agent.name": "seed", "gen_ai.usage.input_tokens": 5,
                "agent.tokens.input": 6})
    assert (row["agent_name"], row["input_tokens"]) == ("seed", 6)


def test_null_attribute_value_does_not_hide_a_lower_ranked_key():
    row = _row({"gen_ai.response.model": None, "gen_ai.request.model": "gpt-4o"})
    assert row["model"] == "gpt-4o"
    assert row["attributes"] == [("gen_ai.response.model", None), ("gen_ai.request.model", "gpt-4o")]


# --- casting and keeping attributes -------------------------------------------------------------


def test_unparseable_number_is_null_and_the_attribute_is_kept():
    row = _row({"gen_ai.usage.input_tokens": "abc", "agent.trust_score": "high", "llm.cost.total": "?"})
    assert (row["input_tokens"], row["trust_score"], row["cost_usd"]) == (None, None, None)
    assert dict(row["attributes"]) == {"gen_ai.usage.input_tokens": "abc", "agent.trust_score": "high",
                                       "llm.cost.total": "?"}


def test_one_unparseable_value_does_not_null_the_other_spans():
    rows = _rows({"attrs": {"gen_ai.usage.input_tokens": "abc"}}, {"attrs": {"gen_ai.usage.input_tokens": 7}},
                 {"attrs": {"gen_ai.usage.input_tokens": " 8 "}})
    assert [r["input_tokens"] for r in rows] == [None, 7, 8]


@pytest.mark.parametrize("text, tokens", [("12", 12), (" 12 ", 12), ("+12", 12), ("12.0", 12), ("12.5", None),
                                          ("1e3", None), ("", None), ("99999999999999999999", None)])
def test_token_strings_parse_as_whole_numbers_only(text, tokens):
    assert _row({"gen_ai.usage.input_tokens": text})["input_tokens"] == tokens


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("1e-3", 0.001), (" 2 ", 2.0), ("nan", None),
                                         ("inf", None), ("1e999", None), ("0,5", None)])
def test_decimal_strings_parse_and_non_finite_values_are_null(text, value):
    assert _row({"agent.trust_score": text})["trust_score"] == value


def test_unmapped_and_mapped_attributes_all_stay_in_the_map():
    attrs = {"gen_ai.request.model": "gpt-4o", "http.route": "/x", "user.id": "u1", "custom.flag": True}
    row = _row(attrs, resource={"k8s.pod.name": "p-1"})
    assert dict(row["attributes"]) == {"gen_ai.request.model": "gpt-4o", "http.route": "/x", "user.id": "u1",
                                       "custom.flag": "true"}
    assert dict(row["resource_attributes"]) == {"service.name": "svc", "k8s.pod.name": "p-1"}


# --- span_role ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attrs, role", [
    ({"openinference.span.kind": "LLM"}, "llm"),
    ({"openinference.span.kind": "EMBEDDING"}, "llm"),
    ({"openinference.span.kind": "TOOL"}, "tool"),
    ({"openinference.span.kind": "AGENT"}, "agent_task"),
    ({"openinference.span.kind": "RETRIEVER"}, "retrieval"),
    ({"openinference.span.kind": "RERANKER"}, "retrieval"),
    ({"openinference.span.kind": "GUARDRAIL"}, "policy_check"),
    ({"openinference.span.kind": "CHAIN"}, "other"),
    ({"openinference.span.kind": "EVALUATOR"}, "other"),
    ({"openinference.span.kind": "PROMPT"}, "other"),
    ({"openinference.span.kind": "llm"}, "llm"),  # values match case-insensitively
    ({"gen_ai.operation.name": "chat"}, "llm"),
    ({"gen_ai.operation.name": "text_completion"}, "llm"),
    ({"gen_ai.operation.name": "generate_content"}, "llm"),
    ({"gen_ai.operation.name": "embeddings"}, "llm"),
    ({"gen_ai.operation.name": "execute_tool"}, "tool"),
    ({"gen_ai.operation.name": "invoke_agent"}, "agent_task"),
    ({"gen_ai.operation.name": "create_agent"}, "agent_task"),
    ({"gen_ai.operation.name": "retrieval"}, "retrieval"),
    ({"traceloop.span.kind": "workflow"}, "agent_task"),
    ({"traceloop.span.kind": "agent"}, "agent_task"),
    ({"traceloop.span.kind": "tool"}, "tool"),
    ({"traceloop.span.kind": "task"}, "other"),
    ({"llm.request.type": "chat"}, "llm"),
    ({"llm.request.type": "completion"}, "llm"),
    ({"llm.request.type": "embedding"}, "llm"),
    ({"agent.delegation.to": "billing"}, "delegation"),
    ({"agent.policy.name": "pii"}, "policy_check"),
    ({"agent.tool.name": "search"}, "tool"),
    ({"tool.name": "search"}, "tool"),
    ({"gen_ai.request.model": "gpt-4o"}, "llm"),
    ({"llm.model_name": "gpt-4o"}, "llm"),
    ({"agent.task.name": "answer"}, "agent_task"),
    ({"http.route": "/x"}, "other"),
    ({}, "other"),
])
def test_span_role_rules(attrs, role):
    assert _row(attrs)["span_role"] == role


def test_execute_tool_span_with_a_task_name_is_a_tool():
    assert _row({"gen_ai.operation.name": "execute_tool", "agent.task.name": "answer"})["span_role"] == "tool"


def test_value_rule_beats_presence_rule():
    row = _row({"gen_ai.operation.name": "invoke_agent", "agent.delegation.to": "billing",
                "agent.policy.name": "pii", "agent.tool.name": "x"})
    assert row["span_role"] == "agent_task"


def test_leaf_value_rules_beat_container_value_rules():
    row = _row({"openinference.span.kind": "AGENT", "gen_ai.operation.name": "execute_tool"})
    assert row["span_role"] == "tool"


def test_presence_rules_apply_in_order():
    assert _row({"agent.task.name": "t", "gen_ai.request.model": "m"})["span_role"] == "llm"
    assert _row({"agent.tool.name": "x", "gen_ai.request.model": "m"})["span_role"] == "tool"
    assert _row({"agent.policy.name": "p", "agent.tool.name": "x"})["span_role"] == "policy_check"
    assert _row({"agent.delegation.to": "b", "agent.policy.name": "p"})["span_role"] == "delegation"


def test_resource_attributes_do_not_decide_span_role():
    row = _row({}, resource={"gen_ai.request.model": "gpt-4o", "agent.delegation.to": "x"})
    assert (row["span_role"], row["model"]) == ("other", "gpt-4o")


# --- task_success and error_type --------------------------------------------------------------


@pytest.mark.parametrize("value, success", [(True, True), (False, False), ("true", True), ("FALSE", False),
                                            ("1", True), ("0", False), (1, True), (0, False)])
def test_task_success_comes_from_the_success_attribute(value, success):
    assert _row({"agent.task.success": value}, error=success)["task_success"] is success


def test_task_span_without_success_attribute_succeeds_unless_its_status_is_error():
    ok, failed = _rows({"attrs": {"gen_ai.operation.name": "invoke_agent"}},
                       {"attrs": {"gen_ai.operation.name": "invoke_agent"}, "error": True})
    assert (ok["task_success"], failed["task_success"]) == (True, False)


def test_task_success_is_null_for_spans_that_are_not_tasks():
    assert _row({"gen_ai.operation.name": "chat"}, error=True)["task_success"] is None


def test_unparseable_success_attribute_falls_back_to_the_status_rule():
    row = _row({"agent.task.name": "t", "agent.task.success": "maybe"}, error=True)
    assert row["task_success"] is False
    assert dict(row["attributes"])["agent.task.success"] == "maybe"


def test_error_type_comes_from_the_error_type_attribute():
    assert _row({"error.type": "rate_limited"})["error_type"] == "rate_limited"


def test_error_type_comes_from_the_last_exception_event():
    row = _row({}, events=[("log", {"exception.type": "NotAnException"}),
                           ("exception", {"exception.type": "TimeoutError", "exception.message": "t"}),
                           ("exception", {"exception.type": "ValueError"})])
    assert row["error_type"] == "ValueError"


def test_error_type_attribute_beats_exception_events():
    row = _row({"error.type": "500"}, events=[("exception", {"exception.type": "HTTPError"})])
    assert row["error_type"] == "500"


def test_spans_without_exception_events_have_no_error_type():
    rows = _rows({"events": [("exception", {"exception.message": "no type"})]},
                 {"events": [("retry", {"attempt": 2})]},
                 {"events": [("exception", {"exception.type": "KeyError"})]})
    assert [r["error_type"] for r in rows] == [None, None, "KeyError"]


# --- the table as a whole -----------------------------------------------------------------------


def test_values_set_by_an_earlier_stage_are_kept():
    table = _table({"attrs": {"agent.name": "from-attr", "gen_ai.operation.name": "chat"}}, {"attrs": {}})
    table = table.set_column(SPAN_SCHEMA.get_field_index("agent_name"), SPAN_SCHEMA.field("agent_name"),
                             pa.array(["from-stage", None]))
    table = table.set_column(SPAN_SCHEMA.get_field_index("span_role"), SPAN_SCHEMA.field("span_role"),
                             pa.array(["tool", None]))
    rows = normalize(table, CONVENTIONS).to_pylist()
    assert [(r["agent_name"], r["span_role"]) for r in rows] == [("from-stage", "tool"), (None, "other")]


def test_empty_table_normalises_to_an_empty_table_in_the_span_schema():
    out = normalize(SPAN_SCHEMA.empty_table(), CONVENTIONS)
    assert out.num_rows == 0 and out.schema == SPAN_SCHEMA


def test_output_is_in_the_span_schema_and_keeps_the_other_columns():
    table = _table({"attrs": {"gen_ai.operation.name": "chat"}, "events": [("exception", {})]}, {"error": True})
    out = normalize(table, CONVENTIONS)
    assert out.schema == SPAN_SCHEMA
    assert out.select(NON_AGENT_COLUMNS).equals(table.select(NON_AGENT_COLUMNS))


def test_sliced_and_chunked_tables_normalise_like_whole_ones():
    specs = [{"attrs": {"agent.name": f"a{i}", "gen_ai.usage.input_tokens": i}, "error": i % 2 == 0,
              "events": [("exception", {"exception.type": f"E{i}"})] if i % 3 == 0 else []} for i in range(9)]
    table = _table(*specs, resource={"agent.version": "1"})
    whole = normalize(table, CONVENTIONS).to_pylist()
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 4), table.slice(6)])
    assert normalize(table.slice(3, 4), CONVENTIONS).to_pylist() == whole[3:7]
    assert normalize(chunked, CONVENTIONS).to_pylist() == whole


# --- loading the table ---------------------------------------------------------------------------


def test_shipped_conventions_load_and_cover_every_agent_column_but_span_role():
    assert set(CONVENTIONS.columns) == set(AGENT_COLUMNS) - {"span_role"}
    assert load_conventions(SHIPPED_CONVENTIONS) == CONVENTIONS


def test_extra_rows_win_over_shipped_rows():
    conventions = load_conventions(extra={
        "columns": {"agent_name": ["acme.agent"], "input_tokens": ["acme.tokens.in"]},
        "roles": {"values": [{"key": "gen_ai.operation.name", "value": "chat", "role": "tool"}],
                  "presence": [{"key": "acme.agent", "role": "agent_task"}]},
    })
    row = _rows({"attrs": {"agent.name": "seed", "acme.agent": "acme", "gen_ai.usage.input_tokens": 1,
                           "acme.tokens.in": 2, "gen_ai.operation.name": "chat"}},
                {"attrs": {"acme.agent": "x", "agent.tool.name": "t"}}, conventions=conventions)
    assert _agent(row[0], "agent_name", "input_tokens", "span_role") == {
        "agent_name": "acme", "input_tokens": 2, "span_role": "tool"}
    assert row[1]["span_role"] == "agent_task"


def test_extra_rows_keep_the_shipped_rows_after_them():
    conventions = load_conventions(extra={"columns": {"agent_name": ["acme.agent"]}})
    assert _rows({"attrs": {"gen_ai.agent.name": "g"}}, conventions=conventions)[0]["agent_name"] == "g"


def test_conventions_can_be_loaded_from_another_file(tmp_path: Path):
    path = tmp_path / "conventions.yaml"
    path.write_text("columns:\n  model: [my.model]\nroles:\n  presence:\n    - {column: model, role: llm}\n")
    conventions = load_conventions(path)
    row = _rows({"attrs": {"my.model": "m", "gen_ai.request.model": "ignored"}}, conventions=conventions)[0]
    assert (row["model"], row["span_role"], row["agent_name"]) == ("m", "llm", None)


@pytest.mark.parametrize("extra, named", [
    ({"columns": {"agent_nmae": ["x"]}}, "columns.agent_nmae"),
    ({"columns": {"span_role": ["x"]}}, "columns.span_role"),
    ({"columns": {"model": "gen_ai.request.model"}}, "columns.model"),
    ({"columns": {"model": ["ok", 5]}}, "columns.model[1]"),
    ({"columns": {"model": [{"key": "k", "when": {"a": "b", "c": "d"}}]}}, "columns.model[0].when"),
    ({"columns": {"model": [{"kye": "k"}]}}, "columns.model[0]"),
    ({"roles": {"values": [{"key": "k", "value": "v", "role": "boss"}]}}, "roles.values[0].role"),
    ({"roles": {"values": [{"key": "k", "role": "llm"}]}}, "roles.values[0]"),
    ({"roles": {"presence": [{"key": "k", "column": "model", "role": "llm"}]}}, "roles.presence[0]"),
    ({"roles": {"presence": [{"column": "nope", "role": "llm"}]}}, "roles.presence[0].column"),
    ({"roles": {"default": "unknown"}}, "roles.default"),
    ({"colums": {}}, "unknown keys"),
])
def test_malformed_rows_are_rejected_with_their_place_named(extra, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_conventions(extra=extra)


def test_malformed_file_is_rejected_naming_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_conventions(path)


# --- properties -------------------------------------------------------------------------------------

_KNOWN_KEYS = sorted({row.key for rows in CONVENTIONS.columns.values() for row in rows}
                     | {r.key for r in CONVENTIONS.value_rules} | {"traceloop.span.kind"})
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["LLM", "tool", "execute_tool", "chat", " 12 ", "1e999", "0x1F",
                                           "+7", "12.0", "nan", "TRUE", "0", ""]),
)
_ATTRS = st.dictionaries(st.one_of(st.sampled_from(_KNOWN_KEYS), st.text(max_size=8)), _VALUES, max_size=8)
_SPANS = st.lists(st.fixed_dictionaries(
    {"attrs": _ATTRS, "error": st.booleans(),
     "events": st.lists(st.tuples(st.sampled_from(["exception", "log"]),
                                  st.dictionaries(st.sampled_from(["exception.type", "x"]), _VALUES,
                                                  max_size=2)), max_size=2)}), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=_SPANS, resource=_ATTRS, cuts=st.lists(st.integers(0, 6), max_size=3))
def test_normalize_never_raises_and_never_changes_the_other_columns(spans, resource, cuts):
    table = _table(*spans, resource=resource)
    out = normalize(table, CONVENTIONS)
    assert out.schema == SPAN_SCHEMA
    assert out.select(NON_AGENT_COLUMNS).equals(table.select(NON_AGENT_COLUMNS))
    # Each span's answer depends on that span alone, whatever else is in the batch.
    one_by_one = [normalize(table.slice(i, 1), CONVENTIONS).to_pylist()[0] for i in range(table.num_rows)]
    assert out.to_pylist() == one_by_one
    # ... and on nothing of how the batch is cut into chunks (a batch of requests: a chunk each, some empty).
    bounds = [0, *sorted(min(c, table.num_rows) for c in cuts), table.num_rows]
    chunked = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)])
    assert normalize(chunked, CONVENTIONS).to_pylist() == one_by_one


def _numpy_path(table: pa.Table, conventions) -> pa.Table:
    os.environ[PURE_NUMPY_ENV] = "1"
    try:
        return normalize(table, conventions)
    finally:
        del os.environ[PURE_NUMPY_ENV]


@pytest.mark.skipif(_c_normalize is None, reason="the C step is not built (no compiler): only numpy runs")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=_SPANS, resource=_ATTRS, cuts=st.lists(st.integers(0, 6), max_size=3))
def test_the_c_step_answers_what_the_numpy_path_answers(spans, resource, cuts):
    """The per-entry step in C (_normalize.winners) against the numpy path on the same batches: the
    shipped conventions (conditions, pattern rows, resource-level entries) and chunked batches."""
    table = _table(*spans, resource=resource)
    bounds = [0, *sorted(min(c, table.num_rows) for c in cuts), table.num_rows]
    chunked = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)])
    for batch in (table, chunked):
        assert normalize(batch, CONVENTIONS).equals(_numpy_path(batch, CONVENTIONS))


@pytest.mark.skipif(_c_normalize is None, reason="the C step is not built (no compiler): only numpy runs")
def test_the_c_step_answers_what_the_numpy_path_answers_on_the_benchmark_spans():
    from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
    from bench.agent_spans import request_bodies

    batch = pa.concat_tables([protobuf_to_table(b).table for b in request_bodies(3, count=4)])
    assert normalize(batch, CONVENTIONS).equals(_numpy_path(batch, CONVENTIONS))
    assert normalize(batch, CONVENTIONS).column("agent_id").null_count < batch.num_rows  # the rows did fill


@pytest.mark.skipif(_c_normalize is None, reason="the C step is not built (no compiler): only numpy runs")
def test_the_c_step_refuses_arrays_it_cannot_read():
    import numpy as np

    best = np.zeros(4, np.int64)
    ints = np.zeros(1, np.int64)
    with pytest.raises(TypeError, match="key_id: items of 4 bytes"):
        _c_normalize.winners(best, ints, np.ones(1, bool), ints, ints, ints, ints, ints, ints, np.ones(2, bool),
                             2, 1, -1, -1, 1, 40)
    with pytest.raises(ValueError, match="mismatched lengths"):
        _c_normalize.winners(best, np.zeros(2, np.int32), np.ones(1, bool), ints, ints, ints, ints, ints, ints,
                             np.ones(2, bool), 2, 1, -1, -1, 1, 40)


# --- spans from the real instrumentations -----------------------------------------------------------


def _instrumented_chat_spans(instrumentor_class) -> pa.Table:
    """One chat completion through an instrumented OpenAI client (answered offline), as a table."""
    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                        "prompt_tokens_details": {"cached_tokens": 8}}}
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = instrumentor_class()
    instrumentor.instrument(tracer_provider=provider)
    try:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
        client = openai.OpenAI(api_key="test", http_client=httpx.Client(transport=transport))
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    finally:
        instrumentor.uninstrument()
    request = ExportTraceServiceRequest(resource_spans=encode_spans(exporter.get_finished_spans()).resource_spans)
    return request_to_table(request).table


def test_spans_from_the_openinference_openai_instrumentation_normalise():
    module = pytest.importorskip("openinference.instrumentation.openai")
    row = normalize(_instrumented_chat_spans(module.OpenAIInstrumentor), CONVENTIONS).to_pylist()[0]
    assert _agent(row, "span_role", "model", "provider", "input_tokens", "output_tokens", "cached_tokens") == {
        "span_role": "llm", "model": "gpt-4o-mini-2024-07-18", "provider": "openai", "input_tokens": 12,
        "output_tokens": 3, "cached_tokens": 8,
    }


def test_spans_from_the_opentelemetry_genai_openai_instrumentation_normalise():
    module = pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    row = normalize(_instrumented_chat_spans(module.OpenAIInstrumentor), CONVENTIONS).to_pylist()[0]
    assert _agent(row, "span_role", "model", "provider", "input_tokens", "output_tokens") == {
        "span_role": "llm", "model": "gpt-4o-mini-2024-07-18", "provider": "openai", "input_tokens": 12,
        "output_tokens": 3,
    }
