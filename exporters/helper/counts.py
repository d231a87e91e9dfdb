"""Span counts per key, accumulated column-wise between flushes (for exporters that send metrics).

``add(batch)`` groups the batch by ``keys`` with Arrow and adds spans, errors, LLM calls, input and
output tokens, cost and summed duration to each key's running sums; ``take()`` returns them and
starts afresh.  Python runs once per key and batch, never per span.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Sums:
    spans: float = 0
    errors: float = 0
    llm_calls: float = 0
    input_tokens: float = 0
    output_tokens: float = 0
    cost_usd: float = 0
    duration_ns: float = 0

    @property
    def mean_duration_ms(self) -> float:
        return self.duration_ns / self.spans / 1e6 if self.spans else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.spans if self.spans else 0.0


_FIELDS = ("errors", "llm", "input", "output", "cost", "duration")


class SpanCounts:
    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self._sums: dict[tuple, Sums] = {}
        self._lock = threading.Lock()

    def add(self, batch: pa.Table) -> None:
        t = pa.table({**{k: pc.fill_null(batch.column(k), "") for k in self.keys},
                      "errors": pc.cast(pc.equal(batch.column("status_code"), "error"), pa.int64()),
                      "llm": pc.cast(pc.fill_null(pc.equal(batch.column("span_role"), "llm"), False), pa.int64()),
                      "input": pc.fill_null(batch.column("input_tokens"), 0),
                      "output": pc.fill_null(batch.column("output_tokens"), 0),
                      "cost": pc.fill_null(batch.column("cost_usd"), 0.0),
                      "duration": pc.fill_null(batch.column("duration_ns"), 0)})
        grouped = t.group_by(list(self.keys)).aggregate([("errors", "count"), *((f, "sum") for f in _FIELDS)])
        with self._lock:
            for r in grouped.to_pylist():  # one row per key
                s = self._sums.setdefault(tuple(r[k] for k in self.keys), Sums())
                s.spans += r["errors_count"]
                s.errors += r["errors_sum"] or 0
                s.llm_calls += r["llm_sum"] or 0
                s.input_tokens += r["input_sum"] or 0
                s.output_tokens += r["output_sum"] or 0
                s.cost_usd += r["cost_sum"] or 0
                s.duration_ns += r["duration_sum"] or 0

    def take(self) -> dict[tuple, Sums]:
        with self._lock:
            sums, self._sums = self._sums, {}
        return sums


def agent_metrics(counts: dict[tuple, Sums], slo_processors=()) -> dict[tuple[str, str], dict[str, float]]:
    """(agent, version) -> metric name -> value: an interval's counts (keyed by agent and version) and
    the SLOs' latest values (``slo.<name>.sli_value``, ``.budget_remaining``, ``.burn_rate.<window>``),
    as the mlflow and wandb exporters log them."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (agent, version), s in counts.items():
        out.setdefault((agent, version), {}).update({
            "spans": s.spans, "errors": s.errors, "error_rate": s.error_rate, "llm_calls": s.llm_calls,
            "input_tokens": s.input_tokens, "output_tokens": s.output_tokens, "cost_usd": s.cost_usd,
            "mean_duration_ms": s.mean_duration_ms})
    for proc in slo_processors:
        for r in proc.last_report:
            mine = out.setdefault((r["agent_id"], r.get("agent_version") or ""), {})
            if r["sli_value"] is not None:
                mine[f"slo.{r['slo']}.sli_value"] = r["sli_value"]
            mine[f"slo.{r['slo']}.budget_remaining"] = r["budget_remaining"]
            mine.update({f"slo.{r['slo']}.burn_rate.{w}": b for w, b in r["burn_rates"].items()})
    return {k: {name: float(v) for name, v in metrics.items()} for k, metrics in out.items()}
