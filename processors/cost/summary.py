"""Spend per day, agent and model, with the agent's daily budget utilisation, from ``cost_minutes``;
and the budget accounts of the current periods, rebuilt from the store.

Shared by ``GET /v1/costs`` (the running pipeline) and ``agent-sre cost summary`` (which reads
the file when no pipeline runs), so both give the same rows.  Days follow the calendar of the
first ``agent_day`` budget (UTC without one), so utilisation is that budget's.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_sre.processors.cost.budget import TASK_IDLE_S, BudgetLedger, BudgetSpec, reaches_first_step

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


def restore_budgets(ledger: BudgetLedger, read: Query, now: float, every_task: bool = False) -> None:
    """This period's spend from the store's cost rollup, and the running tasks' (spans ended within
    ``TASK_IDLE_S``) from their spans, into ``ledger``: what a cost processor starting ``now`` holds —
    an account for each task whose spend reaches its budget's first step, as while running
    (``every_task``: for every task, as a pipeline sharing its budgets in Redis keeps them)."""
    # Spans another pipeline of the fleet claimed first are its to charge (claims.py): left out of ours.
    elsewhere = read("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'cost_claimed_elsewhere'", [])[0][0]
    minutes = ("(SELECT minute, agent_id, model, tenant, cost_usd, spans FROM cost_minutes UNION ALL "
               "SELECT minute, agent_id, model, tenant, -cost_usd, -1 FROM cost_claimed_elsewhere)"
               if elsewhere else "cost_minutes")
    for spec in ledger.specs:
        if spec.scope == "task":
            continue
        start_minute = int(spec.period_start(now).timestamp() // 60)
        end_minute = int(spec.period(now)[1] // 60)
        subject = {"agent": "agent_id", "org": "'org'", "model": "model", "tenant": "tenant"}[spec.subject_kind]
        for who, spent, calls, agents in read(
                f"SELECT {subject}, sum(cost_usd), sum(spans)::BIGINT, list(DISTINCT agent_id) FROM {minutes} "
                "WHERE minute >= ? AND minute < ? GROUP BY ALL", [start_minute, end_minute]):
            if not who or spent is None:
                continue  # spans without a model or tenant charge no such budget; no spend yet
            ledger.restore(spec.name, who, spent, now, calls, agents)
    if any(spec.scope == "task" for spec in ledger.specs):  # tasks still running: all their spend so far
        since = int((now - TASK_IDLE_S) * 1e9)
        mine = ("span_rows s ANTI JOIN cost_claimed_elsewhere e ON e.trace_id = s.trace_id AND e.span_id = s.span_id"
                if elsewhere else "span_rows s")
        for trace, spent, calls, agent in read(
                f"SELECT s.trace_id, sum(s.cost_usd), count(*), arg_max(s.agent_id, s.end_ns) FROM {mine} "
                "WHERE s.cost_usd > 0 AND s.trace_id IN "
                "(SELECT DISTINCT trace_id FROM span_rows WHERE cost_usd > 0 AND end_ns >= ?) GROUP BY s.trace_id",
                [since]):
            for spec in ledger.specs:
                if spec.scope == "task" and (every_task or reaches_first_step(spec, spent)):
                    ledger.restore(spec.name, trace, spent, now, calls, (agent,) if agent else ())


def budget_accounts(read: Query, specs: list[BudgetSpec], now: float) -> list[dict]:
    """The budget accounts of the current periods, rebuilt from the store: what ``GET /v1/costs`` answers
    as ``budgets`` (``BudgetLedger.accounts``), for a pipeline that is not running."""
    ledger = BudgetLedger(list(specs))
    restore_budgets(ledger, read, now)
    return ledger.accounts(now)
