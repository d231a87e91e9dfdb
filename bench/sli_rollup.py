"""The span SLI rollup of one insert: the store's statement (one scan and one aggregation for every SLI)
side by side with the form it replaced (a UNION ALL of one scan and aggregation per SLI), on the same
16,384 agent spans (bench/agent_spans.py, normalized, in the store's layout, read through the views the
store's insert transaction reads them through) with the built-in SLIs, in a DuckDB of the store's settings
(1 thread), the two forms alternating.  Best wall time of several runs of each, same results checked.

    .venv/bin/python bench/sli_rollup.py [--spans 16384] [--runs 9]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize  # noqa: E402
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table  # noqa: E402
from agent_sre.pipeline.storage import attribution  # noqa: E402
from agent_sre.pipeline.storage.rollups import COUNTED_ALL, _on_stored_layout, _quote, _span_select  # noqa: E402
from agent_sre.pipeline.storage.store import to_storage  # noqa: E402
from agent_sre.processors.sli.factory import SliConfig, builtin_slis  # noqa: E402
from bench.agent_spans import request_bodies  # noqa: E402


def union_select(slis) -> str:
    """The statement before: one SELECT per SLI over the batch, UNION ALL, then one GROUP BY."""
    parts = [f"SELECT end_ns // 60000000000 AS minute, {_quote(x.name)} AS sli, coalesce(agent_id, '') AS agent_id, "
             f"coalesce(agent_version, '') AS agent_version, CASE WHEN ({_on_stored_layout(x.good)}) THEN 1 ELSE 0 END "
             f"AS good FROM _counted WHERE ({_on_stored_layout(x.total)})" for x in slis]
    return ("SELECT minute, sli, agent_id, agent_version, sum(good)::BIGINT AS good, count(*) AS total FROM ("
            + " UNION ALL ".join(parts) + ") GROUP BY ALL")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=16_384)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    conventions = load_conventions()
    tables, seed = [], 0
    while sum(t.num_rows for t in tables) < args.spans:
        tables += [normalize(protobuf_to_table(b).table, conventions)
                   for b in request_bodies(seed, count=8, base_ns=time.time_ns())]
        seed += 1
    batch = to_storage(pa.concat_tables(tables).slice(0, args.spans))
    slis = [s for s in builtin_slis(SliConfig()) if s.scope == "span"]
    con = duckdb.connect(config={"threads": 1})
    # As the store's insert transaction has it: the batch registered as _in, read through _batch and _counted.
    con.register("_in", batch)
    con.execute(attribution.direct_statement(time.time_ns()))
    con.execute(COUNTED_ALL)
    forms = {"one scan for every SLI (now)": _span_select(slis), "UNION ALL per SLI (before)": union_select(slis)}
    best = dict.fromkeys(forms, float("inf"))
    rows: dict[str, list] = {}
    for _ in range(args.runs):
        for label, sql in forms.items():
            started = time.perf_counter()
            rows[label] = sorted(con.execute(sql).fetchall(), key=str)
            best[label] = min(best[label], time.perf_counter() - started)
    for label in forms:
        print(f"{label:30s} {best[label] * 1000:6.2f} ms per insert of {batch.num_rows:,} spans "
              f"({best[label] / batch.num_rows * 1e6:.2f} us/span), {len(slis)} SLIs, {len(rows[label])} rows")
    results = {label: (best[label], rows[label]) for label in forms}
    (now, a), (before, b) = results.values()
    print(f"same rows: {a == b}; the one-scan statement takes {now / before:.2f}x the time")


if __name__ == "__main__":
    main()
