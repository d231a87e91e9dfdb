"""The agents' Prometheus metrics per span: what the prometheus exporter costs the flusher and its folder.

On the requests of bench/agent_spans.py (512 agent spans, ~12 attributes each, one LLM call in three),
converted and normalised as the pipeline does, concatenated four at a time into 2,048-span batches of four
chunks (what the flusher hands on at max rate), µs of CPU per span (``time.process_time``) for:

- one key of the attribute maps (``gen_ai.operation.name``) by Arrow's ``pc.map_lookup(..., "first")`` and
  by ``maps.map_value``, side by side on the same batches, with whether both give the same values; on the
  batches as they come (four chunks) and combined into one chunk;
- ``AgentMetrics.observe`` (on the flusher thread: the columns kept for the histograms) and the fold of
  what it kept into the RED and GenAI histograms (on the exporter's folder thread), over ``--batches``
  batches per pass (the folder folds 64k spans at once).

Best (min) and median of ``--passes`` passes.

    .venv/bin/python -m bench.agent_metrics [--passes 15] [--batches 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.exporters.prometheus.metrics import FOLD_ROWS, AgentMetrics
from agent_sre.pipeline.pdata.maps import map_value
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from bench.agent_spans import request_bodies

KEY = "gen_ai.operation.name"


def _timed(passes: int, spans: int, run: Callable[[], object]) -> tuple[float, float]:
    """(min, median) CPU µs per span of ``run`` over ``passes`` passes."""
    per_pass = []
    for _ in range(passes):
        start = time.process_time()
        run()
        per_pass.append((time.process_time() - start) / spans * 1e6)
    return min(per_pass), statistics.median(per_pass)


def _row(label: str, figures: tuple[float, float]) -> None:
    print(f"  {label:68s} {figures[0]:6.3f} {figures[1]:8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--batches", type=int, default=16, help="2,048-span batches per pass")
    args = ap.parse_args()
    if not 0 < args.batches * 2048 < FOLD_ROWS:
        ap.error(f"--batches: 1 to {(FOLD_ROWS - 1) // 2048} (past {FOLD_ROWS} spans observe() folds on its own thread)")

    conventions = load_conventions()
    tables = [normalize(protobuf_to_table(body).table, conventions)
              for body in request_bodies(3, count=4 * args.batches)]
    batches = [pa.concat_tables(tables[i:i + 4]) for i in range(0, len(tables), 4)]
    whole = [b.column("attributes").combine_chunks() for b in batches]
    spans = sum(b.num_rows for b in batches)
    llm = sum(pc.sum(pc.equal(b.column("span_role"), "llm")).as_py() for b in batches)
    same = all(map_value(b.column("attributes"), KEY).equals(pc.map_lookup(b.column("attributes"), KEY, "first")
                                                              .combine_chunks()) for b in batches)
    print(f"{len(batches)} batches of {batches[0].num_rows} spans ({batches[0].column('attributes').num_chunks} "
          f"chunks each), {llm / spans:.0%} LLM spans; {args.passes} passes")
    print(f"  {'CPU µs per span':68s} {'min':>6s} {'median':>8s}")
    _row(f"{KEY}: pc.map_lookup, as they come",
         _timed(args.passes, spans, lambda: [pc.map_lookup(b.column("attributes"), KEY, "first") for b in batches]))
    _row(f"{KEY}: map_value, as they come (same values: {same})",
         _timed(args.passes, spans, lambda: [map_value(b.column("attributes"), KEY) for b in batches]))
    _row(f"{KEY}: pc.map_lookup, one chunk",
         _timed(args.passes, spans, lambda: [pc.map_lookup(a, KEY, "first") for a in whole]))
    _row(f"{KEY}: map_value, one chunk", _timed(args.passes, spans, lambda: [map_value(a, KEY) for a in whole]))

    masks = [pc.fill_null(pc.equal(b.column("span_role"), "llm"), False) for b in batches]

    def llm_columns_before() -> None:  # AgentMetrics.observe until 5aeaa2d
        for b, m in zip(batches, masks, strict=True):
            rows = b.select(["attributes", "provider", "model", "duration_ns", "input_tokens", "output_tokens"]).filter(m)
            rows.drop_columns(["attributes"]).append_column("operation", pc.map_lookup(rows.column("attributes"), KEY, "first"))

    def llm_columns_now() -> None:  # as observe() takes them now
        for b, m in zip(batches, masks, strict=True):
            (b.select(["provider", "model", "duration_ns", "input_tokens", "output_tokens"])
             .append_column("operation", map_value(b.column("attributes"), KEY)).filter(m))

    _row("the LLM spans' columns as until 5aeaa2d (maps filtered, map_lookup)", _timed(args.passes, spans, llm_columns_before))
    _row("the LLM spans' columns as observe() takes them (map_value, filtered)", _timed(args.passes, spans, llm_columns_now))

    observed: list[AgentMetrics] = []

    def observe() -> None:
        metrics = AgentMetrics()  # not started: observe() folds on this thread only past 64k spans
        for b in batches:
            metrics.observe(b)
        observed.append(metrics)

    _row("AgentMetrics.observe (the flusher's part)", _timed(args.passes, spans, observe))
    pending = iter(observed)
    _row("the fold into the histograms (the folder's part)",
         _timed(args.passes, spans, lambda: next(pending)._fold()))


if __name__ == "__main__":
    main()
