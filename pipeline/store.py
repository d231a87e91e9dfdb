"""The DuckDB span store: the one place that writes spans to DuckDB.

One database file has one writer (this process).  ``append`` inserts a whole
Arrow batch in one statement, which is one transaction and one WAL commit: the
batch processor in front of it makes commits large (group commit).  When
``append`` returns, the rows survive ``kill -9``.

Ad hoc SQL (``query``) is read-only by statement type, row- and time-limited,
and the whole database instance has external access switched off, with only the
store's own directory allowed: no SQL can read or write files elsewhere.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa

from agent_sre.pipeline.schema import SPAN_SCHEMA

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
_NS_PER_DAY = 86_400 * 1_000_000_000


class QueryError(Exception):
    """Bad SQL, a statement that is not read-only, or a limit exceeded; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list]
    truncated: bool
    elapsed_ms: float

    def to_json(self) -> dict:
        """JSON-ready: integral decimals (sum() of BIGINT) as ints, other decimals as floats."""
        return {"columns": self.columns, "types": self.types, "rows": self.rows,
                "row_count": len(self.rows), "truncated": self.truncated,
                "elapsed_ms": round(self.elapsed_ms, 3)}


def _plain(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise QueryError("no SQL statement given")
    for st in statements:
        kind = str(st.type).rpartition(".")[2]
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryError(f"only read-only statements are allowed (SELECT, EXPLAIN); got {kind}", 403)


def run_query(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float) -> QueryResult:
    """Run read-only SQL on ``con`` with a row limit and a time limit (interrupting DuckDB)."""
    check_read_only(sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    started = time.perf_counter()
    timer.start()
    try:
        reader = con.sql(sql).to_arrow_reader(min(max_rows + 1, 100_000))
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows > max_rows:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException as exc:
        raise QueryError(f"query exceeded the time limit of {timeout_s:g}s", 408) from exc
    except duckdb.Error as exc:
        if time.perf_counter() - started >= timeout_s:
            raise QueryError(f"query exceeded the time limit of {timeout_s:g}s", 408) from exc
        raise QueryError(str(exc)) from exc
    finally:
        timer.cancel()
    truncated = table.num_rows > max_rows
    table = table.slice(0, max_rows)
    return QueryResult(
        columns=table.column_names,
        types=[str(t) for t in table.schema.types],
        rows=[[_plain(v) for v in r.values()] for r in table.to_pylist()],
        truncated=truncated,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


# Spans are stored in the table `span_rows`, where the attribute maps are lists of (key, value)
# structs, and read through the view `spans`, which presents them as MAP(VARCHAR, VARCHAR).
# Measured here: DuckDB ingests Arrow maps at about half the rate of the same data as lists of
# structs (it validates map keys row by row), and ingest is the hot path; the view pays that cost
# only for the rows a query reads.  Keys are unique per span already (the converter dedups them).
MAP_COLUMNS = ("attributes", "resource_attributes", "scope_attributes")
_ENTRY = pa.struct([("key", pa.string()), ("value", pa.string())])
STORAGE_SCHEMA = pa.schema([
    pa.field(f.name, pa.list_(_ENTRY)) if f.name in MAP_COLUMNS else f for f in SPAN_SCHEMA])


def to_storage(batch: pa.Table) -> pa.Table:
    """Canonical batch -> storage layout: map columns become list<struct<key, value>> (zero copy)."""
    columns = []
    for name in batch.column_names:
        col = batch.column(name)
        if name in MAP_COLUMNS:
            chunks = [pa.ListArray.from_arrays(c.offsets, pa.StructArray.from_arrays(
                [c.keys, c.items], fields=list(_ENTRY)), mask=c.is_null() if c.null_count else None)
                for c in col.chunks]
            col = pa.chunked_array(chunks, pa.list_(_ENTRY))
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=STORAGE_SCHEMA)


def _view_sql() -> str:
    replaced = ", ".join(f"map_from_entries({c}) AS {c}" for c in MAP_COLUMNS)
    return f"CREATE OR REPLACE VIEW spans AS SELECT * REPLACE ({replaced}) FROM span_rows"


class SpanStore:
    """The writer side of one DuckDB file."""

    def __init__(self, path: str | os.PathLike, memory_limit: str = "256MB", threads: int = 2,
                 extra_allowed_dirs: tuple[str, ...] = (), checkpoint_threshold: str = "16MB"):
        self.path = Path(path).absolute()
        self.directory = self.path.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path), config={
                "memory_limit": memory_limit, "threads": threads, "checkpoint_threshold": checkpoint_threshold})
        except duckdb.IOException as exc:
            raise OSError(f"cannot open span store {self.path}: {exc}") from exc
        allowed = [str(self.directory), *extra_allowed_dirs]
        self._con.execute(f"SET allowed_directories = {allowed!r}")
        self._con.execute("SET enable_external_access = false")
        self._lock = threading.Lock()
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        con = self._con
        con.register("_empty_spans", STORAGE_SCHEMA.empty_table())
        con.execute("CREATE TABLE IF NOT EXISTS span_rows AS SELECT * FROM _empty_spans LIMIT 0")
        existing = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'span_rows'").fetchall()}
        # Columns added to the schema after a store was created are added in place.
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE _empty_spans)").fetchall())
        for field in STORAGE_SCHEMA:
            if field.name not in existing:
                con.execute(f'ALTER TABLE span_rows ADD COLUMN "{field.name}" {types[field.name]}')
        con.unregister("_empty_spans")
        con.execute(_view_sql())

    def append(self, batch: pa.Table) -> None:
        """Insert one batch in one transaction; returns after the commit."""
        rows = to_storage(batch)
        with self._lock:
            self._con.register("_batch", rows)
            try:
                self._con.execute("INSERT INTO span_rows BY NAME SELECT * FROM _batch")
            finally:
                self._con.unregister("_batch")

    def count(self) -> int:
        with self._lock:
            return self._con.execute("SELECT count(*) FROM spans").fetchone()[0]

    def delete_older_than(self, days: float, now_ns: int | None = None) -> int:
        cutoff = (now_ns if now_ns is not None else time.time_ns()) - int(days * _NS_PER_DAY)
        with self._lock:
            return self._con.execute("DELETE FROM span_rows WHERE start_ns < ?", [cutoff]).fetchone()[0]

    def export_parquet(self, directory: str | os.PathLike, since_ns: int | None = None,
                       until_ns: int | None = None) -> list[str]:
        """Write spans as hourly Parquet files: DIR/date=YYYY-MM-DD/hour=HH/*.parquet."""
        return export_parquet(self._con, self._lock, directory, since_ns, until_ns)

    def query(self, sql: str, max_rows: int = 1000, timeout_s: float = 10.0) -> QueryResult:
        cursor = self._con.cursor()  # its own connection: readers never wait for the writer's lock
        try:
            return run_query(cursor, sql, max_rows, timeout_s)
        finally:
            cursor.close()

    def checkpoint(self) -> None:
        with self._lock:
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:
                pass


def export_parquet(con: duckdb.DuckDBPyConnection, lock: threading.Lock | None, directory: str | os.PathLike,
                   since_ns: int | None, until_ns: int | None) -> list[str]:
    out = Path(directory).absolute()
    out.mkdir(parents=True, exist_ok=True)
    where = []
    params: list[int] = []
    if since_ns is not None:
        where.append("start_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("start_ns < ?")
        params.append(until_ns)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (
        "COPY (SELECT *, strftime(make_timestamp(start_ns // 1000), '%Y-%m-%d') AS date, "
        "strftime(make_timestamp(start_ns // 1000), '%H') AS hour "
        f"FROM spans {cond}) TO '{out}' (FORMAT parquet, PARTITION_BY (date, hour), "
        "OVERWRITE_OR_IGNORE, FILENAME_PATTERN 'spans_{uuid}')"
    )
    if lock is None:
        con.execute(sql, params)
    else:
        with lock:
            con.execute(sql, params)
    return sorted(str(p) for p in out.rglob("*.parquet"))


def open_read_only(path: str | os.PathLike, extra_dirs: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    """Open a store no pipeline is running on, read-only, with no access to files outside it
    (and ``extra_dirs``, for export)."""
    p = Path(path).absolute()
    if not p.exists():
        raise FileNotFoundError(f"no span store at {p}")
    con = duckdb.connect(str(p), read_only=True)
    con.execute(f"SET allowed_directories = {[str(p.parent), *extra_dirs]!r}")
    con.execute("SET enable_external_access = false")
    return con
