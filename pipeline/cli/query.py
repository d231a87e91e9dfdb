"""``agent-sre query`` (read-only SQL: the running pipeline's API, or the stopped pipeline's file) and
``agent-sre export-parquet`` (hourly Parquet files of the stored spans)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent_sre.pipeline.cli.admin_client import AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    Targets,
    admin_client,
    load,
    open_store,
    print_table,
    spool_dir,
    store_path,
    targets,
)


def cmd_query(args: argparse.Namespace) -> int:
    return run_sql(args, args.sql)


def run_sql(args: argparse.Namespace, sql: str) -> int:
    """``sql`` through the running pipeline's ``POST /v1/query``, else over its file; printed in
    ``args.format`` (``args``: config, endpoint, db, max_rows, format; ``store``: a fleet store instead)."""
    if getattr(args, "store", None):
        from agent_sre.pipeline.cli.fleet import run_fleet_sql

        return run_fleet_sql(args, sql)
    if getattr(args, "db", None) and not getattr(args, "config", None):
        cfg = Targets(None, None, None)  # the file is named: the embedded default's API and store do not matter
    else:
        cfg = targets(args.config)  # not load(): a query needs only where the API and the store are
    client = admin_client(args, cfg)
    if client is not None:
        try:
            body = client.post_json("/v1/query", {"sql": sql, "max_rows": args.max_rows})
        except AdminUnreachable:
            pass  # no pipeline running: read the file
        except AdminError as exc:
            raise CliError(f"query failed ({exc.status}): {exc}") from None
        else:
            print_table(body, args.format)
            return 0
    from agent_sre.pipeline.storage.sandbox import QueryError, file_query_limits, run_query

    try:
        limits = file_query_limits(args.max_rows)
    except ValueError as exc:
        raise CliError(f"query failed: {exc}") from None
    con = open_store(cfg, args.db)
    try:
        result = run_query(con, sql, limits)
    except QueryError as exc:
        raise CliError(f"query failed: {exc}") from None
    finally:
        con.close()
    print_table(json.loads(json.dumps(result.to_json(), default=str)), args.format)
    return 0


def cmd_export_parquet(args: argparse.Namespace) -> int:
    import duckdb

    from agent_sre.pipeline.storage.store import export_parquet, open_read_only

    cfg = load(args.config)
    path = args.db or store_path(cfg)
    if not path:
        raise CliError("no duckdb exporter in the config and no --db given", EXIT_CONFIG)
    out = Path(args.out or Path(path).parent / "parquet")
    since = int(args.since_hours_ago * 3600 * 1e9) if args.since_hours_ago else None
    out.mkdir(parents=True, exist_ok=True)
    try:
        con = open_read_only(path, spool_dir(cfg, path))
    except Exception as exc:  # noqa: BLE001
        raise CliError(f"cannot open {path} read-only ({exc}); stop the pipeline first, or configure "
                       "exporters::duckdb::parquet to have the running pipeline write hourly files") from None
    try:
        files = export_parquet(con, None, out, time.time_ns() - since if since else None, None)
    except (OSError, duckdb.Error) as exc:
        raise CliError(f"cannot write Parquet under {out}: {exc}") from None
    finally:
        con.close()
    print(f"wrote {len(files)} Parquet file(s) under {out}")
    return 0
