"""The agents' metrics, shared by the pull (prometheus) and push (prometheusremotewrite) exporters.

``observe(batch)`` accumulates RED and GenAI histograms column-wise; ``families(host)``
returns every metric family as of now: those histograms, the SLI event counters
summed from the rollups, and the SLO gauges of each ``slo`` processor's latest report.  Each metric
keeps at most ``max_series`` combinations of its client-data labels; later ones fold into its overflow
series (``cardinality.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent_sre.exporters.prometheus.cardinality import (
    MAX_SERIES_PER_METRIC,
    OnOverflow,
    OverflowReport,
    SeriesLimit,
    label_table,
)
from agent_sre.exporters.prometheus.histograms import DURATION_BUCKETS, TOKEN_BUCKETS, HistogramSet
from agent_sre.pipeline.component.capabilities import CostReports, SloReports, SpanStore
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.maps import map_value

RED_LABELS = ("agent_id", "span_role", "model", "tool_name", "status_code")
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
FOLD_ROWS = 65_536  # pending spans folded into the histograms at once, on the folder thread (and at every scrape)
MAX_PENDING_ROWS = 2 * FOLD_ROWS  # beyond it (the folder behind) the exporting thread folds: memory stays bounded


def _seconds(table: pa.Table) -> pa.ChunkedArray:
    return pc.divide(table.column("duration_ns").cast(pa.float64()), 1e9)


class AgentMetrics:
    def __init__(self, max_series: int = MAX_SERIES_PER_METRIC, on_overflow: OnOverflow | None = None,
                 name: str = "agent-metrics", logger: logging.Logger | None = None):
        """``max_series``: label sets per metric; ``on_overflow(metric, values)`` hears what is folded beyond;
        ``name``: the folder thread's (``start``), whose errors go to ``logger``."""
        self._lock = threading.Lock()  # the pending columns
        self._fold_lock = threading.Lock()  # the histograms
        self._folder = PeriodicWorker(f"{name}-fold", 10.0, self._fold, logger or logging.getLogger(f"agent_sre.{name}"))
        self._pending: list[tuple[pa.Table, pa.Table | None]] = []  # (RED columns, LLM rows' columns)
        self._pending_rows = 0
        n, cb = max_series, on_overflow
        self.calls = HistogramSet("agent_sre_span_duration_seconds", "Agent spans by agent, role, model, tool and "
                                  "status: count (calls) and duration.", RED_LABELS, DURATION_BUCKETS, n,
                                  kept=("status_code",), on_overflow=cb)
        self.tokens = HistogramSet("gen_ai_client_token_usage", "Tokens used per GenAI operation "
                                   "(OpenTelemetry gen_ai.client.token.usage).", (*GENAI_LABELS, "gen_ai_token_type"),
                                   TOKEN_BUCKETS, n, kept=("gen_ai_token_type",), on_overflow=cb)
        self.durations = HistogramSet("gen_ai_client_operation_duration_seconds", "GenAI operation duration "
                                      "(OpenTelemetry gen_ai.client.operation.duration).", GENAI_LABELS,
                                      DURATION_BUCKETS, n, on_overflow=cb)
        self.sli = _SliCounters(n, cb)
        self.slo = _SloGauges(n, cb)
        self.cost = _CostMetrics(n, cb)
        self._collect_lock = threading.Lock()

    def start(self) -> None:
        """Fold on a thread of its own from now on (until ``stop``), off the exporting thread."""
        self._folder.start()

    def stop(self) -> None:
        self._folder.stop()

    def observe(self, batch: pa.Table) -> None:
        """Keep the columns the metrics need; they are folded into the histograms once ``FOLD_ROWS``
        spans are pending, and at every scrape.  Measured: an Arrow group-by per group commit (~1k
        spans) cost the pipeline process ~16 % of its CPU at max rate; one per 64k spans costs a
        fraction of that, for the same counts.  The fold (10-50 ms for 64k spans) runs on the folder
        thread once started: on the exporting thread it held every export acknowledged with that batch."""
        red = batch.select([*RED_LABELS, "duration_ns"])
        llm = pc.fill_null(pc.equal(batch.column("span_role"), "llm"), False)
        genai = None
        if pc.any(llm).as_py():  # the operation's name now: the pending rows keep no attribute maps
            # looked up over every span's keys, then filtered with the other columns: filtering the maps
            # first copied the LLM spans' attributes, and map_lookup walked them (0.31 -> 0.22 µs per span, bench/agent_metrics.py)
            op = map_value(batch.column("attributes"), "gen_ai.operation.name")
            genai = (batch.select(["provider", "model", "duration_ns", "input_tokens", "output_tokens"])
                     .append_column("operation", op).filter(llm))
        with self._lock:
            self._pending.append((red, genai))
            self._pending_rows += batch.num_rows
            pending = self._pending_rows
        if pending >= MAX_PENDING_ROWS or (pending >= FOLD_ROWS and not self._folder.running):
            self._fold()
        elif pending >= FOLD_ROWS:
            self._folder.wake()

    def _fold(self) -> None:
        """Pending spans into the histograms."""
        with self._fold_lock:
            with self._lock:
                pending, self._pending, self._pending_rows = self._pending, [], 0
            if pending:
                self._fold_pending(pending)

    def _fold_pending(self, pending: list[tuple[pa.Table, pa.Table | None]]) -> None:
        red = pa.concat_tables([r for r, _ in pending])
        genai = [g for _, g in pending if g is not None]
        self.calls.observe([red.column(c) for c in RED_LABELS], _seconds(red))
        if genai:
            g = pa.concat_tables(genai)
            labels = [g.column("operation"), g.column("provider"), g.column("model")]
            self.durations.observe(labels, _seconds(g))
            n = g.num_rows  # both token types in one grouping
            kinds = pa.concat_arrays([pa.repeat("input", n), pa.repeat("output", n)])
            self.tokens.observe([pa.concat_arrays([c.combine_chunks()] * 2) for c in labels] + [kinds],
                                pa.concat_arrays([g.column("input_tokens").combine_chunks(),
                                                  g.column("output_tokens").combine_chunks()]))

    def families(self, host) -> list:
        self._fold()
        with self._fold_lock:
            out = [self.calls.family(), self.tokens.family(), self.durations.family()]
        if host is not None:
            with self._collect_lock:  # the limits' state; not self._lock, which would hold exports for a query
                out += self.sli.families(host) + self.slo.families(host) + self.cost.families(host)
        return out


def agent_metrics(settings, max_series: int) -> AgentMetrics:
    """An exporter's metrics, what they fold into overflow series counted in its self-telemetry and logged."""
    report = OverflowReport(str(settings.id), settings.telemetry.exporter_series_overflow, settings.logger,
                            max_series)
    return AgentMetrics(max_series, report, str(settings.id), settings.logger)


class _Recomputed:
    """A counter or gauge family recomputed at every collection, under its cardinality limit: values of
    label sets beyond it are folded into an overflow series by ``fold`` ("sum" for counters; for gauges
    the worst of the folded values, "min" or "max").  What is counted as folded: for a counter, how much
    its overflow series grew since the last collection; for a gauge, the values folded at this one."""

    def __init__(self, family, name: str, documentation: str, names: Sequence[str], max_series: int, fold: str,
                 kept: Sequence[str], on_overflow: OnOverflow | None):
        self._family, self.name, self.documentation = family, name, documentation
        self.names, self.fold, self.on_overflow = list(names), fold, on_overflow
        self.counter = family is CounterMetricFamily
        self.limit = SeriesLimit(name, names, max_series, kept)
        self._reported: dict[int, float] = {}

    def family(self, columns: Sequence[list], values: list[float]):
        """``columns``: one list of label values per label name; ``values``: one value per row."""
        name = self.name
        fam = self._family(name, self.documentation, labels=self.names)
        if not values:
            return fam
        labels = label_table(self.names, [pa.array(c, pa.string()) for c in columns])
        own, over = self.limit.assign(labels)
        v = np.asarray(values, dtype=np.float64)
        mine = own >= 0
        for row, value in zip(labels.filter(pa.array(mine)).to_pylist(), v[mine].tolist(), strict=True):
            fam.add_metric([row[n] for n in self.names], value)
        if not mine.all():
            folded = pa.table({"p": over[~mine], "v": v[~mine]}).group_by("p").aggregate([("v", self.fold)])
            overflow_labels = self.limit.overflow_labels()
            sample = name + ("_total" if self.counter else "")
            grew = 0.0
            for p, value in zip(folded.column("p").to_pylist(), folded.column(f"v_{self.fold}").to_pylist(),
                                strict=True):
                fam.add_sample(sample, overflow_labels[p], value)
                grew += max(0.0, value - self._reported.get(p, 0.0))
                self._reported[p] = value
            if self.on_overflow is not None:
                self.on_overflow(name, grew if self.counter else int((~mine).sum()))
        return fam


SLI_LABELS = ("sli", "agent_id", "agent_version")


class _SliCounters:
    """The SLI event counters summed from the rollups (what generated Prometheus rules compute burn rates
    from); their agent ids come from client data, hence the limit."""

    def __init__(self, max_series: int, on_overflow: OnOverflow | None):
        self.events = _Recomputed(CounterMetricFamily, "agent_sre_sli_events", "SLI events (the rollups' totals).",
                                  SLI_LABELS, max_series, "sum", ("sli",), on_overflow)
        self.good = _Recomputed(CounterMetricFamily, "agent_sre_sli_good_events", "Good SLI events.",
                                SLI_LABELS, max_series, "sum", ("sli",), on_overflow)

    def families(self, host) -> list:
        rows = [r for store in host.all(SpanStore) for r in store.read(
            "SELECT sli, agent_id, agent_version, sum(good), sum(total) FROM sli_minutes GROUP BY ALL")]
        sli, agent, version, good, total = _columns(rows, 5)
        return [self.events.family([sli, agent, version], total), self.good.family([sli, agent, version], good)]


class _CostMetrics:
    """Spend per agent and model, summed from the store's cost rollup (every priced span, exactly once, as
    budgets count it), and each budget of the current period (agent, org, model and tenant budgets; task
    budgets are one per task, so only their count at throttle or kill is a gauge)."""

    def __init__(self, max_series: int, on_overflow: OnOverflow | None):
        self.spend = _Recomputed(CounterMetricFamily, "agent_sre_llm_cost_usd", "LLM spend in USD (the cost "
                                 "rollup: client-reported cost, else tokens x prices).", ("agent_id", "model"),
                                 max_series, "sum", (), on_overflow)
        labels = ("budget", "scope", "subject")
        self.budget = [_Recomputed(GaugeMetricFamily, name, doc, labels, max_series, fold, ("budget", "scope"),
                                   on_overflow) for name, doc, fold in (
            ("agent_sre_cost_budget_spent_usd", "Spend in the budget's current period (USD).", "max"),
            ("agent_sre_cost_budget_limit_usd", "The budget's limit (USD).", "max"),
            ("agent_sre_cost_budget_utilisation", "Spend / limit (throttle at 0.85, kill at 0.95 by default).",
             "max"))]
        self.tasks = _Recomputed(GaugeMetricFamily, "agent_sre_cost_task_budgets_limited", "Tasks whose own "
                                 "budget throttles or kills them now.",
                                 ("budget", "action"), max_series, "sum", ("action",), on_overflow)

    def families(self, host) -> list:
        rows = [r for store in host.all(SpanStore) for r in store.read(
            "SELECT agent_id, model, sum(cost_usd) FROM cost_minutes GROUP BY ALL")]
        agent, model, usd = _columns(rows, 3)
        procs = host.all(CostReports)
        accounts = [a for proc in procs for a in proc.costs(1)["budgets"]]
        lines = {s.name: (s.throttle_at, s.kill_at) for proc in procs for s in proc.budget_specs()}
        kept = [a for a in accounts if a["scope"] != "task"]
        gauges = [self.budget[i].family([[a["budget"] for a in kept], [a["scope"] for a in kept],
                                         [a["subject"] for a in kept]], [a[key] for a in kept])
                  for i, key in enumerate(("spent_usd", "limit_usd", "utilisation"))]
        limited: dict[tuple[str, str], int] = {}
        for a in accounts:
            throttle, kill = lines.get(a["budget"], (0.85, 0.95))
            if a["scope"] == "task" and a["utilisation"] >= throttle:
                key = (a["budget"], "kill" if a["utilisation"] >= kill else "throttle")
                limited[key] = limited.get(key, 0) + 1
        budget, action = [k[0] for k in limited], [k[1] for k in limited]
        return [self.spend.family([agent, model], usd), *gauges,
                self.tasks.family([budget, action], list(limited.values()))]


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


SLO_LABELS = ("slo", "sli", "agent_id", "agent_version")  # agent_version: "" unless the SLO is per version
# name, help, extra labels, fold: the overflow series shows the worst of the agents folded into it
_SLO_GAUGES = (
    ("agent_sre_slo_sli_value", "SLI value over the objective's window.", (), "min"),
    ("agent_sre_slo_objective", "The objective's target.", (), "max"),
    ("agent_sre_slo_error_budget_remaining", "Error budget left (0..1).", (), "min"),
    ("agent_sre_slo_burn_rate", "Burn rate over a window.", ("window",), "max"),
    ("agent_sre_slo_alert_firing", "1 while a burn-rate rule fires.", ("rule",), "max"),
    ("agent_sre_slo_status", "1 for the SLO's current status.", ("status",), "max"),
)


class _SloGauges:
    """The SLO gauges of each ``slo`` processor's latest report, one series per (objective, agent)."""

    def __init__(self, max_series: int, on_overflow: OnOverflow | None):
        self.gauges = [_Recomputed(GaugeMetricFamily, name, doc, [*SLO_LABELS, *extra], max_series, fold,
                                   ("slo", "sli", *extra), on_overflow)
                       for name, doc, extra, fold in _SLO_GAUGES]

    def families(self, host) -> list:
        rows: list[list] = [[] for _ in _SLO_GAUGES]  # per gauge: (label values..., value)
        for proc in host.all(SloReports):
            for r in proc.last_report:
                key = [r["slo"], r["sli"], r["agent_id"], r.get("agent_version") or ""]
                if r["sli_value"] is not None:
                    rows[0].append((*key, r["sli_value"]))
                rows[1].append((*key, r["target"]))
                rows[2].append((*key, r["budget_remaining"]))
                rows[3] += [(*key, window, rate) for window, rate in r["burn_rates"].items()]
                rows[4] += [(*key, rule, 1) for rule in r["firing"]]
                rows[5].append((*key, r["status"], 1))
        out = []
        for gauge, mine in zip(self.gauges, rows, strict=True):
            *labels, values = _columns(mine, len(gauge.names) + 1)
            out.append(gauge.family(labels, values))
        return out
