"""What happened (processors/replay/traces.py): a trace read from the real store as a tree, a delegation
chain across traces (span links, agent.delegation.*) as one tree, orphans at the root, the totals, and the
terminal rendering."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.replay.traces import (
    build_tree,
    load_trace,
    owned_by,
    render_trace,
    trace_spans,
)

T1, T2, T3, OTHER = "a1" * 16, "b2" * 16, "c3" * 16, "d4" * 16
BASE_NS = 1_700_000_000_000_000_000
MS = 1_000_000


def sid(n: int) -> str:
    return f"{n:016x}"


def span(trace: str, n: int, parent: int | None, name: str, role: str = "other", start_ms: int = 0,
         dur_ms: int = 10, **cols) -> dict:
    """A stored span (canonical columns): span id ``sid(n)``, parent ``sid(parent)``."""
    row = {"trace_id": trace, "span_id": sid(n), "parent_span_id": sid(parent) if parent is not None else "",
           "name": name, "kind": "internal", "start_ns": BASE_NS + start_ms * MS,
           "end_ns": BASE_NS + (start_ms + dur_ms) * MS, "duration_ns": dur_ms * MS, "status_code": "unset",
           "span_role": role, "service_name": "svc", "attributes": cols.pop("attributes", {}),
           "links": cols.pop("links", [])}
    row.update(cols)
    return row


def store_with(tmp_path, *rows: dict) -> SpanStore:
    store = SpanStore(tmp_path / "s.duckdb")
    store.append(pa.Table.from_pylist(list(rows), schema=SPAN_SCHEMA))
    return store


def triage_trace() -> list[dict]:
    """An agent, an LLM call, a failed tool call and a delegation (hand-computed totals in the tests)."""
    return [
        span(T1, 1, None, "invoke_agent triage", "agent_task", 0, 1000, agent_id="triage"),
        span(T1, 2, 1, "chat gpt-4o", "llm", 10, 300, agent_id="triage", model="gpt-4o", input_tokens=1000,
             output_tokens=200, cost_usd=0.0125),
        span(T1, 3, 1, "execute_tool search", "tool", 320, 100, agent_id="triage", tool_name="search",
             status_code="error", status_message="timeout"),
        span(T1, 4, 1, "delegate billing", "delegation", 430, 500, agent_id="triage", delegation_to="billing"),
    ]


def billing_trace(**root_cols) -> list[dict]:
    return [
        span(T2, 11, None, "invoke_agent billing", "agent_task", 440, 480, agent_id="billing", **root_cols),
        span(T2, 12, 11, "chat gpt-4o-mini", "llm", 450, 200, agent_id="billing", model="gpt-4o-mini",
             input_tokens=500, output_tokens=50, cost_usd=0.001),
    ]


def shape(nodes: list[dict]) -> list:
    """The tree as nested (trace, span) pairs, for comparing shapes."""
    return [((n["trace_id"], n["span_id"]), shape(n["children"])) if n["children"] else (n["trace_id"], n["span_id"])
            for n in nodes]


# --- reading ---------------------------------------------------------------------------------

def test_a_trace_is_all_its_spans_sorted_by_start_with_attribute_maps_as_dicts(tmp_path):
    rows = triage_trace() + [span(OTHER, 99, None, "someone else's", start_ms=5)]
    rows[2]["attributes"] = {"gen_ai.tool.name": "search", "input.value": "refund policy"}
    store = store_with(tmp_path, *reversed(rows))
    spans = trace_spans(store.read, T1)
    assert [s["span_id"] for s in spans] == [sid(1), sid(2), sid(3), sid(4)]
    assert {s["trace_id"] for s in spans} == {T1}
    assert spans[2]["attributes"] == {"gen_ai.tool.name": "search", "input.value": "refund policy"}
    assert set(spans[0]) == set(SPAN_SCHEMA.names)
    assert spans[1]["cost_usd"] == 0.0125 and spans[1]["model"] == "gpt-4o"
    store.close()


def test_spans_still_waiting_for_their_agent_are_part_of_the_trace(tmp_path):
    """A child whose parent has not arrived is held by attribution (held_spans): the trace shows it."""
    store = store_with(tmp_path, span(T1, 2, 1, "chat gpt-4o", "llm", 10, 300))
    assert store.held_spans == 1
    assert [s["span_id"] for s in trace_spans(store.read, T1)] == [sid(2)]
    store.close()


def test_an_unknown_trace_has_no_spans_and_no_tree(tmp_path):
    store = store_with(tmp_path, *triage_trace())
    assert trace_spans(store.read, OTHER) == []
    assert load_trace(store.read, OTHER) is None
    store.close()


# --- the tree --------------------------------------------------------------------------------

def test_children_hang_under_their_parents_in_start_order_with_hand_computed_totals(tmp_path):
    store = store_with(tmp_path, *triage_trace())
    doc = load_trace(store.read, T1)
    assert shape(doc["roots"]) == [((T1, sid(1)), [(T1, sid(2)), (T1, sid(3)), (T1, sid(4))])]
    root = doc["roots"][0]
    llm, tool, delegate = root["children"]
    assert (root["name"], root["role"], root["agent"], root["duration_ns"]) == ("invoke_agent triage", "agent_task",
                                                                               "triage", 1000 * MS)
    assert (llm["model"], llm["tokens"], llm["cost_usd"], llm["error"]) == ("gpt-4o", 1200, 0.0125, None)
    assert (tool["tool"], tool["status"], tool["error"]) == ("search", "error", "timeout")
    assert delegate["delegate_to"] == "billing"
    # 4 spans, 1 error, $0.0125, 1000 + 200 tokens, 0 ms .. 1000 ms
    assert doc["totals"] == {"spans": 4, "errors": 1, "cost_usd": 0.0125, "input_tokens": 1000,
                             "output_tokens": 200, "tokens": 1200, "start_ns": BASE_NS, "latency_ns": 1000 * MS,
                             "agents": ["triage"], "traces": 1}
    assert doc["traces"] == [T1] and doc["per_trace"][T1]["spans"] == 4
    store.close()


def test_a_span_whose_parent_is_not_stored_is_shown_at_the_root_marked_orphan(tmp_path):
    store = store_with(tmp_path, *triage_trace(), span(T1, 7, 42, "late child", start_ms=950))
    doc = load_trace(store.read, T1)
    assert [(n["span_id"], n["orphan"]) for n in doc["roots"]] == [(sid(1), False), (sid(7), True)]
    assert doc["roots"][1]["parent_span_id"] == sid(42)
    store.close()


def test_a_cycle_of_parent_ids_is_cut_and_shown_as_an_orphan_not_lost():
    spans = [span(T1, 1, 2, "a"), span(T1, 2, 1, "b", start_ms=1)]
    for s in spans:
        s.update(events=[], attributes={}, links=[])
    doc = build_tree(spans, T1)
    assert doc["totals"]["spans"] == 2
    assert len(doc["roots"]) == 1 and doc["roots"][0]["orphan"] is True
    assert len(doc["roots"][0]["children"]) == 1


def test_a_delegated_trace_whose_root_links_back_hangs_under_the_delegating_span(tmp_path):
    link = {"trace_id": T1, "span_id": sid(4)}
    store = store_with(tmp_path, *triage_trace(), *billing_trace(links=[link]))
    expected = [((T1, sid(1)), [(T1, sid(2)), (T1, sid(3)),
                                ((T1, sid(4)), [((T2, sid(11)), [(T2, sid(12))])])])]
    for asked in (T1, T2):  # the same chain, from either end
        doc = load_trace(store.read, asked)
        assert shape(doc["roots"]) == expected
        assert doc["traces"] == sorted([T1, T2]) and doc["trace_id"] == asked
    billing = doc["roots"][0]["children"][2]["children"][0]
    assert billing["linked"] == {"from_trace": T1, "from_span": sid(4), "via": "link"}
    # the whole chain: 6 spans, 1 error, 0.0125 + 0.001, 1200 + 550 tokens, two agents
    assert {k: doc["totals"][k] for k in ("spans", "errors", "cost_usd", "tokens", "agents", "traces")} == \
        {"spans": 6, "errors": 1, "cost_usd": 0.0135, "tokens": 1750, "agents": ["billing", "triage"], "traces": 2}
    assert doc["per_trace"][T2]["cost_usd"] == 0.001 and doc["per_trace"][T2]["latency_ns"] == 480 * MS
    assert shape(load_trace(store.read, T2, follow_links=False)["roots"]) == [((T2, sid(11)), [(T2, sid(12))])]
    store.close()


def test_agent_delegation_attributes_tie_traces_either_way(tmp_path):
    # forward: the delegating span names the trace the delegated agent ran in
    rows = triage_trace()
    rows[3]["attributes"] = {"agent.delegation.to": "billing", "agent.delegation.trace_id": T2}
    # backward: the third trace names the trace and span that delegated to it
    third = [span(T3, 21, None, "invoke_agent refunds", "agent_task", 500, 100, agent_id="refunds",
                  attributes={"agent.delegation.parent_trace_id": T2, "agent.delegation.parent_span_id": sid(12)})]
    store = store_with(tmp_path, *rows, *billing_trace(), *third)
    doc = load_trace(store.read, T3)
    assert shape(doc["roots"]) == [((T1, sid(1)), [(T1, sid(2)), (T1, sid(3)), ((T1, sid(4)), [
        ((T2, sid(11)), [((T2, sid(12)), [(T3, sid(21))])])])])]
    refunds = doc["roots"][0]["children"][2]["children"][0]["children"][0]["children"][0]
    assert refunds["linked"] == {"from_trace": T2, "from_span": sid(12), "via": "agent.delegation"}
    assert doc["totals"]["agents"] == ["billing", "refunds", "triage"]
    store.close()


def test_a_span_linking_another_trace_from_inside_its_own_started_that_trace(tmp_path):
    rows = triage_trace()
    rows[3]["links"] = [{"trace_id": T2, "span_id": sid(11)}]
    store = store_with(tmp_path, *rows, *billing_trace())
    doc = load_trace(store.read, T1)
    delegate = doc["roots"][0]["children"][2]
    assert shape(delegate["children"]) == [((T2, sid(11)), [(T2, sid(12))])]
    store.close()


def test_ties_that_loop_back_place_each_trace_once(tmp_path):
    rows = triage_trace()
    rows[3]["attributes"] = {"agent.delegation.trace_id": T2}
    billing = billing_trace()
    billing[1]["attributes"] = {"agent.delegation.trace_id": T1}  # claims to have started T1 too
    store = store_with(tmp_path, *rows, *billing)
    doc = load_trace(store.read, T1)
    placed = []

    def walk(nodes):
        for n in nodes:
            placed.append(n["span_id"])
            walk(n["children"])
    walk(doc["roots"])
    assert sorted(placed) == sorted(s["span_id"] for s in rows + billing)
    store.close()


def test_a_trace_naming_ours_but_running_an_hour_later_is_not_followed(tmp_path):
    late = billing_trace(links=[{"trace_id": T1, "span_id": sid(4)}])
    for s in late:
        s["start_ns"] += 3600 * 10**9
        s["end_ns"] += 3600 * 10**9
    store = store_with(tmp_path, *triage_trace(), *late)
    assert load_trace(store.read, T1)["traces"] == [T1]
    store.close()


def test_a_delegated_trace_that_runs_on_long_after_the_delegation_is_read_whole(tmp_path):
    billing = billing_trace(links=[{"trace_id": T1, "span_id": sid(4)}])
    late = span(T2, 13, 11, "execute_tool refund", "tool", 2 * 3600 * 1000, 100, agent_id="billing", tool_name="refund")
    store = store_with(tmp_path, *triage_trace(), *billing, late)
    doc = load_trace(store.read, T1)
    assert doc["per_trace"][T2]["spans"] == 3 and doc["totals"]["spans"] == 7
    store.close()


def test_a_tenant_sees_only_traces_all_of_whose_agents_are_its_own(tmp_path):
    store = store_with(tmp_path, *triage_trace(), *billing_trace(links=[{"trace_id": T1, "span_id": sid(4)}]))
    spans = trace_spans(store.read, T1)
    assert {s["trace_id"] for s in owned_by(spans, frozenset({"triage"}))} == {T1}
    assert load_trace(store.read, T2, agents=frozenset({"triage"})) is None
    doc = load_trace(store.read, T1, agents=frozenset({"triage"}))
    assert doc["traces"] == [T1] and doc["totals"]["agents"] == ["triage"]
    store.close()


# --- the terminal ----------------------------------------------------------------------------

ANSI = re.compile(r"\033\[[0-9;]*m")


def test_the_tree_is_drawn_with_box_drawing_and_the_linked_trace_marked(tmp_path):
    store = store_with(tmp_path, *triage_trace(), *billing_trace(links=[{"trace_id": T1, "span_id": sid(4)}]),
                       span(T1, 7, 42, "late child", start_ms=950))
    text = render_trace(load_trace(store.read, T1), color=False)
    assert not ANSI.search(text)
    assert text == f"""trace {T1} (+1 linked trace)
  7 spans · 2 agents (billing, triage) · 1 error · $0.0135 · 1,750 tokens · 1.00s
├─ invoke_agent triage [agent: triage]  1.00s
│  ├─ chat gpt-4o [llm: gpt-4o]  300.0ms $0.0125 1,200 tok
│  ├─ execute_tool search [tool: search]  100.0ms  ✗ timeout
│  └─ delegate billing [delegate: triage → billing]  500.0ms
│     └─ ⇢ trace {T2} (span link)
│        └─ invoke_agent billing [agent: billing]  480.0ms
│           └─ chat gpt-4o-mini [llm: gpt-4o-mini]  200.0ms $0.001 550 tok
└─ late child  10.0ms  (orphan: parent {sid(42)} not stored)
"""
    store.close()


def test_colour_marks_errors_red_and_llm_tool_agent_spans_apart_only_when_asked(tmp_path):
    store = store_with(tmp_path, *triage_trace())
    doc = load_trace(store.read, T1)
    text = render_trace(doc, color=True)
    lines = text.splitlines()
    assert ANSI.sub("", text) == render_trace(doc, color=False)
    styles = {name: re.match(r"^[├└│ ─]*(\033\[[0-9;]*m)", line).group(1)
              for name, line in (("agent", lines[2]), ("llm", lines[3]), ("tool", lines[4]))}
    assert styles["tool"] == "\033[31m"  # the failed tool call is red, whatever its role
    assert len({styles["agent"], styles["llm"], "\033[33m"}) == 3 and styles["llm"] != "\033[31m"
    assert "\033[31m✗ timeout" in lines[4]
    store.close()


@pytest.mark.parametrize("ns, text", [(None, "-"), (999, "1µs"), (2_500_000, "2.5ms"), (1_234_000_000, "1.23s")])
def test_durations_read_at_a_glance(ns, text):
    from agent_sre.processors.replay.traces import duration

    assert duration(ns) == text


@pytest.mark.parametrize("usd, text", [(None, "-"), (0.0, "$0.0000"), (0.00017, "$0.00017"), (0.0078, "$0.0078"),
                                       (0.0125, "$0.0125"), (1234.5, "$1,234.50")])
def test_costs_keep_their_significant_digits(usd, text):
    from agent_sre.processors.replay.traces import money

    assert money(usd) == text
