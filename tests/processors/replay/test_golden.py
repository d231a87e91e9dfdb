"""Golden suites (processors/replay/golden.py): traces written to a suite directory, read back from
their OTLP/JSON, and candidates matched and checked against them with the suite's tolerances."""

from __future__ import annotations

import json

import pytest
import yaml

from agent_sre.processors.replay.golden import (
    GoldenError,
    Tolerances,
    add_trace,
    check_suite,
    list_suites,
    load_suite,
    render_check,
    suite_dir,
)
from agent_sre.processors.replay.otlp_io import export_trace
from tests.processors.replay.test_diff import MS, T0, llm, make_store, tool, trace_rows

GOLDEN = "1" * 32
STEPS = [llm("gpt-4o", 1000, 100, 0.0035, 800, "checking"), tool("lookup_order", 200), tool("search_kb", 300),
         llm("gpt-4o", 1500, 200, 0.00575, 900)]


def golden_trace(**kw) -> list[dict]:
    return trace_rows(GOLDEN, STEPS, output="Refund approved for order 42.",
                      root_attrs={"input.value": "Customer asks for a refund of order 42"}, **kw)


def candidate(trace_id: str, steps=STEPS, output="Refund approved for order 42.", start_s: int = 60,
              question: str = "Customer asks for a refund of order 42", **kw) -> list[dict]:
    return trace_rows(trace_id, steps, version="1.5.0", output=output, start_ns=T0 + start_s * 10**9,
                      root_attrs={"input.value": question, **kw.pop("root_attrs", {})}, **kw)


def make_suite(tmp_path, read, tolerances: dict | None = None):
    directory = suite_dir("triage", tmp_path / "golden")
    entry = add_trace(directory, GOLDEN, export_trace(read, GOLDEN, follow_links=True), tolerances)
    return directory, entry


def test_adding_a_trace_writes_its_otlp_json_and_lists_it_in_suite_yaml(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", golden_trace())
    directory, entry = make_suite(tmp_path, read, {"cost_ratio": 1.2})
    con.close()
    assert entry["new_suite"] and entry["task"] == "triage" and entry["agent"] == "triage-bot"
    assert entry["summary"]["tools"] == ["lookup_order", "search_kb"]
    assert entry["summary"]["cost_usd"] == pytest.approx(0.00925)
    doc = yaml.safe_load((directory / "suite.yaml").read_text())
    assert doc["suite"] == "triage"
    assert doc["tolerances"] == {"output_similarity": 0.8, "cost_ratio": 1.2, "latency_ratio": 2.0,
                                 "tool_edit_distance": 0, "require_success": True}
    assert [t["trace_id"] for t in doc["traces"]] == [GOLDEN]
    otlp = json.loads((directory / f"{GOLDEN}.otlp.json").read_text())
    assert {s["name"] for rs in otlp["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]} == {
        "invoke_agent triage-bot", "chat gpt-4o", "execute_tool lookup_order", "execute_tool search_kb"}
    suite = load_suite(directory)
    assert suite["traces"][0]["otlp"] == otlp
    assert [s["suite"] for s in list_suites(tmp_path / "golden")] == ["triage"]


def test_an_equal_candidate_passes_and_a_regressed_one_fails_with_its_reasons(tmp_path):
    same, worse = "2" * 32, "3" * 32
    regressed = [llm("gpt-4o", 3000, 300, 0.0105, 800), tool("lookup_order", 200), tool("web_search", 4000),
                 tool("search_kb", 300), llm("gpt-4o", 4500, 600, 0.01725, 900)]
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(), candidate(same),
                           candidate(worse, regressed, output="I cannot help with that.", success=False))
    directory, _ = make_suite(tmp_path, read)
    suite = load_suite(directory)
    passed = check_suite(read, suite, candidate_trace=same)
    failed = check_suite(read, suite, candidate_trace=worse)
    con.close()
    assert passed["ok"] and (passed["passed"], passed["failed"]) == (1, 0)
    assert all(c["ok"] for c in passed["results"][0]["checks"].values())
    assert passed["results"][0]["checks"]["output_similarity"]["value"] == 1.0
    r = failed["results"][0]
    assert not failed["ok"] and r["outcome"] == "failed" and r["candidate"] == worse
    assert {name for name, c in r["checks"].items() if not c["ok"]} == {
        "status", "output_similarity", "cost_ratio", "latency_ratio", "tool_edit_distance"}
    # by hand: cost 0.00925 -> 0.02775 (x3), one tool call inserted
    assert r["checks"]["cost_ratio"]["value"] == pytest.approx(3.0)
    assert r["checks"]["tool_edit_distance"]["value"] == 1
    assert "tool calls differ (edit distance 1 > 0: web_search inserted)" in r["reasons"]
    assert "the task failed (the golden run succeeded)" in r["reasons"]
    text = render_check(failed)
    assert "FAIL" in text and "REGRESSION" in text and "\x1b[" not in text


def test_a_filter_matches_the_candidate_with_the_most_similar_input(tmp_path):
    right, other = "4" * 32, "5" * 32
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(), candidate(right, start_s=60),
                           # newer, of the same task, but another question (and another behaviour)
                           candidate(other, [tool("cancel_subscription")], output="Cancelled.", start_s=120,
                                     question="Please cancel my subscription"))
    suite = load_suite(make_suite(tmp_path, read)[0])
    doc = check_suite(read, suite, candidate="agent_version = '1.5.0'")
    con.close()
    (r,) = doc["results"]
    assert r["candidate"] == right and r["outcome"] == "passed"
    assert r["matched_by"] == "the same input (1 candidate(s) with it: the newest)"


def test_without_the_same_input_the_most_similar_one_is_taken(tmp_path):
    close, other = "a" * 32, "b" * 32
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(),
                           candidate(close, question="Customer asks for a refund of order 42, urgently", start_s=60),
                           candidate(other, [tool("cancel_subscription")], start_s=120, question="Cancel my plan"))
    suite = load_suite(make_suite(tmp_path, read)[0])
    (r,) = check_suite(read, suite, candidate="agent_version = '1.5.0'")["results"]
    con.close()
    # [Customer asks for a refund of order 42] vs the same + [, urgently]: 2*8 / (8 + 10)
    assert r["candidate"] == close
    assert r["matched_by"] == "input similarity 0.89 among the newest 2 of the task"


def test_only_candidates_of_the_golden_traces_task_are_compared(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(), candidate("6" * 32, task="summarize"))
    suite = load_suite(make_suite(tmp_path, read)[0])
    doc = check_suite(read, suite, candidate="agent_version = '1.5.0'")
    allowed = check_suite(read, suite, candidate="agent_version = '1.5.0'", allow_missing=True)
    con.close()
    assert doc["results"][0]["outcome"] == "missing" and not doc["ok"]
    assert doc["results"][0]["reasons"] == ["no candidate trace of task 'triage' (filter agent_version = '1.5.0')"]
    assert allowed["ok"] and allowed["missing"] == 1


def test_replays_are_matched_to_the_trace_they_replayed(tmp_path):
    old, new = "7" * 32, "8" * 32
    con, read = make_store(
        tmp_path / "s.duckdb", golden_trace(),
        candidate(old, [tool("lookup_order")], start_s=60, attrs={"agent_sre.replay.of": GOLDEN}),
        candidate(new, start_s=120, attrs={"agent_sre.replay.of": GOLDEN}))
    suite = load_suite(make_suite(tmp_path, read)[0])
    doc = check_suite(read, suite, replays=True)
    con.close()
    (r,) = doc["results"]
    assert (r["candidate"], r["outcome"]) == (new, "passed")  # the newest replay
    assert r["matched_by"] == "newest replay of it (agent_sre.replay.of)"


def test_a_trace_can_loosen_the_suites_tolerances(tmp_path):
    pricier = "9" * 32
    steps = [llm("gpt-4o", 1000, 100, 0.0105, 800, "checking"), tool("lookup_order", 200), tool("search_kb", 300),
             llm("gpt-4o", 1500, 200, 0.01725, 900)]
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(), candidate(pricier, steps))
    directory, _ = make_suite(tmp_path, read)
    assert not check_suite(read, load_suite(directory), candidate_trace=pricier)["ok"]  # x3 > x1.5
    add_trace(directory, GOLDEN, export_trace(read, GOLDEN), {"cost_ratio": 3.5})  # replaces the entry
    doc = check_suite(read, load_suite(directory), candidate_trace=pricier)
    con.close()
    assert doc["ok"] and doc["results"][0]["tolerances"]["cost_ratio"] == 3.5
    assert len(yaml.safe_load((directory / "suite.yaml").read_text())["traces"]) == 1


def test_tolerances_and_suites_are_checked(tmp_path):
    with pytest.raises(GoldenError, match=r"unknown tolerance\(s\) cost \(valid: cost_ratio, latency_ratio"):
        Tolerances.parse({"cost": 2})
    with pytest.raises(GoldenError, match="output_similarity must be between 0 and 1"):
        Tolerances.parse({"output_similarity": 2})
    with pytest.raises(GoldenError, match="a suite name is a plain directory name"):
        suite_dir("../etc")
    with pytest.raises(GoldenError, match="no golden suite at .*add a trace first"):
        load_suite(tmp_path / "golden" / "nothing")
    con, read = make_store(tmp_path / "s.duckdb", golden_trace())
    suite = load_suite(make_suite(tmp_path, read)[0])
    with pytest.raises(GoldenError, match="exactly one"):
        check_suite(read, suite, candidate="true", replays=True)
    with pytest.raises(GoldenError, match="not a SQL predicate over spans"):
        check_suite(read, suite, candidate="nope = 1")
    con.close()


def test_golden_traces_are_never_their_own_candidates(tmp_path):
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(start_ns=T0 + 500 * MS))
    suite = load_suite(make_suite(tmp_path, read)[0])
    doc = check_suite(read, suite, candidate="true")
    con.close()
    assert doc["results"][0]["outcome"] == "missing"


def test_the_api_body_is_checked(tmp_path):
    from agent_sre.processors.replay.golden import check_request

    con, read = make_store(tmp_path / "s.duckdb", golden_trace(), candidate("2" * 32))
    suite = load_suite(make_suite(tmp_path, read)[0])
    assert check_request(read, json.loads(json.dumps({"suite": suite, "candidate_trace": "2" * 32})))["ok"]
    for body, message in (({}, "with the 'suite'"), ({"suite": {"traces": [{"trace_id": GOLDEN}]}}, "suite.traces"),
                          ({"suite": suite, "candidate": 5}, "'candidate' must be a string")):
        with pytest.raises(GoldenError, match=message):
            check_request(read, body)
    con.close()


def test_a_tenant_checks_only_against_its_own_traces(tmp_path):
    theirs = "c" * 32
    con, read = make_store(tmp_path / "s.duckdb", golden_trace(),
                           candidate(theirs, agent="other-bot", attrs={"agent_sre.replay.of": GOLDEN}))
    suite = load_suite(make_suite(tmp_path, read)[0])
    mine = frozenset({"triage-bot"})
    assert check_suite(read, suite, replays=True)["results"][0]["candidate"] == theirs
    doc = check_suite(read, suite, replays=True, agents=mine)
    assert doc["results"][0]["outcome"] == "missing" and doc["results"][0]["candidate"] is None
    with pytest.raises(GoldenError, match="no spans of candidate trace"):
        check_suite(read, suite, candidate_trace=theirs, agents=mine)
    with pytest.raises(GoldenError, match="with a tenant's key"):
        check_suite(read, suite, candidate="true", agents=mine)
    con.close()
