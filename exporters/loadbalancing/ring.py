"""Consistent hashing, column-wise: a routing key per span, a 32-bit hash per key, a ring of virtual nodes.

The hash must be the same in every process of the fleet (two sidecars must send a trace to the same
gateway), so it is not Python's ``hash``: FNV-1a over the key's UTF-8 bytes, finished with murmur3's
fmix32 so that keys differing in one byte (``gw-1:4317#7`` / ``#8``) spread over the whole ring.  It
runs in numpy over the Arrow string buffers, one loop step per *byte position* (32 for a trace id),
never one per span.

A backend owns ``virtual_nodes`` positions, ``hash("{endpoint}#{i}")``; a key goes to the owner of the
first position at or after its hash (wrapping).  Taking a backend out moves only its arcs, each to
the next position's owner: about 1/N of the keys move, the others stay where they were.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.pdata.maps import map_value

_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)
_SEPARATOR = "\x1f"  # between the values of several routing attributes


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint32 hash of every string (nulls hash as the empty string).

    Fixed-length keys (trace ids: 32 hex digits) are hashed as one zero-copy (n, 32) byte matrix;
    other keys (agent, service names: few distinct values) through their dictionary, so each
    distinct value is hashed once."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    values = pc.fill_null(values.cast(pa.large_string()), "")
    if len(values) == 0:
        return np.empty(0, np.uint32)
    offsets, data = _buffers(values)
    lengths = np.diff(offsets)
    if lengths.min() == lengths.max():
        width = int(lengths[0])
        matrix = data[offsets[0]:offsets[-1]].reshape(len(values), width)
        return _fnv_columns(matrix.T, len(values))
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary
    if len(distinct) < len(values) // 2:
        return _hash_ragged(distinct)[encoded.indices.to_numpy(zero_copy_only=False)]
    return _hash_ragged(values)


def _buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[values.offset:values.offset + len(values) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets, data


def _fnv_columns(columns: np.ndarray, n: int) -> np.ndarray:
    """FNV-1a over the byte columns of n keys (one numpy step per byte position), then fmix32."""
    h = np.full(n, _FNV_OFFSET, np.uint32)
    for column in columns:
        h = (h ^ column) * _FNV_PRIME
    return _fmix32(h)


def _hash_ragged(values: pa.Array) -> np.ndarray:
    offsets, data = _buffers(values)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(values), _FNV_OFFSET, np.uint32)
    for j in range(int(lengths.max(initial=0))):  # one step per byte position, over all keys at once
        live = np.flatnonzero(lengths > j)
        h[live] = (h[live] ^ data[starts[live] + j]) * _FNV_PRIME
    return _fmix32(h)


def routing_keys(batch: pa.Table, routing_key: str, attributes: list[str]) -> pa.Array | pa.ChunkedArray:
    """The string each span is routed by.  ``attributes``: a canonical column (agent_id) or a span /
    resource attribute key; a span with none of them is routed by its trace id (as the Collector)."""
    if routing_key == "traceID":
        return batch.column("trace_id")
    if routing_key == "service":
        return batch.column("service_name")
    parts = [_attribute(batch, name) for name in attributes]
    present = parts[0].is_valid()
    for p in parts[1:]:
        present = pc.or_(present, p.is_valid())
    joined = pc.binary_join_element_wise(*[pc.fill_null(p, "") for p in parts], _SEPARATOR) if len(parts) > 1 \
        else parts[0]
    return pc.if_else(present, joined, batch.column("trace_id"))


def _attribute(batch: pa.Table, name: str) -> pa.ChunkedArray:
    if name in batch.schema.names and batch.schema.field(name).type == pa.string():
        return batch.column(name)
    found = map_value(batch.column("attributes"), name)
    if "resource_attributes" in batch.schema.names:
        found = pc.coalesce(found, map_value(batch.column("resource_attributes"), name))
    return pa.chunked_array([found])


class Ring:
    """An immutable ring over a sorted list of endpoints; ``owners`` maps hashes to endpoint indices."""

    def __init__(self, endpoints: list[str], virtual_nodes: int):
        self.endpoints = sorted(set(endpoints))
        labels = pa.array([f"{e}#{i}" for e in self.endpoints for i in range(virtual_nodes)], pa.string())
        positions = hash_strings(labels)
        owner = np.repeat(np.arange(len(self.endpoints)), virtual_nodes)
        order = np.argsort(positions, kind="stable")
        self._positions, self._owner = positions[order], owner[order]

    def __len__(self) -> int:
        return len(self.endpoints)

    def owners(self, hashes: np.ndarray) -> np.ndarray:
        """Index into ``endpoints`` of the backend owning each hash."""
        slot = np.searchsorted(self._positions, hashes, side="left")
        return self._owner[slot % len(self._positions)]

    def split(self, batch: pa.Table, keys: pa.Array | pa.ChunkedArray) -> list[tuple[str, pa.Table]]:
        """(endpoint, its rows) per backend, one ``take`` each (rows keep their order)."""
        return [(self.endpoints[i], batch.take(rows))
                for i, rows in partition(self.owners(hash_strings(keys)), len(self.endpoints))]


def partition(owner: np.ndarray, parts: int) -> list[tuple[int, np.ndarray]]:
    """(part, the indices of its rows, in order) for each of ``parts`` that has rows: one stable argsort."""
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(parts + 1))
    return [(i, order[bounds[i]:bounds[i + 1]]) for i in range(parts) if bounds[i + 1] > bounds[i]]
