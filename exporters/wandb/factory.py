"""wandb: per agent (and version) a Weights & Biases run per period with the SLI and cost metrics.

Every ``interval`` the spans counted since the last one (per agent and version) and the slo
processors' latest values are logged to that agent's run for the current ``period`` (the same
metrics as the mlflow exporter: spans, errors, error_rate, llm_calls, input/output tokens,
cost_usd, mean_duration_ms, slo.<name>.*), one step per interval; a run ends with its period.

``mode: offline`` (the default without an ``api_key``) needs no account: runs are written under
``dir`` and can be uploaded later with ``wandb sync``.  With an ``api_key`` (or ``mode: online``)
they go to W&B (or ``base_url``).  ``wandb`` is an optional dependency:
``pip install 'agent-sre[wandb]'``.
"""

from __future__ import annotations

import os
from typing import Literal

import pyarrow as pa
from pydantic import Field

from agent_sre.exporters.helper.counts import SpanCounts, agent_metrics
from agent_sre.exporters.helper.sender import AggregatingExporter, HelperConfig
from agent_sre.exporters.mlflow.factory import METRICS_SCHEMA, period_label
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.component.config import Duration


class WandbConfig(HelperConfig):
    project: str = "agent-sre"
    entity: str | None = None
    mode: Literal["auto", "offline", "online"] = "auto"  # auto: online when an api_key is given
    api_key: str | None = None
    base_url: str | None = None  # a self-hosted W&B server
    dir: str = "./agent-sre-data/wandb"
    interval: Duration = Field(default="60s", gt=0)
    period: Literal["hour", "day", "week"] = "day"


def _wandb():
    try:
        import wandb
    except ImportError as exc:
        raise ImportError("the wandb exporter needs the wandb package: pip install 'agent-sre[wandb]'") from exc
    return wandb


class WandbExporter(AggregatingExporter):
    config: WandbConfig

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._counts = SpanCounts(("agent_id", "agent_version"))
        self._runs: dict[tuple[str, str, str], object] = {}  # (agent, version, period) -> wandb Run
        self._steps: dict[tuple[str, str, str], int] = {}

    @property
    def flush_interval(self) -> float:
        return self.config.interval

    @property
    def mode(self) -> str:
        return self.config.mode if self.config.mode != "auto" else ("online" if self.config.api_key else "offline")

    def _start_client(self, host) -> None:
        self._wandb = _wandb()
        os.makedirs(self.config.dir, exist_ok=True)
        super()._start_client(host)

    def _stop_client(self) -> None:
        super()._stop_client()
        for run in self._runs.values():
            run.finish()
        self._runs.clear()

    def export(self, batch: pa.Table) -> ExportResult:
        if "span_role" in batch.schema.names:
            self._counts.add(batch)
        return SUCCESS

    def flush(self) -> int:
        rows = [(agent, version, key, value)
                for (agent, version), metrics in agent_metrics(self._counts.take(), self.slo_processors()).items()
                for key, value in metrics.items()]
        if not rows:
            return 0
        ts = int(self.clock() * 1000)
        super().export(pa.table({"agent_id": [r[0] for r in rows], "agent_version": [r[1] for r in rows],
                                 "key": [r[2] for r in rows], "value": [r[3] for r in rows],
                                 "timestamp_ms": [ts] * len(rows), "step": [0] * len(rows)}, schema=METRICS_SCHEMA))
        return len(rows)

    def _run(self, agent: str, version: str, period: str):
        key = (agent, version, period)
        run = self._runs.get(key)
        if run is not None:
            return run
        for old in [k for k in self._runs if k[:2] == (agent, version)]:  # the earlier period is over
            self._runs.pop(old).finish()
        settings = {"mode": self.mode}
        if self.config.base_url:
            settings["base_url"] = self.config.base_url
        if self.config.api_key:
            settings["api_key"] = self.config.api_key
        run = self._wandb.init(project=self.config.project, entity=self.config.entity, dir=self.config.dir,
                               name=f"{agent or '(none)'}@{version or '-'} {period}", reinit="create_new",
                               group=agent or "(none)", job_type="agent-sre",
                               config={"agent_id": agent, "agent_version": version, "period": period},
                               settings=self._wandb.Settings(silent=True, **settings))
        self._runs[key] = run
        return run

    def send(self, batch: pa.Table) -> ExportResult:
        period = period_label(self.config.period, self.clock())
        by_run: dict[tuple[str, str], dict[str, float]] = {}
        for r in batch.to_pylist():  # a row per agent and metric: few
            by_run.setdefault((r["agent_id"], r["agent_version"]), {})[r["key"]] = r["value"]
        try:
            for (agent, version), metrics in by_run.items():
                key = (agent, version, period)
                run = self._run(agent, version, period)
                self._steps[key] = self._steps.get(key, 0) + 1
                run.log(metrics, step=self._steps[key])
        except Exception as exc:  # noqa: BLE001 - wandb's own errors are many; tried again by the helper
            return ExportResult(ExportStatus.RETRYABLE, f"wandb: {exc}")
        return SUCCESS

    def describe(self) -> list[str]:
        where = self.config.dir if self.mode == "offline" else (self.config.base_url or "wandb.ai")
        return [f"{self.id}: W&B runs ({self.mode}) in {where}, project {self.config.project}"]


factory = Factory(type="wandb", kind=Kind.EXPORTER, config_model=WandbConfig, create=WandbExporter,
                  description="Per agent and version a W&B run per period with SLI and cost metrics (offline works).")
