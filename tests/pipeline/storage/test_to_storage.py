"""The canonical batch's attribute maps become the stored lists of (key, value) without a copy — any slice
of them too, with or without null maps (the spool's and the batch processor's slices)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import to_storage

_map = st.one_of(st.none(), st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.lists(_map, min_size=1, max_size=12), st.data())
def test_any_slice_of_maps_with_or_without_nulls_is_stored_as_its_entries(maps, data):
    table = pa.Table.from_pylist([{"trace_id": "a" * 32, "span_id": f"{i:016x}", "name": "s", "attributes": m}
                                  for i, m in enumerate(maps)], schema=SPAN_SCHEMA)
    start = data.draw(st.integers(0, len(maps)))
    length = data.draw(st.integers(0, len(maps) - start))
    stored = to_storage(table.slice(start, length)).column("attributes").to_pylist()
    assert stored == [None if m is None else [{"key": k, "value": v} for k, v in m]
                      for m in maps[start:start + length]]
