"""The loadbalancing exporter's routing of a batch, with and without its trace affinity, in one run.

On tables of bench/agent_spans.py's requests (512 agent spans each, converted and normalised as the pipeline
does; every request its own traces), concatenated to ``--batch`` spans (the batch processor's size), over
``--backends`` static backends: µs of CPU per span (``time.process_time``; wall alongside) of
``LoadBalancingExporter._route`` -- hashing the trace ids, the ring's owners and the ``take`` per backend --
each pass on new trace ids (as a sidecar's traffic brings new traces), for:
- ``ring only``: ``affinity.window: 0s`` (the Collector's behaviour);
- ``affinity``: the default (60 s), its memory holding ``--remembered`` keys of earlier batches (the traces
  of the last window at the rate the sidecar sees), each batch's new keys recorded as a send does;
- ``affinity, backend down``: the same with one backend marked down just now: its remembered keys' rows are
  set aside to wait (what ``affinity.hold`` does), the rest routed.

Best (min) and median of ``--passes`` passes over ``--count`` batches.

    .venv/bin/python -m bench.route [--batch 8192] [--backends 3] [--remembered 200000] [--passes 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.exporters.loadbalancing.config import LoadBalancingConfig
from agent_sre.exporters.loadbalancing.factory import LoadBalancingExporter
from agent_sre.exporters.loadbalancing.ring import Ring
from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from bench.agent_spans import request_bodies


def _batches(count: int, batch: int) -> list[pa.Table]:
    per = max(1, batch // 512)
    bodies = request_bodies(seed=7, count=count * per)
    tables = [normalize(protobuf_to_table(b).table, load_conventions()) for b in bodies]
    return [pa.concat_tables(tables[i * per:(i + 1) * per]).combine_chunks() for i in range(count)]


def _exporter(backends: list[str], window: str) -> LoadBalancingExporter:
    config = LoadBalancingConfig.model_validate({"resolver": {"static": {"hostnames": backends}},
                                                 "affinity": {"window": window}})
    return LoadBalancingExporter(Settings(ComponentID("loadbalancing"), Kind.EXPORTER, Telemetry()), config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--remembered", type=int, default=200_000, help="keys in the affinity memory beforehand")
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args()
    batches = _batches(args.count, args.batch)
    spans = sum(b.num_rows for b in batches)
    endpoints = [f"10.0.0.{i + 1}:4317" for i in range(args.backends)]
    ring = Ring(endpoints, 128)
    plain, sticky = _exporter(endpoints, "0s"), _exporter(endpoints, "60s")
    rng = np.random.default_rng(1)
    old = rng.integers(0, 2**32, args.remembered, dtype=np.uint64).astype(np.uint32)
    now = time.monotonic()
    for i, chunk in enumerate(np.array_split(old, 64)):  # as ~64 earlier batches' sends recorded them
        assert sticky._affinity is not None
        sticky._affinity.record(chunk, endpoints[i % len(endpoints)], now)
    down_ring = Ring(endpoints[1:], 128)

    def renamed(b: pa.Table) -> pa.Table:
        """The batch with new trace ids (its traces kept, each a new one): every pass brings new keys."""
        codes = pc.dictionary_encode(b.column("trace_id")).combine_chunks()
        fresh = pa.array([os.urandom(16).hex() for _ in range(len(codes.dictionary))])
        return b.set_column(b.schema.get_field_index("trace_id"), "trace_id", fresh.take(codes.indices))

    def route(exporter: LoadBalancingExporter, use_ring: Ring, down: dict[str, float], record: bool):
        def run(these: list[pa.Table]) -> None:
            for b in these:
                pieces, _held = exporter._route(b, use_ring, endpoints, down)
                if record and exporter._affinity is not None:
                    for endpoint, _rows, fresh in pieces:
                        exporter._affinity.record(fresh, endpoint, time.monotonic())
        return run

    cases = [("ring only", route(plain, ring, {}, False)),
             ("affinity", route(sticky, ring, {}, True)),
             ("affinity, backend down", route(sticky, down_ring, {endpoints[0]: time.monotonic()}, True))]
    print(f"{len(batches)} batches of {batches[0].num_rows} agent spans, {args.backends} backends, "
          f"{args.remembered:,} keys remembered beforehand; µs per span, best (median) of {args.passes} passes")
    print(f"{'routing':<26}{'CPU':>16}{'wall':>16}")
    for name, fn in cases:
        cpu, wall = [], []
        for _ in range(args.passes):
            these = [renamed(b) for b in batches]
            c0, w0 = time.process_time(), time.perf_counter()
            fn(these)
            cpu.append((time.process_time() - c0) / spans * 1e6)
            wall.append((time.perf_counter() - w0) / spans * 1e6)
        print(f"{name:<26}{min(cpu):>8.3f} ({statistics.median(cpu):.3f}){min(wall):>8.3f} "
              f"({statistics.median(wall):.3f})")
    assert sticky._affinity is not None
    print(f"affinity memory after: {len(sticky._affinity):,} keys")


if __name__ == "__main__":
    main()
