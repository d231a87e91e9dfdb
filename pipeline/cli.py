"""The ``agent-sre`` command line.

    agent-sre run [--config FILE]            run the pipeline (embedded default without --config)
    agent-sre validate --config FILE         report every config problem with its YAML path
    agent-sre components                     list the component types
    agent-sre query "SQL" [--config FILE]    read-only SQL: through the running pipeline's API, or the file
    agent-sre export-parquet [--out DIR]     hourly Parquet files of the stored spans
    agent-sre slo status|rules               SLOs per agent; Prometheus rules for them
    agent-sre cost unknown-models|summary    unpriced models; spend per day, agent and model
    agent-sre incidents list|show|ack|investigate|mitigate|resolve
    agent-sre postmortem INCIDENT_ID         the incident's postmortem in Markdown
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent_sre.pipeline.config import PipelineConfig, load_config
from agent_sre.pipeline.errors import ConfigError

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _setup_logging(level: str = "info") -> None:
    lvl = {"warn": "WARNING"}.get(level.lower(), level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(path: str | None) -> PipelineConfig:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"agent-sre: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    for warning in cfg.warnings:
        print(f"agent-sre: warning: {warning}", file=sys.stderr)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.memory import use_system_allocator
    from agent_sre.pipeline.service import Service

    use_system_allocator()
    cfg = _load(args.config)
    assert cfg.service is not None
    _setup_logging(cfg.service.telemetry.logs.level)
    service = Service(cfg)
    # A plain flag, not threading.Event: a handler runs between any two bytecodes of the main thread,
    # also inside Event.wait() while it holds the Event's lock, and Event.set() there deadlocks
    # (seen: SIGTERM during the wait left `agent-sre run` hanging for ever).
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        service.start()
    except Exception as exc:  # noqa: BLE001 - a start failure is reported, not a traceback
        logging.getLogger("agent_sre").debug("start failed", exc_info=True)
        print(f"agent-sre: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"agent-sre running ({cfg.source}); Ctrl-C to stop", flush=True)
    for line in service.describe():
        print(f"  {line}", flush=True)
    while not stopping:
        time.sleep(0.2)  # a signal interrupts the sleep; the flag ends the loop
    print("agent-sre: shutting down (draining batches)", file=sys.stderr, flush=True)
    service.shutdown()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    assert cfg.service is not None
    print(f"{cfg.source}: valid ({len(cfg.service.pipelines)} pipeline(s), "
          f"{sum(len(cfg.section(k)) for k in _kinds())} component(s))")
    return 0


def _kinds():
    from agent_sre.pipeline.component import Kind

    return (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.EXTENSION)


def cmd_components(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.registry import registry

    for kind in _kinds():
        print(f"{kind.section}:")
        for factory in registry.all():
            if factory.kind is kind:
                signals = f" [{', '.join(factory.signals)}]" if factory.signals else ""
                print(f"  {factory.type:<16}{signals} {factory.description}")
    return 0


def _admin_endpoint(cfg: PipelineConfig) -> str | None:
    for cc in cfg.extensions.values():
        if cc.factory.type == "admin":
            return cc.settings.endpoint  # type: ignore[attr-defined]
    return None


def _store_path(cfg: PipelineConfig) -> str | None:
    for cc in cfg.exporters.values():
        if cc.factory.type == "duckdb":
            return cc.settings.path  # type: ignore[attr-defined]
    return None


def _spool_dir(cfg: PipelineConfig, path: str) -> str | None:
    """The configured spool of the store at ``path`` (None: the default next to it)."""
    for cc in cfg.exporters.values():
        if cc.factory.type == "duckdb" and Path(cc.settings.path).absolute() == Path(path).absolute():
            return cc.settings.spool.directory or None  # type: ignore[attr-defined]
    return None


def _post_json(url: str, payload: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cmd_query(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.store import QueryError, open_read_only, run_query

    cfg = _load(args.config)
    endpoint = args.endpoint or _admin_endpoint(cfg)
    if endpoint and not args.db:
        url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        try:
            status, body = _post_json(f"{url}/v1/query", {"sql": args.sql, "max_rows": args.max_rows}, 60)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, body = 0, {}  # no pipeline running: read the file
        if status:
            if status != 200:
                print(f"agent-sre: query failed ({status}): {body.get('error', body)}", file=sys.stderr)
                return EXIT_RUNTIME
            _print_result(body, args.format)
            return 0
    path = args.db or _store_path(cfg)
    if not path:
        print("agent-sre: no duckdb exporter in the config and no --db given", file=sys.stderr)
        return EXIT_CONFIG
    try:
        con = open_read_only(path, _spool_dir(cfg, path))
    except FileNotFoundError as exc:
        print(f"agent-sre: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:  # noqa: BLE001 - e.g. the file is locked by a pipeline we could not reach
        print(f"agent-sre: cannot open {path} read-only: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        result = run_query(con, args.sql, args.max_rows, 60)
    except QueryError as exc:
        print(f"agent-sre: query failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        con.close()
    _print_result(json.loads(json.dumps(result.to_json(), default=str)), args.format)
    return 0


def _print_result(body: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(body, indent=2, default=str))
        return
    columns = body["columns"]
    rows = [["NULL" if v is None else str(v) for v in row] for row in body["rows"]]
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
        return
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
    print(line)
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)))
    more = " (truncated)" if body.get("truncated") else ""
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})")


def cmd_slo_status(args: argparse.Namespace) -> int:
    """SLOs per agent: from the running pipeline's /v1/slos, or computed from the file when stopped."""
    cfg = _load(args.config)
    endpoint = args.endpoint or _admin_endpoint(cfg)
    body = None
    if endpoint:
        url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        try:
            with urllib.request.urlopen(f"{url}/v1/slos", timeout=60) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            print(f"agent-sre: SLO status failed ({exc.code}): {exc.read().decode()}", file=sys.stderr)
            return EXIT_RUNTIME
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            body = None  # no pipeline running: compute from the file
    if body is None:
        rows = _slo_rows_from_file(cfg)
        if rows is None:
            return EXIT_RUNTIME
    else:
        rows = body["slos"]
    _print_slos(rows, args.format)
    return 0


def _objectives(cfg: PipelineConfig) -> list:
    return [o for cc in cfg.processors.values() if cc.factory.type == "slo"
            for o in cc.settings.objectives]  # type: ignore[attr-defined]


def cmd_slo_rules(args: argparse.Namespace) -> int:
    """Prometheus recording and alerting rules computing the same burn rates from the SLI counters."""
    from agent_sre.processors.slo.rules import rules_document

    objectives = _objectives(_load(args.config))
    if not objectives:
        print("agent-sre: the config has no slo processor with objectives", file=sys.stderr)
        return EXIT_CONFIG
    return _emit(rules_document(objectives), args.out, f"rules for {len(objectives)} objective(s)")


def _emit(text: str, out: str | None, what: str) -> int:
    """Write ``text`` to the file ``out`` (saying so), or to standard output."""
    if out:
        Path(out).write_text(text)
        print(f"wrote {what} to {out}")
    else:
        sys.stdout.write(text)
    return 0


def _slo_rows_from_file(cfg: PipelineConfig) -> list[dict] | None:
    from agent_sre.pipeline.store import open_read_only
    from agent_sre.processors.slo.factory import evaluate

    objectives = _objectives(cfg)
    path = _store_path(cfg)
    if not objectives or not path:
        print("agent-sre: the config has no slo processor (or no duckdb exporter)", file=sys.stderr)
        return None
    try:
        con = open_read_only(path, _spool_dir(cfg, path))
    except Exception as exc:  # noqa: BLE001 - missing or locked file
        print(f"agent-sre: cannot open {path} read-only: {exc}", file=sys.stderr)
        return None
    try:
        return evaluate(lambda sql, params: con.execute(sql, params).fetchall(), objectives, int(time.time() // 60))
    finally:
        con.close()


def _print_slos(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({"slos": rows}, indent=2))
        return
    columns = ["SLO", "agent", "SLI value", "target", "budget left", "burn rates", "firing", "status"]
    table = [[r["slo"], (r["agent_id"] or "-") + (f"@{r['agent_version']}" if r.get("agent_version") else ""),
              "-" if r["sli_value"] is None else f"{r['sli_value']:.4%}",
              f"{r['target']:.3%}", f"{r['budget_remaining']:.1%}",
              " ".join(f"{w}={b:.2f}" for w, b in r["burn_rates"].items()), ", ".join(r["firing"]) or "-",
              r["status"]] for r in rows]
    _print_result({"columns": columns, "rows": table}, fmt)


UNKNOWN_MODELS_SQL = ("SELECT coalesce(provider, '') AS provider, coalesce(model, '(no model)') AS model, "
                      "count(*) AS spans, sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens "
                      "FROM spans WHERE span_role = 'llm' AND cost_usd IS NULL GROUP BY ALL ORDER BY spans DESC")


def cmd_cost_unknown_models(args: argparse.Namespace) -> int:
    """LLM spans the cost processor could not price (no client cost, no known or overridden model)."""
    args.sql = UNKNOWN_MODELS_SQL
    return cmd_query(args)


def _get_json(endpoint: str, path: str, timeout: float = 60) -> tuple[int, dict] | None:
    """GET from a running pipeline's admin API: (status, body), or None when none answers."""
    url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _budget_specs(cfg: PipelineConfig) -> list:
    return [b.spec() for cc in cfg.processors.values() if cc.factory.type == "cost"
            for b in cc.settings.budgets]  # type: ignore[attr-defined]


def cmd_cost_summary(args: argparse.Namespace) -> int:
    """Spend per day, agent and model with the daily budget's utilisation: /v1/costs, or the file."""
    from agent_sre.processors.cost.summary import cost_summary

    cfg = _load(args.config)
    endpoint = args.endpoint or _admin_endpoint(cfg)
    answer = _get_json(endpoint, f"/v1/costs?days={args.days}") if endpoint and not args.db else None
    if answer is not None and answer[0] != 200:
        print(f"agent-sre: cost summary failed ({answer[0]}): {answer[1].get('error', answer[1])}", file=sys.stderr)
        return EXIT_RUNTIME
    if answer is not None:
        rows, budgets = answer[1]["summary"], answer[1]["budgets"]
    else:
        con = _open_store(cfg, args.db)
        if con is None:
            return EXIT_RUNTIME
        try:
            rows = cost_summary(lambda sql, p: con.execute(sql, p).fetchall(), _budget_specs(cfg), time.time(),
                                args.days)
        finally:
            con.close()
        budgets = []  # budget accounts live in the running pipeline; the file has the spend
    if args.format == "json":
        print(json.dumps({"summary": rows, "budgets": budgets}, indent=2))
        return 0
    table = [[r["day"], r["agent_id"] or "-", r["model"] or "-", f"{r['cost_usd']:.6f}", r["llm_spans"],
              f"{r['agent_day_usd']:.6f}", "-" if r["utilisation"] is None else f"{r['utilisation']:.1%}"]
             for r in rows]
    _print_result({"columns": ["day", "agent", "model", "cost USD", "LLM spans", "agent's day USD",
                               "daily budget used"], "rows": table}, args.format)
    if budgets and args.format == "table":
        print()
        _print_result({"columns": ["budget", "scope", "subject", "period", "spent USD", "limit USD", "used"],
                       "rows": [[b["budget"], b["scope"], b["subject"], b["period"], f"{b['spent_usd']:.6f}",
                                 f"{b['limit_usd']:g}", f"{b['utilisation']:.1%}"] for b in budgets]}, "table")
    return 0


def _open_store(cfg: PipelineConfig, db: str | None):
    """The config's store opened read-only (no pipeline runs), or None after saying why."""
    from agent_sre.pipeline.store import open_read_only

    path = db or _store_path(cfg)
    if not path:
        print("agent-sre: no duckdb exporter in the config and no --db given", file=sys.stderr)
        return None
    try:
        return open_read_only(path, _spool_dir(cfg, path))
    except Exception as exc:  # noqa: BLE001 - missing, or locked by a pipeline whose API we could not reach
        print(f"agent-sre: cannot open {path} read-only: {exc}", file=sys.stderr)
        return None


def _incidents_config(cfg: PipelineConfig):
    return next((cc.settings for cc in cfg.processors.values() if cc.factory.type == "incidents"), None)


def cmd_incidents(args: argparse.Namespace) -> int:
    """incidents list|show|ack|investigate|mitigate|resolve: the running pipeline's API, or the file
    for list and show (changing an incident needs the running pipeline: it holds the incident)."""
    from agent_sre.processors.incidents.factory import incident_detail

    cfg = _load(args.config)
    endpoint = args.endpoint or _admin_endpoint(cfg)
    action = args.incidents_command
    if action in ("ack", "investigate", "mitigate", "resolve"):
        if not endpoint:
            print("agent-sre: the config has no admin extension to reach the pipeline", file=sys.stderr)
            return EXIT_CONFIG
        url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        try:
            status, body = _post_json(f"{url}/v1/incidents/{args.id}/{action}", {"by": args.by, "why": args.why}, 60)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            print(f"agent-sre: no pipeline answers at {endpoint}; incidents change only in a running pipeline",
                  file=sys.stderr)
            return EXIT_RUNTIME
        if status != 200:
            print(f"agent-sre: {action} failed ({status}): {body.get('error', body)}", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"{body['id']}: {body['state']} ({body['priority']})")
        return 0
    path = f"/v1/incidents/{args.id}" if action == "show" else f"/v1/incidents?all={str(args.all).lower()}"
    answer = _get_json(endpoint, path) if endpoint and not args.db else None
    if answer is not None and answer[0] != 200:
        print(f"agent-sre: {answer[1].get('error', answer[1])}", file=sys.stderr)
        return EXIT_RUNTIME
    if answer is not None:
        body = answer[1]
    else:
        con = _open_store(cfg, args.db)
        if con is None:
            return EXIT_RUNTIME
        read = _reader(con)
        try:
            if action == "show":
                body = incident_detail(read, args.id)
                if body is None:
                    print(f"agent-sre: no incident {args.id!r}", file=sys.stderr)
                    return EXIT_RUNTIME
            else:
                where = "" if args.all else "WHERE state <> 'resolved'"
                body = {"incidents": [dict(zip(("id", "agent_id", "title", "priority", "state", "opened_ns",
                                                "resolved_ns", "signals"), r, strict=True)) for r in read(
                    f"SELECT id, agent_id, title, priority, state, opened_ns, resolved_ns, signals FROM incidents "
                    f"{where} ORDER BY opened_ns DESC", [])]}
        finally:
            con.close()
    if args.format == "json":
        print(json.dumps(body, indent=2))
        return 0
    if action == "show":
        print(f"{body['id']} {body['priority']} {body['state']}: {body['title']}")
        print(f"agent {body['agent_id'] or '(none)'}, opened {_utc(body['opened_ns'])}, "
              f"resolved {_utc(body['resolved_ns'])}, {body['signals']} signals")
        _print_result({"columns": ["time (UTC)", "entry", "what", "state", "priority", "who", "detail"], "rows": [
            [_utc(e["time_ns"]), e["entry"], e["name"] or e["kind"] or "-", e["state"], e["priority"], e["who"] or "-",
             e["why"] or e["summary"] or "-"] for e in body["log"]]}, "table")
        return 0
    _print_result({"columns": ["id", "priority", "state", "agent", "opened (UTC)", "signals", "title"], "rows": [
        [i["id"], i["priority"], i["state"], i["agent_id"] or "-", _utc(i["opened_ns"]), i["signals"], i["title"]]
        for i in body["incidents"]]}, args.format)
    return 0


def cmd_postmortem(args: argparse.Namespace) -> int:
    """The incident's postmortem in Markdown: from the running pipeline, or from the file."""
    from agent_sre.processors.incidents.postmortem import postmortem_markdown

    cfg = _load(args.config)
    endpoint = args.endpoint or _admin_endpoint(cfg)
    text = None
    if endpoint and not args.db:
        url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        try:
            with urllib.request.urlopen(f"{url}/v1/incidents/{args.id}/postmortem", timeout=60) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            print(f"agent-sre: postmortem failed ({exc.code}): {exc.read().decode()}", file=sys.stderr)
            return EXIT_RUNTIME
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            text = None  # no pipeline running: build it from the file
    if text is None:
        con = _open_store(cfg, args.db)
        if con is None:
            return EXIT_RUNTIME
        inc = _incidents_config(cfg)
        lookback = int((inc.correlation_window if inc is not None else 300) * 1e9)
        try:
            text = postmortem_markdown(_reader(con), args.id, _budget_specs(cfg), lookback)
        finally:
            con.close()
        if text is None:
            print(f"agent-sre: no incident {args.id!r}", file=sys.stderr)
            return EXIT_RUNTIME
    return _emit(text, args.out, f"the postmortem of {args.id}")


def _reader(con):
    return lambda sql, params: con.execute(sql, params).fetchall()


def _utc(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def cmd_export_parquet(args: argparse.Namespace) -> int:
    import duckdb

    from agent_sre.pipeline.store import export_parquet, open_read_only

    cfg = _load(args.config)
    path = args.db or _store_path(cfg)
    if not path:
        print("agent-sre: no duckdb exporter in the config and no --db given", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out or Path(path).parent / "parquet")
    since = int(args.since_hours_ago * 3600 * 1e9) if args.since_hours_ago else None
    out.mkdir(parents=True, exist_ok=True)
    try:
        con = open_read_only(path, _spool_dir(cfg, path))
    except Exception as exc:  # noqa: BLE001
        print(f"agent-sre: cannot open {path} read-only ({exc}); stop the pipeline first, or configure "
              "exporters::duckdb::parquet to have the running pipeline write hourly files", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        files = export_parquet(con, None, out, time.time_ns() - since if since else None, None)
    except (OSError, duckdb.Error) as exc:
        print(f"agent-sre: cannot write Parquet under {out}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        con.close()
    print(f"wrote {len(files)} Parquet file(s) under {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-sre", description="SRE for AI agents: OTLP in, DuckDB out.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("validate", help="validate a pipeline YAML")
    v.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    v.set_defaults(fn=cmd_validate)
    c = sub.add_parser("components", help="list component types")
    c.set_defaults(fn=cmd_components)
    q = sub.add_parser("query", help="read-only SQL over the span store")
    q.add_argument("sql")
    q.add_argument("--config", help="pipeline YAML to find the API endpoint and store (default: embedded)")
    q.add_argument("--endpoint", help="admin API host:port (default: from the config)")
    q.add_argument("--db", help="read this DuckDB file directly (pipeline stopped)")
    q.add_argument("--max-rows", type=int, default=1000)
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")
    q.set_defaults(fn=cmd_query)
    slo = sub.add_parser("slo", help="service level objectives")
    slo_sub = slo.add_subparsers(dest="slo_command", required=True)
    st = slo_sub.add_parser("status", help="every SLO per agent: SLI value, budget, burn rates, firing alerts")
    st.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    st.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
    st.add_argument("--format", choices=["table", "json", "csv"], default="table")
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
                     ("--days", {"type": int, "default": 7, "help": "how many days back (default 7)"}),
                     ("--format", {"choices": ["table", "json", "csv"], "default": "table"})):
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
