"""What a CHECKPOINT costs after inserts of a given transaction size (the store's row groups of 8,192 rows).

The store's loader inserts the spool in transactions of whole spooled batches, up to ``flush_spans`` rows and
a byte budget.  Each transaction leaves a partly filled row group behind (its rows modulo 8,192), and DuckDB's
checkpoint merges consecutive row groups that fit in fewer ones — reading, decompressing and compressing them
again, spilling what does not fit its buffer pool to the temporary directory.  This bench inserts the same
spans (bench/agent_spans.py, normalised, fresh span ids per transaction) through a real ``SpanStore`` (no
spool, no rollups) in transactions of each ``--sizes`` row count, up to ``--rows`` rows, then times one
``CHECKPOINT`` and reports the temporary files' peak size while it ran (sampled every 10 ms), one size after
another in one run.

    .venv/bin/python -m bench.checkpoint [--sizes 8192,12288,12400,16384,5000] [--rows 400000] [--memory 32MiB]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from agent_sre.pipeline.storage.store import ROW_GROUP_SIZE, SpanStore
from bench.agent_spans import request_bodies


def _temp_peak(directory: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        size = sum(p.stat().st_size for p in directory.glob("*") if p.is_file()) if directory.is_dir() else 0
        peak[0] = max(peak[0], size)
        stop.wait(0.01)


def run(size: int, rows: int, memory: str, spans: pa.Table, vacuum_tasks: int | None = None
        ) -> tuple[float, float, int, int, float]:
    """(insert s, checkpoint s, temp peak bytes, row groups, bytes per span on disk) for ``rows`` rows in
    transactions of ``size``; ``vacuum_tasks``: DuckDB's ``max_vacuum_tasks`` (None: its default)."""
    directory = Path(tempfile.mkdtemp(prefix="agent-sre-checkpoint-"))
    try:
        store = SpanStore(directory / "spans.duckdb", memory_limit=memory, checkpoint_threshold="1GB",
                          reattach_rows=0)
        if vacuum_tasks is not None:
            store._con.execute(f"SET max_vacuum_tasks = {int(vacuum_tasks)}").fetchall()
        started, done, k = time.monotonic(), 0, 0
        while done < rows:
            start = (k * size) % max(1, spans.num_rows - size)
            chunk = spans.slice(start, min(size, spans.num_rows))
            while chunk.num_rows < size:  # sizes beyond the sample: repeated
                chunk = pa.concat_tables([chunk, spans.slice(0, min(size - chunk.num_rows, spans.num_rows))])
            ids = pc.binary_join_element_wise(chunk.column("span_id"), pa.scalar(f"{k:08x}"), "")
            store._insert([chunk.set_column(chunk.schema.get_field_index("span_id"), "span_id", ids)])
            done += size
            k += 1
        inserted = time.monotonic() - started
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_temp_peak, args=(Path(f"{store.path}.tmp"), stop, peak), daemon=True)
        sampler.start()
        started = time.monotonic()
        store.checkpoint()
        checkpointed = time.monotonic() - started
        stop.set()
        sampler.join()
        groups = store._con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('span_rows')"
                                    ).fetchall()[0][0]
        store.close()
        return inserted, checkpointed, peak[0], groups, (directory / "spans.duckdb").stat().st_size / done
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="8192,12288,12400,16384,5000", help="rows per transaction, comma-separated")
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--memory", default="32MiB", help="DuckDB memory_limit (the store's pool at a 256 MiB pipeline)")
    ap.add_argument("--vacuum-tasks", default="", help="DuckDB max_vacuum_tasks values to run each size with, "
                    "comma-separated (default: DuckDB's own, 100)")
    args = ap.parse_args()
    conventions = load_conventions()
    spans = pa.concat_tables([normalize(protobuf_to_table(b).table, conventions) for b in request_bodies(5, count=32)])
    print(f"{args.rows:,} rows per size, row groups of {ROW_GROUP_SIZE:,}, memory_limit {args.memory}")
    print(f"  {'rows per transaction':>20s} {'rows mod 8192':>14s} {'vacuum tasks':>13s} {'insert s':>9s} "
          f"{'CHECKPOINT s':>13s} {'temp peak MiB':>14s} {'row groups':>11s} {'B/span':>7s}")
    tasks = [int(v) for v in args.vacuum_tasks.split(",")] if args.vacuum_tasks else [None]
    for size in (int(s) for s in args.sizes.split(",")):
        for vacuum in tasks:
            inserted, checkpointed, peak, groups, per_span = run(size, args.rows, args.memory, spans, vacuum)
            print(f"  {size:>20,} {size % ROW_GROUP_SIZE:>14,} {'default' if vacuum is None else vacuum:>13} "
                  f"{inserted:>9.2f} {checkpointed:>13.2f} {peak / 2**20:>14.0f} {groups:>11,} {per_span:>7.1f}")


if __name__ == "__main__":
    main()
