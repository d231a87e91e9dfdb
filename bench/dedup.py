"""The store's dedup of re-sent spans (pipeline/storage/dedup.py) per insert, as the loader runs it:
``drop_copies`` (each span's key, which are remembered, which repeat within the insert) before the insert,
and remembering the kept keys after the commit, over ``--inserts`` inserts of 16,384 agent spans
(bench/trace_rollup.py's: normalized, priced, fresh trace ids per insert) 0.4 s apart, so the current
generation grows as at ~40k spans/s.  Printed: CPU µs per span of each step (``time.process_time``, the
inserts after the first ``--warm``), and of remembering through ``add`` (which sorts the keys again) beside
``add_sorted`` (the batch's sort reused), on two memories fed the same inserts.

    .venv/bin/python bench/dedup.py [--inserts 30] [--warm 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_sre.pipeline.storage.dedup import DedupSettings, RecentSpans, span_keys  # noqa: E402
from bench.trace_rollup import inserts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inserts", type=int, default=30)
    ap.add_argument("--warm", type=int, default=5, help="inserts not counted (the memory filling)")
    args = ap.parse_args()
    work = inserts(args.inserts)
    sorted_memory, plain_memory = RecentSpans(DedupSettings()), RecentSpans(DedupSettings())
    cpu = {"drop_copies": 0.0, "add_sorted (the batch's sort reused)": 0.0, "add (sorting again)": 0.0}
    counted = 0
    for i, table in enumerate(work):
        now = i * 0.4
        started = time.process_time()
        _, remember = sorted_memory.drop_copies(table)
        dropped = time.process_time()
        sorted_memory.add_sorted(remember, now)
        added = time.process_time()
        keys, has_key = span_keys(table.column("trace_id"), table.column("span_id"))
        keep = plain_memory.fresh(keys, has_key)
        again = time.process_time()
        plain_memory.add(keys[keep], has_key[keep], now)  # what the store did before add_sorted
        done = time.process_time()
        if i >= args.warm:
            counted += table.num_rows
            cpu["drop_copies"] += dropped - started
            cpu["add_sorted (the batch's sort reused)"] += added - dropped
            cpu["add (sorting again)"] += done - again
    print(f"{len(work) - args.warm} inserts of {work[0].num_rows:,} spans counted; the memory then holds "
          f"{sorted_memory.stats(len(work) * 0.4)['remembered_spans']:,} keys")
    for label, seconds in cpu.items():
        print(f"  {label:40s} {seconds / counted * 1e6:6.3f} µs/span")


if __name__ == "__main__":
    main()
