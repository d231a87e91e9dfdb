"""``agent-sre what-if``: cost, SLOs, alerts, budgets and breakers over a time range, as they were
and as they would have been under other conditions (re-priced models, a tool removed or slowed,
other SLO targets or budgets).

The same answer running or stopped: the running pipeline's ``POST /v1/what-if``, or, when none
answers (or with ``--db``), ``processors.replay.whatif.what_if`` over its file with the objectives,
SLIs, budgets and breakers of ``--config`` (the embedded default without one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    admin_client,
    load,
    note,
    open_store,
    processor_settings,
    reader,
)

ROUTE = "/v1/what-if"


def register(sub) -> None:
    p = sub.add_parser("what-if", help="cost, SLOs, alerts and budgets over a time range, as they were and as "
                                       "they would have been under other conditions")
    p.add_argument("--since", required=True,
                   help="start of the range: a duration ago (24h, 90m, 7d), a time (2025-01-31T12:00, UTC unless "
                        "it gives an offset) or Unix nanoseconds")
    p.add_argument("--until", help="end of the range (default: now), in the same forms")
    p.add_argument("--reprice", action="append", default=[], metavar="MODEL=MODEL",
                   help="price the first model's LLM spans at the second's price, same tokens (repeatable)")
    p.add_argument("--prices", metavar="FILE", help="a price table (YAML or JSON: model: {input_per_mtok, "
                                                    "output_per_mtok, cached_input_per_mtok}) over genai-prices")
    p.add_argument("--remove-tool", action="append", default=[], metavar="TOOL",
                   help="the tool's calls vanish, with their time and cost (repeatable)")
    p.add_argument("--slow-tool", action="append", default=[], metavar="TOOL=2s|xN",
                   help="each call of the tool lasts 2s longer, or N times as long (repeatable)")
    p.add_argument("--slo", action="append", default=[], metavar="NAME=TARGET",
                   help="another target for the objective (by its name or its SLI's), e.g. task-success=0.999")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=USD",
                   help="another limit for the budget, e.g. agent-daily=50 (repeatable)")
    p.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    p.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
    p.add_argument("--db", help="a DuckDB store to read when no pipeline runs")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(fn=cmd_what_if)


def cmd_what_if(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.whatif import parse_request, render_what_if

    now_ns = time.time_ns()
    body = {"since_ns": parse_instant(args.since, now_ns, "--since"),
            "until_ns": parse_instant(args.until, now_ns, "--until") if args.until else now_ns,
            "reprice": args.reprice, "remove_tools": args.remove_tool, "slow_tools": args.slow_tool,
            "slo": args.slo, "budgets": args.budget}
    if args.prices:
        body["prices"] = _price_table(args.prices)
    try:
        since, until, changes = parse_request(body, now_ns)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    if until <= since:
        raise CliError("the range is empty: --until must be after --since", EXIT_CONFIG)
    cfg = load(args.config)
    client = admin_client(args, cfg)
    doc = None
    if client is not None:
        try:
            doc = client.post_json(ROUTE, body)
        except AdminUnreachable:
            pass  # no pipeline running: compute from the file
        except AdminError as exc:
            raise CliError(f"what-if failed ({exc.status}): {exc}", EXIT_CONFIG if exc.status == 400 else 1) from None
    if doc is None:
        doc = _from_file(cfg, args.db, since, until, changes)
    if not doc["range"]["spans"]:
        note("no spans in the range: both columns are empty")
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(render_what_if(doc, color))
    return 0


def _from_file(cfg, db: str | None, since: int, until: int, changes) -> dict:
    """The answer from the store (``--db``, else the config's), with the config's SRE settings."""
    from agent_sre.processors.replay.whatif import RangeTooLarge, config_from_settings, what_if

    config = config_from_settings(*(processor_settings(cfg, t) for t in ("slo", "sli", "cost", "incidents")))
    con = open_store(cfg, db)  # a missing store is an error here: there is nothing to compare
    try:
        return what_if(reader(con), since, until, changes, config)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    except RangeTooLarge as exc:
        raise CliError(str(exc)) from None
    finally:
        con.close()


def parse_instant(text: str, now_ns: int, flag: str = "--since") -> int:
    """A duration ago (``24h``), an ISO time (UTC unless it has an offset) or Unix ns -> Unix ns."""
    from datetime import datetime, timezone

    from agent_sre.pipeline.component.config import parse_duration

    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        return now_ns - int(parse_duration(value) * 1e9)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"{flag}: {text!r} is neither a duration ago (24h, 90m), a time (2025-01-31T12:00) "
                       "nor Unix nanoseconds", EXIT_CONFIG) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def _price_table(path: str) -> dict:
    """The ``--prices`` file: model -> {input_per_mtok, output_per_mtok[, cached_input_per_mtok]}."""
    import yaml

    try:
        table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"--prices: cannot read {path}: {exc.strerror or exc}", EXIT_CONFIG) from None
    except yaml.YAMLError as exc:
        raise CliError(f"--prices: {path} is not YAML or JSON: {exc}", EXIT_CONFIG) from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise CliError(f"--prices: {path} must map each model to {{input_per_mtok, output_per_mtok, "
                       "cached_input_per_mtok}", EXIT_CONFIG)
    return table
