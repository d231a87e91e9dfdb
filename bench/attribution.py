"""Attribution benchmark: what agent identity through the trace costs the store's insert transaction.

The same spans are inserted into a fresh store twice (no spool, so each append is one insert
transaction, timed as a whole):
  1. every span names its agent (the fast path: one null count);
  2. only each trace's root (`invoke_agent`) names it, and children arrive first: a trace's children
     in one batch, its root in the next, so every child is held, then resolved through its parent.
Batches of --batch spans (traces of --trace spans each), the rollups of the default loop on.

    .venv/bin/python bench/attribution.py [--spans 200000] [--batch 16384] [--trace 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA  # noqa: E402
from agent_sre.pipeline.storage.store import SpanStore  # noqa: E402
from agent_sre.processors.sli.factory import SliConfig, builtin_slis  # noqa: E402


def traces(n_spans: int, per_trace: int, named_children: bool) -> list[pa.Table]:
    """Tables of whole traces: per trace one root (agent_task, named) and children (llm/tool)."""
    n_traces = n_spans // per_trace
    now = time.time_ns()
    rows = []
    for t in range(n_traces):
        trace = f"{t:032x}"
        agent = f"agent-{t % 10}"
        root = {"trace_id": trace, "span_id": f"{1:016x}", "parent_span_id": "", "name": "invoke_agent",
                "start_ns": now - 10**9, "end_ns": now, "duration_ns": 10**9, "status_code": "unset",
                "span_role": "agent_task", "agent_id": agent, "service_name": "bench", "attributes": [],
                "resource_attributes": [], "scope_attributes": []}
        kids = [{**root, "span_id": f"{k + 2:016x}", "parent_span_id": f"{1:016x}", "name": "chat",
                 "span_role": "llm" if k % 2 else "tool", "agent_id": agent if named_children else None,
                 "cost_usd": 0.001} for k in range(per_trace - 1)]
        rows.append((kids, root))
    return rows


def run(rows, batch: int, children_first: bool) -> float:
    directory = tempfile.mkdtemp(prefix="agent-sre-attribution-")
    store = SpanStore(Path(directory) / "s.duckdb")
    store.set_sli_rollups(builtin_slis(SliConfig()))
    store.track_tasks()
    store.on_charges(lambda c: None, by_task=True)
    pending: list[dict] = []
    roots_next: list[dict] = []
    batches = []
    for kids, root in rows:
        if children_first:
            pending += kids
            roots_next.append(root)
        else:
            pending += [*kids, root]
        if len(pending) >= batch:
            batches.append(pending)
            pending = roots_next if children_first else []
            roots_next = []
    batches.append(pending + roots_next)
    tables = [pa.Table.from_pylist(b, schema=SPAN_SCHEMA) for b in batches if b]
    n = sum(t.num_rows for t in tables)
    started = time.perf_counter()
    for t in tables:
        store.append(t)
    elapsed = time.perf_counter() - started
    left = store.read("SELECT count(*) FROM held_spans")[0][0]
    unattributed = store.read("SELECT count(*) FROM spans WHERE agent_id IS NULL")[0][0]
    store.close()
    shutil.rmtree(directory, ignore_errors=True)
    print(f"  {n:,} spans in {len(tables)} transactions: {n / elapsed:,.0f} spans/s "
          f"({elapsed / n * 1e6:.1f} us/span); held at the end {left}, unattributed {unattributed}", flush=True)
    return elapsed / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=16_384)
    ap.add_argument("--trace", type=int, default=16)
    args = ap.parse_args()
    print("every span names its agent:")
    fast = run(traces(args.spans, args.trace, True), args.batch, False)
    print("only the root names it, children arrive a batch before their root:")
    slow = run(traces(args.spans, args.trace, False), args.batch, True)
    print(f"attribution through the trace costs {np.subtract(slow, fast) * 1e6:+.1f} us per span "
          f"({slow / fast - 1:+.0%} on the insert transaction)")


if __name__ == "__main__":
    main()
