"""Ingest benchmark: OTLP in -> DuckDB committed, the embedded default (the full SRE loop) and
config/store-only.yaml side by side in one run (interleaved rounds).

Starts `agent-sre run` (no --config: the embedded default, ports and data dir moved
by environment variables; then --config config/store-only.yaml) in its own process, then drives it from separate client
processes with pre-serialised ExportTraceServiceRequests of 512 agent spans
(~12 attributes each), for a bounded time per phase:

  1. gRPC, as fast as the pipeline takes it
  2. gRPC paced at half the rate of phase 1, for export-call latency (--no-half skips it)
  3. with --full: HTTP/protobuf, as fast as the pipeline takes it

and prints, per phase: accepted spans/s (acknowledged to clients, over the
sending window), committed spans/s (counted in DuckDB through the query API,
which first waits until the spool is inserted: spans / time from the first send
until that count returns), p50/p99 export-call latency, CPU per committed span of all
pipeline processes (from /proc), that CPU as a multiple of upb's parse time for the same
spans ("x parse"), and the peak RSS and PSS of the pipeline (main process, and with its
receiver workers); then a table of every phase and, per config, the committed rate
(min-median-max), p99 at max / at half rate, PSS, CPU per span and what the loop costs.

The parse-rate calibration: before each pipeline starts (no pipeline running, clients gone) the
bench process times `ExportTraceServiceRequest.FromString` (upb) on the very requests the clients
send, on one core, best of several passes; each phase's CPU per span is divided by the calibration
taken just before its pipeline started, so the ratio holds on any machine.

    .venv/bin/python bench/ingest.py [--seconds 20] [--clients 2] [--threads 4] [--rounds 3] [--full]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_sre.processors.memory_limiter.factory import held_bytes  # noqa: E402
from bench.agent_spans import FreshIds, request_bodies, upb_parse_us_per_span  # noqa: E402

SPANS_PER_REQUEST = 512
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(protocol: str, port: int, seconds: float, threads: int, rate_per_thread: float, seed: int,
            out: mp.Queue) -> None:
    """One client process: `threads` senders, each with its own connection, until the deadline."""
    bodies = request_bodies(seed, n_spans=SPANS_PER_REQUEST, base_ns=time.time_ns())
    latencies: list[float] = []
    acked = [0]
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds  # from the moment this client is ready to send

    def sender(k: int) -> None:
        fresh = stampers[k]
        local: list[float] = []
        ok = err = 0
        if protocol == "grpc":
            import grpc

            # One TCP connection per sender (gRPC would share one per process), as separate agents would.
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

            def send(body: bytes) -> bool:
                try:
                    call(body, timeout=30)
                    return True
                except grpc.RpcError:
                    return False
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def send(body: bytes) -> bool:
                conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                return resp.status == 200
        interval = 1.0 / rate_per_thread if rate_per_thread else 0.0
        next_at = time.monotonic() + (k * interval / threads if interval else 0)
        i = k
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if interval:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += interval
            started = time.perf_counter()
            good = send(fresh[i % len(fresh)].next())
            local.append(time.perf_counter() - started)
            i += 1
            if good:
                ok += 1
            else:
                err += 1
        with lock:
            latencies.extend(local)
            acked[0] += ok * SPANS_PER_REQUEST
            errors[0] += err

    # New span ids at every send (the store stores a re-sent span once): one stamper per sender and body.
    stampers = [[FreshIds(b) for b in bodies] for _ in range(threads)]
    workers = [threading.Thread(target=sender, args=(k,)) for k in range(threads)]
    first = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put({"acked": acked[0], "errors": errors[0], "latencies": latencies, "first": first, "last": time.time()})


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (shared pages split between their users), from
    /proc/<pid>/smaps_rollup; 0 once the process has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def tree_cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU of these processes, from /proc (a process that has gone counts 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class RssSampler(threading.Thread):
    """Peak memory of the pipeline: RSS of its main process, and of all its processes together
    both as summed RSS (counts the shared library pages once per process), as summed PSS (each
    shared page split between the processes that map it: what the group really uses) and as summed
    held memory (RssAnon + RssShmem: what the memory limiter counts)."""

    def __init__(self, pid: int, limit_bytes: int | None = None):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_main = 0
        self.peak_total = 0
        self.peak_pss = 0
        self.peak_pss_main = 0
        self.peak_each: dict[int, int] = {}  # pid -> peak RSS of that process
        self.limit_bytes = limit_bytes
        self.peak_held = 0  # summed RssAnon + RssShmem: what the memory limiter counts
        self.samples = 0
        self.over: list[tuple[float, int]] = []  # (time.time(), held bytes) of the samples at or above limit_bytes
        self._stop = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self._stop.wait(0.1):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                each = {p.pid: p.memory_info().rss for p in procs}
                if tick % 5 == 0:  # PSS sums every mapping in the kernel: slower, so sampled less often
                    pss = {p.pid: pss_bytes(p.pid) for p in procs}
                    self.peak_pss = max(self.peak_pss, sum(pss.values()))
                    self.peak_pss_main = max(self.peak_pss_main, pss[self.proc.pid])
            except psutil.Error:
                continue
            tick += 1
            total = sum(each.values())
            held = sum(held_bytes(p) for p in procs)
            self.peak_held = max(self.peak_held, held)
            self.peak_main = max(self.peak_main, each[self.proc.pid])
            self.peak_total = max(self.peak_total, total)
            for pid, rss in each.items():
                self.peak_each[pid] = max(self.peak_each.get(pid, 0), rss)
            self.samples += 1
            if self.limit_bytes is not None and held >= self.limit_bytes:
                self.over.append((time.time(), held))

    @property
    def samples_over(self) -> int:
        return len(self.over)

    def stop(self) -> None:
        self._stop.set()


def count_spans(admin: int, patience_s: float = 600.0) -> int:
    """Every acknowledged span, once committed: the query API answers over what is committed after its wait
    (and at once when the store is far behind), saying how many were pending; asked again until none is
    (RuntimeError after ``patience_s``)."""
    deadline = time.monotonic() + patience_s
    while True:
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/query", method="POST",
                                     data=json.dumps({"sql": "SELECT count(*) FROM spans", "wait": "20s"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
        if not body.get("pending_spans"):
            return body["rows"][0][0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{body['pending_spans']} acknowledged spans still not committed after {patience_s:g}s")
        time.sleep(0.5)


def pipeline_metrics(port: int) -> dict[str, float]:
    """The pipeline's own counters: batch sizes and store commit times, to see where time goes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _delta(after: dict, before: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the pipeline process and its receiver workers, from /proc."""
    return tree_cpu_seconds(process_tree(pid))


def run_phase(name: str, protocol: str, port: int, admin: int, pid: int, seconds: float, clients: int,
              threads: int, metrics_port: int, rate: float = 0.0, parse_us: float = 0.0) -> dict:
    """One phase; ``parse_us`` (upb's parse time per span, this run) adds CPU as a multiple of it."""
    before = count_spans(admin)
    cpu_before = cpu_seconds(pid)
    m_before = pipeline_metrics(metrics_port)
    sampler = RssSampler(pid)
    sampler.start()
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    per_thread = rate / SPANS_PER_REQUEST / (clients * threads) if rate else 0.0
    procs = [ctx.Process(target=_client, args=(protocol, port, seconds, threads, per_thread, c, out))
             for c in range(clients)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.monotonic() - started
    for p in procs:
        p.join()
    m_after = pipeline_metrics(metrics_port)  # before the count below drains the spool
    backlog = m_after.get('agent_sre_exporter_queue_size{exporter="duckdb"}', 0.0)
    committed = count_spans(admin) - before  # the query API reads its writes: waits until all is in DuckDB
    cpu = cpu_seconds(pid) - cpu_before
    sampler.stop()
    first = min(r["first"] for r in results)
    sending_s = max(r["last"] for r in results) - first
    committing_s = time.time() - first  # until every acknowledged span is in DuckDB
    size_key = 'agent_sre_processor_batch_batch_send_size_{}{{processor="batch"}}'
    flushes = _delta(m_after, m_before, size_key.format("count"))
    export_key = 'agent_sre_exporter_export_latency_seconds_{}{{exporter="duckdb"}}'
    commit_s = _delta(m_after, m_before, export_key.format("sum"))
    lat = sorted(x for r in results for x in r["latencies"])
    acked = sum(r["acked"] for r in results)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    row = {"phase": name, "accepted_spans_per_s": acked / sending_s,
           "committed_spans_per_s": committed / committing_s, "backlog_at_end": backlog,
           "p50_ms": pct(0.50), "p99_ms": pct(0.99), "requests": len(lat),
           "errors": sum(r["errors"] for r in results), "peak_rss_main_mib": sampler.peak_main / 2**20,
           "peak_rss_total_mib": sampler.peak_total / 2**20, "peak_pss_total_mib": sampler.peak_pss / 2**20,
           "peak_pss_main_mib": sampler.peak_pss_main / 2**20,
           "wall_s": elapsed,
           "commits": flushes, "spans_per_commit": committed / flushes if flushes else 0.0,
           "store_busy_fraction": commit_s / sending_s,
           "cpu_us_per_span": cpu / committed * 1e6 if committed else float("nan"),
           "parse_us_per_span": parse_us}
    row["x_parse"] = row["cpu_us_per_span"] / parse_us if parse_us else float("nan")
    of_parse = f" = x{row['x_parse']:.0f} of upb parse ({parse_us:.2f} us)" if parse_us else ""
    print(f"{name:<28} accepted {row['accepted_spans_per_s']:>9,.0f} spans/s | committed "
          f"{row['committed_spans_per_s']:>9,.0f} spans/s | export p50 {row['p50_ms']:6.1f} ms p99 "
          f"{row['p99_ms']:6.1f} ms | CPU {row['cpu_us_per_span']:.0f} us/span (all pipeline processes){of_parse} | "
          f"{row['requests']} calls, {row['errors']} errors | peak RSS "
          f"{row['peak_rss_main_mib']:.0f} MiB main, {row['peak_rss_total_mib']:.0f} MiB summed with workers "
          f"(PSS {row['peak_pss_total_mib']:.0f} MiB, main {row['peak_pss_main_mib']:.0f}) | "
          f"{row['commits']:.0f} group commits of {row['spans_per_commit']:.0f} spans, spool busy "
          f"{row['store_busy_fraction']:.0%}, {backlog:,.0f} spans still to insert at the end", flush=True)
    return row


def phase_args(doc: str, **extra: dict) -> argparse.Namespace:
    """The options every throughput benchmark takes (seconds per phase, client processes, senders each)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--threads", type=int, default=4, help="concurrent senders per client process")
    for flag, kw in extra.items():
        ap.add_argument(flag, **kw)
    return ap.parse_args()


CONFIG = Path(__file__).resolve().parent.parent / "config"


def store_only_with(processors_yaml: str, names: list[str]) -> str:
    """config/store-only.yaml with extra processors (their YAML, and their names placed after agent_semconv)."""
    text = (CONFIG / "store-only.yaml").read_text()
    pipeline = "processors: [memory_limiter, batch, agent_semconv]"
    if pipeline not in text or "  batch:\n" not in text:
        raise SystemExit("config/store-only.yaml changed shape; update bench/ingest.py:store_only_with")
    text = text.replace("  batch:\n", processors_yaml + "  batch:\n", 1)
    return text.replace(pipeline, f"processors: [memory_limiter, batch, agent_semconv, {', '.join(names)}]")


def start_pipeline(config: str | None = None, workers: str | None = None, extra_env: dict | None = None,
                   poll: float = 0.2, preexec_fn=None) -> dict:
    """`agent-sre run` in its own process (the embedded default, or ``config`` YAML text whose endpoints
    use the same environment variables), on free ports; returns ports, data dir and the process."""
    p = {"grpc": free_port(), "http": free_port(), "admin": free_port(), "metrics": free_port(),
         "prometheus": free_port()}
    data = tempfile.mkdtemp(prefix="agent-sre-bench-")
    env = {**os.environ, "AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{p['grpc']}",
           "AGENT_SRE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{p['http']}", "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{p['admin']}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{p['metrics']}", "AGENT_SRE_DATA": data,
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{p['prometheus']}"}
    if workers is not None:
        env["AGENT_SRE_RECEIVER_WORKERS"] = workers
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "agent_sre.pipeline.cli", "run"]
    if config is not None:
        (Path(data) / "pipeline.yaml").write_text(config)
        cmd += ["--config", str(Path(data) / "pipeline.yaml")]
    log = open(Path(data) / "pipeline.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p['admin']}/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit(f"pipeline did not start; see {log.name}") from None
            time.sleep(poll)
    return {**p, "data": data, "server": server, "env": env}


def stop_pipeline(pipeline: dict, keep: bool = False) -> None:
    """Stops the pipeline and removes its data directory (spool and store: GBs after a max-rate phase)
    unless ``keep`` (the caller reads it, then removes it)."""
    try:
        pipeline["server"].terminate()
        pipeline["server"].wait(timeout=60)
    finally:
        if not keep:
            shutil.rmtree(pipeline["data"], ignore_errors=True)


def calibrate(clients: int) -> float:
    """upb's parse time per span for the requests the clients send (all of them, seeds as in `_client`)."""
    bodies = [b for c in range(clients) for b in request_bodies(c, n_spans=SPANS_PER_REQUEST, base_ns=time.time_ns())]
    us = upb_parse_us_per_span(bodies)
    print(f"upb parse (one core, best of 15 passes over {len(bodies)} requests): {us:.2f} us/span", flush=True)
    return us


def _spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    v = sorted(values)
    return " – ".join(fmt.format(x) for x in (v[0], v[len(v) // 2], v[-1])) if len(v) > 2 else \
        " · ".join(fmt.format(x) for x in v)


def print_table(rows: list[dict], configs: list[str]) -> None:
    """Every phase, then one line per config with the issue's columns (markdown, to paste)."""
    print("\n| phase | committed spans/s | accepted spans/s | p99 export | CPU per committed span | upb parse "
          "| x parse | peak PSS all processes |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['committed_spans_per_s']:,.0f} | {r['accepted_spans_per_s']:,.0f} | "
              f"{r['p99_ms']:.0f} ms | {r['cpu_us_per_span']:.0f} µs | {r['parse_us_per_span']:.2f} µs | "
              f"×{r['x_parse']:.0f} | {r['peak_pss_total_mib']:.0f} MiB |")
    print("\n| config | committed spans/s at max, min – median – max | p99 at max / at half rate "
          "| PSS all processes | CPU per committed span | x upb parse |\n|---|---|---|---|---|---|")
    for label in configs:
        top = [r for r in rows if r["config"] == label and r["phase"].endswith("gRPC max")]
        half = [r for r in rows if r["config"] == label and "/s" in r["phase"]]
        p99h = _spread([r["p99_ms"] for r in half], "{:.0f}") + " ms" if half else "—"
        pss = [r["peak_pss_total_mib"] for r in top + half]
        print(f"| {label} | {_spread([r['committed_spans_per_s'] for r in top])} | "
              f"{_spread([r['p99_ms'] for r in top], '{:.0f}')} ms / {p99h} | {min(pss):.0f}–{max(pss):.0f} MiB | "
              f"{_spread([r['cpu_us_per_span'] for r in top])} µs | ×{_spread([r['x_parse'] for r in top])} |")


def main() -> None:
    args = phase_args(__doc__, **{"--workers": {"help": "override receiver workers (AGENT_SRE_RECEIVER_WORKERS)"},
                                  "--rounds": {"type": int, "default": 1, "help": "interleaved rounds of both configs"},
                                  "--full": {"action": "store_true", "help": "also an HTTP/protobuf max-rate phase"},
                                  "--no-half": {"action": "store_true", "help": "skip the phase paced at half rate"},
                                  "--json": {"help": "also write the results to this file"}})
    configs = [("default (full SRE loop)", None), ("store-only", (CONFIG / "store-only.yaml").read_text())]
    print(f"{args.clients} client processes x {args.threads} senders, {args.seconds:g}s per phase, "
          f"{SPANS_PER_REQUEST} spans/request, {os.cpu_count()} cores, {args.rounds} interleaved round(s)", flush=True)
    rows = []
    for _ in range(args.rounds):
        for label, config in configs:
            parse_us = calibrate(args.clients)  # a quiet moment: no pipeline, no clients
            p = start_pipeline(config, workers=args.workers)
            try:
                common = (p["admin"], p["server"].pid, args.seconds, args.clients, args.threads, p["metrics"])
                row = run_phase(f"{label}: gRPC max", "grpc", p["grpc"], *common, parse_us=parse_us)
                rows.append({"config": label, **row})
                if not args.no_half:
                    half = row["committed_spans_per_s"] / 2
                    rows.append({"config": label, **run_phase(f"{label}: gRPC at {half:,.0f}/s", "grpc",
                                                              p["grpc"], *common, rate=half, parse_us=parse_us)})
                if args.full:
                    rows.append({"config": label, **run_phase(f"{label}: HTTP max", "http", p["http"], *common,
                                                              parse_us=parse_us)})
            finally:
                stop_pipeline(p)
    print_table(rows, [label for label, _ in configs])
    median = {}
    for label, _ in configs:
        mine = sorted(r["committed_spans_per_s"] for r in rows if r["config"] == label
                      and r["phase"].endswith("gRPC max"))
        median[label] = mine[len(mine) // 2]
    full, bare = median[configs[0][0]], median[configs[1][0]]
    print(f"\nthe SRE loop costs {1 - full / bare:.1%} of the store-only throughput (full / store-only = "
          f"{full / bare:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))

if __name__ == "__main__":
    main()
