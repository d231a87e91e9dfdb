"""The store's trace locator: where a trace's spans started, so one trace is read from its row groups
instead of a scan of every trace id; aged out with the spans; a store from before it is located at open."""

from __future__ import annotations

import duckdb

from agent_sre.pipeline.storage.store import SpanStore, open_read_only
from agent_sre.processors.replay.traces import _located, trace_spans
from tests.pipeline.test_attribution import NOW_NS, batch, span

A, B = "a1" * 16, "b2" * 16


def two_traces(store: SpanStore) -> None:
    store.append(batch(span("00000000000000a1", None, "agent_task", trace=A, agent_id="x"),
                       span("00000000000000a2", "00000000000000a1", "tool", trace=A, agent_id="x",
                            start_ns=NOW_NS - 5 * 10**9)))
    store.append(batch(span("00000000000000b1", None, "agent_task", trace=B, agent_id="y", start_ns=NOW_NS + 10**9)))


def test_a_trace_is_located_by_its_start_range_and_read_whole(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb")
    two_traces(store)
    assert _located(store.read, [A]) == (NOW_NS - 5 * 10**9, NOW_NS - 10**9)
    assert _located(store.read, [A, B]) == (NOW_NS - 5 * 10**9, NOW_NS + 10**9)
    assert _located(store.read, ["cc" * 16]) is None  # unknown: the caller scans (and finds nothing)
    assert sorted(s["span_id"] for s in trace_spans(store.read, A, follow_links=False)) == [
        "00000000000000a1", "00000000000000a2"]


def test_a_held_span_is_located_at_arrival(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb")
    store.append(batch(span("00000000000000c2", "00000000000000c1", "tool", trace=A, start_ns=NOW_NS - 9 * 10**9)))
    store.append(batch(span("00000000000000a9", None, "agent_task", trace=A, agent_id="x")))  # not its parent
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 1
    assert {s["span_id"] for s in trace_spans(store.read, A, follow_links=False)} == {"00000000000000c2",
                                                                                       "00000000000000a9"}


def test_the_locator_ages_out_with_the_spans(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb")
    two_traces(store)
    store.delete_older_than(0, now_ns=NOW_NS + 3600 * 10**9 * 24 * 30)
    assert store.read("SELECT count(*) FROM trace_locator")[0][0] == 0
    assert store.read("SELECT count(*) FROM span_rows")[0][0] == 0


def test_a_store_from_before_the_locator_is_located_when_opened(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb")
    two_traces(store)
    store.close()
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    con.execute("DROP TABLE trace_locator")
    con.close()
    store = SpanStore(tmp_path / "s.duckdb")
    assert _located(store.read, [B]) == (NOW_NS + 10**9, NOW_NS + 10**9)
    store.close()
    ro = open_read_only(tmp_path / "s.duckdb")
    assert _located(lambda sql, p: ro.execute(sql, p).fetchall(), [A]) == (NOW_NS - 5 * 10**9, NOW_NS - 10**9)
