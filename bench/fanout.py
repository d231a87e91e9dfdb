"""Fan-out benchmark: committed spans/s with 1, 3 and 6 exporters on, and with one blackholed;
the pipeline's peak RSS when that exporter's queue is full.

Every run is `agent-sre run` on config/store-only.yaml (duckdb, the durable point) plus N
`otlphttp` exporters (protobuf, gzip) to local sinks (another process that reads each request and
answers 200), loaded with gRPC at max rate as bench/ingest.py does (2 client processes x 4
senders, 512-span requests); and once with the `file` exporter alone (OTLP/JSON lines).  "Blackholed" is 3 exporters of which one
points at a socket that accepts connections and never answers: its queue (20,000 spans) fills and
then refuses, while the receiver and the other exporters should keep their pace.

    .venv/bin/python bench/fanout.py [--seconds 20] [--setups 1,3,6,blackholed,file] [--rounds 1]

With ``--rounds N`` every round runs duckdb alone and then each setup, and the end prints each setup's
change against the same round's duckdb-alone figure (min / median / max): the box's own drift between
rounds does not enter a comparison.
"""

from __future__ import annotations

import http.server
import multiprocessing as mp
import shutil
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import free_port, phase_args, pipeline_metrics, run_phase, start_pipeline, stop_pipeline  # noqa: E402

SENT_S0 = 'agent_sre_exporter_sent_spans_total{exporter="otlphttp/s0"}'


def _serve_sinks(ports: list[int], blackhole: int | None, ready) -> None:
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    for port in ports:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if blackhole is not None:  # listens, so connections succeed, and never reads or answers
        hole = socket.socket()
        hole.bind(("127.0.0.1", blackhole))
        hole.listen(1024)
    ready.set()
    threading.Event().wait()


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def config(sink_ports: list[int], blackhole: int | None, file_dir: str, with_file: bool) -> str:
    text = (Path(__file__).resolve().parent.parent / "config" / "store-only.yaml").read_text()
    names = ["duckdb"]
    blocks = []
    targets = [(f"otlphttp/s{i}", p) for i, p in enumerate(sink_ports)]
    if blackhole is not None:
        targets.append(("otlphttp/blackholed", blackhole))
    for name, port in targets:
        blocks.append(f"  {name}:\n    endpoint: http://127.0.0.1:{port}\n    timeout: 2s\n")
        names.append(name)
    if with_file:
        blocks.append(f"  file:\n    path: {file_dir}/traces.jsonl\n    rotation: {{max_megabytes: 200, max_backups: 1}}\n")
        names.append("file")
    if "exporters: [duckdb]" not in text or "\nextensions:" not in text:
        raise SystemExit("config/store-only.yaml changed shape; update bench/fanout.py")
    text = text.replace("\nextensions:", "\n" + "".join(blocks) + "\nextensions:", 1)
    return text.replace("exporters: [duckdb]", f"exporters: [{', '.join(names)}]", 1)  # the traces pipeline


SETUPS = {  # --setups key: (name, sinks, one blackholed, with the file exporter)
    "1": ("1 exporter (otlphttp)", 1, False, False), "3": ("3 exporters (otlphttp)", 3, False, False),
    "6": ("6 exporters (otlphttp)", 6, False, False), "blackholed": ("3 exporters, one blackholed", 2, True, False),
    "file": ("1 exporter (file: OTLP/JSON lines)", 0, False, True),
}


def main() -> None:
    args = phase_args(__doc__, **{
        "--setups": {"default": ",".join(SETUPS), "help": f"which, comma-separated, of {', '.join(SETUPS)}"},
        "--rounds": {"type": int, "default": 1, "help": "rounds of duckdb alone then each setup (interleaved)"},
    })
    setups = [SETUPS[k] for k in args.setups.split(",")]
    ctx = mp.get_context("spawn")
    changes: dict[str, list[float]] = {name: [] for name, *_ in setups}
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_no} of {args.rounds}", flush=True)
        baseline = None
        for name, sinks, holed, with_file in [("0 exporters besides duckdb", 0, False, False), *setups]:
            committed = _setup(ctx, args, name, sinks, holed, with_file)
            baseline = baseline or committed
            if name in changes:
                changes[name].append((committed - baseline) / baseline)
            print(f"  => {committed:,.0f} committed spans/s ({(committed - baseline) / baseline:+.1%} against duckdb "
                  f"alone, same round)", flush=True)
    if args.rounds > 1:
        print("against duckdb alone in the same round, min / median / max:")
        for name, values in changes.items():
            values.sort()  # the median of an even count is the mean of the middle two (it took the upper one)
            print(f"  {name:40} {values[0]:+.1%} / {statistics.median(values):+.1%} / {values[-1]:+.1%}")


def _setup(ctx, args, name: str, sinks: int, holed: bool, with_file: bool) -> float:
    """One phase at max rate with this setup: its committed spans/s."""
    ports = [free_port() for _ in range(sinks)]
    hole = free_port() if holed else None
    ready = ctx.Event()
    sink_proc = ctx.Process(target=_serve_sinks, args=(ports, hole, ready), daemon=True)
    sink_proc.start()
    ready.wait(30)
    files = tempfile.mkdtemp(prefix="agent-sre-fanout-")
    p = start_pipeline(config(ports, hole, files, with_file))
    try:
        common = (p["admin"], p["server"].pid, args.seconds, args.clients, args.threads, p["metrics"])
        sink_cpu = _cpu(sink_proc.pid)
        row = run_phase(f"gRPC max rate, {name}", "grpc", p["grpc"], *common)
        m = pipeline_metrics(p["metrics"])
        if sinks:  # the sinks share the 2 cores: what they spent reading the requests is not the pipeline's
            sent = sum(v for k, v in m.items() if k.startswith("agent_sre_exporter_sent_spans_total{exporter=\"otlphttp/"))
            spent = _cpu(sink_proc.pid) - sink_cpu
            print(f"  sinks: {spent:.1f} s of CPU for {sent:,.0f} spans sent ({spent / max(sent, 1) * 1e6:.2f} µs/span)",
                  flush=True)
        if holed:
            key = 'agent_sre_exporter_{}{{exporter="otlphttp/blackholed"}}'
            print(f"  blackholed exporter: queue {m.get(key.format('queue_size'), 0):,.0f} of "
                  f"{m.get(key.format('queue_capacity'), 0):,.0f} spans, "
                  f"{m.get(key.format('enqueue_failed_spans_total'), 0):,.0f} spans refused by its full queue; "
                  f"otlphttp/s0 sent {m.get(SENT_S0, 0):,.0f}", flush=True)
        print(f"  peak RSS {row['peak_rss_main_mib']:.0f} MiB (pipeline process)", flush=True)
        return row["committed_spans_per_s"]
    finally:
        stop_pipeline(p)
        sink_proc.terminate()
        shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
