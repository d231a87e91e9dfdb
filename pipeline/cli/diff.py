"""``agent-sre diff``: what changed between two traces, or between two sets of traces.

    agent-sre diff TRACE_A TRACE_B [--no-links]
    agent-sre diff --baseline "agent_version='1.4.0'" --candidate "agent_version='1.5.0'" [--task triage]

The same answer running or stopped: the running pipeline's ``POST /v1/diff`` (body ``{"trace_a",
"trace_b", "follow_links"}`` or ``{"baseline", "candidate", "task"}``), or, when none answers (or with
``--db``), ``processors.replay.diff`` over the file opened read-only.  Text for a person (coloured on a
terminal unless ``NO_COLOR`` is set), ``--format json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    StoreMissing,
    admin_client,
    open_store,
    reader,
    targets,
)


def register(sub) -> None:
    d = sub.add_parser("diff", help="what changed between two traces, or two sets of traces (by SQL filter)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("traces", nargs="*", metavar="TRACE", help="two trace ids: A (before) and B (after)")
    d.add_argument("--baseline", help="SQL predicate over spans choosing the baseline traces")
    d.add_argument("--candidate", help="SQL predicate over spans choosing the candidate traces")
    d.add_argument("--task", help="only traces of this task_name (with --baseline/--candidate)")
    d.add_argument("--no-links", action="store_true", help="do not follow links to delegated traces")
    d.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    d.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
    d.add_argument("--db", help="read this DuckDB file directly (pipeline stopped)")
    d.add_argument("--format", choices=("table", "json"), default="table")
    d.set_defaults(fn=cmd_diff)


def use_color() -> bool:
    """ANSI colours on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def request_body(args: argparse.Namespace) -> dict:
    """The ``POST /v1/diff`` body the arguments ask for; usage errors exit 2."""
    from agent_sre.processors.replay.traces import valid_trace_id

    sets = args.baseline is not None or args.candidate is not None
    if sets:
        if args.traces:
            raise CliError("give two trace ids, or --baseline and --candidate, not both", EXIT_CONFIG)
        if args.baseline is None or args.candidate is None:
            raise CliError("a set diff needs both --baseline and --candidate", EXIT_CONFIG)
        return {"baseline": args.baseline, "candidate": args.candidate, "task": args.task}
    if len(args.traces) != 2:
        raise CliError("give two trace ids (A and B), or --baseline FILTER --candidate FILTER", EXIT_CONFIG)
    if args.task is not None:
        raise CliError("--task goes with --baseline and --candidate", EXIT_CONFIG)
    ids = [t.strip().lower() for t in args.traces]
    for t in ids:
        if not valid_trace_id(t):
            raise CliError(f"not a trace id: {t!r} (32 hex digits)", EXIT_CONFIG)
    return {"trace_a": ids[0], "trace_b": ids[1], "follow_links": not args.no_links}


def cmd_diff(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.diff import DiffError, diff_request, render_diff

    body = request_body(args)
    cfg = targets(args.config)  # where the API and the store are: nothing else of the config is needed
    client = admin_client(args, cfg)
    doc = None
    if client is not None:
        try:
            doc = client.post_json("/v1/diff", body)
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(f"diff failed ({exc.status}): {exc}") from None
    if doc is None:
        try:
            con = open_store(cfg, args.db)
        except StoreMissing as exc:
            raise CliError(f"nothing to diff: {exc} (no pipeline has run with this config)") from None
        try:
            doc = diff_request(reader(con), body)
        except DiffError as exc:
            raise CliError(str(exc)) from None
        finally:
            con.close()
    if args.format == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_diff(doc, use_color()))
    return 0
