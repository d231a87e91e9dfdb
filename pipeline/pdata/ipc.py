"""Arrow tables as self-contained IPC streams (schema and batches): how batches cross a process
boundary (receiver workers → pipeline) and lie on disk (the spool, the exporters' persistent queue)."""

from __future__ import annotations

import pyarrow as pa


def encode_table(table: pa.Table | pa.RecordBatch, prefix: bytes = b"") -> pa.Buffer:
    """``prefix`` then the table as one IPC stream, written once into a buffer of exactly that size (any
    bytes-like consumer takes it: files, sockets, crc32).  The stream is sized first by writing it to a
    ``MockOutputStream`` (metadata only, no data copied): a growing ``BufferOutputStream`` copied the data
    on every doubling and ``to_pybytes`` once more, each copy into freshly faulted pages — ~27 % of the
    pipeline process's page faults at max rate (perf, nineteenth stop)."""
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, table.schema) as writer:
        writer.write(table)
    buf = pa.allocate_buffer(len(prefix) + mock.size())
    out = pa.FixedSizeBufferWriter(buf)
    out.write(prefix)
    with pa.ipc.new_stream(out, table.schema) as writer:
        writer.write(table)
    return buf


def decode_table(payload: bytes | memoryview | pa.Buffer) -> pa.Table:
    """Zero-copy over ``payload`` (a memory-mapped region stays mapped while the table lives)."""
    return pa.ipc.open_stream(payload if isinstance(payload, pa.Buffer) else pa.py_buffer(payload)).read_all()
