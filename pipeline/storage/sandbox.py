"""The SQL sandbox: ad hoc SQL is read-only by statement type and by transaction, row- and
time-limited.  (The database instances themselves have external access switched off: see store.py.)"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import duckdb
import pyarrow as pa

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
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


# EXPLAIN's head: the keyword and its options (ANALYZE, or a parenthesised list).
_EXPLAIN_HEAD = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\b|\([^)]*\))?", re.IGNORECASE)


def check_read_only(sql: str) -> None:
    """Only SELECT, and EXPLAIN of a SELECT (EXPLAIN ANALYZE runs its statement)."""
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
        if kind == "EXPLAIN":
            head = _EXPLAIN_HEAD.match(st.query)
            inner = duckdb.extract_statements(st.query[head.end():]) if head else []
            if len(inner) != 1 or str(inner[0].type).rpartition(".")[2] != "SELECT":
                raise QueryError("EXPLAIN is allowed only of a SELECT statement", 403)


def run_query(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float) -> QueryResult:
    """Run read-only SQL on ``con`` with a row limit and a time limit (interrupting DuckDB)."""
    check_read_only(sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    started = time.perf_counter()
    timer.start()
    # A read-only transaction as well as the statement check: whatever slips past the parser
    # still cannot write.
    con.execute("BEGIN TRANSACTION READ ONLY").fetchall()
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
        try:
            con.execute("ROLLBACK").fetchall()
        except duckdb.Error:
            pass  # the failed query already ended the transaction
    truncated = table.num_rows > max_rows
    table = table.slice(0, max_rows)
    return QueryResult(
        columns=table.column_names,
        types=[str(t) for t in table.schema.types],
        rows=[[_plain(v) for v in r.values()] for r in table.to_pylist()],
        truncated=truncated,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )
