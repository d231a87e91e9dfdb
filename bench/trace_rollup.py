"""The trace rollup's upsert at its steady size: the store's statement (``trace_rollups`` keyed by the trace
id as a 128-bit integer) side by side with the same statement keyed by the 32-character hex string (the
key before the fourteenth stop), in one DuckDB file of the store's settings (1 thread).

Each table is first filled with ``--prefill`` traces (at 40k spans/s the rollup holds every trace of the
last minute or more: ~200k), then both take the same 16,384-span inserts of agent spans
(bench/agent_spans.py, normalized and priced, in the store's layout; fresh trace ids per insert), alternating: the
upsert with the task budgets' ``RETURNING``, then COMMIT.  Printed: CPU µs per span of each (median over
the inserts).  bench/loop_cpu.py's 10-second
rounds never reach this size, so its figure for the statement is that of a small table.

    .venv/bin/python bench/trace_rollup.py [--prefill 200000] [--inserts 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize  # noqa: E402
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table  # noqa: E402
from agent_sre.pipeline.storage.rollups import (  # noqa: E402
    SPAN_ROLLUP_SQL,
    TASK_SPEND_RETURNING,
    TRACE_ID_HEX,
    TRACE_ID_KEY,
    TRACE_ROLLUPS_DDL,
)
from agent_sre.pipeline.storage.store import to_storage  # noqa: E402
from agent_sre.processors.cost.factory import Pricer, priced  # noqa: E402
from bench.agent_spans import request_bodies  # noqa: E402

SPANS = 16_384
_KEY = TRACE_ID_KEY.format("trace_id")
# The string-keyed form: the same statement with the hex string as the key (no cast, no HAVING).
STRING_DDL = TRACE_ROLLUPS_DDL.replace("trace_rollups", "trace_rollups_str").replace("trace_id UHUGEINT",
                                                                                     "trace_id VARCHAR")
STRING_SQL = ((SPAN_ROLLUP_SQL + TASK_SPEND_RETURNING).replace(f" HAVING {_KEY} IS NOT NULL", "")
              .replace(_KEY, "trace_id").replace(TRACE_ID_HEX.format("trace_id"), "trace_id")
              .replace("trace_rollups", "trace_rollups_str"))
INTEGER_SQL = SPAN_ROLLUP_SQL + TASK_SPEND_RETURNING


def inserts(count: int) -> list[pa.Table]:
    """``count`` inserts of SPANS agent spans in the store's layout, each with trace ids of its own."""
    conventions, tables, seed = load_conventions(), [], 0
    base = time.time_ns() - 60 * 10**9
    while sum(t.num_rows for t in tables) < SPANS:
        tables += [protobuf_to_table(b).table for b in request_bodies(seed, count=8, base_ns=base + seed * 10**7)]
        seed += 1
    one = to_storage(priced(normalize(pa.concat_tables(tables).slice(0, SPANS), conventions), Pricer({})))
    con = duckdb.connect()
    con.register("one", one)
    return [con.sql(f"SELECT * REPLACE (md5(trace_id || '{k}') AS trace_id) FROM one").to_arrow_table()
            for k in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefill", type=int, default=200_000, help="traces in each table before the inserts")
    ap.add_argument("--inserts", type=int, default=24, help="16k-span inserts into each table")
    args = ap.parse_args()
    work = inserts(args.inserts)
    with tempfile.TemporaryDirectory(prefix="agent-sre-bench-") as d:
        con = duckdb.connect(str(Path(d) / "rollup.duckdb"), config={"threads": 1, "memory_limit": "512MB"})
        con.execute(TRACE_ROLLUPS_DDL)
        con.execute(STRING_DDL)
        row = "'did:web:agent-1', 'v1', 0.1, 0, NULL, 1, 0.1, 1, 0.1, 1, 'did:web:agent-1'"
        con.execute(f"INSERT INTO trace_rollups SELECT ('0x' || md5(i::VARCHAR))::UHUGEINT, {row} "
                    f"FROM range({args.prefill}) t(i)")
        con.execute(f"INSERT INTO trace_rollups_str SELECT md5(i::VARCHAR), {row} FROM range({args.prefill}) t(i)")
        con.execute("CHECKPOINT")
        cpu: dict[str, list[float]] = {"string key": [], "integer key": []}
        returned: dict[str, int] = {"string key": 0, "integer key": 0}
        for i, table in enumerate(work):
            con.register("_in", table)
            con.execute("CREATE OR REPLACE TEMP VIEW _counted AS SELECT * FROM _in")
            for label, sql in (("string key", STRING_SQL), ("integer key", INTEGER_SQL))[::1 if i % 2 else -1]:
                started = time.thread_time()
                con.execute("BEGIN TRANSACTION")
                returned[label] += len([r for r in con.execute(sql, [i]).fetchall() if r[2]])
                con.execute("COMMIT")
                cpu[label].append((time.thread_time() - started) / table.num_rows * 1e6)
        print(f"trace rollup upsert + RETURNING + COMMIT, {args.inserts} inserts of {SPANS:,} spans into "
              f"{args.prefill:,} traces")
        for label, values in cpu.items():
            print(f"  {label:12s} median {statistics.median(values):5.2f} µs/span  (min {min(values):.2f}, "
                  f"max {max(values):.2f}; {returned[label]:,} charged traces returned)")
        if returned["string key"] != returned["integer key"]:
            raise SystemExit("the two forms returned different traces")


if __name__ == "__main__":
    main()
