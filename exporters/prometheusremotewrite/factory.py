"""prometheusremotewrite: pushes the agents' metrics (SLOs, SLI counters, RED, GenAI) to a
Prometheus-compatible remote-write endpoint (Prometheus, Mimir, Thanos, VictoriaMetrics...).

The same metrics as the ``prometheus`` pull exporter (``exporters/prometheus/metrics.py``),
sent every ``interval`` as one remote-write 1.0 request (protobuf + snappy).
"""

from __future__ import annotations

import time

import pyarrow as pa
from pydantic import Field

from agent_sre.exporters.prometheus.cardinality import MAX_SERIES_PER_METRIC
from agent_sre.exporters.prometheus.metrics import agent_metrics
from agent_sre.exporters.prometheusremotewrite.remote_write import encode, push, write_request
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.periodic import PeriodicWorker


class RemoteWriteConfig(ConfigModel):
    endpoint: str = Field(pattern=r"^https?://")  # e.g. http://127.0.0.1:9090/api/v1/write
    interval: Duration = Field(default="15s", gt=0)
    timeout: Duration = Field(default="10s", gt=0)
    max_attempts: int = Field(default=5, ge=1)
    headers: dict[str, str] = {}
    max_series_per_metric: int = Field(default=MAX_SERIES_PER_METRIC, gt=0)


class RemoteWriteExporter(Exporter):
    config: RemoteWriteConfig

    def __init__(self, settings, config: RemoteWriteConfig):
        super().__init__(settings, config)
        self.metrics = agent_metrics(settings, config.max_series_per_metric)
        self._host = None
        self._worker = PeriodicWorker(f"{self.id}-push", config.interval, self.push_now, self.logger)
        t = settings.telemetry
        self._sent = t.exporter_sent_points.labels(str(settings.id))
        self._failed = t.exporter_failed_points.labels(str(settings.id))

    def _start(self, host) -> None:
        self._host = host
        self.metrics.start()
        self._worker.start()

    def describe(self) -> list[str]:
        return [f"Prometheus remote write to {self.config.endpoint} every {self.config.interval:g}s"]

    def export(self, batch: pa.Table) -> ExportResult:
        self.metrics.observe(batch)
        return SUCCESS

    def push_now(self) -> bool:
        req = write_request(self.metrics.families(self._host), int(time.time() * 1000))
        points = len(req.timeseries)
        result = push(self.config.endpoint, encode(req), self.config.headers, self.config.timeout,
                      self.config.max_attempts)
        if result.ok:
            self._sent.inc(points)
        else:
            self._failed.inc(points)
            self.logger.error("remote write of %d series to %s failed after %d attempt(s) (HTTP %s): %s", points,
                              self.config.endpoint, result.attempts, result.status or "no answer", result.message)
        return result.ok

    def _shutdown(self) -> None:
        self._worker.stop(timeout=self.config.timeout * self.config.max_attempts + 5)
        self.metrics.stop()
        try:
            self.push_now()  # the last values, so a stop does not lose the final interval
        except Exception:  # noqa: BLE001
            self.logger.exception("final remote write failed")


factory = Factory(
    type="prometheusremotewrite",
    kind=Kind.EXPORTER,
    config_model=RemoteWriteConfig,
    create=RemoteWriteExporter,
    description="Pushes SLO gauges, SLI counters, RED and GenAI metrics with Prometheus remote write 1.0.",
)
