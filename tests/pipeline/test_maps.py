"""map_value against Arrow's own map_lookup(..., "first"), on any map column; rows_with_key against a plain
reading of the rows, on the store's layout (property-based)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.maps import map_value, rows_with_key

KEYS = st.sampled_from(["gen_ai.operation.name", "k", "", "gen_ai.operation", "ключ"])
ENTRY = st.tuples(KEYS, st.one_of(st.none(), st.text(max_size=4)))
ROWS = st.lists(st.one_of(st.none(), st.lists(ENTRY, max_size=5)), max_size=30)
MAP = pa.map_(pa.string(), pa.string())


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, key=KEYS, cut=st.tuples(st.integers(0, 30), st.integers(0, 30)), chunks=st.integers(1, 3))
def test_map_value_answers_what_map_lookup_first_answers(rows, key, cut, chunks):
    array = pa.array(rows, MAP)
    lo = min(cut[0], len(array))
    sliced = array.slice(lo, cut[1])  # a slice's children still hold every row's entries
    expected = pc.map_lookup(sliced, key, "first")
    assert map_value(sliced, key).equals(expected)
    step = max(1, len(sliced) // chunks)
    chunked = pa.chunked_array([sliced.slice(i, step) for i in range(0, len(sliced), step)], MAP)
    assert map_value(chunked, key).equals(expected)


def test_the_first_entry_of_a_repeated_key_wins_even_when_its_value_is_null():
    array = pa.array([[("k", None), ("k", "b")], [("x", "1"), ("k", "c"), ("k", "d")], None, []], MAP)
    assert map_value(array, "k").to_pylist() == [None, "c", None, None]


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, key=KEYS, cut=st.tuples(st.integers(0, 30), st.integers(0, 30)), chunks=st.integers(1, 3))
def test_rows_with_key_finds_the_rows_that_have_an_entry_of_the_key(rows, key, cut, chunks):
    lo = min(cut[0], len(rows))
    layout = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))  # the store's (to_storage)
    sliced = pa.array([None if r is None else [{"key": k, "value": v} for k, v in r] for r in rows], layout).slice(lo, cut[1])
    step = max(1, len(sliced) // chunks)
    stored = pa.chunked_array([sliced.slice(i, step) for i in range(0, len(sliced), step)], layout)
    expected = [row is not None and any(k == key for k, _ in row) for row in rows[lo:lo + len(sliced)]]
    got = rows_with_key(stored, key)
    assert (got.tolist() if got is not None else [False] * len(expected)) == expected
    assert got is None or any(expected)  # None only when no row has it
