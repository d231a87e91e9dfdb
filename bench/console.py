"""The console's fleet overview against a 10M-span store with 100 agents (issue 17: <= 200 ms).

    .venv/bin/python bench/console.py [--dir /tmp/agent-sre-bench] [--runs 30]

bench/store10m.py's store (10M spans, 10 agents, 7 days) is copied, and its rollups are filled the way the
insert transaction fills them, with each agent split in ten (agent_id || '-' || trace hash % 10: 100 agents)
and times moved so its last minute is now.  A pipeline with the default SRE processors and the console
opens the copy, one span per agent is sent so every agent is live in memory, and GET /ui is timed."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/console.py` as well as `-m`


def prepare(src: Path, dst: Path) -> None:
    import duckdb

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst / "spans.duckdb")
    shutil.copyfile(src.with_name(src.name + ".created"), dst / "spans.duckdb.created")
    con = duckdb.connect(str(dst / "spans.duckdb"))
    shift = con.execute("SELECT ? - max(end_ns) // 60000000000 FROM span_rows", [int(time.time() // 60)]).fetchone()[0]
    agent = "agent_id || '-' || (hash(trace_id) % 10)"
    minute = f"end_ns // 60000000000 + {shift}"
    con.execute(f"INSERT INTO agent_minutes (minute, agent_id, spans, errors, llm_calls, tokens, tasks, task_duration_ns) "
                f"SELECT {minute}, {agent}, count(*), count(*) FILTER (WHERE status_code = 'error'), "
                "count(*) FILTER (WHERE span_role = 'llm'), coalesce(sum(input_tokens + output_tokens), 0), "
                "count(*) FILTER (WHERE span_role = 'agent_task'), coalesce(sum(duration_ns) FILTER (WHERE span_role = 'agent_task'), 0) "
                "FROM span_rows GROUP BY ALL ORDER BY 1")
    con.execute(f"INSERT INTO cost_minutes SELECT {minute}, {agent}, coalesce(model, ''), '', sum(cost_usd), count(*) "
                "FROM span_rows WHERE cost_usd IS NOT NULL GROUP BY ALL ORDER BY 1")
    con.execute(f"INSERT INTO sli_minutes SELECT {minute}, 'task_success_rate', {agent}, coalesce(agent_version, ''), "
                "count(*) FILTER (WHERE status_code <> 'error'), count(*) FROM span_rows WHERE span_role = 'agent_task' GROUP BY ALL ORDER BY 1")
    con.close()


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by thread name (/proc/self/task)."""
    import os
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid)) or f"(native) {comm}"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def idle_cpu(seconds: float) -> None:
    """The pipeline's CPU while nobody asks anything, in total and per thread (DuckDB's own threads are
    native ones: counted by their name, together)."""
    before, wall, cpu = thread_cpu(), time.perf_counter(), time.process_time()
    time.sleep(seconds)
    after, wall, cpu = thread_cpu(), time.perf_counter() - wall, time.process_time() - cpu
    per_thread(f"pipeline process CPU while nobody asks anything: {cpu / wall * 100:.1f}% of a core over {wall:.0f}s",
               before, after, wall, cpu)


def per_thread(title: str, before: dict[str, float], after: dict[str, float], wall: float, cpu: float) -> None:
    """Each thread's share of a core over ``wall`` seconds; what threads that ended meanwhile used (e.g.
    span-store-verify finishing its pass) is the process's ``cpu`` the live ones do not account for."""
    print(title)
    used = {n: after[n] - before.get(n, 0.0) for n in after}
    for name, seconds in sorted(used.items(), key=lambda x: -x[1]):
        if seconds > 0:
            print(f"  {seconds / wall * 100:5.1f}% of a core  {name}")
    ended = cpu - sum(max(s, 0.0) for s in used.values())
    if ended > 0.01 * wall:
        print(f"  {ended / wall * 100:5.1f}% of a core  (threads that ended meanwhile)")


def page_work(service, runs: int) -> None:
    """The overview's own work (reads and rows, no HTTP), in this thread: wall and this thread's CPU
    (DuckDB's own threads excluded; on a shared box the CPU figure is the steadier one)."""
    (console,) = service.components_of("console")
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.thread_time()
        console.overview_rows()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.thread_time() - cpu) * 1000)
    print(f"overview rows in-process: wall median {statistics.median(walls):.1f} ms (min {min(walls):.1f}), "
          f"CPU median {statistics.median(cpus):.1f} ms (min {min(cpus):.1f}) over {runs} runs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/agent-sre-bench")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured after the requests")
    args = parser.parse_args()
    from agent_sre.pipeline.service.config import parse_config
    from agent_sre.pipeline.service.graph import Service
    from bench.store10m import build
    from tests.conftest import Ports
    from tests.otlp_builders import request

    build(args.dir, 10_000_000)  # cached after the first run
    work = Path(args.dir) / "console"
    started = time.perf_counter()
    prepare(Path(args.dir) / "store10m.duckdb", work)
    print(f"store copied and rollups filled in {time.perf_counter() - started:.1f}s")
    p = Ports.allocate()
    text = f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{p.grpc}}}}}}}}}
processors:
  memory_limiter: {{check_interval: 1s, limit_mib: 4096, spike_limit_mib: 256}}
  batch: {{timeout: 5ms}}
  cost: {{budgets: [{{name: agent-daily, scope: agent_day, limit_usd: 100}}]}}
  sli: {{}}
  slo: {{objectives: [{{name: task-success, sli: task_success_rate, target: 0.995, window: 30d}}]}}
  incidents: {{breakers: {{roles: [tool, llm]}}}}
exporters: {{duckdb: {{path: {work}/spans.duckdb}}}}
extensions:
  admin: {{endpoint: 127.0.0.1:{p.admin}}}
  console: {{endpoint: 127.0.0.1:{p.admin}}}
service:
  extensions: [admin, console]
  pipelines: {{traces: {{receivers: [otlp], processors: [memory_limiter, batch, cost, sli, slo, incidents], exporters: [duckdb]}}}}
  telemetry: {{metrics: {{address: 127.0.0.1:{p.metrics}}}}}
"""
    service = Service(parse_config(text, "bench"))
    started = time.perf_counter()
    service.start()
    print(f"pipeline started in {time.perf_counter() - started:.1f}s")
    try:
        agents = [a for (a,) in service.exporters["duckdb"].store.read("SELECT DISTINCT agent_id FROM agent_minutes", [])]
        for a in agents:  # one live span each, so every agent is in the processors' memory now
            service.receivers[0].ingest.export(request(1, attrs={"gen_ai.agent.id": a}, start_ns=time.time_ns()), "bench")
        deadline = time.time() + 120
        url = f"http://127.0.0.1:{p.admin}/ui"
        while time.time() < deadline:
            with urllib.request.urlopen(url, timeout=60) as r:
                page = r.read().decode()
            if page.count("<tr data-agent=") >= len(agents):
                break
            time.sleep(1)
        shown = page.count("<tr data-agent=")
        times = []
        during = thread_cpu(), time.perf_counter(), time.process_time()
        for _ in range(args.runs):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as r:
                r.read()
            times.append((time.perf_counter() - t0) * 1000)
        after = thread_cpu()
        per_thread("CPU per thread while the requests were timed (the bench's client is MainThread)", during[0],
                   after, time.perf_counter() - during[1], time.process_time() - during[2])
        serving = sum(after[n] - during[0].get(n, 0.0) for n in after if n.startswith(("console", "agent-sre-http")))
        print(f"CPU per request (console workers and the HTTP loop): {serving / args.runs * 1000:.1f} ms")
        page_work(service, args.runs)
        idle_cpu(args.idle)
        spans = service.exporters["duckdb"].store.read("SELECT count(*) FROM span_rows", [])[0][0]
        times.sort()
        print(f"GET /ui: {shown} agents, {spans:,} spans stored: median {statistics.median(times):.1f} ms, "
              f"p95 {times[int(len(times) * 0.95) - 1]:.1f} ms, max {times[-1]:.1f} ms over {args.runs} runs")
    finally:
        service.shutdown()


if __name__ == "__main__":
    main()
