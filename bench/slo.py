"""SLO benchmark: what the `sli` + `slo` stages cost per span, and how fast a burn becomes an alert.

With 10 agents (bench/agent_spans.py) and 5 objectives (one per built-in SLI, evaluated per agent,
so 50 SLO rows every second), on the embedded default config plus `sli`, `slo` and the `prometheus`
exporter:

  1. gRPC at max rate without the SLO stages (the embedded default) and with them: committed spans/s;
  2. time to alert: steady good traffic, then every tool call fails from t0 on; the time until the
     page (14.4x over 1h and 5m) shows in the prometheus exporter's `agent_sre_slo_alert_firing`.
     SLIs are per-minute rollups and windows hold whole minutes, so the alert can only fire once
     the minute holding the first bad span has ended: the script prints that wait and the rest
     (the pipeline's own latency) separately.

    .venv/bin/python bench/slo.py [--seconds 20]
"""

from __future__ import annotations

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
    default_config_with,
    free_port,
    phase_args,
    run_phase,
    start_pipeline,
    stop_pipeline,
)

SLO_STAGES = """  sli: {}
  slo:
    interval: 1s
    objectives:
      - {name: tasks, sli: task_success_rate, target: 0.99}
      - {name: tools, sli: tool_call_accuracy, target: 0.999}
      - {name: latency, sli: response_latency, target: 0.99}
      - {name: policies, sli: policy_compliance, target: 0.999}
      - {name: hallucinations, sli: hallucination_rate, target: 0.99}
"""


def slo_config() -> str:
    text = default_config_with(SLO_STAGES, ["sli", "slo"])
    text = text.replace("exporters: [duckdb]", "exporters: [duckdb, prometheus]", 1)  # the traces pipeline
    text = text.replace("\nextensions:", "\n  prometheus:\n    endpoint: ${env:AGENT_SRE_PROM_ENDPOINT}\n\nextensions:", 1)
    assert "prometheus]" in text, "config/default.yaml changed shape"
    return text


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
    while not firing(prom_port, "tools"):
        if time.time() - t0 > 180:
            raise SystemExit("no alert within 180 s")
        time.sleep(0.1)
    t_alert = time.time()
    stop.set()
    sender.join(timeout=30)
    minute_end = (int(t0 // 60) + 1) * 60
    return {"t0_second_of_minute": t0 % 60, "to_alert_s": t_alert - t0,
            "waiting_for_the_minute_s": minute_end - t0, "after_the_minute_s": t_alert - minute_end}


def main() -> None:
    args = phase_args(__doc__)
    results = {}
    for name, config in (("without sli/slo (embedded default)", None), ("with sli + slo + prometheus", slo_config())):
        p = start_pipeline(config, extra_env={"AGENT_SRE_PROM_ENDPOINT": f"127.0.0.1:{free_port()}"})
        try:
            common = (p["admin"], p["server"].pid, args.seconds, args.clients, args.threads, p["metrics"])
            results[name] = run_phase(f"gRPC max rate, {name}", "grpc", p["grpc"], *common)["committed_spans_per_s"]
        finally:
            stop_pipeline(p)
    base, slo = results.values()
    print(f"SLO stages cost: {base:,.0f} -> {slo:,.0f} committed spans/s ({(slo - base) / base:+.1%}); "
          f"{1e6 / slo - 1e6 / base:+.2f} us per span of the 2 cores", flush=True)
    # A fresh store: the max-rate phase's random failures must not be in the windows.
    prom_port = free_port()
    p = start_pipeline(slo_config(), extra_env={"AGENT_SRE_PROM_ENDPOINT": f"127.0.0.1:{prom_port}"})
    try:
        alert = time_to_alert(p, prom_port, warmup_s=10)
    finally:
        stop_pipeline(p)
    print(f"time to alert (tools, page 14.4x/1h+5m): {alert['to_alert_s']:.1f} s after the first bad span at "
          f"second {alert['t0_second_of_minute']:.1f} of its minute = {alert['waiting_for_the_minute_s']:.1f} s "
          f"until that minute ended + {alert['after_the_minute_s']:.1f} s of pipeline latency", flush=True)


if __name__ == "__main__":
    main()
