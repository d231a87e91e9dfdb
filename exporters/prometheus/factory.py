"""prometheus: a pull endpoint with the agents' SLOs, SLI counters, RED metrics and GenAI metrics.

On every scrape: the SLO report of each ``slo`` processor (SLI value, objective,
budget remaining, burn rate per window, alerts firing) and the SLI event
counters summed from the rollups (``agent_sre_sli_events_total``,
``agent_sre_sli_good_events_total``: what generated Prometheus rules compute
burn rates from).  Per exported batch, column-wise: RED metrics for agent spans
(calls and duration by agent, role, model, tool and status) and the OpenTelemetry
GenAI client histograms (token usage, operation duration).
"""

from __future__ import annotations

import asyncio
import threading

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from pydantic import Field

from agent_sre.exporters.prometheus.histograms import DURATION_BUCKETS, TOKEN_BUCKETS, HistogramSet
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, Factory, Kind
from agent_sre.pipeline.config import ConfigModel, HostPort

RED_LABELS = ("agent_id", "span_role", "model", "tool_name", "status_code")
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


class PrometheusExporterConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:9464"
    # Label sets per metric; spans beyond are counted in agent_sre_prometheus_dropped_series_spans_total.
    max_series: int = Field(default=2000, gt=0)


class PrometheusExporter(Exporter):
    config: PrometheusExporterConfig

    def __init__(self, settings, config: PrometheusExporterConfig):
        super().__init__(settings, config)
        self._lock = threading.Lock()
        self._host = None
        n = config.max_series
        self.calls = HistogramSet("agent_sre_span_duration_seconds", "Agent spans by agent, role, model, tool and "
                                  "status: count (calls) and duration.", RED_LABELS, DURATION_BUCKETS, n)
        self.tokens = HistogramSet("gen_ai_client_token_usage", "Tokens used per GenAI operation "
                                   "(OpenTelemetry gen_ai.client.token.usage).", (*GENAI_LABELS, "gen_ai_token_type"),
                                   TOKEN_BUCKETS, n)
        self.durations = HistogramSet("gen_ai_client_operation_duration_seconds", "GenAI operation duration "
                                      "(OpenTelemetry gen_ai.client.operation.duration).", GENAI_LABELS,
                                      DURATION_BUCKETS, n)

    def _start(self, host) -> None:
        self._host = host
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

        async def metrics(request: web.Request) -> web.Response:
            body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
            return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        host.http.add_route(self.config.endpoint, "GET", "/metrics", metrics)

    def describe(self) -> list[str]:
        return [f"Prometheus metrics (SLOs, SLIs, RED, GenAI) on http://{self.config.endpoint}/metrics"]

    def export(self, batch: pa.Table) -> ExportResult:
        seconds = pc.divide(batch.column("duration_ns").cast(pa.float64()), 1e9)
        red = [batch.column(c) for c in RED_LABELS]
        llm = pc.equal(batch.column("span_role"), "llm").combine_chunks()
        llm = pc.fill_null(llm, False)
        with self._lock:
            self.calls.observe(red, seconds)
            if pc.any(llm).as_py():
                g = batch.filter(llm)
                attrs = g.column("attributes")
                op = pc.map_lookup(attrs, "gen_ai.operation.name", "first")
                genai = [op, g.column("provider"), g.column("model")]
                self.durations.observe(genai, pc.divide(g.column("duration_ns").cast(pa.float64()), 1e9))
                for kind, col in (("input", "input_tokens"), ("output", "output_tokens")):
                    self.tokens.observe([*genai, pa.array([kind] * g.num_rows)], g.column(col))
        return SUCCESS

    # --- the scrape ------------------------------------------------------------------

    def collect(self):
        with self._lock:
            families = [self.calls.family(), self.tokens.family(), self.durations.family()]
            dropped = self.calls.dropped + self.tokens.dropped + self.durations.dropped
        yield from families
        d = CounterMetricFamily("agent_sre_prometheus_dropped_series_spans", "Observations not recorded because "
                                "their metric reached max_series label sets.")
        d.add_metric([], dropped)
        yield d
        if self._host is not None:
            yield from self._sli_counters()
            yield from self._slo_gauges()

    def _sli_counters(self):
        stores = [e.store for e in self._host.find("exporters", type_="duckdb") if e.store is not None]
        events = CounterMetricFamily("agent_sre_sli_events", "SLI events (the rollups' totals).",
                                     labels=["sli", "agent_id", "agent_version"])
        good = CounterMetricFamily("agent_sre_sli_good_events", "Good SLI events.",
                                   labels=["sli", "agent_id", "agent_version"])
        for store in stores:
            for sli, agent, version, g, t in store.read(
                    "SELECT sli, agent_id, agent_version, sum(good), sum(total) FROM sli_minutes GROUP BY ALL"):
                events.add_metric([sli, agent, version], t)
                good.add_metric([sli, agent, version], g)
        yield events
        yield good

    def _slo_gauges(self):
        labels = ["slo", "sli", "agent_id"]
        value = GaugeMetricFamily("agent_sre_slo_sli_value", "SLI value over the objective's window.", labels=labels)
        objective = GaugeMetricFamily("agent_sre_slo_objective", "The objective's target.", labels=labels)
        budget = GaugeMetricFamily("agent_sre_slo_error_budget_remaining", "Error budget left (0..1).", labels=labels)
        burn = GaugeMetricFamily("agent_sre_slo_burn_rate", "Burn rate over a window.", labels=[*labels, "window"])
        firing = GaugeMetricFamily("agent_sre_slo_alert_firing", "1 while a burn-rate rule fires.",
                                   labels=[*labels, "rule"])
        status = GaugeMetricFamily("agent_sre_slo_status", "1 for the SLO's current status.",
                                   labels=[*labels, "status"])
        for proc in self._host.find("processors", type_="slo"):
            for row in proc.last_report:
                key = [row["slo"], row["sli"], row["agent_id"]]
                if row["sli_value"] is not None:
                    value.add_metric(key, row["sli_value"])
                objective.add_metric(key, row["target"])
                budget.add_metric(key, row["budget_remaining"])
                for window, rate in row["burn_rates"].items():
                    burn.add_metric([*key, window], rate)
                for rule in row["firing"]:
                    firing.add_metric([*key, rule], 1)
                status.add_metric([*key, row["status"]], 1)
        yield from (value, objective, budget, burn, firing, status)

    def _shutdown(self) -> None:
        if self._host is not None:
            self._host.http.remove_routes(self.config.endpoint, ["/metrics"])


class _Collector:
    """prometheus_client's Collector protocol (``collect``); kept apart because a Collector's
    ``describe`` means something else than a component's."""

    def __init__(self, exporter: PrometheusExporter):
        self.exporter = exporter

    def collect(self):
        return self.exporter.collect()


factory = Factory(
    type="prometheus",
    kind=Kind.EXPORTER,
    config_model=PrometheusExporterConfig,
    create=PrometheusExporter,
    description="Pull endpoint: SLO gauges, SLI event counters, RED metrics and OpenTelemetry GenAI histograms.",
)
