"""``agent-sre cost summary`` (spend and budgets) and ``agent-sre cost unknown-models``.

``cost summary`` gives the same answer running or stopped: the running pipeline's ``GET /v1/costs``,
or, when none answers, the same rows from its file (``processors.cost.summary``: ``cost_summary``
and ``budget_accounts``, the accounts a cost processor starting now would rebuild).  Budgets of
periods (agent, org, model, tenant) are one row per account; a task budget has an account per
task (trace) whose spend reached the budget's first step (50 % unless configured: below it a task
raises no event and changes no decision, and its spend is in the other budgets), so it is one row per
budget: how many such tasks, their total and largest spend, and how many reached its throttle and its
kill point.

``cost summary --store clickhouse://…`` gives the same tables over every pipeline's spend in the
fleet store (its per-minute rollup; see fleet.py), with the config's budgets (the embedded
default's without ``--config``), by the same ``cost_summary`` and ``budget_accounts``.
"""

from __future__ import annotations

import argparse
import json
import time

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    StoreMissing,
    admin_client,
    budget_specs,
    load,
    note,
    open_store,
    print_table,
    processor_settings,
    reader,
)
from agent_sre.pipeline.cli.query import run_sql

UNKNOWN_MODELS_SQL = ("SELECT coalesce(provider, '') AS provider, coalesce(model, '(no model)') AS model, "
                      "count(*) AS spans, sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens "
                      "FROM spans WHERE span_role = 'llm' AND cost_usd IS NULL GROUP BY ALL ORDER BY spans DESC")
_EPS = 1e-9  # as the ledger: spend is a float sum, ten charges of 0.1 of a 1.0 limit reach 100 %


def cmd_cost_unknown_models(args: argparse.Namespace) -> int:
    """LLM spans the cost processor could not price (no client cost, no known or overridden model)."""
    return run_sql(args, UNKNOWN_MODELS_SQL)


def cmd_cost_summary(args: argparse.Namespace) -> int:
    """Spend per day, agent and model with the daily budget's utilisation, and the budgets: /v1/costs,
    or the file."""
    cfg = load(args.config)
    specs = budget_specs(cfg)
    fleet = getattr(args, "store", None)
    client = None if fleet else admin_client(args, cfg)
    answer = None
    empty: str | None
    if fleet:
        rows, accounts, empty = _from_fleet(fleet, specs, args.days)
    elif client is not None:
        try:
            answer = client.get_json("/v1/costs", {"days": args.days})
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            if exc.status == 404:  # the pipeline runs without a cost processor
                raise CliError(f"the pipeline at {client.endpoint} answers: {exc}", EXIT_CONFIG) from None
            raise CliError(f"cost summary failed ({exc.status}): {exc}") from None
    if answer is not None:
        rows, accounts, empty = answer["summary"], answer["budgets"], None
    elif not fleet:
        rows, accounts, empty = _from_file(cfg, args.db, specs, args.days)
    budgets = [a for a in accounts if a["scope"] != "task"]
    tasks = task_budgets(accounts, specs)
    if not rows and not accounts:
        note(empty or f"no LLM spend in the last {args.days} day(s)")
    if args.format == "json":
        print(json.dumps({"summary": rows, "budgets": budgets, "task_budgets": tasks}, indent=2))
        return 0
    if not rows and not accounts:
        return 0
    table = [[r["day"], r["agent_id"] or "-", r["model"] or "-", f"{r['cost_usd']:.6f}", r["llm_spans"],
              f"{r['agent_day_usd']:.6f}", "-" if r["utilisation"] is None else f"{r['utilisation']:.1%}"]
             for r in rows]
    print_table({"columns": ["day", "agent", "model", "cost USD", "LLM spans", "agent's day USD",
                             "daily budget used"], "rows": table}, args.format)
    if args.format != "table":
        return 0
    if budgets:
        print()
        print_table({"columns": ["budget", "scope", "subject", "period", "spent USD", "limit USD", "used"],
                     "rows": [[b["budget"], b["scope"], b["subject"], b["period"], f"{b['spent_usd']:.6f}",
                               f"{b['limit_usd']:g}", f"{b['utilisation']:.1%}"] for b in budgets]}, "table")
    if tasks:
        print()
        print_table({"columns": ["task budget", "tasks past 1st step", "spent USD", "max task USD", "limit USD", "max used",
                                 "throttled", "killed"],
                     "rows": [[t["budget"], t["tasks"], f"{t['spent_usd']:.6f}", f"{t['max_spent_usd']:.6f}",
                               f"{t['limit_usd']:g}", f"{t['max_utilisation']:.1%}",
                               "-" if t["throttled"] is None else t["throttled"],
                               "-" if t["killed"] is None else t["killed"]] for t in tasks]}, "table")
    return 0


def _from_file(cfg, db: str | None, specs: list, days: int) -> tuple[list[dict], list[dict], str | None]:
    """(summary rows, budget accounts, what to say when both are empty) from the stopped pipeline's file."""
    from agent_sre.processors.cost.summary import budget_accounts, cost_summary

    if not db and not processor_settings(cfg, "cost"):
        raise CliError("the config has no cost processor", EXIT_CONFIG)
    try:
        con = open_store(cfg, db)
    except StoreMissing as exc:
        return [], [], f"no LLM spend yet: {exc} (no pipeline has run with this config)"
    try:
        read, now = reader(con), time.time()
        return cost_summary(read, specs, now, days), budget_accounts(read, specs, now), None
    finally:
        con.close()


def _from_fleet(url: str, specs: list, days: int) -> tuple[list[dict], list[dict], str | None]:
    """(summary rows, budget accounts, what to say when both are empty) over the fleet store."""
    from agent_sre.pipeline.cli.fleet import cli_errors
    from agent_sre.processors.cost.fleet import fleet_costs

    rows, accounts = cli_errors(lambda: fleet_costs(url, specs, time.time(), days))
    return rows, accounts, f"no LLM spend in the fleet store in the last {days} day(s)"


def task_budgets(accounts: list[dict], specs: list) -> list[dict]:
    """One row per task budget over its tasks' accounts (``/v1/costs`` ``budgets`` of scope task):
    tasks, total and largest spend, largest utilisation, and how many tasks are throttled (at or past
    the throttle point, below the kill point) and killed (at or past the kill point).  Throttled and
    killed are None for a budget the config does not name (its points are not known here)."""
    points = {s.name: (s.throttle_at, s.kill_at) for s in specs if s.scope == "task"}
    groups: dict[str, list[dict]] = {}
    for a in accounts:
        if a["scope"] == "task":
            groups.setdefault(a["budget"], []).append(a)
    rows = []
    for name in sorted(groups):
        mine = groups[name]
        used = [a["spent_usd"] / a["limit_usd"] + _EPS for a in mine]
        throttle, kill = points.get(name, (None, None))
        rows.append({
            "budget": name, "scope": "task", "tasks": len(mine),
            "spent_usd": round(sum(a["spent_usd"] for a in mine), 9),
            "max_spent_usd": max(a["spent_usd"] for a in mine), "limit_usd": mine[0]["limit_usd"],
            "max_utilisation": round(max(a["utilisation"] for a in mine), 6),
            "throttled": None if throttle is None else sum(throttle <= u < kill for u in used),
            "killed": None if kill is None else sum(u >= kill for u in used),
        })
    return rows
