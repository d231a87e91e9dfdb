"""Against Phoenix: Arize Phoenix (`phoenix serve`, SQLite, from its own virtualenv under .servers/phoenix,
installed by `make test-deps`) and the pipeline (`agent-sre run`, the embedded default: the full SRE
loop) fed the same pre-serialised 512-span ExportTraceServiceRequests (bench/agent_spans.py) over
OTLP/HTTP protobuf, phase after phase in one run, a fresh server of each per round.

  - the pipeline: 2 client processes x 4 senders at max rate (bench/ingest.py's phase); persisted =
    committed in DuckDB (the query API's count, which waits for the spool);
  - Phoenix: one sender paced at --phoenix-rate spans/s (it persists ~70 spans/s on 2 cores; a 512-span
    request every few seconds), for the same --seconds; then up to --drain seconds more while Phoenix
    writes what it accepted. Persisted = rows in its `spans` table (its SQLite file, read-only),
    polled every 0.5 s; persisted spans/s = that count / time from the first send to the last row
    seen arriving (so its backlog is paid for, as the pipeline's is).

CPU per span: user + system CPU of all the server's processes (from /proc) over the phase, per
persisted span; PSS: peak of the summed /proc/<pid>/smaps_rollup of those processes. Each round
also times upb's parse of the same requests on one core (the yardstick bench/ingest.py uses).

    .venv/bin/python bench/peer.py [--seconds 20] [--rounds 3] [--phoenix-rate 256] [--drain 20]
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import (  # noqa: E402
    SPANS_PER_REQUEST,
    RssSampler,
    _client,
    _spread,
    calibrate,
    phase_args,
    process_tree,
    run_phase,
    start_pipeline,
    stop_pipeline,
    tree_cpu_seconds,
)
from tests.servers import start_phoenix  # noqa: E402  (the one place that knows Phoenix's env vars)


def phoenix_span_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    except sqlite3.OperationalError:  # the table is created by Phoenix's migrations, after start
        return 0


def phoenix_phase(seconds: float, rate: float, drain: float, parse_us: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="agent-sre-peer-phoenix-"))
    server = start_phoenix(workdir)
    db = workdir / "phoenix.db"
    try:
        procs = process_tree(server.proc.pid)
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        cpu_before = tree_cpu_seconds(procs)
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        sender = ctx.Process(target=_client, args=("http", server.http, seconds, 1, rate / SPANS_PER_REQUEST, 0, out))
        sender.start()
        sent = out.get(timeout=seconds + 120)
        sender.join()
        in_window = phoenix_span_count(db)  # persisted while the sender was sending
        count, last_change = in_window, time.time()
        deadline = time.monotonic() + drain
        while count < sent["acked"] and time.monotonic() < deadline:
            time.sleep(0.5)
            now = phoenix_span_count(db)
            if now != count:
                count, last_change = now, time.time()
        cpu = tree_cpu_seconds(procs) - cpu_before
        sampler.stop()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lat = sorted(sent["latencies"])
    row = {"server": "Phoenix", "offered_spans_per_s": rate, "acked": sent["acked"], "errors": sent["errors"],
           "persisted": count, "persisted_in_window_per_s": in_window / (sent["last"] - sent["first"]),
           "persisted_spans_per_s": count / (last_change - sent["first"]) if count else 0.0,
           "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan"),
           "cpu_us_per_span": cpu / count * 1e6 if count else float("nan"),
           "peak_pss_total_mib": sampler.peak_pss / 2**20, "parse_us_per_span": parse_us}
    row["x_parse"] = row["cpu_us_per_span"] / parse_us
    if count >= sent["acked"] and in_window >= sent["acked"]:
        print(f"note: Phoenix kept up with {rate:g} spans/s offered; raise --phoenix-rate to measure its limit")
    print(f"Phoenix, {rate:g} spans/s offered over OTLP/HTTP: {row['acked']:,} acknowledged ({row['errors']} errors), "
          f"{count:,} persisted ({row['persisted_in_window_per_s']:,.0f}/s while sending) = "
          f"{row['persisted_spans_per_s']:,.0f} spans/s | export p99 {row['p99_ms']:.0f} ms | CPU "
          f"{row['cpu_us_per_span']:,.0f} us/span = x{row['x_parse']:,.0f} of upb parse | peak PSS "
          f"{row['peak_pss_total_mib']:.0f} MiB", flush=True)
    return row


def pipeline_phase(args, parse_us: float) -> dict:
    p = start_pipeline()
    try:
        row = run_phase("pipeline (default), HTTP max", "http", p["http"], p["admin"], p["server"].pid, args.seconds,
                        args.clients, args.threads, p["metrics"], parse_us=parse_us)
    finally:
        stop_pipeline(p)
    return {**row, "server": "pipeline", "persisted_spans_per_s": row["committed_spans_per_s"]}


def print_table(rows: list[dict]) -> None:
    print("\n| server | persisted spans/s | CPU per persisted span | x upb parse | peak PSS all processes |"
          "\n|---|---|---|---|---|")
    for server in ("pipeline", "Phoenix"):
        mine = [r for r in rows if r["server"] == server]
        pss = [r["peak_pss_total_mib"] for r in mine]
        print(f"| {server} | {_spread([r['persisted_spans_per_s'] for r in mine])} | "
              f"{_spread([r['cpu_us_per_span'] for r in mine])} µs | ×{_spread([r['x_parse'] for r in mine])} | "
              f"{min(pss):.0f}–{max(pss):.0f} MiB |")
    ours = sorted(r["persisted_spans_per_s"] for r in rows if r["server"] == "pipeline")
    theirs = sorted(r["persisted_spans_per_s"] for r in rows if r["server"] == "Phoenix")
    cpu_ours = sorted(r["cpu_us_per_span"] for r in rows if r["server"] == "pipeline")
    cpu_theirs = sorted(r["cpu_us_per_span"] for r in rows if r["server"] == "Phoenix")
    med = lambda v: v[len(v) // 2]  # noqa: E731
    print(f"\nmedians: the pipeline persists {med(ours) / med(theirs):,.0f}x Phoenix's spans/s, at "
          f"1/{med(cpu_theirs) / med(cpu_ours):,.0f} of its CPU per span")


def main() -> None:
    args = phase_args(__doc__, **{"--rounds": {"type": int, "default": 3},
                                  "--phoenix-rate": {"type": float, "default": 256.0,
                                                     "help": "spans/s offered to Phoenix"},
                                  "--drain": {"type": float, "default": None,
                                              "help": "seconds Phoenix may take after sending (default --seconds)"}})
    drain = args.seconds if args.drain is None else args.drain
    print(f"{args.rounds} round(s) of {args.seconds:g}s phases; pipeline: {args.clients} client processes x "
          f"{args.threads} senders at max rate; Phoenix: {args.phoenix_rate:g} spans/s offered, {drain:g}s to drain",
          flush=True)
    rows = []
    for _ in range(args.rounds):
        parse_us = calibrate(args.clients)
        rows.append(pipeline_phase(args, parse_us))
        rows.append(phoenix_phase(args.seconds, args.phoenix_rate, drain, parse_us))
    print_table(rows)


if __name__ == "__main__":
    main()
