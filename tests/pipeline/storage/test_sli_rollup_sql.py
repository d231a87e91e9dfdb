"""The span-scope SLI rollup (one scan, one aggregation for every SLI) against a hand count, over
random batches: NULL predicates count as "not an event" (total) and "not good" (good), as in SQL."""

from __future__ import annotations

import collections

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.storage.rollups import SliRollup, _present, _span_select

MINUTE = 60 * 10**9
SCORE = "TRY_CAST(list_filter(attributes, lambda e: e.key = 'score')[1].value AS DOUBLE)"
SLIS = [
    SliRollup("tools_ok", "span_role = 'tool'", "status_code <> 'error'"),
    SliRollup("slow_v2", "duration_ns > 5", "agent_version = '2'"),
    SliRollup("never_good", "true", "NULL"),
    SliRollup("scored", "list_filter(attributes, lambda e: e.key = 'score')[1].value IS NOT NULL",
              "TRY_CAST(list_filter(attributes, lambda e: e.key = 'score')[1].value AS DOUBLE) < 0.5"),
    # the shape of the built-in hallucination_rate: its value is computed once per span (hoisted)
    SliRollup("scored_number", f"{SCORE} IS NOT NULL", f"coalesce({SCORE} < 0.5, false)"),
]


def _reference(rows: list[dict]) -> list[tuple]:
    def sql_eq(a, b):
        return None if a is None else a == b

    def score(r):
        try:
            return None if r["score"] is None else float(r["score"])
        except ValueError:
            return None  # TRY_CAST

    preds = {
        "tools_ok": (lambda r: sql_eq(r["span_role"], "tool"),
                     lambda r: None if r["status_code"] is None else r["status_code"] != "error"),
        "slow_v2": (lambda r: None if r["duration_ns"] is None else r["duration_ns"] > 5,
                    lambda r: sql_eq(r["agent_version"], "2")),
        "never_good": (lambda r: True, lambda r: None),
        "scored": (lambda r: r["score"] is not None, lambda r: score(r) is not None and score(r) < 0.5),
        "scored_number": (lambda r: score(r) is not None, lambda r: score(r) is not None and score(r) < 0.5),
    }
    out: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        minute = None if r["end_ns"] is None else r["end_ns"] // MINUTE
        for name, (total, good) in preds.items():
            if total(r) is True:
                key = (minute, name, r["agent_id"] or "", r["agent_version"] or "")
                out[key][0] += 1 if good(r) is True else 0
                out[key][1] += 1
    return sorted(((k[0], k[1], k[2], k[3], g, t) for k, (g, t) in out.items()), key=_order)


def _order(row: tuple) -> tuple:
    return (row[0] is None, row[0] or 0, *row[1:])


_row = st.fixed_dictionaries({
    "end_ns": st.one_of(st.none(), st.integers(0, 3 * MINUTE)),
    "agent_id": st.sampled_from([None, "", "a", "b"]),
    "agent_version": st.sampled_from([None, "1", "2"]),
    "span_role": st.sampled_from([None, "tool", "llm"]),
    "status_code": st.sampled_from([None, "ok", "error", "unset"]),
    "duration_ns": st.one_of(st.none(), st.integers(0, 10)),
    "score": st.sampled_from([None, "0.1", "0.9", "not a number"]),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(_row, max_size=40))
def test_span_slis_count_as_by_hand(rows):
    entry = pa.struct([("key", pa.string()), ("value", pa.string())])
    table = pa.table({
        **{c: pa.array([r[c] for r in rows], pa.int64() if c in ("end_ns", "duration_ns") else pa.string())
           for c in ("end_ns", "agent_id", "agent_version", "span_role", "status_code", "duration_ns")},
        "attributes": pa.array([[{"key": "other", "value": "x"}] + ([{"key": "score", "value": r["score"]}]
                                                                   if r["score"] is not None else [])
                                for r in rows], pa.list_(entry)),
    })
    con = duckdb.connect()
    con.register("_counted", table)
    got = sorted((tuple(r) for r in con.execute(_span_select(SLIS)).fetchall()), key=_order)
    # "scored" with a value that is not a number: an event (the attribute is there), never good
    assert got == _reference(rows)


def test_a_value_tested_for_presence_and_goodness_is_computed_once():
    sql = _span_select([SLIS[-1]])
    assert sql.count("lambda e: e.key = 'score'") == 1
    # only the call itself: a longer name ending the same way is another function
    sql = _span_select([SliRollup("x", "f(a) IS NOT NULL", "myf(a) > 1")])
    assert "myf(a)" in sql


def test_only_a_whole_call_is_hoisted():
    assert _present(f"{SCORE} IS NOT NULL") == SCORE
    assert _present("coalesce(a, b) is not null") == "coalesce(a, b)"
    assert _present("f(a) + g(b) IS NOT NULL") is None  # two calls: (f(a) + g(b)) IS NOT NULL
    assert _present("a = f(b) IS NOT NULL") is None  # IS binds looser than =
    assert _present("f(')') IS NOT NULL") == "f(')')"  # a parenthesis in a string is text
    assert _present("agent_id IS NOT NULL") is None  # a column: nothing to save
    assert _present("f(a) IS NULL") is None
