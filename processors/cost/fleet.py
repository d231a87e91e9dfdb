"""Spend and budgets of every pipeline writing to the fleet store (pipeline/storage/fleet.py): the same
``cost_summary`` and ``budget_accounts`` over the fleet's spend per minute, each span counted once (read
from ``spans_raw FINAL``: a span a client re-sent to two pipelines is not charged twice here).  Asked by
``agent-sre cost summary --store`` and the admin API's ``GET /v1/costs?store=fleet``."""

from __future__ import annotations

from agent_sre.pipeline.storage.fleet import FleetStore, fleet_cost_tables
from agent_sre.processors.cost.budget import TASK_IDLE_S, BudgetSpec
from agent_sre.processors.cost.summary import budget_accounts, cost_summary


def fleet_costs(source: str | FleetStore, specs: list[BudgetSpec], now: float,
                days: int) -> tuple[list[dict], list[dict]]:
    """(summary rows, budget accounts) over the fleet: every budget, tenant budgets included (the
    fleet's spend per minute carries the resource's tenant.id, as the local store's does)."""
    # From a day before the first day shown (any budget's calendar) and every budget's period start:
    # cost_summary and budget_accounts pick their minutes from these.
    since = min([now - (days + 1) * 86400, *(s.period_start(now).timestamp() for s in specs if s.scope != "task")])
    running = int((now - TASK_IDLE_S) * 1e9) if any(s.scope == "task" for s in specs) else None
    con = fleet_cost_tables(source, int(since // 60), running)
    try:
        read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
        return cost_summary(read, specs, now, days), budget_accounts(read, specs, now)
    finally:
        con.close()
