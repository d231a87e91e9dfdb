"""The one place that turns canonical Arrow tables back into OTLP trace requests (for exporters).

The inverse of ``otlp_arrow``, column-wise: the protobuf wire bytes of every span are assembled
with Arrow kernels (element-wise binary joins, list joins) and numpy (varints, hex ids, fixed64
times), never by building a protobuf object per span; only spans with events or links have those
parts encoded by the protobuf classes, and only the few (resource, scope) groups are joined in
Python.  ``table_to_bytes`` gives a serialized ExportTraceServiceRequest; ``table_to_request``
parses it (for OTLP/JSON and tests).

A whole request goes first to the C encoder (``_otlp_encode.c``, built when a C compiler is there: the
same bytes from the columns' Arrow buffers, record batch by record batch, spans, resources and scopes
encoded and grouped in one call with the GIL released, ~27x less CPU than the kernels, ``bench/encode.py``);
where it cannot answer exactly, or with ``AGENT_SRE_PURE_PYTHON_ENCODER=1``, the kernels below do.
OTLP/JSON is written in C from those protobuf bytes (``_otlp_json.c``: the bytes a batch's protobuf
exporters share, walked once), else column-wise in Arrow (``otlp_json_columns``), else span by span.

Attribute values are stored as strings, so their OTLP type is restored from what is known about
the key: the keys the normalisation table reads into numeric or boolean canonical columns (token
counts, costs, trust scores, task success: pipeline/pdata/conventions.yaml) are sent as
int, double or bool when they parse; every other value is sent as a string (arrays and maps, which
were stored as JSON text, stay JSON text).  A cost the ``cost`` processor computed, where the
client sent none, is added as ``agent_sre.cost_usd`` (double), so backends that show cost see it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agent_sre.pipeline.pdata.schema import SPAN_KINDS, SPAN_SCHEMA, STATUS_CODES, STRING_MAP, signal_of

COST_ATTRIBUTE = "agent_sre.cost_usd"
PURE_PYTHON_ENCODER_ENV = "AGENT_SRE_PURE_PYTHON_ENCODER"  # "1": never the C encoder (tests, A/B)
_BIN = pa.binary()
_EMPTY = pa.scalar(b"", _BIN)

try:
    from agent_sre.pipeline.pdata import _otlp_encode  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the Python path alone
    _otlp_encode = None
try:
    from agent_sre.pipeline.pdata import _otlp_json  # type: ignore[attr-defined]
except ImportError:
    _otlp_json = None
try:  # ISA-L's gzip: the same format (RFC 1952) at ~1/5 of zlib's CPU and the same ratio (bench/encode.py)
    from isal import igzip as _gzip
except ImportError:  # a platform without its wheel
    import gzip as _gzip  # type: ignore[no-redef]


# --- what the key says about the value's type ------------------------------------


@functools.cache
def typed_keys() -> dict[str, str]:
    """Attribute key -> "int" | "double" | "bool", from the normalisation table's typed columns."""
    from agent_sre.pipeline.pdata.normalize import load_conventions

    kinds = {pa.int64(): "int", pa.float64(): "double", pa.bool_(): "bool"}
    out: dict[str, str] = {}
    for column, rows in load_conventions().columns.items():
        kind = kinds.get(SPAN_SCHEMA.field(column).type)
        if kind is not None:
            for row in rows:
                out.setdefault(row.key, kind)
    return out


@functools.cache
def _cost_keys() -> frozenset[str]:
    """The keys a client's own cost arrives in: if one is there, the cost column came from it."""
    from agent_sre.pipeline.pdata.normalize import load_conventions

    return frozenset(row.key for row in load_conventions().columns.get("cost_usd", ()))


def any_value(key: str, text: str | None, types: dict[str, str]) -> AnyValue:
    if text is None:
        return AnyValue()
    kind = types.get(key)
    try:
        if kind == "int":
            return AnyValue(int_value=int(text))
        if kind == "double":
            return AnyValue(double_value=float(text))
        if kind == "bool" and text in ("true", "false"):
            return AnyValue(bool_value=text == "true")
    except ValueError:
        pass
    return AnyValue(string_value=text)


# --- column-wise wire encoding -------------------------------------------------------


def _tag(field: int, wire: int) -> pa.Scalar:
    return pa.scalar(_varint_bytes((field << 3) | wire), _BIN)


def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varints(values: np.ndarray) -> pa.BinaryArray:
    """The varint encoding of each value (int64 as two's complement, as protobuf does), as a binary array."""
    v = np.asarray(values).astype(np.uint64)
    n = len(v)
    widths = np.ones(n, dtype=np.int64)
    k = 1
    while k < 10 and (rows := v >= np.uint64(1) << np.uint64(7 * k)).any():
        widths += rows
        k += 1
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(widths, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for byte in range(k):  # one pass per byte of the widest value: usually one or two
        rows = np.flatnonzero(widths > byte)
        part = ((v[rows] >> np.uint64(7 * byte)) & np.uint64(0x7F)).astype(np.uint8)
        part |= np.where(widths[rows] > byte + 1, np.uint8(0x80), np.uint8(0))
        data[offsets[rows] + byte] = part
    return pa.BinaryArray.from_buffers(_BIN, n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)


def _join(*parts) -> pa.Array:
    """Element-wise concatenation; a null part counts as empty."""
    return pc.binary_join_element_wise(*parts, _EMPTY, null_handling="replace", null_replacement=b"")


def _field(tag: pa.Scalar, payload: pa.Array, present: pa.Array | None = None) -> pa.Array:
    """tag + length + payload (a length-delimited field); null where ``present`` is false."""
    out = _join(tag, varints(_lengths(payload)), payload)
    if present is not None:
        out = pc.if_else(present, out, pa.scalar(None, _BIN))
    return out


def _fixed(values: np.ndarray, dtype: str, width: int) -> pa.Array:
    raw = np.ascontiguousarray(values.astype(dtype)).view(np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(raw)]).cast(_BIN)


_HEX = np.full(256, 0, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _unhex(col: pa.Array, width: int) -> pa.Array:
    """Hex strings of ``2 * width`` characters -> ``width`` bytes each (nulls stay null)."""
    filled = pc.fill_null(col, "0" * (2 * width)).cast(pa.string())
    data = np.frombuffer(pc.binary_join_element_wise(filled, "", "").cast(pa.binary()).buffers()[2] or b"", np.uint8)
    data = data[: len(filled) * 2 * width]  # the buffer may be longer than its values (an empty array)
    if len(filled) and len(data) != len(filled) * 2 * width:
        data = np.frombuffer(b"".join(v.encode() for v in filled.to_pylist()), np.uint8)
    nibbles = _HEX[data].reshape(-1, 2 * width)
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    out = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(filled), [None, pa.py_buffer(raw.tobytes())])
    return pc.if_else(pc.is_valid(col), out.cast(_BIN), pa.scalar(None, _BIN))


def _int_values(texts: pa.Array) -> pa.Array:
    return _join(_tag(3, 0), varints(pc.cast(texts, pa.int64()).to_numpy(zero_copy_only=False)))


def _double_values(texts: pa.Array) -> pa.Array:
    return _join(_tag(4, 1), _fixed(pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False), "<f8", 8))


def _bool_values(texts: pa.Array) -> pa.Array:
    return _join(_tag(2, 0), pc.if_else(pc.equal(texts, "true"), pa.scalar(b"\x01", _BIN), pa.scalar(b"\x00", _BIN)))


# AnyValue for the typed keys: (what a stored value of that type looks like, how it is encoded).
_TYPED = {
    "int": (r"^-?[0-9]{1,18}$", _int_values),
    "double": (r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$|^-?inf$|^nan$", _double_values),
    "bool": (r"^(true|false)$", _bool_values),
}


def _entries(attrs: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """A map column's keys and values (as strings) and its row offsets into them, from 0 (a slice of
    a map array keeps the whole key and value arrays: they start at its first offset)."""
    if isinstance(attrs, pa.ChunkedArray):
        attrs = attrs.combine_chunks()
    offsets = attrs.offsets.to_numpy().astype(np.int64)
    keys, values = attrs.keys.cast(pa.string()), attrs.items.cast(pa.string())
    if attrs.offset or offsets[0]:
        keys, values = keys.slice(offsets[0], offsets[-1] - offsets[0]), values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    return keys, values, offsets


def _key_values(attrs: pa.Array, tag: pa.Scalar, types: dict[str, str]) -> tuple[pa.Array, np.ndarray]:
    """Each row's attribute map as repeated KeyValue fields with ``tag``: (one blob per row, offsets)."""
    keys, values, offsets = _entries(attrs)
    vbytes = values.cast(_BIN)
    any_values = pc.if_else(pc.is_valid(values), _join(_tag(1, 2), varints(_lengths(vbytes)), vbytes), _EMPTY)
    typed = np.flatnonzero(pc.is_in(keys, pa.array(list(types), pa.string())).to_numpy(zero_copy_only=False))
    if len(typed):  # values of int, double and bool keys, where they parse: a few per span
        sub_keys, sub_values = keys.take(pa.array(typed)), values.take(pa.array(typed))
        for kind, (pattern, encode) in _TYPED.items():
            wanted = pa.array([k for k, t in types.items() if t == kind], pa.string())
            ok = pc.fill_null(pc.and_(pc.is_in(sub_keys, wanted), pc.match_substring_regex(sub_values, pattern)), False)
            ok = ok.to_numpy(zero_copy_only=False)
            if ok.any():
                mask = np.zeros(len(keys), dtype=bool)
                mask[typed[ok]] = True
                any_values = pc.replace_with_mask(any_values, pa.array(mask),
                                                  encode(sub_values.filter(pa.array(ok))))
    kbytes = keys.cast(_BIN)
    kv = _join(_tag(1, 2), varints(_lengths(kbytes)), kbytes, _tag(2, 2), varints(_lengths(any_values)), any_values)
    return _per_row(_field(tag, kv), offsets), offsets


def _per_row(entries: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Concatenate each row's entries (rows given by ``offsets`` into ``entries``)."""
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), entries)
    return pc.binary_join(lists, _EMPTY)


def _python_fields(table: pa.Table) -> pa.Array:
    """Events and links (rare) as their Span fields, by the protobuf classes; null for spans without."""
    types = typed_keys()
    n_events = pc.list_value_length(_col(table, "events")).fill_null(0).to_numpy(zero_copy_only=False)
    n_links = pc.list_value_length(_col(table, "links")).fill_null(0).to_numpy(zero_copy_only=False)
    out: list[bytes | None] = [None] * table.num_rows
    for i in np.flatnonzero((n_events > 0) | (n_links > 0)):
        span = Span()
        for e in _col(table, "events")[int(i)].as_py() or ():
            span.events.add(time_unix_nano=e["time_ns"] or 0, name=e["name"] or "",
                            attributes=[KeyValue(key=k, value=any_value(k, v, types)) for k, v in e["attributes"] or ()],
                            dropped_attributes_count=e["dropped_attributes_count"] or 0)
        for lk in _col(table, "links")[int(i)].as_py() or ():
            span.links.add(trace_id=bytes.fromhex(lk["trace_id"]), span_id=bytes.fromhex(lk["span_id"]),
                           trace_state=lk["trace_state"] or "", dropped_attributes_count=lk["dropped_attributes_count"] or 0,
                           attributes=[KeyValue(key=k, value=any_value(k, v, types)) for k, v in lk["attributes"] or ()],
                           flags=lk["flags"] or 0)
        out[int(i)] = span.SerializeToString()
    return pa.array(out, _BIN)


def _col(table: pa.Table, name: str) -> pa.Array:
    """A column as one contiguous array (the kernels below work on arrays, not chunked ones)."""
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table.column(name), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _varint_field(field: int, values: np.ndarray) -> pa.Array:
    """A varint field, omitted (null) where the value is 0, as proto3 does."""
    out = _join(_tag(field, 0), varints(values.astype(np.uint64)))
    return pc.if_else(pa.array(values != 0), out, pa.scalar(None, _BIN))


def _string_field(field: int, col: pa.Array) -> pa.Array:
    b = pc.fill_null(col, "").cast(_BIN)
    return _field(_tag(field, 2), b, pc.greater(pc.binary_length(b), 0))


def _enum_codes(col: pa.Array, names: tuple[str, ...], prefix: str) -> np.ndarray:
    """Names back to numbers; values outside the named ones were stored as ``<prefix>_<n>``."""
    codes = pc.index_in(col, pa.array(names))
    if codes.null_count > col.null_count:  # proto3 enums are open: kind_7, status_-1
        other = pc.if_else(pc.is_null(codes), pc.replace_substring(col, f"{prefix}_", ""), None)
        codes = pc.coalesce(codes, pc.cast(other, pa.int64()))
    return pc.fill_null(codes, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _c_enabled() -> bool:
    return _otlp_encode is not None and os.environ.get(PURE_PYTHON_ENCODER_ENV) != "1"


def span_fields(table: pa.Table) -> pa.Array:
    """The wire bytes of each row's Span message (its fields, without the Span's own tag and length)."""
    if _c_enabled():
        fields = _c_span_fields(table)
        if fields is not None:
            return fields
    return _python_span_fields(table)


def _python_span_fields(table: pa.Table) -> pa.Array:
    types = typed_keys()
    n = table.num_rows
    attrs, attr_offsets = _key_values(_col(table, "attributes"), _tag(9, 2), types)
    cost = _col(table, "cost_usd")
    if cost.null_count < n:  # a cost the cost processor added: sent as agent_sre.cost_usd
        keys = _entries(_col(table, "attributes"))[0]
        own = pc.is_in(keys, pa.array(sorted(_cost_keys()), pa.string())).to_numpy(zero_copy_only=False)
        client_sent = np.add.reduceat(np.r_[own, False].astype(np.int64), attr_offsets[:-1]) > 0 if len(own) \
            else np.zeros(n, dtype=bool)
        client_sent &= np.diff(attr_offsets) > 0
        add = pc.and_(pc.is_valid(cost), pa.array(~client_sent))
        key = KeyValue(key=COST_ATTRIBUTE).SerializeToString()
        values = _fixed(pc.fill_null(cost, 0.0).to_numpy(zero_copy_only=False), "<f8", 8)
        kv = _join(pa.scalar(key, _BIN), _tag(2, 2), pa.scalar(b"\x09", _BIN), _tag(4, 1), values)
        attrs = _join(attrs, _field(_tag(9, 2), kv, add))
    status_code = _enum_codes(_col(table, "status_code"), STATUS_CODES, "status")
    status_msg = pc.fill_null(_col(table, "status_message"), "").cast(_BIN)
    status = _join(_field(_tag(2, 2), status_msg, pc.greater(pc.binary_length(status_msg), 0)),
                   _varint_field(3, status_code))
    flags = _ints(table, "flags")
    parent = _unhex(_col(table, "parent_span_id"), 8)
    return _join(
        _field(_tag(1, 2), _unhex(_col(table, "trace_id"), 16)),
        _field(_tag(2, 2), _unhex(_col(table, "span_id"), 8)),
        _string_field(3, _col(table, "trace_state")),
        _field(_tag(4, 2), parent, pc.is_valid(parent)),
        _string_field(5, _col(table, "name")),
        _varint_field(6, _enum_codes(_col(table, "kind"), SPAN_KINDS, "kind")),
        _join(_tag(7, 1), _fixed(_ints(table, "start_ns"), "<u8", 8)),
        _join(_tag(8, 1), _fixed(_ints(table, "end_ns"), "<u8", 8)),
        attrs,
        _varint_field(10, _ints(table, "dropped_attributes_count")),
        _python_fields(table),  # events (11) and links (13)
        _varint_field(12, _ints(table, "dropped_events_count")),
        _varint_field(14, _ints(table, "dropped_links_count")),
        _field(_tag(15, 2), status, pc.greater(pc.binary_length(status), 0)),
        pc.if_else(pa.array(flags != 0), _join(_tag(16, 5), _fixed(flags, "<u4", 4)), pa.scalar(None, _BIN)),
    )


# --- the C encoder's columns ---------------------------------------------------------------

# Arrow types the C encoder reads (anything else: the Python path): the canonical ones.
_C_COLUMNS = ("trace_id", "span_id", "trace_state", "parent_span_id", "name", "kind", "start_ns", "end_ns",
              "attributes", "cost_usd", "dropped_attributes_count", "dropped_events_count",
              "dropped_links_count", "status_code", "status_message", "flags")
_KIND_CODES = {"int": 1, "double": 2, "bool": 3}


@functools.cache
def _c_keys() -> tuple[tuple[tuple[bytes, int], ...], tuple[bytes, ...], bytes, tuple]:
    """As the C encoder takes them: the typed keys (key, 1 int | 2 double | 3 bool), the client cost
    keys, the computed cost's KeyValue up to its double's 8 bytes, and the enums stored by name (kind,
    status code: names in code order and the prefix of the others, as ``_enum_codes`` reads them)."""
    cost_kv = KeyValue(key=COST_ATTRIBUTE).SerializeToString() + b"\x12\x09\x21"  # value: 9 bytes, double_value
    enums = (tuple(k.encode() for k in SPAN_KINDS), b"kind_", tuple(k.encode() for k in STATUS_CODES), b"status_")
    return (tuple((k.encode(), _KIND_CODES[kind]) for k, kind in typed_keys().items()),
            tuple(k.encode() for k in sorted(_cost_keys())), cost_kv, enums)


def _one(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array, without a copy when the column is one chunk."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _parts(arr: pa.Array) -> tuple:
    """(offset, length, validity | None, [offsets,] data): a string, binary or fixed-width array's buffers."""
    bufs = arr.buffers()
    return (arr.offset, len(arr), bufs[0] if arr.null_count else None, *bufs[1:])


def _map_parts(arr: pa.MapArray) -> tuple:
    # the keys and items arrays whole, as _entries reads them; the map's offsets index into them
    return (arr.offset, len(arr), arr.buffers()[1], _parts(arr.keys), _parts(arr.items))


def _binary(result: tuple[bytes, bytes], n: int) -> pa.Array:
    offsets, data = result
    return pa.BinaryArray.from_buffers(_BIN, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _c_types_match(schema: pa.Schema, names: tuple[str, ...]) -> bool:
    return all(schema.field(name).type == SPAN_SCHEMA.field(name).type for name in names)


def _extra(table: pa.Table | pa.RecordBatch) -> tuple | None:
    """The events and links column of the C encoder: None when no row has any (the usual case, read off
    the list offsets alone), else each row's encoded events (11) and links (13), spliced at their place."""
    for name in ("events", "links"):
        lists = _one(table.column(name))
        if len(lists) and lists.offsets[0].as_py() != lists.offsets[-1].as_py():  # some row's range is not empty
            return _parts(_python_fields(table if isinstance(table, pa.Table) else pa.Table.from_batches([table])))
    return None


def _c_span_columns(table: pa.Table | pa.RecordBatch) -> tuple:
    """The span columns as ``_otlp_encode`` takes them (its C_* order), views of the Arrow buffers."""
    def col(name: str) -> tuple:
        return _parts(_one(table.column(name)))

    return (
        col("trace_id"), col("span_id"), col("trace_state"), col("parent_span_id"), col("name"), col("kind"),
        col("start_ns"), col("end_ns"), _map_parts(_one(table.column("attributes"))), col("cost_usd"),
        col("dropped_attributes_count"), _extra(table), col("dropped_events_count"),
        col("dropped_links_count"), col("status_message"), col("status_code"), col("flags"),
    )


def _c_span_fields(table: pa.Table, field: int = 0) -> pa.Array | None:
    """``span_fields`` by the C encoder (each framed as field ``field`` unless 0); None where it cannot
    answer exactly."""
    if not _c_types_match(table.schema, _C_COLUMNS):
        return None
    result = _otlp_encode.encode_spans(_c_span_columns(table), *_c_keys(), field)
    return None if result is None else _binary(result, table.num_rows)


def _map_fields(col: pa.Array, field: int, types: dict[str, str]) -> pa.Array:
    """Each row's map as repeated KeyValue fields numbered ``field`` (one blob per row)."""
    if _c_enabled() and col.type == STRING_MAP:
        result = _otlp_encode.encode_key_values(_map_parts(col), field, _c_keys()[0])
        if result is not None:
            return _binary(result, len(col))
    return _key_values(col, _tag(field, 2), types)[0]


def _scopes(table: pa.Table, types: dict[str, str]) -> pa.Array:
    """Each row's InstrumentationScope message."""
    names, versions, attrs = (_one(table.column(c)) for c in ("scope_name", "scope_version", "scope_attributes"))
    if _c_enabled() and names.type == versions.type == pa.string() and attrs.type == STRING_MAP:
        result = _otlp_encode.encode_scopes(_parts(names), _parts(versions), _map_parts(attrs), _c_keys()[0])
        if result is not None:
            return _binary(result, table.num_rows)
    return _join(_string_field(1, _col(table, "scope_name")), _string_field(2, _col(table, "scope_version")),
                 _map_fields(_col(table, "scope_attributes"), 3, types))  # InstrumentationScope.attributes = 3


def _frame(field: int, payload: bytes) -> bytes:
    return _head(field, len(payload)) + payload


_C_REQUEST_COLUMNS = (*_C_COLUMNS, "resource_attributes", "scope_name", "scope_version", "scope_attributes")


def table_to_bytes(table: pa.Table) -> bytes:
    """A serialized ExportTraceServiceRequest holding every span of ``table`` (canonical schema): by
    the C encoder in one call, batch by batch without combining chunks, where it answers exactly."""
    if not table.num_rows:
        return b""
    if _c_enabled() and _c_types_match(table.schema, _C_REQUEST_COLUMNS):
        body = _otlp_encode.encode_request(_c_request_batches(table), table.num_rows, *_c_keys())
        if body is not None:
            return body
    return _python_request(table)


def _c_request_batches(table: pa.Table) -> list[tuple]:
    """The table's record batches (no chunks combined) as ``encode_request`` takes them."""
    return [(*_c_span_columns(b), _map_parts(b.column("resource_attributes")), _parts(b.column("scope_name")),
             _parts(b.column("scope_version")), _map_parts(b.column("scope_attributes")))
            for b in table.to_batches() if b.num_rows]


def _python_request(table: pa.Table) -> bytes:
    """``table_to_bytes`` from each row's span fields (by C or Python), resources and scopes, grouped here."""
    types = typed_keys()
    spans = _c_span_fields(table, field=2) if _c_enabled() else None  # ScopeSpans.spans = 2
    if spans is None:
        spans = _field(_tag(2, 2), _python_span_fields(table))
    resources = _map_fields(_col(table, "resource_attributes"), 1, types)  # Resource.attributes = 1
    scopes = _scopes(table, types)
    res_codes = pc.dictionary_encode(resources)
    scope_codes = pc.dictionary_encode(scopes)
    r_ids = res_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    s_ids = scope_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    group = r_ids * len(scope_codes.dictionary) + s_ids
    # Runs of rows with the same (resource, scope) become one ScopeSpans, and runs of the same resource
    # one ResourceSpans: rows keep their order (rows of one request's ScopeSpans are consecutive).
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    # Each run's spans are one contiguous range of the spans' data buffer: framed and joined once, from views.
    cut = np.frombuffer(spans.buffers()[1], np.int32)[spans.offset:][np.r_[starts, len(group)]]
    data = memoryview(spans.buffers()[2] or b"")
    out: list[bytes | memoryview] = []
    k = 0
    while k < len(starts):
        r = int(r_ids[starts[k]])
        resource = _frame(1, res_codes.dictionary[r].as_py())  # ResourceSpans.resource = 1
        parts: list[bytes | memoryview] = [resource]
        while k < len(starts) and r_ids[starts[k]] == r:
            scope = _frame(1, scope_codes.dictionary[s_ids[starts[k]]].as_py())  # ScopeSpans.scope = 1
            run = data[cut[k]:cut[k + 1]]
            parts += [_head(2, len(scope) + len(run)), scope, run]  # ResourceSpans.scope_spans = 2
            k += 1
        out += [_head(1, sum(len(p) for p in parts)), *parts]  # ExportTraceServiceRequest.resource_spans = 1
    return b"".join(out)


def _head(field: int, length: int) -> bytes:
    """The tag and length of a length-delimited field."""
    return _varint_bytes((field << 3) | 2) + _varint_bytes(length)


def table_to_request(table: pa.Table) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(table_to_bytes(table))




_encoded: dict[tuple[int, str], tuple[weakref.ref, bytes]] = {}  # (id(table), form) -> (table, bytes)
_computing: dict[tuple[int, str], threading.Lock] = {}
_encoded_lock = threading.Lock()
def _encode(table: pa.Table, form: str) -> bytes:
    """A batch of any signal as an OTLP request in ``proto`` or ``json``."""
    signal = signal_of(table.schema)
    if signal == "traces":
        if form == "proto":
            return table_to_bytes(table)
        return table_to_json(table, encoded(table, "proto") if _c_json_enabled() else None)
    from agent_sre.pipeline.pdata.otlp_json import encode_request
    from agent_sre.pipeline.pdata.otlp_signals import table_to_logs_request, table_to_metrics_request

    request = (table_to_metrics_request if signal == "metrics" else table_to_logs_request)(table)
    return request.SerializeToString() if form == "proto" else encode_request(request)


def encoded(table: pa.Table, form: str = "proto") -> bytes:
    """The batch as OTLP ``proto`` or ``json``, optionally ``+gzip``: computed once per batch however
    many exporters send it (the fan-out hands every exporter the same table object; while one
    exporter's thread encodes, the others wait for its result).  An entry goes when its table does."""
    key = (id(table), form)
    with _encoded_lock:
        hit = _encoded.get(key)
        if hit is not None and hit[0]() is table:
            return hit[1]
        lock = _computing.setdefault(key, threading.Lock())
    with lock:
        with _encoded_lock:
            hit = _encoded.get(key)
            if hit is not None and hit[0]() is table:
                return hit[1]
        base, _, gz = form.partition("+")
        body = _encode(table, base) if not gz else _gzip.compress(encoded(table, base), 1)
        with _encoded_lock:
            _encoded[key] = (weakref.ref(table), body)
            _computing.pop(key, None)
        weakref.finalize(table, _forget, key)
    return body


def _forget(key: tuple[int, str]) -> None:
    with _encoded_lock:
        hit = _encoded.get(key)
        if hit is not None and hit[0]() is None:  # not a newer table that was given the same id
            del _encoded[key]


def with_attributes(table: pa.Table, extra: dict[str, pa.Array]) -> pa.Table:
    """``table`` with more span attributes: ``extra`` maps a key to one (nullable) string per row; a
    null adds nothing, and a key the span already has is left as the client sent it.  Column-wise:
    the new entries are merged into the attribute lists by one stable sort on (row, position)."""
    attrs = _col(table, "attributes")
    n = table.num_rows
    offsets = attrs.offsets.to_numpy().astype(np.int64)
    start = offsets[0]
    offsets = offsets - start
    keys = attrs.keys.slice(start, offsets[-1])
    values = attrs.items.slice(start, offsets[-1])
    lengths = np.diff(offsets)
    rows = [np.repeat(np.arange(n), lengths)]
    order = [np.arange(len(keys)) - np.repeat(offsets[:-1], lengths)]
    all_keys, all_values = [keys], [values]
    for j, (key, column) in enumerate(extra.items()):
        has = pc.equal(keys, key).to_numpy(zero_copy_only=False) if len(keys) else np.zeros(0, dtype=bool)
        already = np.add.reduceat(np.r_[has, False].astype(np.int64), offsets[:-1]) > 0 if len(keys) \
            else np.zeros(n, dtype=bool)
        already &= lengths > 0
        add = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False) & ~already)
        rows.append(add)
        order.append(np.full(len(add), 1 << 40) + j)  # after the client's own entries
        all_keys.append(pa.array([key] * len(add), pa.string()))
        all_values.append(pc.take(column, pa.array(add)).cast(pa.string()))
    row = np.concatenate(rows)
    sort = np.lexsort((np.concatenate(order), row))
    counts = np.bincount(row, minlength=n)
    new_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=new_offsets[1:])
    take = pa.array(sort)
    merged = pa.MapArray.from_arrays(pa.array(new_offsets), pc.take(pa.concat_arrays(all_keys), take),
                                     pc.take(pa.concat_arrays(all_values), take), type=attrs.type)
    return table.set_column(table.schema.get_field_index("attributes"), "attributes", merged)


# --- OTLP/JSON ------------------------------------------------------------------------


def _json_value(key: str, text: str | None, types: dict[str, str]) -> dict:
    """An AnyValue in OTLP/JSON (int64 as a string, non-finite doubles as their names)."""
    if text is None:
        return {}
    kind = types.get(key)
    try:
        if kind == "int":
            return {"intValue": str(int(text))}
        if kind == "double":
            v = float(text)
            return {"doubleValue": v if v == v and v not in (float("inf"), float("-inf"))
                    else "NaN" if v != v else "Infinity" if v > 0 else "-Infinity"}
        if kind == "bool" and text in ("true", "false"):
            return {"boolValue": text == "true"}
    except ValueError:
        pass
    return {"stringValue": text}


def _json_attributes(pairs, types: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": _json_value(k, v, types)} if k else {"value": _json_value(k, v, types)}
            for k, v in pairs or ()]


def _put(doc: dict, key: str, value, default=0) -> None:
    if value is not None and value != default and value != "":
        doc[key] = value


_JSON_COLUMNS = ["trace_id", "span_id", "parent_span_id", "trace_state", "flags", "name", "kind", "start_ns", "end_ns",
                 "status_code", "status_message", "attributes", "resource_attributes", "scope_name", "scope_version",
                 "scope_attributes", "events", "links", "dropped_attributes_count", "dropped_events_count",
                 "dropped_links_count", "cost_usd"]


def _c_json_enabled() -> bool:
    return _otlp_json is not None and _c_enabled()


def table_to_json(table: pa.Table, proto: bytes | None = None) -> bytes:
    """OTLP/JSON of ``table_to_request(table)`` (what ``otlp_json.encode_trace_request`` writes for it:
    lowerCamelCase keys, hex ids, integer enums, int64 as strings, defaults left out).  In C from the
    request's protobuf bytes (``proto``, else encoded here) where it can: ~1.5 us of CPU per span from bytes
    already encoded, ~2.8 with their encoding, against ~19 column-wise (bench/encode.py); else column-wise in Arrow (``otlp_json_columns``), else built
    from the rows with json.dumps rather than through protobuf's json_format (~10x faster).
    ``AGENT_SRE_PURE_PYTHON_ENCODER=1``: span by span."""
    if _c_json_enabled() and table.num_rows:
        text = _otlp_json.traces_json(proto if proto is not None else table_to_bytes(table))
        if text is not None:
            return text
    if not table.num_rows:
        return b"{}"
    types, cost_keys = typed_keys(), _cost_keys()
    kind_codes = _enum_codes(_col(table, "kind"), SPAN_KINDS, "kind")
    status_codes = _enum_codes(_col(table, "status_code"), STATUS_CODES, "status")
    if os.environ.get(PURE_PYTHON_ENCODER_ENV) != "1":  # column-wise (otlp_json_columns), unless it declines
        from agent_sre.pipeline.pdata.otlp_json_columns import spans_json

        def one_span(i: int) -> bytes:
            (r,) = table.slice(i, 1).select(_JSON_COLUMNS).to_pylist()
            return json.dumps(_json_span(r, int(kind_codes[i]), int(status_codes[i]), types, cost_keys),
                              separators=(",", ":"), ensure_ascii=False).encode()

        fast = spans_json(table, kind_codes, status_codes, types, cost_keys, COST_ATTRIBUTE, one_span)
        if fast is not None:
            return fast
    rows = table.select(_JSON_COLUMNS).to_pylist()
    kinds, codes = kind_codes.tolist(), status_codes.tolist()
    out: list[dict] = []
    last_res = last_scope = None
    for i, r in enumerate(rows):
        res = r["resource_attributes"] or []
        scope = (r["scope_name"] or "", r["scope_version"] or "", r["scope_attributes"] or [])
        if res != last_res or not out:
            resource: dict = {}
            _put(resource, "attributes", _json_attributes(res, types), [])
            out.append({"resource": resource, "scopeSpans": []})
            last_res, last_scope = res, None
        if scope != last_scope:
            s: dict = {}
            _put(s, "name", scope[0])
            _put(s, "version", scope[1])
            _put(s, "attributes", _json_attributes(scope[2], types), [])
            out[-1]["scopeSpans"].append({"scope": s, "spans": []})
            last_scope = scope
        out[-1]["scopeSpans"][-1]["spans"].append(_json_span(r, kinds[i], codes[i], types, cost_keys))
    return json.dumps({"resourceSpans": out}, separators=(",", ":"), ensure_ascii=False).encode()


def _json_span(r: dict, kind: int, code: int, types: dict[str, str], cost_keys: frozenset[str]) -> dict:
    span: dict = {"traceId": r["trace_id"], "spanId": r["span_id"]}
    _put(span, "parentSpanId", r["parent_span_id"])
    _put(span, "traceState", r["trace_state"])
    _put(span, "flags", r["flags"])
    _put(span, "name", r["name"])
    _put(span, "kind", kind)
    _put(span, "startTimeUnixNano", str(r["start_ns"] or 0), "0")
    _put(span, "endTimeUnixNano", str(r["end_ns"] or 0), "0")
    attrs = _json_attributes(r["attributes"], types)
    if r["cost_usd"] is not None and not any(k in cost_keys for k, _ in r["attributes"] or ()):
        attrs.append({"key": COST_ATTRIBUTE, "value": _json_value(COST_ATTRIBUTE, repr(r["cost_usd"]),
                                                                  {COST_ATTRIBUTE: "double"})})
    _put(span, "attributes", attrs, [])
    _put(span, "droppedAttributesCount", r["dropped_attributes_count"])
    events = []
    for e in r["events"] or ():
        ev: dict = {}
        _put(ev, "timeUnixNano", str(e["time_ns"] or 0), "0")
        _put(ev, "name", e["name"])
        _put(ev, "attributes", _json_attributes(e["attributes"], types), [])
        _put(ev, "droppedAttributesCount", e["dropped_attributes_count"])
        events.append(ev)
    _put(span, "events", events, [])
    _put(span, "droppedEventsCount", r["dropped_events_count"])
    links = []
    for lk in r["links"] or ():
        link: dict = {"traceId": lk["trace_id"], "spanId": lk["span_id"]}
        _put(link, "traceState", lk["trace_state"])
        _put(link, "attributes", _json_attributes(lk["attributes"], types), [])
        _put(link, "droppedAttributesCount", lk["dropped_attributes_count"])
        _put(link, "flags", lk["flags"])
        links.append(link)
    _put(span, "links", links, [])
    _put(span, "droppedLinksCount", r["dropped_links_count"])
    status: dict = {}
    _put(status, "message", r["status_message"])
    _put(status, "code", code)
    _put(span, "status", status, {})
    return span
