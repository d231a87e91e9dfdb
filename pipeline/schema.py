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


# Events (the `events` signal): what processors derive, one row each (see pipeline/events.py for
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
