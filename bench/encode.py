"""OTLP trace encoding for exporters: the column-wise Python encoder and the C encoder, in one run.

On the requests of bench/agent_spans.py (512 agent spans, ~12 attributes each), converted and normalised
as the pipeline does, with a computed cost on two spans in three (sent as ``agent_sre.cost_usd``), µs of
CPU per span (``time.process_time``; wall time alongside) for:

- Python: ``table_to_bytes`` with ``AGENT_SRE_PURE_PYTHON_ENCODER=1`` (Arrow kernels and numpy);
- C: ``table_to_bytes`` through ``_otlp_encode`` (the whole ExportTraceServiceRequest in one call), and
  ``span_fields`` alone by each path; and the C span fields with the request grouped by resource and scope
  in Python (``_python_request``: how table_to_bytes worked before the one C call, and its fallback);
- C ``table_to_bytes`` in 2 threads at once: the span loop releases the GIL;
- OTLP/JSON (``table_to_json``, the ``file`` exporter's line): span by span (Python dicts and
  ``json.dumps``, with ``AGENT_SRE_PURE_PYTHON_ENCODER=1``), column-wise (Arrow string kernels,
  pipeline/pdata/otlp_json_columns.py) and in C from the protobuf bytes (``_otlp_json.c``: with the C
  protobuf encoding included, and from bytes already encoded, as the fan-out hands them when a protobuf
  exporter encoded the batch first), on each 512-span table and on one table of all of them (the size of a
  batch the flusher hands on), with whether all give the same JSON document;
- gzip of each table's protobuf bytes at level 1 (``compression: gzip``, the default of the otlphttp
  exporter): Python's zlib and ISA-L (``isal``, what ``arrow_otlp.encoded`` uses), and the size ratio;
- the Arrow IPC stream the spool and the receiver workers write per batch (``ipc.encode_table``, on the one
  table, with the pipeline's system-malloc Arrow pool), against how it was written until the nineteenth
  stop (a growing ``BufferOutputStream``, then ``to_pybytes``).

Best (min) and median of ``--passes`` passes over ``--count`` tables.

    .venv/bin/python -m bench.encode [--passes 15] [--count 8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
from collections.abc import Callable

import pyarrow as pa

from agent_sre.pipeline.pdata import arrow_otlp
from agent_sre.pipeline.pdata.arrow_otlp import (
    PURE_PYTHON_ENCODER_ENV,
    _c_span_fields,
    span_fields,
    table_to_bytes,
    table_to_json,
)
from agent_sre.pipeline.pdata.ipc import encode_table
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from bench.agent_spans import request_bodies
from bench.timing import in_threads, passes

try:
    from agent_sre.pipeline.pdata import _otlp_encode, _otlp_json  # noqa: F401
except ImportError as exc:
    raise SystemExit("the C encoder is not built: `.venv/bin/pip install -e .` with gcc and Python's headers") from exc


def _tables(count: int) -> list[pa.Table]:
    out = []
    for body in request_bodies(seed=1, count=count):
        table = normalize(protobuf_to_table(body).table, load_conventions())
        cost = pa.array([0.0004 * (i % 7) if i % 3 else None for i in range(table.num_rows)], pa.float64())
        out.append(table.set_column(table.schema.get_field_index("cost_usd"), "cost_usd", cost))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--count", type=int, default=8, help="tables of 512 spans per pass")
    args = ap.parse_args()
    tables = _tables(args.count)
    spans = sum(t.num_rows for t in tables)
    assert all(_c_span_fields(t) is not None for t in tables), "the C encoder fell back"

    def each(encode: Callable[[pa.Table], object], pure: bool = False) -> Callable[[], None]:
        def run() -> None:
            if pure:
                os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
            try:
                for t in tables:  # each result dropped at once
                    encode(t)
            finally:
                os.environ.pop(PURE_PYTHON_ENCODER_ENV, None)
        return run

    whole = pa.concat_tables(tables)  # the JSON rows again on one table of every span (a flusher's batch)

    def one(encode: Callable[[pa.Table], object], pure: bool = False) -> Callable[[], None]:
        def run() -> None:
            if pure:
                os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
            try:
                encode(whole)
            finally:
                os.environ.pop(PURE_PYTHON_ENCODER_ENV, None)
        return run

    def column_wise(table: pa.Table) -> bytes:
        arrow_otlp._otlp_json = None  # the C JSON writer off: otlp_json_columns
        try:
            return table_to_json(table)
        finally:
            arrow_otlp._otlp_json = _otlp_json

    encoded_bytes = {id(t): table_to_bytes(t) for t in [*tables, whole]}

    from isal import igzip

    def zlib_gzip(table: pa.Table) -> bytes:
        return gzip.compress(encoded_bytes[id(table)], 1)

    def isal_gzip(table: pa.Table) -> bytes:
        return igzip.compress(encoded_bytes[id(table)], 1)

    def growing_stream(table: pa.Table) -> bytes:  # encode_table until the nineteenth stop
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write(table)
        return sink.getvalue().to_pybytes()

    def system_pool(fn: Callable[[], None]) -> Callable[[], None]:  # the pipeline's processes' Arrow pool
        def run() -> None:
            pool = pa.default_memory_pool()
            pa.set_memory_pool(pa.system_memory_pool())
            try:
                fn()
            finally:
                pa.set_memory_pool(pool)
        return run

    def from_bytes(table: pa.Table) -> bytes:
        return _otlp_json.traces_json(encoded_bytes[id(table)])

    os.environ.pop(PURE_PYTHON_ENCODER_ENV, None)
    each(table_to_bytes, pure=True)()  # warm up imports and caches
    each(table_to_bytes)()
    same = all(each_bytes == table_to_bytes(t) for t, each_bytes in zip(tables, _pure_bytes(tables), strict=True))
    rows = {
        "Python table_to_bytes": passes(each(table_to_bytes, pure=True), args.passes, spans),
        "C table_to_bytes": passes(each(table_to_bytes), args.passes, spans),
        "C span_fields, Python groups": passes(each(arrow_otlp._python_request), args.passes, spans),
        "Python span_fields": passes(each(span_fields, pure=True), args.passes, spans),
        "C span_fields": passes(each(span_fields), args.passes, spans),
        "C table_to_bytes, 2 threads": passes(in_threads(each(table_to_bytes), 2), args.passes, 2 * spans),
        "span-by-span table_to_json": passes(each(table_to_json, pure=True), args.passes, spans),
        "column-wise table_to_json": passes(each(column_wise), args.passes, spans),
        "C table_to_json": passes(each(table_to_json), args.passes, spans),
        "C JSON from the bytes": passes(each(from_bytes), args.passes, spans),
        "span-by-span, one table": passes(one(table_to_json, pure=True), args.passes, spans),
        "column-wise, one table": passes(one(column_wise), args.passes, spans),
        "C, one table": passes(one(table_to_json), args.passes, spans),
        "C from the bytes, one table": passes(one(from_bytes), args.passes, spans),
        "gzip 1 (zlib) of the bytes": passes(each(zlib_gzip), args.passes, spans),
        "gzip 1 (ISA-L) of the bytes": passes(each(isal_gzip), args.passes, spans),
        "IPC (spool), one table": passes(system_pool(one(encode_table)), args.passes, spans),
        "IPC, growing + bytes (before)": passes(system_pool(one(growing_stream)), args.passes, spans),
    }
    os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
    slow_json = [json.loads(table_to_json(t)) for t in tables]
    del os.environ[PURE_PYTHON_ENCODER_ENV]
    same_json = slow_json == [json.loads(column_wise(t)) for t in tables] == [json.loads(table_to_json(t)) for t in tables]
    print(f"{spans} spans per pass ({args.count} tables), {args.passes} passes; µs per span, min / median;"
          f" same bytes by both paths: {same}; same JSON document by the three JSON paths: {same_json}")
    print(f"{'':28} {'CPU min':>8} {'CPU med':>8} {'wall min':>9} {'wall med':>9}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:28} {min(cpu):8.3f} {statistics.median(cpu):8.3f} {min(wall):9.3f} {statistics.median(wall):9.3f}")
    py, c = min(rows["Python table_to_bytes"][0]), min(rows["C table_to_bytes"][0])
    print(f"Python / C table_to_bytes (CPU): {py / c:.1f}x")
    slow, fast = min(rows["span-by-span table_to_json"][0]), min(rows["column-wise table_to_json"][0])
    raw = sum(len(encoded_bytes[id(t)]) for t in tables)
    print(f"gzip ratio: zlib {raw / sum(len(zlib_gzip(t)) for t in tables):.2f}, "
          f"ISA-L {raw / sum(len(isal_gzip(t)) for t in tables):.2f}")
    c_json = min(rows["C table_to_json"][0])
    print(f"span-by-span / column-wise / C table_to_json (CPU): {slow / fast:.1f}x / 1.0x / {fast / c_json:.2f}x less")


def _pure_bytes(tables: list[pa.Table]) -> list[bytes]:
    os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
    try:
        return [table_to_bytes(t) for t in tables]
    finally:
        del os.environ[PURE_PYTHON_ENCODER_ENV]


if __name__ == "__main__":
    main()
