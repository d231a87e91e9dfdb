"""``agent-sre chaos templates|start|stop|list|report``: chaos experiments on running agents.

    agent-sre chaos templates                                 the templates (shipped, and the config's)
    agent-sre chaos start tool-error-storm --agent A [--duration 10m] [--rate 0.5] [--seed 7]
    agent-sre chaos stop CHX-00001 [--why "..."]
    agent-sre chaos list [--all]
    agent-sre chaos report CHX-00001 [--format json]

Every command asks the running pipeline's admin API (``/v1/chaos/...``): ``start`` and ``stop`` need it
(it announces experiments to agents); ``templates``, ``list`` and ``report`` read the stopped
pipeline's file (``--db``, else the config's store) when no pipeline answers, with the same functions
(processors/chaos), so the answers agree.
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
    StoreMissing,
    admin_client,
    load,
    note,
    open_store,
    print_table,
    processor_settings,
    reader,
    targets,
    utc,
)

_CONFIG = ("--config", {"help": "pipeline YAML (default: the embedded default)"})
_ENDPOINT = ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"})
_DB = ("--db", {"help": "a DuckDB store to read when no pipeline runs"})
NO_PIPELINE = "needs the running pipeline (it announces experiments to the agents): start it with `agent-sre run`"


def register(sub) -> None:
    """``chaos templates|start|stop|list|report`` on the ``agent-sre`` subparsers."""
    chaos = sub.add_parser("chaos", help="chaos experiments: inject faults into running agents, judge the SLIs")
    chaos_sub = chaos.add_subparsers(dest="chaos_command", required=True)

    t = chaos_sub.add_parser("templates", help="the experiment templates: faults, rates, durations, abort conditions")
    _add(t, _CONFIG, _ENDPOINT)
    t.add_argument("--format", choices=["table", "json"], default="table")
    t.set_defaults(fn=cmd_chaos_templates)

    s = chaos_sub.add_parser("start", help="start an experiment from a template on one or more agents")
    s.add_argument("template")
    s.add_argument("--agent", action="append", required=True, help="an agent in the blast radius (repeatable)")
    s.add_argument("--duration", help="how long to inject, e.g. 10m (default: the template's)")
    s.add_argument("--rate", type=_share, help="every fault's rate, 0 to 1 (default: the template's)")
    s.add_argument("--seed", type=int, help="the random seed (default: the template's, else drawn and recorded)")
    s.add_argument("--tool", action="append", default=[], help="only these tools (repeatable)")
    s.add_argument("--model", action="append", default=[], help="only these models (repeatable)")
    s.add_argument("--sessions", type=_share, help="the share of sessions in the blast radius, 0 to 1")
    s.add_argument("--override", help="a YAML file of template fields laid over the template")
    s.add_argument("--by", default=os.environ.get("USER", "") or "unknown", help="who (default: $USER)")
    _add(s, _CONFIG, _ENDPOINT)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(fn=cmd_chaos_start)

    st = chaos_sub.add_parser("stop", help="stop a running experiment now")
    st.add_argument("id")
    st.add_argument("--by", default=os.environ.get("USER", "") or "unknown", help="who (default: $USER)")
    st.add_argument("--why", default="", help="why, for the experiment's record")
    _add(st, _CONFIG, _ENDPOINT)
    st.add_argument("--format", choices=["table", "json"], default="table")
    st.set_defaults(fn=cmd_chaos_stop)

    ls = chaos_sub.add_parser("list", help="experiments, newest first (running ones; --all for every one)")
    ls.add_argument("--all", action="store_true", help="ended, stopped and aborted experiments too")
    _add(ls, _CONFIG, _ENDPOINT, _DB)
    ls.add_argument("--format", choices=["table", "json", "csv"], default="table")
    ls.set_defaults(fn=cmd_chaos_list)

    r = chaos_sub.add_parser("report", help="baseline vs during vs after per SLI, recovery, cost, resilience score")
    r.add_argument("id")
    _add(r, _CONFIG, _ENDPOINT, _DB)
    r.add_argument("--tolerance", type=_share, default=None,
                   help="reading a file: SLIs back within this of the baseline count as recovered (default 0.05)")
    r.add_argument("--format", choices=["table", "json"], default="table")
    r.set_defaults(fn=cmd_chaos_report)


def _add(parser: argparse.ArgumentParser, *flags: tuple[str, dict]) -> None:
    for flag, kw in flags:
        parser.add_argument(flag, **kw)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be 0 to 1")
    return value


def _ask(args: argparse.Namespace, cfg, call, local_without_chaos: bool = False):
    """``call(client)`` on the running pipeline; None when none answers (or with ``--db``), and, with
    ``local_without_chaos``, when it has no chaos API (the answer is then computed here)."""
    client = admin_client(args, cfg)
    if client is None:
        return None
    try:
        return call(client)
    except AdminUnreachable:
        return None
    except AdminError as exc:
        text = str(exc)
        without = exc.status == 404 and ("no route for" in text or "no chaos processor" in text)
        if without and local_without_chaos:
            return None
        if without and "no route for" in text:
            raise CliError(f"the pipeline at {client.endpoint} does not serve /v1/chaos (an older agent-sre)",
                           EXIT_CONFIG) from None
        if without:
            raise CliError(f"the pipeline at {client.endpoint} has no chaos processor: add `chaos: {{}}` to its "
                           "processors and to a pipeline's processors list", EXIT_CONFIG) from None
        raise CliError(f"chaos: {text}" + (f" ({exc.status})" if exc.status else "")) from None


# --- templates -----------------------------------------------------------------------------------

def cmd_chaos_templates(args: argparse.Namespace) -> int:
    cfg = targets(args.config)
    body = _ask(args, cfg, lambda c: c.get_json("/v1/chaos/templates"), local_without_chaos=True)
    templates = body["templates"] if body is not None else _templates_from_config(args.config)
    if args.format == "json":
        print(json.dumps({"templates": templates}, indent=2))
        return 0
    rows = [[t["name"], ", ".join(f"{f['type']} {f['rate']:g}" + (f" after {f['after']:g}s" if f.get("after") else "")
                                  for f in t["faults"]),
             _duration(t["duration"]), "; ".join(t["abort"]) or "-", t["description"]] for t in templates]
    print_table({"columns": ["template", "faults (rate)", "duration", "abort when", "description"], "rows": rows},
                "table")
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _templates_from_config(path: str | None) -> list[dict]:
    """The config's chaos processor's templates (its overrides and templates_dir), else the shipped ones."""
    from agent_sre.processors.chaos.spec import TemplateError, load_templates

    settings = processor_settings(load(path), "chaos")
    try:
        found = settings[0].load() if settings else load_templates()
    except TemplateError as exc:
        raise CliError(f"chaos templates: {exc}", EXIT_CONFIG) from None
    return [t.summary() for _, t in sorted(found.items())]


# --- start and stop --------------------------------------------------------------------------------

def cmd_chaos_start(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    body = {"template": args.template, "agents": args.agent, "duration": args.duration, "overrides": overrides,
            "by": args.by}
    exp = _ask(args, targets(args.config), lambda c: c.post_json("/v1/chaos/experiments", body))
    if exp is None:
        raise CliError(f"chaos start {NO_PIPELINE}")
    _print_experiment(exp, args.format, "started")
    return 0


def _overrides(args: argparse.Namespace) -> dict | None:
    out: dict = {}
    if args.override:
        import yaml

        try:
            doc = yaml.safe_load(Path(args.override).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"--override {args.override}: {exc}", EXIT_CONFIG) from None
        if not isinstance(doc, dict):
            raise CliError(f"--override {args.override}: must be a mapping of template fields", EXIT_CONFIG)
        out.update(doc)
    radius = dict(out.get("blast_radius") or {})
    for key, value in (("tools", args.tool), ("models", args.model)):
        if value:
            radius[key] = value
    if args.sessions is not None:
        radius["sessions"] = args.sessions
    if radius:
        out["blast_radius"] = radius
    if args.rate is not None:
        out["rate"] = args.rate
    if args.seed is not None:
        out["seed"] = args.seed
    return out or None


def cmd_chaos_stop(args: argparse.Namespace) -> int:
    exp = _ask(args, targets(args.config),
               lambda c: c.post_json(f"/v1/chaos/experiments/{args.id}/stop", {"by": args.by, "why": args.why}))
    if exp is None:
        raise CliError(f"chaos stop {NO_PIPELINE}")
    _print_experiment(exp, args.format, exp["state"])
    return 0


def _print_experiment(exp: dict, fmt: str, verb: str) -> None:
    if fmt == "json":
        print(json.dumps(exp, indent=2))
        return
    faults = ", ".join(f"{f['type']} {f['rate']:g}" for f in exp.get("faults") or [])
    when = (f"from {utc(exp['start_ns'])} until {utc(exp['until_ns'])} UTC" if exp["state"] == "running"
            else f"at {utc(exp['ended_ns'])} UTC: {exp.get('reason') or ''}")
    print(f"{verb} {exp['id']} ({exp['template']}: {faults}) on {', '.join(exp['agents'])} {when}; "
          f"seed {exp.get('seed')}")


# --- list and report ---------------------------------------------------------------------------------

def cmd_chaos_list(args: argparse.Namespace) -> int:
    cfg = targets(args.config)
    body = _ask(args, cfg, lambda c: c.get_json("/v1/chaos/experiments", {"all": "true" if args.all else None}))
    if body is not None:
        experiments = body["experiments"]
    else:
        from agent_sre.processors.chaos.report import list_experiments

        experiments = _from_file(args, cfg, lambda read: list_experiments(read, args.all), [])
    if not experiments:
        note("no chaos experiments" + ("" if args.all else " running (--all for ended ones)"))
    if args.format == "json":
        print(json.dumps({"experiments": experiments}, indent=2))
        return 0
    rows = [[e["id"], e["template"], ",".join(e["agents"]), e["state"], utc(e["start_ns"]),
             utc(e["ended_ns"] if e["ended_ns"] is not None else e["until_ns"]),
             "-" if not e.get("result") or e["result"].get("resilience_score") is None
             else f"{e['result']['resilience_score']:g}", e.get("reason") or "-"] for e in experiments]
    if rows or args.format == "csv":
        print_table({"columns": ["id", "template", "agents", "state", "start (UTC)", "end (UTC)", "score", "reason"],
                     "rows": rows}, args.format)
    return 0


def _from_file(args: argparse.Namespace, cfg, answer, missing):
    try:
        con = open_store(cfg, args.db)
    except StoreMissing as exc:
        note(f"{exc} (no pipeline has run with this config)")
        return missing
    try:
        return answer(reader(con))
    finally:
        con.close()


def cmd_chaos_report(args: argparse.Namespace) -> int:
    cfg = targets(args.config)
    doc = _ask(args, cfg, lambda c: c.get_json(f"/v1/chaos/experiments/{args.id}/report"))
    if doc is None:
        from agent_sre.processors.chaos.report import experiment_report, load_experiment

        def answer(read):
            exp = load_experiment(read, args.id)
            if exp is None:
                return None
            tolerance = 0.05 if args.tolerance is None else args.tolerance
            return experiment_report(read, exp, time.time_ns(), tolerance)

        doc = _from_file(args, cfg, answer, None)
        if doc is None:
            raise CliError(f"no chaos experiment {args.id!r} in {args.db or cfg.store}")
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        from agent_sre.processors.chaos.report import render_report

        sys.stdout.write(render_report(doc))
    return 0
