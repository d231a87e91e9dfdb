"""The ``agent-sre`` command line: the argument parser and the dispatch to the command groups.

    agent-sre run [--config FILE]            run the pipeline (embedded default without --config)
    agent-sre validate --config FILE         report every config problem with its YAML path
    agent-sre config [--config FILE]         the effective config, defaults filled in, secrets masked
    agent-sre components                     list the component types
    agent-sre query "SQL" [--config FILE]    read-only SQL: through the running pipeline's API, or the file
    agent-sre export-parquet [--out DIR]     hourly Parquet files of the stored spans
    agent-sre slo status|rules               SLOs per agent; Prometheus rules for them
    agent-sre cost unknown-models|summary    unpriced models; spend per day, agent and model
    agent-sre incidents list|show|ack|investigate|mitigate|resolve
    agent-sre postmortem INCIDENT_ID         the incident's postmortem in Markdown
    agent-sre trace show|export|import       one stored trace as a tree, as OTLP/JSON, and back
    agent-sre replay TRACE_ID [-- CMD]       serve a trace's recorded LLM and tool answers; re-run and diff
    agent-sre diff A B | --baseline --candidate   what changed between two traces or two sets
    agent-sre golden add|check|list          golden suites of traces with tolerances (exit 1 on a regression)
    agent-sre what-if --since 24h ...        re-priced, tools removed or slowed, other targets and budgets
    agent-sre chaos templates|start|stop|list|report   chaos experiments, injected by agent_sre.chaos
    agent-sre rollout start|status|promote|pause|resume|abort   canary and shadow rollouts of agent versions
    agent-sre mcp [--transport stdio|http]   the SRE state as MCP tools for agents and IDE assistants

One module per command group (run, config, query, slo, cost, incidents, trace, replay, diff, golden,
whatif, chaos, rollout, mcp); every command talks to a
running pipeline through ``admin_client.AdminClient``.  The modules import the pipeline, the store
and the processors inside the commands that use them: ``--help`` starts at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent_sre.pipeline.cli.chaos import register as register_chaos
from agent_sre.pipeline.cli.common import CliError, note
from agent_sre.pipeline.cli.config import cmd_components, cmd_config, cmd_validate
from agent_sre.pipeline.cli.cost import cmd_cost_summary, cmd_cost_unknown_models
from agent_sre.pipeline.cli.diff import register as register_diff
from agent_sre.pipeline.cli.golden import register as register_golden
from agent_sre.pipeline.cli.incidents import cmd_incidents, cmd_postmortem
from agent_sre.pipeline.cli.mcp import register as register_mcp
from agent_sre.pipeline.cli.query import cmd_export_parquet, cmd_query
from agent_sre.pipeline.cli.replay import register as register_replay
from agent_sre.pipeline.cli.rollout import register as register_rollout
from agent_sre.pipeline.cli.run import cmd_run
from agent_sre.pipeline.cli.slo import cmd_slo_rules, cmd_slo_status
from agent_sre.pipeline.cli.trace import register as register_trace
from agent_sre.pipeline.cli.whatif import register as register_whatif


def _days(text: str) -> int:
    """--days as GET /v1/costs takes it (1 to 366), checked before asking the pipeline or the file."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= days <= 366:
        raise argparse.ArgumentTypeError("must be 1 to 366")
    return days


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-sre", description="SRE for AI agents: OTLP in, DuckDB out.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("validate", help="validate a pipeline YAML")
    v.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    v.set_defaults(fn=cmd_validate)
    ec = sub.add_parser("config", help="print the effective config: defaults filled in, secrets masked")
    ec.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    ec.set_defaults(fn=cmd_config)
    c = sub.add_parser("components", help="list component types")
    c.set_defaults(fn=cmd_components)
    q = sub.add_parser("query", help="read-only SQL over the span store")
    q.add_argument("sql")
    q.add_argument("--config", help="pipeline YAML to find the API endpoint and store (default: embedded)")
    q.add_argument("--endpoint", help="admin API host:port (default: from the config)")
    q.add_argument("--db", help="read this DuckDB file directly (pipeline stopped)")
    q.add_argument("--max-rows", type=int, default=1000)
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")
    q.add_argument("--store", help="a fleet store to query instead: clickhouse://[user[:password]@]host[:port]/db")
    q.set_defaults(fn=cmd_query)
    slo = sub.add_parser("slo", help="service level objectives")
    slo_sub = slo.add_subparsers(dest="slo_command", required=True)
    st = slo_sub.add_parser("status", help="every SLO per agent: SLI value, budget, burn rates, firing alerts")
    st.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    st.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
    st.add_argument("--format", choices=["table", "json", "csv"], default="table")
    st.add_argument("--store", help="the fleet store instead: clickhouse://[user[:password]@]host[:port]/db (every pipeline)")
    st.set_defaults(fn=cmd_slo_status)
    ru = slo_sub.add_parser("rules", help="Prometheus recording/alerting rules for the SLOs (from the SLI counters)")
    ru.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    ru.add_argument("--out", help="write to this file (default: standard output)")
    ru.set_defaults(fn=cmd_slo_rules)
    cost = sub.add_parser("cost", help="LLM cost accounting")
    cost_sub = cost.add_subparsers(dest="cost_command", required=True)
    um = cost_sub.add_parser("unknown-models", help="models of LLM spans left without a cost, with span counts")
    for flag, kw in (("--config", {"help": "pipeline YAML (default: the embedded default)"}),
                     ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"}),
                     ("--db", {"help": "a DuckDB store to read when no pipeline runs"}),
                     ("--format", {"choices": ["table", "json", "csv"], "default": "table"}),
                     ("--max-rows", {"type": int, "default": 1000})):
        um.add_argument(flag, **kw)
    um.set_defaults(fn=cmd_cost_unknown_models)
    cs = cost_sub.add_parser("summary", help="spend per day, agent and model, with the daily budget's utilisation")
    for flag, kw in (("--config", {"help": "pipeline YAML (default: the embedded default)"}),
                     ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"}),
                     ("--db", {"help": "a DuckDB store to read when no pipeline runs"}),
                     ("--days", {"type": _days, "default": 7, "help": "how many days back (default 7)"}),
                     ("--format", {"choices": ["table", "json", "csv"], "default": "table"}),
                     ("--store", {"help": "the fleet store instead: clickhouse://[user[:password]@]host[:port]/db "
                                          "(every pipeline)"})):
        cs.add_argument(flag, **kw)
    cs.set_defaults(fn=cmd_cost_summary)
    common = (("--config", {"help": "pipeline YAML (default: the embedded default)"}),
              ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"}))
    inc = sub.add_parser("incidents", help="incidents: list, show, and move them through their lifecycle")
    inc_sub = inc.add_subparsers(dest="incidents_command", required=True)
    for name, help_ in (("list", "incidents, newest first (open ones; --all for every one)"),
                        ("show", "one incident with its log"), ("ack", "acknowledge an incident"),
                        ("investigate", "mark an incident as being investigated"),
                        ("mitigate", "mark an incident as mitigated"), ("resolve", "resolve an incident")):
        cmd = inc_sub.add_parser(name, help=help_)
        for flag, kw in common:
            cmd.add_argument(flag, **kw)
        if name == "list":
            cmd.add_argument("--all", action="store_true", help="resolved incidents too")
            cmd.add_argument("--store", help="the fleet store instead: clickhouse://.../db (every pipeline's incident events)")
        else:
            cmd.add_argument("id")
        if name in ("ack", "investigate", "mitigate", "resolve"):
            cmd.add_argument("--by", default=os.environ.get("USER", "") or "unknown", help="who (default: $USER)")
            cmd.add_argument("--why", default="", help="why, for the log and the postmortem")
        else:
            cmd.add_argument("--db", help="a DuckDB store to read when no pipeline runs")
            cmd.add_argument("--format", choices=["table", "json", "csv"], default="table")
        cmd.set_defaults(fn=cmd_incidents, all=False)
    pm = sub.add_parser("postmortem", help="write an incident's postmortem in Markdown, built from the store")
    pm.add_argument("id")
    for flag, kw in common:
        pm.add_argument(flag, **kw)
    pm.add_argument("--db", help="a DuckDB store to read when no pipeline runs")
    pm.add_argument("--out", help="write to this file (default: standard output)")
    pm.set_defaults(fn=cmd_postmortem)
    e = sub.add_parser("export-parquet", help="write stored spans as hourly Parquet files (pipeline stopped)")
    e.add_argument("--config")
    e.add_argument("--db")
    e.add_argument("--out", help="directory (default: parquet/ next to the store)")
    e.add_argument("--since-hours-ago", type=float, default=0)
    e.set_defaults(fn=cmd_export_parquet)
    register_trace(sub)
    register_replay(sub)
    register_diff(sub)
    register_golden(sub)
    register_whatif(sub)
    register_chaos(sub)
    register_rollout(sub)
    register_mcp(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CliError as exc:
        note(str(exc))
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
