"""What the span store keeps when idle after a burst: DuckDB's allocator purging on its own thread or not.

Each run is a fresh process: a ``SpanStore`` with its spool, as the duckdb exporter opens it, takes
``--spans`` normalised agent spans (bench/agent_spans.py, new span ids at every append) as fast as it
commits them; then it idles, and RssAnon (what the memory limiter counts) is printed after the last
commit, and 5 and 15 s later.  ``allocator_background_threads`` on (the store's setting) and off (DuckDB's
default), interleaved, ``--rounds`` times each: without the thread, DuckDB's jemalloc hands dirty pages back
only as it allocates, so an idle store kept what the burst left.

    .venv/bin/python bench/store_idle.py [--spans 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _anon_mib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) >> 10


def run_one(spans: int, background: bool) -> dict:
    """In this process: fill a store, idle, and the RssAnon readings."""
    import numpy as np
    import pyarrow as pa

    from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
    from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
    from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings
    from bench.agent_spans import request_bodies

    opened = SpanStore._open_checked

    def with_setting(self, on_damaged):  # the one setting under test, as the store would pass it
        self._duckdb_config["allocator_background_threads"] = background
        return opened(self, on_damaged)

    SpanStore._open_checked = with_setting  # type: ignore[method-assign]
    conventions = load_conventions()
    tables = [normalize(protobuf_to_table(b).table, conventions) for b in request_bodies(seed=5, count=32)]
    d = Path(tempfile.mkdtemp(prefix="agent-sre-idle-"))
    store = SpanStore(d / "spans.duckdb", spool=SpoolSettings(directory=str(d / "spool")))
    rng = np.random.default_rng(1)
    start, n, t0 = _anon_mib(), 0, time.monotonic()
    while n < spans:
        for t in tables:
            ids = pa.array([f"{x:016x}" for x in rng.integers(1, 2**62, t.num_rows)])
            store.append(t.set_column(t.schema.get_field_index("span_id"), "span_id", ids))
            n += t.num_rows
    store.sync()
    seconds = time.monotonic() - t0
    readings = {"0s": _anon_mib()}
    time.sleep(5)
    readings["5s"] = _anon_mib()
    time.sleep(10)
    readings["15s"] = _anon_mib()
    store.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"start": start, "spans": n, "spans_per_s": n / seconds, **readings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.spans, args.one == "on")))
        return
    print(f"{args.spans:,} spans into a fresh store, then idle; RssAnon MiB (interleaved, {args.rounds} rounds)")
    print(f"{'allocator_background_threads':30} {'start':>6} {'spans/s':>9} {'idle 0s':>8} {'5s':>5} {'15s':>5}")
    for _ in range(args.rounds):
        for mode in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--spans", str(args.spans)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:30} {r['start']:6} {r['spans_per_s']:9,.0f} {r['0s']:8} {r['5s']:5} {r['15s']:5}")


if __name__ == "__main__":
    main()
