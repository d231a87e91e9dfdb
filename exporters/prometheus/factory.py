"""prometheus: a pull endpoint with the agents' SLOs, SLI counters, RED metrics and GenAI metrics.

On every scrape: the SLO report of each ``slo`` processor (SLI value, objective,
budget remaining, burn rate per window, alerts firing) and the SLI event
counters summed from the rollups (``agent_sre_sli_events_total``,
``agent_sre_sli_good_events_total``: what generated Prometheus rules compute
burn rates from).  Per exported batch, column-wise: RED metrics for agent spans
(calls and duration by agent, role, model, tool and status) and the OpenTelemetry
GenAI client histograms (token usage, operation duration).  Each metric keeps at most
``max_series_per_metric`` distinct values of its client-data labels; later ones fold into
its overflow series (``cardinality.py``).
"""

from __future__ import annotations

import asyncio

import pyarrow as pa
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from pydantic import Field

from agent_sre.exporters.prometheus.cardinality import MAX_SERIES_PER_METRIC
from agent_sre.exporters.prometheus.metrics import agent_metrics
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel, HostPort


class PrometheusExporterConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:8889"  # the Collector's prometheus exporter convention
    # Distinct values of each metric's client-data labels; later ones fold into its overflow series.
    max_series_per_metric: int = Field(default=MAX_SERIES_PER_METRIC, gt=0)


class PrometheusExporter(Exporter):
    config: PrometheusExporterConfig

    def __init__(self, settings, config: PrometheusExporterConfig):
        super().__init__(settings, config)
        self.metrics = agent_metrics(settings, config.max_series_per_metric)
        self._host = None

    def _start(self, host) -> None:
        self._host = host
        self.metrics.start()
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

        async def metrics(request: web.Request) -> web.Response:
            body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
            return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        host.http.add_route(self.config.endpoint, "GET", "/metrics", metrics)

    def describe(self) -> list[str]:
        return [f"Prometheus metrics (SLOs, SLIs, RED, GenAI) on http://{self.config.endpoint}/metrics"]

    def export(self, batch: pa.Table) -> ExportResult:
        self.metrics.observe(batch)
        return SUCCESS

    def _shutdown(self) -> None:
        self.metrics.stop()
        if self._host is not None:
            self._host.http.remove_routes(self.config.endpoint, ["/metrics"])


class _Collector:
    """prometheus_client's Collector protocol (``collect``); kept apart because a Collector's
    ``describe`` means something else than a component's."""

    def __init__(self, exporter: PrometheusExporter):
        self.exporter = exporter

    def collect(self):
        return self.exporter.metrics.families(self.exporter._host)


factory = Factory(
    type="prometheus",
    kind=Kind.EXPORTER,
    config_model=PrometheusExporterConfig,
    create=PrometheusExporter,
    description="Pull endpoint: SLO gauges, SLI event counters, RED metrics and OpenTelemetry GenAI histograms.",
)
