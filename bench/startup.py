"""Cold start: from `agent-sre run` (a new process, a new data directory) to the health check
answering 200, on the embedded default (the full SRE loop) and on config/store-only.yaml,
interleaved.  Python's start, the imports, the store's creation and every component's start are
all inside the figure.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import CONFIG, start_pipeline, stop_pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    configs = [("default (full SRE loop)", None), ("store-only", (CONFIG / "store-only.yaml").read_text())]
    times: dict[str, list[float]] = {label: [] for label, _ in configs}
    for _ in range(args.runs):
        for label, config in configs:
            started = time.monotonic()
            p = start_pipeline(config, poll=0.01)
            times[label].append(time.monotonic() - started)
            stop_pipeline(p)
    for label, values in times.items():
        values.sort()
        print(f"{label:<24} cold start to healthy, {len(values)} runs: min {values[0]:.2f} s, median "
              f"{values[len(values) // 2]:.2f} s, max {values[-1]:.2f} s", flush=True)


if __name__ == "__main__":
    main()
