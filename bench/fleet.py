"""Fleet benchmark, the ClickHouse part: spans/s into ClickHouse from one pipeline vs the local DuckDB rate,
in the same run, with the CPU each costs.

Starts Debian's `clickhouse-server` (18.16, so the exporter uses its compat schema) on loopback with a temporary
data directory, then, in this process, pipelines built from the store-only processors (memory_limiter,
batch, agent_semconv with ``send_batch_size: --batch``) fed with the same pre-serialised OTLP requests of 512
agent spans (bench/agent_spans.py) from ``--clients`` threads:

  duckdb        exporters [duckdb]: spans / time until every request is acknowledged and the store synced
  ch-unmerged   exporters [clickhouse] as the exporter was before issue #16's work: one insert per queued
                batch (merge_rows: 1) encoded value by value by clickhouse-driver (its column lists)
  clickhouse    exporters [clickhouse] (queued, 2 consumers, on_full: block; merged inserts, numpy-encoded
                Native blocks): spans / time until ``SELECT count() FROM spans`` reaches the total
  both          exporters [duckdb, clickhouse]: the sidecar shape; both rates, from one fan-out

For each: spans/s, this process's CPU per span (time.process_time: receiver, processors and exporters) and
the ClickHouse server's CPU per span (/proc/<pid>/stat), inserts and rows per insert; then the exporter's
own time per span: building the insert's columns (``convert``: Arrow -> driver lists before, Arrow ->
Native bytes now) and a whole ``send`` (the dedup check, convert, network, server insert).  Each phase runs
``--runs`` times, interleaved; the table shows the median and (in brackets) the best run.

    .venv/bin/python bench/fleet.py [--requests 120] [--clients 2] [--batch 8192] [--runs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_spans import make_request  # noqa: E402

PIPELINE = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:0}}
processors:
  memory_limiter: {{check_interval: 100ms, limit_mib: 4096, spike_limit_mib: 1}}
  agent_semconv: {{}}
  batch: {{send_batch_size: {batch}, timeout: 50ms}}
exporters:
  duckdb: {{path: {dir}/spans.duckdb}}
{clickhouse}service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch, agent_semconv]
      exporters: [{exporters}]
"""
CLICKHOUSE = """  clickhouse:
    endpoint: {endpoint}
    create_schema: true
    sending_queue: {{num_consumers: 2, queue_size: 400000}}
{merge}"""
UNMERGED = "    merge_rows: 1\n    merge_timeout: 0s\n"


def start(text: str):
    from agent_sre.pipeline.service import Service
    from agent_sre.pipeline.service.config import parse_config

    service = Service(parse_config(text, "bench"))
    service.start()
    return service


def drive(service, bodies: list[bytes], n_requests: int, clients: int) -> float:
    """Send n_requests (round-robin over bodies) from `clients` threads; seconds until all are acknowledged."""
    ingest = service.receivers[0].ingest
    per_client = n_requests // clients

    def client(k: int) -> None:
        for i in range(per_client):
            for _attempt in range(1000):  # a full blocking queue refuses retryably: back off and retry
                try:
                    ingest.export_protobuf(bodies[k * per_client + i], "bench")
                    break
                except Exception:  # noqa: BLE001 - ExportFailed(retryable): the exporter's back-pressure
                    time.sleep(0.02)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def ch_count(server, db: str) -> int:
    try:
        return server.client().execute(f"SELECT count() FROM {db}.spans")[0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def server_cpu(server) -> float:
    """The ClickHouse server's CPU seconds so far (user + system, /proc/<pid>/stat)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(server, workdir: Path, name: str, exporters: str, args, bodies, run: int) -> dict:
    db = f"bench_{name.replace('-', '_')}_{run}"
    d = workdir / f"pipeline-{name}-{run}"
    d.mkdir()
    uses_ch = "clickhouse" in exporters
    merge = UNMERGED if name == "ch-unmerged" else ""
    text = PIPELINE.format(batch=args.batch, dir=d, exporters=exporters,
                           clickhouse=CLICKHOUSE.format(endpoint=server.url(db), merge=merge) if uses_ch else "")
    service = start(text)
    timing, originals = instrument(service, driver_encoding=name == "ch-unmerged") if uses_ch else ({}, {})
    total = (args.requests // args.clients) * args.clients * 512
    try:
        cpu, server_cpu0 = time.process_time(), server_cpu(server)
        started = time.perf_counter()
        drive(service, bodies, args.requests, args.clients)
        out = {"phase": name, "spans": total}
        if "duckdb" in exporters:
            service.exporters["duckdb"].store.sync()
            out["duckdb"] = total / (time.perf_counter() - started)
        if uses_ch:
            while ch_count(server, db) < total:
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"{name}: ClickHouse has {ch_count(server, db)} of {total} spans after 600 s")
                time.sleep(0.02)
            out["clickhouse"] = total / (time.perf_counter() - started)
        out["cpu_us"] = (time.process_time() - cpu) / total * 1e6
        out["server_cpu_us"] = (server_cpu(server) - server_cpu0) / total * 1e6
        if uses_ch:
            assert ch_count(server, db) == total, "a span was stored twice"
            exporter = service.exporters["clickhouse"]
            out.update({k: v / total * 1e6 for k, v in timing.items()}, inserts=exporter.inserts)
        return out
    finally:
        service.shutdown()
        restore(originals)


def instrument(service, driver_encoding: bool) -> tuple[dict, dict]:
    """Time the clickhouse exporter's column encoding and its whole send() (seconds); ``driver_encoding``:
    make it use its fallback (clickhouse-driver's column lists), as before #16.  Returns the timings and
    the module functions to put back."""
    from agent_sre.exporters.clickhouse import native

    timing = {"convert_us": 0.0, "send_us": 0.0}
    originals = {"encode_column": native.encode_column, "insert": native.insert}
    lock = threading.Lock()

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with lock:
                    timing[key] += time.perf_counter() - t
        return wrapper

    def unsupported(*_a, **_kw):
        raise native.UnsupportedType("the driver's own encoding, as before #16 (bench)")

    if driver_encoding:
        import agent_sre.exporters.clickhouse.factory as module

        originals["insert_columns"] = module.insert_columns
        module.insert_columns = timed(module.insert_columns, "convert_us")
        native.insert = unsupported
    else:
        native.encode_column = timed(native.encode_column, "convert_us")
    exporter = service.exporters["clickhouse"]
    exporter.send = timed(exporter.send, "send_us")
    return timing, originals


def restore(originals: dict) -> None:
    import agent_sre.exporters.clickhouse.factory as module
    from agent_sre.exporters.clickhouse import native

    for attr, fn in originals.items():
        setattr(module if attr == "insert_columns" else native, attr, fn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=120, help="requests of 512 spans per phase")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--batch", type=int, default=8192, help="the batch processor's send_batch_size")
    p.add_argument("--runs", type=int, default=3, help="runs of every phase (interleaved)")
    args = p.parse_args()
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)  # "Failed to connect" while the server starts

    from agent_sre.exporters.clickhouse.factory import factory
    from agent_sre.pipeline.component import Kind
    from agent_sre.pipeline.component.registry import registry
    from tests.clickhouse_server import clickhouse_server

    if registry.get(Kind.EXPORTER, "clickhouse") is None:
        registry.register(factory)
    # every request different (ClickHouse would rightly not store a re-sent identical batch twice), and later
    # than the one before, as a pipeline's traffic is
    base = time.time_ns()
    bodies = [make_request(512, seed=100 + i, base_ns=base + i * 600_000_000).SerializeToString()
              for i in range(args.requests)]
    phases = (("duckdb", "duckdb"), ("ch-unmerged", "clickhouse"), ("clickhouse", "clickhouse"),
              ("both", "duckdb, clickhouse"))
    results: dict[str, list[dict]] = {name: [] for name, _ in phases}
    with tempfile.TemporaryDirectory() as tmp, clickhouse_server(Path(tmp)) as server:
        version = server.client().execute("SELECT version()")[0][0]
        for run in range(args.runs):
            for name, exporters in phases:
                results[name].append(phase(server, Path(tmp), name, exporters, args, bodies, run))
    report(results, version, args)


def _fmt(runs: list[dict], key: str, spec: str, best=max) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} ({best(values):{spec}})"


def report(results: dict[str, list[dict]], version: str, args) -> None:
    print(f"ClickHouse {version} (compat schema) on loopback, {args.requests} requests x 512 spans per phase, "
          f"{args.clients} clients, batches of {args.batch}, {args.runs} runs: median (best)")
    head = (f"{'phase':<12}{'duckdb spans/s':>18}{'clickhouse spans/s':>20}{'CPU µs/span':>16}"
            f"{'server CPU µs/span':>20}{'inserts':>9}{'convert µs/span':>18}{'send µs/span':>18}")
    print(head)
    for name, runs in results.items():
        inserts = f"{statistics.median(r['inserts'] for r in runs):.0f}" if "inserts" in runs[0] else "-"
        print(f"{name:<12}{_fmt(runs, 'duckdb', ',.0f'):>18}{_fmt(runs, 'clickhouse', ',.0f'):>20}"
              f"{_fmt(runs, 'cpu_us', '.1f', min):>16}{_fmt(runs, 'server_cpu_us', '.1f', min):>20}{inserts:>9}"
              f"{_fmt(runs, 'convert_us', '.2f', min):>18}{_fmt(runs, 'send_us', '.2f', min):>18}")
    print("CPU = this process (receiver, processors, exporters); server CPU = clickhouse-server; send = one "
          "consumer's whole attempt\n(dedup check, convert, network, server insert), 2 consumers in parallel.")


if __name__ == "__main__":
    main()
