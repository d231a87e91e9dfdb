"""Pattern rows of the normalisation table: a value read out of an attribute with a regex, and the
role a match gives (handoffs that frameworks record as tool calls become delegation edges)."""

from __future__ import annotations

import functools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from tests.processors.agent_semconv.test_normalize import CONVENTIONS, _row, _rows, _table

# --- the shipped rows, on the attributes each framework really sends (docs/frameworks.md) -----------


def test_semantic_kernel_handoff_function_is_a_delegation_from_its_agent_to_the_named_agent():
    row = _row({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "Handoff-transfer_to_NetworkAgent",
                "gen_ai.tool.call.id": "call_1", "gen_ai.agent.id": "triage-agent"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"], row["tool_name"]) == (
        "delegation", "triage-agent", "NetworkAgent", "Handoff-transfer_to_NetworkAgent")


def test_semantic_kernel_plugin_function_stays_a_tool():
    row = _row({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "NetworkPlugin-ping_host"})
    assert (row["span_role"], row["delegation_to"], row["tool_name"]) == ("tool", None, "NetworkPlugin-ping_host")


def test_a_handoff_span_without_an_agent_of_its_own_leaves_the_delegator_to_the_store():
    row = _row({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "Handoff-transfer_to_NetworkAgent"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"]) == ("delegation", None, "NetworkAgent")


LLAMA_HANDOFF = '{"kwargs": {"to_agent": "WriteAgent", "reason": "sources found", "ctx": "<Context object>"}}'


def test_llama_index_handoff_tool_names_its_target_in_its_json_input():
    row = _row({"openinference.span.kind": "TOOL", "tool.name": "handoff", "input.value": LLAMA_HANDOFF},
               resource={"agent.id": "research-desk"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"], row["tool_name"]) == (
        "delegation", "research-desk", "WriteAgent", "handoff")


def test_llama_index_input_of_another_tool_is_not_read_as_a_handoff():
    row = _row({"openinference.span.kind": "TOOL", "tool.name": "search_web", "input.value": LLAMA_HANDOFF})
    assert (row["span_role"], row["delegation_to"]) == ("tool", None)


def test_the_when_of_a_pattern_row_reads_the_span_not_the_resource():
    row = _row({"openinference.span.kind": "TOOL", "input.value": LLAMA_HANDOFF}, resource={"tool.name": "handoff"})
    assert (row["span_role"], row["delegation_to"]) == ("tool", None)


@pytest.mark.parametrize("tool", ["Delegate work to coworker", "Ask question to coworker"])
def test_crewai_default_mode_delegation_tools_name_the_coworker(tool):
    row = _row({"openinference.span.kind": "TOOL", "tool.name": tool,
                "input.value": '{"task": "Pull EMEA figures", "context": "c", "coworker": "Data Analyst"}',
                "graph.node.id": "ignored on a tool span"}, resource={"agent.id": "Research Lead"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"]) == (
        "delegation", "Research Lead", "Data Analyst")


def test_crewai_event_listener_delegation_tool_stays_a_tool_its_coworkers_agent_span_has_the_edge():
    row = _row({"openinference.span.kind": "TOOL", "tool.name": "delegate_work_to_coworker",
                "input.value": '{"task": "t", "coworker": "Data Analyst"}'})
    assert (row["span_role"], row["delegation_to"]) == ("tool", None)


def test_a_delegator_the_span_names_is_kept():
    row = _row({"gen_ai.tool.name": "Handoff-transfer_to_B", "agent.delegation.from": "A", "agent.id": "X"})
    assert (row["delegation_from"], row["delegation_to"]) == ("A", "B")


def test_an_agent_span_that_names_itself_as_a_graph_node_gets_no_delegator():
    row = _row({"openinference.span.kind": "AGENT", "graph.node.id": "Triage", "agent.name": "Triage"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"]) == ("agent_task", None, "Triage")


def test_the_batch_path_fills_the_delegator_only_on_delegation_spans():
    rows = _rows({"attrs": {"gen_ai.tool.name": "Handoff-transfer_to_B", "agent.id": "A"}},
                 {"attrs": {"gen_ai.tool.name": "lookup", "agent.id": "A"}},
                 {"attrs": {"agent.delegation.to": "C", "agent.id": "A"}})
    assert [(r["span_role"], r["delegation_from"], r["delegation_to"]) for r in rows] == [
        ("delegation", "A", "B"), ("tool", None, None), ("delegation", "A", "C")]


# --- the row kind, through extra rows ----------------------------------------------------------------

def _with(*rows: object, roles: dict | None = None):
    return load_conventions(extra={"columns": {"delegation_to": list(rows)}, **({"roles": roles} if roles else {})})


def test_a_pattern_row_without_a_role_fills_its_column_and_leaves_the_role_alone():
    conv = _with({"key": "acme.route", "pattern": r"^to:(\w+)$"})
    row = _rows({"attrs": {"acme.route": "to:billing", "gen_ai.operation.name": "chat"}}, conventions=conv)[0]
    assert (row["delegation_to"], row["span_role"]) == ("billing", "llm")


def test_a_value_that_does_not_match_lets_the_next_row_fill_the_column():
    conv = _with({"key": "acme.route", "pattern": r"^to:(\w+)$"}, "acme.target")
    rows = _rows({"attrs": {"acme.route": "nowhere", "acme.target": "fallback"}},
                 {"attrs": {"acme.route": "to:", "acme.target": "empty capture"}}, conventions=conv)
    assert [r["delegation_to"] for r in rows] == ["fallback", "empty capture"]


def test_pattern_rows_rank_like_any_row():
    conv = _with("acme.first", {"key": "acme.route", "pattern": "to:(.+)"}, "acme.last")
    rows = _rows({"attrs": {"acme.first": "f", "acme.route": "to:r", "acme.last": "l"}},
                 {"attrs": {"acme.route": "to:r", "acme.last": "l"}}, conventions=conv)
    assert [r["delegation_to"] for r in rows] == ["f", "r"]


def test_a_span_level_match_beats_a_resource_level_one_and_a_resource_match_still_fills():
    conv = _with({"key": "acme.route", "pattern": "to:(.+)"})
    rows = _rows({"attrs": {"acme.route": "to:span"}}, {"attrs": {}}, resource={"acme.route": "to:resource"},
                 conventions=conv)
    assert [r["delegation_to"] for r in rows] == ["span", "resource"]


def test_a_resource_level_match_gives_no_role():
    conv = _with({"key": "acme.route", "pattern": "to:(.+)", "role": "delegation"})
    row = _rows({"attrs": {}}, resource={"acme.route": "to:x"}, conventions=conv)[0]
    assert (row["delegation_to"], row["span_role"]) == ("x", "other")


def test_a_pattern_role_beats_value_rules_and_its_own_rows_condition_gates_it():
    conv = _with({"key": "acme.args", "pattern": "agent=(\\w+)", "when": {"acme.kind": "handoff"}, "role": "delegation"})
    rows = _rows({"attrs": {"gen_ai.operation.name": "execute_tool", "acme.kind": "HANDOFF", "acme.args": "agent=b"}},
                 {"attrs": {"gen_ai.operation.name": "execute_tool", "acme.kind": "other", "acme.args": "agent=b"}},
                 conventions=conv)
    assert [(r["span_role"], r["delegation_to"]) for r in rows] == [("delegation", "b"), ("tool", None)]


def test_one_attribute_can_feed_a_plain_row_and_pattern_rows_of_several_columns():
    conv = load_conventions(extra={"columns": {
        "tool_name": ["acme.call"],
        "delegation_to": [{"key": "acme.call", "pattern": "^handoff:(.+)$", "role": "delegation"}],
        "task_name": [{"key": "acme.call", "pattern": "^(handoff):"}]}})
    row = _rows({"attrs": {"acme.call": "handoff:b"}}, conventions=conv)[0]
    assert (row["tool_name"], row["delegation_to"], row["task_name"], row["span_role"]) == (
        "handoff:b", "b", "handoff", "delegation")


def test_escaped_parentheses_and_classes_are_not_taken_for_the_capture_group():
    conv = _with({"key": "acme.route", "pattern": r"\(x\)[(]+ -> ([a-z]+)"})
    assert _rows({"attrs": {"acme.route": "(x)(( -> billing"}}, conventions=conv)[0]["delegation_to"] == "billing"


def test_a_named_group_is_the_capture_group():
    conv = _with({"key": "acme.route", "pattern": r"(?:via )?to (?P<target>\w+)"})
    assert _rows({"attrs": {"acme.route": "via to billing"}}, conventions=conv)[0]["delegation_to"] == "billing"


@pytest.mark.parametrize("row, named, problem", [
    ({"key": "k", "pattern": "to:(.+"}, "delegation_to[0].pattern", "missing \\)"),
    ({"key": "k", "pattern": "to:.+"}, "delegation_to[0].pattern", "exactly one capture group"),
    ({"key": "k", "pattern": "(a)(b)"}, "delegation_to[0].pattern", "more than one capture group"),
    ({"key": "k", "pattern": "(?P<a>x)(?P<b>y)"}, "delegation_to[0].pattern", "exactly one capture group"),
    ({"key": "k", "pattern": "(a)\\1"}, "delegation_to[0].pattern", "not a usable pattern"),  # RE2: no backrefs
    ({"key": "k", "pattern": ""}, "delegation_to[0].pattern", "non-empty string"),
    ({"key": "k", "pattern": 5}, "delegation_to[0].pattern", "non-empty string"),
    ({"key": "k", "role": "delegation"}, "delegation_to[0].role", "only a row with a pattern"),
    ({"key": "k", "pattern": "(x)", "role": "boss"}, "delegation_to[0].role", "unknown role 'boss'"),
    ({"key": "k", "patern": "(x)"}, "delegation_to[0]", "key, when, pattern, role"),
])
def test_malformed_pattern_rows_are_rejected_at_load_naming_the_row_and_the_problem(row, named, problem):
    with pytest.raises(ValueError) as caught:
        _with(row)
    message = str(caught.value)
    assert f"extra: columns.{named}: " in message and re.search(problem, message), message


def test_the_shipped_table_has_the_handoff_rows():
    rows = [r for r in CONVENTIONS.columns["delegation_to"] if r.pattern]
    assert [(r.key, r.role) for r in rows] == [("gen_ai.tool.name", "delegation")] + 3 * [("input.value", "delegation")]


# --- properties ------------------------------------------------------------------------------------------

_PREFIXES = ["", "to:", "^to:", "Handoff-transfer_to_", "^Handoff-", '"to_agent": "']
_GROUPS = ["(.+)", "([a-z]+)", "([^\"]+)", "(\\w*)", "([A-Z][a-z]*)"]
_SUFFIXES = ["", "$", '"', ";"]
_TEXT = st.text(alphabet="toa:ABbz_-\"; Handofrsf", max_size=24)


def _reference(pattern: str, value: str | None) -> str | None:
    """What the row should give, by Python's re (same answer as RE2 on these patterns)."""
    match = re.search(pattern, value) if value is not None else None
    return match.group(1) if match and match.group(1) else None


@functools.cache
def _cached_with(regex: str, role: bool):
    return _with({"key": "acme.route", "pattern": regex, **({"role": "delegation"} if role else {})})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.tuples(st.sampled_from(_PREFIXES), st.sampled_from(_GROUPS), st.sampled_from(_SUFFIXES)),
       values=st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=6),
       role=st.booleans())
def test_a_pattern_row_gives_the_first_match_of_its_group_and_its_role_exactly_where_it_matches(pattern, values, role):
    regex = "".join(pattern)
    conv = _cached_with(regex, role)
    spans = [{"attrs": {"acme.route": v} if v is not None else {}} for v in values]
    out = _rows(*spans, conventions=conv)
    expected = [_reference(regex, v) for v in values]
    assert [r["delegation_to"] for r in out] == expected
    assert [r["span_role"] for r in out] == [
        ("delegation" if role else "other") if e is not None else "other" for e in expected]
    # The attribute itself stays in the map.
    assert [dict(r["attributes"]).get("acme.route") for r in out] == values


_SHIPPED_KEYS = ["gen_ai.tool.name", "input.value", "tool.name", "gen_ai.agent.id", "agent.delegation.from",
                 "openinference.span.kind", "gen_ai.operation.name"]
_SHIPPED_VALUES = st.one_of(st.sampled_from([
    "Handoff-transfer_to_NetworkAgent", "Handoff-transfer_to_", "handoff", "Delegate work to coworker", "TOOL",
    "execute_tool", '{"to_agent": "W"}', '{"coworker": "Data Analyst"}', '{"to_agent": ""}', "a"]), _TEXT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(st.dictionaries(st.sampled_from(_SHIPPED_KEYS), _SHIPPED_VALUES, max_size=5), max_size=6),
       resource=st.dictionaries(st.sampled_from(_SHIPPED_KEYS), _SHIPPED_VALUES, max_size=3))
def test_with_the_shipped_pattern_rows_each_spans_answer_depends_on_that_span_alone(spans, resource):
    table = _table(*[{"attrs": a} for a in spans], resource=resource)
    out = normalize(table, CONVENTIONS).to_pylist()
    assert out == [normalize(table.slice(i, 1), CONVENTIONS).to_pylist()[0] for i in range(table.num_rows)]
    for r in out:
        assert r["span_role"] != "delegation" or r["delegation_to"]  # a delegation names where it went


def test_a_pipeline_config_with_a_bad_pattern_is_rejected_naming_the_row():
    from pydantic import ValidationError

    from agent_sre.processors.agent_semconv.factory import AgentSemconvConfig

    with pytest.raises(ValidationError, match=r"columns\.delegation_to\[0\]\.pattern: 'to:\(\.\+' is not a usable"):
        AgentSemconvConfig(rules={"columns": {"delegation_to": [{"key": "k", "pattern": "to:(.+"}]}})
