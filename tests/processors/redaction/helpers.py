"""Batches in the canonical schemas and a redaction processor built as the pipeline builds it."""

from __future__ import annotations

import pyarrow as pa

from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.schema import LOG_SCHEMA, SPAN_SCHEMA
from agent_sre.processors.redaction.config import RedactionConfig
from agent_sre.processors.redaction.factory import RedactionProcessor, factory


def processor(telemetry: Telemetry | None = None, **settings) -> RedactionProcessor:
    p = factory.create(Settings(ComponentID("redaction"), Kind.PROCESSOR, telemetry or Telemetry()),
                       RedactionConfig.model_validate(settings))
    assert isinstance(p, RedactionProcessor)
    return p


def spans(*attributes: dict, resource: dict | None = None, events: list | None = None,
          status_message: str | None = None) -> pa.Table:
    n = len(attributes)
    columns: dict = {f.name: [None] * n for f in SPAN_SCHEMA}
    columns["trace_id"] = ["0" * 32] * n
    columns["span_id"] = [f"{i:016x}" for i in range(n)]
    columns["attributes"] = [list(a.items()) for a in attributes]
    columns["resource_attributes"] = [list((resource or {}).items())] * n
    columns["events"] = events or [None] * n
    columns["status_message"] = [status_message] * n
    return pa.Table.from_pydict(columns, schema=SPAN_SCHEMA)


def event(name: str, **attributes: str) -> dict:
    return {"time_ns": 1, "name": name, "attributes": list(attributes.items()), "dropped_attributes_count": 0}


def logs(*records: tuple[str | None, str | None, dict]) -> pa.Table:
    """Log records as (event_name, body, attributes)."""
    n = len(records)
    columns: dict = {f.name: [None] * n for f in LOG_SCHEMA}
    columns["event_name"] = [r[0] for r in records]
    columns["body"] = [r[1] for r in records]
    columns["attributes"] = [list(r[2].items()) for r in records]
    return pa.Table.from_pydict(columns, schema=LOG_SCHEMA)


def attrs(table: pa.Table, column: str = "attributes") -> list[dict]:
    return [dict(row) if row is not None else None for row in table.column(column).to_pylist()]
