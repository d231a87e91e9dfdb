"""What changed (processors/replay/diff.py): the tool-call alignment, two hand-built traces in a real
store, and two sets of traces with their tests checked against hand computations."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore, open_read_only
from agent_sre.processors.replay.diff import (
    DiffError,
    TraceNotFound,
    align,
    diff_sets,
    diff_traces,
    edit_distance,
    mann_whitney,
    render_diff,
    text_similarity,
    two_proportion_z,
)

T0 = 1_767_225_600_000_000_000
MS = 1_000_000


# --- hand-built traces -------------------------------------------------------------------------------

def llm(model: str, tokens_in: int, tokens_out: int, cost: float, ms: int, output: str | None = None) -> dict:
    return {"name": f"chat {model}", "ms": ms, "output": output,
            "attrs": {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                      "gen_ai.usage.input_tokens": str(tokens_in), "gen_ai.usage.output_tokens": str(tokens_out),
                      "agent.cost.usd": repr(cost)}}


def tool(name: str, ms: int = 100, status: str = "unset") -> dict:
    return {"name": f"execute_tool {name}", "ms": ms, "status": status,
            "attrs": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}}


def trace_rows(trace_id: str, steps: list[dict], *, task: str = "triage", version: str = "1.4.0",
               success: bool = True, output: str | None = None, start_ns: int = T0, agent: str = "triage-bot",
               root_attrs: dict | None = None, attrs: dict | None = None) -> list[dict]:
    """A task span with ``steps`` one after another under it (each starts 1 ms after the previous ended),
    described by attributes as agents send them (GenAI and agent.* names): the store's normalisation and
    attribution fill the columns, and an export/import round trip keeps them."""
    root_id = trace_id[:16]
    common = {"trace_id": trace_id, "kind": "internal", "service_name": "svc", "resource_attributes": [],
              "scope_attributes": []}
    rows, t = [], start_ns + MS
    for i, s in enumerate(steps):
        a = {**(attrs or {}), **s["attrs"]}
        if s.get("output") is not None:
            a["output.value"] = s["output"]
        rows.append({**common, "span_id": f"{trace_id[:8]}{i + 1:08x}", "parent_span_id": root_id, "name": s["name"],
                     "start_ns": t, "end_ns": t + s["ms"] * MS, "duration_ns": s["ms"] * MS,
                     "status_code": s.get("status", "unset"), "attributes": list(a.items())})
        t += s["ms"] * MS + MS
    ra = {**(attrs or {}), "gen_ai.operation.name": "invoke_agent", "agent.id": agent, "agent.version": version,
          "agent.task.name": task, "agent.task.success": str(success).lower(), **(root_attrs or {})}
    if output is not None:
        ra["output.value"] = output
    rows.insert(0, {**common, "span_id": root_id, "parent_span_id": None, "name": f"invoke_agent {agent}",
                    "start_ns": start_ns, "end_ns": t, "duration_ns": t - start_ns,
                    "status_code": "unset" if success else "error", "attributes": list(ra.items())})
    return rows


def make_store(path, *traces: list[dict]):
    """The rows normalised and stored through the real store, as the pipeline would; a read-only reader
    over the file (as the CLI has)."""
    table = normalize(pa.Table.from_pylist([r for t in traces for r in t], schema=SPAN_SCHEMA), load_conventions())
    store = SpanStore(path)
    store.append(table)
    store.close()
    con = open_read_only(path)
    return con, (lambda sql, params: con.execute(sql, params).fetchall())


A = "a" * 32
B = "b" * 32


# --- the alignment ---------------------------------------------------------------------------------

def ops(a: list[str], b: list[str]) -> list[tuple]:
    return [(o["op"], o["name_a"], o["name_b"]) for o in align(a, b)["ops"]]


def test_an_inserted_tool_call_is_one_insertion():
    assert ops(["search", "answer"], ["search", "web", "answer"]) == [
        ("equal", "search", "search"), ("inserted", None, "web"), ("equal", "answer", "answer")]
    assert edit_distance(["search", "answer"], ["search", "web", "answer"]) == 1


def test_a_removed_tool_call_is_one_deletion():
    assert ops(["search", "web", "answer"], ["search", "answer"]) == [
        ("equal", "search", "search"), ("deleted", "web", None), ("equal", "answer", "answer")]


def test_a_reordered_tool_call_is_a_move_not_two_substitutions():
    doc = align(["search", "lookup", "answer"], ["lookup", "search", "answer"])
    # one of the two kept in place, the other moved past it (which one is a tie)
    changed = [(o["op"], o["a"], o["b"]) for o in doc["ops"] if o["op"] != "equal"]
    assert changed in ([("moved", 0, 1)], [("moved", 1, 0)])
    assert doc["distance"] == 2  # a move is a deletion and an insertion to Levenshtein
    # moved to the end, past several calls
    assert [o for o in ops(["web", "a", "b", "c"], ["a", "b", "c", "web"]) if o[0] != "equal"] == [("moved", "web", "web")]


def test_a_different_tool_in_the_same_place_is_a_substitution():
    assert ops(["search", "web", "answer"], ["search", "email", "answer"]) == [
        ("equal", "search", "search"), ("substituted", "web", "email"), ("equal", "answer", "answer")]


def _levenshtein(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=9), st.lists(st.sampled_from("abcde"), max_size=9))
def test_the_alignment_is_minimal_and_accounts_for_every_call_once(a, b):
    doc = align(a, b)
    assert doc["distance"] == _levenshtein(a, b)
    seen_a = sorted(o["a"] for o in doc["ops"] if o["a"] is not None)
    seen_b = [o["b"] for o in doc["ops"] if o["b"] is not None]
    assert seen_a == list(range(len(a)))
    assert sorted(seen_b) == list(range(len(b)))
    for o in doc["ops"]:
        if o["op"] in ("equal", "moved"):
            assert a[o["a"]] == b[o["b"]]
        if o["op"] == "substituted":
            assert a[o["a"]] != b[o["b"]]
    # a name never shows as both deleted and inserted: that pair is a move
    assert not ({o["name_a"] for o in doc["ops"] if o["op"] == "deleted"}
                & {o["name_b"] for o in doc["ops"] if o["op"] == "inserted"})


def test_text_similarity_is_difflibs_ratio_over_words():
    # [the, cat, sat, .] vs [the, cat, ran, .]: 3 tokens match of 8 -> 2*3/8
    assert text_similarity("the cat sat.", "the cat ran.") == 0.75
    assert text_similarity("same  text", "same text") == 1.0  # whitespace is not a token
    assert text_similarity("x", None) == 0.0 and text_similarity(None, None) is None


# --- two traces --------------------------------------------------------------------------------------

def test_diff_of_two_traces_finds_the_inserted_and_removed_calls_and_the_changed_model(tmp_path):
    a = trace_rows(A, [llm("gpt-4o", 1000, 100, 0.0035, 800, "need the order"), tool("lookup_order", 200),
                       tool("search_kb", 300), llm("gpt-4o", 1500, 200, 0.00575, 900)],
                   output="Refund approved for order 42.")
    b = trace_rows(B, [llm("gpt-4o-mini", 1000, 120, 0.000222, 500, "need the order"), tool("lookup_order", 250),
                       tool("web_search", 900, "error"), llm("gpt-4o", 1500, 200, 0.00575, 1000)],
                   version="1.5.0", success=False, output="Refund denied for order 42.")
    con, read = make_store(tmp_path / "s.duckdb", a, b)
    d = diff_traces(read, A, B)
    con.close()
    assert d["status"] == {"a": "ok", "b": "failed", "changed": True}
    assert [(o["op"], o["name_a"], o["name_b"]) for o in d["tools"]["ops"]] == [
        ("equal", "lookup_order", "lookup_order"), ("substituted", "search_kb", "web_search")]
    assert d["tools"]["distance"] == 1
    assert d["models"]["changed_steps"] == [{"step_a": 0, "step_b": 0, "a": "gpt-4o", "b": "gpt-4o-mini"}]
    assert d["models"]["a"] == {"gpt-4o": 2} and d["models"]["b"] == {"gpt-4o": 1, "gpt-4o-mini": 1}
    # totals, by hand: cost 0.0035 + 0.00575 -> 0.000222 + 0.00575; 1 ms gaps between the steps
    assert d["totals"]["cost_usd"]["a"] == pytest.approx(0.00925)
    assert d["totals"]["cost_usd"]["b"] == pytest.approx(0.005972)
    assert d["totals"]["output_tokens"] == {"a": 300, "b": 320, "delta": 20, "ratio": pytest.approx(320 / 300, abs=1e-4)}
    assert d["totals"]["latency_ms"]["a"] == 1 + 800 + 1 + 200 + 1 + 300 + 1 + 900 + 1
    assert d["totals"]["latency_ms"]["b"] == 1 + 500 + 1 + 250 + 1 + 900 + 1 + 1000 + 1
    assert d["totals"]["errors"] == {"a": 0, "b": 2, "delta": 2}  # the tool and the failed task
    # the final output: [Refund, approved|denied, for, order, 42, .] -> 5 of 6 tokens match on each side
    assert d["output"]["similarity"] == round(10 / 12, 4)
    assert d["output"]["diff"] == ["@@ -1 +1 @@", "-Refund approved for order 42.", "+Refund denied for order 42."]
    first_step = d["steps"][0]
    assert first_step["op"] == "equal" and first_step["changes"]["model"] == {"a": "gpt-4o", "b": "gpt-4o-mini"}
    assert first_step["changes"]["duration_ms"]["delta"] == -300
    assert "output" not in first_step["changes"]  # the same answer
    assert d["shape"]["added"] == [{"path": "agent:triage-bot > tool:web_search", "a": 0, "b": 1}]
    assert d["shape"]["removed"] == [{"path": "agent:triage-bot > tool:search_kb", "a": 1, "b": 0}]


def test_diff_finds_an_inserted_call_and_a_reorder_in_stored_traces(tmp_path):
    a = trace_rows(A, [tool("search_kb"), tool("lookup_order"), tool("create_ticket")])
    b = trace_rows(B, [tool("lookup_order"), tool("search_kb"), tool("web_search"), tool("create_ticket")])
    con, read = make_store(tmp_path / "s.duckdb", a, b)
    d = diff_traces(read, A, B)
    con.close()
    changed = [(o["op"], o["name_b"] or o["name_a"]) for o in d["tools"]["ops"] if o["op"] != "equal"]
    # search_kb and lookup_order swapped: one stays, the other moved (a tie), web_search is new
    assert sorted(changed) in ([("inserted", "web_search"), ("moved", "search_kb")],
                               [("inserted", "web_search"), ("moved", "lookup_order")])
    assert d["tools"]["counts"] == {"inserted": 1, "moved": 1}
    assert not d["status"]["changed"] and d["output"]["similarity"] is None


def test_diff_follows_a_delegation_into_another_trace(tmp_path):
    """The delegated agent's trace (tied by agent.delegation.trace_id) is part of the run being compared."""
    sub_a, sub_b = "c" * 32, "d" * 32
    a = trace_rows(A, [tool("search_kb")], attrs=None, root_attrs={"agent.delegation.trace_id": sub_a})
    b = trace_rows(B, [tool("search_kb")], root_attrs={"agent.delegation.trace_id": sub_b})
    sa = trace_rows(sub_a, [tool("fetch_page")], agent="researcher", start_ns=T0 + 2 * MS)
    sb = trace_rows(sub_b, [tool("fetch_page"), tool("summarize")], agent="researcher", start_ns=T0 + 2 * MS)
    con, read = make_store(tmp_path / "s.duckdb", a, b, sa, sb)
    d = diff_traces(read, A, B)
    flat = diff_traces(read, A, B, follow_links=False)
    con.close()
    assert d["a"]["traces"] == [A, sub_a] and d["a"]["agents"] == ["researcher", "triage-bot"]
    assert [o["op"] for o in d["tools"]["ops"]] == ["equal", "equal", "inserted"]
    assert d["tools"]["b"] == ["search_kb", "fetch_page", "summarize"]
    assert flat["tools"]["equal"] and flat["a"]["traces"] == [A]


def test_an_unknown_trace_is_named(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", trace_rows(A, [tool("x")]))
    with pytest.raises(TraceNotFound, match="no spans of trace 'ffffffffffffffffffffffffffffffff'"):
        diff_traces(read, A, "f" * 32)
    con.close()


def test_the_text_is_coloured_only_when_asked(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", trace_rows(A, [tool("x")]), trace_rows(B, [tool("y")], success=False))
    d = diff_traces(read, A, B)
    con.close()
    plain, colored = render_diff(d), render_diff(d, color=True)
    assert "\x1b[" not in plain and "\x1b[31m" in colored
    assert "status   ok → failed" in plain
    assert "~ x → y  substituted" in plain
    assert "tool calls: edit distance 1 (1 substituted)" in plain


# --- two sets -------------------------------------------------------------------------------------------

def _set(prefix: str, n: int, ok: int, version: str, latency_ms: list[int] | None = None,
         task: str = "triage", cost: float = 0.01) -> list[list[dict]]:
    out = []
    for i in range(n):
        ms = latency_ms[i] if latency_ms else 100
        out.append(trace_rows(f"{prefix}{i:0{32 - len(prefix)}x}", [llm("gpt-4o", 10, 10, cost, ms)],
                              version=version, success=i < ok, task=task, start_ns=T0 + i * 10**9))
    return out


def test_a_worse_success_rate_is_found_with_its_p_value(tmp_path):
    traces = _set("1", 200, 190, "1.4.0") + _set("2", 200, 170, "1.5.0") + _set("3", 50, 0, "1.5.0", task="other")
    con, read = make_store(tmp_path / "s.duckdb", *traces)
    d = diff_sets(read, "agent_version = '1.4.0'", "agent_version = '1.5.0'", task="triage")
    con.close()
    assert (d["baseline"]["traces"], d["baseline"]["successes"]) == (200, 190)
    assert (d["candidate"]["traces"], d["candidate"]["successes"]) == (200, 170)  # task 'other' left out
    s = d["tests"]["success_rate"]
    # by hand: p1 = .95, p2 = .85, pooled .9, SE = sqrt(.9 * .1 * (1/200 + 1/200)) = .03, z = -.1/.03
    assert s["z"] == pytest.approx(-10 / 3, abs=1e-4)
    # two-sided: 2 * (1 - Phi(3.3333)) = 0.000858 (erfc(3.3333 / sqrt 2))
    assert s["p_value"] == pytest.approx(0.000858, abs=1e-6)
    assert s["difference"] == pytest.approx(-0.10) and s["verdict"] == "worse"
    assert d["overlap"] == 0


def test_latency_distributions_are_compared_with_mann_whitney(tmp_path):
    base = _set("1", 5, 5, "1.4.0", latency_ms=[1, 2, 3, 4, 5])
    cand = _set("2", 5, 5, "1.5.0", latency_ms=[6, 7, 8, 9, 10])
    con, read = make_store(tmp_path / "s.duckdb", *base, *cand)
    d = diff_sets(read, "agent_version = '1.4.0'", "agent_version = '1.5.0'")
    con.close()
    lat = d["tests"]["latency_ms"]
    # every candidate slower: U2 = 25, mean 12.5, var = 25/12 * 11, z = (25 - 12.5 - 0.5) / sqrt(var) = 2.5067
    assert lat["u"] == 25 and lat["prob_greater"] == 1.0
    assert lat["z"] == pytest.approx(2.5067, abs=1e-4)
    assert lat["p_value"] == pytest.approx(0.012186, abs=1e-6)  # scipy's asymptotic mannwhitneyu: 0.01219
    assert lat["verdict"] == "worse"
    # latency is first start to last end: the step plus the 1 ms before and after it
    assert d["baseline"]["latency_ms"]["p50"] == 3 + 2 and d["candidate"]["latency_ms"]["p50"] == 8 + 2
    cost = d["tests"]["cost_usd"]  # all costs equal: no evidence either way
    assert cost["p_value"] == 1.0 and cost["verdict"] == "no significant change"


def test_mann_whitney_corrects_for_ties():
    # baseline [1, 1, 2, 3], candidate [2, 3, 3, 4]: pooled average ranks 1.5 1.5 | 3.5 3.5 | 6 6 6 | 8
    # R1 = 1.5 + 1.5 + 3.5 + 6 = 12.5; ties: (2^3-2) + (2^3-2) + (3^3-3) = 36
    # var = 16/12 * (9 - 36/56) = 11.142857; z = (13.5 - 8 - 0.5) / sqrt(var) = 1.49786
    r = mann_whitney(12.5, 4, 4, 36)
    assert r["u"] == 13.5 and r["z"] == pytest.approx(1.4979, abs=1e-4)
    assert r["p_value"] == pytest.approx(0.134169, abs=1e-6)


def test_two_proportion_z_with_no_variance_is_no_evidence():
    assert two_proportion_z(10, 10, 20, 20)["p_value"] == 1.0
    r = two_proportion_z(50, 100, 60, 100)  # pooled .55: SE = sqrt(.55 * .45 * .02) = .070356
    assert r["z"] == pytest.approx(0.1 / math.sqrt(0.55 * 0.45 * 0.02), abs=1e-4)


def test_filters_must_be_read_only_predicates(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", *_set("1", 2, 2, "1.4.0"))
    with pytest.raises(DiffError, match="not a SQL predicate over spans.*no_such_column"):
        diff_sets(read, "no_such_column = 1", "true")
    with pytest.raises(DiffError, match="not allowed"):
        diff_sets(read, "true) AND false; DELETE FROM span_rows WHERE (true", "true")
    with pytest.raises(DiffError, match="read_csv.*not allowed"):
        diff_sets(read, "trace_id IN (SELECT * FROM read_csv('/etc/passwd'))", "true")
    with pytest.raises(DiffError, match="the candidate filter \"agent_version = '9'\" matches no trace"):
        diff_sets(read, "true", "agent_version = '9'")
    # a task name is a parameter: a quote in it is just a character
    with pytest.raises(DiffError, match="matches no trace of task \"tri'age\""):
        diff_sets(read, "true", "true", task="tri'age")
    assert read("SELECT count(*) FROM span_rows", [])[0][0] == 4
    con.close()


def test_a_trace_in_both_sets_is_counted_in_both_and_said(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", *_set("1", 4, 3, "1.4.0"))
    d = diff_sets(read, "true", "agent_version = '1.4.0'")
    con.close()
    assert d["overlap"] == 4 and d["baseline"]["traces"] == d["candidate"]["traces"] == 4
    assert "4 traces match both filters" in render_diff(d)


def test_the_api_body_is_checked_and_dispatched(tmp_path):
    from agent_sre.processors.replay.diff import diff_request

    con, read = make_store(tmp_path / "s.duckdb", trace_rows(A, [tool("x")]), trace_rows(B, [tool("y")]))
    assert diff_request(read, {"trace_a": A.upper(), "trace_b": B})["tools"]["distance"] == 1
    assert diff_request(read, {"baseline": "true", "candidate": "true", "task": "triage"})["overlap"] == 2
    for body, message in (([], "JSON object"), ({"trace_a": A}, "give 'trace_a' and 'trace_b'"),
                          ({"baseline": "true"}, "needs 'baseline' and 'candidate'"),
                          ({"baseline": "true", "candidate": "true", "task": 3}, "'task' must be"),
                          ({"trace_a": A, "trace_b": B, "follow_links": "yes"}, "'follow_links' must be")):
        with pytest.raises(DiffError, match=message):
            diff_request(read, body)  # type: ignore[arg-type]
    con.close()


def test_a_tenant_diffs_only_its_own_traces_and_no_sets(tmp_path):
    from agent_sre.processors.replay.diff import NotForTenants, diff_request

    con, read = make_store(tmp_path / "s.duckdb", trace_rows(A, [tool("x")]),
                           trace_rows(B, [tool("y")], agent="billing-bot"))
    mine = frozenset({"triage-bot"})
    with pytest.raises(TraceNotFound, match=f"no spans of trace '{B}'"):
        diff_request(read, {"trace_a": A, "trace_b": B}, agents=mine)
    assert diff_request(read, {"trace_a": A, "trace_b": B}, agents=frozenset({"triage-bot", "billing-bot"}))
    with pytest.raises(NotForTenants, match="not with a tenant's key"):
        diff_request(read, {"baseline": "true", "candidate": "true"}, agents=mine)
    con.close()


def test_very_long_sequences_are_aligned_by_difflib_and_say_so(monkeypatch):
    import agent_sre.processors.replay.diff as diff

    monkeypatch.setattr(diff, "MAX_ALIGN_CELLS", 4)
    a, b = list("xabcdey"), list("xacdfey")  # middle after the common x/y: abcde vs acdfe (25 cells)
    doc = diff.align(a, b)
    assert doc["approximate"]
    assert [(o["op"], o["name_a"], o["name_b"]) for o in doc["ops"] if o["op"] != "equal"] == [
        ("deleted", "b", None), ("inserted", None, "f")]
    assert sorted(o["a"] for o in doc["ops"] if o["a"] is not None) == list(range(len(a)))
    assert not diff.align(a[:3], b[:3])["approximate"]  # 'ab' vs 'ac' after the prefix: 1 cell
