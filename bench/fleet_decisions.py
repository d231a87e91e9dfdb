"""Fleet decisions benchmark: GET /v1/decisions/{agent_id} with budgets on Redis, and how stale a decision is.

Starts Debian's `redis-server` on loopback (no persistence) and two `agent-sre run` pipelines
(config/store-only.yaml plus `cost` with `state: redis://…` and an org-month and an agent-day budget,
and `incidents`), sends both the spans of ``--agents`` agents, then, while both keep receiving spans
(``--ingest`` spans/s each), asks pipeline one for random agents' decisions at ``--rate`` requests/s for
``--seconds``: the client's p50/p99/max (HTTP on loopback included) and the server's own time per
answer (the bucket of ``agent_sre_decisions_answer_seconds`` holding the 99th percentile).  Then the
staleness: spend that kills an agent is sent to pipeline two, and the time until pipeline one answers
``kill`` is measured (the loader's commit, the push, then one refresh: ``state_refresh`` 250 ms).

    .venv/bin/python bench/fleet_decisions.py [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import grpc  # noqa: E402

from bench.agent_spans import make_request  # noqa: E402
from bench.decisions import agents_request, feed, server_p99  # noqa: E402
from bench.ingest import METHOD, free_port, start_pipeline, stop_pipeline, store_only_with  # noqa: E402

COST = """  cost:
    state: {url}
    state_instance: {name}
    budgets:
      - {{name: org, scope: org_month, limit_usd: 100000}}
      - {{name: daily, scope: agent_day, limit_usd: 10}}
  incidents: {{}}
"""


def start_redis() -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: `make debian-deps` installs Debian's redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tempfile.mkdtemp(prefix="agent-sre-redis-")], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not come up")


def decision(port: int, agent: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/v1/decisions/{agent}")
    return json.loads(conn.getresponse().read())["action"]


def killing_request(agent: str) -> bytes:
    req = make_request(1, seed=99, base_ns=time.time_ns())
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    # Its own identity: with make_request's seeded ids it was the span of the feed's request of the same seed,
    # which the pipeline rightly stores and charges once (a client's re-send), so no kill ever came.
    sp.trace_id, sp.span_id = os.urandom(16), os.urandom(8)
    del sp.attributes[:]
    for key, value in (("agent.did", agent), ("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "gpt-4o-mini")):
        sp.attributes.add(key=key).value.string_value = value
    sp.attributes.add(key="gen_ai.usage.cost").value.double_value = 11.0  # over the agent-day budget at once
    return req.SerializeToString()


def measure(admin: int, agents: int, rate: float, seconds: float, threads: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    interval, deadline = threads / rate, time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        local, next_at = [], time.monotonic() + k * interval / threads
        while (now := time.monotonic()) < deadline:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            started = time.perf_counter()
            conn.request("GET", f"/v1/decisions/agent-{random.randrange(agents)}")
            conn.getresponse().read()
            local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sorted(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--ingest", type=float, default=2000, help="spans/s sent to each pipeline meanwhile")
    args = ap.parse_args()
    redis, port = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    pipes, stop, feeders = [], threading.Event(), []
    try:
        for name in ("one", "two"):
            pipes.append(start_pipeline(store_only_with(COST.format(url=url, name=name), ["cost", "incidents"])))
        exports = []
        for p in pipes:
            channel = grpc.insecure_channel(f"127.0.0.1:{p['grpc']}")
            exports.append(channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None))
            exports[-1](agents_request(args.agents, failing=True).SerializeToString(), timeout=60)
            feeders.append(threading.Thread(target=feed, args=(exports[-1], args.ingest, stop), daemon=True))
            feeders[-1].start()
        time.sleep(2)
        lat = measure(pipes[0]["admin"], args.agents, args.rate, args.seconds, args.threads)

        def q(fraction: float) -> float:
            return lat[min(len(lat) - 1, int(fraction * len(lat)))] * 1000

        print(f"GET /v1/decisions/agent-N on pipeline one of two sharing budgets on Redis ({args.agents} agents, "
              f"{args.ingest:,.0f} spans/s arriving at each) at {len(lat) / args.seconds:,.0f} requests/s: "
              f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {lat[-1] * 1000:.2f} ms", flush=True)
        print(f"server time per answer: p99 <= {server_p99(pipes[0]['metrics']) * 1000:.3f} ms", flush=True)
        stale = []
        for k in range(5):
            agent = f"stale-{k}"
            exports[1](killing_request(agent), timeout=60)  # acknowledged: in pipeline two's spool
            sent = time.perf_counter()
            while decision(pipes[0]["admin"], agent) != "kill":
                time.sleep(0.005)
            stale.append(time.perf_counter() - sent)
        print(f"spend acknowledged by pipeline two -> kill answered by pipeline one: "
              f"{', '.join(f'{s * 1000:.0f}' for s in stale)} ms", flush=True)
    finally:
        stop.set()
        for p in pipes:
            stop_pipeline(p)
        redis.terminate()
        redis.wait(timeout=10)


if __name__ == "__main__":
    main()
