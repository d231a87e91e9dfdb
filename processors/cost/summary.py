"""Spend per day, agent and model, with the agent's daily budget utilisation, from ``cost_minutes``.

Shared by ``GET /v1/costs`` (the running pipeline) and ``agent-sre cost summary`` (which reads
the file when no pipeline runs), so both give the same rows.  Days follow the calendar of the
first ``agent_day`` budget (UTC without one), so utilisation is that budget's.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_sre.processors.cost.budget import BudgetSpec

Query = Callable[[str, list], list[tuple]]


def cost_summary(read: Query, specs: list[BudgetSpec], now: float, days: int = 7) -> list[dict]:
    daily = next((s for s in specs if s.scope == "agent_day"), None)
    tz = daily.tz if daily is not None else "UTC"
    since = int(BudgetSpec("d", "agent_day", 1.0, tz=tz).period_start(now - (days - 1) * 86400).timestamp() // 60)
    rows = read(
        "WITH m AS (SELECT strftime(timezone(?, make_timestamptz(minute * 60000000)), '%Y-%m-%d') AS day, "
        "agent_id, model, cost_usd, spans FROM cost_minutes WHERE minute >= ?) "
        "SELECT day, agent_id, model, sum(cost_usd), sum(spans)::BIGINT, "
        "sum(sum(cost_usd)) OVER (PARTITION BY day, agent_id) FROM m GROUP BY day, agent_id, model ORDER BY day DESC, agent_id, model",
        [tz, since])
    return [{"day": day, "agent_id": agent, "model": model or None, "cost_usd": round(cost, 9), "llm_spans": spans,
             "agent_day_usd": round(agent_total, 9),
             "utilisation": round(agent_total / daily.limit_usd, 6) if daily is not None else None}
            for day, agent, model, cost, spans, agent_total in rows]
