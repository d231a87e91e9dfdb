"""``agent-sre rollout start FILE | status [NAME] | promote NAME [--full] | pause NAME | resume NAME | abort NAME``.

Rollouts run in the running pipeline (its ``delivery`` processor): ``start`` posts the file to
``POST /v1/rollouts`` after validating it here (its problems are reported with their paths whether or
not a pipeline runs), and the actions post to ``POST /v1/rollouts/{name}/{action}``.  ``status`` reads
``GET /v1/rollouts[/{name}]``, or, with no pipeline answering (or ``--db``), the store's ``rollouts``
table and the rollout events, read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    StoreMissing,
    admin_client,
    load,
    note,
    open_store,
    print_table,
    reader,
)

ACTIONS = ("promote", "pause", "resume", "abort")


def register(sub) -> None:
    r = sub.add_parser("rollout", help="canary and shadow rollouts of agent versions (start, status, promote, "
                                       "pause, resume, abort)")
    rs = r.add_subparsers(dest="rollout_command", required=True)
    start = rs.add_parser("start", help="validate a Rollout YAML and start it in the running pipeline")
    start.add_argument("file")
    status = rs.add_parser("status", help="every rollout, or one with its last analysis and decisions")
    status.add_argument("name", nargs="?")
    status.add_argument("--db", help="a DuckDB store to read when no pipeline runs")
    helps = {"promote": "go on to the next step now (past a manual gate); --full: straight to 100 %%",
             "pause": "hold the rollout at its weight", "resume": "go on after a pause",
             "abort": "stop the rollout: every session to the baseline"}
    for action in ACTIONS:
        cmd = rs.add_parser(action, help=helps[action])
        cmd.add_argument("name")
        cmd.add_argument("--why", default="", help="why, for the rollout's history")
        if action == "promote":
            cmd.add_argument("--full", action="store_true", help="promote to 100 %% now, skipping the steps left")
    for cmd in (start, status, *(rs.choices[a] for a in ACTIONS)):
        cmd.add_argument("--config", help="pipeline YAML (default: the embedded default)")
        cmd.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
        cmd.add_argument("--format", choices=["table", "json"], default="table")
        if cmd is not status:
            cmd.add_argument("--by", default=os.environ.get("USER", "") or "unknown", help="who (default: $USER)")
    start.set_defaults(fn=cmd_rollout_start)
    status.set_defaults(fn=cmd_rollout_status)
    for action in ACTIONS:
        rs.choices[action].set_defaults(fn=cmd_rollout_action, full=False)


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _running(args: argparse.Namespace, what: str):
    client = admin_client(args, load(args.config))
    if client is None:
        raise CliError("the config has no admin extension to reach the pipeline", EXIT_CONFIG)
    return client, f"no pipeline answers at {client.endpoint}; rollouts {what} only in a running pipeline"


def cmd_rollout_start(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.component.errors import ConfigError
    from agent_sre.processors.delivery.rollout import load_rollout

    try:
        rollout = load_rollout(args.file)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    client, unreachable = _running(args, "start")
    try:
        with open(args.file, encoding="utf-8") as f:
            body = client.post_json("/v1/rollouts", {"document": f.read(), "by": args.by})
    except AdminUnreachable:
        raise CliError(unreachable) from None
    except AdminError as exc:
        raise CliError(f"rollout {rollout.name} not started ({exc.status}): {exc}") from None
    return _print_one(body, args.format)


def cmd_rollout_action(args: argparse.Namespace) -> int:
    action = args.rollout_command
    client, unreachable = _running(args, "change")
    payload = {"by": args.by, "why": args.why, **({"full": True} if args.full else {})}
    try:
        body = client.post_json(f"/v1/rollouts/{_quoted(args.name)}/{action}", payload)
    except AdminUnreachable:
        raise CliError(unreachable) from None
    except AdminError as exc:
        raise CliError(f"{action} of rollout {args.name} failed ({exc.status}): {exc}") from None
    return _print_one(body, args.format)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    client = admin_client(args, cfg)
    body = None
    if client is not None:
        path = f"/v1/rollouts/{_quoted(args.name)}" if args.name else "/v1/rollouts"
        try:
            body = client.get_json(path)
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(f"rollout status failed ({exc.status}): {exc}") from None
    if body is None:
        body = _from_file(cfg, args.db, args.name)
    if args.name:
        return _print_one(body, args.format)
    if args.format == "json":
        print(json.dumps(body, indent=2))
    elif body["rollouts"]:
        from agent_sre.processors.delivery.report import LIST_COLUMNS, list_rows

        print_table({"columns": LIST_COLUMNS, "rows": list_rows(body["rollouts"])}, "table")
    else:
        note("no rollouts yet")
    return 0


def _from_file(cfg, db: str | None, name: str | None) -> dict:
    """What GET /v1/rollouts[/{name}] answers, from the stopped pipeline's store."""
    from agent_sre.processors.delivery.records import rollout_detail, rollout_list

    try:
        con = open_store(cfg, db)
    except StoreMissing as exc:
        if name:
            raise CliError(f"no rollout {name!r} ({exc})") from None
        note(f"no rollouts yet: {exc} (no pipeline has run with this config)")
        return {"rollouts": []}
    try:
        if name:
            found = rollout_detail(reader(con), name)
            if found is None:
                raise CliError(f"no rollout {name!r}")
            return found
        return {"rollouts": rollout_list(reader(con))}
    finally:
        con.close()


def _print_one(body: dict, fmt: str) -> int:
    if fmt == "json":
        print(json.dumps(body, indent=2))
    else:
        from agent_sre.processors.delivery.report import render_rollout

        print(render_rollout(body), end="")
    return 0
