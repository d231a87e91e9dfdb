"""mlflow: per agent (and version) a run per period with SLI and cost metrics, and the traces.

    metrics  spans are counted column-wise per (agent, version); every ``interval`` one
             ``runs/log-batch`` per agent logs spans, errors, error_rate, llm_calls, input_tokens,
             output_tokens, cost_usd, mean_duration_ms (the interval's values) and, from the slo
             processors, ``slo.<name>.sli_value`` / ``.budget_remaining`` / ``.burn_rate.<window>``.
             The run is that of the current ``period`` (default a day, UTC): created (``runs/create``,
             tagged ``agent_sre.agent_id``, ``agent_sre.agent_version``, ``agent_sre.period``) or found
             again (``runs/search``) after a restart, and set FINISHED when its period is over.
    traces   OTLP/HTTP protobuf to ``{tracking_uri}/v1/traces`` with ``x-mlflow-experiment-id``,
             which MLflow accepts since 3.6 with a SQL backend store.  ``traces: auto`` (default)
             probes the server at start and leaves traces off, saying so, when it does not.

REST API 2.0 (``experiments/get-by-name``, ``experiments/create``, ``runs/create``,
``runs/log-batch`` — at most 1000 metrics per request — ``runs/update``, ``runs/search``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field

from agent_sre.exporters.helper.counts import SpanCounts, agent_metrics
from agent_sre.exporters.helper.http import RETRYABLE_HTTP, retry_after_seconds
from agent_sre.exporters.helper.sender import AggregatingExporter, HelperConfig
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.component.config import Duration
from agent_sre.pipeline.pdata.arrow_otlp import encoded

METRICS_SCHEMA = pa.schema([("agent_id", pa.string()), ("agent_version", pa.string()), ("key", pa.string()),
                            ("value", pa.float64()), ("timestamp_ms", pa.int64()), ("step", pa.int64())])
MAX_METRICS = 1000  # per log-batch


class MlflowConfig(HelperConfig):
    tracking_uri: str = Field(pattern=r"^https?://")
    experiment_name: str = "agent-sre"
    interval: Duration = Field(default="60s", gt=0)
    period: Literal["hour", "day", "week"] = "day"
    traces: Literal["auto", "on", "off"] = "auto"
    headers: dict[str, str] = {}  # e.g. Authorization for a secured server


class MlflowError(Exception):
    def __init__(self, result: ExportResult):
        super().__init__(result.message)
        self.result = result


def period_label(period: str, t: float) -> str:
    d = datetime.fromtimestamp(t, timezone.utc)
    return {"hour": d.strftime("%Y-%m-%dT%H"), "day": d.strftime("%Y-%m-%d"),
            "week": f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}"}[period]


class MlflowExporter(AggregatingExporter):
    config: MlflowConfig

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._counts = SpanCounts(("agent_id", "agent_version"))
        self._runs: dict[tuple[str, str, str], str] = {}  # (agent, version, period) -> run id
        self._experiment: str | None = None
        self._traces = False
        self._step = 0

    @property
    def flush_interval(self) -> float:
        return self.config.interval

    # --- REST --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, payload: dict | None = None, body: bytes | None = None,
              headers: dict | None = None) -> dict:
        url = self.config.tracking_uri.rstrip("/") + path
        data = body if body is not None else (json.dumps(payload).encode() if payload is not None else None)
        hdrs = {"Content-Type": "application/json", **self.config.headers, **(headers or {})}
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                text = resp.read()
                return json.loads(text) if text and resp.headers.get_content_type() == "application/json" else {}
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300]
            status = ExportStatus.RETRYABLE if exc.code in RETRYABLE_HTTP or exc.code >= 500 else ExportStatus.PERMANENT
            raise MlflowError(ExportResult(status, f"HTTP {exc.code} from {url}: {detail!r}",
                                           retry_after_seconds(exc.headers.get("Retry-After")))) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise MlflowError(ExportResult(ExportStatus.RETRYABLE, f"{url}: {exc}")) from exc

    def _experiment_id(self) -> str:
        if self._experiment is None:
            name = urllib.parse.quote(self.config.experiment_name)
            try:
                got = self._call("GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
                self._experiment = got["experiment"]["experiment_id"]
            except MlflowError as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in exc.result.message:
                    raise
                self._experiment = self._call("POST", "/api/2.0/mlflow/experiments/create",
                                              {"name": self.config.experiment_name})["experiment_id"]
        return self._experiment

    def _run(self, agent: str, version: str, period: str) -> str:
        key = (agent, version, period)
        if key in self._runs:
            return self._runs[key]
        experiment = self._experiment_id()
        for (a, v, p), run in list(self._runs.items()):  # this agent's earlier period is over
            if (a, v) == (agent, version) and p != period:
                self._call("POST", "/api/2.0/mlflow/runs/update",
                           {"run_id": run, "status": "FINISHED", "end_time": int(self.clock() * 1000)})
                del self._runs[(a, v, p)]
        found = self._call("POST", "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment], "max_results": 1,
            "filter": (f"tags.`agent_sre.agent_id` = '{_quote(agent)}' and tags.`agent_sre.agent_version` = "
                       f"'{_quote(version)}' and tags.`agent_sre.period` = '{period}'")}).get("runs", [])
        if found:
            run = found[0]["info"]["run_id"]
        else:
            run = self._call("POST", "/api/2.0/mlflow/runs/create", {
                "experiment_id": experiment, "run_name": f"{agent or '(none)'}@{version or '-'} {period}",
                "start_time": int(self.clock() * 1000),
                "tags": [{"key": "agent_sre.agent_id", "value": agent}, {"key": "agent_sre.agent_version",
                                                                        "value": version},
                         {"key": "agent_sre.period", "value": period}]})["run"]["info"]["run_id"]
        self._runs[key] = run
        return run

    # --- lifecycle ------------------------------------------------------------------------------

    def _start_client(self, host) -> None:
        if self.config.traces != "off":
            self._traces = self._probe_traces()
        super()._start_client(host)

    def _probe_traces(self) -> bool:
        """Whether the server takes OTLP traces: an empty request is answered 400 "no spans found" by an
        MLflow that does (the endpoint parsed it), 404, 405 or 501 by one that does not."""
        try:
            self._call("POST", "/v1/traces", body=b"", headers={
                "Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": self._experiment_id()})
            return True
        except MlflowError as exc:
            if exc.result.message.startswith("HTTP 400 "):
                return True
            if exc.result.status is ExportStatus.RETRYABLE:  # not reachable now: cannot tell; try sending
                self.logger.warning("MLflow at %s not reachable to probe OTLP traces (%s); sending them anyway",
                                    self.config.tracking_uri, exc.result.message)
                return True
            if self.config.traces == "on":
                raise ValueError(f"{self.id}: MLflow at {self.config.tracking_uri} does not take OTLP traces: "
                                 f"{exc.result.message}") from exc
            self.logger.warning("MLflow at %s does not take OTLP traces (%s); sending metrics only",
                                self.config.tracking_uri, exc.result.message)
            return False

    # --- data in ---------------------------------------------------------------------------------

    def export(self, batch: pa.Table) -> ExportResult:
        if "span_role" not in batch.schema.names:
            return SUCCESS
        self._counts.add(batch)
        return super().export(batch) if self._traces else SUCCESS

    def flush(self) -> int:
        """Queue the interval's metrics, one row per (agent, version, key); returns how many."""
        now = self.clock()
        ts = int(now * 1000)
        self._step += 1
        rows = [(agent, version, key, value)
                for (agent, version), metrics in agent_metrics(self._counts.take(), self.slo_processors()).items()
                for key, value in metrics.items()]
        if not rows:
            return 0
        table = pa.table({"agent_id": [r[0] for r in rows], "agent_version": [r[1] for r in rows],
                          "key": [r[2] for r in rows], "value": [r[3] for r in rows], "timestamp_ms": [ts] * len(rows),
                          "step": [self._step] * len(rows)}, schema=METRICS_SCHEMA)
        super().export(table)
        return len(rows)

    # --- out -------------------------------------------------------------------------------------

    def send(self, batch: pa.Table) -> ExportResult:
        try:
            if batch.schema.equals(METRICS_SCHEMA, check_metadata=False):
                self._log_metrics(batch)
            else:
                self._call("POST", "/v1/traces", body=encoded(batch), headers={
                    "Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": self._experiment_id()})
        except MlflowError as exc:
            return exc.result
        return SUCCESS

    def _log_metrics(self, batch: pa.Table) -> None:
        period = period_label(self.config.period, self.clock())
        by_run: dict[tuple[str, str], list[dict]] = {}
        for r in batch.to_pylist():  # a metric row per agent and key: few
            by_run.setdefault((r["agent_id"], r["agent_version"]), []).append(
                {"key": r["key"], "value": r["value"], "timestamp": r["timestamp_ms"], "step": r["step"]})
        for (agent, version), metrics in by_run.items():
            run = self._run(agent, version, period)
            for start in range(0, len(metrics), MAX_METRICS):
                self._call("POST", "/api/2.0/mlflow/runs/log-batch",
                           {"run_id": run, "metrics": metrics[start:start + MAX_METRICS]})

    def describe(self) -> list[str]:
        return [f"{self.id}: MLflow at {self.config.tracking_uri} (experiment {self.config.experiment_name}; "
                f"traces {'on' if self._traces else 'off'})"]


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


factory = Factory(type="mlflow", kind=Kind.EXPORTER, config_model=MlflowConfig, create=MlflowExporter,
                  description="Per agent and version a run per period with SLI and cost metrics; traces via OTLP.")
