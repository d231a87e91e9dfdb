"""Arrow columns as ClickHouse Native-format column bytes, built with numpy (no Python per row), and
the insert that sends them over the native protocol on clickhouse-driver's connection.

Why: clickhouse-driver encodes an insert value by value in Python (the Nullable null maps, every
String's length prefix, a dict per Map row); measured on the bench batches (1,024 agent spans, 18.16
compat schema) that was ~25 µs/span in the driver plus ~25 µs/span turning Arrow into its lists, with
the GIL held, so it also slowed the pipeline's receivers.  Encoded here from the Arrow buffers, merging
the queued batches and their ids included, it is ~4-5 µs/span of CPU (bench/fleet.py: convert µs/span).

The wire layout (ClickHouse ``src/DataTypes/Serializations``):
  Int64, Float64, UInt8   the values, little endian
  String                  per value: varint length, bytes
  Nullable(T)             one byte per row (1 = NULL), then T's data with NULLs as T's default
  Array(T)                UInt64 end offset per row, then T's data for all elements
  Map(K, V)               as Array(Tuple(K, V)): offsets, then K's data, then V's data
  LowCardinality(T)       a state prefix (UInt64 1: shared dictionaries with additional keys) before
                          the column's data, then: UInt64 flags | key width, UInt64 dictionary size,
                          the dictionary (for Nullable T: slot 0 is NULL), UInt64 rows, the keys
The prefixes of a column's nested LowCardinality parts come before its data (so a Map's key prefix
precedes the offsets).  A type outside this list raises ``UnsupportedType``; the exporter then
sends that insert through the driver's own (slower) encoding.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_U64 = struct.Struct("<Q")
_FIXED: dict[str, np.dtype] = {"Int64": np.dtype("<i8"), "Float64": np.dtype("<f8"), "UInt8": np.dtype("u1"),
          "UInt64": np.dtype("<u8"), "Int32": np.dtype("<i4"), "UInt32": np.dtype("<u4")}
_LC_FLAGS = (1 << 9) | (1 << 10)  # HasAdditionalKeys | NeedUpdateDictionary, as clickhouse-driver sends


class UnsupportedType(ValueError):
    """A ClickHouse column type this encoder does not write."""


def _args(ch_type: str, name: str) -> list[str]:
    """``Map(A, B(C, D))`` -> ``['A', 'B(C, D)']`` (top-level comma split)."""
    inner, parts, depth, start = ch_type[len(name) + 1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    parts.append(inner[start:].strip())
    return parts


def _varint_prefixes(lengths: np.ndarray) -> pa.Array:
    """Each length as its LEB128 varint, one binary value per length."""
    n = len(lengths)
    sizes = np.ones(n, np.int64)
    for shift in (7, 14, 21, 28, 35):
        sizes += lengths >= (1 << shift)
    if (sizes == 1).all():  # the common case: every value shorter than 128 bytes
        data = lengths.astype(np.uint8)
    else:
        starts = np.cumsum(sizes) - sizes
        data = np.empty(int(sizes.sum()), np.uint8)
        for k in range(int(sizes.max())):
            more = sizes > k
            byte = (lengths[more] >> np.uint64(7 * k)) & np.uint64(0x7F)
            data[starts[more] + k] = byte | np.where(sizes[more] > k + 1, np.uint64(0x80), np.uint64(0))
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def strings(arr: pa.Array) -> bytes:
    """A String column: varint length + bytes per value (NULL as ''), joined by Arrow in one pass."""
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    n = len(arr)
    if n == 0:
        return b""
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.uint64)
    joined = pc.binary_join_element_wise(_varint_prefixes(lengths), arr.cast(pa.binary()), b"")
    offsets = np.frombuffer(joined.buffers()[1], np.int32)[joined.offset: joined.offset + n + 1]
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def _fixed(arr: pa.Array, dtype: np.dtype) -> bytes:
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.uint8())
    return pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(dtype, copy=False).tobytes()


def _low_cardinality(arr: pa.Array, inner: str) -> bytes:
    nullable = inner.startswith("Nullable(")
    if not nullable and arr.null_count:
        arr = pc.fill_null(arr, "")
    if len(arr) == 0:
        return b""  # no rows: no dictionary either (as the driver does)
    encoded = pc.dictionary_encode(arr)
    keys = encoded.indices.to_numpy(zero_copy_only=False)
    dictionary = encoded.dictionary
    if nullable:  # slot 0 of the dictionary stands for NULL
        keys = np.where(pc.is_null(encoded.indices).to_numpy(zero_copy_only=False), 0,
                        np.nan_to_num(keys, nan=0) + 1)
        dictionary = pa.concat_arrays([pa.array([""], dictionary.type), dictionary])
    size = len(dictionary)
    width = 0 if size <= 0xFF else 1 if size <= 0xFFFF else 2
    return b"".join((_U64.pack(_LC_FLAGS | width), _U64.pack(size), strings(dictionary), _U64.pack(len(arr)),
                     keys.astype(("u1", "<u2", "<u4")[width]).tobytes()))


def _prefix(ch_type: str) -> bytes:
    """The state prefixes of a column's LowCardinality parts, written before its data."""
    if ch_type.startswith("LowCardinality("):
        return _U64.pack(1)
    for name in ("Array", "Map", "Nullable"):
        if ch_type.startswith(name + "("):
            return b"".join(_prefix(t) for t in _args(ch_type, name))
    return b""


def _list_parts(arr: pa.Array) -> tuple[bytes, pa.Array]:
    """An Arrow list or map: the UInt64 end offsets, and the flattened elements (NULL lists empty)."""
    if pa.types.is_map(arr.type):  # the same layout as a list of its entries (the compute kernels take lists)
        arr = pa.ListArray.from_arrays(arr.offsets, arr.values, mask=arr.is_null() if arr.null_count else None)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    return np.cumsum(lengths, dtype=np.uint64).tobytes(), pc.list_flatten(arr)


def _data(arr: pa.Array, ch_type: str) -> bytes:
    if ch_type == "String":
        return strings(arr)
    if ch_type in _FIXED:
        return _fixed(arr, _FIXED[ch_type])
    if ch_type.startswith("Nullable("):
        nulls = pc.is_null(arr).to_numpy(zero_copy_only=False).astype(np.uint8).tobytes()
        return nulls + _data(arr, _args(ch_type, "Nullable")[0])
    if ch_type.startswith("LowCardinality("):
        inner = _args(ch_type, "LowCardinality")[0]
        if inner not in ("String", "Nullable(String)"):
            raise UnsupportedType(ch_type)
        return _low_cardinality(arr, inner)
    if ch_type.startswith("Array(") and (pa.types.is_list(arr.type) or pa.types.is_map(arr.type)):
        offsets, elements = _list_parts(arr)
        return offsets + _data(elements, _args(ch_type, "Array")[0])
    if ch_type.startswith("Map(") and pa.types.is_map(arr.type):
        key_type, value_type = _args(ch_type, "Map")
        offsets, entries = _list_parts(arr)
        return offsets + _data(entries.field("key"), key_type) + _data(entries.field("value"), value_type)
    raise UnsupportedType(f"{ch_type} (from Arrow {arr.type})")


def encode_column(arr: pa.Array | pa.ChunkedArray, ch_type: str) -> bytes:
    """One column's Native bytes: its state prefix, then its data."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return _prefix(ch_type) + _data(arr, ch_type)


def insert(client, query: str, columns: dict[str, pa.Array], settings: dict | None = None) -> int:
    """``INSERT … VALUES`` of one block built by ``encode_column``, over the driver's connection.

    The exchange is the driver's own ``process_insert_query``/``send_data`` with our block bytes in
    place of its per-value column writers: query, the server's sample block (names and types, in
    the query's column order), one Data packet, an empty Data packet, end of stream.  Its
    connection handling (connect, settings, disconnect on error, compression) is the driver's."""
    from clickhouse_driver import defines
    from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
    from clickhouse_driver.protocol import ClientPacketTypes
    from clickhouse_driver.varint import write_varint
    from clickhouse_driver.writer import write_binary_str, write_binary_uint8

    rows = len(next(iter(columns.values())))
    with client.disconnect_on_error(query, settings):
        conn = client.connection
        conn.send_query(query)
        conn.send_external_tables(None)
        sample = client.receive_sample_block()
        wanted = [name for name, _ in sample.columns_with_types]
        if wanted != list(columns):
            raise UnsupportedType(f"the server wants columns {wanted}, the exporter has {list(columns)}")
        parts = [encode_column(columns[name], ch_type) for name, ch_type in sample.columns_with_types]
        revision = conn.server_info.used_revision
        write_varint(ClientPacketTypes.DATA, conn.fout)
        write_binary_str("", conn.fout)  # table name: '' for the insert's own data
        out = conn.block_out.fout  # the compressing buffer when compression is on
        if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
            BlockInfo().write(out)
        write_varint(len(parts), out)
        write_varint(rows, out)
        for (name, ch_type), data in zip(sample.columns_with_types, parts, strict=True):
            write_binary_str(name, out)
            write_binary_str(ch_type, out)
            if revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
                write_binary_uint8(0, out)  # no sparse/custom serialization
            out.write(data)
        conn.block_out.finalize()
        client.receive_profile_events()
        conn.send_data(ColumnOrientedBlock())  # the empty block: end of data
        client.receive_profile_events()
        client.receive_end_of_insert_query()
    return rows
