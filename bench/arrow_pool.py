"""Arrow's C++ allocations through malloc or mimalloc: the pipeline's memory and CPU at max rate, side by side.

`agent-sre run` sets ``ARROW_DEFAULT_MEMORY_POOL=system`` before pyarrow is imported, so Arrow's C++ code
(compute kernels, IPC reads) allocates through malloc like pyarrow's own calls.  The other arm imports
pyarrow first (a ``sitecustomize`` on ``PYTHONPATH``), which leaves the C++ default on Arrow's bundled
mimalloc while pyarrow's calls still use malloc: what the pipeline did before.  Both run the embedded
default (the full SRE loop, ``workers: 0``), one gRPC max-rate phase each (bench/ingest.py's clients and
figures), interleaved for ``--rounds`` rounds; printed per round and as medians: committed spans/s, CPU
per committed span, and the peak PSS of the pipeline.

    .venv/bin/python bench/arrow_pool.py [--rounds 6] [--seconds 20] [--clients 2] [--threads 4]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import calibrate, phase_args, run_phase, start_pipeline, stop_pipeline  # noqa: E402

ARMS = ("system (now)", "C++ on mimalloc (before)")


def main() -> None:
    args = phase_args(__doc__, **{"--rounds": {"type": int, "default": 6}})
    site = tempfile.mkdtemp(prefix="agent-sre-arrow-pool-")
    Path(site, "sitecustomize.py").write_text("import pyarrow  # before agent-sre sets ARROW_DEFAULT_MEMORY_POOL\n")
    rows: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    try:
        for r in range(args.rounds):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                parse_us = calibrate(args.clients)
                p = start_pipeline(extra_env={"PYTHONPATH": site} if arm != ARMS[0] else None)
                try:
                    rows[arm].append(run_phase(f"round {r + 1}, {arm}", "grpc", p["grpc"], p["admin"],
                                               p["server"].pid, args.seconds, args.clients, args.threads,
                                               p["metrics"], parse_us=parse_us))
                finally:
                    stop_pipeline(p)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    print("\n| Arrow's C++ allocations | committed spans/s, each round | median | CPU µs/span, median | peak PSS |\n"
          "|---|---|---|---|---|")
    for arm, got in rows.items():
        rates = [g["committed_spans_per_s"] for g in got]
        pss = [g["peak_pss_total_mib"] for g in got]
        print(f"| {arm} | {' · '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} | "
              f"{statistics.median(g['cpu_us_per_span'] for g in got):.1f} | {min(pss):.0f}–{max(pss):.0f} MiB |")


if __name__ == "__main__":
    main()
