"""Queries over 10M spans in the store (issue #12's query targets), through every way a user runs them.

    .venv/bin/python bench/query10m.py [--dir /tmp/agent-sre-bench] [--rounds 5] [--budget 60]
                                       [--load-seconds 60] [--queries agent_model,attribute,...] [--no-pipeline]
                                       [--grouped]

bench/store10m.py's store (10M spans, built once with the pipeline's row groups and cached) is queried with
the issue's queries, written as a user writes them (the ``spans`` view, ``attributes['k']``,
``quantile_cont``), and one trace the way the product fetches it (``trace_api``: ``GET /v1/traces/{id}``,
``trace show``; see ``TraceLookup``), each ``--rounds`` times (fewer once a query and path have taken ``--budget`` seconds):

1. the engine: DuckDB in this process on the store opened read-only as the CLI opens it (store.open_read_only);
2. ``agent-sre query --db STORE "SQL"`` as a subprocess: wall time including the CLI's start-up, and its CPU;
3. a running pipeline (``agent-sre run``, the embedded default config with retention off, on a copy of the
   store) through ``POST /v1/query``: first idle, then while 2 client processes send OTLP as fast as it takes
   it (bench/ingest.py's clients), with the spans/s committed meanwhile, the pipeline's peak RSS, and every
   refusal (out-of-memory included) counted.

Then ``agent-sre query`` start-up alone (``SELECT 1`` on an empty store, median of 10) and bytes on disk per
span.  Wall times are min / median / p99 (nearest rank) over the rounds; CPU is this process's (engine),
the child's (CLI), or the pipeline's processes' from /proc (API, idle phase only: under load it is the
ingest's).  The box is shared: the load average is printed next to each path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/query10m.py` as well as `-m`

AGENT_SRE = [str(Path(sys.executable).with_name("agent-sre"))]
API_MAX_ROWS = 10_000  # the admin API's default cap (admin extension max_rows)
CLI_MAX_ROWS = 20_000


@dataclass(frozen=True)
class Query:
    name: str
    label: str
    target_s: float
    sql: object  # (rng) -> SQL text: a different trace or agent each round, so no round reads another's cache


def _trace_id(k: int) -> str:
    return hashlib.md5(f"trace-{k}".encode()).hexdigest()  # bench/store10m.py's ids: md5('trace-' || t)


@dataclass(frozen=True)
class TraceLookup:
    """Not SQL: one trace the way the product fetches it — ``GET /v1/traces/{id}`` (API), ``agent-sre trace
    show ID --db`` (CLI), ``trace_spans`` (engine: what both run), which read the store's trace locator
    first and then only the row groups where the trace's spans started.  Delegation links are followed
    (the default of both): the answer is the trace with every trace it delegated to or was delegated from."""
    trace_id: str


QUERIES = [
    Query("agent_model", "agent/model: count, token sums, p99 latency", 1.0, lambda rng: (
        "SELECT agent_id, model, count(*) AS spans, sum(input_tokens) AS input_tokens, "
        "sum(output_tokens) AS output_tokens, quantile_cont(duration_ns, 0.99) / 1e6 AS p99_ms "
        "FROM spans GROUP BY agent_id, model ORDER BY spans DESC")),
    Query("attribute", "group-by of attributes['gen_ai.request.model']", 2.0, lambda rng: (
        "SELECT attributes['gen_ai.request.model'] AS request_model, count(*) AS spans "
        "FROM spans GROUP BY request_model ORDER BY spans DESC")),
    Query("trace", "one trace by id", 0.05, lambda rng: (
        "SELECT span_id, parent_span_id, name, span_role, start_ns, duration_ns, status_code FROM spans "
        f"WHERE trace_id = '{_trace_id(rng.randrange(1_000_000))}' ORDER BY start_ns")),
    Query("trace_api", "one trace by id through the trace API (`GET /v1/traces/{id}`, `trace show`)", 0.05,
          lambda rng: TraceLookup(_trace_id(rng.randrange(1_000_000)))),
    Query("error_rate", "error rate per minute, one agent (7 days)", 0.2, lambda rng: (
        "SELECT date_trunc('minute', make_timestamp(start_ns // 1000)) AS minute, count(*) AS n, "
        "count(*) FILTER (WHERE status_code = 'error') AS errors, errors / n AS error_rate "
        f"FROM spans WHERE agent_id = 'agent-{rng.randrange(10)}' GROUP BY minute ORDER BY minute")),
]
STARTUP_TARGET_S = 0.3


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    load: float = 0.0
    executing: list[float] = field(default_factory=list)  # the API's elapsed_ms: run_query, after the loader wait

    def add(self, wall: float, cpu: float | None, rows: int = 0) -> None:
        self.wall.append(wall)
        if cpu is not None:
            self.cpu.append(cpu)
        self.rows = rows

    def cell(self, target_s: float) -> str:
        if not self.wall:
            return "; ".join(sorted(set(self.errors)))[:120] or "–"
        w = sorted(self.wall)
        p99 = w[min(len(w) - 1, int(0.99 * len(w)))]
        cpu = f", CPU {statistics.median(self.cpu) * 1000:,.0f}" if self.cpu else ""
        if self.executing:
            cpu += f", executing {statistics.median(self.executing):,.0f}"
        met = "met" if statistics.median(w) <= target_s else "**missed**"
        failed = f"; {len(self.errors)} failed: {sorted(set(self.errors))[0][:80]}" if self.errors else ""
        return (f"{w[0] * 1000:,.0f} / **{statistics.median(w) * 1000:,.0f}** / {p99 * 1000:,.0f} ms{cpu} "
                f"({len(w)}×, {met}){failed}")


def load_average() -> float:
    return os.getloadavg()[0]


def rounds_of(queries: list[Query], rounds: int, budget_s: float, run, until: float | None = None,
              grouped: bool = False) -> dict[str, Timing]:
    """``run(sql) -> (wall, cpu, rows)``, round by round over every query (so a load phase spreads over all of
    them; each query then reads after the others evicted what it had cached), or with ``grouped`` every round
    of one query before the next (a user asking one kind of question after another); a query stops once it
    has taken ``budget_s``, every query at ``until`` (time.time())."""
    rngs = {q.name: random.Random(i) for i, q in enumerate(queries)}
    timings = {q.name: Timing(load=load_average()) for q in queries}
    spent = dict.fromkeys(rngs, 0.0)
    order = ([q] * rounds for q in queries) if grouped else (queries for _ in range(rounds))
    for batch in order:
        for q in batch:
            if spent[q.name] >= budget_s or (until is not None and time.time() >= until):
                continue
            try:
                wall, cpu, rows = run(q.sql(rngs[q.name]))
            except RuntimeError as exc:
                timings[q.name].errors.append(str(exc))
                wall = budget_s  # a failure (time limit, out of memory) is not retried for the whole budget
            else:
                timings[q.name].add(wall, cpu, rows)
            timings[q.name].load = load_average()
            spent[q.name] += wall
    return timings


# --- the three paths ---------------------------------------------------------------------------------

def engine_runner(path: Path):
    from agent_sre.pipeline.storage.store import open_read_only
    from agent_sre.processors.replay.traces import trace_spans

    con = open_read_only(path)

    def run(sql: str | TraceLookup) -> tuple[float, float, int]:
        wall, cpu = time.perf_counter(), time.process_time()  # DuckDB's threads are this process's
        if isinstance(sql, TraceLookup):
            rows = trace_spans(lambda q, params: con.execute(q, params).fetchall(), sql.trace_id)
        else:
            rows = con.execute(sql).fetchall()
        return time.perf_counter() - wall, time.process_time() - cpu, len(rows)

    return con, run


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# As installed: Python may cache compiled modules (a box that sets PYTHONDONTWRITEBYTECODE compiles every edited
# module of the CLI at every start, ~100 ms that no installed copy pays).
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cli_runner(path: Path, max_rows: int = CLI_MAX_ROWS):
    def run(sql: str | TraceLookup) -> tuple[float, float, int]:
        if isinstance(sql, TraceLookup):  # no --endpoint answers here (free port): the CLI reads the file
            from bench.ingest import free_port

            cmd = [*AGENT_SRE, "trace", "show", sql.trace_id, "--db", str(path), "--format", "json",
                   "--endpoint", f"127.0.0.1:{free_port()}"]
        else:
            cmd = [*AGENT_SRE, "query", "--db", str(path), "--max-rows", str(max_rows), "--format", "csv", sql]
        cpu = children_cpu()
        wall = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=CLI_ENV)
        wall = time.perf_counter() - wall
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        if isinstance(sql, TraceLookup):
            return wall, children_cpu() - cpu, _spans_in(json.loads(done.stdout))
        return wall, children_cpu() - cpu, max(0, done.stdout.count("\n") - 1)

    return run


def _spans_in(tree: dict) -> int:
    """Spans in a trace answer (``trace show --format json``, ``GET /v1/traces/{id}``): its nodes."""
    count, stack = 0, list(tree.get("roots") or [])
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.get("children") or [])
    return count


def get_trace(admin: int, trace_id: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/v1/traces/{trace_id}", timeout=120) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{exc.code}: {exc.read().decode(errors='replace')[:200]}") from None


def post_query(admin: int, sql: str, max_rows: int = API_MAX_ROWS) -> dict:
    """``POST /v1/query``; an error answer raises RuntimeError("<status>: <error>")."""
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/query", method="POST",
                                 data=json.dumps({"sql": sql, "max_rows": max_rows}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeError(f"{exc.code}: {detail}") from None


def api_runner(admin: int, pid: int | None = None, executing: dict | None = None):
    """POST /v1/query; with ``pid``, the CPU of the pipeline's processes during the call; with ``executing``,
    each answer's elapsed_ms (the query's own run, after the wait for the loader) under its SQL's query name."""
    from bench.ingest import cpu_seconds

    def run(sql: str | TraceLookup) -> tuple[float, float | None, int]:
        cpu = cpu_seconds(pid) if pid else None
        wall = time.perf_counter()
        if isinstance(sql, TraceLookup):
            rows = _spans_in(get_trace(admin, sql.trace_id))
            wall = time.perf_counter() - wall
            return wall, (cpu_seconds(pid) - cpu) if pid and cpu is not None else None, rows
        body = post_query(admin, sql)
        wall = time.perf_counter() - wall
        if executing is not None:
            executing.setdefault(sql, []).append(body.get("elapsed_ms", 0.0))
        return wall, (cpu_seconds(pid) - cpu) if pid and cpu is not None else None, body["row_count"]

    return run


def run_path(name: str, runner, queries: list[Query], rounds: int, budget_s: float,
             until: float | None = None, grouped: bool = False) -> dict[str, Timing]:
    out = rounds_of(queries, rounds, budget_s, runner, until, grouped)
    for q in queries:
        print(f"  {name:<10} {q.name:<12} {out[q.name].cell(q.target_s)}  (load {out[q.name].load:.1f})", flush=True)
    return out


# --- start-up and size ---------------------------------------------------------------------------------

def startup(runs: int = 10) -> Timing:
    """``agent-sre query --db EMPTY "SELECT 1"``: the CLI's start-up with the engine's least work."""
    from agent_sre.pipeline.storage.store import SpanStore

    with tempfile.TemporaryDirectory(prefix="agent-sre-q10m-") as tmp:
        empty = Path(tmp) / "empty.duckdb"
        SpanStore(empty).close()
        run = cli_runner(empty)
        timing = Timing(load=load_average())
        for _ in range(runs):
            timing.add(*run("SELECT 1"))
    return timing


# --- the running pipeline ------------------------------------------------------------------------------

def pipeline_config(memory_limit: str | None = None, threads: int | None = None) -> str:
    """The embedded default, with retention off (the bench spans are from 2026-01 and would be deleted), and
    the store's DuckDB memory limit and threads when given (exporters::duckdb::memory_limit, threads)."""
    from agent_sre.pipeline.service.yaml_source import default_config_text

    text = default_config_text()
    if "    retention: 7d\n" not in text:
        raise SystemExit("the embedded default config changed shape; update bench/query10m.py:pipeline_config")
    store = "    retention: 0s\n"
    if memory_limit:
        store += f"    memory_limit: {memory_limit}\n"
    if threads:
        store += f"    threads: {threads}\n"
    return text.replace("    retention: 7d\n", store)


def wait_quiet(pid: int, limit_s: float = 300.0, step_s: float = 2.0, busy: float = 0.03) -> float:
    """Seconds until the pipeline's processes use under ``busy`` of a core over ``step_s``: after opening a
    store it reads every block once in the background (checksums; at most 10 % of a core, ~1 min over 10M
    spans), which the idle queries would otherwise share the box with."""
    from bench.ingest import cpu_seconds

    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_seconds(pid)
        time.sleep(step_s)
        if cpu_seconds(pid) - before < busy * step_s:
            break
    return time.monotonic() - started


def pipeline_phases(path: Path, queries: list[Query], rounds: int, budget_s: float, load_s: float,
                    clients: int, threads: int, config: str, grouped: bool = False
                    ) -> tuple[dict[str, Timing], dict[str, Timing], dict]:
    data = Path(tempfile.mkdtemp(prefix="agent-sre-q10m-"))
    try:
        copied = time.perf_counter()
        shutil.copyfile(path, data / "spans.duckdb")
        shutil.copyfile(path.with_name(path.name + ".created"), data / "spans.duckdb.created")
        print(f"  store copied in {time.perf_counter() - copied:.1f}s", flush=True)
        return _pipeline_phases(data, queries, rounds, budget_s, load_s, clients, threads, config, grouped)
    finally:
        shutil.rmtree(data, ignore_errors=True)  # the copy and what the pipeline spooled (GBs)


def _pipeline_phases(data: Path, queries: list[Query], rounds: int, budget_s: float, load_s: float,
                     clients: int, threads: int, config: str, grouped: bool = False
                    ) -> tuple[dict[str, Timing], dict[str, Timing], dict]:
    from bench.ingest import RssSampler, _client, count_spans, pipeline_metrics, start_pipeline, stop_pipeline

    started = time.perf_counter()
    p = start_pipeline(config, extra_env={"AGENT_SRE_DATA": str(data)})
    print(f"  pipeline started in {time.perf_counter() - started:.1f}s (log: {p['data']}/pipeline.log)", flush=True)
    pid = p["server"].pid
    quiet = wait_quiet(pid)
    print(f"  pipeline quiet after {quiet:.0f}s (the store's background read of every block after opening)", flush=True)
    sampler = RssSampler(pid)
    sampler.start()
    load: dict = {}
    try:
        idle = run_path("API idle", api_runner(p["admin"], pid), queries, rounds, budget_s, grouped=grouped)
        load["peak_rss_idle_mib"] = sampler.peak_total / 2**20
        before = count_spans(p["admin"])
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_client, args=("grpc", p["grpc"], load_s, threads, 0.0, c, out))
                 for c in range(clients)]
        load_started = time.time()
        for proc in procs:
            proc.start()
        time.sleep(3)  # the clients spawn, build their requests and start sending
        # Rounds while the clients send only (they stop load_s after they are ready, ~2 s after spawning).
        executing: dict[str, list[float]] = {}
        loaded = rounds_of(queries, rounds, budget_s, api_runner(p["admin"], executing=executing),
                           until=load_started + load_s)
        for q in queries:  # which SQL was which query: the same generator, the same seeds
            rng = random.Random(queries.index(q))
            sqls = {q.sql(rng) for _ in range(rounds)}
            loaded[q.name].executing = [ms for sql in sqls for ms in executing.get(sql, [])]
            print(f"  {'API load':<10} {q.name:<12} {loaded[q.name].cell(q.target_s)}  (load {loaded[q.name].load:.1f})",
                  flush=True)
        results = [out.get(timeout=load_s + 300) for _ in procs]
        for proc in procs:
            proc.join()
        load.update(acked=sum(r["acked"] for r in results), client_errors=sum(r["errors"] for r in results),
                    peak_rss_mib=sampler.peak_total / 2**20, peak_pss_mib=sampler.peak_pss / 2**20)
        prefix = "agent_sre_receiver_refused_spans_total{"  # why the receivers refused what they refused
        load["refused"] = {k[len(prefix):-1]: v for k, v in pipeline_metrics(p["metrics"]).items()
                           if k.startswith(prefix) and v}
        try:  # the API waits for the loader: a loader that stopped inserting never answers
            committed = count_spans(p["admin"], patience_s=180) - before
            load["committed_per_s"] = committed / (time.time() - min(r["first"] for r in results))
        except (RuntimeError, OSError) as exc:
            load["committed_per_s"] = float("nan")
            load["stuck"] = f"the store did not catch up within 180 s after the load ({exc})"
    finally:
        sampler.stop()
        stop_pipeline(p, keep=True)
    log = (Path(p["data"]) / "pipeline.log").read_text(errors="replace")
    load["oom_in_log"] = log.count("Out of Memory")
    load["loader_died"] = "Exception in thread span-store-loader" in log
    shutil.rmtree(p["data"], ignore_errors=True)
    return idle, loaded, load


# --- the report ----------------------------------------------------------------------------------------

def print_table(queries: list[Query], paths: dict[str, dict[str, Timing]], start: Timing | None, size: dict) -> None:
    names = list(paths)
    print("\nwall min / **median** / p99 (rounds, target), CPU median")
    print(f"\n| query | target | {' | '.join(names)} |\n|---|---|{'---|' * len(names)}")
    for q in queries:
        cells = [paths[n][q.name].cell(q.target_s) if q.name in paths[n] else "–" for n in names]
        print(f"| {q.label} | ≤ {q.target_s * 1000:,.0f} ms | {' | '.join(cells)} |")
    pad = " |" * max(0, len(names) - 1)
    if start is not None:
        print(f"| `agent-sre query` start-up (`SELECT 1`, empty store) | ≤ {STARTUP_TARGET_S * 1000:.0f} ms | "
              f"{start.cell(STARTUP_TARGET_S)} |{pad}")
    print(f"| bytes on disk per span | reported | {size['bytes_per_span']} B ({size['bytes'] / 2**20:,.0f} MiB, "
          f"{size['spans']:,} spans) |{pad}")
    print("\nload average while measured: " + ", ".join(
        f"{n} {statistics.mean(t.load for t in paths[n].values()):.1f}" for n in names if paths[n]))


def main() -> None:
    from bench.store10m import DEFAULT_DIR, build, describe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per query and path before rounds stop")
    ap.add_argument("--queries", default=",".join(q.name for q in QUERIES))
    ap.add_argument("--paths", default="engine,cli,api", help="engine, cli, startup, api (idle and under load)")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="length of the ingest load")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4, help="senders per client process")
    ap.add_argument("--store-memory", help="the pipeline store's memory_limit (default: the embedded default's)")
    ap.add_argument("--store-threads", type=int, help="the pipeline store's DuckDB threads (default: the default's)")
    ap.add_argument("--grouped", action="store_true",
                    help="idle phases: every round of one query before the next (default: round by round)")
    args = ap.parse_args()
    wanted = set(args.queries.split(","))
    queries = [q for q in QUERIES if q.name in wanted]
    path = build(args.dir, 10_000_000)
    size = describe(path)
    print(f"{size['spans']:,} spans in {size['traces']:,} traces, {size['bytes'] / 2**20:,.0f} MiB "
          f"({size['bytes_per_span']} bytes/span); {os.cpu_count()} cores, load {load_average():.1f}", flush=True)
    paths: dict[str, dict[str, Timing]] = {}
    chosen = args.paths.split(",")
    if "engine" in chosen:
        con, run = engine_runner(path)
        try:
            paths["engine (DuckDB, read-only)"] = run_path("engine", run, queries, args.rounds, args.budget,
                                                           grouped=args.grouped)
        finally:
            con.close()
    if "cli" in chosen:
        paths["`agent-sre query --db`"] = run_path("CLI", cli_runner(path), queries, args.rounds, args.budget,
                                                   grouped=args.grouped)
    start = None
    if "startup" in chosen or "cli" in chosen:
        start = startup()
        print(f"  start-up   {start.cell(STARTUP_TARGET_S)}  (load {start.load:.1f})", flush=True)
    if "api" in chosen:
        config = pipeline_config(args.store_memory, args.store_threads)
        idle, loaded, load = pipeline_phases(path, queries, args.rounds, args.budget, args.load_seconds,
                                             args.clients, args.threads, config, args.grouped)
        store = ", ".join(f"{k} {v}" for k, v in (("memory_limit", args.store_memory),
                                                    ("threads", args.store_threads)) if v) or "default store settings"
        paths[f"`POST /v1/query`, idle ({store})"] = idle
        paths[f"`POST /v1/query` under ingest ({load['committed_per_s']:,.0f} spans/s committed)"] = loaded
        print(f"  ingest during the queries: {load['committed_per_s']:,.0f} spans/s committed, "
              f"{load['client_errors']} failed export calls (spans refused: "
              f"{', '.join(f'{k} {v:,.0f}' for k, v in load.get('refused', {}).items()) or 'none'}); pipeline peak RSS {load['peak_rss_idle_mib']:.0f} MiB "
              f"idle, {load['peak_rss_mib']:.0f} MiB in all (PSS {load['peak_pss_mib']:.0f} MiB); "
              f"'Out of Memory' in its log: {load['oom_in_log']}; its span-store-loader thread died: "
              f"{load['loader_died']}" + (f"; {load['stuck']}" if "stuck" in load else ""), flush=True)
    print_table(queries, paths, start, size)


if __name__ == "__main__":
    main()
