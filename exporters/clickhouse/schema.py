"""The ClickHouse tables: one schema for the ClickHouse users run today, one for 18.16 (Debian's).

``current`` (ClickHouse >= 22.2, checked with chdb 26.x in the tests):
    spans_raw      ReplacingMergeTree, PARTITION BY day, PRIMARY KEY (agent_id, start_time), ORDER BY
                   (agent_id, start_time, trace_id, span_id), TTL, a bloom-filter skip index on trace_id,
                   ``Map(LowCardinality(String), String)`` attributes, ``LowCardinality`` enums,
                   ``DateTime64(9)`` start_time (materialised from start_ns); inserts are deduplicated by
                   ``insert_deduplication_token`` (= the batch id) within ``non_replicated_deduplication_window``
                   blocks.  Every copy of one span has one sorting key: merges keep one.
    spans          a view: ``SELECT *, start_time FROM spans_raw FINAL`` -- one row per span before merges
                   too.  What fleet SQL and the fleet views read.
    rollup_minute  SummingMergeTree per (agent_id, minute, model, span_role): spans, errors, tokens,
                   cost, duration, task outcomes -- fed by a materialised view on spans_raw, so it follows
                   the spans insert (and its batch deduplication) and can never count a batch the spans table
                   did not take; but a span's copy inserted in another batch (a client's re-send) is
                   summed again.  Rows of one key merge eventually: query with ``sum()``.
    events         MergeTree of alerts, budgets, decisions, incidents (EVENT_SCHEMA).
    metrics, logs  MergeTree of OTLP metric points and log records (METRIC_SCHEMA / LOG_SCHEMA, every
                   column), PARTITION BY day of ``time`` (``DateTime64(9)`` from time_ns), ORDER BY
                   (service_name, metric_name, time) / (service_name, time), TTL; logs with a bloom-filter
                   index on trace_id (``logs JOIN spans USING (trace_id, span_id)`` finds a GenAI event's span).
``compat`` (18.16): the same tables, views and columns without Map (attributes as ``Nested(key, value)``),
    LowCardinality, DateTime64, TTL or skip indexes; spans_raw is not partitioned, so one insert of up to
    ``max_insert_block_size`` rows is one part (atomic); exactly-once per batch is the exporter's check of
    the batch id before the insert (see factory.py).
Span events are not stored, but the GenAI evaluation results among them are: ``evaluations``, a string map
per span (a Map; Nested on 18.16) from each ``gen_ai.evaluation.result`` event's ``gen_ai.evaluation.name``
to its ``gen_ai.evaluation.score.value`` -- what the hallucination SLI reads in the fleet views.  A table
created before that column gets it at the exporter's start (``missing_columns``), when it creates the schema.
Tables of an older version (``spans`` a MergeTree table) are not changed: see ``legacy_spans`` and README.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.storage.fleet import RAW_SPANS
from agent_sre.pipeline.storage.rollups import EVALUATION_EVENT, EVALUATION_NAME, EVALUATION_SCORE

SPAN_STRINGS = ("parent_span_id", "trace_state", "status_message", "service_version", "environment", "scope_name",
                "scope_version", "agent_name", "agent_version", "session_id", "task_name", "tool_name", "provider",
                "delegation_from", "delegation_to", "policy_name", "policy_decision", "error_type")
LOW_CARDINALITY = ("name", "kind", "status_code", "service_name", "span_role", "model")
SPAN_INTS = ("flags", "start_ns", "end_ns", "duration_ns", "input_tokens", "output_tokens", "cached_tokens",
             "dropped_attributes_count", "dropped_events_count", "dropped_links_count")
SPAN_FLOATS = ("cost_usd", "trust_score")
MAPS = ("attributes", "resource_attributes", "scope_attributes")
EVALUATIONS = "evaluations"  # derived from the span's events (``with_evaluations``) just before the insert
STRING_MAPS = (*MAPS, EVALUATIONS)
# Columns the exporter inserts, in order (span events and links are not stored, but for their evaluations:
# see README).
SPAN_COLUMNS = ("trace_id", "span_id", "agent_id", *LOW_CARDINALITY, *SPAN_STRINGS, *SPAN_INTS, *SPAN_FLOATS,
                "task_success", *STRING_MAPS, "batch_id")
EVENT_COLUMNS = ("time_ns", "kind", "state", "severity", "name", "fingerprint", "summary", "labels", "started_ns",
                 "batch_id")
# Metric points and log records: every column of the pipeline's METRIC_SCHEMA / LOG_SCHEMA (with the
# type each takes in ClickHouse; "map": Map on current, Nested(key, value) on 18.16; "lc": LowCardinality on
# current), then ``batch_id``.  The sorting key's columns are not Nullable (NULL stored as '' or 0).
_METRIC_TYPES = {
    "time_ns": "Int64", "start_time_ns": "Nullable(Int64)", "metric_name": "lc String", "description": "Nullable(String)",
    "unit": "lc Nullable(String)", "metric_type": "lc Nullable(String)", "temporality": "lc Nullable(String)",
    "is_monotonic": "Nullable(UInt8)", "value": "Nullable(Float64)", "int_value": "Nullable(Int64)",
    "count": "Nullable(Int64)", "sum": "Nullable(Float64)", "min": "Nullable(Float64)", "max": "Nullable(Float64)",
    "bucket_counts": "Array(Int64)", "explicit_bounds": "Array(Float64)", "scale": "Nullable(Int64)",
    "zero_count": "Nullable(Int64)", "zero_threshold": "Nullable(Float64)", "positive_offset": "Nullable(Int64)",
    "positive_bucket_counts": "Array(Int64)", "negative_offset": "Nullable(Int64)",
    "negative_bucket_counts": "Array(Int64)", "quantiles": "Nested(quantile Float64, value Float64)",
    "flags": "Nullable(Int64)", "exemplars": "Nullable(String)", "attributes": "map", "metric_metadata": "map",
    "service_name": "lc String", "resource_attributes": "map", "scope_name": "Nullable(String)",
    "scope_version": "Nullable(String)", "scope_attributes": "map"}
_LOG_TYPES = {
    "time_ns": "Int64", "observed_time_ns": "Nullable(Int64)", "severity_number": "Nullable(Int64)",
    "severity_text": "lc Nullable(String)", "event_name": "lc Nullable(String)", "body": "Nullable(String)",
    "body_type": "lc Nullable(String)", "trace_id": "String", "span_id": "String", "flags": "Nullable(Int64)",
    "attributes": "map", "dropped_attributes_count": "Nullable(Int64)", "service_name": "lc String",
    "resource_attributes": "map", "scope_name": "Nullable(String)", "scope_version": "Nullable(String)",
    "scope_attributes": "map"}
METRIC_COLUMNS = (*_METRIC_TYPES, "batch_id")
LOG_COLUMNS = (*_LOG_TYPES, "batch_id")
# Columns stored as a map (a Map, or the Nested pair name.key/name.value on 18.16), and as a Nested of two
# arrays in both schemas (an Arrow list of structs: one array per field).
MAP_COLUMNS = frozenset((*STRING_MAPS, "labels", "metric_metadata"))
NESTED_COLUMNS = {"quantiles": ("quantile", "value")}


def _span_columns(current: bool) -> list[str]:
    lc = "LowCardinality(Nullable(String))" if current else "Nullable(String)"
    cols = ["trace_id String", "span_id String", "agent_id String"]  # agent_id: a sort key, '' when unknown
    cols += [f"{c} {lc}" for c in LOW_CARDINALITY]
    cols += [f"{c} Nullable(String)" for c in SPAN_STRINGS]
    cols += [f"{c} Nullable(Int64)" for c in SPAN_INTS]
    cols += [f"{c} Nullable(Float64)" for c in SPAN_FLOATS]
    cols += ["task_success Nullable(UInt8)"]
    cols += [f"{m} {_map_type(current)}" for m in STRING_MAPS]  # evaluations last: where missing_columns adds it
    if current:
        cols += ["start_time DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(ifNull(start_ns, 0))"]
    else:
        cols += ["start_time DateTime MATERIALIZED toDateTime(intDiv(ifNull(start_ns, 0), 1000000000))"]
    cols += ["batch_id String"]
    return cols


def _map_type(current: bool) -> str:
    return "Map(LowCardinality(String), String)" if current else "Nested(key String, value String)"


def evaluations(batch: pa.Table) -> pa.MapArray:
    """Per span, {evaluation name: score value} of its ``gen_ai.evaluation.result`` events (column-wise;
    an event without a name is left out, one without a score reads ''), in the batch's row order."""
    events = batch.column("events").combine_chunks()
    flat = pc.list_flatten(events)
    parents = pc.list_parent_indices(events)
    attributes = pc.struct_field(flat, "attributes")
    name = pc.map_lookup(attributes, EVALUATION_NAME, "first")
    keep = pc.fill_null(pc.and_(pc.equal(pc.struct_field(flat, "name"), EVALUATION_EVENT), pc.is_valid(name)), False)
    counts = np.bincount(parents.filter(keep).to_numpy(zero_copy_only=False), minlength=len(events))
    offsets = np.concatenate([[0], np.cumsum(counts[:len(events)])]).astype(np.int32)
    score = pc.fill_null(pc.map_lookup(attributes, EVALUATION_SCORE, "first").filter(keep), "")
    return pa.MapArray.from_arrays(pa.array(offsets), name.filter(keep), score)


def with_evaluations(batch: pa.Table) -> pa.Table:
    """The span batch with its ``evaluations`` column (derived from its events) for the insert."""
    return batch.append_column(EVALUATIONS, evaluations(batch))


def missing_columns(db: str, table: str, current: bool, present: set[str]) -> list[str]:
    """ALTER statements adding the span columns a table made by an earlier version lacks (``present``: its
    column names from system.columns; 18.16 knows no ADD COLUMN IF NOT EXISTS)."""
    if EVALUATIONS in present or f"{EVALUATIONS}.key" in present:
        return []
    after = "scope_attributes" if current else "`scope_attributes.value`"  # where ddl() has it
    return [f"ALTER TABLE {db}.{table} ADD COLUMN {EVALUATIONS} {_map_type(current)} AFTER {after}"]


# Spans are stored in ``spans_raw``, a ReplacingMergeTree whose sorting key ends with the span's identity
# (trace_id, span_id): every copy of a span (an OTLP client's re-send after a lost OK, to any pipeline)
# has the same key -- the same agent_id and start_time, derived from the span itself -- so merges keep
# one, and ``FINAL`` reads one before they happen.  The view ``spans`` is ``spans_raw FINAL``: what fleet
# SQL reads.  The primary index stays (agent_id, start_time): time and agent ranges prune as before.
SPAN_IDENTITY = ("trace_id", "span_id")
SPANS_KEY = f"PRIMARY KEY (agent_id, start_time) ORDER BY (agent_id, start_time, {', '.join(SPAN_IDENTITY)})"

ROLLUP_COLUMNS = ("minute DateTime", "agent_id String", "model String", "span_role String", "spans UInt64",
                  "errors UInt64", "input_tokens Int64", "output_tokens Int64", "cost_usd Float64",
                  "duration_ns Int64", "tasks UInt64", "task_successes UInt64")

ROLLUP_SELECT = """SELECT toStartOfMinute(toDateTime(intDiv(ifNull(start_ns, 0), 1000000000))) AS minute, agent_id,
       ifNull(model, '') AS model, ifNull(span_role, '') AS span_role, count() AS spans,
       countIf(ifNull(status_code, '') = 'error') AS errors, sum(ifNull(input_tokens, 0)) AS input_tokens,
       sum(ifNull(output_tokens, 0)) AS output_tokens, sum(ifNull(cost_usd, 0)) AS cost_usd,
       sum(ifNull(duration_ns, 0)) AS duration_ns, countIf(ifNull(span_role, '') = 'agent_task') AS tasks,
       countIf(ifNull(span_role, '') = 'agent_task' AND ifNull(task_success, 0) = 1) AS task_successes
FROM {db}.{spans} GROUP BY minute, agent_id, model, span_role"""


def ddl(db: str, current: bool, ttl_days: int, dedup_window: int = 10_000) -> list[str]:
    """The statements that create the schema (idempotent: IF NOT EXISTS): the database, ``spans_raw``,
    ``rollup_minute`` and the view feeding it, the view ``spans`` (one row per span), ``events``."""
    body = ",\n  ".join(_span_columns(current))
    event_labels = "labels Map(LowCardinality(String), String)" if current else "labels Nested(key String, value String)"
    lc = "LowCardinality(String)" if current else "String"
    events = (f"time_ns Int64, kind {lc}, state {lc}, severity Nullable(String), name Nullable(String), "
              f"fingerprint String, summary Nullable(String), {event_labels}, started_ns Nullable(Int64), "
              "batch_id String")
    rollup = ", ".join(ROLLUP_COLUMNS)
    if current:
        spans = (f"CREATE TABLE IF NOT EXISTS {db}.{RAW_SPANS} (\n  {body},\n"
                 "  INDEX trace_id_bloom trace_id TYPE bloom_filter(0.001) GRANULARITY 4\n)"
                 f" ENGINE = ReplacingMergeTree PARTITION BY toDate(start_time) {SPANS_KEY}"
                 f" TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY"
                 f" SETTINGS non_replicated_deduplication_window = {dedup_window}, ttl_only_drop_parts = 1")
        tail = (f" TTL minute + INTERVAL {ttl_days} DAY" if ttl_days else "")
        rollups = (f"CREATE TABLE IF NOT EXISTS {db}.rollup_minute ({rollup}) ENGINE = SummingMergeTree"
                   f" PARTITION BY toYYYYMM(minute) ORDER BY (agent_id, minute, model, span_role){tail}"
                   f" SETTINGS non_replicated_deduplication_window = {dedup_window}")
        ev = (f"CREATE TABLE IF NOT EXISTS {db}.events ({events}) ENGINE = MergeTree ORDER BY (kind, time_ns)"
              f" TTL toDateTime(intDiv(time_ns, 1000000000)) + INTERVAL {ttl_days} DAY"
              f" SETTINGS non_replicated_deduplication_window = {dedup_window}")
    else:
        spans = (f"CREATE TABLE IF NOT EXISTS {db}.{RAW_SPANS} (\n  {body}\n) ENGINE = ReplacingMergeTree"
                 f" PARTITION BY tuple() {SPANS_KEY}")
        rollups = (f"CREATE TABLE IF NOT EXISTS {db}.rollup_minute ({rollup}) ENGINE = SummingMergeTree"
                   " PARTITION BY toYYYYMM(minute) ORDER BY (agent_id, minute, model, span_role)")
        ev = f"CREATE TABLE IF NOT EXISTS {db}.events ({events}) ENGINE = MergeTree PARTITION BY tuple() ORDER BY (kind, time_ns)"
    view = (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_minute_mv TO {db}.rollup_minute AS "
            + ROLLUP_SELECT.format(db=db, spans=RAW_SPANS))
    return [f"CREATE DATABASE IF NOT EXISTS {db}", spans, rollups, view, spans_view(db), ev,
            _signal_table(db, "metrics", _METRIC_TYPES, "service_name, metric_name, time", current, ttl_days, dedup_window),
            _signal_table(db, "logs", _LOG_TYPES, "service_name, time", current, ttl_days, dedup_window,
                          "INDEX trace_id_bloom trace_id TYPE bloom_filter(0.001) GRANULARITY 4")]


def _signal_table(db: str, name: str, types: dict[str, str], order: str, current: bool, ttl_days: int,
                  dedup_window: int, index: str = "") -> str:
    """``metrics`` or ``logs``: a MergeTree ordered by service, (metric,) time; on current ClickHouse
    partitioned by day (``time``, from ``time_ns``) with a TTL, on 18.16 one partition, as spans_raw."""
    cols = []
    for column, kind in types.items():
        if kind == "map":
            kind = _map_type(current)
        elif kind.startswith("lc "):
            kind = f"LowCardinality({kind[3:]})" if current else kind[3:]
        cols.append(f"{column} {kind}")
    if current:
        cols.append("time DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(time_ns)")
    else:
        cols.append("time DateTime MATERIALIZED toDateTime(intDiv(time_ns, 1000000000))")
    cols.append("batch_id String")
    if current and index:
        cols.append(index)
    body = ",\n  ".join(cols)
    if current:
        return (f"CREATE TABLE IF NOT EXISTS {db}.{name} (\n  {body}\n) ENGINE = MergeTree PARTITION BY toDate(time)"
                f" ORDER BY ({order}) TTL toDateTime(time) + INTERVAL {ttl_days} DAY"
                f" SETTINGS non_replicated_deduplication_window = {dedup_window}, ttl_only_drop_parts = 1")
    return f"CREATE TABLE IF NOT EXISTS {db}.{name} (\n  {body}\n) ENGINE = MergeTree PARTITION BY tuple() ORDER BY ({order})"


def spans_view(db: str) -> str:
    """The view ``spans``: one row per span (``FINAL``), with every column of ``spans_raw`` when it is made."""
    return f"CREATE VIEW IF NOT EXISTS {db}.spans AS SELECT *, start_time FROM {db}.{RAW_SPANS} FINAL"


LEGACY_SPANS_SQL = "SELECT engine FROM system.tables WHERE database = %(db)s AND name = 'spans'"


def legacy_spans(engine: str | None) -> bool:
    """Whether ``spans`` (its engine, from ``LEGACY_SPANS_SQL``; None: no such table) is the MergeTree table
    an older version created, which keeps every copy of a span: ClickHouse cannot change a table's engine,
    so that table stays until moved (README: "Tables of an older version")."""
    return engine is not None and engine != "View"
