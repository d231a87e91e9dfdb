"""Fleet SQL: ``agent-sre query --store clickhouse://[user[:password]@]host[:port]/db "SQL"``, and the
fleet-wide answers of ``slo status``, ``cost summary`` and ``incidents list`` (``--store``).

The connection, the SQL and the views live in pipeline/storage/fleet.py (the admin API answers the
same with ``store: fleet``); here: the command line's errors (``CliError``) and notes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from agent_sre.pipeline.cli.common import CliError, note, print_table
from agent_sre.pipeline.storage import fleet as storage
from agent_sre.pipeline.storage.fleet import (  # re-exported: the tests and the commands name them here
    FLEET_QUESTIONS,
    MAX_MEMORY,
    TIMEOUT_S,
    FleetSqlError,
    FleetStore,
    FleetStoreError,
)
from agent_sre.pipeline.storage.sandbox import QueryLimits

if TYPE_CHECKING:
    import duckdb

    from agent_sre.pipeline.storage.rollups import SliRollup

__all__ = ["FLEET_QUESTIONS", "TIMEOUT_S", "FleetSqlError", "FleetStore", "FleetStoreError", "cli_errors",
           "fleet_cost_tables", "fleet_incidents", "fleet_query", "fleet_sli_minutes", "run_fleet_sql", "skipped_note"]
T = TypeVar("T")


def cli_errors(call: Callable[[], T]) -> T:
    """``call()``, the fleet store's refusals as the command's error (a bad URL names ``--store``)."""
    try:
        return call()
    except FleetStoreError as exc:
        prefix = "--store " if exc.reason == "bad_store" else ""
        raise CliError(f"{prefix}{exc}") from None


def fleet_query(url: str, sql: str, max_rows: int) -> dict:
    """``{"columns", "types", "rows", "row_count", "truncated", ...}`` — what ``POST /v1/query`` answers."""
    if max_rows < 1:
        raise CliError("--max-rows must be at least 1")
    limits = QueryLimits(max_rows=max_rows, timeout_s=TIMEOUT_S, max_result_bytes=MAX_MEMORY,
                                 max_memory_bytes=MAX_MEMORY)
    return cli_errors(lambda: storage.fleet_query(url, sql, limits)).to_json()


def run_fleet_sql(args: argparse.Namespace, sql: str) -> int:
    """``agent-sre query --store clickhouse://…``: printed in ``args.format``."""
    import json

    body = fleet_query(args.store, sql, args.max_rows)
    print_table(json.loads(json.dumps(body, default=str)), args.format)
    return 0


def fleet_sli_minutes(source: str | FleetStore, slis: Iterable[SliRollup], lookback: dict[str, int],
                      now_minute: int) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """``storage.fleet_sli_minutes`` for the command line."""
    return cli_errors(lambda: storage.fleet_sli_minutes(source, slis, lookback, now_minute))


def fleet_cost_tables(source: str | FleetStore, since_minute: int, running_since_ns: int | None) -> duckdb.DuckDBPyConnection:
    """``storage.fleet_cost_tables`` for the command line."""
    return cli_errors(lambda: storage.fleet_cost_tables(source, since_minute, running_since_ns))


def fleet_incidents(source: str | FleetStore, include_resolved: bool, limit: int = 100) -> list[dict]:
    """``storage.fleet_incidents`` for the command line, saying when two pipelines numbered the same id."""
    out = cli_errors(lambda: storage.fleet_incidents(source, include_resolved, limit))
    ids = [r["id"] for r in out]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        note(f"incident ids numbered by more than one pipeline: {', '.join(repeated)} (one row per pipeline's "
             "incident; ids are per pipeline)")
    return out


def skipped_note(skipped: dict[str, str], objectives: list) -> None:
    for name, why in skipped.items():
        slos = ", ".join(o.name for o in objectives if o.sli == name)
        note(f"SLO {slos} (SLI {name}) is not answered from the fleet store: {why}")
