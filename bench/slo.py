"""SLO benchmark: how fast a burn becomes an alert on the embedded default (the full SRE loop).

Steady good traffic from 10 agents (bench/agent_spans.py), then every tool call fails from t0 on;
the time until the page (14.4x over 1h and 5m, objective `tool-accuracy`) shows in the prometheus
exporter's `agent_sre_slo_alert_firing`.  The condition holds as soon as the first failing batch is
committed (a 1h window of a few seconds of good traffic and then only failures burns far above
14.4x), so the figure is the pipeline's own delay: spool -> loader commit -> evaluation (after
every commit, at most once a second; windows hold the minute in progress) -> scrape.  Each trial
starts a fresh pipeline (an alert fires once).

    .venv/bin/python bench/slo.py [--trials 10] [--warmup 3]
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


def firing(port: int, slo: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return any(line.startswith("agent_sre_slo_alert_firing") and f'slo="{slo}"' in line and "page:14.4x" in line
               for line in text.splitlines())


def time_to_alert(p: dict, prom_port: int, warmup_s: float) -> dict:
    channel = grpc.insecure_channel(f"127.0.0.1:{p['grpc']}")
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    bad_from = [0.0]
    stop = threading.Event()

    def send() -> None:
        seed = 0
        while not stop.is_set():
            req = make_request(SPANS_PER_REQUEST, seed=seed, base_ns=time.time_ns())
            failing = bool(bad_from[0]) and time.time() >= bad_from[0]
            for sp in req.resource_spans[0].scope_spans[0].spans:
                sp.status.code = 2 if failing else 0  # all good before t0; every span fails from t0
            call(req.SerializeToString(), timeout=30)
            seed += 1
            stop.wait(0.25)  # ~2k spans/s

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(warmup_s)
    t0 = time.time()
    bad_from[0] = t0
    while not firing(prom_port, "tool-accuracy"):
        if time.time() - t0 > 180:
            raise SystemExit("no alert within 180 s")
        time.sleep(0.1)
    t_alert = time.time()
    stop.set()
    sender.join(timeout=30)
    return {"t0_second_of_minute": t0 % 60, "to_alert_s": t_alert - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of good traffic before the failures")
    args = ap.parse_args()
    delays = []
    for _ in range(args.trials):
        p = start_pipeline()
        try:
            alert = time_to_alert(p, p["prometheus"], warmup_s=args.warmup)
        finally:
            stop_pipeline(p)
        delays.append(alert["to_alert_s"])
        print(f"alert after {alert['to_alert_s']:.2f} s (first failing span at second "
              f"{alert['t0_second_of_minute']:.1f} of its minute)", flush=True)
    delays.sort()
    print(f"time from the first failing span to the page, {len(delays)} trials: min {delays[0]:.2f} s, median "
          f"{delays[len(delays) // 2]:.2f} s, p99 {delays[min(len(delays) - 1, int(0.99 * len(delays)))]:.2f} s, "
          f"max {delays[-1]:.2f} s", flush=True)


if __name__ == "__main__":
    main()
