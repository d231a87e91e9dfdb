"""SLO benchmark: how fast a burn becomes an alert on the embedded default (the full SRE loop).

Steady good traffic from 10 agents (bench/agent_spans.py, ~2k spans/s, all along); after ``--warmup``
seconds, a burst of ``--bad-requests`` requests whose spans all fail.  The page (14.4x over 1h and 5m,
objective `tool-accuracy`) holds as soon as the burst is committed (a 1h window of a few seconds of
good traffic and then that burst burns far above 14.4x).  The figure is the time from the last
failing request's acknowledgement (the spool holds it) to the page showing in the prometheus
exporter's ``agent_sre_slo_alert_firing``, polled every 10 ms: the spool's insert (``flush_interval``),
the evaluation after that commit (at most once per ``min_interval``, windows hold the minute in
progress) and the exposition.  A span is committed after it is acknowledged, so this bounds the time
from the commit to the page from above.  Each trial starts a fresh pipeline (an alert fires once).

    .venv/bin/python bench/slo.py [--trials 10] [--warmup 3] [--bad-requests 4]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_spans import make_request  # noqa: E402
from bench.ingest import (  # noqa: E402
    METHOD,
    SPANS_PER_REQUEST,
    start_pipeline,
    stop_pipeline,
)


def _metrics(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode().splitlines()


def firing(port: int, slo: str) -> bool:
    return any(line.startswith("agent_sre_slo_alert_firing") and f'slo="{slo}"' in line and "page:14.4x" in line
               for line in _metrics(port))


def _until(check, what: str, limit_s: float = 180.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit_s:
            raise SystemExit(f"no {what} within {limit_s:g} s")
        time.sleep(0.01)
    return time.monotonic()


def time_to_alert(p: dict, warmup_s: float, bad_requests: int) -> float:
    channel = grpc.insecure_channel(f"127.0.0.1:{p['grpc']}")
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    def request(seed: int, failing: bool) -> bytes:
        req = make_request(SPANS_PER_REQUEST, seed=seed, base_ns=time.time_ns())
        for sp in req.resource_spans[0].scope_spans[0].spans:
            sp.status.code = 2 if failing else 0
        return req.SerializeToString()

    stop = threading.Event()

    def good_traffic() -> None:  # ~2k good spans/s, before, during and after the failures
        seed = 0
        while not stop.is_set():
            call(request(seed, False), timeout=30)
            seed += 1
            stop.wait(0.25)

    sender = threading.Thread(target=good_traffic, daemon=True)
    sender.start()
    time.sleep(warmup_s)
    for i in range(bad_requests):
        call(request(1_000_000 + i, True), timeout=30)
    acked = time.monotonic()
    paged = _until(lambda: firing(p["prometheus"], "tool-accuracy"), "page")
    stop.set()
    sender.join(timeout=30)
    channel.close()
    return paged - acked


def _summary(values: list[float]) -> str:
    v = sorted(values)
    return (f"min {v[0]:.2f} s, median {v[len(v) // 2]:.2f} s, p99 {v[min(len(v) - 1, int(0.99 * len(v)))]:.2f} s, "
            f"max {v[-1]:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of good traffic before the failures")
    ap.add_argument("--bad-requests", type=int, default=4, help=f"failing requests of {SPANS_PER_REQUEST} spans")
    args = ap.parse_args()
    delays = []
    for _ in range(args.trials):
        p = start_pipeline()
        try:
            delays.append(time_to_alert(p, args.warmup, args.bad_requests))
        finally:
            stop_pipeline(p)
        print(f"paged {delays[-1]:.2f} s after the failures were acknowledged", flush=True)
    print(f"acknowledged -> paged, {len(delays)} trials: {_summary(delays)}", flush=True)


if __name__ == "__main__":
    main()
