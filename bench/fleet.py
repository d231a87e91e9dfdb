"""Fleet benchmark, the ClickHouse part: spans/s into ClickHouse from one pipeline vs the local DuckDB rate,
in the same run.

Starts Debian's `clickhouse-server` (18.16, so the exporter uses its compat schema) on loopback with a temporary
data directory, then, in this process, pipelines built from the store-only processors (memory_limiter,
agent_semconv, batch with ``send_batch_size: --batch``) fed with the same pre-serialised OTLP requests of 512
agent spans (bench/agent_spans.py) from ``--clients`` threads:

  duckdb      exporters [duckdb]: spans / time until every request is acknowledged and the store synced
  clickhouse  exporters [clickhouse] (queued, 2 consumers, on_full: block): spans / time until
              ``SELECT count() FROM spans`` in ClickHouse reaches the total
  both        exporters [duckdb, clickhouse]: the sidecar shape; both rates, from one fan-out

Then where the exporter's time goes, for one batch: Arrow -> driver columns (``insert_columns``) and the
driver's encode + send + server insert (``Client.execute``), in µs per span.

    .venv/bin/python bench/fleet.py [--requests 200] [--clients 2] [--batch 8192]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_spans import request_bodies  # noqa: E402

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
      processors: [memory_limiter, agent_semconv, batch]
      exporters: [{exporters}]
"""
CLICKHOUSE = """  clickhouse:
    endpoint: {endpoint}
    create_schema: true
    sending_queue: {{num_consumers: 2, queue_size: 400000}}
"""


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
                    time.sleep(0.01)

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


def phase(server, workdir: Path, name: str, exporters: str, args, bodies) -> dict:
    db = f"bench_{name}"
    d = workdir / f"pipeline-{name}"
    d.mkdir()
    uses_ch = "clickhouse" in exporters
    text = PIPELINE.format(batch=args.batch, dir=d, exporters=exporters,
                           clickhouse=CLICKHOUSE.format(endpoint=server.url(db)) if uses_ch else "")
    service = start(text)
    timing = instrument(service) if uses_ch else None
    total = (args.requests // args.clients) * args.clients * 512
    try:
        started = time.perf_counter()
        acked = drive(service, bodies, args.requests, args.clients)
        out = {"phase": name, "spans": total, "acked_s": acked}
        if "duckdb" in exporters:
            service.exporters["duckdb"].store.sync()
            out["duckdb_spans_s"] = total / (time.perf_counter() - started)
        if "clickhouse" in exporters:
            while ch_count(server, db) < total:
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"{name}: ClickHouse has {ch_count(server, db)} of {total} spans after 600 s")
                time.sleep(0.02)
            out["clickhouse_spans_s"] = total / (time.perf_counter() - started)
            assert ch_count(server, db) == total, "a span was stored twice"
            out.update({k: v / total * 1e6 for k, v in timing.items()})  # µs per span
        return out
    finally:
        service.shutdown()


def instrument(service) -> dict:
    """Seconds the clickhouse exporter spends converting Arrow to driver columns, and in send() overall."""
    import agent_sre.exporters.clickhouse.factory as module

    timing = {"convert_us": 0.0, "send_us": 0.0}
    exporter = service.exporters["clickhouse"]
    convert, send = module.insert_columns, exporter.send
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

    module.insert_columns = timed(convert, "convert_us")
    exporter.send = timed(send, "send_us")
    return timing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="requests of 512 spans per phase")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--batch", type=int, default=8192, help="the batch processor's send_batch_size")
    args = p.parse_args()

    from agent_sre.exporters.clickhouse.factory import factory
    from agent_sre.pipeline.component import Kind
    from agent_sre.pipeline.component.registry import registry
    from tests.clickhouse_server import clickhouse_server

    if registry.get(Kind.EXPORTER, "clickhouse") is None:
        registry.register(factory)
    # every request different: ClickHouse would (rightly) not store a re-sent identical batch twice
    bodies = request_bodies(seed=1, count=args.requests, base_ns=time.time_ns())
    with tempfile.TemporaryDirectory() as tmp, clickhouse_server(Path(tmp)) as server:
        version = server.client().execute("SELECT version()")[0][0]
        import agent_sre.exporters.clickhouse.factory as module

        convert = module.insert_columns
        results = []
        for name, exporters in (("duckdb", "duckdb"), ("clickhouse", "clickhouse"), ("both", "duckdb, clickhouse")):
            results.append(phase(server, Path(tmp), name, exporters, args, bodies))
            module.insert_columns = convert
    print(f"ClickHouse {version} (compat schema), {args.requests} requests x 512 spans per phase, "
          f"{args.clients} clients, batches of {args.batch}")
    print(f"{'phase':<12}{'spans':>10}{'acked in s':>12}{'duckdb spans/s':>16}{'clickhouse spans/s':>20}"
          f"{'convert µs/span':>17}{'send µs/span':>14}")
    for r in results:
        duck = f"{r['duckdb_spans_s']:,.0f}" if "duckdb_spans_s" in r else "-"
        ch = f"{r['clickhouse_spans_s']:,.0f}" if "clickhouse_spans_s" in r else "-"
        conv = f"{r['convert_us']:.2f}" if "convert_us" in r else "-"
        send = f"{r['send_us']:.2f}" if "send_us" in r else "-"
        print(f"{r['phase']:<12}{r['spans']:>10,}{r['acked_s']:>12.2f}{duck:>16}{ch:>20}{conv:>17}{send:>14}")
    print("send = one consumer's whole attempt (batch id, dedup check, convert, driver encode, network, server "
          "insert);\nconsumers run 2 in parallel, so send µs/span can exceed 1e6 / clickhouse spans/s")


if __name__ == "__main__":
    main()
