"""``agent-sre slo status`` (every SLO per agent) and ``agent-sre slo rules`` (Prometheus rules).

``slo status`` gives the same answer running or stopped: the running pipeline's ``GET /v1/slos``,
or, when none answers, the same evaluation (``processors.slo.factory.evaluate`` at ``window_end``,
as the processor's ``report``) over its file.  Without data it says so and exits 0; without an
slo processor (in the running pipeline, or the config) it says so and exits 2.

``slo status --store clickhouse://…`` evaluates the config's objectives (the embedded default's
without ``--config``) over every pipeline's spans in the fleet store, with the same ``evaluate``:
the SLI events per minute are counted by ClickHouse with the config's sli definitions (see fleet.py).
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
    emit,
    load,
    note,
    open_store,
    print_table,
    processor_settings,
    reader,
)

COLUMNS = ["SLO", "agent", "SLI value", "target", "budget left", "burn rates", "firing", "status"]
NO_EVENTS = "no SLO data yet: no agent has SLI events in the objectives' windows"


def _objectives(cfg) -> list:
    return [o for settings in processor_settings(cfg, "slo") for o in settings.objectives]


def cmd_slo_status(args: argparse.Namespace) -> int:
    """SLOs per agent: from the running pipeline's /v1/slos, or computed from the file when stopped."""
    cfg = load(args.config)
    if getattr(args, "store", None):
        rows, empty = _rows_from_fleet(cfg, args.store)
        client = None
    else:
        client = admin_client(args, cfg)
        rows = None
    if client is not None:
        try:
            body = client.get_json("/v1/slos")
        except AdminUnreachable:
            pass  # no pipeline running: compute from the file
        except AdminError as exc:
            raise CliError(f"SLO status failed ({exc.status}): {exc}") from None
        else:
            if not body.get("configured", True):
                raise CliError(f"the pipeline at {client.endpoint} has no slo processor", EXIT_CONFIG)
            rows, empty = body["slos"], NO_EVENTS
    if rows is None:
        rows, empty = _rows_from_file(cfg)
    if not rows:
        note(empty)
    if args.format == "json":
        print(json.dumps({"slos": rows}, indent=2))
    elif rows:
        _print_slos(rows, args.format)
    return 0


def _rows_from_file(cfg) -> tuple[list[dict], str]:
    """(the rows ``GET /v1/slos`` would answer now, what to say when there are none) from the file."""
    from agent_sre.processors.slo.factory import evaluate, window_end

    objectives = _objectives(cfg)
    if not objectives:
        raise CliError("the config has no slo processor with objectives", EXIT_CONFIG)
    try:
        con = open_store(cfg)
    except StoreMissing as exc:
        return [], f"no SLO data yet: {exc} (no pipeline has run with this config)"
    try:
        return evaluate(reader(con), objectives, window_end(time.time())), NO_EVENTS
    finally:
        con.close()


def _sli_definitions(cfg) -> list:
    """The SLIs as the config's sli processor rolls them up (the built-in definitions without one)."""
    from agent_sre.pipeline.storage.rollups import SliRollup
    from agent_sre.processors.sli.factory import SliConfig, builtin_slis

    settings = processor_settings(cfg, "sli") or [SliConfig()]
    return [x for s in settings for x in
            builtin_slis(s) + [SliRollup(c.name, c.total, c.good, c.scope) for c in s.custom]]


def _rows_from_fleet(cfg, url: str) -> tuple[list[dict], str]:
    """The rows of every pipeline's spans in the fleet store, evaluated at ``window_end`` as the processor."""
    from agent_sre.pipeline.cli.fleet import cli_errors, skipped_note
    from agent_sre.processors.slo.factory import window_end
    from agent_sre.processors.slo.fleet import fleet_slos

    objectives = _objectives(cfg)
    if not objectives:
        raise CliError("the config has no slo processor with objectives", EXIT_CONFIG)
    rows, skipped = cli_errors(lambda: fleet_slos(url, objectives, _sli_definitions(cfg), window_end(time.time())))
    skipped_note(skipped, objectives)
    return rows, "no SLO data yet: no agent has SLI events in the fleet store in the objectives' windows"


def _print_slos(rows: list[dict], fmt: str) -> None:
    table = [[r["slo"], (r["agent_id"] or "-") + (f"@{r['agent_version']}" if r.get("agent_version") else ""),
              "-" if r["sli_value"] is None else f"{r['sli_value']:.4%}",
              f"{r['target']:.3%}", f"{r['budget_remaining']:.1%}",
              " ".join(f"{w}={b:.2f}" for w, b in r["burn_rates"].items()), ", ".join(r["firing"]) or "-",
              r["status"]] for r in rows]
    print_table({"columns": COLUMNS, "rows": table}, fmt)


def cmd_slo_rules(args: argparse.Namespace) -> int:
    """Prometheus recording and alerting rules computing the same burn rates from the SLI counters."""
    from agent_sre.processors.slo.rules import rules_document

    objectives = _objectives(load(args.config))
    if not objectives:
        raise CliError("the config has no slo processor with objectives", EXIT_CONFIG)
    return emit(rules_document(objectives), args.out, f"rules for {len(objectives)} objective(s)")
