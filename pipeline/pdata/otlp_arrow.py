"""The one place that converts OTLP trace requests to canonical Arrow tables.

The loop below touches each span once and only for span-level fields; everything
that repeats (resource and scope fields, id hex encoding, enum names, durations)
is done column-wise afterwards with numpy/Arrow.  Measured cost is recorded in
docs/benchmarks.md; keep the per-span body small.

Invalid spans (ids of the wrong length or all zero, times past int64) are
rejected one by one and counted, as OTLP ``partial_success`` wants; the rest of
the request is kept.

Encoded requests go first to the C decoder (``_otlp_decode.c``, built when a C compiler is
there): it walks the protobuf bytes with the GIL released and hands back the columns as Arrow
buffers; whatever it does not handle exactly as the Python path would (invalid spans, unusual
protobuf, arrays in span attributes) it returns None for, and the Python path answers.
``AGENT_SRE_PURE_PYTHON_DECODER=1`` skips it.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope

from agent_sre.pipeline.pdata.otlp_attributes import ShadowExportTraceServiceRequest, decode_key_values
from agent_sre.pipeline.pdata.schema import (
    AGENT_COLUMNS,
    EVENT_TYPE,
    LINK_TYPE,
    SPAN_KINDS,
    SPAN_SCHEMA,
    STATUS_CODES,
    STRING_MAP,
)

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_INT64_MAX = 2**63 - 1
_MAX_REJECT_REASONS = 3
PURE_PYTHON_DECODER_ENV = "AGENT_SRE_PURE_PYTHON_DECODER"  # "1": never the C decoder (tests, A/B)

try:
    from agent_sre.pipeline.pdata import _otlp_decode  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the Python path alone
    _otlp_decode = None


@dataclass(frozen=True)
class Conversion:
    """The result of converting one request: the kept spans and what was rejected."""

    table: pa.Table
    rejected: int
    message: str

    @property
    def accepted(self) -> int:
        return self.table.num_rows


# --- attribute values ---------------------------------------------------------


def _any_to_json(value: AnyValue) -> object:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_to_json(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_to_json(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if which == "double_value":
        return _double_text(value.double_value) if not math.isfinite(value.double_value) else value.double_value
    return getattr(value, which)


def _double_text(v: float) -> str:
    """Non-finite doubles as OTLP/JSON spells them, at top level and inside arrays alike."""
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def value_to_str(value: AnyValue) -> str | None:
    """Render an OTLP AnyValue as the string stored in an attribute map.

    Strings as they are; booleans ``true``/``false``; numbers in their shortest
    round-trip form; bytes as base64; arrays and key-value lists as JSON.
    An empty AnyValue is ``None`` (a null map value).
    """
    fields = value.ListFields()
    if not fields:
        return None
    v = fields[0][1]
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return repr(v)
    if t is float:
        return repr(v) if math.isfinite(v) else _double_text(v)
    if t is bytes:
        return base64.b64encode(v).decode("ascii")
    return json.dumps(_any_to_json(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def attributes_to_dict(kvs) -> dict[str, str | None]:
    """Key-value list to a dict; a repeated key keeps its last value (map keys are unique)."""
    d: dict[str, str | None] = {}
    for kv in kvs:
        d[kv.key] = value_to_str(kv.value)
    return d


def _map_array(dicts: list[dict[str, str | None]]) -> pa.MapArray:
    offsets = np.zeros(len(dicts) + 1, dtype=np.int32)
    keys: list[str] = []
    vals: list[str | None] = []
    for i, d in enumerate(dicts):
        keys.extend(d)
        vals.extend(d.values())
        offsets[i + 1] = len(keys)
    return pa.MapArray.from_arrays(
        pa.array(offsets), pa.array(keys, pa.string()), pa.array(vals, pa.string()), type=STRING_MAP
    )


# --- ids ----------------------------------------------------------------------


def _hex_column(raw: bytes, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """Fixed-width binary ids, concatenated, to a lowercase hex string column."""
    n = len(raw) // width
    validity = None
    null_count = 0
    if valid is not None and not valid.all():
        validity = np.packbits(valid, bitorder="little").tobytes()
        null_count = int(n - valid.sum())
    return _hex_strings(n, raw.hex().encode("ascii"), width, validity, null_count)


def _hex_strings(n: int, hex_data: bytes, width: int, validity: bytes | None = None,
                 null_count: int = 0) -> pa.Array:
    offsets = np.arange(0, n * 2 * width + 1, 2 * width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(hex_data),
                                       pa.py_buffer(validity) if null_count else None, null_count)


# Per request, the Arrow calls of the table's assembly cost more than their work (a few µs each, on the
# receiver's threads, which share the GIL): numbers go in zero-copy from their buffers (``pa.array`` of a
# numpy array goes through pandas' type checks), and what only depends on the request's size is made once
# per size and shared (Arrow arrays are immutable).  Sizes up to _SHARED_ROWS: a huge request's columns
# are not kept.
_SHARED_ROWS = 2048


def _numbers(data, type_: pa.DataType, n: int) -> pa.Array:
    """``n`` fixed-width numbers of ``type_`` (no nulls) over ``data``'s buffer, without a copy."""
    return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(data)])


@functools.cache
def _names(names: tuple[str, ...]) -> pa.Array:
    return pa.array(names, pa.string())


def _enum_column(codes: np.ndarray, names: tuple[str, ...], prefix: str) -> pa.Array:
    """Enum codes (int32) as their names; a code out of range reads ``{prefix}_{code}``."""
    if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
        return pa.array(
            [names[c] if 0 <= c < len(names) else f"{prefix}_{c}" for c in codes.tolist()], pa.string()
        )
    return pc.take(_names(names), _numbers(np.ascontiguousarray(codes, dtype=np.int32), pa.int32(), len(codes)))


# --- events and links (rare; plain loops) --------------------------------------


def _new_empty_lists(n: int, item_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), _no_items(item_type))


def _new_agent_nulls(n: int) -> tuple[pa.Array, ...]:
    return tuple(pa.nulls(n, SPAN_SCHEMA.field(name).type) for name in AGENT_COLUMNS)


_shared_empty_lists = functools.lru_cache(maxsize=32)(_new_empty_lists)
_shared_agent_nulls = functools.lru_cache(maxsize=16)(_new_agent_nulls)


def _empty_lists(n: int, item_type: pa.DataType) -> pa.Array:
    return _shared_empty_lists(n, item_type) if n <= _SHARED_ROWS else _new_empty_lists(n, item_type)


def _agent_nulls(n: int) -> tuple[pa.Array, ...]:
    """The agent columns before normalisation: null."""
    return _shared_agent_nulls(n) if n <= _SHARED_ROWS else _new_agent_nulls(n)


@functools.cache
def _no_items(item_type: pa.DataType) -> pa.Array:
    """An empty array of ``item_type``, made once (it costs ~20 µs, once per request and list column)."""
    return pa.array([], item_type)


def _list_offsets(n: int, per_span: list[tuple[int, int]]) -> pa.Array:
    """List offsets for ``n`` spans from (span index, item count) of the spans that have items."""
    counts = np.zeros(n, dtype=np.int32)
    if per_span:
        at, count = zip(*per_span, strict=True)
        counts[list(at)] = count
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.array(offsets)


def _events_array(n: int, per_span: list[tuple[int, Sequence]]) -> pa.Array:
    """The events column: ``per_span`` holds (span index, its events) for the spans that have some."""
    times: list[int | None] = []
    names: list[str] = []
    attrs: list[dict] = []
    dropped: list[int] = []
    for _, events in per_span:
        for ev in events:
            t = ev.time_unix_nano
            times.append(t if t <= _INT64_MAX else None)  # unrepresentable: NULL, not a wrong time
            names.append(ev.name)
            attrs.append(attributes_to_dict(ev.attributes))
            dropped.append(ev.dropped_attributes_count)
    values = pa.StructArray.from_arrays(
        [pa.array(times, pa.int64()), pa.array(names, pa.string()), _map_array(attrs),
         pa.array(dropped, pa.int64())],
        fields=list(EVENT_TYPE),
    )
    return pa.ListArray.from_arrays(_list_offsets(n, [(i, len(e)) for i, e in per_span]), values)


def _links_array(n: int, per_span: list[tuple[int, Sequence]]) -> pa.Array:
    """The links column: ``per_span`` holds (span index, its links) for the spans that have some."""
    tids: list[str] = []
    sids: list[str] = []
    states: list[str] = []
    attrs: list[dict] = []
    dropped: list[int] = []
    flags: list[int] = []
    for _, links in per_span:
        for ln in links:
            tids.append(ln.trace_id.hex())
            sids.append(ln.span_id.hex())
            states.append(ln.trace_state)
            attrs.append(attributes_to_dict(ln.attributes))
            dropped.append(ln.dropped_attributes_count)
            flags.append(ln.flags)
    values = pa.StructArray.from_arrays(
        [pa.array(tids, pa.string()), pa.array(sids, pa.string()), pa.array(states, pa.string()),
         _map_array(attrs), pa.array(dropped, pa.int64()), pa.array(flags, pa.int64())],
        fields=list(LINK_TYPE),
    )
    return pa.ListArray.from_arrays(_list_offsets(n, [(i, len(ln)) for i, ln in per_span]), values)


# --- the conversion ------------------------------------------------------------


def _reject_reason(span, tid: bytes, sid: bytes, parent: bytes) -> str | None:
    if len(tid) != 16:
        return f"span {span.name!r}: trace_id must be 16 bytes, got {len(tid)}"
    if tid == _ZERO_TRACE:
        return f"span {span.name!r}: trace_id is all zero"
    if len(sid) != 8:
        return f"span {span.name!r}: span_id must be 8 bytes, got {len(sid)}"
    if sid == _ZERO_SPAN:
        return f"span {span.name!r}: span_id is all zero"
    if parent and len(parent) != 8:
        return f"span {span.name!r}: parent_span_id must be empty or 8 bytes, got {len(parent)}"
    return None


def protobuf_to_table(body: bytes) -> Conversion:
    """Convert an encoded ExportTraceServiceRequest; raises ``DecodeError`` for bad protobuf.

    By the C decoder if built (not with ``AGENT_SRE_PURE_PYTHON_DECODER=1``); else, or where it
    cannot answer exactly, parsed as the shadow request so span attributes are decoded column-wise
    (``otlp_attributes``); where that cannot answer exactly either, the plain way."""
    if _otlp_decode is not None and os.environ.get(PURE_PYTHON_DECODER_ENV) != "1":
        conv = _decoded_to_table(body)
        if conv is not None:
            return conv
    conv = request_to_table(ShadowExportTraceServiceRequest.FromString(body), columnar_attributes=True)
    if conv is None:
        conv = request_to_table(ExportTraceServiceRequest.FromString(body))
    return conv


# The buffers _otlp_decode.decode returns, in order (after n, the parent ids' and the values' null counts).
_DECODED = ("trace_id", "span_id", "parent_id", "parent_valid", "name_off", "name", "state_off", "state",
            "msg_off", "msg", "flags", "kind", "start", "end", "status_code", "dropped_a", "dropped_e",
            "dropped_l", "owner", "attr_off", "key_off", "key", "value_off", "value", "value_valid",
            "event_spans", "skeleton")


def _decoded_to_table(body: bytes) -> Conversion | None:
    """The C decoder's columns as the canonical table; None: the Python path must convert ``body``."""
    decoded = _otlp_decode.decode(body)
    if decoded is None:
        return None
    n, parent_nulls, value_nulls = decoded[:3]
    b = dict(zip(_DECODED, decoded[3:], strict=True))
    try:  # resources, scopes, events and links: few, and left to upb (its checks, its nesting limit)
        skeleton = ExportTraceServiceRequest.FromString(b["skeleton"])
    except DecodeError:
        return None  # the Python path raises protobuf's own error

    def strings(name: str, count: int = n, validity: bytes | None = None, nulls: int = 0) -> pa.Array:
        return pa.StringArray.from_buffers(count, pa.py_buffer(b[name + "_off"]), pa.py_buffer(b[name]),
                                           pa.py_buffer(validity) if nulls else None, nulls)

    def ints(name: str, dtype: str = "<i8") -> np.ndarray:
        return np.frombuffer(b[name], dtype=dtype)

    groups: list[tuple[dict, InstrumentationScope, dict]] = []
    skeleton_spans: list = []  # the spans with events or links, in span order
    for rs in skeleton.resource_spans:
        res_attrs = attributes_to_dict(rs.resource.attributes)
        for ss in rs.scope_spans:
            groups.append((res_attrs, ss.scope, attributes_to_dict(ss.scope.attributes)))
            skeleton_spans.extend(ss.spans)
    with_items = ints("event_spans", "<i4").tolist()
    span_events = [(i, sp.events) for i, sp in zip(with_items, skeleton_spans, strict=True) if sp.events]
    span_links = [(i, sp.links) for i, sp in zip(with_items, skeleton_spans, strict=True) if sp.links]

    n_attrs = len(b["key_off"]) // 4 - 1
    start, end = ints("start"), ints("end")
    i64 = pa.int64()
    columns: dict[str, pa.Array] = {
        "trace_id": _hex_strings(n, b["trace_id"], 16),
        "span_id": _hex_strings(n, b["span_id"], 8),
        "parent_span_id": _hex_strings(n, b["parent_id"], 8, b["parent_valid"], parent_nulls),
        "trace_state": strings("state"),
        "flags": _numbers(b["flags"], i64, n),
        "name": strings("name"),
        "kind": _enum_column(ints("kind", "<i4"), SPAN_KINDS, "kind"),
        "start_ns": _numbers(b["start"], i64, n),
        "end_ns": _numbers(b["end"], i64, n),
        "duration_ns": _numbers(end - start, i64, n),
        "status_code": _enum_column(ints("status_code", "<i4"), STATUS_CODES, "status"),
        "status_message": strings("msg"),
        "attributes": pa.MapArray.from_arrays(_numbers(b["attr_off"], pa.int32(), n + 1), strings("key", n_attrs),
                                              strings("value", n_attrs, b["value_valid"], value_nulls),
                                              type=STRING_MAP),
        "dropped_attributes_count": _numbers(b["dropped_a"], i64, n),
        "dropped_events_count": _numbers(b["dropped_e"], i64, n),
        "dropped_links_count": _numbers(b["dropped_l"], i64, n),
    }
    table = _table(columns, groups, ints("owner", "<i4"), span_events, span_links)
    return Conversion(table=table, rejected=0, message="")


def _double_str(v: float) -> str:
    return repr(v) if math.isfinite(v) else _double_text(v)


@overload
def request_to_table(request: ExportTraceServiceRequest,
                     columnar_attributes: Literal[False] = False) -> Conversion: ...
@overload
def request_to_table(request: ExportTraceServiceRequest, columnar_attributes: bool) -> Conversion | None: ...


def request_to_table(request: ExportTraceServiceRequest, columnar_attributes: bool = False) -> Conversion | None:
    """Convert one ExportTraceServiceRequest to a canonical table (agent columns still null).

    ``columnar_attributes``: ``request`` is a ShadowExportTraceServiceRequest; returns None
    when its attributes must be converted the plain way."""
    raw_attrs: list[bytes] | None = [] if columnar_attributes else None
    unchecked: list[bytes] = []  # the rejected spans' attribute bytes (shadow request)
    per_span: list[int] = []
    tids: list[bytes] = []
    sids: list[bytes] = []
    parents: list[bytes] = []
    has_parent: list[bool] = []
    states: list[str] = []
    flags: list[int] = []
    names: list[str] = []
    kinds: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    st_codes: list[int] = []
    st_msgs: list[str] = []
    dropped_a: list[int] = []
    dropped_e: list[int] = []
    dropped_l: list[int] = []
    attr_keys: list[str] = []
    attr_vals: list[str | None] = []
    attr_offsets: list[int] = [0]
    span_events: list[tuple[int, Sequence]] = []  # (span index, its events) for the spans that have some
    span_links: list[tuple[int, Sequence]] = []
    owner: list[int] = []  # (resource, scope) group index per span
    groups: list[tuple[dict, InstrumentationScope, dict]] = []
    reasons: list[str] = []
    rejected = 0

    for rs in request.resource_spans:
        res_attrs = attributes_to_dict(rs.resource.attributes)
        for ss in rs.scope_spans:
            g = len(groups)
            groups.append((res_attrs, ss.scope, attributes_to_dict(ss.scope.attributes)))
            for span in ss.spans:
                tid = span.trace_id
                sid = span.span_id
                parent = span.parent_span_id
                if len(tid) != 16 or len(sid) != 8 or (parent and len(parent) != 8) \
                        or tid == _ZERO_TRACE or sid == _ZERO_SPAN:
                    rejected += 1
                    if len(reasons) < _MAX_REJECT_REASONS:
                        reasons.append(_reject_reason(span, tid, sid, parent) or "invalid span")
                    if raw_attrs is not None:  # still parsed, as protobuf's parser would
                        unchecked.extend(span.attributes)  # type: ignore[arg-type]
                    continue
                tids.append(tid)
                sids.append(sid)
                if parent and parent != _ZERO_SPAN:  # an all-zero parent id means "no parent", as in the collector
                    parents.append(parent)
                    has_parent.append(True)
                else:
                    parents.append(_ZERO_SPAN)
                    has_parent.append(False)
                owner.append(g)
                states.append(span.trace_state)
                flags.append(span.flags)
                names.append(span.name)
                kinds.append(span.kind)
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                status = span.status
                st_codes.append(status.code)
                st_msgs.append(status.message)
                dropped_a.append(span.dropped_attributes_count)
                dropped_e.append(span.dropped_events_count)
                dropped_l.append(span.dropped_links_count)
                if raw_attrs is not None:  # the shadow request: KeyValue bytes, decoded column-wise below
                    a = span.attributes
                    # The shadow request (typed as the real one here) has `repeated bytes` attributes.
                    raw_attrs.extend(a)  # type: ignore[arg-type]
                    per_span.append(len(a))
                else:
                    d = {}
                    for kv in span.attributes:
                        # Most values are strings: one attribute read instead of ListFields.
                        v = kv.value
                        d[kv.key] = v.string_value or value_to_str(v)
                    attr_keys.extend(d)
                    attr_vals.extend(d.values())
                    attr_offsets.append(len(attr_keys))
                events = span.events
                links = span.links
                if events:
                    span_events.append((len(tids) - 1, events))
                if links:
                    span_links.append((len(tids) - 1, links))

    if raw_attrs is not None:
        decoded = decode_key_values(raw_attrs, per_span, value_to_str, _double_str, unchecked)
        if decoded is None:
            return None
        offsets = np.zeros(len(per_span) + 1, dtype=np.int32)
        np.cumsum(per_span, out=offsets[1:])
        attributes = pa.MapArray.from_arrays(pa.array(offsets), *decoded, type=STRING_MAP)
    else:
        attributes = pa.MapArray.from_arrays(pa.array(np.array(attr_offsets, dtype=np.int32)),
                                             pa.array(attr_keys, pa.string()), pa.array(attr_vals, pa.string()),
                                             type=STRING_MAP)
    start_u = np.array(starts, dtype=np.uint64)
    end_u = np.array(ends, dtype=np.uint64)
    bad_time = (start_u > _INT64_MAX) | (end_u > _INT64_MAX)
    start = start_u.astype(np.int64)
    end = end_u.astype(np.int64)
    columns: dict[str, pa.Array] = {
        "trace_id": _hex_column(b"".join(tids), 16),
        "span_id": _hex_column(b"".join(sids), 8),
        "parent_span_id": _hex_column(b"".join(parents), 8, np.array(has_parent, dtype=bool)),
        "trace_state": pa.array(states, pa.string()),
        "flags": pa.array(flags, pa.int64()),
        "name": pa.array(names, pa.string()),
        "kind": _enum_column(np.array(kinds, dtype=np.int32), SPAN_KINDS, "kind"),
        "start_ns": pa.array(start),
        "end_ns": pa.array(end),
        "duration_ns": pa.array(end - start),
        "status_code": _enum_column(np.array(st_codes, dtype=np.int32), STATUS_CODES, "status"),
        "status_message": pa.array(st_msgs, pa.string()),
        "attributes": attributes,
        "dropped_attributes_count": pa.array(dropped_a, pa.int64()),
        "dropped_events_count": pa.array(dropped_e, pa.int64()),
        "dropped_links_count": pa.array(dropped_l, pa.int64()),
    }
    table = _table(columns, groups, np.array(owner, dtype=np.int32), span_events, span_links)

    if bad_time.any():
        count = int(bad_time.sum())
        rejected += count
        reasons.insert(0, f"{count} span(s) with a start or end time beyond 2262-04-11 (int64 nanoseconds)")
        table = table.filter(pa.array(~bad_time))
    message = ""
    if rejected:
        message = f"rejected {rejected} invalid span(s): " + "; ".join(reasons[:_MAX_REJECT_REASONS])
    return Conversion(table=table, rejected=rejected, message=message)


def _table(columns: dict[str, pa.Array], groups: list[tuple[dict, InstrumentationScope, dict]],
           owner: np.ndarray, span_events: list[tuple[int, Sequence]],
           span_links: list[tuple[int, Sequence]]) -> pa.Table:
    """The span-level ``columns`` plus the per-group, event, link and (null) agent columns, as a table.

    ``groups``: (resource attributes, scope, scope attributes) per ScopeSpans; ``owner``: each span's."""
    n = len(owner)
    res_dicts = [g[0] for g in groups]
    scopes = [g[1] for g in groups]

    def strings(values: list) -> pa.Array:
        return pa.array(values, pa.string())

    env = [d.get("deployment.environment.name", d.get("deployment.environment")) for d in res_dicts]
    # One value per group, spread to the spans by one take of them all as a struct.
    per_group = pa.StructArray.from_arrays([
        strings([d.get("service.name") for d in res_dicts]), strings([d.get("service.version") for d in res_dicts]),
        strings(env), strings([s.name for s in scopes]), strings([s.version for s in scopes]),
        _map_array(res_dicts), _map_array([g[2] for g in groups])], _GROUP_COLUMNS)
    taken = pc.take(per_group, _numbers(np.ascontiguousarray(owner, dtype=np.int32), pa.int32(), n))
    columns = {
        **columns,
        **{name: taken.field(i) for i, name in enumerate(_GROUP_COLUMNS)},
        "events": _events_array(n, span_events) if span_events else _empty_lists(n, EVENT_TYPE),
        "links": _links_array(n, span_links) if span_links else _empty_lists(n, LINK_TYPE),
    }
    columns.update(zip(AGENT_COLUMNS, _agent_nulls(n), strict=True))
    return pa.Table.from_arrays([columns[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)


_GROUP_COLUMNS = ("service_name", "service_version", "environment", "scope_name", "scope_version",
                  "resource_attributes", "scope_attributes")

