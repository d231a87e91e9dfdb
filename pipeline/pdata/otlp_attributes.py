"""Span attributes decoded column-wise from their protobuf bytes.

Why: reading ``span.attributes`` through the protobuf Python API creates two
Python objects per attribute (the KeyValue and its AnyValue), which measured as
~60% of the OTLP->Arrow conversion.  So the converter parses requests with a
*shadow* of the OTLP message classes, built from opentelemetry-proto's own
descriptors with one change: ``Span.attributes`` is declared ``repeated bytes``
(same field number, same wire type), so upb hands over each KeyValue's encoded
bytes.  This module decodes all of a request's KeyValues at once with numpy:

    KeyValue = 0x0A <len> key  [0x12 <len> AnyValue]
    AnyValue = 0x0A <len> utf8 (string) | 0x10 <varint> (bool) | 0x18 <varint> (int)
             | 0x21 <8 bytes> (double) | anything else (arrays, kvlists, bytes)

The common shapes above are decoded vectorised; a record that departs from
them (field order, unknown fields, arrays, kvlists, bytes) is decoded by the
real protobuf classes, at the depth it has in a request: decoded on its own, a
KeyValue would be allowed four more levels of nesting than protobuf allows it
inside its request (found by tests/receivers/otlp/test_fuzz.py).  The attributes
of spans the converter rejects are checked the same way, so a request is
refused as undecodable exactly when protobuf's own parser refuses it.  Anything
a vectorised answer could get wrong (invalid UTF-8, a key repeated within a
span) returns None, and the caller converts the request the plain way, so
results are always those of ``value_to_str`` (a property test checks both paths
give the same rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["ShadowExportTraceServiceRequest", "decode_key_values"]

_KEY_TAG, _VALUE_TAG = 0x0A, 0x12
_REPEATED_1_TAG, _REPEATED_2_TAG, _SPAN_ATTRIBUTES_TAG = b"\x0a", b"\x12", b"\x4a"  # fields 1, 2 and 9
# Nesting protobuf allows below a span attribute: its limit (100) less the 4 messages above it.  Each
# level takes at least 2 bytes (tag, length), so a shorter KeyValue cannot reach the limit.
_SHALLOW_BYTES = 2 * (100 - 4)
_STRING, _BOOL, _INT, _DOUBLE = 0x0A, 0x10, 0x18, 0x21


def _shadow_request_class():
    """ExportTraceServiceRequest whose Span.attributes is ``repeated bytes``, in a private pool."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):  # dependency order
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        if module is trace_pb2:
            span = next(m for m in proto.message_type if m.name == "Span")
            field = next(f for f in span.field if f.name == "attributes")
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            field.ClearField("type_name")
        pool.Add(proto)
    name = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


ShadowExportTraceServiceRequest = _shadow_request_class()


def _varint(buf: np.ndarray, pos: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a varint at each ``pos``: (value as uint64, position after it, ok)."""
    value = np.zeros(len(pos), dtype=np.uint64)
    done = np.zeros(len(pos), dtype=bool)
    end = pos.copy()
    last = len(buf) - 1
    for k in range(max_bytes):
        at = pos + k
        b = buf[np.minimum(at, last)].astype(np.uint64)
        live = ~done & (at <= last)
        value |= np.where(live, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        stop = live & (b < 0x80)
        end[stop] = at[stop] + 1
        done |= stop
        if done.all():
            break
    return value, end, done


_GATHER_MAX = 1 << 16  # longer strings are copied as slices, not gathered byte by byte


def _strings(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Gather byte ranges of ``buf`` into a string array (UTF-8 is checked by the caller).

    Short strings in one vectorised gather (a byte index per byte); long ones as slices, because the
    index costs 8 bytes per byte (measured: one 15 MiB value took 120 MiB of index to convert)."""
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    long_ = lengths > _GATHER_MAX
    if not long_.any():
        idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buf[idx]))
    out = np.empty(offsets[-1], dtype=np.uint8)
    short = ~long_
    s_len = lengths[short]
    s_dst = np.repeat(offsets[:-1][short], s_len)
    if len(s_dst):
        s_ofs = np.zeros(len(s_len) + 1, dtype=np.int64)
        np.cumsum(s_len, out=s_ofs[1:])
        within = np.arange(s_ofs[-1], dtype=np.int64) - np.repeat(s_ofs[:-1], s_len)
        out[s_dst + within] = buf[np.repeat(starts[short], s_len) + within]
    for i in np.flatnonzero(long_):  # few by definition: a request holds at most size / _GATHER_MAX of them
        out[offsets[i]:offsets[i + 1]] = buf[starts[i]:starts[i] + lengths[i]]
    return pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(out))


def decode_key_values(raw: list[bytes], per_span: list[int],
                      render_any: Callable[[common_pb2.AnyValue], str | None],
                      render_double: Callable[[float], str],
                      unchecked: Sequence[bytes] = ()) -> tuple[pa.Array, pa.Array] | None:
    """(keys, values) as string arrays for every attribute, in order; None: convert the plain way.

    ``raw`` holds each KeyValue's bytes and ``per_span`` how many belong to each span.  Values
    are rendered as the plain path renders them: ``render_double`` for doubles, ``render_any``
    (given a decoded AnyValue) for the shapes not handled here.  ``unchecked``: KeyValues not
    needed (a rejected span's) but which must be valid protobuf.  Raises ``DecodeError`` as
    protobuf's parser of the whole request would."""
    n = len(raw)
    if n == 0:
        _as_span_attributes(unchecked)
        return pa.array([], pa.string()), pa.array([], pa.string())
    lengths = np.fromiter(map(len, raw), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(raw) + b"\x00", dtype=np.uint8)  # a pad byte keeps gathers in range
    last = len(buf) - 1
    start = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=start[1:])
    end = start + lengths

    # KeyValue: the key, then (optionally) the value, nothing else.
    klen, kstart, ok = _varint(buf, start + 1, 3)
    klen = klen.astype(np.int64)
    ok &= (buf[start] == _KEY_TAG) & (kstart + klen <= end)
    q = np.minimum(kstart + klen, end)
    is_null = ok & (q == end)  # no value field: an empty AnyValue
    vlen, astart, good = _varint(buf, q + 1, 3)
    has_value = ok & (q < end) & (buf[np.minimum(q, last)] == _VALUE_TAG) & good
    has_value &= astart + vlen.astype(np.int64) == end
    is_null |= has_value & (astart == end)  # an empty AnyValue
    tag = np.where(has_value & (astart < end), buf[np.minimum(astart, last)], 0)

    kinds: list[tuple[np.ndarray, Callable[[np.ndarray], pa.Array]]] = []
    fast = is_null.copy()
    idx = np.flatnonzero(tag == _STRING)
    if len(idx):
        slen, sstart, good = _varint(buf, astart[idx] + 1, 5)
        idx = idx[good & (sstart + slen.astype(np.int64) == end[idx])]
        kinds.append((idx, lambda i: _strings(buf, *_string_at(buf, astart[i] + 1))))
    idx_int = np.flatnonzero(tag == _INT)
    if len(idx_int):
        ival, iend, good = _varint(buf, astart[idx_int] + 1, 10)
        keep = good & (iend == end[idx_int])
        values_int = ival[keep].view(np.int64)

        def ints(i: np.ndarray, v: np.ndarray = values_int) -> pa.Array:
            return pa.array(v).cast(pa.large_string())

        kinds.append((idx_int[keep], ints))
    idx_bool = np.flatnonzero((tag == _BOOL) & (astart + 2 == end) & (buf[np.minimum(astart + 1, last)] <= 1))
    if len(idx_bool):
        kinds.append((idx_bool, lambda i: pa.array(np.where(buf[astart[i] + 1] == 1, "true", "false"),
                                                   pa.large_string())))
    idx_dbl = np.flatnonzero((tag == _DOUBLE) & (astart + 9 == end))
    if len(idx_dbl):
        kinds.append((idx_dbl, lambda i: pa.array([render_double(x) for x in _doubles(buf, astart[i] + 1)],
                                                  pa.large_string())))
    for i, _ in kinds:
        fast[i] = True
    slow = np.flatnonzero(~fast)

    # Every record's value (and, for slow ones, key) lands in one concatenation; `where` orders it.
    where = np.empty(n, dtype=np.int64)
    parts: list[pa.Array] = []
    base = 0
    null_idx = np.flatnonzero(is_null)
    for i, build in [*kinds, (null_idx, lambda i: pa.nulls(len(i), pa.large_string()))]:
        if len(i):
            parts.append(build(i))
            where[i] = np.arange(base, base + len(i))
            base += len(i)
    keys = _strings(buf, np.where(fast, kstart, 0), np.where(fast, klen, 0))
    _as_span_attributes(unchecked)
    if len(slow):
        # A record too short to nest past the limit is decoded alone, which is faster.
        decoded = [common_pb2.KeyValue.FromString(raw[i]) if len(raw[i]) < _SHALLOW_BYTES
                   else _as_span_attributes([raw[i]])[0] for i in slow]
        parts.append(pa.array([render_any(kv.value) for kv in decoded], pa.large_string()))
        where[slow] = np.arange(base, base + len(slow))
        key_where = np.arange(n, dtype=np.int64)
        key_where[slow] = n + np.arange(len(slow))
        keys = pa.concat_arrays([keys, pa.array([kv.key for kv in decoded], pa.large_string())]).take(
            pa.array(key_where))
    values = pa.concat_arrays(parts).take(pa.array(where))
    try:
        keys.validate(full=True)
        values.validate(full=True)
    except pa.ArrowInvalid:
        return None  # invalid UTF-8: the real parser reports it
    if _repeated_keys(keys, per_span):
        return None
    return keys.cast(pa.string()), values.cast(pa.string())


def _as_span_attributes(records: Sequence[bytes]) -> Sequence[common_pb2.KeyValue]:
    """KeyValue records decoded as the attributes of a span in a request: protobuf's checks and its
    nesting limit, counted from the request (request > resource_spans > scope_spans > span)."""
    if not records:
        return []
    span = b"".join(_SPAN_ATTRIBUTES_TAG + _varint_bytes(len(r)) + r for r in records)
    scope = _REPEATED_2_TAG + _varint_bytes(len(span)) + span  # ScopeSpans.spans
    resource = _REPEATED_2_TAG + _varint_bytes(len(scope)) + scope  # ResourceSpans.scope_spans
    request = _REPEATED_1_TAG + _varint_bytes(len(resource)) + resource  # resource_spans
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
    return parsed.resource_spans[0].scope_spans[0].spans[0].attributes


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string_at(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the length-prefixed bytes at ``pos`` (already checked to be well formed)."""
    length, after, _ = _varint(buf, pos, 5)
    return after, length.astype(np.int64)


def _doubles(buf: np.ndarray, at: np.ndarray) -> list[float]:
    raw = buf[(at[:, None] + np.arange(8)).ravel()]
    return np.frombuffer(raw.tobytes(), dtype="<f8").tolist()


def _repeated_keys(keys: pa.Array, per_span: list[int]) -> bool:
    """True if any span has a key twice (the plain path keeps the last value; leave that to it)."""
    ids = keys.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    span = np.repeat(np.arange(len(per_span), dtype=np.int64), per_span)
    pairs = np.sort(span * (int(ids.max()) + 1) + ids)
    return bool((pairs[1:] == pairs[:-1]).any())
