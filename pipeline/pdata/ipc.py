"""Arrow tables as self-contained IPC streams (schema and batches): how batches cross a process
boundary (receiver workers → pipeline) and lie on disk (the spool, the exporters' persistent queue)."""

from __future__ import annotations

import pyarrow as pa


def encode_table(table: pa.Table | pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def decode_table(payload: bytes | memoryview | pa.Buffer) -> pa.Table:
    """Zero-copy over ``payload`` (a memory-mapped region stays mapped while the table lives)."""
    return pa.ipc.open_stream(payload if isinstance(payload, pa.Buffer) else pa.py_buffer(payload)).read_all()
