"""``agent-sre trace show|export|import``: one stored trace as a tree, out as OTLP/JSON, and back in.

    agent-sre trace show TRACE_ID [--format table|json] [--no-links]
    agent-sre trace export TRACE_ID [--out t.json]
    agent-sre trace import t.json [--db FILE | --endpoint HOST:PORT]

``show`` and ``export`` ask the running pipeline (``GET /v1/traces/{id}``, ``?format=otlp``) and, when none
answers, read its file read-only: the same functions (processors/replay) give the same answer.
``import`` sends the file to the running pipeline's OTLP/HTTP receiver (``--endpoint``, else the config's),
or, when none answers (or with ``--db``), appends it to the store file through the store itself.
The tree is coloured only on a terminal, and never with ``NO_COLOR`` set.
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
    emit,
    load,
    note,
    open_store,
    reader,
    store_path,
    targets,
)

_COMMON = (("--config", {"help": "pipeline YAML (default: the embedded default)"}),
           ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"}),
           ("--db", {"help": "a DuckDB store to read when no pipeline runs"}))


def register(sub) -> None:
    """``trace show|export|import`` on the ``agent-sre`` subparsers."""
    trace = sub.add_parser("trace", help="one stored trace: as a tree, as OTLP/JSON, and back into a store")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True)
    show = trace_sub.add_parser("show", help="the span tree: agents, tools, LLM calls, cost, tokens, latency, errors")
    show.add_argument("trace_id")
    for flag, kw in _COMMON:
        show.add_argument(flag, **kw)
    show.add_argument("--format", choices=["table", "json"], default="table")
    show.add_argument("--no-links", dest="links", action="store_false",
                      help="this trace only, not the traces it delegated to or was delegated from")
    show.set_defaults(fn=cmd_trace_show)
    export = trace_sub.add_parser("export", help="one trace as OTLP/JSON (an ExportTraceServiceRequest)")
    export.add_argument("trace_id")
    for flag, kw in _COMMON:
        export.add_argument(flag, **kw)
    export.add_argument("--out", help="write to this file (default: standard output)")
    export.set_defaults(fn=cmd_trace_export)
    imp = trace_sub.add_parser("import", help="an OTLP/JSON file into the running pipeline, or into a store")
    imp.add_argument("file")
    imp.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    where = imp.add_mutually_exclusive_group()
    where.add_argument("--db", help="append to this DuckDB store (created if missing; no pipeline may run on it)")
    where.add_argument("--endpoint", help="OTLP/HTTP receiver of a running pipeline, host:port "
                                          "(default: the config's; its store file when it does not answer)")
    imp.add_argument("--format", choices=["table", "json"], default="table")
    imp.set_defaults(fn=cmd_trace_import)


def _trace_id(text: str) -> str:
    from agent_sre.processors.replay.traces import valid_trace_id

    trace_id = text.strip().lower()
    if not valid_trace_id(trace_id):
        raise CliError(f"a trace id is 32 hex digits (got {text!r})", EXIT_CONFIG)
    return trace_id


def _from_pipeline(args: argparse.Namespace, cfg, params: dict) -> dict | None:
    """The running pipeline's answer to GET /v1/traces/{id}; None when no pipeline answers."""
    client = admin_client(args, cfg)
    if client is None:
        return None
    try:
        return client.get_json(f"/v1/traces/{args.trace_id}", params)
    except AdminUnreachable:
        return None  # no pipeline running: read the file
    except AdminError as exc:
        if exc.status == 404 and "no replay extension" in str(exc):
            raise CliError(f"the pipeline at {client.endpoint} has no replay extension: add `replay: {{}}` to "
                           "its extensions and service::extensions", EXIT_CONFIG) from None
        if exc.status == 404:
            raise CliError(f"no trace {args.trace_id} in the pipeline at {client.endpoint}") from None
        raise CliError(f"reading trace {args.trace_id} failed ({exc.status}): {exc}") from None


def _from_file(args: argparse.Namespace, cfg, answer):
    """``answer(read)`` over the store file, read-only; a missing store or trace is an error."""
    try:
        con = open_store(cfg, args.db)
    except StoreMissing as exc:
        raise CliError(f"no trace {args.trace_id}: {exc} (no pipeline has run with this config)") from None
    try:
        found = answer(reader(con))
    finally:
        con.close()
    if found is None:
        raise CliError(f"no trace {args.trace_id} in {args.db or cfg.store}")
    return found


def _color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def cmd_trace_show(args: argparse.Namespace) -> int:
    """The trace's tree: from the running pipeline, or from its file when stopped."""
    from agent_sre.processors.replay.traces import load_trace, render_trace

    args.trace_id = _trace_id(args.trace_id)
    cfg = targets(args.config)
    doc = _from_pipeline(args, cfg, {"links": None if args.links else "false"})
    if doc is None:
        doc = _from_file(args, cfg, lambda read: load_trace(read, args.trace_id, args.links))
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render_trace(doc, _color()))
    return 0


def cmd_trace_export(args: argparse.Namespace) -> int:
    """The trace as OTLP/JSON, to ``--out`` or standard output."""
    from agent_sre.processors.replay.otlp_io import export_trace

    args.trace_id = _trace_id(args.trace_id)
    cfg = targets(args.config)
    doc = _from_pipeline(args, cfg, {"format": "otlp"})
    if doc is None:
        doc = _from_file(args, cfg, lambda read: export_trace(read, args.trace_id))
    spans = sum(len(ss.get("spans", ())) for rs in doc.get("resourceSpans", ()) for ss in rs.get("scopeSpans", ()))
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return emit(text, args.out, f"trace {args.trace_id} ({spans} spans, OTLP/JSON)")


def _otlp_http_endpoint(cfg) -> str | None:
    for cc in cfg.receivers.values():
        if cc.factory.type == "otlp":
            http = getattr(cc.settings.protocols, "http", None)
            if http is not None:
                return http.endpoint
    return None


def _conventions(cfg):
    """The config's normalisation table (its agent_semconv rules over the shipped ones)."""
    from agent_sre.pipeline.pdata.normalize import load_conventions

    rules = [cc.settings.rules for cc in cfg.processors.values() if cc.factory.type == "agent_semconv"]
    return load_conventions(extra=rules[0] or None) if rules else load_conventions()


def cmd_trace_import(args: argparse.Namespace) -> int:
    """The file into the running pipeline's OTLP/HTTP receiver, else into the store file."""
    from agent_sre.processors.replay.otlp_io import ReceiverUnreachable, import_file

    cfg = load(args.config)
    try:
        result = None
        endpoint = args.endpoint or (None if args.db else _otlp_http_endpoint(cfg))
        if endpoint is not None:
            try:
                result = import_file(args.file, endpoint=endpoint)
            except ReceiverUnreachable as exc:
                if args.endpoint:
                    raise CliError(str(exc)) from None
                note(f"{exc}; importing into the store file")
        if result is None:
            db = args.db or store_path(cfg)
            if not db:
                raise CliError("no duckdb exporter in the config and no --db given", EXIT_CONFIG)
            result = import_file(args.file, db=db, conventions=_conventions(cfg))
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        traces = ", ".join(result.trace_ids) or "-"
        print(f"imported {result.spans} span{'s' if result.spans != 1 else ''} of trace{'s' if len(result.trace_ids) != 1 else ''} "
              f"{traces} into {result.target}")
    if result.rejected:
        note(f"{result.rejected} span(s) rejected: {result.message}")
    return 1 if result.rejected else 0
