"""What the console's pages show, gathered from the components' in-memory reports and the rollup tables.

Nothing here scans spans except the trace search (over a time window, column-wise in DuckDB): the
overview reads the slo processors' last reports, the decisions board, the cost processors' budget
accounts and today's ``cost_minutes``, the incidents processors' open incidents, and the last hour
of ``agent_minutes`` (one row per agent and minute)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from agent_sre.pipeline.storage.rollups import TRACE_ID_HEX

Read = Callable[[str, list], list[tuple]]
STATUS_ORDER = {"exhausted": 4, "critical": 3, "warning": 2, "healthy": 1, "": 0}
SPARK_MINUTES = 60
RATE_MINUTES = 5  # spans/s: the last five minutes (the current one included), per second


def budget_marks(cost_procs: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """Each budget's throttle and kill points, by name (the cost processors' specs)."""
    return {spec.name: (spec.throttle_at, spec.kill_at) for c in cost_procs for spec in c.budget_specs()}


def marked(budgets: list[dict], marks: dict[str, tuple[float, float]]) -> list[dict]:
    return [{**b, "throttle_at": marks.get(b["budget"], (None, None))[0], "kill_at": marks.get(b["budget"], (None, None))[1]}
            for b in budgets]


def agent_minutes(read: Read | None, now_s: float) -> dict[str, list[tuple[int, int, int]]]:
    """(minute, spans, errors) per agent over the last hour, oldest first (the rollup, not the spans)."""
    if read is None:
        return {}
    first = int(now_s // 60) - SPARK_MINUTES + 1
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for agent, minute, spans, errors in read("SELECT agent_id, minute, spans, errors FROM agent_minutes "
                                             "WHERE minute >= ? AND agent_id <> '' ORDER BY agent_id, minute", [first]):
        out[agent].append((minute, spans, errors))
    return out


def _series(rows: list[tuple[int, int, int]], now_s: float) -> tuple[list[float], list[float], float, float]:
    """Spans per minute and error rate per minute over the last hour (gaps as zero), spans/s over the last
    RATE_MINUTES and the error rate over the hour."""
    first = int(now_s // 60) - SPARK_MINUTES + 1
    spans = [0.0] * SPARK_MINUTES
    errors = [0.0] * SPARK_MINUTES
    for minute, n, e in rows:
        spans[minute - first] += n
        errors[minute - first] += e
    rate = sum(spans[-RATE_MINUTES:]) / (RATE_MINUTES * 60)
    total = sum(spans)
    return spans, [e / s if s else 0.0 for e, s in zip(errors, spans, strict=True)], rate, (sum(errors) / total if total else 0.0)


def day_start_minute(cost_procs: Sequence[Any], now_s: float) -> int:
    """The first minute of today, in the calendar of the first agent_day budget (UTC without one), as
    /v1/costs counts days."""
    daily = next((s for c in cost_procs for s in c.budget_specs() if s.scope == "agent_day"), None)
    if daily is not None:
        return int(daily.period_start(now_s).timestamp() // 60)
    return int(now_s // 86400) * 1440


def spend_since(read: Read | None, first_minute: int) -> dict[str, float]:
    """Spend per agent since ``first_minute``, from the cost rollup."""
    if read is None:
        return {}
    return dict(read("SELECT agent_id, sum(cost_usd) FROM cost_minutes WHERE minute >= ? GROUP BY agent_id",
                     [first_minute]))


def overview(slo_reports: list[dict], decisions: list[dict] | None, budget_rows: list[dict], spend: dict[str, float],
             marks: dict, incidents: list[dict] | None, minutes: dict[str, list[tuple[int, int, int]]],
             now_s: float) -> list[dict]:
    """One row per agent seen by any source."""
    slos: dict[str, list[dict]] = defaultdict(list)
    for row in slo_reports:
        slos[row["agent_id"]].append(row)
    by_decision = {d["agent_id"]: d for d in decisions or []}
    budgets: dict[str, list[dict]] = defaultdict(list)
    for b in marked(budget_rows, marks):
        if b["scope"].startswith("agent"):
            budgets[b["subject"]].append(b)
    open_incidents: dict[str, int] = defaultdict(int)
    for i in incidents or []:
        open_incidents[i["agent_id"]] += 1
    agents = set(slos) | set(by_decision) | set(budgets) | set(spend) | set(open_incidents) | set(minutes)
    agents.discard("")
    rows = []
    for agent in agents:
        spans, errors, rate, error_rate = _series(minutes.get(agent, []), now_s)
        own = slos.get(agent, [])
        decision = by_decision.get(agent, {})
        circuits = decision.get("circuits") or []
        breaker = ", ".join(f'{c["state"]} ({c["tool"] or "agent"})' for c in circuits) or ("closed" if decision else "")
        rows.append({
            "agent_id": agent, "status": max((r["status"] for r in own), key=lambda s: STATUS_ORDER.get(s, 0), default=""),
            "slos": len(own), "budget_remaining": min((r["budget_remaining"] for r in own), default=None),
            "budgets": budgets.get(agent, []), "spend_usd": round(spend.get(agent, 0.0), 6), "breaker": breaker,
            "decision": decision.get("action", ""), "open_incidents": open_incidents.get(agent, 0),
            "spans_per_s": rate, "spans_series": spans, "error_series": errors, "error_rate": error_rate})
    return rows


SORT_KEYS: dict[str, Callable[[dict], Any]] = {
    "agent": lambda r: r["agent_id"], "status": lambda r: (-STATUS_ORDER[r["status"]], r["agent_id"]),
    "spend": lambda r: (-r["spend_usd"], r["agent_id"]), "errors": lambda r: (-r["error_rate"], r["agent_id"]),
    "incidents": lambda r: (-r["open_incidents"], r["agent_id"]), "rate": lambda r: (-r["spans_per_s"], r["agent_id"])}


def sort_and_filter(rows: list[dict], sort: str, text: str) -> list[dict]:
    """Sorted by ``sort`` (SORT_KEYS; ValueError names the valid ones), filtered by a text in the agent id,
    its status or its decision."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)} (got {sort!r})")
    needle = text.lower().strip()
    kept = [r for r in rows if not needle or needle in f'{r["agent_id"]} {r["status"]} {r["decision"]}'.lower()]
    return sorted(kept, key=SORT_KEYS[sort])


# --- SLO, cost and trace pages: small reads of the rollup and event tables ---------------------

def thresholds(slo_procs: Sequence[Any], slo: str) -> dict[str, float]:
    """The alert threshold per burn-rate window of objective ``slo`` (its rules, the Workbook's by default):
    both windows of a rule carry its factor; a window two rules share keeps the lower one."""
    out: dict[str, float] = {}
    for proc in slo_procs:
        for obj in proc.config.objectives:
            if obj.name != slo:
                continue
            for rule in obj.burn_rules:
                for minutes in (rule.long_minutes, rule.short_minutes):
                    label = window_label(minutes)
                    out[label] = min(out.get(label, rule.factor), rule.factor)
    return out


def window_label(minutes: int) -> str:
    """As the slo processor labels windows: 5m, 1h, 1d."""
    if minutes % 1440 == 0:
        return f"{minutes // 1440}d"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def slo_history(read: Read, slo: str, agent: str) -> list[tuple]:
    return read("SELECT time_ns, state, severity, name, summary FROM events WHERE kind = 'alert' "
                "AND labels['slo'] = ? AND labels['agent_id'] = ? ORDER BY time_ns DESC LIMIT 100", [slo, agent])


def sli_per_day(read: Read, sli: str, agent: str, days: int = 30) -> list[tuple]:
    first = int(time.time() // 60) - days * 1440
    return read("SELECT strftime(to_timestamp(minute * 60), '%Y-%m-%d') AS d, sum(good), sum(total) FROM sli_minutes "
                "WHERE sli = ? AND agent_id = ? AND minute >= ? GROUP BY d ORDER BY d", [sli, agent, first])


def burn_per_hour(read: Read, sli: str, agent: str, target: float, hours: int = 24) -> list[float]:
    """The burn rate of each of the last ``hours`` hours (the current one included): its bad share over
    the allowed one (1 - target); an hour without events burns nothing."""
    first = int(time.time() // 3600) - hours + 1
    burns = [0.0] * hours
    for hour, good, total in read("SELECT minute // 60, sum(good), sum(total) FROM sli_minutes WHERE sli = ? "
                                  "AND agent_id = ? AND minute >= ? GROUP BY 1", [sli, agent, first * 60]):
        if total and 0 <= hour - first < hours:
            burns[hour - first] = (1 - good / total) / (1 - target) if target < 1 else 0.0
    return burns


def spend_per_day(summary: list[dict]) -> list[tuple[str, float]]:
    days: dict[str, float] = defaultdict(float)
    for r in summary:
        days[r["day"]] += r["cost_usd"]
    return sorted((d, round(v, 6)) for d, v in days.items())


def _of(column: str, agents: frozenset[str] | None) -> tuple[str, list]:
    """A condition keeping ``agents``' rows (none: every row), and its parameter."""
    return ("", []) if agents is None else (f" AND list_contains(?::VARCHAR[], {column})", [sorted(agents)])


def anomaly_days(read: Read, days: int, agents: frozenset[str] | None = None) -> set[str]:
    since = int((time.time() - days * 86400) * 1e9)
    mine, params = _of("labels['agent_id']", agents)
    return {d for (d,) in read("SELECT DISTINCT strftime(to_timestamp(time_ns / 1e9), '%Y-%m-%d') FROM events "
                               f"WHERE kind = 'anomaly' AND state = 'firing' AND time_ns >= ?{mine}", [since, *params])}


def top_tasks(read: Read, days: int, limit: int = 10, agents: frozenset[str] | None = None) -> list[tuple]:
    since = int((time.time() - days * 86400) * 1e9)
    mine, params = _of("agent_id", agents)
    return read(f"SELECT {TRACE_ID_HEX.format('trace_id')}, agent_id, NULL, cost_usd FROM trace_rollups "
                "WHERE last_seen_ns >= ? AND cost_usd > 0"
                f"{mine} ORDER BY cost_usd DESC LIMIT ?", [since, *params, limit])


def spend_per_tenant(read: Read, days: int, tenant: str | None = None) -> list[tuple]:
    """Spend per tenant (``tenant``: that one's line only)."""
    first = int(time.time() // 60) - days * 1440
    mine, params = ("", []) if tenant is None else (" AND tenant = ?", [tenant])
    return read(f"SELECT tenant, sum(cost_usd) FROM cost_minutes WHERE minute >= ?{mine} GROUP BY 1 ORDER BY 2 DESC",
                [first, *params])
