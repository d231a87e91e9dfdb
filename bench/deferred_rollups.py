"""The SRE loop's rollups in every insert against once every few inserts: what deferring them saves (measured
before the store did it; it now does while its loader is behind: docs/architecture.md).

An insert transaction that rolls up runs, besides the INSERT, the SLI rollup, the trace rollup, the
per-minute agent and cost rollups and the charges query over the batch (``_in``, the Arrow table being
inserted): five statements, each with a fixed cost of planning in DuckDB (docs/benchmarks.md,
twenty-seventh stop) and each scanning Arrow.  The alternative: the same statements once every ``--every``
inserts, over the rows those inserts stored (``span_rows`` read by rowid here, DuckDB's own storage; the
store reads them by ``received_ns``), in the transaction that commits the rollups' position with them.

Both forms run in one DuckDB file each of the store's kind (1 thread; ``trace_rollups`` prefilled with
``--prefill`` traces, its steady size at ~40k spans/s), on the same 16,384-span inserts of agent spans
(bench/agent_spans.py, normalized and priced, in the store's layout; fresh trace ids per insert), the two
forms alternating.  Printed: CPU µs per span of the rollup statements alone (not the INSERT, not COMMIT), and
whether both forms left the same rollup tables (counts equal, sums within 1e-9).

    .venv/bin/python bench/deferred_rollups.py [--every 8] [--groups 3] [--prefill 200000]
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

from agent_sre.pipeline.storage import rollups as R  # noqa: E402
from agent_sre.processors.sli.factory import SliConfig, builtin_slis  # noqa: E402
from bench.trace_rollup import inserts  # noqa: E402

SLI_MINUTES_DDL = ("CREATE TABLE sli_minutes (minute BIGINT NOT NULL, sli VARCHAR NOT NULL, agent_id VARCHAR NOT NULL, "
                   "agent_version VARCHAR NOT NULL, good BIGINT NOT NULL, total BIGINT NOT NULL, "
                   "PRIMARY KEY (minute, sli, agent_id, agent_version))")
_TABLES = {  # what is compared, and how: the integer columns exactly, the others within 1e-9
    "sli_minutes": "SELECT minute, sli, agent_id, agent_version, good, total FROM sli_minutes ORDER BY ALL",
    "agent_minutes": "SELECT minute, agent_id, spans, errors, llm_calls, tokens, tasks, task_duration_ns FROM agent_minutes "
                     "ORDER BY ALL",
    "cost_minutes": "SELECT minute, agent_id, model, tenant, spans, round(cost_usd, 9) FROM cost_minutes ORDER BY ALL",
    "trace_rollups": "SELECT trace_id, agent_id, delegations, task_end_ns, task_calls, round(cost_usd, 9), "
                     "round(task_usd, 9) FROM trace_rollups ORDER BY ALL",
}


def _statements() -> list[str]:
    """The loop's statements of an insert transaction (the built-in SLIs, task tracking on), as the store
    runs them on a batch without evaluator scores or tenants (rollups.without)."""
    statements = [*R.rollup_sql(builtin_slis(SliConfig()), True), R.AGENT_ROLLUP_SQL, R.COST_ROLLUP_SQL, R.CHARGES_SQL]
    absent = R.lookups(statements)
    return [R.without(sql, absent) for sql in statements]


def _store(path: Path, sample, prefill: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), config={"threads": 1, "memory_limit": "512MB"})
    con.register("_in", sample)
    con.execute("CREATE TABLE span_rows AS SELECT *, 0::BIGINT AS received_ns FROM _in LIMIT 0")
    con.unregister("_in")
    for ddl in (SLI_MINUTES_DDL, R.TRACE_ROLLUPS_DDL, R.AGENT_MINUTES_DDL, R.COST_MINUTES_DDL):
        con.execute(ddl)
    row = "'did:web:agent-1', 'v1', 0.1, 0, NULL, 1, 0.1, 1, 0.1, 1, 'did:web:agent-1'"
    con.execute(f"INSERT INTO trace_rollups SELECT ('0x' || md5(i::VARCHAR))::UHUGEINT, {row} FROM range({prefill}) t(i)")
    con.execute("CHECKPOINT")
    return con


def _run(con: duckdb.DuckDBPyConnection, statements: list[str], source: str) -> float:
    """CPU seconds of the statements over ``source``; the trace rollup takes the insert time (1 here)."""
    started = time.thread_time()
    for sql in statements:
        sql = sql.replace("FROM _counted", f"FROM {source}")
        con.execute(sql, [1] if "?" in sql else []).fetchall()
    return time.thread_time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=8, help="inserts per deferred rollup")
    ap.add_argument("--groups", type=int, default=3, help="rounds of --every inserts")
    ap.add_argument("--prefill", type=int, default=200_000, help="traces in trace_rollups before the inserts")
    args = ap.parse_args()
    work = inserts(args.every * args.groups)
    statements = _statements()
    spans = sum(t.num_rows for t in work)
    with tempfile.TemporaryDirectory(prefix="agent-sre-bench-") as d:
        cons = {form: _store(Path(d) / f"{form}.duckdb", work[0].slice(0, 1), args.prefill)
                for form in ("every insert", "deferred")}
        cpu: dict[str, list[float]] = {form: [] for form in cons}
        for g in range(args.groups):
            batch = work[g * args.every:(g + 1) * args.every]
            for form in (("every insert", "deferred") if g % 2 else ("deferred", "every insert")):
                con = cons[form]
                start = con.execute("SELECT count(*) FROM span_rows").fetchall()[0][0]
                seconds = 0.0
                for table in batch:
                    con.register("_in", table)
                    con.execute("BEGIN TRANSACTION")
                    con.execute("INSERT INTO span_rows SELECT *, 1::BIGINT AS received_ns FROM _in")
                    if form == "every insert":
                        seconds += _run(con, statements, "_in")
                    con.execute("COMMIT")
                    con.unregister("_in")
                if form == "deferred":
                    con.execute("BEGIN TRANSACTION")
                    con.execute(f"CREATE OR REPLACE TEMP VIEW _since AS SELECT * FROM span_rows WHERE rowid >= {start}")
                    seconds += _run(con, statements, "_since")
                    con.execute("COMMIT")
                cpu[form].append(seconds / sum(t.num_rows for t in batch) * 1e6)
        same = {name: cons["every insert"].execute(sql).fetchall() == cons["deferred"].execute(sql).fetchall()
                for name, sql in _TABLES.items()}
        for con in cons.values():
            con.close()
    print(f"the loop's rollups (SLI, trace, agent, cost, charges) over {len(work)} inserts of {work[0].num_rows:,} spans "
          f"({spans:,}), trace_rollups prefilled with {args.prefill:,} traces; CPU µs per span of the statements:")
    for form, values in cpu.items():
        label = form if form == "every insert" else f"once per {args.every} inserts, over span_rows"
        print(f"  {label:40s} median {statistics.median(values):5.2f}  (min {min(values):.2f}, max {max(values):.2f})")
    print("  same rollup tables: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in same.items()))
    if not all(same.values()):
        raise SystemExit("the two forms left different rollups")


if __name__ == "__main__":
    main()
