"""A span store of 10M realistic agent spans, for the replay benchmarks (bench/replay.py).

    python -m bench.store10m [--dir /tmp/agent-sre-bench] [--spans 10000000] [--rebuild]

The store is created by the real ``SpanStore`` (so its schema, view and tables are the pipeline's),
then filled by DuckDB SQL (``INSERT ... SELECT FROM range(...)``) in chunks of traces: the pipeline
would take far longer than a benchmark should to ingest 10M spans on 2 cores, and what is measured
here is reading, not ingest.  The fill runs on the file attached as the pipeline attaches it
(``store.attach_store``: row groups of ``store.ROW_GROUP_SIZE`` rows), so its layout is the one the
pipeline's inserts write: 1,221 row groups of 8,192 spans, 105.7 bytes/span on disk (DuckDB's default
122,880-row groups, which this bench built until 2026-12-02, gave 71.9 bytes/span and other query times).
It is built once and cached (``<dir>/store10m.duckdb``; the parameters it was built with, row group size
included, are kept in its ``bench_meta`` table, so a different ``--spans`` or layout rebuilds it).

What the traces look like (deterministic: every value is a hash of the trace and span numbers):
- one task per trace, ``agent_task`` root span (``invoke_agent <agent>``), then alternating LLM calls
  (gpt-4o / gpt-4o-mini / claude-sonnet-4, tokens, cost) and tool calls (5 tools), 4 to 16 spans, ~10 on
  average; one trace in 7 delegates to a sub-agent (a ``delegation`` span whose later siblings hang under it);
- 5 task names (triage, answer_ticket, refund, summarize, escalate), 4 agent versions (1.2.0 to 1.5.0,
  by time, so each (task, version) pair holds ~1/20 of the traces: ~50k of 1M), 10 agents;
- success ~95 % (~93 % for 1.5.0, so a set diff has something to find), 2 % of tool calls fail;
- ~8 attributes per span (the GenAI and agent.* names agents emit), 3 resource attributes, and a short
  output text (``output.value``) on roots and LLM calls;
- rows in trace order with times rising over 7 days, as the store receives them (a trace's spans
  arrive within seconds of each other), received_ns just after end_ns.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_DIR = "/tmp/agent-sre-bench"
FILE = "store10m.duckdb"
BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
SPAN_DAYS = 7
TASKS = ["triage", "answer_ticket", "refund", "summarize", "escalate"]
VERSIONS = ["1.2.0", "1.3.0", "1.4.0", "1.5.0"]
TOOLS = ["search_kb", "web_search", "create_ticket", "lookup_order", "send_email"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"]
CHUNK_TRACES = 100_000
SPANS_PER_TRACE = 10  # the mean of 4 + (h % 13)


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def chunk_sql(first: int, count: int, n_traces: int) -> str:
    """INSERT of traces ``first`` .. ``first + count - 1`` (of ``n_traces``) into span_rows."""
    step_ns = SPAN_DAYS * 86_400 * 10**9 // n_traces
    # r(k): a deterministic pseudo-random number in [0, 1) per (trace, span, k).
    r = "((hash(t, j, {k}) % 1000003) / 1000003.0)"
    return f"""
INSERT INTO span_rows BY NAME
WITH traces AS (
  SELECT range AS t, md5('trace-' || range) AS trace_id, {BASE_NS} + range * {step_ns} AS t0,
         (4 + hash(range, 'n') % 13)::BIGINT AS n, hash(range, 'd') % 7 = 0 AS delegates,
         {_sql_list(TASKS)}[1 + (hash(range, 'task') % {len(TASKS)})::BIGINT] AS task_name,
         {_sql_list(VERSIONS)}[1 + ((range * {len(VERSIONS)}) // {n_traces})::BIGINT] AS agent_version,
         'agent-' || (hash(range, 'agent') % 10) AS agent_id
  FROM range({first}, {first + count})),
spans AS (
  SELECT *, unnest(range(n)) AS j FROM traces),
shaped AS (
  SELECT *,
    CASE WHEN j = 0 THEN 'agent_task' WHEN delegates AND j = 3 THEN 'delegation'
         WHEN j % 2 = 1 THEN 'llm' ELSE 'tool' END AS role,
    {_sql_list(MODELS)}[1 + (hash(t, j, 'm') % {len(MODELS)})::BIGINT] AS model_name,
    {_sql_list(TOOLS)}[1 + (hash(t, j, 'tool') % {len(TOOLS)})::BIGINT] AS tool,
    (100 + hash(t, j, 'in') % 3900)::BIGINT AS tin, (10 + hash(t, j, 'out') % 790)::BIGINT AS tout,
    {r.format(k=1)} AS r1, {r.format(k=2)} AS r2,
    -- each step starts after the previous one: steps of ~1.6 s
    t0 + j * 1600000000 + 1000000 AS s0
  FROM spans),
timed AS (
  SELECT *,
    CASE WHEN role = 'agent_task' THEN n * 1600000000
         WHEN role = 'llm' THEN 300000000 + (r1 * 1200000000)::BIGINT
         WHEN role = 'delegation' THEN (n - 3) * 1600000000 - 2000000
         ELSE 50000000 + (r1 * 900000000)::BIGINT END AS dur
  FROM shaped)
SELECT
  trace_id,
  substr(md5(trace_id || j), 1, 16) AS span_id,
  CASE WHEN j = 0 THEN NULL WHEN delegates AND j > 3 THEN substr(md5(trace_id || 3), 1, 16)
       ELSE substr(md5(trace_id || 0), 1, 16) END AS parent_span_id,
  1::BIGINT AS flags,
  CASE role WHEN 'agent_task' THEN 'invoke_agent ' || agent_id WHEN 'delegation' THEN 'invoke_agent researcher'
            WHEN 'llm' THEN 'chat ' || model_name ELSE 'execute_tool ' || tool END AS name,
  CASE WHEN role = 'llm' THEN 'client' ELSE 'internal' END AS kind,
  s0 AS start_ns, s0 + dur AS end_ns, dur AS duration_ns,
  CASE WHEN role = 'tool' AND r2 < 0.02 THEN 'error'
       WHEN role = 'agent_task' AND r2 >= (CASE WHEN agent_version = '1.5.0' THEN 0.93 ELSE 0.95 END) THEN 'error'
       ELSE 'unset' END AS status_code,
  CASE WHEN role = 'tool' AND r2 < 0.02 THEN 'tool timeout' END AS status_message,
  'support-agent' AS service_name, agent_version AS service_version, 'prod' AS environment,
  'agent_sre.bench' AS scope_name,
  CASE WHEN role = 'delegation' THEN 'researcher' ELSE agent_id END AS agent_id,
  CASE WHEN role = 'delegation' THEN 'researcher' ELSE agent_id END AS agent_name,
  agent_version, 's-' || (t // 8) AS session_id, task_name,
  CASE WHEN role = 'agent_task' THEN r2 < (CASE WHEN agent_version = '1.5.0' THEN 0.93 ELSE 0.95 END) END
    AS task_success,
  role AS span_role,
  CASE WHEN role = 'tool' THEN tool END AS tool_name,
  CASE WHEN role = 'llm' THEN model_name END AS model,
  CASE WHEN role = 'llm' THEN (CASE WHEN model_name LIKE 'claude%' THEN 'anthropic' ELSE 'openai' END) END AS provider,
  CASE WHEN role = 'llm' THEN tin END AS input_tokens,
  CASE WHEN role = 'llm' THEN tout END AS output_tokens,
  CASE WHEN role = 'llm' THEN 0::BIGINT END AS cached_tokens,
  CASE WHEN role = 'llm' THEN round(tin * (CASE model_name WHEN 'gpt-4o' THEN 2.5e-6 WHEN 'gpt-4o-mini' THEN 1.5e-7
                                                          ELSE 3e-6 END)
                                  + tout * (CASE model_name WHEN 'gpt-4o' THEN 1e-5 WHEN 'gpt-4o-mini' THEN 6e-7
                                                            ELSE 1.5e-5 END), 8) END AS cost_usd,
  CASE WHEN role = 'delegation' THEN agent_id END AS delegation_from,
  CASE WHEN role = 'delegation' THEN 'researcher' END AS delegation_to,
  CASE WHEN role = 'tool' AND r2 < 0.02 THEN 'timeout' END AS error_type,
  list_filter([{{'key': 'gen_ai.operation.name',
     'value': CASE role WHEN 'llm' THEN 'chat' WHEN 'tool' THEN 'execute_tool' ELSE 'invoke_agent' END}},
   {{'key': 'gen_ai.agent.name', 'value': agent_id}},
   {{'key': 'session.id', 'value': 's-' || (t // 8)}},
   {{'key': 'agent.task.name', 'value': task_name}},
   {{'key': 'gen_ai.request.model', 'value': CASE WHEN role = 'llm' THEN model_name END}},
   {{'key': 'gen_ai.tool.name', 'value': CASE WHEN role = 'tool' THEN tool END}},
   {{'key': 'gen_ai.tool.call.id', 'value': CASE WHEN role = 'tool' THEN 'call_' || t || '_' || j END}},
   {{'key': 'output.value', 'value': CASE WHEN role IN ('llm', 'agent_task')
       THEN 'The ticket is about ' || tool || '; answer ' || (hash(t, j, 'o') % 97) || '.' END}}],
    lambda e: e.value IS NOT NULL) AS attributes,
  [{{'key': 'service.name', 'value': 'support-agent'}}, {{'key': 'service.version', 'value': agent_version}},
   {{'key': 'deployment.environment.name', 'value': 'prod'}}] AS resource_attributes,
  [] AS scope_attributes,
  0::BIGINT AS dropped_attributes_count, 0::BIGINT AS dropped_events_count, 0::BIGINT AS dropped_links_count,
  s0 + dur + 200000000 AS received_ns
FROM timed ORDER BY t, j
"""


def build(directory: str, spans: int, rebuild: bool = False, threads: int = 2) -> Path:
    """The store at ``<directory>/store10m.duckdb``, built unless it is there with the same ``spans`` and the
    pipeline's row group size (a store built before the pipeline attached its file with ROW_GROUP_SIZE has
    DuckDB's default 122,880-row groups: its queries would not measure what the pipeline's store does)."""
    import duckdb

    from agent_sre.pipeline.storage.store import ROW_GROUP_SIZE

    path = Path(directory) / FILE
    if path.exists() and not rebuild:
        con = duckdb.connect(str(path), read_only=True)
        try:
            meta = con.execute("SELECT spans, row_group_size FROM bench_meta").fetchall()
            located = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'trace_locator'"
                                  ).fetchall()[0][0]
        except duckdb.Error:  # built before bench_meta had row_group_size: DuckDB's default row groups
            meta, located = [], 0
        finally:
            con.close()
        if meta and meta[0] == (spans, ROW_GROUP_SIZE):
            if not located:
                _locate(path)
            return path
    # Built beside it and renamed over it: a benchmark reading the old file meanwhile keeps reading it.
    building = path.with_name(f"{path.stem}.building-{os.getpid()}{path.suffix}")
    try:
        _build_at(building, spans, threads)
        os.replace(building, path)
        path.with_name(path.name + ".created").write_text(
            building.with_name(building.name + ".created").read_text())
    finally:
        for part in (building, building.with_name(building.name + ".wal"),
                     building.with_name(building.name + ".created")):
            part.unlink(missing_ok=True)
    return path


def _build_at(path: Path, spans: int, threads: int) -> None:
    """The SQL fill, on the store file attached as the pipeline attaches it (store.attach_store: the same
    row groups of ROW_GROUP_SIZE rows, which is what query speed depends on)."""
    from agent_sre.pipeline.storage.store import ROW_GROUP_SIZE, SpanStore, attach_store

    n_traces = max(1, spans // SPANS_PER_TRACE)
    started = time.monotonic()
    SpanStore(path).close()  # the pipeline's schema: span_rows, held_spans, the spans view, rollup tables
    con = attach_store(path, {"threads": threads, "preserve_insertion_order": True})
    try:
        for first in range(0, n_traces, CHUNK_TRACES):
            con.execute(chunk_sql(first, min(CHUNK_TRACES, n_traces - first), n_traces))
            done = min(first + CHUNK_TRACES, n_traces)
            print(f"  {done:>9,} / {n_traces:,} traces  {time.monotonic() - started:6.1f}s", flush=True)
        con.execute("CHECKPOINT")
        _locate_with(con)
        built = con.execute("SELECT count(*), count(DISTINCT trace_id) FROM span_rows").fetchall()[0]
        build_s = time.monotonic() - started
        con.execute("CREATE TABLE bench_meta (spans BIGINT, traces BIGINT, stored_spans BIGINT, build_s DOUBLE, "
                    "row_group_size BIGINT)")
        con.execute("INSERT INTO bench_meta VALUES (?, ?, ?, ?, ?)",
                    [spans, built[1], built[0], build_s, ROW_GROUP_SIZE])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _locate_with(con) -> None:
    """The store's trace locator (what the pipeline's inserts write as they go), for every stored trace."""
    from agent_sre.pipeline.storage.store import locate_sql

    if con.execute("SELECT count(*) FROM trace_locator").fetchall()[0][0] == 0:
        con.execute(locate_sql("span_rows", "received_ns"))
        con.execute("CHECKPOINT")


def _locate(path: Path) -> None:
    """A store built before the locator existed gets it (opened by the real store: it adds the table)."""
    import duckdb

    from agent_sre.pipeline.storage.store import SpanStore

    SpanStore(path).close()
    con = duckdb.connect(str(path))
    try:
        _locate_with(con)
    finally:
        con.close()


def describe(path: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        spans, traces, stored, build_s = con.execute(
            "SELECT spans, traces, stored_spans, build_s FROM bench_meta").fetchall()[0]
    finally:
        con.close()
    size = path.stat().st_size
    return {"path": str(path), "spans": stored, "traces": traces, "build_s": round(build_s, 1),
            "bytes": size, "bytes_per_span": round(size / stored, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=DEFAULT_DIR, help=f"where the store is cached (default {DEFAULT_DIR})")
    ap.add_argument("--spans", type=int, default=10_000_000, help="about this many spans (default 10M)")
    ap.add_argument("--rebuild", action="store_true", help="build again even if cached")
    args = ap.parse_args()
    path = build(args.dir, args.spans, args.rebuild)
    d = describe(path)
    print(f"store {d['path']}: {d['spans']:,} spans in {d['traces']:,} traces, built in {d['build_s']} s, "
          f"{d['bytes'] / 2**20:,.0f} MiB on disk ({d['bytes_per_span']} bytes/span)")


if __name__ == "__main__":
    main()
