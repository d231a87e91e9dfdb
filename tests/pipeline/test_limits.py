"""Attribute limits (pipeline/pdata/limits.py) against a plain-Python reading of what they promise: the
first ``max_attributes`` entries of each map kept, the rest counted as dropped; string values cut to
``max_value_length`` code points, the cut keys listed (as a JSON array, in entry order) under
``TRUNCATED_KEY`` at the end of the map, replacing a client-sent entry of that name."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata import limits
from agent_sre.pipeline.pdata.limits import TRUNCATED_KEY, limit_map_column, limit_span_attributes
from agent_sre.pipeline.pdata.otlp_arrow import STRING_MAP
from agent_sre.pipeline.pdata.schema import EVENT_TYPE, LINK_TYPE

# Short texts with multi-byte characters: a value can be longer in bytes than in code points.
TEXT = st.text(alphabet=st.sampled_from('ab"\\\n\u00e9\u4e2d\U0001f600'), max_size=7)
ENTRY = st.tuples(st.one_of(TEXT, st.just(TRUNCATED_KEY)), st.one_of(st.none(), TEXT))
MAPS = st.lists(st.one_of(st.none(), st.lists(ENTRY, max_size=6)), max_size=8)


def reference(row: list[tuple[str, str | None]] | None, max_attributes: int | None,
              max_value_length: int | None) -> tuple[list[tuple[str, str | None]] | None, int, int]:
    if row is None:
        return None, 0, 0
    kept = row[:max_attributes] if max_attributes is not None else list(row)
    dropped = len(row) - len(kept)
    cut_keys = [k for k, v in kept if v is not None and max_value_length is not None and len(v) > max_value_length]
    kept = [(k, v[:max_value_length] if v is not None and max_value_length is not None else v) for k, v in kept]
    if cut_keys:
        kept = [(k, v) for k, v in kept if k != TRUNCATED_KEY] + [(TRUNCATED_KEY, cut_keys)]
    return kept, dropped, len(cut_keys)


def _parsed(row: list[tuple[str, str | None]] | None, marked: int):
    """The map with the marker it was given read back as JSON (any valid encoding of the key list will do)."""
    if row is None or not marked:
        return row
    (key, value) = row[-1]
    assert key == TRUNCATED_KEY and value is not None
    return [*row[:-1], (key, json.loads(value))]


@settings(max_examples=300, deadline=None)
@given(MAPS, st.one_of(st.none(), st.integers(1, 5)), st.one_of(st.none(), st.integers(0, 6)),
       st.integers(0, 2))
def test_limits_keep_cut_and_mark_as_the_reference_does(rows, max_attributes, max_value_length, trim):
    maps = pa.array(rows, STRING_MAP)
    maps = maps.slice(trim, max(len(rows) - 2 * trim, 0))  # offsets that do not start at 0
    rows = rows[trim:trim + len(maps)]
    limited = limit_map_column(maps, max_attributes, max_value_length)
    expected = [reference(r, max_attributes, max_value_length) for r in rows]
    got = limited.maps.to_pylist()
    assert [_parsed(m, cut) for m, cut in zip(got, limited.truncated.tolist(), strict=True)] == [e[0] for e in expected]
    assert limited.dropped.tolist() == [e[1] for e in expected]
    assert limited.truncated.tolist() == [e[2] for e in expected]


def test_a_value_longer_in_bytes_than_the_limit_but_not_in_characters_is_not_cut():
    maps = pa.array([[("k", "\u4e2d" * 4), ("j", "abcde")]], STRING_MAP)  # 12 bytes, 4 characters; 5 and 5
    limited = limit_map_column(maps, None, 4)
    assert limited.maps.to_pylist() == [[("k", "\u4e2d" * 4), ("j", "abcd"), (TRUNCATED_KEY, '["j"]')]]
    assert limited.truncated.tolist() == [1] and np.array_equal(limited.dropped, [0])


EVENTS = st.lists(st.one_of(st.none(), st.lists(st.lists(ENTRY, max_size=6), max_size=3)), max_size=8)
LIMIT = st.one_of(st.none(), st.integers(1, 7))


def _spans(attributes: list, events: list, links: list, trim: int, split: int) -> pa.Table:
    """A span table of these maps and events, sliced (offsets not at 0) and cut into two chunks."""
    n = min(len(attributes), len(events), len(links))

    def nested(rows: list, with_attributes: list) -> list:
        return [None if r is None else [{**dict.fromkeys(with_attributes), "attributes": m} for m in r] for r in rows]

    whole = pa.table({
        "attributes": pa.array(attributes[:n], STRING_MAP),
        "events": pa.array(nested(events[:n], ["time_ns", "name"]), pa.list_(EVENT_TYPE)),
        "links": pa.array(nested(links[:n], ["trace_id", "span_id"]), pa.list_(LINK_TYPE)),
        "dropped_attributes_count": pa.array([0] * n, pa.int64()),
    }).slice(trim, max(n - 2 * trim, 0))
    cut = min(split, whole.num_rows)
    return pa.concat_tables([whole.slice(0, cut), whole.slice(cut)])


@settings(max_examples=300, deadline=None)
@given(MAPS, EVENTS, EVENTS, LIMIT, st.one_of(st.none(), st.integers(0, 8)), st.integers(0, 2), st.integers(0, 8))
def test_the_quick_answer_for_a_table_within_the_limits_is_what_the_full_pass_gives(attributes, events, links,
                                                                                     max_attributes, max_value_length,
                                                                                     trim, split):
    """A table is let through untouched by its offsets alone (``_within_limits``) only where the full pass
    would change nothing; and where it cannot tell, the full pass runs: the same table and counts."""
    table = _spans(attributes, events, links, trim, split)
    quick = limit_span_attributes(table, max_attributes, max_value_length)
    saved = limits._within_limits
    limits._within_limits = lambda *_: False
    try:
        full = limit_span_attributes(table, max_attributes, max_value_length)
    finally:
        limits._within_limits = saved
    assert quick.table.equals(full.table)
    assert (quick.spans_affected, quick.dropped_attributes, quick.truncated_values) == (
        full.spans_affected, full.dropped_attributes, full.truncated_values)
    if limits._within_limits(table, max_attributes, max_value_length):
        assert full.spans_affected == 0  # it only says "within" when nothing is over
