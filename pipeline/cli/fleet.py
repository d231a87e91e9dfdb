"""Fleet SQL: ``agent-sre query --store clickhouse://[user[:password]@]host[:port]/db "SQL"``.

The same questions as the local store, asked of the fleet's ClickHouse (tables ``spans``,
``rollup_minute``, ``events`` written by the clickhouse exporter).  Every query runs with
``readonly = 1`` (no writes, no settings changed; the server refuses them), the row limit
(``max_result_rows`` with ``result_overflow_mode = 'break'``, then cut here to exactly ``max_rows``),
``max_execution_time`` and ``max_memory_usage``.  For production, also give the user a read-only
profile on the server: the settings here are the client's request, the profile is the server's rule.
"""

from __future__ import annotations

import argparse
import urllib.parse

from agent_sre.pipeline.cli.common import CliError, print_table

TIMEOUT_S = 60

# The fleet views, in SQL that runs on both schemas (ClickHouse 18.16 to today); rollups are summed
# because SummingMergeTree merges rows of one key only eventually.
FLEET_QUESTIONS = {
    "cost_by_agent_model": """SELECT agent_id, model, sum(spans) AS spans, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
FROM rollup_minute WHERE minute >= now() - INTERVAL {hours} HOUR
GROUP BY agent_id, model ORDER BY cost_usd DESC, agent_id, model""",
    "error_rate_by_agent": """SELECT agent_id, sum(spans) AS spans, sum(errors) AS errors, errors / spans AS error_rate,
       sum(task_successes) / greatest(sum(tasks), 1) AS task_success_rate
FROM rollup_minute WHERE minute >= now() - INTERVAL {hours} HOUR
GROUP BY agent_id ORDER BY error_rate DESC, agent_id""",
    "slowest_llm_calls": """SELECT agent_id, model, trace_id, span_id, duration_ns / 1e6 AS duration_ms
FROM spans WHERE span_role = 'llm' AND start_ns >= (toUInt64(now()) - {hours} * 3600) * 1000000000
ORDER BY duration_ns DESC LIMIT 20""",
}
MAX_MEMORY = 2 << 30


def parse_store(url: str) -> dict:
    """clickhouse://user:password@host:port/db as clickhouse-driver's Client arguments."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise CliError(f"--store must be clickhouse://[user[:password]@]host[:port]/database (got {url!r})")
    return {"host": parts.hostname, "port": parts.port or 9000,
            "database": parts.path.strip("/") or "default",
            "user": urllib.parse.unquote(parts.username or "default"),
            "password": urllib.parse.unquote(parts.password or ""),
            "connect_timeout": 10, "send_receive_timeout": TIMEOUT_S + 10}


def fleet_query(url: str, sql: str, max_rows: int) -> dict:
    """``{"columns", "rows", "row_count", "truncated"}`` — what ``POST /v1/query`` answers."""
    try:
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error, ServerException
    except ImportError:  # pragma: no cover - a declared dependency
        raise CliError("fleet SQL needs clickhouse-driver: pip install clickhouse-driver") from None
    if max_rows < 1:
        raise CliError("--max-rows must be at least 1")
    client = Client(**parse_store(url))
    settings = {"readonly": 1, "max_result_rows": max_rows + 1, "result_overflow_mode": "break",
                "max_execution_time": TIMEOUT_S, "max_memory_usage": MAX_MEMORY}
    try:
        rows, types = client.execute(sql, settings=settings, with_column_types=True)
    except ServerException as exc:
        first = str(exc.message).splitlines()[0].split(" Stack trace:")[0]
        if exc.code == 164:  # READONLY
            first = f"only read-only statements are allowed ({first})"
        raise CliError(f"query failed (ClickHouse error {exc.code}): {first}") from None
    except (Error, OSError, EOFError) as exc:
        raise CliError(f"cannot reach the fleet store {parse_store(url)['host']}: {exc}") from None
    finally:
        client.disconnect()
    truncated = len(rows) > max_rows
    rows = [list(r) for r in rows[:max_rows]]
    return {"columns": [name for name, _ in types], "rows": rows, "row_count": len(rows), "truncated": truncated}


def run_fleet_sql(args: argparse.Namespace, sql: str) -> int:
    """``agent-sre query --store clickhouse://…``: printed in ``args.format``."""
    import json

    body = fleet_query(args.store, sql, args.max_rows)
    print_table(json.loads(json.dumps(body, default=str)), args.format)
    return 0
