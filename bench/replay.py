"""Replay benchmarks: ``trace show`` and ``diff`` of one trace, and a set diff, in a store of 10M spans.

    python -m bench.replay [--dir /tmp/agent-sre-bench] [--spans 10000000] [--samples 20] [--threads 2]
                           [--explain] [--layout-experiments]

Targets (issue #13): ``trace show`` (load + tree + render) and ``diff`` of one trace <= 100 ms each
(median and p99 over ``--samples`` random traces), a set diff over 100k traces <= 2 s.  The store is
bench/store10m.py's (built once and cached); it is read as ``agent-sre`` reads a stopped pipeline's
store: ``open_read_only``, DuckDB's own thread count unless ``--threads`` (the running pipeline's
store uses 1 thread: ``--threads 1`` measures that case).

``--explain`` prints DuckDB's EXPLAIN ANALYZE of the one-trace lookup and of the set diff's
statement.  ``--layout-experiments`` answers "what would the store need": on copies of the store
(removed after), (1) an ART index on ``span_rows(trace_id)`` and (2) a ``trace_locator`` table (one
row per trace and insert: its first and last start time, appended by the insert transaction, no
index), each with the one-trace figures and the cost of a 16k-span insert at the store's defaults.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/replay.py` as well as `-m`

from bench.store10m import DEFAULT_DIR, build, describe  # noqa: E402

SET_BASELINE = "agent_version = '1.4.0'"
SET_CANDIDATE = "agent_version = '1.5.0'"
SET_TASK = "triage"
LOCATOR_KEY = "('0x' || trace_id)::UHUGEINT"  # the 128-bit trace id as a number


def _pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``: with 20 samples, p99 is the slowest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - started) * 1000, result


def _clocked(fn, *args) -> tuple[float, float, object]:
    """(wall ms, CPU ms of the whole process: DuckDB's threads too, result): on a shared machine the CPU
    time is the work done, the wall time also the wait for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000, result


def sample_traces(read, n: int, seed: int = 13) -> list[str]:
    """``n`` random trace ids (of traces with a root span), spread over the whole store."""
    total = read("SELECT count(*) FROM span_rows", [])[0][0]
    rnd = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        offset = rnd.randrange(total)
        out += [r[0] for r in read("SELECT trace_id FROM span_rows LIMIT 1 OFFSET ?", [offset])]
    return out


def bench_one_trace(read, ids: list[str]) -> dict:
    from agent_sre.processors.replay.diff import diff_traces
    from agent_sre.processors.replay.traces import load_trace, render_trace

    def show(trace_id: str) -> str:
        doc = load_trace(read, trace_id)
        assert doc is not None, trace_id
        return render_trace(doc, color=False)

    show_ms, diff_ms, show_cpu, diff_cpu, spans = [], [], [], [], []
    for i, trace_id in enumerate(ids):
        ms, cpu, _ = _clocked(show, trace_id)
        show_ms.append(ms)
        show_cpu.append(cpu)
        ms, cpu, doc = _clocked(diff_traces, read, trace_id, ids[(i + 1) % len(ids)])
        diff_ms.append(ms)
        diff_cpu.append(cpu)
        spans.append(doc["totals"]["spans"]["a"])  # type: ignore[index]
    return {"show_ms": show_ms, "diff_ms": diff_ms, "show_cpu": show_cpu, "diff_cpu": diff_cpu,
            "spans_per_trace": statistics.mean(spans)}


def bench_sets(read, repeats: int) -> dict:
    from agent_sre.processors.replay.diff import diff_sets

    times, cpus, doc = [], [], None
    for _ in range(repeats):
        ms, cpu, doc = _clocked(diff_sets, read, SET_BASELINE, SET_CANDIDATE, SET_TASK)
        times.append(ms)
        cpus.append(cpu)
    assert isinstance(doc, dict)
    return {"ms": times, "cpu": cpus, "traces": doc["baseline"]["traces"] + doc["candidate"]["traces"], "doc": doc}


def explain(con, ids: list[str]) -> None:
    from agent_sre.processors.replay.diff import _sets_sql

    def plan(sql: str, params: list) -> str:
        rows = con.execute("EXPLAIN ANALYZE " + sql, params).fetchall()
        return rows[0][1]

    print("\n--- EXPLAIN ANALYZE: where one trace's spans are (traces.py's first step) ---")
    print(plan("SELECT min(start_ns), max(start_ns), count(*) FROM spans WHERE trace_id = ?", [ids[0]]))
    print("\n--- EXPLAIN ANALYZE: the set diff's statement ---")
    print(plan(_sets_sql(SET_BASELINE, SET_CANDIDATE, True), [SET_TASK]))


def _copy(path: Path, name: str) -> Path:
    copy = path.with_name(name)
    for stale in (copy, copy.with_name(copy.name + ".wal")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(path, copy)
    return copy


def _insert_batch(path: Path, batch) -> str:
    """One 16k-span insert and commit as the pipeline's store makes it (its default buffer pool and
    thread count): the time, or DuckDB's refusal."""
    import duckdb

    from agent_sre.pipeline.storage.store import StoreSettings

    con = duckdb.connect(str(path), config={"memory_limit": StoreSettings.memory_limit,
                                            "threads": StoreSettings.threads})
    try:
        con.register("_in", batch)
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO span_rows SELECT * FROM _in")
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'trace_locator'").fetchall()[0][0]:
            con.execute(f"INSERT INTO trace_locator SELECT {LOCATOR_KEY}, min(start_ns), max(start_ns) FROM _in "
                        "GROUP BY trace_id")
        con.execute("COMMIT")
        return f"{(time.perf_counter() - started) * 1000:.0f} ms"
    except duckdb.Error as exc:
        return "FAILED: " + str(exc).splitlines()[0][:110]
    finally:
        con.close()


def _new_spans(path: Path, rows: int = 16_384):
    """``rows`` stored spans under new trace ids (10 spans a trace), as one insert batch."""
    import os

    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    con = duckdb.connect(str(path), read_only=True)
    try:
        batch = con.sql(f"SELECT * FROM span_rows LIMIT {rows} OFFSET 5000000").to_arrow_table()
    finally:
        con.close()
    ids = pa.array([os.urandom(16).hex() for _ in range(rows // 10 + 1)])
    return batch.set_column(batch.schema.get_field_index("trace_id"), "trace_id",
                            pc.take(ids, pa.array([i // 10 for i in range(rows)])))


def layout_experiments(path: Path, ids: list[str], threads: int | None) -> None:
    """What the store's layout would need for one-trace reads (on copies of the store; removed after)."""
    import duckdb


    batch = _new_spans(path)
    plain = _copy(path, "store10m-exp-plain.duckdb")
    print(f"\n16k-span insert + commit at the store's defaults, as it is: {_insert_batch(plain, batch)}")
    plain.unlink()

    # 1. An ART index on span_rows(trace_id).
    copy = _copy(path, "store10m-exp-index.duckdb")
    started = time.monotonic()
    con = duckdb.connect(str(copy))
    con.execute("CREATE INDEX span_rows_trace ON span_rows (trace_id)")
    con.execute("CHECKPOINT")
    con.close()
    built = time.monotonic() - started
    con = _open(copy, threads)
    read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
    bench_one_trace(read, ids[:3])  # warm-up
    idx = bench_one_trace(read, ids)
    con.close()
    print(f"\n1. ART index on span_rows(trace_id): built in {built:.0f}s, "
          f"+{(copy.stat().st_size - path.stat().st_size) / 2**20:,.0f} MiB on disk")
    print(_line("trace show (load + tree + render)", idx["show_ms"], 100, idx["show_cpu"]))
    print(_line("diff of one trace with another", idx["diff_ms"], 100, idx["diff_cpu"]))
    print(f"  16k-span insert + commit at the store's defaults: {_insert_batch(copy, batch)}")
    copy.unlink()

    # 2. A trace locator: (trace key, first and last start) per trace and insert, appended in time order by the
    #    insert transaction; a lookup scans it (10x fewer rows than spans, and a 16-byte integer key: the ids as
    #    text are unique there, so they do not compress to a dictionary; measured: 55 ms as text, 2.6 ms as
    #    UHUGEINT), then reads the trace's rows from the row groups of its time (zone maps on start_ns).
    copy = _copy(path, "store10m-exp-locator.duckdb")
    started = time.monotonic()
    con = duckdb.connect(str(copy))
    con.execute(f"CREATE TABLE trace_locator AS SELECT {LOCATOR_KEY} AS trace_key, min(start_ns) AS first_ns, "
                "max(start_ns) AS last_ns FROM span_rows GROUP BY trace_id ORDER BY first_ns")
    con.execute("CHECKPOINT")
    con.close()
    built = time.monotonic() - started
    con = _open(copy, threads)
    scan_ms, locate_ms, rows_ms = [], [], []
    for trace_id in ids:
        ms, found = _timed(lambda t: con.execute("SELECT min(first_ns), max(last_ns) FROM trace_locator "
                                                 "WHERE trace_key = ('0x' || ?)::UHUGEINT", [t]).fetchall(), trace_id)
        locate_ms.append(ms)
        lo, hi = found[0]  # type: ignore[index]
        ms, _ = _timed(lambda params: con.execute(
            "SELECT * FROM spans WHERE trace_id = ? AND start_ns BETWEEN ? AND ?", params).fetchall(),
            [trace_id, lo, hi])
        rows_ms.append(ms)
        ms, _ = _timed(lambda t: con.execute(
            "SELECT min(start_ns), max(start_ns), count(*) FROM spans WHERE trace_id = ?", [t]).fetchall(), trace_id)
        scan_ms.append(ms)
    con.close()
    print(f"\n2. trace locator table (trace id as UHUGEINT, first/last start_ns; no index): built in {built:.0f}s, "
          f"+{(copy.stat().st_size - path.stat().st_size) / 2**20:,.0f} MiB on disk")
    print(_line("where a trace is: scan of spans (now)", scan_ms, 100))
    print(_line("where a trace is: locator scan", locate_ms, 100))
    print(_line("then its rows by start_ns zone maps", rows_ms, 100))
    print(f"  16k-span insert + locator rows + commit at the store's defaults: {_insert_batch(copy, batch)}")
    copy.unlink()


def _open(path: Path, threads: int | None):
    """The store read-only as the CLI opens it (``open_read_only``), or, with ``threads``, a read-only
    connection with that many DuckDB threads (the CLI's configuration is locked once it is open)."""
    import duckdb

    from agent_sre.pipeline.storage.store import open_read_only

    if threads:
        return duckdb.connect(str(path), read_only=True, config={"threads": int(threads)})
    return open_read_only(path)


def _line(name: str, values: list[float], target_ms: float, cpu: list[float] | None = None) -> str:
    med, p99 = statistics.median(values), _pct(values, 0.99)
    verdict = "ok" if p99 <= target_ms else "MISSED"
    cpu_text = f"{statistics.median(cpu):>10.1f}" if cpu else f"{'':>10}"
    return f"  {name:<34}{med:>10.1f}{p99:>10.1f}{cpu_text}{target_ms:>10.0f}   {verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--spans", type=int, default=10_000_000)
    ap.add_argument("--samples", type=int, default=20, help="random traces for trace show and diff (default 20)")
    ap.add_argument("--set-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="DuckDB threads of the reading connection (default: DuckDB's)")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the slow statements")
    ap.add_argument("--layout-experiments", action="store_true",
                    help="also time one-trace reads on copies of the store with an index or a trace locator")
    args = ap.parse_args()


    started = time.monotonic()
    path = build(args.dir, args.spans)
    d = describe(path)
    print(f"store {d['path']}: {d['spans']:,} spans, {d['traces']:,} traces, "
          f"{d['bytes'] / 2**20:,.0f} MiB ({d['bytes_per_span']} bytes/span; built in {d['build_s']} s, "
          f"ready in {time.monotonic() - started:.1f} s)")
    con = _open(path, args.threads)
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
    ids = sample_traces(read, args.samples)
    first_ms, _ = _timed(bench_one_trace, read, ids[:1])  # the first read after opening: cold caches
    one = bench_one_trace(read, ids)
    sets = bench_sets(read, args.set_repeats)
    print(f"\nDuckDB threads {threads}; {args.samples} random traces (~{one['spans_per_trace']:.1f} spans each); "
          f"first show+diff after opening {first_ms:.0f} ms")
    print(f"  {'':<34}{'median':>10}{'p99':>10}{'CPU med':>10}{'target':>10}   (ms; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(_line("trace show (load + tree + render)", one["show_ms"], 100, one["show_cpu"]))
    print(_line("diff of one trace with another", one["diff_ms"], 100, one["diff_cpu"]))
    print(_line(f"set diff over {sets['traces']:,} traces", sets["ms"], 2000, sets["cpu"]))
    s = sets["doc"]["tests"]["success_rate"]
    print(f"  (set diff: success {sets['doc']['baseline']['success_rate']:.2%} → "
          f"{sets['doc']['candidate']['success_rate']:.2%}, p = {s['p_value']:.2g})")
    if args.explain:
        explain(con, ids)
    con.close()
    if args.layout_experiments:
        layout_experiments(path, ids, args.threads)


if __name__ == "__main__":
    main()
