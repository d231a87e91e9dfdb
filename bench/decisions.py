"""Decisions benchmark: GET /v1/decisions/{agent_id} latency at a steady request rate.

Starts `agent-sre run` on the embedded default config plus the `cost` processor with a daily
budget and the `incidents` processor (so the decisions board combines both), then a local client (keep-alive connections, one per thread) asks for
that agent's decision at ``--rate`` requests/s for ``--seconds`` and prints p50/p99/max latency
as the client sees it (so it includes HTTP on loopback), and the server's own time per answer from
its histogram ``agent_sre_decisions_answer_seconds`` (the bucket holding the 99th percentile).

    .venv/bin/python bench/decisions.py [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import default_config_with, start_pipeline, stop_pipeline  # noqa: E402

COST = """  cost:
    budgets:
      - {name: daily, scope: agent_day, limit_usd: 10}
  incidents: {}
"""


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
    args = ap.parse_args()
    p = start_pipeline(default_config_with(COST, ["cost", "incidents"]))
    try:
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
                conn.request("GET", "/v1/decisions/agent-1")
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

        print(f"GET /v1/decisions/agent-1 at {len(lat) / args.seconds:,.0f} requests/s "
              f"(asked {args.rate:,.0f}) for {args.seconds:g}s: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, "
              f"max {lat[-1] * 1000:.2f} ms, {errors[0]} errors", flush=True)
        print(f"server time per answer: p99 <= {server_p99(p['metrics']) * 1000:.3f} ms", flush=True)
    finally:
        stop_pipeline(p)


if __name__ == "__main__":
    main()
