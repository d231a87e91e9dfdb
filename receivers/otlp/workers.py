"""Receiver worker processes: decode and convert on every core, commit in one writer.

Converting OTLP protobuf to Arrow is Python work bound by the GIL (about
60–80k spans/s per core here), so with ``workers: N`` the otlp receiver starts
N processes that each run the gRPC and HTTP servers on the same ports
(SO_REUSEPORT: the kernel spreads connections over them).  A worker decodes and
converts a request, sends the Arrow batch (IPC stream bytes) over a Unix
socket to the pipeline process and waits for its answer; the pipeline process
runs the rest of the pipeline (memory limiter, normalisation, group commit,
exporters) and answers once the batch is committed.  The client's OK still
means committed.

Wire format on the socket, one message per ``send_bytes``:
    header  = kind (1 byte) + request id (8 bytes, big endian)
    kinds   = B: batch (payload: Arrow IPC stream)      worker -> pipeline
              S: counters (payload: JSON)                worker -> pipeline
              R: ready / E: start error (payload: text)  worker -> pipeline
              O: ok / F: refused / P: permanent          pipeline -> worker
                 (payload: JSON {"message", "retry_after"})
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import secrets
import signal
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Client, Connection, Listener

import pyarrow as pa

from agent_sre.pipeline.component.auth import dump_with_secrets
from agent_sre.pipeline.component.errors import PermanentError, RefusedError
from agent_sre.pipeline.pdata.ipc import decode_table, encode_table
from agent_sre.receivers.otlp.ports import EndpointClaim

_HEADER = struct.Struct(">cQ")
_START_TIMEOUT_S = 60.0


def _pack(kind: bytes, req_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, req_id) + payload


def _unpack(message: bytes) -> tuple[bytes, int, memoryview]:
    kind, req_id = _HEADER.unpack_from(message)
    return kind, req_id, memoryview(message)[_HEADER.size:]


# --- the pipeline side ---------------------------------------------------------------


class WorkerPool:
    """Runs in the pipeline process: starts the workers and serves their batches."""

    def __init__(self, receiver, host):
        self.receiver = receiver
        self.host = host
        self.logger = receiver.logger
        self._dir = tempfile.mkdtemp(prefix="agent-sre-")
        self._address = os.path.join(self._dir, "workers.sock")
        self._authkey = secrets.token_bytes(16)
        self._listener: Listener | None = None
        self._procs: list[multiprocessing.Process] = []
        self._conns: list[Connection] = []
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="otlp-worker-batch")
        self._ready: list[Future] = []
        self._stopping = threading.Event()
        self._claim: EndpointClaim | None = None

    def start(self) -> None:
        n = self.receiver.config.workers
        protocols = self.receiver.config.protocols
        # Before any worker binds with SO_REUSEPORT: fail, as any server would, when the ports are taken.
        self._claim = EndpointClaim([p.endpoint for p in (protocols.grpc, protocols.http) if p is not None])
        self._listener = Listener(self._address, family="AF_UNIX", authkey=self._authkey)
        self._ready = [Future() for _ in range(n)]
        threading.Thread(target=self._accept, args=(n,), name="otlp-worker-accept", daemon=True).start()
        ctx = multiprocessing.get_context("spawn")
        config_json = dump_with_secrets(self.receiver.config)  # over the spawn pipe, never argv or a file
        level = logging.getLogger("agent_sre").getEffectiveLevel()
        for i in range(n):
            proc = ctx.Process(target=worker_main, name=f"agent-sre-otlp-worker-{i}", daemon=True,
                               args=(config_json, self._address, self._authkey, str(self.receiver.id), i, level,
                                     self.receiver.signals, self.host.admission.shared))
            proc.start()
            self._procs.append(proc)
        try:
            for fut in self._ready:
                fut.result(timeout=_START_TIMEOUT_S)
        except Exception:
            self.stop()
            raise

    def _accept(self, n: int) -> None:
        assert self._listener is not None
        for _ in range(n):
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="otlp-worker-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        send_lock = threading.Lock()
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    self.logger.error("a receiver worker disconnected")
                return
            kind, req_id, payload = _unpack(message)
            if kind == b"B":
                self._pool.submit(self._consume, conn, send_lock, req_id, bytes(payload))
            elif kind == b"S":
                self._apply_counters(json.loads(bytes(payload)))
            elif kind in (b"R", b"E"):
                fut = next((f for f in self._ready if not f.done()), None)
                if fut is not None:
                    if kind == b"R":
                        fut.set_result(None)
                    else:
                        fut.set_exception(OSError(bytes(payload).decode()))

    def _consume(self, conn: Connection, send_lock: threading.Lock, req_id: int, payload: bytes) -> None:
        try:
            self.receiver.next.consume(decode_table(payload))
            reply = _pack(b"O", req_id)
        except RefusedError as exc:
            reply = _pack(b"F", req_id, json.dumps({"message": str(exc), "retry_after": exc.retry_after}).encode())
        except PermanentError as exc:
            reply = _pack(b"P", req_id, json.dumps({"message": str(exc)}).encode())
        except Exception as exc:  # noqa: BLE001 - answer the worker whatever happens
            self.logger.exception("pipeline failed on a worker batch")
            reply = _pack(b"F", req_id, json.dumps({"message": f"pipeline failed: {exc}", "retry_after": 1}).encode())
        try:
            with send_lock:
                conn.send_bytes(reply)
        except (OSError, ValueError):
            self.logger.warning("could not answer a receiver worker (it exited)")

    def _apply_counters(self, rows: list) -> None:
        from agent_sre.receivers.otlp.ingest import TelemetryStats

        stats = TelemetryStats(self.host.telemetry)
        for metric, labels, n in rows:
            stats.count(metric, tuple(labels), n)

    def stop(self) -> None:
        self._stopping.set()
        for proc in self._procs:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        if self._listener is not None:
            self._listener.close()
        self._pool.shutdown(wait=True)
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


# --- the worker side -----------------------------------------------------------------


class RemoteConsumer:
    """In a worker: sends a batch to the pipeline process and waits for its answer."""

    def __init__(self, conn: Connection, on_close: Callable[[], None] | None = None):
        self._conn = conn
        self._on_close = on_close
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._next_id = 0
        self._id_lock = threading.Lock()
        self._counters: dict[tuple, int] = {}
        self.closed = threading.Event()
        threading.Thread(target=self._read, name="otlp-worker-replies", daemon=True).start()

    def send(self, message: bytes | pa.Buffer) -> None:
        with self._send_lock:
            self._conn.send_bytes(message)

    def consume(self, batch: pa.Table) -> None:
        with self._id_lock:
            self._next_id += 1
            req_id = self._next_id
            fut: Future = Future()
            self._pending[req_id] = fut
        try:
            self.send(encode_table(batch, _HEADER.pack(b"B", req_id)))  # as _pack, the stream written once
        except (OSError, ValueError) as exc:
            self._pending.pop(req_id, None)
            raise RefusedError("the pipeline process is not reachable", 1.0) from exc
        kind, body = fut.result()
        if kind == b"O":
            return
        info = json.loads(body) if body else {}
        if kind == b"P":
            raise PermanentError(info.get("message", "rejected"))
        raise RefusedError(info.get("message", "refused"), float(info.get("retry_after", 1.0)))

    def _read(self) -> None:
        while True:
            try:
                kind, req_id, payload = _unpack(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            fut = self._pending.pop(req_id, None)
            if fut is not None:
                fut.set_result((kind, bytes(payload)))
        self.closed.set()
        for fut in list(self._pending.values()):
            fut.set_result((b"F", json.dumps({"message": "pipeline process went away", "retry_after": 1}).encode()))
        self._pending.clear()
        if self._on_close is not None:
            self._on_close()

    # IngestStats: counters are summed locally and flushed to the pipeline process.
    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        key = (metric, labels)
        with self._id_lock:
            self._counters[key] = self._counters.get(key, 0) + n

    def flush_counters(self) -> None:
        with self._id_lock:
            rows = [[m, list(labels), n] for (m, labels), n in self._counters.items()]
            self._counters.clear()
        if rows:
            try:
                self.send(_pack(b"S", 0, json.dumps(rows).encode()))
            except (OSError, ValueError):
                pass


def worker_main(config_json: str, address: str, authkey: bytes, receiver_id: str, index: int, level: int,
                signals: tuple[str, ...] = ("traces",), admission_shared=None) -> None:
    from agent_sre.pipeline.pdata.memory import arrow_without_pandas, use_system_allocator

    use_system_allocator()  # first: Arrow's first allocation starts the pool it then keeps
    arrow_without_pandas()  # before the imports below: their first pa.array would load it
    from agent_sre.pipeline.component.admission import Admission, InflightBytes
    from agent_sre.pipeline.component.auth import Authenticator
    from agent_sre.pipeline.component.httpserver import HttpServers
    from agent_sre.receivers.otlp.config import OtlpReceiverConfig
    from agent_sre.receivers.otlp.grpc_server import GrpcTraceServer
    from agent_sre.receivers.otlp.http_server import HttpTraceServer
    from agent_sre.receivers.otlp.ingest import CODECS, Ingest

    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    logger = logging.getLogger(f"agent_sre.receiver.{receiver_id}")
    stop, stop_asked = threading.Event(), threading.Event()  # stop: to stop; stop_asked: the pipeline said so
    signal.signal(signal.SIGTERM, lambda *_: (stop_asked.set(), stop.set()))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipeline process decides when workers stop
    conn = Client(address, family="AF_UNIX", authkey=authkey)
    remote = RemoteConsumer(conn, on_close=stop.set)  # the pipeline process gone: stop at once
    config = OtlpReceiverConfig.model_validate_json(config_json)
    os.nice(config.workers_nice)
    http = HttpServers()
    http.count_closed = lambda endpoint, reason: remote.count("connections_closed", (endpoint, reason))
    grpc_server = http_server = None
    try:
        auth = config.auth
        authenticator = Authenticator(auth, receiver_id, logger) if auth is not None else None
        reattribute = auth is not None and auth.on_foreign_agent == "reattribute"
        admission = Admission(admission_shared) if admission_shared is not None else None
        inflight = InflightBytes(config.limits.max_inflight_bytes)
        ingest = {s: Ingest(receiver_id, remote, remote, logger, CODECS[s], authenticator, reattribute,
                            limits=config.limits, admission=admission, inflight=inflight)
                  for s in signals}
        if config.protocols.grpc is not None:
            grpc_server = GrpcTraceServer(config.protocols.grpc, ingest, reuse_port=True)
            grpc_server.start()
        if config.protocols.http is not None:
            http_server = HttpTraceServer(config.protocols.http, ingest, http, reuse_port=True)
            http_server.start()
    except Exception as exc:  # noqa: BLE001 - reported to the pipeline process, which fails its start
        remote.send(_pack(b"E", 0, str(exc).encode()))
        return
    remote.send(_pack(b"R", 0))
    while not stop.wait(0.5):
        remote.flush_counters()
    if grpc_server is not None:
        # Without the pipeline process nothing in flight can be committed (each was refused retryably
        # when it went), so no grace: its ports are free for the pipeline that replaces it.
        grpc_server.stop(grace=0 if remote.closed.is_set() else 5)
    if http_server is not None:
        http_server.stop()
    http.shutdown()
    remote.flush_counters()
    conn.close()
    if remote.closed.is_set() and not stop_asked.is_set():  # the pipeline process died (kill -9, OOM):
        try:  # nobody else removes its socket's directory; a restart makes its own
            os.unlink(address)
            os.rmdir(os.path.dirname(address))
        except OSError:
            pass  # another worker was first, or the pipeline's stop() did it
