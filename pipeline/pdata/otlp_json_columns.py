"""OTLP/JSON of a span batch, built column-wise in Arrow (issue #12: "file and JSON encodings column-wise").

What ``arrow_otlp.table_to_json`` wrote span by span through Python dicts and ``json.dumps`` (the `file`
exporter's line: measured −85 % of the pipeline's throughput with one `file` exporter, bench/fanout.py),
here as Arrow string kernels over whole columns: each field of each span is a JSON fragment (a string
column, empty where the field is left out), the fragments are concatenated element-wise, a span's
attributes joined through its list offsets, and the spans of each run of one resource and scope joined
the same way; Python touches only the runs.  The JSON is the same document (lowerCamelCase keys, hex ids,
integer enums, int64 as strings, defaults left out; typed attribute values as the protobuf path types
them); spans with events or links, and batches with a string holding a control character other than
\\n, \\r and \\t, are left to the span-by-span path (``None``), which the caller then uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.pdata.arrow_otlp import _entries

_INT = "^-?[0-9]{1,18}$"  # what the protobuf path reads as an int (pipeline/pdata/_otlp_encode.c)
_DECIMAL = r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"  # ... and as a double
_HARD = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"  # control characters json.dumps writes as \\u00XX
_ANY_ESCAPE = '[\\x00-\\x1f"\\\\]'  # anything json.dumps escapes (with ensure_ascii off)
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


class _Hard(Exception):
    """A string needs an escape this module does not write: the span-by-span path encodes the batch."""


def _cat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation (null where any part is null)."""
    return pc.binary_join_element_wise(*parts, "")


def _quoted(col: pa.Array) -> pa.Array:
    """Each value as a JSON string literal (null stays null)."""
    col = col.cast(pa.string())
    if len(col) and pc.any(pc.match_substring_regex(col, _ANY_ESCAPE)).as_py():  # most columns need none
        if pc.any(pc.match_substring_regex(col, _HARD)).as_py():
            raise _Hard
        for old, new in _ESCAPES:
            col = pc.replace_substring(col, old, new)
    return _cat('"', col, '"')


def _where(mask: pa.Array | np.ndarray, then: pa.Array) -> pa.Array:
    """``then`` where ``mask``, else the empty fragment."""
    return pc.if_else(pa.array(mask) if isinstance(mask, np.ndarray) else pc.fill_null(mask, False),
                      pc.fill_null(then, ""), "")


def _field(name: str, text: pa.Array, keep: pa.Array | np.ndarray) -> pa.Array:
    """``,"name":text`` where ``keep``, else empty."""
    return _where(keep, _cat(f',"{name}":', text))


def _nonempty(col: pa.Array) -> pa.Array:
    return pc.fill_null(pc.not_equal(col.cast(pa.string()), ""), False)


def _number(col: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(the integers as text, whether each is neither null nor 0)."""
    filled = pc.fill_null(col, 0)
    return filled.cast(pa.string()), pc.not_equal(filled, 0)


def _double_value(text: pa.Array, ok: pa.Array) -> pa.Array:
    """doubleValue fragments of the ``ok`` texts (non-finite as their JSON names)."""
    lower = pc.fill_null(text, "")
    as_float = pc.cast(pc.if_else(ok, lower, "0"), pa.float64())
    finite = _cat('{"doubleValue":', pc.cast(as_float, pa.string()), "}")
    named = pc.if_else(pc.is_nan(as_float), '{"doubleValue":"NaN"}',
                       pc.if_else(pc.greater(as_float, 0), '{"doubleValue":"Infinity"}', '{"doubleValue":"-Infinity"}'))
    return pc.if_else(pc.is_finite(as_float), finite, named)


def _any_values(keys: pa.Array, values: pa.Array, types: dict[str, str]) -> pa.Array:
    """The AnyValue of each (key, value text) as the protobuf path types it: a key the conventions type
    as int, double or bool whose text parses as one is that; any other text a string; null ``{}``."""
    out = pc.if_else(pc.is_null(values), "{}", _cat('{"stringValue":', _quoted(values), "}"))
    by_kind = {kind: pa.array([k for k, v in types.items() if v == kind], pa.string()) for kind in ("int", "double", "bool")}
    text = pc.fill_null(values, "")
    is_int = pc.and_(pc.is_in(keys, value_set=by_kind["int"]), pc.match_substring_regex(text, _INT))
    if pc.any(is_int).as_py():
        canonical = pc.cast(pc.cast(pc.if_else(is_int, text, "0"), pa.int64()), pa.string())
        out = pc.if_else(is_int, _cat('{"intValue":"', canonical, '"}'), out)
    is_double = pc.and_(pc.is_in(keys, value_set=by_kind["double"]),
                        pc.or_(pc.match_substring_regex(text, _DECIMAL), pc.is_in(text, value_set=pa.array(["nan", "inf", "-inf"]))))
    if pc.any(is_double).as_py():
        out = pc.if_else(is_double, _double_value(text, is_double), out)
    is_bool = pc.and_(pc.is_in(keys, value_set=by_kind["bool"]), pc.is_in(text, value_set=pa.array(["true", "false"])))
    if pc.any(is_bool).as_py():
        out = pc.if_else(is_bool, _cat('{"boolValue":', text, "}"), out)
    return pc.if_else(pc.is_null(values), "{}", out)


def _lengths(lists: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int32)


def _joined(fragments: pa.Array, lengths: np.ndarray) -> pa.Array:
    """The fragments of each row (``lengths`` of them, in order) joined with commas."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), fragments), ",")


def _key_values(maps: pa.Array, types: dict[str, str]) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """(each row's KeyValues joined with commas, the flattened keys, the rows' lengths) of a map column."""
    keys, values, offsets = _entries(maps)
    anys = _any_values(keys, values, types)
    keyed = pc.fill_null(pc.not_equal(keys, ""), False)
    kv = pc.if_else(keyed, _cat('{"key":', pc.fill_null(_quoted(keys), '""'), ',"value":', anys, "}"),
                    _cat('{"value":', anys, "}"))
    lengths = np.diff(offsets).astype(np.int32)
    return _joined(kv, lengths), keys, lengths


def _attributes(maps: pa.Array, types: dict[str, str]) -> pa.Array:
    """``,"attributes":[...]`` per row (empty without any)."""
    joined, _, lengths = _key_values(maps, types)
    return _field("attributes", _cat("[", joined, "]"), lengths > 0)


def _same(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise: equal, or both null."""
    eq = pc.fill_null(pc.equal(a, b), False)
    return pc.or_(eq, pc.and_(pc.is_null(a), pc.is_null(b))).to_numpy(zero_copy_only=False)


def _changes(maps: pa.Array) -> np.ndarray:
    """Whether each row's (key, value) pairs differ from the row before's (row 0: True), compared as the
    span-by-span path compares them (as stored: ``"7"`` and ``"007"`` of an int key differ); the pairs of
    rows of the same length are compared position by position, in one take per side."""
    keys, values, offsets = _entries(maps)
    lengths = np.diff(offsets)
    n = len(lengths)
    changed = np.ones(n, dtype=bool)
    if n < 2:
        return changed
    changed[1:] = lengths[1:] != lengths[:-1]
    rows = np.flatnonzero(~changed[1:]) + 1  # same length as the row before
    per = lengths[rows]
    if per.sum():
        step = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
        here = np.repeat(offsets[rows], per) + step
        before = np.repeat(offsets[rows - 1], per) + step
        same = _same(keys.take(pa.array(here)), keys.take(pa.array(before)))
        same &= _same(values.take(pa.array(here)), values.take(pa.array(before)))
        mismatches = np.bincount(np.repeat(np.arange(len(rows)), per)[~same], minlength=len(rows))
        changed[rows] = mismatches > 0
    return changed


def spans_json(table: pa.Table, kinds: np.ndarray, codes: np.ndarray, types: dict[str, str], cost_keys: frozenset[str],
               cost_attribute: str, one_span: Callable[[int], bytes]) -> bytes | None:
    """The batch's ExportTraceServiceRequest as OTLP/JSON, or None when the span-by-span path must write it
    (see the module docstring).  ``kinds`` and ``codes``: each span's SpanKind and status code numbers;
    ``one_span(i)``: span i's JSON by that path (for spans with events or links)."""
    try:
        return _spans_json(table, kinds, codes, types, cost_keys, cost_attribute, one_span)
    except (_Hard, pa.ArrowCapacityError):  # an escape not written here; a column of fragments past 2 GiB
        return None


def _spans_json(table: pa.Table, kinds: np.ndarray, codes: np.ndarray, types: dict[str, str], cost_keys: frozenset[str],
                cost_attribute: str, one_span: Callable[[int], bytes]) -> bytes:
    n = table.num_rows

    def col(name: str) -> pa.Array:
        return table.column(name).combine_chunks()

    # the cost the cost processor computed, as an attribute, where the client sent none of its own
    attrs = col("attributes")
    cost = col("cost_usd")
    cost_valid = pc.is_valid(cost).to_numpy(zero_copy_only=False)
    kvs, keys, lengths = _key_values(attrs, types)
    seen = np.zeros(n, dtype=bool)
    if len(keys) and cost_keys:
        hit = pc.fill_null(pc.is_in(keys, value_set=pa.array(sorted(cost_keys), pa.string())), False).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(n), lengths)
        seen[rows[hit]] = True
    add_cost = cost_valid & ~seen
    cost_text = pc.cast(pc.fill_null(cost, 0.0), pa.string())
    cost_any = _double_value(cost_text, pa.array(add_cost))
    cost_kv = _where(add_cost, _cat(f'{{"key":"{cost_attribute}","value":', cost_any, "}"))
    has_attrs = lengths > 0
    both = pa.array(has_attrs & add_cost)
    all_kvs = pc.if_else(both, _cat(kvs, ",", cost_kv), pc.if_else(pa.array(add_cost), cost_kv, kvs))
    attributes = _field("attributes", _cat("[", all_kvs, "]"), has_attrs | add_cost)

    start, start_set = _number(col("start_ns"))
    end, end_set = _number(col("end_ns"))
    flags, flags_set = _number(col("flags"))
    dropped_a, dropped_a_set = _number(col("dropped_attributes_count"))
    dropped_e, dropped_e_set = _number(col("dropped_events_count"))
    dropped_l, dropped_l_set = _number(col("dropped_links_count"))
    message = col("status_message")
    status_inner = _cat(_field("message", _quoted(message), _nonempty(message)),
                        _field("code", pa.array(codes.astype(np.int64)).cast(pa.string()), codes != 0))
    status = _where(pc.not_equal(status_inner, ""), _cat(',"status":{', pc.utf8_slice_codeunits(status_inner, 1), "}"))
    name, state, parent = col("name"), col("trace_state"), col("parent_span_id")
    fragments = _cat(
        '{"traceId":', pc.fill_null(_quoted(col("trace_id")), "null"),
        ',"spanId":', pc.fill_null(_quoted(col("span_id")), "null"),
        _field("parentSpanId", _quoted(parent), _nonempty(parent)),
        _field("traceState", _quoted(state), _nonempty(state)),
        _field("flags", flags, flags_set),
        _field("name", _quoted(name), _nonempty(name)),
        _field("kind", pa.array(kinds.astype(np.int64)).cast(pa.string()), kinds != 0),
        _field("startTimeUnixNano", _cat('"', start, '"'), start_set),
        _field("endTimeUnixNano", _cat('"', end, '"'), end_set),
        attributes,
        _field("droppedAttributesCount", dropped_a, dropped_a_set),
        _field("droppedEventsCount", dropped_e, dropped_e_set),
        _field("droppedLinksCount", dropped_l, dropped_l_set),
        status, "}")
    # spans with events or links: their JSON by the span-by-span path (the fields' order is not kept)
    odd = np.flatnonzero((_lengths(col("events")) > 0) | (_lengths(col("links")) > 0))
    if len(odd):
        texts = fragments.to_pylist()
        for i in odd.tolist():
            texts[i] = one_span(i).decode()
        fragments = pa.array(texts, pa.string())

    # runs of one resource, and of one scope within it
    resource_lists, scope_lists = col("resource_attributes"), col("scope_attributes")
    scope_name, scope_version = pc.fill_null(col("scope_name"), ""), pc.fill_null(col("scope_version"), "")
    new_resource = _changes(resource_lists)
    new_scope = _changes(scope_lists) | new_resource
    if n > 1:
        new_scope[1:] |= ~(_same(scope_name.slice(1), scope_name.slice(0, n - 1))
                           & _same(scope_version.slice(1), scope_version.slice(0, n - 1)))
    starts = np.flatnonzero(new_scope)
    spans = _joined(fragments, np.diff(np.append(starts, n)).astype(np.int32)).to_pylist()
    first = pa.array(starts)  # only the runs' first rows are written
    name, version = scope_name.take(first), scope_version.take(first)
    resources = _attributes(resource_lists.take(first), types).to_pylist()
    scopes = _cat(_field("name", _quoted(name), _nonempty(name)), _field("version", _quoted(version), _nonempty(version)),
                  _attributes(scope_lists.take(first), types)).to_pylist()
    opens = new_resource[starts].tolist()
    out: list[str] = []
    for k, (res, sc, body) in enumerate(zip(resources, scopes, spans, strict=True)):
        if opens[k]:
            out.append(("]}," if k else "") + '{"resource":{' + res[1:] + '},"scopeSpans":[')
        else:
            out.append(",")
        out.append('{"scope":{' + sc[1:] + '},"spans":[' + body + "]}")
    return ('{"resourceSpans":[' + "".join(out) + "]}]}").encode()
