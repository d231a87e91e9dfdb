"""How long the batch flusher holds an acknowledgement: an in-process pipeline fed paced batches, the
time of each flush (every processor and exporter after the ``batch`` processor, the spool's fsync
included) and the collector's pauses, under the process settings `agent-sre run` chooses against
Python's defaults, interleaved in one run.

An export is acknowledged when its batch's flush returns, so a flush's time is what an export waits
beyond the batch timeout and the receiver.  The threads beside the flusher (commit callbacks, SLO
evaluation, the metrics' fold) run Python for milliseconds at a time; the flusher gives the GIL up at
every Arrow call and waits for it back up to the switch interval; a full collection stops every thread.
bench/ingest.py's p99 at half rate includes all of this, with the clients and the box's neighbours.

Variants (``--variants``): ``run`` = what `agent-sre run` sets (pipeline/cli/run.py: a 0.5 ms switch
interval, start-up objects frozen out of the collector), ``python`` = the interpreter's defaults (5 ms,
no freeze), ``freeze`` = Python's 5 ms with the freeze.  Printed per variant and round: flush p50 / p99 / max, flushes over 30 ms, full collections
(count, longest, total); then each variant's median over the rounds.

    .venv/bin/python bench/flush_latency.py [--rate 25000] [--batch 1024] [--seconds 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_sre.pipeline.cli.run import SWITCH_INTERVAL_S  # noqa: E402
from bench.loop_cpu import batches, start_config  # noqa: E402

VARIANTS = {"run": (SWITCH_INTERVAL_S, True), "python": (0.005, False), "freeze": (0.005, True)}


def run(config: str, work: list, rate: float, switch: float, freeze: bool) -> dict[str, float]:
    pauses: list[float] = []
    started_gc: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started_gc.append(time.perf_counter())
        elif started_gc:
            pauses.append(time.perf_counter() - started_gc.pop())

    before = sys.getswitchinterval()
    data = tempfile.mkdtemp(prefix="agent-sre-bench-")
    service, head, _ = start_config(config, data)
    sys.setswitchinterval(switch)
    if freeze:
        gc.freeze()
    gc.callbacks.append(on_gc)
    try:
        time.sleep(1.0)
        flushes, t0, sent = [], time.monotonic(), 0
        for batch in work:
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            t = time.perf_counter()
            head.consume(batch)
            flushes.append(time.perf_counter() - t)
            sent += batch.num_rows
    finally:
        gc.callbacks.remove(on_gc)
        service.shutdown()
        shutil.rmtree(data, ignore_errors=True)
        sys.setswitchinterval(before)
        gc.unfreeze()
    flushes.sort()
    ms = 1e3
    return {"p50": flushes[len(flushes) // 2] * ms, "p99": flushes[int(len(flushes) * 0.99)] * ms,
            "max": flushes[-1] * ms, "over_30ms": sum(f > 0.030 for f in flushes), "gc2": len(pauses),
            "gc2_max": max(pauses, default=0) * ms, "gc2_total": sum(pauses) * ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=25_000, help="spans/s fed")
    ap.add_argument("--batch", type=int, default=1024, help="spans per flush")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--config", default="default")
    ap.add_argument("--variants", default="run,python,freeze")
    args = ap.parse_args()
    names = args.variants.split(",")
    work = batches(int(args.rate * args.seconds), args.batch)
    print(f"{args.config}: {len(work)} flushes of {args.batch} spans at {args.rate:,.0f} spans/s, "
          f"{args.rounds} interleaved round(s)", flush=True)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            switch, freeze = VARIANTS[name]
            row = run(args.config, work, args.rate, switch, freeze)
            results[name].append(row)
            print(f"round {r + 1} {name:7s} (switch {switch * 1e3:g} ms, freeze {'yes' if freeze else 'no '}): "
                  f"flush p50 {row['p50']:5.1f}  p99 {row['p99']:5.1f}  max {row['max']:6.1f} ms, "
                  f"{row['over_30ms']:3.0f} over 30 ms | full collections {row['gc2']:.0f}, longest "
                  f"{row['gc2_max']:5.1f} ms, total {row['gc2_total']:5.0f} ms", flush=True)
    print("\nmedians over the rounds:")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"  {name:7s} flush p50 {med['p50']:5.1f}  p99 {med['p99']:5.1f}  max {med['max']:6.1f} ms | "
              f"longest full collection {med['gc2_max']:5.1f} ms")


if __name__ == "__main__":
    main()
