"""``agent-sre golden add|check|list``: golden suites of traces a candidate must still behave like.

    agent-sre golden add TRACE_ID --suite triage [--output-similarity 0.9 --cost-ratio 1.2 ...]
    agent-sre golden check --suite triage --candidate "agent_version='1.5.0'"   # exit 1 on a regression
    agent-sre golden check --suite triage --candidate-trace TRACE_ID
    agent-sre golden check --suite triage --replays      # the re-runs of `agent-sre replay` of each trace
    agent-sre golden list

A suite is a directory, ``./golden/<suite>/`` by default (``--dir`` changes ``./golden``), to commit
with the agent's code; processors/replay/golden.py documents its files, the tolerances and how
candidates are matched to golden traces.  The traces come from the running pipeline (``GET
/v1/traces/{id}?format=otlp`` to add; ``POST /v1/golden/check`` with the suite to check) or, when none
answers (or with ``--db``), from the store's file opened read-only.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    CliError,
    StoreMissing,
    admin_client,
    open_store,
    reader,
    targets,
)
from agent_sre.pipeline.cli.diff import use_color

_TOLERANCE_FLAGS = (("--output-similarity", "output_similarity", float, "output similarity at least (0-1)"),
                    ("--cost-ratio", "cost_ratio", float, "candidate cost / golden cost at most"),
                    ("--latency-ratio", "latency_ratio", float, "candidate latency / golden latency at most"),
                    ("--tool-edit-distance", "tool_edit_distance", int,
                     "edit distance of the tool-call sequences at most (0: the same calls in order)"))


def register(sub) -> None:
    g = sub.add_parser("golden", help="golden suites: traces a candidate version must still behave like")
    g_sub = g.add_subparsers(dest="golden_command", required=True)
    add = g_sub.add_parser("add", help="add a stored trace to a suite (its OTLP/JSON and an entry in suite.yaml)")
    add.add_argument("trace")
    add.add_argument("--suite", required=True, help="the suite's name: the directory DIR/SUITE")
    for flag, dest, type_, help_ in _TOLERANCE_FLAGS:
        add.add_argument(flag, dest=dest, type=type_,
                         help=help_ + " (a new suite's default; for an existing suite, this trace's own)")
    check = g_sub.add_parser("check", help="compare candidate traces with a suite; exit 1 on a regression")
    check.add_argument("--suite", required=True)
    which = check.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", help="SQL predicate over spans choosing the candidate traces")
    which.add_argument("--candidate-trace", help="one candidate trace id (for the golden traces of its task)")
    which.add_argument("--replays", action="store_true", help="the replays of each golden trace (agent_sre.replay.of)")
    check.add_argument("--allow-missing", action="store_true",
                       help="a golden trace without a candidate is not a regression")
    lst = g_sub.add_parser("list", help="the suites and their golden traces")
    lst.add_argument("--suite", help="only this suite")
    for cmd in (add, check, lst):
        cmd.add_argument("--dir", default="golden", help="where suites live (default ./golden)")
        cmd.add_argument("--format", choices=("table", "json"), default="table")
    for cmd in (add, check):
        cmd.add_argument("--config", help="pipeline YAML (default: the embedded default)")
        cmd.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
        cmd.add_argument("--db", help="read this DuckDB file directly (pipeline stopped)")
    add.set_defaults(fn=cmd_golden_add)
    check.set_defaults(fn=cmd_golden_check)
    lst.set_defaults(fn=cmd_golden_list)


def _golden_error(exc: Exception) -> CliError:
    return CliError(str(exc), EXIT_CONFIG)


def _export(args: argparse.Namespace, trace_id: str) -> dict:
    """The trace as OTLP/JSON, with the traces it delegated to: from the running pipeline, or the file."""
    from agent_sre.processors.replay.otlp_io import export_trace

    cfg = targets(args.config)
    client = admin_client(args, cfg)
    if client is not None:
        try:
            return client.get_json(f"/v1/traces/{trace_id}", {"format": "otlp", "links": "true"})
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(f"cannot read trace {trace_id} from {client.endpoint} ({exc.status}): {exc}") from None
    try:
        con = open_store(cfg, args.db)
    except StoreMissing as exc:
        raise CliError(f"no trace to add: {exc}") from None
    try:
        doc = export_trace(reader(con), trace_id, follow_links=True)
    finally:
        con.close()
    if doc is None:
        raise CliError(f"no spans of trace {trace_id} in the store")
    return doc


def cmd_golden_add(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.golden import GoldenError, add_trace, suite_dir
    from agent_sre.processors.replay.traces import valid_trace_id

    trace_id = args.trace.strip().lower()
    if not valid_trace_id(trace_id):
        raise CliError(f"not a trace id: {args.trace!r} (32 hex digits)", EXIT_CONFIG)
    tolerances = {dest: getattr(args, dest) for _, dest, _, _ in _TOLERANCE_FLAGS if getattr(args, dest) is not None}
    try:
        directory = suite_dir(args.suite, args.dir)
        otlp = _export(args, trace_id)
        entry = add_trace(directory, trace_id, otlp, tolerances)
    except GoldenError as exc:
        raise _golden_error(exc) from None
    if args.format == "json":
        print(json.dumps(entry, indent=2, default=str))
        return 0
    s = entry["summary"]
    print(f"{'created suite' if entry['new_suite'] else 'suite'} {entry['suite']} ({directory}): added {trace_id}")
    print(f"  task {s['task'] or '-'}, agent {s['agent'] or '-'}, {s['status']}, {s['spans']} spans, "
          f"cost ${s['cost_usd']:.6f}, latency {s['latency_ms'] / 1000:.3f}s")
    print(f"  tools: {' → '.join(s['tools']) or '(none)'}")
    if entry.get("tolerances"):
        print(f"  its tolerances: {entry['tolerances']}")
    return 0


def cmd_golden_check(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.golden import (
        GoldenError,
        check_request,
        load_suite,
        render_check,
        suite_dir,
    )

    try:
        suite = load_suite(suite_dir(args.suite, args.dir))
    except GoldenError as exc:
        raise _golden_error(exc) from None
    ask = {"candidate": args.candidate, "candidate_trace": args.candidate_trace.strip().lower()
           if args.candidate_trace else None, "replays": args.replays, "allow_missing": args.allow_missing}
    cfg = targets(args.config)
    client = admin_client(args, cfg)
    doc = None
    if client is not None:
        try:
            doc = client.post_json("/v1/golden/check", {"suite": suite, **ask})
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(f"golden check failed ({exc.status}): {exc}", EXIT_CONFIG if exc.status == 400
                           else EXIT_RUNTIME) from None
    if doc is None:
        try:
            con = open_store(cfg, args.db)
        except StoreMissing as exc:
            raise CliError(f"no candidates to check: {exc}") from None
        try:
            doc = check_request(reader(con), {"suite": suite, **ask})
        except GoldenError as exc:
            raise _golden_error(exc) from None
        finally:
            con.close()
    if args.format == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_check(doc, use_color()))
    return 0 if doc["ok"] else 1


def cmd_golden_list(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.golden import GoldenError, list_suites, render_list

    try:
        suites = list_suites(args.dir)
    except GoldenError as exc:
        raise _golden_error(exc) from None
    if args.suite:
        suites = [s for s in suites if s["suite"] == args.suite]
        if not suites:
            print(f"agent-sre: no golden suite {args.suite!r} under {args.dir}", file=sys.stderr)
            return EXIT_CONFIG
    if args.format == "json":
        print(json.dumps({"suites": suites}, indent=2, default=str))
    else:
        print(render_list(suites))
    return 0
