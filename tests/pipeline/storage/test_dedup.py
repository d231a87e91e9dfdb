"""A client's re-send is stored, rolled up and handed to the commit callbacks once (pipeline/storage/dedup.py)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.storage.dedup import DedupSettings, RecentSpans, span_keys
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings
from tests.otlp_builders import request

HEX = "0123456789abcdef"


def _table(n: int) -> pa.Table:
    req = request(n, attrs={"agent.did": "did:web:a"})
    return request_to_table(req).table


def _crash(store: SpanStore) -> None:
    """What kill -9 leaves: the DuckDB file and the spool, with no drain and no checkpoint."""
    store._stop_verifier()
    store._con.close()


def _open(tmp_path, **dedup) -> tuple[SpanStore, list[int]]:
    store = SpanStore(tmp_path / "s.duckdb", spool=SpoolSettings(directory=str(tmp_path / "spool")),
                      dedup=DedupSettings(**dedup) if dedup else None)
    committed: list[int] = []
    store.on_commit(lambda rows: committed.append(rows.num_rows))
    return store, committed


def _stored(store: SpanStore) -> tuple[int, int, int]:
    store.sync()
    rows, spans = store.read("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM span_rows")[0]
    rolled = store.read("SELECT coalesce(sum(spans), 0) FROM agent_minutes")[0][0]
    return rows, spans, rolled


ids = st.text(alphabet=HEX, min_size=16, max_size=16)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["0" * 31 + "1", "ab" * 16, "0123456789abcdef" * 2]), ids),
                min_size=1, max_size=40),
       st.lists(st.sampled_from(["", "xyz", "0" * 15, "g" * 16, None]), max_size=5))
def test_equal_ids_give_equal_keys_and_invalid_ids_give_none(pairs, bad_span_ids):
    traces = [t for t, _ in pairs] + ["ab" * 16] * len(bad_span_ids)
    spans = [s for _, s in pairs] + bad_span_ids
    keys, has_key = span_keys(pa.array(traces), pa.array(spans))
    assert has_key.tolist() == [True] * len(pairs) + [False] * len(bad_span_ids)
    valid = {}
    for pair, key in zip(pairs, keys[: len(pairs)].tolist(), strict=True):
        valid.setdefault(pair, set()).add(key)
    assert all(len(k) == 1 for k in valid.values())  # one key per identity
    assert len({next(iter(k)) for k in valid.values()}) == len(valid)  # distinct identities, distinct keys here
    upper, _ = span_keys(pa.array([t.upper() for t, _ in pairs]), pa.array([s.upper() for _, s in pairs]))
    assert upper.tolist() == keys[: len(pairs)].tolist()  # the same bytes, whatever the case of the hex


def test_copies_within_one_batch_and_across_batches_are_dropped_the_first_kept():
    recent = RecentSpans(DedupSettings(window=60, max_spans=1000))
    keys = np.array([5, 7, 5, 9], dtype=np.uint64)
    has = np.array([True, True, True, False])
    assert recent.fresh(keys, has).tolist() == [True, True, False, True]
    recent.add(keys, has, now=0.0)
    assert recent.fresh(np.array([7, 9, 11], dtype=np.uint64), np.array([True, True, True])).tolist() == \
        [False, True, True]  # 9 had no key when taken: never remembered


def test_the_window_is_bounded_by_time_and_by_count():
    recent = RecentSpans(DedupSettings(window=40, max_spans=8))
    one = np.ones(2, dtype=bool)
    recent.add(np.array([1, 2], dtype=np.uint64), one, now=0.0)
    recent.add(np.array([3, 4], dtype=np.uint64), one, now=10.0)  # a new generation every 10 s
    assert not recent.fresh(np.array([1, 3], dtype=np.uint64), one).any()
    recent.add(np.array([5, 6], dtype=np.uint64), one, now=51.0)  # generation 0 ended 40 s ago: forgotten
    assert recent.fresh(np.array([1, 3], dtype=np.uint64), one).tolist() == [True, False]
    for i, t in enumerate((61.0, 71.0, 81.0)):  # over 8 remembered: the oldest generations go first
        recent.add(np.array([100 + 2 * i, 101 + 2 * i], dtype=np.uint64), one, now=t)
    assert recent.stats(81.0)["remembered_spans"] <= 8
    assert recent.fresh(np.array([3, 5, 104], dtype=np.uint64), np.ones(3, dtype=bool)).tolist() == [True, False, False]


def test_a_batch_appended_twice_is_stored_rolled_up_and_committed_once(tmp_path):
    store, committed = _open(tmp_path)
    table = _table(50)
    store.append(table)
    store.sync()
    store.append(table)  # the client did not get its OK and sent the same spans again
    store.append(pa.concat_tables([table.slice(0, 10), _table(5)]))  # copies next to new spans
    assert _stored(store) == (55, 55, 55)
    assert sum(committed) == 55
    assert store.recent.dropped == 60
    store.close()


def test_a_re_send_after_kill_9_and_restart_is_stored_once(tmp_path):
    store, _ = _open(tmp_path)
    table = _table(40)
    store.append(table)
    store.sync()
    _crash(store)
    store, committed = _open(tmp_path)
    store.append(table)
    assert _stored(store) == (40, 40, 40)
    assert committed == [] or sum(committed) == 0
    assert store.recent.dropped == 40
    store.close()


def test_a_re_send_of_spans_still_in_the_spool_at_the_kill_is_stored_once(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb", spool=SpoolSettings(directory=str(tmp_path / "spool"),
                                                                 flush_spans=10**9, flush_interval=3600))
    table = _table(30)
    store.append(table)  # acknowledged: in the spool, not yet in DuckDB
    _crash(store)
    store, _ = _open(tmp_path)  # the spool is replayed at the start
    store.append(table)  # and the client's re-send comes after
    assert _stored(store) == (30, 30, 30)
    store.close()


def test_window_zero_stores_every_copy(tmp_path):
    store, _ = _open(tmp_path, window=0)
    table = _table(20)
    store.append(table)
    store.append(table)
    rows, spans, _ = _stored(store)
    assert (rows, spans) == (40, 20)
    store.close()


def test_spans_with_other_ids_are_not_dropped(tmp_path):
    store, _ = _open(tmp_path)
    for _ in range(5):
        store.append(_table(100))
    assert _stored(store) == (500, 500, 500)
    assert store.recent.dropped == 0
    assert os.path.exists(tmp_path / "s.duckdb")
    store.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=40), st.lists(st.booleans(), min_size=40, max_size=40),
       st.lists(st.integers(0, 12), max_size=10))
def test_the_keys_a_batch_leaves_to_remember_are_its_kept_rows_keys_sorted_and_distinct(keys, has, known):
    """What drop_copies hands the commit to remember (its sort reused) is what ``add`` would remember of
    the kept rows: their keys with a valid id, sorted, each once."""
    recent = RecentSpans(DedupSettings(window=60, max_spans=1000))
    recent.add_sorted(np.unique(np.array(known, dtype=np.uint64)), now=0.0)
    k, h = np.array(keys, dtype=np.uint64), np.array(has[:len(keys)], dtype=bool)
    keep, remember = recent._fresh(k, h)
    assert keep.tolist() == recent.fresh(k, h).tolist()
    assert remember.tolist() == np.unique(k[keep & h]).tolist()
