"""``agent-sre incidents list|show|ack|investigate|mitigate|resolve`` and ``agent-sre postmortem``.

list, show and postmortem read the running pipeline's API, or its file when none answers; changing
an incident needs the running pipeline (it holds the incident).

``incidents list --store clickhouse://…`` lists every pipeline's incidents from the ``incident``
events in the fleet store (fleet.py says what those carry); ``show`` and ``postmortem`` need an
incident's log, which only its pipeline keeps.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    StoreMissing,
    admin_client,
    budget_specs,
    emit,
    load,
    note,
    open_store,
    print_table,
    processor_settings,
    reader,
    utc,
)

TRANSITIONS = ("ack", "investigate", "mitigate", "resolve")


def _quoted(incident_id: str) -> str:
    return urllib.parse.quote(incident_id, safe="")


def cmd_incidents(args: argparse.Namespace) -> int:
    """incidents list|show|ack|investigate|mitigate|resolve: the running pipeline's API, or the file
    for list and show (changing an incident needs the running pipeline: it holds the incident)."""
    cfg = load(args.config)
    action = args.incidents_command
    if action in TRANSITIONS:
        return _transition(args, cfg, action)
    body: dict | None
    if getattr(args, "store", None):
        if action != "list":
            raise CliError(f"incidents {action} --store: the fleet store keeps incident events, not an "
                           "incident's log; ask the pipeline that opened it (--endpoint or --config)", EXIT_CONFIG)
        from agent_sre.pipeline.cli.fleet import fleet_incidents

        body = {"incidents": fleet_incidents(args.store, args.all)}
        if not body["incidents"]:
            note("no incidents in the fleet store (incident events reach it through an events pipeline "
                 "from the alerts receiver to the clickhouse exporter)")
        client = None
    else:
        client = admin_client(args, cfg)
        body = None
    if client is not None:
        path = f"/v1/incidents/{_quoted(args.id)}" if action == "show" else "/v1/incidents"
        try:
            body = client.get_json(path, None if action == "show" else {"all": str(args.all).lower()})
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(str(exc)) from None
    if body is None:
        body = _from_file(cfg, args.db, action, args)
    if args.format == "json":
        print(json.dumps(body, indent=2))
        return 0
    if action == "show":
        print(f"{body['id']} {body['priority']} {body['state']}: {body['title']}")
        print(f"agent {body['agent_id'] or '(none)'}, opened {utc(body['opened_ns'])}, "
              f"resolved {utc(body['resolved_ns'])}, {body['signals']} signals")
        print_table({"columns": ["time (UTC)", "entry", "what", "state", "priority", "who", "detail"], "rows": [
            [utc(e["time_ns"]), e["entry"], e["name"] or e["kind"] or "-", e["state"], e["priority"], e["who"] or "-",
             e["why"] or e["summary"] or "-"] for e in body["log"]]}, "table")
        return 0
    print_table({"columns": ["id", "priority", "state", "agent", "opened (UTC)", "signals", "title"], "rows": [
        [i["id"], i["priority"], i["state"], i["agent_id"] or "-", utc(i["opened_ns"]),
         "-" if i["signals"] is None else i["signals"], i["title"]]
        for i in body["incidents"]]}, args.format)
    return 0


def _transition(args: argparse.Namespace, cfg, action: str) -> int:
    client = admin_client(args, cfg)
    if client is None:
        raise CliError("the config has no admin extension to reach the pipeline", EXIT_CONFIG)
    try:
        body = client.post_json(f"/v1/incidents/{_quoted(args.id)}/{action}", {"by": args.by, "why": args.why})
    except AdminUnreachable:
        raise CliError(f"no pipeline answers at {client.endpoint}; incidents change only in a running "
                       "pipeline") from None
    except AdminError as exc:
        raise CliError(f"{action} failed ({exc.status}): {exc}") from None
    print(f"{body['id']}: {body['state']} ({body['priority']})")
    return 0


def _from_file(cfg, db: str | None, action: str, args: argparse.Namespace) -> dict:
    """What GET /v1/incidents[/{id}] answers, from the stopped pipeline's file."""
    from agent_sre.processors.incidents.factory import incident_detail, incident_list

    try:
        con = open_store(cfg, db)
    except StoreMissing as exc:
        if action == "show":
            raise CliError(f"no incident {args.id!r} ({exc})") from None
        note(f"no incidents yet: {exc} (no pipeline has run with this config)")
        return {"incidents": []}
    import duckdb

    read = reader(con)
    try:
        if action == "show":
            body = incident_detail(read, args.id)
            if body is None:
                raise CliError(f"no incident {args.id!r}")
            return body
        return {"incidents": incident_list(read, args.all)}
    except duckdb.CatalogException:
        raise CliError("the store has no incidents (no incidents processor has run on it)") from None
    finally:
        con.close()


def cmd_postmortem(args: argparse.Namespace) -> int:
    """The incident's postmortem in Markdown: from the running pipeline, or from the file."""
    cfg = load(args.config)
    client = admin_client(args, cfg)
    text = None
    if client is not None:
        try:
            text = client.get_text(f"/v1/incidents/{_quoted(args.id)}/postmortem")
        except AdminUnreachable:
            pass  # no pipeline running: build it from the file
        except AdminError as exc:
            raise CliError(f"postmortem failed ({exc.status}): {exc}") from None
    if text is None:
        from agent_sre.processors.incidents.postmortem import postmortem_markdown

        try:
            con = open_store(cfg, args.db)
        except StoreMissing as exc:
            raise CliError(f"no incident {args.id!r} ({exc})") from None
        inc = next(iter(processor_settings(cfg, "incidents")), None)
        lookback = int((inc.correlation_window if inc is not None else 300) * 1e9)
        try:
            text = postmortem_markdown(reader(con), args.id, budget_specs(cfg), lookback)
        finally:
            con.close()
        if text is None:
            raise CliError(f"no incident {args.id!r}")
    return emit(text, args.out, f"the postmortem of {args.id}")
