"""datadog: the agents' metrics through the Metrics API v2, events through the Events API.

    traces  spans are counted column-wise per (agent, model, span role) and every ``interval``
            sent as ``count`` series (spans, errors, tokens, cost; with their interval) plus
            ``gauge`` series (mean span duration; each SLO's SLI value, budget left and burn
            rates from the slo processors) to ``POST https://api.<site>/api/v2/series`` with
            ``DD-API-KEY``, gzip-compressed, at most 500 series per request.
    events  alerts, incidents, decisions (any event kind) to ``POST /api/v1/events``: title,
            text (the summary), ``alert_type`` (error: page firing, warning: ticket firing, info,
            success: resolved), tags from the labels, ``aggregation_key`` = the fingerprint.

Traces go to Datadog through the Datadog Agent's OTLP intake: the ``otlp`` or ``otlphttp``
exporter with ``preset: datadog_agent``.  Payloads are built here as the v2 API documents them
(integer types 0-3, timestamps in seconds, tags as ``key:value``); the tests validate them with
the official ``datadog-api-client`` models (a 95 MB package, so a test dependency only).
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from agent_sre.exporters.helper.counts import SpanCounts
from agent_sre.exporters.helper.http import RETRYABLE_HTTP, retry_after_seconds
from agent_sre.exporters.helper.sender import AggregatingExporter, HelperConfig
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.events import EVENT_KINDS
from agent_sre.pipeline.pdata.schema import EVENT_SCHEMA

COUNT, RATE, GAUGE = 1, 2, 3  # MetricIntakeType
SERIES_SCHEMA = pa.schema([("metric", pa.string()), ("type", pa.int8()), ("timestamp", pa.int64()),
                           ("value", pa.float64()), ("interval", pa.int64()), ("tags", pa.list_(pa.string()))])
MAX_SERIES = 500  # per request: payloads must stay under 500 KB
ALERT_TYPE = {("firing", "page"): "error", ("firing", "ticket"): "warning", ("firing", "info"): "info"}


class DatadogMetrics(ConfigModel):
    enabled: bool = True
    interval: Duration = Field(default="60s", gt=0)
    prefix: str = "agent_sre"
    tags: list[str] = []  # added to every series, e.g. env:prod


class DatadogEvents(ConfigModel):
    enabled: bool = True
    kinds: list[str] = list(EVENT_KINDS)
    severities: list[str] = ["page", "ticket"]


class DatadogConfig(HelperConfig):
    api_key: str
    site: str = "datadoghq.com"  # us3.datadoghq.com, us5..., datadoghq.eu, ap1.datadoghq.com, ddog-gov.com
    api_url: str | None = None  # default https://api.<site>
    metrics: DatadogMetrics = DatadogMetrics()
    events: DatadogEvents = DatadogEvents()

    @property
    def base(self) -> str:
        return (self.api_url or f"https://api.{self.site}").rstrip("/")


def _tags(labels: dict[str, str]) -> list[str]:
    return [f"{k}:{v}" for k, v in labels.items() if v]


class DatadogExporter(AggregatingExporter):
    config: DatadogConfig

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._counts = SpanCounts(("agent_id", "model", "span_role"))

    @property
    def flush_interval(self) -> float | None:
        return self.config.metrics.interval if self.config.metrics.enabled else None

    # --- traces in: counted, not queued ------------------------------------------------------

    def export(self, batch: pa.Table) -> ExportResult:
        if batch.schema.equals(EVENT_SCHEMA, check_metadata=False):
            wanted = self._wanted_events(batch)
            return super().export(wanted) if wanted.num_rows else SUCCESS
        if self.config.metrics.enabled and "span_role" in batch.schema.names:
            self._counts.add(batch)
        return SUCCESS

    def _wanted_events(self, batch: pa.Table) -> pa.Table:
        ev = self.config.events
        if not ev.enabled:
            return batch.slice(0, 0)
        keep = pc.and_(pc.is_in(batch.column("kind"), pa.array(ev.kinds)),
                       pc.or_(pc.equal(batch.column("state"), "resolved"),
                              pc.is_in(batch.column("severity"), pa.array(ev.severities))))
        return batch.filter(pc.fill_null(keep, False))

    def flush(self) -> int:
        """Queue the series of the interval that ended now; returns how many."""
        if not self.config.metrics.enabled:
            return 0
        acc = self._counts.take()
        now = int(self.clock())
        interval = int(self.config.metrics.interval)
        p, base_tags = self.config.metrics.prefix, self.config.metrics.tags
        rows: list[tuple[str, int, float, int, list[str]]] = []
        for (agent, model, role), s in acc.items():
            tags = base_tags + _tags({"agent_id": agent, "span_role": role})
            rows += [(f"{p}.spans", COUNT, s.spans, interval, tags), (f"{p}.errors", COUNT, s.errors, interval, tags),
                     (f"{p}.span.duration.avg", GAUGE, s.mean_duration_ms, 0, tags)]
            if role == "llm":
                llm_tags = base_tags + _tags({"agent_id": agent, "model": model})
                rows += [(f"{p}.llm.tokens", COUNT, s.input_tokens, interval, llm_tags + ["token_type:input"]),
                         (f"{p}.llm.tokens", COUNT, s.output_tokens, interval, llm_tags + ["token_type:output"]),
                         (f"{p}.llm.cost_usd", COUNT, s.cost_usd, interval, llm_tags)]
        rows += self._slo_rows(p, base_tags)
        if not rows:
            return 0
        table = pa.table({"metric": [r[0] for r in rows], "type": pa.array([r[1] for r in rows], pa.int8()),
                          "timestamp": [now] * len(rows), "value": [float(r[2]) for r in rows],
                          "interval": [r[3] for r in rows], "tags": [r[4] for r in rows]}, schema=SERIES_SCHEMA)
        for start in range(0, table.num_rows, MAX_SERIES):
            super().export(table.slice(start, MAX_SERIES))
        return table.num_rows

    def _slo_rows(self, p: str, base_tags: list[str]) -> list:
        rows = []
        for proc in self.slo_processors():
            for r in proc.last_report:
                tags = base_tags + _tags({"slo": r["slo"], "agent_id": r["agent_id"],
                                          "agent_version": r.get("agent_version") or ""})
                if r["sli_value"] is not None:
                    rows.append((f"{p}.slo.sli_value", GAUGE, r["sli_value"], 0, tags))
                rows.append((f"{p}.slo.budget_remaining", GAUGE, r["budget_remaining"], 0, tags))
                rows += [(f"{p}.slo.burn_rate", GAUGE, b, 0, tags + [f"window:{w}"]) for w, b in r["burn_rates"].items()]
        return rows

    # --- out: one attempt ------------------------------------------------------------------

    def send(self, batch: pa.Table) -> ExportResult:
        if batch.schema.equals(EVENT_SCHEMA, check_metadata=False):
            for ev in batch.to_pylist():  # v1 takes one event per request; events are few
                result = self._post("/api/v1/events", event_payload(ev), compress=False)
                if not result.ok:
                    return result
            return SUCCESS
        return self._post("/api/v2/series", series_payload(batch), compress=True)

    def _post(self, path: str, payload: dict, compress: bool) -> ExportResult:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"DD-API-KEY": self.config.api_key, "Content-Type": "application/json", "Accept": "application/json"}
        if compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        req = urllib.request.Request(self.config.base + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                resp.read()
                return SUCCESS
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300]
            message = f"HTTP {exc.code} from {self.config.base}{path}: {text!r}"
            if exc.code in RETRYABLE_HTTP or exc.code in (408, 500):
                return ExportResult(ExportStatus.RETRYABLE, message, retry_after_seconds(exc.headers.get("Retry-After")))
            return ExportResult(ExportStatus.PERMANENT, message)
        except (urllib.error.URLError, OSError) as exc:
            return ExportResult(ExportStatus.RETRYABLE, f"{self.config.base}{path}: {exc}")

    def describe(self) -> list[str]:
        return [f"{self.id}: Datadog metrics and events to {self.config.base}"]


def series_payload(batch: pa.Table) -> dict:
    series = []
    for r in batch.to_pylist():  # at most MAX_SERIES rows
        s = {"metric": r["metric"], "type": r["type"], "points": [{"timestamp": r["timestamp"], "value": r["value"]}],
             "tags": r["tags"]}
        if r["type"] in (COUNT, RATE):
            s["interval"] = r["interval"]
        series.append(s)
    return {"series": series}


def event_payload(ev: dict) -> dict:
    labels = dict(ev["labels"] or [])
    alert_type = "success" if ev["state"] == "resolved" else ALERT_TYPE.get((ev["state"], ev["severity"]), "info")
    return {"title": f"[agent-sre {ev['kind']}] {ev['name']} {ev['state']}"[:500],
            "text": (ev["summary"] or "")[:4000], "alert_type": alert_type,
            "priority": "normal" if ev["severity"] == "page" else "low",
            "tags": _tags({"kind": ev["kind"], "severity": ev["severity"] or "", **labels})[:100],
            "aggregation_key": ev["fingerprint"][:100], "source_type_name": "agent-sre",
            "date_happened": ev["time_ns"] // 1_000_000_000}


factory = Factory(type="datadog", kind=Kind.EXPORTER, config_model=DatadogConfig, create=DatadogExporter,
                  signals=("traces", "events"),
                  description="Agent metrics to Datadog's v2 series API, alerts and incidents as Datadog events.")
