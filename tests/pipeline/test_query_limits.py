"""Ad hoc SQL's limits outside a running pipeline, and what `agent-sre query` loads to start."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import psutil

from agent_sre.pipeline.storage.sandbox import QueryLimits, file_query_limits, restrict_file_access, run_query


def test_a_result_over_the_byte_limit_is_cut_to_its_first_whole_rows():
    con = duckdb.connect()
    restrict_file_access(con)
    result = run_query(con, "SELECT range AS i, repeat('x', 100) AS pad FROM range(5000)",
                       QueryLimits(max_rows=10_000, max_result_bytes=50_000))
    assert result.truncated_by == "max_result_bytes"
    assert 0 < len(result.rows) < 5000
    assert [row[0] for row in result.rows] == list(range(len(result.rows)))


def test_a_query_over_a_stopped_store_may_grow_the_process_by_half_the_memory_available():
    before = psutil.virtual_memory().available // 2
    limits = file_query_limits(7)
    after = psutil.virtual_memory().available // 2
    assert (limits.max_rows, limits.timeout_s, limits.max_result_bytes) == (7, 60.0, QueryLimits.max_result_bytes)
    low = max(QueryLimits.max_memory_bytes, int(min(before, after) * 0.9))
    high = max(QueryLimits.max_memory_bytes, int(max(before, after) * 1.1))
    assert low <= limits.max_memory_bytes <= high


def test_the_command_line_starts_without_the_http_client_or_tls():
    loaded = subprocess.run([sys.executable, "-c", "import sys, agent_sre.pipeline.cli.main; "
                             "print(sorted(m for m in ('ssl', 'urllib.request', 'hmac', 'numpy', 'duckdb') "
                             "if m in sys.modules))"], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_a_query_over_a_file_runs_without_arrow_compute(tmp_path):
    """``agent-sre query --db`` loads the sandbox, the store and its rollups' module: none of them may import
    pyarrow.compute at the top (~36 ms of the command's start-up, issue #12's <= 300 ms)."""
    store = tmp_path / "s.duckdb"
    duckdb.connect(str(store)).close()
    code = ("import sys; from agent_sre.pipeline.cli.main import main; sys.argv = ['agent-sre', 'query', '--db', "
            f"{str(store)!r}, 'SELECT 42']; rc = main(); print('compute' if 'pyarrow.compute' in sys.modules else rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "0", done.stdout  # answered (42 printed) without loading compute
    assert "42" in done.stdout


def test_query_with_db_reads_that_file_without_a_config(tmp_path):
    store = tmp_path / "elsewhere.duckdb"
    with duckdb.connect(str(store)) as con:  # any DuckDB file: a store's own tables are not needed to query it
        con.execute("CREATE TABLE spans AS SELECT * FROM range(0) t(span_id)")
    done = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "query", "--db", str(store), "--format",
                           "csv", "SELECT count(*) AS spans, 41 + 1 AS answer FROM spans"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["spans,answer", "0,42"]


def test_a_query_beyond_the_stores_pool_is_told_what_fits(tmp_path):
    """An exact quantile over millions of spans does not fit a small pool: 422, naming the setting and
    what fits instead (approx_quantile answers the same question within the pool)."""
    from agent_sre.pipeline.storage.sandbox import QueryError
    from agent_sre.pipeline.storage.store import SpanStore

    store = SpanStore(tmp_path / "s.duckdb", memory_limit="8MB", query_memory="0MB")  # no more for the query
    try:
        store.write([("INSERT INTO span_rows (trace_id, span_id, duration_ns) SELECT 't' || (i // 10), 's' || i, "
                      "hash(i) % 1000000000 FROM range(1500000) r(i)", [])])
        limits = QueryLimits(max_rows=10, timeout_s=60)
        try:
            store.query("SELECT quantile_cont(duration_ns, 0.99) FROM spans", limits=limits)
        except QueryError as exc:
            assert exc.status == 422 and "query_memory_limit" in str(exc) and "approx_quantile" in str(exc), exc
        else:
            raise AssertionError("an exact quantile over 1.5M spans fitted an 8 MB pool")
        (p99,) = store.query("SELECT approx_quantile(duration_ns, 0.99) FROM spans", limits=limits).rows[0]
        assert 9e8 < p99 < 1e9
    finally:
        store.close()
