"""The debug exporter: logs a one-line summary per batch, or every span with verbosity detailed; a line
per derived event (alerts, budgets, decisions, incidents) in an events pipeline."""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel
from agent_sre.pipeline.pdata.schema import signal_of


class DebugExporterConfig(ConfigModel):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"


class DebugExporter(Exporter):
    config: DebugExporterConfig

    def export(self, batch: pa.Table) -> ExportResult:
        signal = signal_of(batch.schema)
        if signal == "events":  # few and each one matters: a line per event
            for row in batch.select(["kind", "state", "severity", "summary"]).to_pylist():
                self.logger.info("event %s %s (%s): %s", row["kind"], row["state"], row["severity"], row["summary"])
            return SUCCESS
        if signal != "traces":
            self.logger.info("%s: %d %s", signal, batch.num_rows, "data points" if signal == "metrics" else "records")
            return SUCCESS
        errors = pc.sum(pc.equal(batch.column("status_code"), "error")).as_py() or 0
        agents = pc.count_distinct(batch.column("agent_id")).as_py()
        self.logger.info("TracesExporter: %d spans, %d errors, %d agents, %d traces", batch.num_rows, errors,
                         agents, pc.count_distinct(batch.column("trace_id")).as_py())
        if self.config.verbosity == "detailed":
            for row in batch.to_pylist():
                self.logger.info("span %s", json.dumps(row, default=str, separators=(",", ":")))
        elif self.config.verbosity == "normal":
            for row in batch.select(["trace_id", "span_id", "name", "span_role", "agent_id", "model",
                                     "status_code", "duration_ns"]).to_pylist():
                self.logger.info("span %s", " ".join(f"{k}={v}" for k, v in row.items()))
        return SUCCESS


factory = Factory(
    type="debug",
    kind=Kind.EXPORTER,
    config_model=DebugExporterConfig,
    create=DebugExporter,
    signals=("traces", "metrics", "logs", "events"),
    description="Logs a summary line per batch (basic), one line per span (normal) or every span in full "
                "(detailed); a line per derived event.",
)
