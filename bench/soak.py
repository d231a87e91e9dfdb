"""Soak benchmark (issue #11): overload under a memory limit, and a full disk, on the embedded default.

Phase A (overload): `agent-sre run` on config/default.yaml (the whole SRE loop; ports and data dir
moved, `memory_limiter.limit_mib` set to --limit-mib, receiver `workers` to --workers) is driven for
--duration seconds by more client processes than it can absorb, half OTLP/HTTP and half gRPC, each
sender retrying a refused request (503/429 + Retry-After, UNAVAILABLE/RESOURCE_EXHAUSTED + RetryInfo,
connection errors) with the same span ids until it is acknowledged, as the OTel SDK does.  Every
span id is unique (client, sender, request number, index), so what was acknowledged is known
exactly.  The RSS of every pipeline process is sampled every 100 ms.  At the end the clients stop,
the pipeline drains and is stopped (SIGTERM), and the store is opened read-only: every acknowledged
span id must be in it.  With --cgroup-mib the pipeline runs in a memory cgroup of that size (no swap),
as in a container with that memory limit: the kernel counts its page cache and kernel memory too, and
kills it if nothing is left to reclaim; its peak and OOM kills are reported.

Phase B (disk full): the bench re-executes itself in a private mount namespace (`unshare`) and puts
the store on a tmpfs of --disk-mib (the memory limit as shipped: this phase is about the disk).
Paced clients send; a filler file takes all free space (and keeps taking what is freed); the clients
must get retryable refusals and GET / on the admin port must answer 503 with a `problems` entry;
then the filler is deleted and the pipeline must recover by itself (health 200, new spans
acknowledged and stored) without a restart; every acknowledged span must be stored.

    .venv/bin/python bench/soak.py [--duration 600] [--phase a|b|both] [--clients 6] [--threads 4]
                                   [--limit-mib 256] [--workers 0] [--disk-mib 512] [--b-rate 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_spans import make_request  # noqa: E402
from bench.ingest import (  # noqa: E402
    CONFIG,
    METHOD,
    SPANS_PER_REQUEST,
    RssSampler,
    count_spans,
    pipeline_metrics,
    start_pipeline,
    stop_pipeline,
)

_MIB = 1 << 20
_IN_NAMESPACE = "AGENT_SRE_SOAK_MOUNT_NS"
_SPAN_MARK = b"\xa5\x5a\xc3\x3c\x96\x69"  # sentinel span id prefix in the template, replaced per request
_TRACE_MARK = b"\x7e\xe7\x18\x81\x42\x24\xbd\xdb\x5a\xa5\x3c\xc3\x99\x66"
_HTTP_RETRYABLE = {429, 502, 503, 504}  # the OTLP/HTTP spec's retryable statuses
_GRPC_RETRYABLE = {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS",
                   "RESOURCE_EXHAUSTED"}
_REFUSALS = {"http 503", "http 429", "grpc UNAVAILABLE", "grpc RESOURCE_EXHAUSTED"}  # the answers overload may give


class RequestTemplate:
    """One pre-serialised 512-span request whose span and trace ids are patched per request, so each
    request carries unique ids without building a protobuf: span id = client, sender, seq, index."""

    def __init__(self, seed: int):
        req = make_request(SPANS_PER_REQUEST, seed=seed, base_ns=time.time_ns())
        for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
            span.span_id = _SPAN_MARK + i.to_bytes(2, "big")
            span.trace_id = _TRACE_MARK + (i // 16).to_bytes(2, "big")
        self.body = np.frombuffer(req.SerializeToString(), dtype=np.uint8)
        raw = self.body.tobytes()
        span_at = np.array(_find_all(raw, _SPAN_MARK), dtype=np.int64)
        trace_at = np.array(_find_all(raw, _TRACE_MARK), dtype=np.int64)
        if len(span_at) != SPANS_PER_REQUEST or len(trace_at) != SPANS_PER_REQUEST:
            raise SystemExit("span id sentinel not unique in the template; change _SPAN_MARK/_TRACE_MARK")
        self._span_cells = (span_at[:, None] + np.arange(6)).ravel()
        self._trace_cells = (trace_at[:, None] + np.arange(7)).ravel()

    def render(self, client: int, sender: int, seq: int) -> bytes:
        prefix = np.frombuffer(bytes([client, sender]) + seq.to_bytes(4, "big"), dtype=np.uint8)
        body = self.body.copy()
        body[self._span_cells] = np.tile(prefix, SPANS_PER_REQUEST)
        body[self._trace_cells] = np.tile(np.concatenate([[0x7E], prefix]), SPANS_PER_REQUEST)
        return body.tobytes()


def _find_all(raw: bytes, needle: bytes) -> list[int]:
    found, at = [], raw.find(needle)
    while at >= 0:
        found.append(at)
        at = raw.find(needle, at + 1)
    return found


class Transport:
    """Sends one body; returns (acknowledged, answer label, retryable, retry delay or None)."""

    def __init__(self, protocol: str, port: int):
        self.protocol, self.port = protocol, port
        if protocol == "grpc":
            import grpc
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

            # One TCP connection per sender (gRPC would share one per process), as separate agents would.
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            self._call = channel.unary_unary(METHOD, response_deserializer=ExportTraceServiceResponse.FromString)
        else:
            self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.rejected = 0  # spans a 200 answer rejected in partial_success

    def send(self, body: bytes) -> tuple[bool, str, bool, float | None]:
        return self._grpc(body) if self.protocol == "grpc" else self._http(body)

    def _grpc(self, body: bytes) -> tuple[bool, str, bool, float | None]:
        import grpc

        try:
            response = self._call(body, timeout=30)
        except grpc.RpcError as exc:
            code = exc.code().name
            return False, f"grpc {code}", code in _GRPC_RETRYABLE, _retry_info(exc)
        self.rejected += response.partial_success.rejected_spans
        return True, "grpc OK", False, None

    def _http(self, body: bytes) -> tuple[bool, str, bool, float | None]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        try:
            self._conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = self._conn.getresponse()
            answer = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()  # reconnects on the next request
            return False, f"http connection {type(exc).__name__}", True, None
        if resp.status == 200:
            self.rejected += ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans
            return True, "http 200", False, None
        after = resp.getheader("Retry-After")
        return False, f"http {resp.status}", resp.status in _HTTP_RETRYABLE, float(after) if after else None


def _retry_info(exc) -> float | None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _sender(transport: Transport, template: RequestTemplate, client: int, k: int, interval: float,
            stop, abandon, tally: dict) -> None:
    """Send requests until ``stop``; retry each refused one (same ids) until acknowledged or ``abandon``."""
    seqs, times, refused_at, answers = [], [], [], Counter()
    seq, abandoned, lost = 1, 0, 0  # from 1: an all-zero span id is invalid OTLP
    next_at = time.monotonic() + random.random() * interval
    while not stop.is_set():
        if interval:
            stop.wait(max(0.0, next_at - time.monotonic()))
            next_at += interval
        body, attempt = template.render(client, k, seq), 0
        while True:
            ok, answer, retryable, delay = transport.send(body)
            if ok:
                seqs.append(seq)
                times.append(time.time())
                break
            answers[answer] += 1
            refused_at.append(time.time())
            if not retryable:
                lost += 1
                break
            if abandon.is_set():
                abandoned += 1
                break
            # The server's delay (Retry-After / RetryInfo), else exponential backoff; jittered, as the SDKs do.
            base = delay if delay is not None else min(5.0, 0.1 * 2 ** attempt)
            abandon.wait(base * random.uniform(0.8, 1.2))
            attempt += 1
        seq += 1
    tally[k] = {"seqs": np.array(seqs, dtype=np.uint32), "times": np.array(times), "answers": answers,
                "refused_at": np.array(refused_at),
                "abandoned": abandoned, "lost": lost, "rejected": transport.rejected}


def _client(protocol: str, port: int, client: int, threads: int, interval: float, stop, abandon, out) -> None:
    """One client process: ``threads`` senders, each with its own connection."""
    template = RequestTemplate(seed=client)
    tally: dict[int, dict] = {}
    senders = [threading.Thread(target=_sender, args=(Transport(protocol, port), template, client, k, interval,
                                                       stop, abandon, tally)) for k in range(threads)]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    out.put({"client": client, "protocol": protocol, "senders": tally})


class Clients:
    """The client processes of one phase; ``stop`` ends sending, ``finish`` collects what they saw."""

    def __init__(self, ports: dict, clients: int, threads: int, interval: float = 0.0):
        ctx = mp.get_context("spawn")
        self.stop, self.abandon, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._procs = [ctx.Process(target=_client, args=(proto, ports[proto], c, threads, interval, self.stop,
                                                         self.abandon, self._out))
                       for c in range(clients) for proto in [("http", "grpc")[c % 2]]]
        for p in self._procs:
            p.daemon = True  # ended with the bench if it fails
        for p in self._procs:
            p.start()

    def finish(self, grace: float = 60.0) -> list[dict]:
        """Stop sending; requests in hand keep retrying for up to ``grace`` seconds, then are abandoned."""
        self.stopped_at = time.time()
        self.stop.set()
        timer = threading.Timer(grace, self.abandon.set)
        timer.start()
        results = [self._out.get(timeout=grace + 120) for _ in self._procs]
        timer.cancel()
        for p in self._procs:
            p.join()
        return results


def acknowledged(results: list[dict]) -> pa.Table:
    """(client, sender, seq, acked_at) of every acknowledged request."""
    parts = [pa.table({"client": np.full(len(s["seqs"]), r["client"], dtype=np.uint8),
                       "sender": np.full(len(s["seqs"]), k, dtype=np.uint8), "seq": s["seqs"],
                       "acked_at": s["times"].astype(np.float64)})
             for r in results for k, s in r["senders"].items()]
    return pa.concat_tables(parts)


def answers(results: list[dict]) -> Counter:
    total: Counter = Counter()
    for r in results:
        for s in r["senders"].values():
            total.update(s["answers"])
    return total


def client_sum(results: list[dict], key: str) -> int:
    return sum(s[key] for r in results for s in r["senders"].values())


def verify_store(db: Path, acked: pa.Table, since: float = 0.0) -> dict:
    """Which acknowledged span ids the stopped pipeline's store holds (read-only, spool included)."""
    from agent_sre.pipeline.storage.store import open_read_only

    con = open_read_only(db)
    con.register("acked", acked)
    want = ("SELECT printf('%02x%02x%08x%04x', client, sender, seq, i) AS span_id, acked_at "
            f"FROM acked, range({SPANS_PER_REQUEST}) t(i)")
    con.execute(f"CREATE TEMP TABLE want AS {want}")
    con.execute("CREATE TEMP TABLE stored AS SELECT span_id, count(*) AS copies FROM spans GROUP BY span_id")
    found, missing, dup, acked_since, missing_since = con.execute(
        "SELECT count(s.span_id), count(*) FILTER (WHERE s.span_id IS NULL), coalesce(sum(s.copies - 1), 0), "
        "count(*) FILTER (WHERE acked_at >= $1), count(*) FILTER (WHERE acked_at >= $1 AND s.span_id IS NULL) "
        "FROM want w LEFT JOIN stored s USING (span_id)", [since]).fetchall()[0]
    sample = [r[0] for r in con.execute("SELECT span_id FROM want ANTI JOIN stored USING (span_id) LIMIT 5").fetchall()]
    extra = con.execute("SELECT count(*) FROM stored ANTI JOIN want USING (span_id)").fetchall()[0][0]
    con.close()
    return {"acked_spans": acked.num_rows * SPANS_PER_REQUEST, "stored": found, "missing": missing,
            "missing_sample": sample, "duplicates": int(dup), "stored_not_acked": extra,
            "acked_since": acked_since, "missing_since": missing_since}


def soak_config(limit_mib: int | None, workers: int, spike_mib: int | None = None,
                store: dict | None = None, inflight_mib: float | None = None,
                settings: list[str] | tuple[str, ...] = ()) -> str:
    """config/default.yaml (its endpoints and data dir come from the environment) with the memory limit
    (None: the shipped one), the receiver workers, and ``settings`` ("dotted.path=YAML value", e.g.
    ``processors.cost.max_task_accounts=10000``) applied last."""
    cfg = yaml.safe_load((CONFIG / "default.yaml").read_text())
    for setting in settings:
        path, _, value = setting.partition("=")
        *parents, leaf = path.split(".")
        node = cfg
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = yaml.safe_load(value)
    if limit_mib is not None:
        # The Collector's guidance: a spike limit of ~20 % for bursty loads; with a limit this small the
        # pipeline's own warm footprint (~220 MiB held with the whole loop) needs it smaller (--spike-mib).
        cfg["processors"]["memory_limiter"] = {"check_interval": "1s", "limit_mib": limit_mib,
                                               "spike_limit_mib": spike_mib if spike_mib is not None else limit_mib // 5}
    cfg["receivers"]["otlp"]["workers"] = workers
    if inflight_mib is not None:
        cfg["receivers"]["otlp"]["limits"] = {"max_inflight_mib": inflight_mib}
    cfg["exporters"]["duckdb"].update(store or {})  # e.g. a smaller buffer pool for a small memory budget
    return yaml.safe_dump(cfg, sort_keys=False)


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def refusals_by_reason(metrics: dict[str, float]) -> str:
    """The receivers' admission refusals (requests refused before reading), per reason."""
    prefix = "agent_sre_receiver_admission_refused_requests_total{"
    reasons: Counter = Counter()
    for key, value in metrics.items():
        if key.startswith(prefix):
            reasons[key.split('reason="')[1].split('"')[0]] += int(value)
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(reasons.items())) or "none"


def progress(p: dict, sampler: RssSampler, started: float, every: float, until: float) -> None:
    """A line every ``every`` seconds while a long phase runs."""
    accepted = "agent_sre_receiver_accepted_spans_total"
    while time.monotonic() < until:
        time.sleep(min(every, max(0.0, until - time.monotonic())))
        try:
            m = pipeline_metrics(p["metrics"])
        except OSError:
            continue
        print(f"  {time.monotonic() - started:6.0f}s  accepted {metric_sum(m, accepted):>12,.0f} spans  "
              f"RSS now {summed_rss(p) / _MIB:4.0f} MiB, peak {sampler.peak_total / _MIB:4.0f} MiB  limiter "
              f"refusing: {metric_sum(m, 'agent_sre_processor_memory_limiter_refusing'):.0f}  admission "
              f"refusals: {refusals_by_reason(m)}", flush=True)


def summed_rss(p: dict, held: bool = False) -> int:
    """Summed RSS (bytes) of the pipeline's processes; ``held``: their held memory, as the memory limiter
    counts it (RssAnon + RssShmem)."""
    import psutil

    from agent_sre.processors.memory_limiter.factory import held_bytes

    proc = psutil.Process(p["server"].pid)
    return sum(held_bytes(x) if held else x.memory_info().rss for x in [proc, *proc.children(recursive=True)])


@contextmanager
def pipeline(config: str, extra_env: dict | None = None, preexec_fn=None) -> Iterator[dict]:
    """start_pipeline, and its process ended however the phase ends (the phase stops it itself)."""
    p = start_pipeline(config, extra_env=extra_env, preexec_fn=preexec_fn)
    try:
        yield p
    finally:
        if p["server"].poll() is None:
            p["server"].kill()
            p["server"].wait()
        shutil.rmtree(p["data"], ignore_errors=True)


def phase_a(args) -> dict:
    store = {k: v for k, v in (("memory_limit", args.store_memory_limit),
                               ("checkpoint_threshold", args.checkpoint_threshold)) if v}
    cgroup = MemoryCgroup(args.cgroup_mib) if args.cgroup_mib else None
    try:
        with pipeline(soak_config(args.limit_mib, args.workers, args.spike_mib, store, args.inflight_mib, args.set),
                      preexec_fn=cgroup.enter if cgroup else None) as p:
            a = _overload(args, p)
        if cgroup:
            a["cgroup"], a["cgroup_mib"] = cgroup.report(), args.cgroup_mib
        return a
    finally:
        if cgroup:
            cgroup.remove()


class MemoryCgroup:
    """A memory cgroup of ``mib`` (no swap) for the pipeline's processes, as a container's memory limit: the
    kernel counts their anonymous memory, the page cache they fill (the store's and the spool's writes) and
    the kernel memory they use, reclaims page cache and mapped library pages at the limit, and kills a
    process (OOM) when nothing is left to reclaim.  cgroup v1's memory controller or cgroup v2, whichever
    this process's memory cgroup is under (root only)."""

    def __init__(self, mib: int):
        lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
        v1 = [path for _, controllers, path in lines if "memory" in controllers.split(",")]
        self.v2 = not v1  # only the unified hierarchy
        base = (Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/") if v1
                else Path("/sys/fs/cgroup") / lines[0][2].lstrip("/"))
        self.dir = base / f"agent-sre-soak-{os.getpid()}"
        self.dir.mkdir()
        limit = str(mib << 20)
        if self.v2:
            (self.dir / "memory.max").write_text(limit)
            (self.dir / "memory.swap.max").write_text("0")
        else:
            (self.dir / "memory.limit_in_bytes").write_text(limit)
            if (self.dir / "memory.memsw.limit_in_bytes").exists():
                (self.dir / "memory.memsw.limit_in_bytes").write_text(limit)

    def enter(self) -> None:  # in the child, before exec
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> dict:
        def read(name: str) -> str:
            return (self.dir / name).read_text()
        if self.v2:
            events = dict(line.split() for line in read("memory.events").splitlines())
            return {"peak": int(read("memory.peak")) if (self.dir / "memory.peak").exists() else None,
                    "oom_kills": int(events.get("oom_kill", 0)), "at_limit": int(events.get("max", 0))}
        control = dict(line.split() for line in read("memory.oom_control").splitlines())
        return {"peak": int(read("memory.max_usage_in_bytes")), "oom_kills": int(control.get("oom_kill", 0)),
                "at_limit": int(read("memory.failcnt"))}

    def remove(self) -> None:
        try:
            self.dir.rmdir()
        except OSError as exc:
            print(f"memory cgroup {self.dir} not removed: {exc}", file=sys.stderr)


def _overload(args, p: dict) -> dict:
    baseline = summed_rss(p) / _MIB
    print(f"phase A: pipeline up, idle RSS {baseline:.0f} MiB (all processes); limit {args.limit_mib} MiB, "
          f"soft limit {args.limit_mib - (args.spike_mib if args.spike_mib is not None else args.limit_mib // 5)} MiB; {args.clients} clients x {args.threads} "
          f"senders for {args.duration:g}s", flush=True)
    sampler = RssSampler(p["server"].pid, limit_bytes=args.limit_mib * _MIB)
    sampler.start()
    started, started_at = time.monotonic(), time.time()
    clients = Clients(p, args.clients, args.threads)
    progress(p, sampler, started, 30.0, started + args.duration)
    rss_at_stop = summed_rss(p)
    results = clients.finish()
    sending_s = clients.stopped_at - started_at
    metrics = pipeline_metrics(p["metrics"])
    committed = drained(p["admin"], timeout=600)  # the query API reads its writes: waits for the spool
    drained_at = time.time()
    rss_drained = summed_rss(p)
    recovery = recover(p, args.recovery_seconds)
    sampler.stop()
    stop_pipeline(p, keep=True)  # read below; removed as the phase's pipeline ends
    acked = acknowledged([*results, recovery["result"]])
    check = verify_store(Path(p["data"]) / "spans.duckdb", acked)
    return {"baseline_mib": baseline, "sampler": sampler, "results": results, "acked": acked, "check": check,
            "sending_s": sending_s, "stopped_at": clients.stopped_at, "drained_at": drained_at, "metrics": metrics,
            "committed": committed,
            "exit": p["server"].returncode, "started_at": started_at,
            "rss_at_stop": rss_at_stop, "rss_drained": rss_drained, "recovery": recovery}


_PROBE_CLIENT = 200  # the recovery probe's client number in its span ids (the phase's clients count from 0)


def recover(p: dict, seconds: float) -> dict:
    """After the overload and the drain: does the pipeline take data again?  ``seconds`` of idle (what it
    holds then, as the memory limiter counts it), then one OTLP/HTTP sender offers a request every 0.25 s
    for ``seconds``: how many were taken at the first try, and how long until the first was."""
    time.sleep(seconds)
    held = summed_rss(p, held=True)
    transport, template = Transport("http", p["http"]), RequestTemplate(seed=_PROBE_CLIENT)
    seqs, times, answers, first_try, offered = [], [], Counter(), 0, 0
    started, started_wall = time.monotonic(), time.time()
    while time.monotonic() - started < seconds:
        offered += 1
        ok, answer, _, _ = transport.send(template.render(_PROBE_CLIENT, 0, offered))
        answers[answer] += 1
        if ok:
            first_try += 1
            seqs.append(offered)
            times.append(time.time())
        time.sleep(0.25)
    first = times[0] - started_wall if times else None
    result = {"client": _PROBE_CLIENT, "protocol": "http",
              "senders": {0: {"seqs": np.array(seqs, dtype=np.uint32), "times": np.array(times), "answers": Counter(),
                              "refused_at": np.array([]), "abandoned": 0, "lost": 0, "rejected": transport.rejected}}}
    return {"held_idle": held, "offered": offered, "taken": first_try, "answers": answers,
            "first_s": first, "result": result}


def _when_over(a: dict, over: list[tuple[float, int]]) -> str:
    """When the samples over the limit came: seconds into the load, and in which part of it (while the
    clients send, while the spool drains after, or in the idle and recovery probe after that)."""
    if not over:
        return ""

    def part(at: float) -> str:
        return "sending" if at <= a["stopped_at"] else "drain" if at <= a["drained_at"] else "after"
    shown = ", ".join(f"{at - a['started_at']:.1f}s {part(at)} {held / _MIB:.0f} MiB" for at, held in over[:8])
    return f" ({shown}{', ...' if len(over) > 8 else ''})"


def report_a(a: dict, limit_mib: int) -> None:
    s, check, got = a["sampler"], a["check"], answers(a["results"])
    acked_at = a["acked"].column("acked_at").to_numpy()
    in_window = int((acked_at <= a["stopped_at"]).sum()) * SPANS_PER_REQUEST
    unexpected = {k: v for k, v in got.items() if k not in _REFUSALS}
    per_proc = ", ".join(f"{v / _MIB:.0f}" for v in s.peak_each.values())
    rows = [
        ("memory limit (summed held memory, RssAnon + RssShmem, of all processes)", f"{limit_mib} MiB"),
        ("idle RSS before the load", f"{a['baseline_mib']:.0f} MiB"),
        ("max summed held memory / RSS (100 ms samples)", f"{s.peak_held / _MIB:.0f} / {s.peak_total / _MIB:.0f} MiB"),
        ("max RSS per process", f"{per_proc} MiB ({len(s.peak_each)} processes)"),
        ("samples at/over the limit", f"{s.samples_over} of {s.samples}{_when_over(a, s.over)}"),
        ("summed RSS when sending stopped / after the drain (soft limit)",
         f"{a['rss_at_stop'] / _MIB:.0f} / {a['rss_drained'] / _MIB:.0f} MiB ({limit_mib - limit_mib // 5} MiB)"),
        ("acknowledged while sending", f"{in_window:,} spans = {in_window / a['sending_s']:,.0f} spans/s over "
                                       f"{a['sending_s']:.0f}s (+{check['acked_spans'] - in_window:,} retried after)"),
        ("spans/s acknowledged per 30 s window: min / median / max", _windows(acked_at, a["started_at"],
                                                                               a["stopped_at"])),
        ("refused answers (client view)", ", ".join(f"{k}: {v:,}" for k, v in sorted(got.items())) or "none"),
        ("non-retryable / unexpected answers", ", ".join(f"{k}: {v:,}" for k, v in unexpected.items()) or "none"),
        ("pipeline: admission refusals by reason", refusals_by_reason(a["metrics"])),
        ("requests lost (non-retryable) / abandoned at the end",
         f"{client_sum(a['results'], 'lost')} / {client_sum(a['results'], 'abandoned')}"),
        ("spans rejected in partial_success", f"{client_sum(a['results'], 'rejected')}"),
        ("acknowledged span ids stored", f"{check['stored']:,} of {check['acked_spans']:,} "
                                          f"(missing {check['missing']:,} {check['missing_sample']})"),
        ("stored twice (retried after a lost answer) / stored not acked",
         f"{check['duplicates']:,} / {check['stored_not_acked']:,}"),
        ("pipeline exit code after SIGTERM", str(a["exit"])),
    ]
    r = a["recovery"]
    rows[6:6] = [
        ("held memory after the drain, idle (soft limit / refusing line)",
         f"{r['held_idle'] / _MIB:.0f} MiB ({limit_mib - limit_mib // 5} / {limit_mib - (limit_mib // 5) / 2:.0f} MiB)"),
        ("afterwards, one sender at 4 requests/s: taken at the first try",
         f"{r['taken']} of {r['offered']}" + (f", the first after {r['first_s']:.1f}s" if r["first_s"] is not None
                                               else ", none") + f" ({', '.join(f'{k}: {v}' for k, v in r['answers'].items())})"),
    ]
    if "cgroup" in a:
        c = a["cgroup"]
        rows.insert(5, (f"in a {a['cgroup_mib']} MiB memory cgroup: peak usage (with page cache) / OOM kills / at its limit",
                        f"{(c['peak'] or 0) / _MIB:.0f} MiB / {c['oom_kills']} / {c['at_limit']:,} times"))
    _table("Phase A: overload with a memory limit", rows)


def _windows(acked_at: np.ndarray, start: float, stop: float, width: float = 30.0) -> str:
    edges = np.arange(start, stop + 1e-9, width)
    if len(edges) < 2:
        return "run shorter than one window"
    rates = np.histogram(acked_at, bins=edges)[0] * SPANS_PER_REQUEST / width
    return f"{rates.min():,.0f} / {np.median(rates):,.0f} / {rates.max():,.0f} ({len(rates)} windows)"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(flush=True)


def _reexec_in_mount_namespace() -> None:
    """Phase B mounts a tmpfs; in a private mount namespace it is gone with the bench and nobody else
    sees it (as root, or as the mapped root of a user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("phase B needs unshare(1) (util-linux) to mount a small tmpfs for the store")
    cmd = [unshare, "--mount", "--propagation", "private", *([] if os.geteuid() == 0 else ["--map-root-user"])]
    os.execve(unshare, [*cmd, sys.executable, *sys.argv], {**os.environ, _IN_NAMESPACE: "1"})


def drained(admin: int, timeout: float) -> int | None:
    """Spans in the store once the spool is inserted (asked until the query API's answer has no
    ``pending_spans``), or None if it is still behind after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return count_spans(admin, patience_s=max(0.0, deadline - time.monotonic()))
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
        except RuntimeError:  # still spans pending at the deadline
            return None
        time.sleep(1)
    return None


def mount_tmpfs(size_mib: int) -> Path:
    disk = Path(tempfile.mkdtemp(prefix="agent-sre-soak-disk-"))
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"phase B: cannot mount a tmpfs here: {out.stderr.strip()}")
    return disk


class DiskFiller(threading.Thread):
    """Keeps a filesystem full: takes every free byte, and takes again what others free, until stopped
    (then the file is deleted: the space is back)."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.path = directory / "filler"
        self.full_at: float | None = None  # when the first write failed with ENOSPC
        self.size = 0
        self._halt = threading.Event()

    def run(self) -> None:
        chunk = bytes(_MIB)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._halt.is_set():
                try:
                    self.size += os.write(fd, chunk)
                except OSError:  # ENOSPC: the disk is full; try again shortly
                    self.full_at = self.full_at or time.time()
                    self._halt.wait(0.05)
        finally:
            os.close(fd)

    def free(self) -> float:
        self._halt.set()
        self.join()
        self.path.unlink()
        return time.time()


class HealthWatch(threading.Thread):
    """GET / on the admin port every 100 ms; keeps each change of status with its time and problems."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/"
        self.changes: list[tuple[float, int, dict | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            status, body = self._get()
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.time(), status, body.get("problems")))

    def _get(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def wait_for(self, status: int, after: float, timeout: float) -> tuple[float, dict | None] | None:
        """When health first showed ``status`` at or after ``after`` (and its problems), or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for at, got, problems in reversed(self.changes):
                if got == status and (at >= after or self.changes[-1][1] == status):
                    return max(at, after), problems
                if at < after:
                    break
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self._halt.set()


def phase_b(args) -> dict:
    disk = mount_tmpfs(args.disk_mib)
    try:
        # The shipped memory limit: this phase is about the disk, not memory.
        with pipeline(soak_config(None, args.workers), extra_env={"AGENT_SRE_DATA": str(disk)}) as p:
            return _disk_full(args, p, disk)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        os.rmdir(disk)


def _disk_full(args, p: dict, disk: Path) -> dict:
    senders = 2 * 2
    interval = senders * SPANS_PER_REQUEST / args.b_rate
    print(f"phase B: store on a {args.disk_mib} MiB tmpfs, 2 clients x 2 senders at {args.b_rate:,} spans/s; "
          f"{args.b_steady:g}s steady, then the disk full for {args.full_seconds:g}s", flush=True)
    health = HealthWatch(p["admin"])
    health.start()
    clients = Clients(p, 2, 2, interval)
    time.sleep(args.b_steady)  # steady traffic before the disk fills (the phase's length, not a wait for a state)
    used_before = shutil.disk_usage(disk).used
    filler = DiskFiller(disk)
    filler.start()
    unhealthy = health.wait_for(503, time.time(), timeout=120)
    time.sleep(args.full_seconds)
    full_at, filled = filler.full_at, filler.size
    space_back = filler.free()
    healthy = health.wait_for(200, space_back, timeout=300)
    time.sleep(args.b_steady)  # traffic after the recovery
    results = clients.finish()
    committed = drained(p["admin"], timeout=300)
    metrics = pipeline_metrics(p["metrics"])
    used_after = shutil.disk_usage(disk).used
    health.stop()
    stop_pipeline(p, keep=True)  # read below; removed as the phase's pipeline ends
    acked = acknowledged(results)
    check = verify_store(disk / "spans.duckdb", acked, since=space_back)
    return {"results": results, "acked": acked, "check": check, "full_at": full_at, "filled": filled,
            "unhealthy": unhealthy, "space_back": space_back, "healthy": healthy, "committed": committed,
            "metrics": metrics, "exit": p["server"].returncode, "changes": health.changes,
            "used_before": used_before, "used_after": used_after}


def report_b(b: dict, args) -> None:
    check, results = b["check"], b["results"]
    full_at, back = b["full_at"] or float("nan"), b["space_back"]
    refused = np.concatenate([s["refused_at"] for r in results for s in r["senders"].values()])
    acked_at = b["acked"].column("acked_at").to_numpy()
    unhealthy = f"after {b['unhealthy'][0] - full_at:.1f}s: {b['unhealthy'][1]}" if b["unhealthy"] else "never (120 s)"
    healthy = f"{b['healthy'][0] - back:.1f}s after the space came back" if b["healthy"] else "never (300 s)"
    later = acked_at[acked_at >= back]
    rows = [
        ("tmpfs size / store used before the fill / filler took / store used at the end",
         f"{args.disk_mib} / {b['used_before'] / _MIB:.0f} / {b['filled'] / _MIB:.0f} / {b['used_after'] / _MIB:.0f} MiB"),
        ("every acknowledged span inserted at the end (query API)", "yes" if b["committed"] is not None else
         "no: the store was still behind after 300 s"),
        ("health 503 with problems once full", unhealthy),
        ("client refusals while full", f"{int(((refused >= full_at) & (refused < back)).sum()):,} "
                                        f"({', '.join(f'{k}: {v:,}' for k, v in sorted(answers(results).items()))})"),
        ("refusals before the fill / after the space came back",
         f"{int((refused < full_at).sum()):,} / {int((refused >= back).sum()):,}"),
        ("acknowledged while full", f"{int(((acked_at >= full_at) & (acked_at < back)).sum()) * SPANS_PER_REQUEST:,} spans"),
        ("health 200 again (no restart)", healthy),
        ("first acknowledgement after the space came back",
         f"{later.min() - back:.1f}s after" if len(later) else "none"),
        ("acknowledged after the space came back", f"{check['acked_since']:,} spans, missing "
                                                    f"{check['missing_since']:,}"),
        ("acknowledged span ids stored (whole phase)", f"{check['stored']:,} of {check['acked_spans']:,} "
                                                        f"(missing {check['missing']:,} {check['missing_sample']})"),
        ("requests lost (non-retryable) / abandoned at the end",
         f"{client_sum(results, 'lost')} / {client_sum(results, 'abandoned')}"),
        ("health changes", " -> ".join(f"{s}@{t - full_at:+.1f}s" for t, s, _ in b["changes"])),
        ("pipeline exit code after SIGTERM", str(b["exit"])),
    ]
    _table("Phase B: disk full, space back, recovery", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600, help="seconds of overload in phase A")
    ap.add_argument("--phase", choices=["a", "b", "both"], default="both")
    ap.add_argument("--recovery-seconds", type=float, default=10,
                    help="phase A: idle seconds after the drain, then as many of one sender's paced requests")
    ap.add_argument("--clients", type=int, default=6, help="client processes in phase A (half HTTP, half gRPC)")
    ap.add_argument("--threads", type=int, default=4, help="concurrent senders per client process")
    ap.add_argument("--limit-mib", type=int, default=256, help="memory_limiter.limit_mib (all processes summed)")
    ap.add_argument("--store-memory-limit", help="exporters::duckdb::memory_limit (default: the shipped 48MB)")
    ap.add_argument("--checkpoint-threshold", help="exporters::duckdb::checkpoint_threshold (default: 96MB)")
    ap.add_argument("--inflight-mib", type=float, help="receivers::otlp::limits::max_inflight_mib (default 64)")
    ap.add_argument("--spike-mib", type=int, default=None, help="memory_limiter.spike_limit_mib (default: 20 %% of the limit)")
    ap.add_argument("--workers", type=int, default=0, help="receiver worker processes")
    ap.add_argument("--cgroup-mib", type=int, default=0,
                    help="phase A: run the pipeline in a memory cgroup of this size, as a container's limit (root)")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="a setting of the pipeline's YAML, e.g. processors.cost.max_task_accounts=10000 (repeatable)")
    ap.add_argument("--disk-mib", type=int, default=512, help="phase B: size of the store's tmpfs")
    ap.add_argument("--b-rate", type=int, default=5_000, help="phase B: spans/s the clients offer")
    ap.add_argument("--b-steady", type=float, default=15, help="phase B: seconds of traffic before and after")
    ap.add_argument("--full-seconds", type=float, default=20, help="phase B: how long the disk stays full")
    args = ap.parse_args()
    if args.phase in ("b", "both") and os.environ.get(_IN_NAMESPACE) != "1":
        _reexec_in_mount_namespace()
    if args.phase in ("a", "both"):
        report_a(phase_a(args), args.limit_mib)
    if args.phase in ("b", "both"):
        report_b(phase_b(args), args)


if __name__ == "__main__":
    main()
