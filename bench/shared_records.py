"""Shared records benchmark (chaos experiments and rollouts on Redis): what a pipeline pays per refresh
and per change.

Starts Debian's `redis-server` on loopback (no persistence) and measures, in this process:

- an idle refresh (``SharedRecords.sync`` when nothing changed: the epoch check and one GET of the
  change counter), which every chaos and delivery processor with ``state:`` runs every
  ``state_refresh`` (250 ms by default);
- a refresh after a change (the counter moved: the whole hash is read, ``--records`` records);
- one compare-and-set (``put``: a rollout's step change, an experiment's end).

Wall and CPU time (time.process_time: the client's side only) per call, several runs, min and median.

    .venv/bin/python bench/shared_records.py [--calls 2000] [--runs 5] [--records 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fleet_decisions import start_redis  # noqa: E402


def _timed(call, n: int) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, default=50)
    args = ap.parse_args()

    from agent_sre.pipeline.storage.shared_state import SharedRecord, SharedState

    proc, port = start_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        writer, reader = SharedState(url, "w").records("bench"), SharedState(url, "r").records("bench")
        for k in range(args.records):
            writer.put(f"r{k}", -1, {"state": "progressing", "step": 0, "reason": "x" * 80})
        local = reader.sync({}, lambda r: 0.0, time.time()) or {}
        version = {"r0": 0, "r1": 0}  # each record's version in Redis: every put is a compare-and-set that wins

        def put(record: str = "r1") -> None:
            writer.put(record, version[record], {"state": "progressing", "step": version[record] + 1})
            version[record] += 1

        def changed_sync() -> None:
            put("r0")
            local.update(reader.sync(local, lambda r: 0.0, time.time()) or {})

        cases = {
            "idle refresh (nothing changed)": lambda: reader.sync(local, lambda r: 0.0, time.time()),
            "compare-and-set (one change)": put,
            f"change + refresh that reads {args.records} records": changed_sync,
        }
        print(f"redis-server on loopback; {args.runs} runs of {args.calls} calls; per call:")
        for name, call in cases.items():
            walls, cpus = zip(*(_timed(call, args.calls) for _ in range(args.runs)), strict=True)
            print(f"  {name:45s} wall min {min(walls) * 1e6:7.0f} us  median {statistics.median(walls) * 1e6:7.0f} us"
                  f"   cpu min {min(cpus) * 1e6:7.0f} us  median {statistics.median(cpus) * 1e6:7.0f} us")
        idle_cpu = min(_timed(cases["idle refresh (nothing changed)"], args.calls)[1] for _ in range(args.runs))
        print(f"at the default state_refresh (250 ms): {idle_cpu * 4 * 100:.3f} % of a core per processor while idle")
        assert isinstance(next(iter(local.values())), SharedRecord)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
