"""Shared fixtures: free ports, a running pipeline (in this process or as `agent-sre run`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from agent_sre.pipeline.storage.store import open_read_only

REPO = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL = _ephemeral_range()
# Below the ephemeral range when there is room for it: the kernel gives the local ports of outgoing
# connections (and of binds to port 0) from that range, so a port handed out here cannot be taken by
# one between the check and the server's bind (CI once lost a test to that: "address already in use").
_POOL = range(15000, _EPHEMERAL[0]) if _EPHEMERAL[0] - 15000 >= 4096 else range(_EPHEMERAL[1] + 1, 65536)
_next = _POOL.start + (os.getpid() * 7919) % len(_POOL)  # apart from another test process's walk


def free_port() -> int:
    """A port nothing listens on now, none handed out before in this process, outside the ephemeral range."""
    global _next
    for _ in range(len(_POOL)):
        port, _next = _next, _POOL.start + (_next + 1 - _POOL.start) % len(_POOL)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_POOL.start}-{_POOL.stop - 1}")


@dataclass
class Ports:
    grpc: int
    http: int
    admin: int
    metrics: int
    prometheus: int = 0  # the prometheus exporter of the embedded default (:8889 there)

    @classmethod
    def allocate(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


def pipeline_yaml(ports: Ports, data_dir: Path, *, workers: int = 0, processors: str = "memory_limiter, agent_semconv, batch",
                  exporters: str = "duckdb", extra: str = "", limit_mib: int = 4096, grpc_mib: float = 4,
                  http_body: int = 20 << 20, batch_timeout: str = "5ms", admin: str = "") -> str:
    """The default config's shape, on free ports and a temporary store; ``admin``: more lines of the
    admin extension's settings (indented by four)."""
    return f"""
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{ports.grpc}
        max_recv_msg_size_mib: {grpc_mib}
      http:
        endpoint: 127.0.0.1:{ports.http}
        max_request_body_size: {http_body}
    workers: {workers}
processors:
  memory_limiter:
    check_interval: 100ms
    limit_mib: {limit_mib}
    spike_limit_mib: 1
  agent_semconv: {{}}
  batch:
    send_batch_size: 8192
    timeout: {batch_timeout}
exporters:
  duckdb:
    path: {data_dir}/spans.duckdb
  debug:
    verbosity: basic
{extra}
extensions:
  health_check:
    endpoint: 127.0.0.1:{ports.admin}
  admin:
    endpoint: 127.0.0.1:{ports.admin}
{admin}service:
  extensions: [health_check, admin]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{processors}]
      exporters: [{exporters}]
  telemetry:
    metrics:
      address: 127.0.0.1:{ports.metrics}
"""


@dataclass
class RunningPipeline:
    service: Service
    ports: Ports
    data_dir: Path

    @property
    def store(self):
        return self.service.exporters["duckdb"].store

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        self.store.sync()  # what was acknowledged is in DuckDB, not only in the spool
        cur = self.store._cursor()
        try:
            return cur.execute(query, params or []).fetchall()
        finally:
            cur.close()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.metrics}/metrics", timeout=5) as r:
            return r.read().decode()


def start_on_free_ports(make_text: Callable[[Ports, int], str]) -> tuple[Service, Ports, str]:
    """Start a Service in this process from ``make_text(ports, attempt)``: (service, ports, its YAML).

    A port found free can be taken (e.g. as the local port of an outgoing connection) before the
    service binds it: try again on fresh ports rather than fail the test for it."""
    for attempt in range(3):
        ports = Ports.allocate()
        text = make_text(ports, attempt)
        service = Service(parse_config(text, "test"))
        try:
            service.start()
        except OSError:
            service.shutdown()
            if attempt == 2:
                raise
            continue
        return service, ports, text
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import trustme

    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("agent@example.com")
    client.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return d


@pytest.fixture
def start_pipeline(tmp_path):
    """Start a Service in this process from pipeline_yaml(**kwargs); shut down after the test."""
    services: list[Service] = []

    def start(**kwargs) -> RunningPipeline:
        service, ports, _ = start_on_free_ports(lambda ports, _attempt: pipeline_yaml(ports, tmp_path, **kwargs))
        services.append(service)
        return RunningPipeline(service, ports, tmp_path)

    yield start
    for s in services:
        s.shutdown()


@pytest.fixture
def pipeline(start_pipeline) -> RunningPipeline:
    return start_pipeline()


def eventually(check, timeout: float = 30.0, interval: float = 0.2):
    """``check()``'s first truthy answer within ``timeout`` seconds, else its last (falsy) answer: for
    what the pipeline does after the commit (rollups, breakers, alerts)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(interval)


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.1)


@dataclass
class PipelineProcess:
    proc: subprocess.Popen
    ports: Ports
    data_dir: Path
    config: Path

    def span_names(self, raw: bool = False) -> set[str]:
        """Span names as `agent-sre query` sees them with the pipeline stopped (spool included);
        ``raw``: only what is in DuckDB's own table."""
        path = self.data_dir / "spans.duckdb"
        con = duckdb.connect(str(path), read_only=True) if raw else open_read_only(path)
        try:
            return {r[0] for r in con.execute("SELECT name FROM spans").fetchall()}
        finally:
            con.close()

    def sql_raw(self, query: str) -> list[tuple]:
        con = duckdb.connect(str(self.data_dir / "spans.duckdb"), read_only=True)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    def count_spans(self) -> int:
        con = open_read_only(self.data_dir / "spans.duckdb")
        try:
            return con.execute("SELECT count(*) FROM spans").fetchone()[0]
        finally:
            con.close()


def spawn_pipeline(config_text: str, ports: Ports, data_dir: Path, log_path: Path) -> PipelineProcess:
    """Run `agent-sre run --config` as a separate process and wait for its health check."""
    config = data_dir / "pipeline.yaml"
    config.write_text(config_text)
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "agent_sre.pipeline.cli", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, env={**os.environ})
    try:
        wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"pipeline did not start; log:\n{log_path.read_text()}") from None
    return PipelineProcess(proc, ports, data_dir, config)
