"""What the SRE loop costs per span after the receiver: CPU of every thread of an in-process pipeline
fed the same batches, the embedded default against config/store-only.yaml, interleaved rounds.

bench/ingest.py measures the whole process under gRPC clients on the same 2 cores, where one phase
moves by up to ±30 % between runs (the clients, the receiver and the box's neighbours); this bench
takes them out: the spans of bench/agent_spans.py are parsed and concatenated once, then each config
is built in this process (free ports, a temporary data directory), and its batches go straight to
what follows the traces pipeline's ``batch`` processor, paced at ``--rate`` spans/s (0: as fast as it
takes them), in batches of ``--batch`` spans (at max rate the flusher hands on ~2k); then the store is
synced (everything inserted, every commit callback run).  Printed per config and round: CPU µs per
span of the whole process and of each thread (named through ``prctl``, as bench/thread_cpu.py does;
``main (flusher)`` is the flusher's work here: the processors and the exporters), then each thread's
min – median – max over the rounds, and the loop's cost (default − store-only, medians).

With ``--statements``, also the CPU per SQL statement of the loader's insert transactions and of the
rollup thread's transactions, the CPU of each commit callback, and of each processor's ``process`` and exporter's ``export`` on the flusher (thread
CPU around each, summed over the round, µs per span): one round of the whole pipeline moves by more than
most single changes to a statement, the statement itself does not.

    .venv/bin/python bench/loop_cpu.py [--spans 400000] [--rate 40000] [--batch 2048] [--rounds 3] [--statements]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_spans import request_bodies  # noqa: E402
from bench.thread_cpu import NAMING, thread_ticks  # noqa: E402

exec(NAMING)  # this process's threads named after the Python ones, before the pipeline starts any
_prctl(15, b"main (flusher)", 0, 0, 0)  # noqa: F821 - NAMING's; the batches are fed from this thread

import re  # noqa: E402

import pyarrow as pa  # noqa: E402

from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table  # noqa: E402
from agent_sre.pipeline.service.config import parse_config  # noqa: E402
from agent_sre.pipeline.service.graph import Service  # noqa: E402
from agent_sre.pipeline.storage.store import SpanStore  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "config"
ENDPOINTS = ("OTLP_GRPC_ENDPOINT", "OTLP_HTTP_ENDPOINT", "ADMIN_ENDPOINT", "METRICS_ADDRESS", "PROMETHEUS_ENDPOINT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches(spans: int, size: int) -> list[pa.Table]:
    """The raw spans (as the receiver hands them on) of bench/agent_spans.py, ending now, in batches."""
    base, tables, seed = time.time_ns() - 60 * 10**9, [], 0
    while sum(t.num_rows for t in tables) < spans:
        tables += [protobuf_to_table(b).table for b in request_bodies(seed, count=8, base_ns=base + seed * 10**7)]
        seed += 1
    whole = pa.concat_tables(tables).slice(0, spans)
    return [whole.slice(i, size) for i in range(0, whole.num_rows, size)]


def _key(sql: str) -> str:
    # Numbers that change per transaction are N: long ones (times) and the literals of positions.
    return "SQL " + re.sub(r"\d{6,}|(?<![\w.])\d+(?=::BIGINT)|(?<=received_ns > )\d+|(?<== )\d+(?=[,)]|$)", "N",
                           " ".join(sql.split()))[:100]


class Statements:
    """Thread CPU of each SQL statement of the store's insert and rollup transactions and of each commit
    callback (``--statements``): the store's connection is wrapped for the insert, its cursor for the
    rollup, its callbacks for the call."""

    def __init__(self):
        self.cpu: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        insert, callbacks, timed = SpanStore._insert, SpanStore._run_callbacks, self._timed
        roll, cursor = SpanStore._roll_stored, SpanStore._cursor

        class Connection:
            def __init__(self, con):
                self._con = con

            def execute(self, sql, *args):
                # the store sends statements whose results it does not read together (store._Statements):
                # timed one by one here
                *together, sql = sql.split(";\n") if not args else [sql]
                for one in together:
                    started = time.thread_time()
                    Result(self._con.execute(one), _key(one), started).fetchall()
                started = time.thread_time()
                result = self._con.execute(sql, *args)
                return Result(result, _key(sql), started)

            def __getattr__(self, name):
                return getattr(self._con, name)

        class Result:
            def __init__(self, result, key, started):
                self._result, self._key, self._started = result, key, started

            def fetchall(self):
                rows = self._result.fetchall()
                timed(self._key, self._started)
                return rows

            def __getattr__(self, name):
                return getattr(self._result, name)

        def wrapped_insert(store, tables, seq=None, roll=None):
            con, started = store._con, time.thread_time()
            store._con = Connection(con)
            try:
                return insert(store, tables, seq, roll)
            finally:
                store._con = con
                timed("the whole insert (loader)", started)

        def wrapped_roll(store):
            # the rollup thread's transaction runs on a cursor of its own (SpanStore._reading)
            started = time.thread_time()
            store._cursor = lambda: Connection(cursor(store))
            try:
                return roll(store)
            finally:
                del store._cursor
                timed("the whole rollup (rollup thread)", started)

        def wrapped_callbacks(store, charges, task_spend, rows):
            def wrap(callback):
                def call(arg):
                    started = time.thread_time()
                    try:
                        return callback(arg)
                    finally:
                        timed("callback " + getattr(callback, "__qualname__", repr(callback)), started)
                return call
            on_charges, on_task_spend, on_commit = store._on_charges, store._on_task_spend, store._on_commit
            store._on_charges, store._on_task_spend, store._on_commit = (
                [wrap(c) for c in on_charges], [wrap(c) for c in on_task_spend], [wrap(c) for c in on_commit])
            try:
                return callbacks(store, charges, task_spend, rows)
            finally:
                store._on_charges, store._on_task_spend, store._on_commit = on_charges, on_task_spend, on_commit

        SpanStore._insert, SpanStore._run_callbacks = wrapped_insert, wrapped_callbacks  # type: ignore[method-assign]
        SpanStore._roll_stored = wrapped_roll  # type: ignore[method-assign]

    def stages(self, service: Service) -> None:
        """Also the thread CPU of each processor's ``process`` and each exporter's ``export`` (on the
        flusher: what ``main (flusher)`` is made of), per instance of this service."""
        for component, method in ([(p, "process") for p in service.processors]
                                  + [(e, "export") for e in service.exporters.values()]):
            original = getattr(component, method)

            def call(batch, _original=original, _key=f"{method} {component.id}"):
                started = time.thread_time()
                try:
                    return _original(batch)
                finally:
                    self._timed(_key, started)
            setattr(component, method, call)

    def _timed(self, key: str, started: float) -> None:
        self.cpu[key] += time.thread_time() - started
        self.calls[key] += 1

    def report(self, spans: int) -> None:
        for key, cpu in self.cpu.most_common(24):
            print(f"    {cpu / spans * 1e6:6.2f} µs/span  {self.calls[key]:5d} × {cpu / self.calls[key] * 1e3:6.2f} ms  {key}")
        self.cpu.clear()
        self.calls.clear()


def start_config(name: str, data: str) -> tuple[Service, Any, SpanStore]:
    """config/``name``.yaml started in this process (free ports, a temporary data directory): the service,
    what follows the traces pipeline's ``batch`` processor (those of metrics and logs hand on to the
    exporters) and the store."""
    env = {"AGENT_SRE_DATA": data}
    env.update({f"AGENT_SRE_{k}": f"127.0.0.1:{_free_port()}" for k in ENDPOINTS})
    service = Service(parse_config((CONFIG / f"{name}.yaml").read_text(), name, env=env))
    service.start()
    head = next(p._next for p in service.processors
                if p.id.type == "batch" and type(p._next).__name__ != "ExporterFanout")
    store = next(e for e in service.exporters.values() if e.id.type == "duckdb").store
    return service, head, store


def run(name: str, work: list[pa.Table], rate: float, statements: Statements | None = None) -> dict[str, float]:
    """One config fed ``work``: CPU µs per span by thread name ("all": the process)."""
    data = tempfile.mkdtemp(prefix="agent-sre-bench-")
    service, head, store = start_config(name, data)
    if statements is not None:
        statements.stages(service)
    try:
        time.sleep(1.0)  # started: its threads idle
        before, cpu, started, sent = thread_ticks(os.getpid()), time.process_time(), time.monotonic(), 0
        for batch in work:
            if rate:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            head.consume(batch)
            sent += batch.num_rows
        store.sync(600)
        after, cpu = thread_ticks(os.getpid()), time.process_time() - cpu
    finally:
        service.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    out = {t: (after[t] - before.get(t, 0)) * tick_us / sent for t in after}
    out["all"] = cpu * 1e6 / sent
    return {t: v for t, v in out.items() if v >= 0.01}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=400_000)
    ap.add_argument("--rate", type=float, default=40_000, help="spans/s fed (0: as fast as it takes them)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="default,store-only")
    ap.add_argument("--statements", action="store_true", help="CPU per loader statement and commit callback")
    args = ap.parse_args()
    statements = Statements() if args.statements else None
    work = batches(args.spans, args.batch)
    names = args.configs.split(",")
    runs: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for r in range(args.rounds):
        for name in names:
            got = run(name, work, args.rate, statements)
            runs[name].append(got)
            top = sorted((t for t in got if t != "all"), key=lambda t: -got[t])[:6]
            print(f"round {r + 1} {name:11s} {got['all']:6.2f} us/span | " + "  ".join(f"{t} {got[t]:.2f}" for t in top),
                  flush=True)
            if statements is not None:
                statements.report(sum(t.num_rows for t in work))
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        threads = sorted({t for got in runs[name] for t in got}, key=lambda t: -max(g.get(t, 0) for g in runs[name]))
        print(f"\n{name}: CPU µs per span by thread ({args.rounds} round(s), {args.spans:,} spans at "
              f"{args.rate:,.0f}/s; min – median – max)")
        medians[name] = {}
        for t in threads:
            values = sorted(got.get(t, 0.0) for got in runs[name])
            medians[name][t] = statistics.median(values)
            print(f"  {t:16s} {values[0]:6.2f} – {medians[name][t]:6.2f} – {values[-1]:6.2f}")
    if "default" in medians and "store-only" in medians:
        d, s = medians["default"]["all"], medians["store-only"]["all"]
        print(f"\nthe loop costs {d - s:.2f} µs per span after the receiver (medians: default {d:.2f}, "
              f"store-only {s:.2f}, ×{d / s:.2f})")


if __name__ == "__main__":
    main()
