"""anomaly: z-score, IQR and EWMA detectors over per-agent series, every ``interval``.

The series come from the store's per-minute, per-agent rollup (``agent_minutes``, written in the
spans' own insert transaction), one point per minute that has data:

    latency           mean duration of the agent's agent_task spans ending in the minute (ms)
    error_rate        spans with status error / spans
    tokens_per_call   input + output tokens / LLM spans
    cost_per_task     summed cost of the tasks that finished in the minute / those tasks

Each evaluation reads ``history`` minutes of every series (up to the last complete minute, less
the series' ``delay``), runs its detector column-wise over the whole series and judges the points
not judged before.  The mark of the last judged minute and whether the series is anomalous now
are kept in the store (``anomaly_state``), so a restart neither judges a minute twice nor forgets
to resolve.  An anomalous point is an ``anomaly`` event (value, expected range, method, score,
severity; ``ticket`` when critical, ``info`` otherwise), ``resolved`` at the first normal point
after it.  Anomalies are in the ``events`` table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.events import event
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.processors.anomaly.detectors import DETECTORS, Anomaly

# metric -> (value SQL over agent_minutes, the minutes it is defined in, default method, min_delta, delay minutes)
METRICS: dict[str, tuple[str, str, str, float, int]] = {
    "latency": ("task_duration_ns / 1e6 / tasks", "tasks > 0", "ewma", 0.0, 1),
    "error_rate": ("errors / spans", "spans > 0", "zscore", 0.05, 1),
    "tokens_per_call": ("tokens / llm_calls", "llm_calls > 0", "zscore", 0.0, 1),
    "cost_per_task": ("task_cost_usd / tasks_done", "tasks_done > 0", "iqr", 0.0, 3),  # tasks count 60 s after
}
STATE_DDL = ("CREATE TABLE IF NOT EXISTS anomaly_state (processor VARCHAR NOT NULL, agent_id VARCHAR NOT NULL, "
             "metric VARCHAR NOT NULL, last_minute BIGINT NOT NULL, firing BOOLEAN NOT NULL, "
             "PRIMARY KEY (processor, agent_id, metric))")


class SeriesConfig(ConfigModel):
    metric: Literal["latency", "error_rate", "tokens_per_call", "cost_per_task"]
    method: Literal["zscore", "iqr", "ewma"] | None = None  # default per metric (see METRICS)
    sensitivity: float | None = Field(default=None, gt=0)  # default: the detector's (3, 2, 3.5)
    min_samples: int = Field(default=20, ge=2)
    window: int = Field(default=60, ge=2)  # zscore and iqr: points before each point
    alpha: float = Field(default=0.1, gt=0, lt=1)  # ewma
    min_delta: float | None = Field(default=None, ge=0)  # default per metric (error_rate: 0.05)
    min_relative_delta: float = Field(default=0.05, ge=0)  # and at least this fraction of the expected value

    def detect(self, values: np.ndarray) -> list[Anomaly]:
        method = self.method or METRICS[self.metric][2]
        kwargs: dict = {"min_samples": self.min_samples,
                        "min_delta": self.min_delta if self.min_delta is not None else METRICS[self.metric][3],
                        "min_relative_delta": self.min_relative_delta}
        if self.sensitivity is not None:
            kwargs["sensitivity"] = self.sensitivity
        if method == "ewma":
            kwargs["alpha"] = self.alpha
        else:
            kwargs["window"] = self.window
        return DETECTORS[method](values, **kwargs)


class AnomalyConfig(ConfigModel):
    series: list[SeriesConfig] = [SeriesConfig(metric=m) for m in METRICS]
    interval: Duration = Field(default="60s", gt=0)
    history: int = Field(default=1440, ge=10)  # minutes read per evaluation (EWMA weights fade in ~350 points)
    storage: str = ""  # which duckdb exporter; empty: the only one

    @model_validator(mode="after")
    def _unique(self) -> AnomalyConfig:
        metrics = [s.metric for s in self.series]
        dupes = sorted({m for m in metrics if metrics.count(m) > 1})
        if dupes:
            raise ValueError(f"one series per metric; repeated: {dupes}")
        return self


class AnomalyProcessor(Stage):
    config: AnomalyConfig

    def __init__(self, settings, config: AnomalyConfig):
        super().__init__(settings, config)
        self.clock: Callable[[], float] = time.time
        self._store = None
        self._bus = None
        self._state: dict[tuple[str, str], tuple[int, bool]] = {}  # (agent, metric) -> (last minute, firing)
        self._lock = threading.Lock()
        self._worker = PeriodicWorker(f"{self.id}-detect", config.interval, self.evaluate, self.logger)

    def _start(self, host) -> None:
        self._store = host.get(SpanStore, self.config.storage, str(self.id))
        self._bus = host.events
        if any(s.metric == "cost_per_task" for s in self.config.series):
            self._store.track_tasks()
        self._store.write([(STATE_DDL, [])])
        for agent, metric, last, firing in self._store.read(
                "SELECT agent_id, metric, last_minute, firing FROM anomaly_state WHERE processor = ?", [str(self.id)]):
            self._state[(agent, metric)] = (last, firing)
        self._worker.start()

    def evaluate(self) -> list[dict]:
        """Judge every point that became due since the last evaluation; returns the events published."""
        store = self._store
        if store is None:
            return []
        store.sync()
        store.finalize_tasks()
        now_minute = int(self.clock() // 60)
        events: list[dict] = []
        with self._lock:
            marks: list[tuple[str, list]] = []
            for series in self.config.series:
                events += self._judge(series, now_minute, marks)
            if marks:
                store.write(marks)
            if events:
                self._bus.publish(events)
        return events

    def _judge(self, series: SeriesConfig, now_minute: int, marks: list) -> list[dict]:
        value, defined, _, _, delay = METRICS[series.metric]
        last_complete = now_minute - 1 - delay
        rows = self._store.read(
            f"SELECT agent_id, minute, {value} FROM agent_minutes WHERE minute > ? AND minute <= ? AND {defined} "
            "ORDER BY agent_id, minute", [last_complete - self.config.history, last_complete])
        if not rows:
            return []
        agents = np.array([r[0] for r in rows], dtype=object)
        minutes = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        values = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        bounds = np.flatnonzero(agents[1:] != agents[:-1]) + 1
        out = []
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)], strict=True):
            agent = agents[lo]
            key = (agent, series.metric)
            mine = minutes[lo:hi]
            # A series seen for the first time is judged from its newest point on, not over its whole past.
            last, firing = self._state.get(key, (int(mine[-1]) - 1, False))
            new = mine > last
            if not new.any():
                continue
            flagged = {a.index: a for a in series.detect(values[lo:hi]) if new[a.index]}
            newest = int(np.flatnonzero(new)[-1])
            if flagged:
                worst = flagged[max(flagged)]  # the latest anomalous point speaks for this round
                out.append(self._event(series, agent, int(mine[worst.index]), worst, "firing"))
                firing = True
            if firing and newest not in flagged:
                out.append(self._event(series, agent, int(mine[newest]), None, "resolved",
                                       float(values[lo + newest])))
                firing = False
            self._state[key] = (int(mine[newest]), firing)
            marks.append(("INSERT OR REPLACE INTO anomaly_state VALUES (?, ?, ?, ?, ?)",
                          [str(self.id), agent, series.metric, int(mine[newest]), firing]))
        return out

    def _event(self, series: SeriesConfig, agent: str, minute: int, a: Anomaly | None, state: str,
               value: float | None = None) -> dict:
        at = datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        labels = {"agent_id": agent, "metric": series.metric, "minute": at}
        if a is None:
            return event("anomaly", "resolved", "info", series.metric, {**labels, "value": f"{value:.6g}"},
                         f"{series.metric} of agent {agent or '(none)'} is back in its expected range at {at}",
                         identity={"agent_id": agent, "metric": series.metric}, time_ns=int(self.clock() * 1e9))
        labels.update(method=a.method, value=f"{a.value:.6g}", expected_low=f"{a.expected_low:.6g}",
                      expected_high=f"{a.expected_high:.6g}", score=f"{a.score:.3g}", detector_severity=a.severity)
        return event("anomaly", "firing", "ticket" if a.severity == "critical" else "info",
                     f"{series.metric}:{a.method}", labels,
                     f"{series.metric} of agent {agent or '(none)'} was {a.value:.6g} at {at}, outside the expected "
                     f"[{a.expected_low:.6g}, {a.expected_high:.6g}] ({a.method}, {a.severity})",
                     identity={"agent_id": agent, "metric": series.metric}, time_ns=int(self.clock() * 1e9))

    def describe(self) -> list[str]:
        return [f"anomaly detection every {self.config.interval:g}s: "
                + ", ".join(f"{s.metric} ({s.method or METRICS[s.metric][2]})" for s in self.config.series)]

    def _shutdown(self) -> None:
        self._worker.stop()


factory = Factory(
    type="anomaly",
    kind=Kind.PROCESSOR,
    config_model=AnomalyConfig,
    create=AnomalyProcessor,
    description="Z-score, IQR and EWMA detectors over per-agent latency, error rate, tokens and cost per task.",
)
