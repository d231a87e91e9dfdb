"""Fleet benchmark, the ClickHouse part: spans/s into ClickHouse from one pipeline vs the local DuckDB rate,
in the same run, with the CPU each costs.

Starts Debian's `clickhouse-server` (18.16, so the exporter uses its compat schema) on loopback with a temporary
data directory, then, in this process, pipelines built from the store-only processors (memory_limiter,
batch, agent_semconv with ``send_batch_size: --batch``) fed with the same pre-serialised OTLP requests of 512
agent spans (bench/agent_spans.py) from ``--clients`` threads:

  duckdb        exporters [duckdb]: spans / time until every request is acknowledged and the store synced
  ch-unmerged   exporters [clickhouse] as the exporter was before issue #16's work: one insert per queued
                batch (merge_rows: 1) encoded value by value by clickhouse-driver (its column lists)
  clickhouse    exporters [clickhouse] (queued, 2 consumers, on_full: block; merged inserts, numpy-encoded
                Native blocks): spans / time until ``SELECT count() FROM spans`` reaches the total
  both          exporters [duckdb, clickhouse]: the sidecar shape; both rates, from one fan-out

For each: spans/s, this process's CPU per span (time.process_time: receiver, processors and exporters) and
the ClickHouse server's CPU per span (/proc/<pid>/stat), inserts and rows per insert; then the exporter's
own time per span: building the insert's columns (``convert``: Arrow -> driver lists before, Arrow ->
Native bytes now) and a whole ``send`` (the dedup check, convert, network, server insert).  Each phase runs
``--runs`` times, interleaved; the table shows the median and (in brackets) the best run.

    .venv/bin/python bench/fleet.py [--requests 120] [--clients 2] [--batch 8192] [--runs 3]

``--phase query``: the fleet's questions over ``--spans`` (10M) agent spans in ClickHouse, on two engines:
the current one in process (chdb, current schema) and Debian's 18.16 server (compat schema), both created by
the exporter's own ``ddl()`` and filled server-side (``INSERT ... SELECT ... FROM numbers()``, the traces of
bench/store10m.py's DuckDB store over one day and 100 agents).  Timed, ``--rounds`` times each: the product's
fleet views (``slo status``, ``cost summary``, ``incidents list`` with ``--store``: processors/*/fleet.py,
pipeline/storage/fleet.py), its fleet questions (``agent-sre query --store``: ``FLEET_QUESTIONS``) and issue
#12's set through the same ``fleet_query`` (over ``spans``, and over ``spans_raw`` under it: what reading
each span once with FINAL costs); wall time min/median/max, this process's CPU and the server's, every
statement of a view's last round, bytes on disk per span.  The engines load first, then each question's
rounds alternate between them.  ~13 minutes for 10M on the shared 2-core box; ``--spans 200000`` for a
quick run.

    .venv/bin/python bench/fleet.py --phase query [--spans 10000000] [--rounds 3] [--engines chdb,server]

``--phase decisions``: the decisions API with budgets shared on Redis and how stale a decision gets (two
pipelines on Debian's redis-server): bench/fleet_decisions.py, whose options follow.

    .venv/bin/python bench/fleet.py --phase decisions [--seconds 5 --ingest 200 --rate 500]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_spans import make_request  # noqa: E402

PIPELINE = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:0}}
processors:
  memory_limiter: {{check_interval: 100ms, limit_mib: 4096, spike_limit_mib: 1}}
  agent_semconv: {{}}
  batch: {{send_batch_size: {batch}, timeout: 50ms}}
exporters:
  duckdb: {{path: {dir}/spans.duckdb}}
{clickhouse}service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch, agent_semconv]
      exporters: [{exporters}]
"""
CLICKHOUSE = """  clickhouse:
    endpoint: {endpoint}
    create_schema: true
    sending_queue: {{num_consumers: 2, queue_size: 400000}}
{merge}"""
UNMERGED = "    merge_rows: 1\n    merge_timeout: 0s\n"


def start(text: str):
    from agent_sre.pipeline.service import Service
    from agent_sre.pipeline.service.config import parse_config

    service = Service(parse_config(text, "bench"))
    service.start()
    return service


def drive(service, bodies: list[bytes], n_requests: int, clients: int) -> float:
    """Send n_requests (round-robin over bodies) from `clients` threads; seconds until all are acknowledged."""
    ingest = service.receivers[0].ingest
    per_client = n_requests // clients

    def client(k: int) -> None:
        for i in range(per_client):
            for _attempt in range(1000):  # a full blocking queue refuses retryably: back off and retry
                try:
                    ingest.export_protobuf(bodies[k * per_client + i], "bench")
                    break
                except Exception:  # noqa: BLE001 - ExportFailed(retryable): the exporter's back-pressure
                    time.sleep(0.02)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def ch_count(server, db: str) -> int:
    try:
        return server.client().execute(f"SELECT count() FROM {db}.spans_raw")[0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def server_cpu(server) -> float:
    """The ClickHouse server's CPU seconds so far (user + system, /proc/<pid>/stat)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(server, workdir: Path, name: str, exporters: str, args, bodies, run: int) -> dict:
    db = f"bench_{name.replace('-', '_')}_{run}"
    d = workdir / f"pipeline-{name}-{run}"
    d.mkdir()
    uses_ch = "clickhouse" in exporters
    merge = UNMERGED if name == "ch-unmerged" else ""
    text = PIPELINE.format(batch=args.batch, dir=d, exporters=exporters,
                           clickhouse=CLICKHOUSE.format(endpoint=server.url(db), merge=merge) if uses_ch else "")
    service = start(text)
    timing, originals = instrument(service, driver_encoding=name == "ch-unmerged") if uses_ch else ({}, {})
    total = (args.requests // args.clients) * args.clients * 512
    try:
        cpu, server_cpu0 = time.process_time(), server_cpu(server)
        started = time.perf_counter()
        drive(service, bodies, args.requests, args.clients)
        out = {"phase": name, "spans": total}
        if "duckdb" in exporters:
            service.exporters["duckdb"].store.sync()
            out["duckdb"] = total / (time.perf_counter() - started)
        if uses_ch:
            while ch_count(server, db) < total:
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"{name}: ClickHouse has {ch_count(server, db)} of {total} spans after 600 s")
                time.sleep(0.02)
            out["clickhouse"] = total / (time.perf_counter() - started)
        out["cpu_us"] = (time.process_time() - cpu) / total * 1e6
        out["server_cpu_us"] = (server_cpu(server) - server_cpu0) / total * 1e6
        if uses_ch:
            assert ch_count(server, db) == total, "a span was stored twice"
            exporter = service.exporters["clickhouse"]
            out.update({k: v / total * 1e6 for k, v in timing.items()}, inserts=exporter.inserts)
        return out
    finally:
        service.shutdown()
        restore(originals)


def instrument(service, driver_encoding: bool) -> tuple[dict, dict]:
    """Time the clickhouse exporter's column encoding and its whole send() (seconds); ``driver_encoding``:
    make it use its fallback (clickhouse-driver's column lists), as before #16.  Returns the timings and
    the module functions to put back."""
    from agent_sre.exporters.clickhouse import native

    timing = {"convert_us": 0.0, "send_us": 0.0}
    originals = {"encode_column": native.encode_column, "insert": native.insert}
    lock = threading.Lock()

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with lock:
                    timing[key] += time.perf_counter() - t
        return wrapper

    def unsupported(*_a, **_kw):
        raise native.UnsupportedType("the driver's own encoding, as before #16 (bench)")

    if driver_encoding:
        import agent_sre.exporters.clickhouse.factory as module

        originals["insert_columns"] = module.insert_columns
        module.insert_columns = timed(module.insert_columns, "convert_us")
        native.insert = unsupported
    else:
        native.encode_column = timed(native.encode_column, "convert_us")
    exporter = service.exporters["clickhouse"]
    exporter.send = timed(exporter.send, "send_us")
    return timing, originals


def restore(originals: dict) -> None:
    import agent_sre.exporters.clickhouse.factory as module
    from agent_sre.exporters.clickhouse import native

    for attr, fn in originals.items():
        setattr(module if attr == "insert_columns" else native, attr, fn)


# --- --phase query: the fleet's questions over 10M spans --------------------------------------------

FLEET_DB = "fleet"
AGENTS = 100
CHUNK_TRACES = 25_000  # ~250k spans per INSERT ... SELECT (1M-span blocks exceed 18.16's 2 GB query memory)
INCIDENTS = 2_000
DAY_NS = 86_400 * 10**9


def raw_spans() -> str:
    """The table the exporter inserts spans into (``spans_raw`` under the view ``spans`` that collapses a
    span's copies; ``spans`` itself before that)."""
    from agent_sre.exporters.clickhouse import schema

    return getattr(schema, "RAW_SPANS", "spans")


def _array(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def trace_id(t: int) -> str:
    """The id of trace number ``t``, as the generator writes it (lower(hex(MD5(toString(t)))))."""
    import hashlib

    return hashlib.md5(str(t).encode()).hexdigest()


def spans_sql(current: bool, first: int, count: int, n_traces: int, base_ns: int) -> str:
    """INSERT of traces ``first`` .. ``first + count - 1`` (of ``n_traces`` over one day from ``base_ns``):
    bench/store10m.py's traces (task root, alternating LLM and tool calls, one in 7 delegating; 2 % of tool
    calls and 5-7 % of tasks fail) in ClickHouse SQL that runs on 18.16 and today's engine alike."""
    from bench.store10m import MODELS, TASKS, TOOLS, VERSIONS

    r = "(cityHash64(t, j, {k}) % 1000003) / 1000003.0"
    ok = "if(agent_version = '1.5.0', 0.93, 0.95)"
    failed_tool = "(role = 'tool' AND r2 < 0.02)"
    price = ("multiIf(model_name = 'gpt-4o', {a}, model_name = 'gpt-4o-mini', {b}, {c})")
    akeys = ("arrayConcat(['gen_ai.operation.name', 'gen_ai.agent.name', 'session.id', 'agent.task.name'], "
             "if(role = 'llm', ['gen_ai.request.model'], if(role = 'tool', ['gen_ai.tool.name', 'gen_ai.tool.call.id'], "
             "emptyArrayString())), if(role IN ('llm', 'agent_task'), ['output.value'], emptyArrayString()))")
    avals = ("arrayConcat([multiIf(role = 'llm', 'chat', role = 'tool', 'execute_tool', 'invoke_agent'), agent, "
             "session, task_name], if(role = 'llm', [model_name], if(role = 'tool', [tool, concat('call_', toString(t), "
             "'_', toString(j))], emptyArrayString())), if(role IN ('llm', 'agent_task'), [concat('The ticket is about ', "
             "tool, '; answer ', toString(cityHash64(t, j, 'o') % 97), '.')], emptyArrayString()))")
    rkeys, rvals = "['service.name', 'service.version', 'deployment.environment.name']", \
        "['support-agent', agent_version, 'prod']"
    columns = {
        "trace_id": "trace_id",
        "span_id": "substring(lower(hex(MD5(concat(trace_id, toString(j))))), 1, 16)",
        "parent_span_id": "if(j = 0, NULL, substring(lower(hex(MD5(concat(trace_id, if(delegates AND j > 3, '3', "
                          "'0'))))), 1, 16))",
        "flags": "1",
        "name": "multiIf(role = 'agent_task', concat('invoke_agent ', agent0), role = 'delegation', "
                "'invoke_agent researcher', role = 'llm', concat('chat ', model_name), concat('execute_tool ', tool))",
        "kind": "if(role = 'llm', 'client', 'internal')",
        "start_ns": "s0", "end_ns": "s0 + dur", "duration_ns": "dur",
        "status_code": f"if({failed_tool} OR (role = 'agent_task' AND r2 >= {ok}), 'error', 'unset')",
        "status_message": f"if({failed_tool}, 'tool timeout', NULL)",
        "service_name": "'support-agent'", "service_version": "agent_version", "environment": "'prod'",
        "scope_name": "'agent_sre.bench'", "agent_id": "agent", "agent_name": "agent", "agent_version": "agent_version",
        "session_id": "session", "task_name": "task_name",
        "task_success": f"if(role = 'agent_task', toUInt8(r2 < {ok}), NULL)",
        "span_role": "role", "tool_name": "if(role = 'tool', tool, NULL)", "model": "if(role = 'llm', model_name, NULL)",
        "provider": "if(role = 'llm', if(model_name LIKE 'claude%', 'anthropic', 'openai'), NULL)",
        "input_tokens": "if(role = 'llm', tin, NULL)", "output_tokens": "if(role = 'llm', tout, NULL)",
        "cached_tokens": "if(role = 'llm', 0, NULL)",
        "cost_usd": (f"if(role = 'llm', round(tin * {price.format(a='2.5e-6', b='1.5e-7', c='3e-6')} + tout * "
                     f"{price.format(a='1e-5', b='6e-7', c='1.5e-5')}, 8), NULL)"),
        "delegation_from": "if(role = 'delegation', agent0, NULL)",
        "delegation_to": "if(role = 'delegation', 'researcher', NULL)",
        "error_type": f"if({failed_tool}, 'timeout', NULL)",
        "dropped_attributes_count": "0", "dropped_events_count": "0", "dropped_links_count": "0",
        "batch_id": "concat('bench-', toString(intDiv(t, 800)))",
    }
    if current:
        columns.update(attributes=f"mapFromArrays({akeys}, {avals})", resource_attributes=f"mapFromArrays({rkeys}, {rvals})")
    else:
        columns.update({"attributes.key": akeys, "attributes.value": avals, "resource_attributes.key": rkeys,
                        "resource_attributes.value": rvals})
    step = DAY_NS // n_traces
    return f"""INSERT INTO {FLEET_DB}.{raw_spans()} ({', '.join(columns)})
SELECT {', '.join(columns.values())}
FROM (
  SELECT t, j, trace_id, delegates, task_name, agent_version, session, agent0,
    if(delegates AND j = 3, 'researcher', agent0) AS agent,
    multiIf(j = 0, 'agent_task', delegates AND j = 3, 'delegation', j % 2 = 1, 'llm', 'tool') AS role,
    {_array(MODELS)}[1 + cityHash64(t, j, 'm') % {len(MODELS)}] AS model_name,
    {_array(TOOLS)}[1 + cityHash64(t, j, 'tool') % {len(TOOLS)}] AS tool,
    toInt64(100 + cityHash64(t, j, 'in') % 3900) AS tin, toInt64(10 + cityHash64(t, j, 'out') % 790) AS tout,
    {r.format(k=1)} AS r1, {r.format(k=2)} AS r2,
    t0 + j * 1600000000 + 1000000 AS s0,
    multiIf(role = 'agent_task', toInt64(n) * 1600000000, role = 'llm', 300000000 + toInt64(r1 * 1200000000),
            role = 'delegation', (toInt64(n) - 3) * 1600000000 - 2000000, 50000000 + toInt64(r1 * 900000000)) AS dur
  FROM (
    SELECT number + {first} AS t, lower(hex(MD5(toString(t)))) AS trace_id, toInt64({base_ns} + t * {step}) AS t0,
      4 + cityHash64(t, 'n') % 13 AS n, cityHash64(t, 'd') % 7 = 0 AS delegates,
      {_array(TASKS)}[1 + cityHash64(t, 'task') % {len(TASKS)}] AS task_name,
      {_array(VERSIONS)}[1 + intDiv(t * {len(VERSIONS)}, {n_traces})] AS agent_version,
      concat('s-', toString(intDiv(t, 8))) AS session,
      concat('agent-', toString(cityHash64(t, 'agent') % {AGENTS})) AS agent0
    FROM numbers({count}))
  ARRAY JOIN range(n) AS j)"""


def incidents_sql(current: bool, base_ns: int) -> str:
    """INCIDENTS incidents over the day (one event when opened, a second when resolved for 2 in 3), as the
    alerts receiver's ``incident`` events reach the events table."""
    keys = "['agent_id', 'incident_id', 'priority', 'incident_state', 'title', 'signals']"
    values = ("[concat('agent-', toString(i % 100)), concat('INC-', toString(i)), 'P2', if(e = 1, 'resolved', 'open'), "
              "'burn rate over 14.4x', toString(1 + i % 5)]")
    labels = {"labels": f"mapFromArrays({keys}, {values})"} if current else {"labels.key": keys, "labels.value": values}
    columns = {"time_ns": "opened + e * 600000000000", "kind": "'incident'", "state": "if(e = 1, 'resolved', 'firing')",
               "severity": "'page'", "name": "concat('INC-', toString(i), ' P2')", "fingerprint": "concat('fp', toString(i))",
               "summary": "concat('incident INC-', toString(i), if(e = 1, ' resolved', ' open'))", **labels,
               "started_ns": "opened", "batch_id": "concat('ev-', toString(i), '-', toString(e))"}
    return f"""INSERT INTO {FLEET_DB}.events ({', '.join(columns)})
SELECT {', '.join(columns.values())}
FROM (SELECT number AS i, toInt64({base_ns} + number * {DAY_NS // INCIDENTS}) AS opened FROM numbers({INCIDENTS}))
ARRAY JOIN range(if(i % 3 = 0, 1, 2)) AS e"""


def issue12_questions(current: bool, n_traces: int, rounds: int) -> dict[str, list[str]]:
    """Issue #12's questions as a user writes them over ``spans`` (one SQL per round: the trace and agent
    differ); and, where ``spans`` is the view collapsing a span's copies, the same over the table under it
    (no FINAL: what collapsing costs)."""
    import random

    model = ("attributes['gen_ai.request.model']" if current
             else "attributes.value[indexOf(attributes.key, 'gen_ai.request.model')]")
    rng = random.Random(16)
    traces = [trace_id(rng.randrange(n_traces)) for _ in range(rounds)]
    agents = [f"agent-{rng.randrange(AGENTS)}" for _ in range(rounds)]
    asked = {
        "agent/model: count, tokens, p99": ["SELECT agent_id, model, count() AS spans, sum(input_tokens) AS input_tokens, "
                                            "sum(output_tokens) AS output_tokens, quantileExact(0.99)(duration_ns) / 1e6 "
                                            "AS p99_ms FROM {spans} GROUP BY agent_id, model ORDER BY spans DESC"] * rounds,
        "attribute group-by": [f"SELECT {model} AS request_model, count() AS spans FROM {{spans}} GROUP BY request_model "
                               "ORDER BY spans DESC"] * rounds,
        "one trace by id": [f"SELECT span_id, parent_span_id, name, span_role, start_ns, duration_ns, status_code FROM "
                            f"{{spans}} WHERE trace_id = '{t}' ORDER BY start_ns" for t in traces],
        "error rate per minute, one agent": [
            "SELECT toStartOfMinute(start_time) AS minute, count() AS spans, countIf(status_code = 'error') AS errors, "
            f"errors / spans AS error_rate FROM {{spans}} WHERE agent_id = '{a}' GROUP BY minute ORDER BY minute"
            for a in agents],
    }
    out = {name: [sql.format(spans="spans") for sql in sqls] for name, sqls in asked.items()}
    if raw_spans() != "spans":
        out.update({f"{name} [{raw_spans()}]": [sql.format(spans=raw_spans()) for sql in sqls]
                    for name, sqls in asked.items()})
    return out


def chdb_fleet_store(sess):
    """A FleetStore whose statements run on a chdb session (the engine in process: no server, no network),
    the parameters substituted as clickhouse-driver substitutes them; every other method (``arrow``,
    ``has_column``, ``spans_source``, ...) is FleetStore's own, so the views run their shipped code.  The
    FleetStore's settings (readonly, time and memory limits) are not applied: a session has no profile."""
    from agent_sre.pipeline.storage.fleet import FleetStore

    class ChdbFleetStore(FleetStore):
        def __init__(self, sess):
            super().__init__(f"clickhouse://127.0.0.1/{FLEET_DB}")  # the driver's Client is never connected
            self.sess = sess

        def execute(self, sql: str, params: dict | None = None, settings: dict | None = None, columnar: bool = False,
                    with_column_types: bool = False):
            from clickhouse_driver.util.escape import escape_params

            table = self.sess.query(sql % escape_params(params, None) if params else sql, "ArrowTable")
            columns = [c.to_pylist() for c in table.columns]
            out = columns if columnar else list(zip(*columns, strict=True))
            return (out, [(f.name, str(f.type)) for f in table.schema]) if with_column_types else out

    return ChdbFleetStore(sess)


def product_questions(source, cfg, rounds: int) -> dict[str, list]:
    """What the product asks of the fleet store, each a call of its own function: the fleet views and
    ``FLEET_QUESTIONS`` (over the last 24 h) through ``fleet_query``."""
    from agent_sre.pipeline.cli.common import budget_specs
    from agent_sre.pipeline.cli.slo import _objectives, _sli_definitions
    from agent_sre.pipeline.storage.fleet import FLEET_QUESTIONS, fleet_incidents
    from agent_sre.processors.cost.fleet import fleet_costs
    from agent_sre.processors.slo.factory import window_end
    from agent_sre.processors.slo.fleet import fleet_slos

    objectives, slis, specs = _objectives(cfg), _sli_definitions(cfg), budget_specs(cfg)
    calls = {
        "slo status --store": lambda: fleet_slos(source, objectives, slis, window_end(time.time())),
        "cost summary --store (7 days)": lambda: fleet_costs(source, specs, time.time(), 7),
        "incidents list --store --all": lambda: fleet_incidents(source, True),
    }
    calls.update({f"query: {name}": sql.format(hours=24) for name, sql in FLEET_QUESTIONS.items()})
    return {name: [call] * rounds for name, call in calls.items()}


def answer_rows(answer) -> int:
    """Rows in an answer: a QueryResult, a list of rows, or (rows, accounts, ...) / (rows, skipped)."""
    if hasattr(answer, "rows"):
        return len(answer.rows)
    if isinstance(answer, tuple):
        return sum(len(a) for a in answer if isinstance(a, list))
    return len(answer)


def time_round(q, source, server_pid: int | None, log: list) -> dict:
    """One round of a question (a callable, or SQL run through ``fleet_query`` with the CLI's limits but
    10,000 rows): wall ms, this process's CPU ms, the server's CPU ms, rows, the statements it sent (ms,
    rows) and the answer; or its ``error``."""
    from agent_sre.pipeline.storage.fleet import MAX_MEMORY, TIMEOUT_S, fleet_query
    from agent_sre.pipeline.storage.sandbox import QueryLimits

    limits = QueryLimits(max_rows=10_000, timeout_s=TIMEOUT_S, max_result_bytes=MAX_MEMORY, max_memory_bytes=MAX_MEMORY)
    del log[:]
    cpu, scpu, wall = time.process_time(), _pid_cpu(server_pid), time.perf_counter()
    try:
        answer = q() if callable(q) else fleet_query(source, q, limits)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"wall": (time.perf_counter() - wall) * 1e3, "cpu": (time.process_time() - cpu) * 1e3,
            "server": (_pid_cpu(server_pid) - scpu) * 1e3, "rows": answer_rows(answer), "statements": list(log),
            "answer": answer}


@contextmanager
def traced_statements(stores: list):
    """Every statement ``stores`` run meanwhile (each one's ``execute``): (its first words, ms, rows), in a
    list the caller empties (a URL stands for the FleetStores the views open from it)."""
    from agent_sre.pipeline.storage.fleet import FleetStore

    log: list[tuple[str, float, int]] = []
    originals = {FleetStore: FleetStore.execute}
    originals.update({type(store): type(store).execute for store in stores if not isinstance(store, str)})

    def traced(execute):
        def wrapper(self, sql, *a, **kw):
            started = time.perf_counter()
            out = execute(self, sql, *a, **kw)
            rows = out[0] if kw.get("with_column_types") else out
            n = len(rows[0]) if kw.get("columnar") and rows else len(rows)
            params = a[0] if a else kw.get("params")
            label = " ".join(sql.split())[:90] + (f" [sli {params['sli']}]" if params and "sli" in params else "")
            log.append((label, (time.perf_counter() - started) * 1e3, n))
            return out
        return wrapper

    for cls, execute in originals.items():
        cls.execute = traced(execute)
    try:
        yield log
    finally:
        for cls, execute in originals.items():
            cls.execute = execute


def _pid_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_fleet(run, current: bool, spans: int, base_ns: int) -> dict:
    """The exporter's schema (``ddl``), then ~``spans`` spans and the incidents, by ``run(sql)``; the load's
    wall time, spans, bytes on disk and active parts."""
    from agent_sre.exporters.clickhouse.schema import ddl

    for statement in ddl(FLEET_DB, current=current, ttl_days=30):
        run(statement)
    n_traces = max(1, spans // 10)  # store10m's 4 + (h % 13) spans a trace: 10 on average
    started = time.perf_counter()
    for first in range(0, n_traces, CHUNK_TRACES):
        run(spans_sql(current, first, min(CHUNK_TRACES, n_traces - first), n_traces, base_ns))
    run(incidents_sql(current, base_ns))
    return {"load_s": time.perf_counter() - started, "n_traces": n_traces}


def settle(scalar, timeout_s: float = 120) -> dict:
    """Wait (up to ``timeout_s``) for the background merges the load started, then the spans table's size:
    stored spans, bytes on disk and active parts (system.parts; ``bytes`` before ``bytes_on_disk`` existed)."""
    deadline = time.monotonic() + timeout_s
    while scalar("SELECT count() FROM system.merges") and time.monotonic() < deadline:
        time.sleep(1)
    size = {}
    for table in (raw_spans(), "rollup_minute"):
        where = f"FROM system.parts WHERE active AND database = '{FLEET_DB}' AND table = '{table}'"
        try:
            size[table] = scalar(f"SELECT sum(bytes_on_disk) {where}"), scalar(f"SELECT count() {where}")
        except Exception:  # noqa: BLE001 - 18.16 names the column ``bytes``
            size[table] = scalar(f"SELECT sum(bytes) {where}"), scalar(f"SELECT count() {where}")
    return {"spans": scalar(f"SELECT count() FROM {FLEET_DB}.spans"),
            "rollup_rows": scalar(f"SELECT count() FROM {FLEET_DB}.rollup_minute"),
            "stored": scalar(f"SELECT count() FROM {FLEET_DB}.{raw_spans()}"),
            "bytes": size[raw_spans()][0], "parts": size[raw_spans()][1], "rollup_bytes": size["rollup_minute"][0]}


def open_engine(engine: str, tmp: Path, stack) -> dict:
    """One engine, closed by ``stack``: its ``run(sql)``, ``scalar(sql)``, the fleet store the product's
    functions are given (a URL for the server: they connect as the CLI does), the server's pid."""
    if engine == "chdb":
        from chdb import session

        sess = session.Session(str(tmp / "chdb"))
        stack.callback(sess.close)
        sess.query(f"CREATE DATABASE IF NOT EXISTS {FLEET_DB}")
        sess.query(f"USE {FLEET_DB}")
        return {"engine": engine, "run": sess.query, "scalar": lambda sql: sess.query(sql, "ArrowTable").column(0)[0].as_py(),
                "source": chdb_fleet_store(sess), "pid": None, "current": True}
    from tests.clickhouse_server import clickhouse_server

    server = stack.enter_context(clickhouse_server(tmp))
    client = server.client()
    return {"engine": engine, "run": client.execute, "scalar": lambda sql: client.execute(sql)[0][0],
            "source": server.url(FLEET_DB), "pid": server.proc.pid, "current": False}


def load_engine(e: dict, spans: int, base_ns: int) -> dict:
    version = e["scalar"]("SELECT version()")
    print(f"{e['engine']} (ClickHouse {version}): loading ~{spans:,} spans", flush=True)
    cpu0, scpu0 = time.process_time(), _pid_cpu(e["pid"])
    loaded = load_fleet(e["run"], e["current"], spans, base_ns)
    loaded.update(load_cpu=time.process_time() - cpu0 + _pid_cpu(e["pid"]) - scpu0)
    loaded.update(settle(e["scalar"]))
    print(f"  {loaded['spans']:,} spans in {loaded['load_s']:.1f} s, {loaded['parts']} parts", flush=True)
    return {"engine": e["engine"], "version": version, "schema": "current" if e["current"] else "compat", **loaded}


def query_phase(args) -> None:
    """Load every engine, then each question's rounds interleaved across engines (round 1 of a question on
    each engine, round 2 on each, ...), so that the shared box's load drifts over all of them alike."""
    from contextlib import ExitStack

    from agent_sre.pipeline.cli.common import load

    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    cfg = load(None)  # the embedded default's objectives and budgets, as `slo status --store` without --config
    load_before = os.getloadavg()
    # one day ending a minute ago: the views' windows (last 24 h, the SLOs' 30 days, running tasks) hold it
    base_ns = (time.time_ns() // 60_000_000_000 - 1) * 60_000_000_000 - DAY_NS
    with tempfile.TemporaryDirectory(prefix="fleet-query-") as tmp, ExitStack() as stack:
        engines, reports, questions = [], [], []
        for name in args.engines.split(","):
            (Path(tmp) / name).mkdir()
            engines.append(open_engine(name, Path(tmp) / name, stack))
            reports.append(load_engine(engines[-1], args.spans, base_ns))
            questions.append({**product_questions(engines[-1]["source"], cfg, args.rounds),
                              **issue12_questions(engines[-1]["current"], reports[-1]["n_traces"], args.rounds)})
        print(f"timing: {args.rounds} rounds of every question, engines interleaved", flush=True)
        load_timing = os.getloadavg()
        with traced_statements([e["source"] for e in engines]) as log:
            for name in questions[0]:
                for report in reports:
                    report.setdefault("results", []).append({"question": name, "runs": []})
                for i in range(args.rounds):
                    for e, report, asked in zip(engines, reports, questions, strict=True):
                        runs = report["results"][-1]["runs"]
                        if not runs or "error" not in runs[-1]:
                            runs.append(time_round(asked[name][i], e["source"], e["pid"], log))
                print("  " + name + ": " + "; ".join(
                    f"{r['engine']} " + ", ".join(f"{x['wall']:.0f}" if "wall" in x else "failed"
                                                  for x in r["results"][-1]["runs"]) for r in reports) + " ms", flush=True)
    query_report(reports, args, (load_before, load_timing, os.getloadavg()))


def query_report(reports: list[dict], args, loads) -> None:
    print(f"\n{args.rounds} rounds per question; load average {loads[0][0]:.1f} before loading, {loads[1][0]:.1f} "
          f"before timing, {loads[2][0]:.1f} after ({os.cpu_count()} cores); wall ms min / median / max, CPU ms median "
          "(this process: with chdb, the engine too; the server's)")
    for r in reports:
        print(f"\n{r['engine']}: ClickHouse {r['version']}, {r['schema']} schema: {r['spans']:,} spans ({r['stored']:,} rows "
              f"stored) loaded in {r['load_s']:.1f} s ({r['load_cpu']:.1f} s CPU), {r['bytes'] / r['spans']:.1f} bytes/span on disk "
              f"({r['bytes'] / 2**20:,.0f} MiB, {r['parts']} parts), rollup_minute {r['rollup_rows']:,} rows "
              f"({r['rollup_bytes'] / 2**20:,.1f} MiB)")
        print(f"  {'question':<46}{'wall ms min / med / max':>26}{'CPU ms':>9}{'server CPU':>12}{'rows':>7}")
        for q in r["results"]:
            runs = [x for x in q["runs"] if "wall" in x]
            failed = [x["error"] for x in q["runs"] if "error" in x]
            if not runs:
                print(f"  {q['question']:<46}  failed: {failed[0]}")
                continue
            walls = sorted(x["wall"] for x in runs)
            server = f"{statistics.median(x['server'] for x in runs):.0f}" if r["engine"] != "chdb" else "-"
            print(f"  {q['question']:<46}{f'{walls[0]:.0f} / {statistics.median(walls):.0f} / {walls[-1]:.0f}':>26}"
                  f"{statistics.median(x['cpu'] for x in runs):>9.0f}{server:>12}{runs[-1]['rows']:>7}")
            if failed:
                print(f"      a later round failed: {failed[0]}")
            last = runs[-1]
            for sql, ms, rows in last["statements"] if len(last["statements"]) > 1 else ():
                print(f"      {ms:8.0f} ms {rows:>8} rows  {sql}")
            if isinstance(last["answer"], tuple) and isinstance(last["answer"][-1], dict) and last["answer"][-1]:
                print(f"      left out: {last['answer'][-1]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=120, help="requests of 512 spans per phase")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--batch", type=int, default=8192, help="the batch processor's send_batch_size")
    p.add_argument("--runs", type=int, default=3, help="runs of every phase (interleaved)")
    p.add_argument("--phase", choices=("ingest", "query", "decisions"), default="ingest",
                   help="ingest: spans/s into ClickHouse (default); query: the fleet's questions over --spans; "
                        "decisions: bench/fleet_decisions.py (its options after this one)")
    p.add_argument("--spans", type=int, default=10_000_000, help="--phase query: spans in the fleet store")
    p.add_argument("--rounds", type=int, default=3, help="--phase query: rounds of every question")
    p.add_argument("--engines", default="chdb,server",
                   help="--phase query: chdb (current engine in process), server (Debian's clickhouse-server)")
    args, rest = p.parse_known_args()
    if args.phase == "decisions":
        from bench import fleet_decisions

        sys.argv = [fleet_decisions.__file__, *rest]
        fleet_decisions.main()
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.phase == "query":
        if args.spans < 10 or args.rounds < 1 or not set(args.engines.split(",")) <= {"chdb", "server"}:
            p.error("--spans must be at least 10, --rounds at least 1, --engines a list of chdb and server")
        query_phase(args)
        return
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)  # "Failed to connect" while the server starts

    from agent_sre.exporters.clickhouse.factory import factory
    from agent_sre.pipeline.component import Kind
    from agent_sre.pipeline.component.registry import registry
    from tests.clickhouse_server import clickhouse_server

    if registry.get(Kind.EXPORTER, "clickhouse") is None:
        registry.register(factory)
    # every request different (ClickHouse would rightly not store a re-sent identical batch twice), and later
    # than the one before, as a pipeline's traffic is
    base = time.time_ns()
    bodies = [make_request(512, seed=100 + i, base_ns=base + i * 600_000_000).SerializeToString()
              for i in range(args.requests)]
    phases = (("duckdb", "duckdb"), ("ch-unmerged", "clickhouse"), ("clickhouse", "clickhouse"),
              ("both", "duckdb, clickhouse"))
    results: dict[str, list[dict]] = {name: [] for name, _ in phases}
    with tempfile.TemporaryDirectory() as tmp, clickhouse_server(Path(tmp)) as server:
        version = server.client().execute("SELECT version()")[0][0]
        for run in range(args.runs):
            for name, exporters in phases:
                results[name].append(phase(server, Path(tmp), name, exporters, args, bodies, run))
    report(results, version, args)


def _fmt(runs: list[dict], key: str, spec: str, best=max) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} ({best(values):{spec}})"


def report(results: dict[str, list[dict]], version: str, args) -> None:
    print(f"ClickHouse {version} (compat schema) on loopback, {args.requests} requests x 512 spans per phase, "
          f"{args.clients} clients, batches of {args.batch}, {args.runs} runs: median (best)")
    head = (f"{'phase':<12}{'duckdb spans/s':>18}{'clickhouse spans/s':>20}{'CPU µs/span':>16}"
            f"{'server CPU µs/span':>20}{'inserts':>9}{'convert µs/span':>18}{'send µs/span':>18}")
    print(head)
    for name, runs in results.items():
        inserts = f"{statistics.median(r['inserts'] for r in runs):.0f}" if "inserts" in runs[0] else "-"
        print(f"{name:<12}{_fmt(runs, 'duckdb', ',.0f'):>18}{_fmt(runs, 'clickhouse', ',.0f'):>20}"
              f"{_fmt(runs, 'cpu_us', '.1f', min):>16}{_fmt(runs, 'server_cpu_us', '.1f', min):>20}{inserts:>9}"
              f"{_fmt(runs, 'convert_us', '.2f', min):>18}{_fmt(runs, 'send_us', '.2f', min):>18}")
    print("CPU = this process (receiver, processors, exporters); server CPU = clickhouse-server; send = one "
          "consumer's whole attempt\n(dedup check, convert, network, server insert), 2 consumers in parallel.")


if __name__ == "__main__":
    main()
