"""Decisions benchmark: GET /v1/decisions/{agent_id} latency at a steady request rate.

Starts `agent-sre run` on config/store-only.yaml plus the `cost` processor with a daily
budget and the `incidents` processor (so the decisions board combines both); sends spans of
``--agents`` agents (LLM calls with costs: budget accounts; failing tool calls: open breakers),
then, while a background client keeps sending spans (``--ingest`` spans/s), a local client
(keep-alive connections, one per thread) asks for random agents' decisions at ``--rate``
requests/s for ``--seconds`` and prints p50/p99/max latency
as the client sees it (so it includes HTTP on loopback), and the server's own time per answer from
its histogram ``agent_sre_decisions_answer_seconds`` (the bucket holding the 99th percentile).

    .venv/bin/python bench/decisions.py [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import grpc  # noqa: E402

from bench.agent_spans import make_request  # noqa: E402
from bench.ingest import METHOD, SPANS_PER_REQUEST, start_pipeline, stop_pipeline, store_only_with  # noqa: E402

COST = """  cost:
    budgets:
      - {name: daily, scope: agent_day, limit_usd: 10}
  incidents: {}
"""


def agents_request(agents: int, failing: bool, seed: int = 0) -> object:
    """Spans of ``agents`` agents: per agent an LLM call with a cost and, if ``failing``, 6 failed tool calls."""
    req = make_request(agents * 7, seed=seed, base_ns=time.time_ns())
    for i, sp in enumerate(req.resource_spans[0].scope_spans[0].spans):
        del sp.attributes[:]
        sp.attributes.add(key="agent.did").value.string_value = f"agent-{i // 7}"
        if i % 7 == 0:
            sp.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
            sp.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini"
            sp.attributes.add(key="gen_ai.usage.cost").value.double_value = 0.01
        else:
            sp.attributes.add(key="gen_ai.operation.name").value.string_value = "execute_tool"
            sp.attributes.add(key="gen_ai.tool.name").value.string_value = "search"
            sp.status.code = 2 if failing else 0
    return req


def feed(export, rate: float, stop: threading.Event) -> None:
    """Spans at about ``rate``/s until ``stop``."""
    seed = 1
    while not stop.is_set():
        started = time.monotonic()
        export(make_request(SPANS_PER_REQUEST, seed=seed, base_ns=time.time_ns()).SerializeToString(), timeout=60)
        seed += 1
        stop.wait(max(0.0, SPANS_PER_REQUEST / rate - (time.monotonic() - started)))


def server_p99(metrics_port: int) -> float:
    """The upper bound of the histogram bucket that holds the 99th percentile of answer times."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    buckets = [(float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
               for line in lines if line.startswith("agent_sre_decisions_answer_seconds_bucket")]
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= 0.99 * total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--ingest", type=float, default=5000, help="spans/s sent meanwhile")
    args = ap.parse_args()
    p = start_pipeline(store_only_with(COST, ["cost", "incidents"]))
    stop = threading.Event()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{p['grpc']}")
        export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        export(agents_request(args.agents, failing=True).SerializeToString(), timeout=60)  # accounts, breakers
        feeder = threading.Thread(target=feed, args=(export, args.ingest, stop), daemon=True)
        feeder.start()
        time.sleep(2)  # the first spans committed: budgets charged, breakers open
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        interval = args.threads / args.rate
        deadline = time.monotonic() + args.seconds

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", p["admin"], timeout=10)
            local = []
            next_at = time.monotonic() + k * interval / args.threads
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += interval
                started = time.perf_counter()
                conn.request("GET", f"/v1/decisions/agent-{random.randrange(args.agents)}")
                resp = conn.getresponse()
                resp.read()
                local.append(time.perf_counter() - started)
                if resp.status != 200:
                    errors[0] += 1
            with lock:
                latencies.extend(local)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lat = sorted(latencies)

        def q(fraction: float) -> float:
            return lat[min(len(lat) - 1, int(fraction * len(lat)))] * 1000

        print(f"GET /v1/decisions/agent-N ({args.agents} agents with budgets and breakers, {args.ingest:,.0f} "
              f"spans/s arriving) at {len(lat) / args.seconds:,.0f} requests/s "
              f"(asked {args.rate:,.0f}) for {args.seconds:g}s: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, "
              f"max {lat[-1] * 1000:.2f} ms, {errors[0]} errors", flush=True)
        print(f"server time per answer: p99 <= {server_p99(p['metrics']) * 1000:.3f} ms", flush=True)
    finally:
        stop.set()
        stop_pipeline(p)


if __name__ == "__main__":
    main()
