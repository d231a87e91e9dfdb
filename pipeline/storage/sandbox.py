"""The SQL sandbox: what ad hoc SQL may do, and how much of the process it may take.

    statements   SELECT, and EXPLAIN of a SELECT, in a READ ONLY transaction
    files        none: the parse tree may call only the table functions in ALLOWED_TABLE_FUNCTIONS
                 (generators and the catalog's descriptions) and name tables, never paths.  The
                 database instances also have external access off with no directory allowed
                 (store.py); DuckDB still lets them open their own file, WAL and temp directory,
                 which only this check keeps ad hoc SQL from reading raw (deleted rows included).
    limits       QueryLimits: rows, result bytes (Arrow size of the rows kept), time (execution,
                 fetch and conversion) and memory (the process's growth while the query runs)
    tenant       QueryLimits.tenant: the caller reads that tenant's rows only (tenants.py): the relation
                 names it may use are views of its rows, and the parse tree may name no other relation,
                 no schema or catalog, no catalog function, SHOW/DESCRIBE/SUMMARIZE or EXPLAIN

Refusals and limits raise ``QueryError`` with the HTTP status to answer and a ``reason`` for the
self-metrics; a result cut by a limit is answered, with ``truncated_by`` naming the limit.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import duckdb
import psutil  # type: ignore[import-untyped]
import pyarrow as pa

from agent_sre.pipeline.storage.map_reads import stored_reads
from agent_sre.pipeline.storage.tenants import TENANT_TABLE_FUNCTIONS, scope_to_tenant

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
# An allow-list: DuckDB adds table functions with each release, and most of the rest read files
# (read_csv, read_blob, glob, parquet_metadata), run SQL from a string (query, json_execute_serialized_sql)
# or change state (enable_logging, checkpoint).
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree", "summary",
    "histogram", "histogram_values", "test_all_types", "icu_calendar_names", "pg_timezone_names",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_memory", "duckdb_schemas", "duckdb_sequences",
    "duckdb_settings", "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info",
    "pragma_database_size", "pragma_storage_info", "pragma_version", "pragma_platform", "pragma_show",
})
# A table name with one of these is a path to DuckDB (a replacement scan: FROM 'x.csv').
_PATH_CHARS = re.compile(r"[./\\:*?~]")
_BATCH_ROWS = 1024  # the cut granularity of the row and byte limits
_POLL_S = 0.01  # the watchdog's period: one period of growth is what the memory limit may overshoot


class QueryError(Exception):
    """Bad SQL, a statement the sandbox refuses, or a limit exceeded; ``status`` is the HTTP answer,
    ``reason`` the self-metrics label (``sql``, ``read_only``, ``file_access``, ``time``, ``memory``...)."""

    def __init__(self, message: str, status: int = 400, reason: str = "sql"):
        super().__init__(message)
        self.status = status
        self.reason = reason


QUERY_WAIT_S = 5.0  # the API's and the console's default QueryLimits.wait_s


@dataclass(frozen=True)
class QueryLimits:
    max_rows: int = 1000
    timeout_s: float = 10.0
    max_result_bytes: int = 16 << 20
    max_memory_bytes: int = 256 << 20  # growth of the process's RSS while the query runs
    tenant: str | None = None  # rows of this tenant only (tenants.py); None: every row
    # How long a query over a running store waits for the spans acknowledged before it to be committed;
    # past it, it answers over what is committed and says how many were pending.  None: up to the time
    # limit, and 503 when the store has not caught up by then (read-your-writes, always).
    wait_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_rows", "timeout_s", "max_result_bytes", "max_memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number (got {value!r})")
        if self.wait_s is not None and (isinstance(self.wait_s, bool) or not isinstance(self.wait_s, (int, float))
                                        or self.wait_s < 0):
            raise ValueError(f"wait_s must be a number >= 0 or None (got {self.wait_s!r})")
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise ValueError(f"tenant must be a non-empty string or None (got {self.tenant!r})")


def file_query_limits(max_rows: int, timeout_s: float = 60.0) -> QueryLimits:
    """The limits of ad hoc SQL over a stopped pipeline's file, in the caller's own process (``agent-sre query``
    and the MCP server when no pipeline answers): the API's byte limit, and for memory half of what the machine
    has available (at least the API's).  The API's 256 MiB guards a pipeline's ingest; here DuckDB's buffer pool
    (its default limit: 80 % of RAM) caches the file's blocks in this process as it reads them, and that counts as
    growth: measured on bench/store10m.py's 10M spans, the agent/model group-by with quantile_cont grew the
    process by 236-241 MiB, and the CLI refused it."""
    available = psutil.virtual_memory().available // 2
    return QueryLimits(max_rows=max_rows, timeout_s=timeout_s,
                       max_memory_bytes=max(QueryLimits.max_memory_bytes, available))


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list]
    truncated_by: str | None  # the limit that cut the result: max_rows or max_result_bytes
    elapsed_ms: float
    pending_spans: int = 0  # acknowledged spans not committed yet when it ran (QueryLimits.wait_s ran out)

    @property
    def truncated(self) -> bool:
        return self.truncated_by is not None

    def to_json(self) -> dict:
        return {"columns": self.columns, "types": self.types, "rows": self.rows,
                "row_count": len(self.rows), "truncated": self.truncated, "truncated_by": self.truncated_by,
                "elapsed_ms": round(self.elapsed_ms, 3), "pending_spans": self.pending_spans}

    def to_json_bytes(self) -> bytes:
        """The answer's body: blobs as hex, other non-JSON values (dates, UUIDs) as text."""
        return json.dumps(self.to_json(), default=_json_default).encode()


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _plain(value):
    """Integral decimals (sum() of BIGINT) as ints, other decimals as floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


# EXPLAIN's head: the keyword and its options (ANALYZE, or a parenthesised list).
_EXPLAIN_HEAD = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\b|\([^)]*\))?", re.IGNORECASE)


def _parser(con) -> duckdb.DuckDBPyConnection:
    """``con`` when it is a DuckDB connection (callers may pass an object with ``execute`` alone)."""
    return con if con is not None and hasattr(con, "extract_statements") else duckdb  # type: ignore[return-value]


def check_read_only(sql: str, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
    """Only SELECT, and EXPLAIN of a SELECT (EXPLAIN ANALYZE runs its statement); the SELECTs' text.  Parsed
    on ``con`` when given: without it, DuckDB's module-level parser opens its default in-memory instance
    (~20 ms the first time: a fifth of ``agent-sre query``'s start-up budget)."""
    parser = _parser(con)
    try:
        statements = parser.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise QueryError("no SQL statement given")
    selects = []
    for st in statements:
        kind = str(st.type).rpartition(".")[2]
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryError(f"only read-only statements are allowed (SELECT, EXPLAIN); got {kind}", 403,
                             "read_only")
        if kind == "EXPLAIN":
            head = _EXPLAIN_HEAD.match(st.query)
            inner = parser.extract_statements(st.query[head.end():]) if head else []
            if len(inner) != 1 or str(inner[0].type).rpartition(".")[2] != "SELECT":
                raise QueryError("EXPLAIN is allowed only of a SELECT statement", 403, "read_only")
            selects.append(inner[0].query)
        else:
            selects.append(st.query)
    return selects


def check_sandboxed(con: duckdb.DuckDBPyConnection, sql: str, tenant: TenantScope | None = None) -> None:
    """Read-only statements that touch no file (and with ``tenant``, read only its relations): checked
    on DuckDB's own parse tree."""
    selects = check_read_only(sql, con)
    if tenant is not None and any(str(st.type).endswith("EXPLAIN") for st in _parser(con).extract_statements(sql)):
        # A plan shows the views' definitions and the row counts of the tables under them.
        raise QueryError(f"EXPLAIN is not allowed with the key of tenant {tenant.name!r}", 403, "tenant_scope")
    for select in selects:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", [select]).fetchall()[0][0])
        if tree.get("error"):
            raise QueryError(f"the SQL sandbox cannot check this statement: {tree.get('error_message')}", 403,
                             "read_only")
        _check_tree(tree)
        if tenant is not None:
            tenant.check(con, tree)


@dataclass(frozen=True)
class TenantScope:
    """A tenant caller's relations: views of its rows (tenants.scope_to_tenant) on the query's connection."""

    name: str
    relations: frozenset[str]

    def check(self, con: duckdb.DuckDBPyConnection, tree: dict) -> None:
        """Only the tenant's relations (and the query's own CTEs), unqualified; generators only."""
        nodes = list(_nodes(tree))
        ctes = {str(entry.get("key", "")).lower() for node in nodes
                for entry in (node.get("cte_map") or {}).get("map", [])}
        if ctes - self.relations:
            # A CTE's name reaches the catalog outside the CTE's scope: it must name nothing there.
            taken = {name for (name,) in con.execute(
                "SELECT lower(table_name) FROM duckdb_tables() UNION SELECT lower(view_name) FROM duckdb_views() "
                "UNION SELECT lower(function_name) FROM duckdb_functions()").fetchall()}
            ctes -= taken
        readable = self.relations | ctes
        for node in nodes:
            kind = node.get("type")
            if kind == "TABLE_FUNCTION":
                name = str((node.get("function") or {}).get("function_name", "")).lower()
                if name not in TENANT_TABLE_FUNCTIONS:
                    self._refuse(f"table function {name}() is")
            elif kind == "SHOW_REF":
                self._refuse("SHOW, DESCRIBE and SUMMARIZE are")
            elif kind == "BASE_TABLE":
                name = str(node.get("table_name", ""))
                path = (node.get("qualified_name") or {}).get("path") or [name]
                if node.get("schema_name") or node.get("catalog_name") or len(path) > 1:
                    self._refuse(f"{'.'.join(str(p) for p in path)} is")
                if name.lower() not in readable or node.get("at_clause"):
                    self._refuse(f"{name} is")

    def _refuse(self, what: str) -> None:
        raise QueryError(f"{what} not readable with the key of tenant {self.name!r}: it reads its own rows of "
                         f"{', '.join(sorted(self.relations))} and generators (range, unnest)", 403, "tenant_scope")


def _nodes(tree: object):
    """Every object of a serialized parse tree."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            yield node
            stack.extend(node.values())


def _check_tree(tree: object) -> None:
    for node in _nodes(tree):
        if node.get("type") == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryError(f"table function {name}() is not allowed in ad hoc SQL: only generators and "
                                 "catalog functions (range, unnest, duckdb_tables, ...); no SQL may read files",
                                 403, "file_access")
        elif node.get("type") == "BASE_TABLE" and _PATH_CHARS.search(str(node.get("table_name", ""))):
            raise QueryError(f"{node['table_name']!r} is not a table: no SQL may read files", 403, "file_access")


class _Watchdog:
    """Interrupts the query at its deadline, or once the process has grown by more than the memory
    limit since the query started.  Needed beside DuckDB's memory_limit, which does not count the
    strings of a vector: SELECT repeat('x', 10000000) FROM range(100) built 1 GiB before the first
    row came out; polled every 10 ms, it is stopped about 260 MiB above where it started."""

    def __init__(self, con: duckdb.DuckDBPyConnection, deadline: float, max_growth: int):
        self.reason: str | None = None
        self._con, self._deadline = con, deadline
        self._process = psutil.Process()
        self._limit = self._process.memory_info().rss + max_growth
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="query-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_S):
            if time.monotonic() >= self._deadline:
                self.reason = "time"
            elif self._process.memory_info().rss > self._limit:
                self.reason = "memory"
            else:
                continue
            self._con.interrupt()
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_query(con: duckdb.DuckDBPyConnection, sql: str, limits: QueryLimits) -> QueryResult:
    """Run sandboxed SQL on ``con`` within ``limits``; the result streams in Arrow batches and is
    cut (``truncated_by``) at the first limit of rows or bytes, so DuckDB stops producing it."""
    started = time.perf_counter()
    deadline = time.monotonic() + limits.timeout_s
    tenant = None
    if limits.tenant is not None:
        check_read_only(sql, con)  # before anything is created on the connection
        tenant = TenantScope(limits.tenant, scope_to_tenant(con, limits.tenant))
    check_sandboxed(con, sql, tenant)
    # Lookups of one attribute read from the stored lists (map_reads.py): checked above as written.
    stored = stored_reads(con, sql) if _one_select(con, sql) else None
    watchdog = _Watchdog(con, deadline, limits.max_memory_bytes)
    try:
        # A read-only transaction as well as the statement check: whatever slips past the parser
        # still cannot write.
        con.execute("BEGIN TRANSACTION READ ONLY").fetchall()
        try:
            table, truncated_by = _fetch(con, stored or sql, limits)
        except duckdb.BinderException:
            if stored is None:
                raise
            con.execute("ROLLBACK").fetchall()  # a rewrite the binder refuses: the query as written
            con.execute("BEGIN TRANSACTION READ ONLY").fetchall()
            table, truncated_by = _fetch(con, sql, limits)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        raise _limit_error(exc, watchdog.reason or ("time" if time.monotonic() >= deadline else None),
                           limits) from exc
    finally:
        watchdog.stop()
        try:
            con.execute("ROLLBACK").fetchall()
        except duckdb.Error:
            pass  # the failed query already ended the transaction
    return QueryResult(columns=table.column_names, types=[str(t) for t in table.schema.types],
                       rows=_rows(table, deadline, limits), truncated_by=truncated_by,
                       elapsed_ms=(time.perf_counter() - started) * 1000)


def _one_select(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    statements = _parser(con).extract_statements(sql)
    return len(statements) == 1 and str(statements[0].type).rpartition(".")[2] == "SELECT"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, limits: QueryLimits) -> tuple[pa.Table, str | None]:
    reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    truncated_by = None
    try:
        for batch in reader:
            if rows + batch.num_rows > limits.max_rows:
                batch, truncated_by = batch.slice(0, limits.max_rows - rows), "max_rows"
            if size + batch.nbytes > limits.max_result_bytes:
                batch, truncated_by = _fit(batch, limits.max_result_bytes - size), "max_result_bytes"
            batches.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
            if truncated_by:
                break
    finally:
        reader.close()  # DuckDB frees what it built for the rest at once
    return pa.Table.from_batches(batches, schema=reader.schema), truncated_by


def _fit(batch: pa.RecordBatch, budget: int) -> pa.RecordBatch:
    """The longest head of ``batch`` within ``budget`` bytes, copied (a slice would keep the whole
    batch's buffers alive)."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if batch.slice(0, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return batch.take(pa.array(range(lo), pa.int64()))  # at most _BATCH_ROWS indices


def _rows(table: pa.Table, deadline: float, limits: QueryLimits) -> list[list]:
    """Row lists, column by column; the time limit covers this conversion too."""
    columns = []
    for column in table.columns:
        values = column.to_pylist()
        columns.append([_plain(v) for v in values] if pa.types.is_decimal(column.type) else values)
        if time.monotonic() > deadline:
            raise QueryError(f"query exceeded the time limit of {limits.timeout_s:g}s", 408, "time")
    return [list(row) for row in zip(*columns, strict=True)]


def _limit_error(exc: Exception, tripped: str | None, limits: QueryLimits) -> QueryError:
    if tripped == "time" or isinstance(exc, duckdb.InterruptException) and tripped is None:
        return QueryError(f"query exceeded the time limit of {limits.timeout_s:g}s", 408, "time")
    if tripped == "memory":
        return QueryError(f"query stopped: the process grew by more than {limits.max_memory_bytes >> 20} MiB while "
                          "it ran (max_query_memory); aggregate more or select less", 422, "memory")
    if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in str(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return QueryError(f"query needs more memory than the store's memory_limit allows (the duckdb exporter's "
                          f"memory_limit, plus its query_memory_limit while a query runs, or half the room left under the "
                          f"memory limiter's soft limit when that is less); exact quantiles and sorts "
                          f"over many spans need the most: approx_quantile, or a narrower time range, fits: {first}",
                          422, "memory")
    return QueryError(str(exc))


def restrict_file_access(con: duckdb.DuckDBPyConnection, lock: bool = True) -> None:
    """Switch a database instance's file access off for good: no directory is allowed (DuckDB
    still opens its own file, WAL and temp directory, and refuses to switch external access on again
    while the instance runs), and with ``lock`` the whole configuration is locked as well.  The running
    store's instance is not locked: it raises its buffer pool while an ad hoc query runs and lowers it
    after (``SpanStore.query``); its SQL reaches DuckDB only as a ``SELECT`` (``check_read_only``), which
    cannot change a setting.  The store reads its spool and writes Parquet with Python, not SQL.
    Idempotent: a second connection to an instance already locked down (reopened in the same
    process while another connection keeps it alive) finds it so."""
    if con.execute("SELECT current_setting('lock_configuration')").fetchall()[0][0]:
        return
    if con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]:
        con.execute("SET enable_external_access = false")
    if lock:
        con.execute("SET lock_configuration = true")
