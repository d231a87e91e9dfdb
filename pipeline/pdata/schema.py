"""The canonical span schema: one Arrow schema for the whole project.

Every batch that moves between components is a ``pyarrow.Table`` in ``SPAN_SCHEMA``.
Identifiers are lowercase hex strings (as in OTLP/JSON), so SQL joins and the
JSON encoding agree; times are integer nanoseconds since the Unix epoch.

The canonical agent columns (``AGENT_COLUMNS``) are nullable and are filled by
the normalisation table in ``agent_sre.processors.agent_semconv``.  Attributes
that map to no column stay in ``attributes``; nothing the client sent is dropped.
"""

from __future__ import annotations

import pyarrow as pa

STRING_MAP = pa.map_(pa.string(), pa.string())

EVENT_TYPE = pa.struct(
    [
        ("time_ns", pa.int64()),
        ("name", pa.string()),
        ("attributes", STRING_MAP),
        ("dropped_attributes_count", pa.int64()),
    ]
)

LINK_TYPE = pa.struct(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("trace_state", pa.string()),
        ("attributes", STRING_MAP),
        ("dropped_attributes_count", pa.int64()),
        ("flags", pa.int64()),
    ]
)

IDENTITY_FIELDS = [
    pa.field("trace_id", pa.string(), nullable=False),
    pa.field("span_id", pa.string(), nullable=False),
    pa.field("parent_span_id", pa.string()),
    pa.field("trace_state", pa.string()),
    pa.field("flags", pa.int64()),
    pa.field("name", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("start_ns", pa.int64()),
    pa.field("end_ns", pa.int64()),
    pa.field("duration_ns", pa.int64()),
    pa.field("status_code", pa.string()),
    pa.field("status_message", pa.string()),
]

RESOURCE_FIELDS = [
    pa.field("service_name", pa.string()),
    pa.field("service_version", pa.string()),
    pa.field("environment", pa.string()),
    pa.field("scope_name", pa.string()),
    pa.field("scope_version", pa.string()),
]

# Canonical agent columns, in order.  Types are what SQL users expect to sum,
# compare and group by; normalisation casts attribute strings to these types.
AGENT_FIELDS = [
    pa.field("agent_id", pa.string()),
    pa.field("agent_name", pa.string()),
    pa.field("agent_version", pa.string()),
    pa.field("session_id", pa.string()),
    pa.field("task_name", pa.string()),
    pa.field("task_success", pa.bool_()),
    pa.field("span_role", pa.string()),
    pa.field("tool_name", pa.string()),
    pa.field("model", pa.string()),
    pa.field("provider", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cached_tokens", pa.int64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("delegation_from", pa.string()),
    pa.field("delegation_to", pa.string()),
    pa.field("trust_score", pa.float64()),
    pa.field("policy_name", pa.string()),
    pa.field("policy_decision", pa.string()),
    pa.field("error_type", pa.string()),
]
AGENT_COLUMNS = [f.name for f in AGENT_FIELDS]

REST_FIELDS = [
    pa.field("attributes", STRING_MAP),
    pa.field("resource_attributes", STRING_MAP),
    pa.field("scope_attributes", STRING_MAP),
    pa.field("events", pa.list_(EVENT_TYPE)),
    pa.field("links", pa.list_(LINK_TYPE)),
    pa.field("dropped_attributes_count", pa.int64()),
    pa.field("dropped_events_count", pa.int64()),
    pa.field("dropped_links_count", pa.int64()),
]

SPAN_SCHEMA = pa.schema(IDENTITY_FIELDS + RESOURCE_FIELDS + AGENT_FIELDS + REST_FIELDS)

# Values the enumerated columns take.
SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUS_CODES = ("unset", "ok", "error")
SPAN_ROLES = ("agent_task", "llm", "tool", "delegation", "policy_check", "retrieval", "other")


def empty_spans() -> pa.Table:
    """A zero-row table in the canonical schema."""
    return SPAN_SCHEMA.empty_table()


# Events (the `events` signal): what processors derive, one row each (see pipeline/component/events.py for
# who publishes which kind).  ``fingerprint`` identifies an event across its firing and resolved rows
# (dedup and PagerDuty's dedup_key); ``labels`` are what channels group and route by.
EVENT_SCHEMA = pa.schema([
    pa.field("time_ns", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # alert | budget | decision | anomaly | circuit | incident
    pa.field("state", pa.string(), nullable=False),  # "firing" or "resolved"
    pa.field("severity", pa.string()),  # "page", "ticket" or "info"
    pa.field("name", pa.string()),  # e.g. the burn-rate rule "page:14.4x:1h/5m", or "kill"
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("summary", pa.string()),
    pa.field("labels", STRING_MAP),
    pa.field("started_ns", pa.int64()),  # when the event began firing
])


# Metrics (the `metrics` signal): one row per data point, of any metric type.  Number points fill
# `value` (and `int_value` when the point was an integer); histograms, exponential histograms and
# summaries fill their own columns.  Exemplars are kept as OTLP/JSON text.
QUANTILE_TYPE = pa.struct([("quantile", pa.float64()), ("value", pa.float64())])
METRIC_SCHEMA = pa.schema([
    pa.field("time_ns", pa.int64()),
    pa.field("start_time_ns", pa.int64()),
    pa.field("metric_name", pa.string()),
    pa.field("description", pa.string()),
    pa.field("unit", pa.string()),
    pa.field("metric_type", pa.string()),  # gauge | sum | histogram | exponential_histogram | summary
    pa.field("temporality", pa.string()),  # unspecified | delta | cumulative (sums and histograms)
    pa.field("is_monotonic", pa.bool_()),  # sums
    pa.field("value", pa.float64()),
    pa.field("int_value", pa.int64()),
    pa.field("count", pa.int64()),
    pa.field("sum", pa.float64()),
    pa.field("min", pa.float64()),
    pa.field("max", pa.float64()),
    pa.field("bucket_counts", pa.list_(pa.int64())),
    pa.field("explicit_bounds", pa.list_(pa.float64())),
    pa.field("scale", pa.int64()),
    pa.field("zero_count", pa.int64()),
    pa.field("zero_threshold", pa.float64()),
    pa.field("positive_offset", pa.int64()),
    pa.field("positive_bucket_counts", pa.list_(pa.int64())),
    pa.field("negative_offset", pa.int64()),
    pa.field("negative_bucket_counts", pa.list_(pa.int64())),
    pa.field("quantiles", pa.list_(QUANTILE_TYPE)),
    pa.field("flags", pa.int64()),
    pa.field("exemplars", pa.string()),
    pa.field("attributes", STRING_MAP),
    pa.field("metric_metadata", STRING_MAP),
    pa.field("service_name", pa.string()),
    pa.field("resource_attributes", STRING_MAP),
    pa.field("scope_name", pa.string()),
    pa.field("scope_version", pa.string()),
    pa.field("scope_attributes", STRING_MAP),
])

# Logs (the `logs` signal): one row per log record.  GenAI events (prompts, completions, tool
# messages: `event_name` gen_ai.*) land here with the trace_id/span_id of the span they belong to,
# so `logs JOIN spans USING (trace_id, span_id)` finds their span.  `body` is the string, or the
# value as stored in attribute maps (JSON for arrays and maps); `body_type` says which.
LOG_SCHEMA = pa.schema([
    pa.field("time_ns", pa.int64()),
    pa.field("observed_time_ns", pa.int64()),
    pa.field("severity_number", pa.int64()),
    pa.field("severity_text", pa.string()),
    pa.field("event_name", pa.string()),
    pa.field("body", pa.string()),
    pa.field("body_type", pa.string()),  # string | int | double | bool | bytes | array | kvlist | empty
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    pa.field("flags", pa.int64()),
    pa.field("attributes", STRING_MAP),
    pa.field("dropped_attributes_count", pa.int64()),
    pa.field("service_name", pa.string()),
    pa.field("resource_attributes", STRING_MAP),
    pa.field("scope_name", pa.string()),
    pa.field("scope_version", pa.string()),
    pa.field("scope_attributes", STRING_MAP),
])


def signal_of(schema: pa.Schema) -> str:
    """Which signal a batch belongs to, from its columns (asked several times per batch: one look-up per
    name, ~1 µs, where a set of ``schema.names`` built the ~50 names as Python strings, ~7 µs)."""
    for name, signal in (("metric_name", "metrics"), ("severity_number", "logs"), ("fingerprint", "events")):
        if schema.get_field_index(name) >= 0 or len(schema.get_all_field_indices(name)) > 1:
            return signal
    return "traces"
