"""The fleet store: read-only SQL and the fleet views over the fleet's ClickHouse, for
``agent-sre query|slo status|cost summary|incidents list --store clickhouse://[user[:password]@]host[:port]/db``
(pipeline/cli/fleet.py) and the admin API's ``store: fleet`` answers (``fleet_store`` in its config).

The same questions as the local store, asked of the fleet's ClickHouse (``spans_raw`` and its view
``spans``, ``rollup_minute``, ``events``, written by the clickhouse exporter).  Every query runs with
``readonly = 1`` (no writes, no settings changed; the server refuses them), ``max_execution_time``
and ``max_memory_usage``; ad-hoc SQL also with the row limit (``max_result_rows`` with
``result_overflow_mode = 'break'``, then cut here to exactly ``max_rows``).  For production, also
give the user a read-only profile on the server: the settings here are the client's request, the
profile is the server's rule.

Each span once.  OTLP is at-least-once: a client re-sends a request whose OK it did not get (its
pipeline was killed after committing it), to that pipeline or another, so ClickHouse may hold copies
of a span.  The exporter stores spans in ``spans_raw``, a ReplacingMergeTree keyed by the span's
identity, and ``spans`` is the view ``spans_raw FINAL``: ad-hoc SQL reading ``spans`` sees each span
once, and the views read ``spans_raw FINAL`` with their own filters.  ``FINAL`` costs CPU mostly while
copies sit in unmerged parts (1M spans in 32 parts: ~0.3-0.4 s of CPU per question against ~0.01-0.1 s
without, on chdb and on 18.16; once merged, the same as without on chdb, ~2x on 18.16; the exporter's
README has the figures).  ``rollup_minute`` sums what each insert brought, copies included: no view
reads it any more.  Tables of an older version (``spans`` a MergeTree) are read as they are, every copy
counted (``spans_source``).

The views do not compute SLOs, spend or budgets again: ClickHouse answers the small per-minute
tables the local functions read (``sli_minutes``, ``cost_minutes``, ``span_rows``), which are put in
an in-memory DuckDB, and ``processors.slo.factory.evaluate`` and ``processors.cost.summary`` run on
them unchanged.  Where each comes from, and how it differs from one pipeline's store:

    sli_minutes  the sli processor's own predicates, run by ClickHouse over ``spans`` (one GROUP BY
                 per SLI over the objectives' longest window).  Not from ``rollup_minute``: an SLI's
                 predicate is configuration (the latency threshold, custom SLIs) that a fixed rollup
                 cannot hold.  Task SLIs (cost_per_task, delegation_chain_depth: over the store's
                 per-trace rollup) over a per-trace GROUP BY of the spans, for traces quiet for a
                 minute.  The predicates are DuckDB SQL, translated where the dialects differ
                 (``_predicate``: map look-ups, ``TRY_CAST``, booleans); hallucination_rate's score of
                 an evaluation event is read from ``evaluations``, the evaluation results the exporter
                 keeps of each span's events.  Predicates ClickHouse still cannot run are left out, and
                 said so.
    cost_minutes spend per minute (of the span's start; one pipeline's store: its end), agent, model and
                 tenant (the resource's ``tenant.id``) and the LLM-span count, over ``spans`` (each span
                 once; ``rollup_minute`` would count a re-sent span's copy again).
    span_rows    the running tasks' priced spans (the last ``TASK_IDLE_S``), for task budgets.
    incidents    the ``incident`` events (only when an events pipeline sends the alerts receiver's
                 events to the clickhouse exporter): one row per incident from its latest event.
"""
from __future__ import annotations

import functools
import math
import re
import time
import urllib.parse
from collections.abc import Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING

from agent_sre.pipeline.storage.sandbox import QueryError, QueryLimits, QueryResult

if TYPE_CHECKING:
    import duckdb

    from agent_sre.pipeline.storage.rollups import SliRollup

STORE_FORM = "clickhouse://[user[:password]@]host[:port]/database"
# The clickhouse exporter's span table (exporters/clickhouse/schema.py); ``spans`` is the view over it.
RAW_SPANS = "spans_raw"
SPAN_TABLES_SQL = ("SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
                   f"AND name IN ('spans', '{RAW_SPANS}')")
TIMEOUT_S = 60

# The fleet views, in SQL that runs on both schemas (ClickHouse 18.16 to today), over the view ``spans``:
# each span once (``rollup_minute`` is cheaper but sums a re-sent span's copies again).
FLEET_QUESTIONS = {
    "cost_by_agent_model": """SELECT agent_id, ifNull(model, '') AS model, count() AS spans,
       sum(ifNull(input_tokens, 0)) AS input_tokens, sum(ifNull(output_tokens, 0)) AS output_tokens,
       sum(ifNull(cost_usd, 0)) AS cost_usd
FROM spans WHERE start_time >= now() - INTERVAL {hours} HOUR
GROUP BY agent_id, model ORDER BY cost_usd DESC, agent_id, model""",
    "error_rate_by_agent": """SELECT agent_id, count() AS spans, countIf(ifNull(status_code, '') = 'error') AS errors,
       errors / spans AS error_rate, countIf(ifNull(span_role, '') = 'agent_task' AND ifNull(task_success, 0) = 1)
       / greatest(countIf(ifNull(span_role, '') = 'agent_task'), 1) AS task_success_rate
FROM spans WHERE start_time >= now() - INTERVAL {hours} HOUR
GROUP BY agent_id ORDER BY error_rate DESC, agent_id""",
    "slowest_llm_calls": """SELECT agent_id, model, trace_id, span_id, duration_ns / 1e6 AS duration_ms
FROM spans WHERE span_role = 'llm' AND start_ns >= (toUInt64(now()) - {hours} * 3600) * 1000000000
ORDER BY duration_ns DESC LIMIT 20""",
}
MAX_MEMORY = 2 << 30
# Server errors that mean "this SQL does not run here" (an SLI predicate in DuckDB's dialect, a column
# the fleet store does not have): UNKNOWN_IDENTIFIER, UNKNOWN_FUNCTION, SYNTAX_ERROR, ILLEGAL_TYPE_OF_ARGUMENT,
# NO_SUCH_COLUMN_IN_TABLE, TYPE_MISMATCH, UNKNOWN_TYPE, ILLEGAL_COLUMN, NUMBER_OF_ARGUMENTS_DOESNT_MATCH.
_NOT_HERE = {47, 46, 62, 43, 16, 53, 50, 44, 42}


class FleetStoreError(QueryError):
    """The fleet store cannot answer: a URL that is not one, the driver missing, the server unreachable
    (``status`` 503) — or, as ``FleetSqlError``, a statement the server refused (400)."""

    def __init__(self, message: str, status: int = 503, reason: str = "fleet_store"):
        super().__init__(message, status, reason)


class FleetSqlError(FleetStoreError):
    """The server refused a statement (``code``: ClickHouse's error code)."""

    def __init__(self, message: str, code: int):
        super().__init__(message, 400, "read_only" if code == 164 else "sql")
        self.code = code


def parse_store(url: str, timeout_s: float = TIMEOUT_S) -> dict:
    """clickhouse://user:password@host:port/db as clickhouse-driver's Client arguments; a URL that is not
    one raises ``FleetStoreError`` ("must be clickhouse://…", for the caller to name its setting)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise FleetStoreError(f"must be {STORE_FORM} (got {redacted(url)!r})", 400, "bad_store")
    return {"host": parts.hostname, "port": parts.port or 9000,
            "database": parts.path.strip("/") or "default",
            "user": urllib.parse.unquote(parts.username or "default"),
            "password": urllib.parse.unquote(parts.password or ""),
            "connect_timeout": 10, "send_receive_timeout": timeout_s + 10}


def redacted(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class FleetStore:
    """One read-only connection to the fleet store (clickhouse-driver, the native protocol).  Every
    statement runs with ``readonly = 1``, ``max_execution_time`` (``timeout_s``, whole seconds up) and
    ``max_memory_usage`` (``max_memory``)."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S, max_memory: int = MAX_MEMORY):
        try:
            from clickhouse_driver import Client  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - a declared dependency
            raise FleetStoreError("the fleet store needs clickhouse-driver: pip install clickhouse-driver") from None
        self.url = url
        self.settings = {"readonly": 1, "max_execution_time": max(1, math.ceil(timeout_s)),
                         "max_memory_usage": max_memory}
        self.client = Client(**parse_store(url, timeout_s))
        self._spans: str | None = None

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()

    def execute(self, sql: str, params: dict | None = None, settings: dict | None = None, **kw):
        from clickhouse_driver.errors import Error, ServerException  # type: ignore[import-untyped]

        try:
            return self.client.execute(sql, params, settings={**self.settings, **(settings or {})}, **kw)
        except ServerException as exc:
            first = str(exc.message).splitlines()[0].split(" Stack trace:")[0]
            if exc.code == 164:  # READONLY
                first = f"only read-only statements are allowed ({first})"
            elif exc.code in (60, 81):  # UNKNOWN_TABLE, UNKNOWN_DATABASE
                first += " (the clickhouse exporter creates the tables with create_schema: true)"
            raise FleetSqlError(f"query failed (ClickHouse error {exc.code}): {first}", exc.code) from None
        except (Error, OSError, EOFError) as exc:
            raise FleetStoreError(f"cannot reach the fleet store {parse_store(self.url)['host']}: {exc}",
                                  503, "fleet_store_unreachable") from None

    def arrow(self, sql: str, params: dict, names: list[str]):
        """The answer as an Arrow table with these column names (columns as the driver returns them)."""
        import pyarrow as pa

        columns = self.execute(sql, params, columnar=True)
        if not columns:
            columns = [[] for _ in names]
        return pa.table({name: list(col) for name, col in zip(names, columns, strict=True)})

    def spans_source(self) -> str:
        """What the views read spans from (asked once): ``spans_raw FINAL`` -- or ``spans`` when that is
        the MergeTree table of an older version (every copy of a span counted: README)."""
        if self._spans is None:
            self._spans = spans_source(dict(self.execute(SPAN_TABLES_SQL)))
        return self._spans

    def has_column(self, table: str, column: str) -> bool:
        """Whether ``table`` has ``column`` (a Map column ``labels``, or the compat schema's ``labels.key``)."""
        return bool(self.execute("SELECT count() FROM system.columns WHERE database = currentDatabase() "
                                 "AND table = %(t)s AND name = %(c)s", {"t": table, "c": column})[0][0])


def spans_source(engines: dict[str, str]) -> str:
    """``spans_raw FINAL``, or ``spans`` when it is an older version's table ({table: engine} of the two)."""
    return "spans" if engines.get("spans", "View") != "View" else f"{RAW_SPANS} FINAL"


def fleet_query(source: str | FleetStore, sql: str, limits: QueryLimits) -> QueryResult:
    """Ad-hoc SQL within ``limits``: rows (``max_result_rows`` with ``result_overflow_mode = 'break'``,
    then cut here to exactly ``max_rows``), the answer's bytes (``max_result_bytes``, the server's
    measure, also with 'break': a block boundary, not reported as a cut), time and memory (the
    ``FleetStore``'s settings when ``source`` is a URL).  Not tenant-scoped: ``limits.tenant`` is refused."""
    if limits.tenant is not None:
        raise FleetStoreError("the fleet store is not tenant-scoped: not for a tenant's key", 403, "tenant_scope")
    started = time.monotonic()
    settings = {"max_result_rows": limits.max_rows + 1, "max_result_bytes": limits.max_result_bytes,
                "result_overflow_mode": "break"}
    opened = (FleetStore(source, limits.timeout_s, limits.max_memory_bytes) if isinstance(source, str)
              else nullcontext(source))
    with opened as store:
        rows, types = store.execute(sql, settings=settings, with_column_types=True)
    truncated = len(rows) > limits.max_rows
    return QueryResult([name for name, _ in types], [kind for _, kind in types],
                       [list(r) for r in rows[:limits.max_rows]], "max_rows" if truncated else None,
                       (time.monotonic() - started) * 1000)


# --- the views: the local tables, answered by the fleet store ------------------------------------

SLI_MINUTES_COLUMNS = ["minute", "sli", "agent_id", "agent_version", "good", "total"]
# One SLI's events per minute (of the span's end, as the store's rollup), agent and version; ``ifNull``
# because a predicate over a Nullable column is NULL (not an event, not good) in DuckDB too.  Replayed
# spans (``agent-sre replay``) are not counted, as in the store.
SLI_MINUTES_SQL = """SELECT intDiv(end_ns, 60000000000) AS minute, %(sli)s AS sli, agent_id,
       ifNull(agent_version, '') AS agent_version, countIf(ifNull(({good}), 0)) AS good, count() AS total
FROM {spans} WHERE end_ns >= %(lo)s AND end_ns < %(hi)s AND ifNull(({total}), 0)
  AND NOT has(resource_attributes.{keys}, %(replay)s) AND NOT has(attributes.{keys}, %(replay)s)
GROUP BY minute, agent_id, agent_version"""
# A task SLI's events per minute of the task's end: the store's per-trace rollup (``trace_rollups``:
# agent and version of its agent_task span, cost summed over the trace, delegation spans, the task's
# end) computed by ClickHouse over the trace's spans, for tasks whose trace has been quiet (its last
# span ended) for ``TASK_GRACE_NS`` -- the store waits that long after the last span's arrival.
TASK_SLI_MINUTES_SQL = """SELECT intDiv(task_end_ns, 60000000000) AS minute, %(sli)s AS sli, agent_id, agent_version,
       countIf(ifNull(({good}), 0)) AS good, count() AS total
FROM (SELECT trace_id, argMinIf(agent_id, start_ns, ifNull(span_role, '') = 'agent_task') AS agent_id,
             argMinIf(ifNull(agent_version, ''), start_ns, ifNull(span_role, '') = 'agent_task') AS agent_version,
             sum(ifNull(cost_usd, 0)) AS cost_usd, countIf(ifNull(span_role, '') = 'delegation') AS delegations,
             maxIf(end_ns, ifNull(span_role, '') = 'agent_task') AS task_end_ns, max(end_ns) AS last_seen_ns,
             countIf(ifNull(span_role, '') = 'agent_task') AS roots
      FROM {spans} WHERE end_ns >= %(lo)s - 3600000000000
        AND NOT has(resource_attributes.{keys}, %(replay)s) AND NOT has(attributes.{keys}, %(replay)s)
      GROUP BY trace_id)
WHERE roots > 0 AND task_end_ns >= %(lo)s AND task_end_ns < %(hi)s AND last_seen_ns <= %(due)s AND ifNull(({total}), 0)
GROUP BY minute, agent_id, agent_version"""
COST_MINUTES_COLUMNS = ["minute", "agent_id", "model", "tenant", "cost_usd", "spans"]
# The tenant as the local store has it (rollups.TENANT_SQL): the resource's tenant.id, '' when none (an index of 0,
# indexOf's "not there", reads the default value).
COST_MINUTES_SQL = """SELECT intDiv(ifNull(start_ns, 0), 60000000000) AS m, agent_id, ifNull(model, '') AS model_,
       resource_attributes.{values}[indexOf(resource_attributes.{keys}, 'tenant.id')] AS tenant_,
       sum(ifNull(cost_usd, 0)) AS cost, countIf(ifNull(span_role, '') = 'llm') AS llm_spans
FROM {spans} WHERE start_time >= toDateTime(%(lo)s) GROUP BY m, agent_id, model_, tenant_
HAVING cost > 0 OR llm_spans > 0"""
SPAN_ROWS_COLUMNS = ["trace_id", "cost_usd", "end_ns", "agent_id"]
RUNNING_TASKS_SQL = """SELECT trace_id, cost_usd, end_ns, agent_id FROM {spans} WHERE cost_usd > 0
  AND trace_id IN (SELECT trace_id FROM {spans} WHERE cost_usd > 0 AND end_ns >= %(since)s)"""


def _opened(source: str | FleetStore):
    """A store from its URL (closed after use), or a store given (left open: its owner closes it)."""
    return FleetStore(source) if isinstance(source, str) else nullcontext(source)


def _views_db(tables: dict[str, object]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding these Arrow tables, for the processors' functions to read."""
    import duckdb

    con = duckdb.connect(":memory:")
    for name, table in tables.items():
        con.register(f"_{name}", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}")
        con.unregister(f"_{name}")
    return con


def _map_keys(store: FleetStore, table: str, column: str) -> str:
    """The keys of a string map: ``keys`` of a Map (current schema), ``key`` of a Nested (compat)."""
    return "key" if store.has_column(table, f"{column}.key") else "keys"


_QUOTED = re.compile(r"('(?:[^']|'')*')")
_BOOLEAN = re.compile(r"\b(true|false)\b", re.IGNORECASE)


_LITERAL = r"('(?:[^']|'')*')"
_MAP_LOOKUP = re.compile(r"(?<![.\w])(attributes|resource_attributes|scope_attributes)\s*\[\s*" + _LITERAL + r"\s*\]")
_TRY_CAST = re.compile(r"\bTRY_CAST\s*\(", re.IGNORECASE)
_AS_DOUBLE = re.compile(r"\s+AS\s+DOUBLE\s*$", re.IGNORECASE)


@functools.cache
def _evaluation_score() -> re.Pattern:
    from agent_sre.pipeline.storage.rollups import evaluation_score

    marker = "\x00"
    return re.compile(re.escape(evaluation_score(marker)).replace(re.escape(marker), _LITERAL))


def _lookup(column: str, key: str, keys: str) -> str:
    """``column[key]`` as DuckDB reads a map (NULL when the key is not there), on both schemas."""
    values = "values" if keys == "keys" else "value"
    return f"if(has({column}.{keys}, {key}), {column}.{values}[indexOf({column}.{keys}, {key})], NULL)"


def _try_casts(sql: str) -> str:
    """``TRY_CAST(x AS DOUBLE)`` as ``toFloat64OrNull(x)`` (NULL where x is not a number, as in DuckDB)."""
    out, at = [], 0
    for m in _TRY_CAST.finditer(sql):
        if m.start() < at:
            continue  # inside a cast already rewritten
        depth, quoted, end = 1, False, None
        for k in range(m.end(), len(sql)):
            ch = sql[k]
            if ch == "'":
                quoted = not quoted
            elif not quoted and ch in "()":
                depth += 1 if ch == "(" else -1
                if depth == 0:
                    end = k
                    break
        inner = sql[m.end():end] if end is not None else ""
        cast = _AS_DOUBLE.search(inner)
        if end is None or cast is None:
            continue  # another type: left to ClickHouse (which may refuse it: the SLI is then left out)
        out += [sql[at:m.start()], "toFloat64OrNull(", _try_casts(inner[:cast.start()]), ")"]
        at = end + 1
    return "".join(out) + sql[at:]


def _predicate(sql: str, keys: str = "keys") -> str:
    """An SLI predicate (DuckDB SQL over the store's spans) for ClickHouse: an evaluation result's score read
    from ``evaluations``, ``attributes['k']`` (also resource and scope attributes) NULL when ``k`` is not
    there, ``TRY_CAST(x AS DOUBLE)`` as ``toFloat64OrNull``, boolean literals as 1 and 0 outside quoted
    strings (18.16 knows no ``true``).  ``keys``: the maps' key column, ``keys`` (Map) or ``key`` (Nested)."""
    sql = _evaluation_score().sub(lambda m: _lookup("evaluations", m.group(1), keys), sql)
    sql = _MAP_LOOKUP.sub(lambda m: _lookup(m.group(1), m.group(2), keys), sql)
    sql = _try_casts(sql)
    parts = _QUOTED.split(sql)
    return "".join(part if i % 2 else _BOOLEAN.sub(lambda m: "1" if m.group(1).lower() == "true" else "0", part)
                   for i, part in enumerate(parts))


def fleet_sli_minutes(source: str | FleetStore, slis: Iterable[SliRollup], lookback: dict[str, int],
                      now_minute: int) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """(a DuckDB with ``sli_minutes`` over the fleet, {SLI left out: why}); ``lookback``: minutes
    before ``now_minute`` each SLI needs (the longest window of the objectives on it)."""
    import pyarrow as pa

    from agent_sre.pipeline.storage.rollups import REPLAY_KEY, TASK_GRACE_NS

    parts, skipped = [], {}
    with _opened(source) as store:
        keys = _map_keys(store, "spans", "attributes")
        for sli in slis:
            if sli.name not in lookback:
                continue
            template = TASK_SLI_MINUTES_SQL if sli.scope == "task" else SLI_MINUTES_SQL
            sql = template.format(good=_predicate(sli.good, keys), total=_predicate(sli.total, keys), keys=keys,
                                  spans=store.spans_source())
            params = {"sli": sli.name, "lo": (now_minute - lookback[sli.name]) * 60_000_000_000,
                      "hi": now_minute * 60_000_000_000, "replay": REPLAY_KEY,
                      "due": time.time_ns() - TASK_GRACE_NS}
            try:
                parts.append(store.arrow(sql, params, SLI_MINUTES_COLUMNS))
            except FleetSqlError as exc:
                if exc.code not in _NOT_HERE:
                    raise
                skipped[sli.name] = f"its predicates do not run on the fleet store ({exc})"
    schema = pa.schema([("minute", pa.int64()), ("sli", pa.string()), ("agent_id", pa.string()),
                        ("agent_version", pa.string()), ("good", pa.int64()), ("total", pa.int64())])
    table = pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()
    return _views_db({"sli_minutes": table}), skipped


def fleet_cost_tables(source: str | FleetStore, since_minute: int, running_since_ns: int | None) -> duckdb.DuckDBPyConnection:
    """A DuckDB with ``cost_minutes`` from ``since_minute`` on and, with ``running_since_ns``, the priced
    spans of tasks still running (``span_rows``), over the fleet."""
    import pyarrow as pa

    cost_schema = pa.schema([("minute", pa.int64()), ("agent_id", pa.string()), ("model", pa.string()),
                             ("tenant", pa.string()), ("cost_usd", pa.float64()), ("spans", pa.int64())])
    span_schema = pa.schema([("trace_id", pa.string()), ("cost_usd", pa.float64()), ("end_ns", pa.int64()),
                             ("agent_id", pa.string())])
    with _opened(source) as store:
        source = store.spans_source()
        keys = _map_keys(store, "spans", "resource_attributes")
        cost = store.arrow(COST_MINUTES_SQL.format(spans=source, keys=keys, values=keys.replace("key", "value")),
                           {"lo": since_minute * 60}, COST_MINUTES_COLUMNS).cast(cost_schema)
        spans = (store.arrow(RUNNING_TASKS_SQL.format(spans=source), {"since": running_since_ns},
                             SPAN_ROWS_COLUMNS).cast(span_schema)
                 if running_since_ns is not None else span_schema.empty_table())
    return _views_db({"cost_minutes": cost, "span_rows": spans})


INCIDENTS_SQL = """SELECT argMax({keys}, time_ns) AS k, argMax({values}, time_ns) AS v,
       argMax(state, time_ns) AS last_state, argMax(summary, time_ns) AS last_summary, started_ns AS opened,
       max(time_ns) AS updated, maxIf(time_ns, state = 'resolved') AS resolved_at
FROM events WHERE kind = 'incident' GROUP BY fingerprint, started_ns {having}
ORDER BY opened DESC LIMIT %(limit)s"""


def fleet_incidents(source: str | FleetStore, include_resolved: bool, limit: int = 100) -> list[dict]:
    """The newest incidents of every pipeline (open ones only unless ``include_resolved``), each from its
    latest ``incident`` event: the rows of ``GET /v1/incidents`` that events carry (``signals``,
    ``duplicates`` and ``last_signal_ns`` are not in them: None).  An incident is its id and the time it
    opened: ids are numbered per pipeline, so two pipelines' ``INC-00001`` are two rows."""
    with _opened(source) as store:
        if not store.has_column("events", "kind"):
            raise FleetStoreError("the fleet store has no events table (the clickhouse exporter creates it)", 404,
                                  "no_events")
        keys = _map_keys(store, "events", "labels")
        cols = ("labels.key", "labels.value") if keys == "key" else ("mapKeys(labels)", "mapValues(labels)")
        rows = store.execute(INCIDENTS_SQL.format(keys=cols[0], values=cols[1],
                                                  having="" if include_resolved else "HAVING last_state <> 'resolved'"),
                             {"limit": limit})
    out = []
    for k, v, state, summary, opened, updated, resolved in rows:
        labels = dict(zip(k, v, strict=True))
        signals = labels.get("signals")
        out.append({"id": labels.get("incident_id", "?"), "agent_id": labels.get("agent_id", ""),
                    "title": labels.get("title") or summary or "", "priority": labels.get("priority", "?"),
                    "state": labels.get("incident_state", state), "opened_ns": opened, "updated_ns": updated,
                    "resolved_ns": resolved if state == "resolved" else None, "last_signal_ns": None,
                    "signals": int(signals) if signals and signals.isdigit() else None, "duplicates": None})
    return out
