"""Closed-loop benchmark: what the `cost` + `anomaly` + `incidents` stages cost per span.

Runs `agent-sre run` twice on the same load (bench/agent_spans.py: 10 agents, 2 % failed spans, so
the breakers do open and incidents do open — the slow paths run, not only the fast ones):

  1. config/store-only.yaml;
  2. config/store-only.yaml plus `cost` (a daily budget per agent and a monthly one for the org),
     `anomaly` (all four series, evaluated every 5 s) and `incidents` (breakers on tool and LLM
     spans);

and prints the committed spans/s of each (gRPC at max rate, 2 client processes x 4 senders) and the
difference per span.  /v1/decisions latency under load is bench/decisions.py.

    .venv/bin/python bench/loop.py [--seconds 20]
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import (  # noqa: E402
    CONFIG,
    phase_args,
    run_phase,
    start_pipeline,
    stop_pipeline,
    store_only_with,
)

LOOP_STAGES = """  cost:
    budgets:
      - {name: daily, scope: agent_day, limit_usd: 1000000}
      - {name: monthly, scope: org_month, limit_usd: 100000000}
  anomaly:
    interval: 5s
  incidents: {}
"""


def main() -> None:
    args = phase_args(__doc__)
    results = {}
    for name, config in (("without (store-only)", (CONFIG / "store-only.yaml").read_text()),
                         ("with cost + anomaly + incidents", store_only_with(LOOP_STAGES,
                                                                                 ["cost", "anomaly", "incidents"]))):
        p = start_pipeline(config)
        try:
            common = (p["admin"], p["server"].pid, args.seconds, args.clients, args.threads, p["metrics"])
            results[name] = run_phase(f"gRPC max rate, {name}", "grpc", p["grpc"], *common)["committed_spans_per_s"]
            if name.startswith("with "):  # the loop's own state under load
                with urllib.request.urlopen(f"http://127.0.0.1:{p['admin']}/v1/incidents?all=true", timeout=30) as r:
                    incidents = json.loads(r.read())["incidents"]
                with urllib.request.urlopen(f"http://127.0.0.1:{p['admin']}/v1/decisions", timeout=30) as r:
                    decisions = json.loads(r.read())["decisions"]
                print(f"  while loaded: {len(incidents)} incidents opened, "
                      f"{sum(d['action'] != 'allow' for d in decisions)} agents with a decision other than allow",
                      flush=True)
        finally:
            stop_pipeline(p)
    base, loop = results.values()
    print(f"cost + anomaly + incidents: {base:,.0f} -> {loop:,.0f} committed spans/s ({(loop - base) / base:+.1%}); "
          f"{1e6 / loop - 1e6 / base:+.2f} us per span of the 2 cores", flush=True)


if __name__ == "__main__":
    main()
