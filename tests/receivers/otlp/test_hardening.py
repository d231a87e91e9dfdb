"""The otlp receiver under hostile or careless clients (issue #11): a second instance on the same
ports, multi-member gzip, slow and idle connections, and the per-request limits."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agent_sre.pipeline.component.listener import ListenerSettings
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml, spawn_pipeline
from tests.otlp_builders import kv, request
from tests.receivers.otlp.test_grpc_protocol import export
from tests.receivers.otlp.test_http_protocol import post, rpc_status


def _yaml(ports: Ports, data_dir, *, receiver: str = "", http: str = "", grpc_: str = "", workers: int = 0,
          **kwargs) -> str:
    """The test pipeline's YAML with extra lines under receivers.otlp, its http and its grpc protocol."""
    text = pipeline_yaml(ports, data_dir, workers=workers, **kwargs)
    text = text.replace(f"    workers: {workers}\n", f"    workers: {workers}\n{receiver}")
    text = text.replace("        max_request_body_size:", f"{http}        max_request_body_size:")
    return text.replace("        max_recv_msg_size_mib:", f"{grpc_}        max_recv_msg_size_mib:")


@pytest.fixture
def start(tmp_path):
    """Start a Service with extra receiver settings (see _yaml); shut down after the test."""
    services: list[Service] = []

    def start_(*, ports: Ports | None = None, before_start=None, **kwargs) -> RunningPipeline:
        given = ports
        for attempt in range(3):
            # A port found free can be taken before the service binds it (seen in CI): fresh ports and try
            # again, unless the test gave its ports (then the bind error is what it tests).
            ports = given or Ports.allocate()
            service = Service(parse_config(_yaml(ports, tmp_path / f"p{len(services)}", **kwargs), "test"))
            (tmp_path / f"p{len(services)}").mkdir(exist_ok=True)
            services.append(service)
            if before_start is not None:
                before_start(service)
            try:
                service.start()
            except OSError:
                if given is not None or attempt == 2:
                    raise
                continue
            return RunningPipeline(service, ports, tmp_path / f"p{len(services) - 1}")
        raise AssertionError("unreachable")

    yield start_
    for s in services:
        s.shutdown()


def count(p: RunningPipeline) -> int:
    return p.sql("SELECT count(*) FROM spans")[0][0]


# --- limits ----------------------------------------------------------------------------------


def test_a_request_over_max_spans_per_request_is_refused_whole_with_400_saying_to_split_the_batch(start):
    p = start(receiver="    limits: {max_spans_per_request: 10}\n")
    status, headers, body = post(p.ports.http, request(11).SerializeToString())
    assert status == 400
    st = rpc_status(headers, body)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "11 spans, over the limit of 10 per request" in st.message and "split the batch" in st.message
    assert post(p.ports.http, request(10).SerializeToString())[0] == 200
    assert count(p) == 10
    refused = 'agent_sre_receiver_refused_spans_total{reason="too_many_spans",receiver="otlp",transport="http"}'
    assert f"{refused} 11.0" in p.metrics()


def test_a_grpc_request_over_max_spans_per_request_is_invalid_argument(start):
    p = start(receiver="    limits: {max_spans_per_request: 10}\n")
    with pytest.raises(grpc.RpcError) as err:
        export(p.ports.grpc, request(11).SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 10 per request" in err.value.details()
    assert count(p) == 0
    assert 'outcome="invalid_argument",receiver="otlp",transport="grpc"} 1.0' in p.metrics()


def _span_with(attrs: dict, dropped: int = 0, event_attrs: dict | None = None):
    req = request(1, attrs=attrs)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.dropped_attributes_count = dropped
    if event_attrs is not None:
        event = span.events.add(name="gen_ai.content.prompt", time_unix_nano=span.start_time_unix_nano)
        event.attributes.extend(kv(k, v) for k, v in event_attrs.items())
    return req


def test_attributes_over_max_attributes_per_span_are_dropped_and_added_to_dropped_attributes_count(start):
    p = start(receiver="    limits: {max_attributes_per_span: 3}\n")
    attrs = {f"k{i}": f"v{i}" for i in range(5)}
    assert post(p.ports.http, _span_with(attrs, dropped=2).SerializeToString())[0] == 200
    [(stored, dropped)] = p.sql("SELECT attributes, dropped_attributes_count FROM spans")
    assert {k: stored[k] for k in ("k0", "k1", "k2")} == {"k0": "v0", "k1": "v1", "k2": "v2"}
    assert "k3" not in stored and "k4" not in stored
    assert dropped == 2 + 2  # the client's own count, plus ours
    assert 'agent_sre_receiver_dropped_attributes_total{receiver="otlp",transport="http"} 2.0' in p.metrics()


def test_attribute_values_over_max_length_are_cut_and_their_keys_listed_on_the_span(start):
    p = start(receiver="    limits: {max_attribute_value_length: 8}\n")
    attrs = {"gen_ai.prompt": "é" * 20, "short": "ok", 'odd"key': "x" * 9}
    body = _span_with(attrs, event_attrs={"content": "y" * 30}).SerializeToString()
    assert post(p.ports.http, body)[0] == 200
    [(stored, events)] = p.sql("SELECT attributes, events FROM spans")
    assert stored["gen_ai.prompt"] == "é" * 8  # characters, as the OTel SDK counts them
    assert stored["short"] == "ok"
    assert json.loads(stored["agent_sre.truncated_attributes"]) == ["gen_ai.prompt", 'odd"key']
    event_attrs = events[0]["attributes"]
    assert event_attrs["content"] == "y" * 8
    assert json.loads(event_attrs["agent_sre.truncated_attributes"]) == ["content"]
    assert ('agent_sre_receiver_truncated_attribute_values_total{receiver="otlp",transport="http"} 3.0'
            in p.metrics())


def test_attribute_limits_apply_in_receiver_workers_too(start):
    p = start(workers=1, receiver="    limits: {max_attributes_per_span: 1, max_attribute_value_length: 4}\n")
    export(p.ports.grpc, _span_with({"a": "12345", "b": "2"}).SerializeToString())
    [(stored, dropped)] = p.sql("SELECT attributes, dropped_attributes_count FROM spans")
    assert stored == {"a": "1234", "agent_sre.truncated_attributes": '["a"]'}
    assert dropped == 1
    metrics = eventually(lambda: next((m for m in [p.metrics()] if "truncated_attribute_values_total{" in m),
                                      ""))  # the worker's counters arrive every 0.5 s
    assert 'agent_sre_receiver_dropped_attributes_total{receiver="otlp",transport="grpc"} 1.0' in metrics


def test_neither_the_pipeline_nor_its_workers_load_pandas_or_start_mimalloc(tmp_path):
    # pyarrow imports pandas at its first pa.array whenever it is installed: ~26 MiB of private memory in each
    # process.  `agent-sre run` and each receiver worker answer pyarrow's one probe "no pandas"
    # (pipeline/pdata/memory.py), before anything of theirs calls pa.array.  And Arrow allocates through
    # malloc, its C++ code too: mimalloc, once started, maps its 1 GiB arena (and keeps ~20 MiB at max rate).
    import importlib.util

    import psutil

    assert importlib.util.find_spec("pandas") is not None  # installed here (through chdb), or this proves nothing
    ports = Ports.allocate()
    p = spawn_pipeline(pipeline_yaml(ports, tmp_path, workers=2), ports, tmp_path, tmp_path / "run.log")
    try:
        answer = export(ports.grpc, _span_with({"a": "1"}).SerializeToString())  # a worker decoded it, the
        assert not answer.partial_success.rejected_spans  # pipeline committed it (an OK means committed)
        pipeline = psutil.Process(p.proc.pid)
        workers = [c for c in pipeline.children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for process in (pipeline, *workers):
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            assert "pyarrow" in maps and "/pandas/" not in maps, process.cmdline()
            sizes = [int(end, 16) - int(start, 16) for start, end in
                     (line.split()[0].split("-") for line in maps.splitlines())]
            assert max(sizes) < 1 << 30, process.cmdline()  # mimalloc's arena: nothing else here maps 1 GiB
    finally:
        p.proc.terminate()
        assert p.proc.wait(timeout=30) == 0


# --- compressed bodies -----------------------------------------------------------------------


def test_gzip_body_with_two_members_stores_the_spans_of_both(start):
    p = start()
    body = gzip.compress(request(2).SerializeToString()) + gzip.compress(request(3).SerializeToString())
    status, _, resp = post(p.ports.http, body, encoding="gzip")
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(resp).HasField("partial_success")
    assert count(p) == 5


def test_gzip_members_are_bounded_by_the_body_limit_together(start):
    p = start(http_body=3000)
    member = gzip.compress(b"\x0a" + b"\x00" * 1999)  # each member inflates to 2000 bytes, under the limit
    status, headers, body = post(p.ports.http, member + member, encoding="gzip")
    assert status == 413
    assert "exceeds the limit of 3000 bytes" in rpc_status(headers, body).message


def test_bytes_after_a_deflate_stream_are_refused_not_ignored(start):
    p = start()
    body = zlib.compress(request(2).SerializeToString()) + zlib.compress(request(3).SerializeToString())
    status, headers, resp = post(p.ports.http, body, encoding="deflate")
    assert status == 400
    assert "after the end of the deflate stream" in rpc_status(headers, resp).message
    assert count(p) == 0


# --- one pipeline per port -------------------------------------------------------------------


def _same_otlp_ports(ports: Ports) -> Ports:
    """The OTLP ports of ``ports`` with admin and metrics ports of its own (so only OTLP collides)."""
    other = Ports.allocate()
    return Ports(ports.grpc, ports.http, other.admin, other.metrics, other.prometheus)


@pytest.mark.parametrize(("first_workers", "second_workers"), [(2, 2), (0, 2), (2, 0), (0, 0)])
def test_a_second_pipeline_on_the_same_ports_fails_to_bind_and_the_first_keeps_all_traffic(
        start, first_workers, second_workers):
    first = start(workers=first_workers)
    ports = first.ports
    in_use = rf"(?i)cannot listen on 127\.0\.0\.1:({ports.grpc}|{ports.http}).*address (already )?in use"
    with pytest.raises(OSError, match=in_use):
        start(ports=_same_otlp_ports(ports), workers=second_workers)
    for _ in range(10):  # new connections each: with a shared port the kernel would spread them
        export(ports.grpc, request(1).SerializeToString())
        assert post(ports.http, request(1).SerializeToString())[0] == 200
    assert count(first) == 20


def test_agent_sre_run_exits_with_address_in_use_when_its_ports_are_served(start, tmp_path):
    first = start(workers=1)
    ports = _same_otlp_ports(first.ports)
    (tmp_path / "second").mkdir()
    config = tmp_path / "second" / "pipeline.yaml"
    config.write_text(_yaml(ports, tmp_path / "second", workers=1))
    proc = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path / "second")
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{ports.grpc}: address in use" in proc.stdout + proc.stderr
    export(first.ports.grpc, request(2).SerializeToString())
    assert count(first) == 2


# --- slow and idle connections ---------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed ``sock`` (sending ``trickle`` a byte at a time meanwhile), or
    None if it was still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(0.05)
    sent = 0
    while time.monotonic() - started < seconds:
        try:
            if sent < len(trickle):
                sock.send(trickle[sent:sent + 1])
                sent += 1
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed too
            return time.monotonic() - started
    return None


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_http_connections_without_complete_headers_are_closed_after_read_header_timeout(start):
    p = start(http="        read_header_timeout: 500ms\n")
    idle = [_connect(p.ports.http) for _ in range(100)]
    slow = [_connect(p.ports.http) for _ in range(100)]
    for s in slow:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n")
    trickler = _connect(p.ports.http)
    assert _closed_within(trickler, 10, trickle=b"POST /v1/traces HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 200)
    assert all(_closed_within(s, 10) is not None for s in idle + slow)
    assert post(p.ports.http, request(1).SerializeToString())[0] == 200
    closed = (f'agent_sre_http_connections_closed_total{{endpoint="127.0.0.1:{p.ports.http}",'
              'reason="header_timeout"}')
    assert f"{closed} 201.0" in p.metrics()


def test_a_kept_alive_http_connection_is_closed_after_idle_timeout(start):
    p = start(http="        idle_timeout: 1s\n")
    conn = http.client.HTTPConnection("127.0.0.1", p.ports.http, timeout=5)
    conn.request("POST", "/v1/traces", request(1).SerializeToString(),
                 {"Content-Type": "application/x-protobuf"})
    assert conn.getresponse().read() is not None
    assert conn.sock is not None
    assert _closed_within(conn.sock, 10) is not None
    assert count(p) == 1


def test_a_body_slower_than_read_timeout_is_answered_408_and_the_connection_closed(start):
    p = start(http="        read_timeout: 500ms\n")
    s = _connect(p.ports.http)
    s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
              b"Content-Length: 1000\r\n\r\n" + b"\x0a" * 10)
    s.settimeout(10)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert rpc_status({"Content-Type": "application/x-protobuf"}, body).code == code_pb2.DEADLINE_EXCEEDED
    assert f'endpoint="127.0.0.1:{p.ports.http}",reason="body_timeout"}} 1.0' in p.metrics()


def test_connections_over_max_connections_are_answered_503_with_retry_after(start):
    p = start(http="        max_connections: 5\n")
    held = [_connect(p.ports.http) for _ in range(5)]
    guard = p.service.host.http._endpoints[f"127.0.0.1:{p.ports.http}"].guard
    assert eventually(lambda: len(guard.connections) == 5)
    extra = _connect(p.ports.http)
    extra.settimeout(5)
    answer = extra.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"Retry-After: 1" in answer
    for s in held:
        s.close()
    assert eventually(lambda: post(p.ports.http, request(1).SerializeToString())[0] == 200)
    assert f'endpoint="127.0.0.1:{p.ports.http}",reason="max_connections"}} 1.0' in p.metrics()


def test_the_admin_listener_closes_connections_without_headers_too(start):
    def small_limits(service: Service) -> None:
        service.host.http.default_limits = ListenerSettings(read_header_timeout=0.5)

    p = start(before_start=small_limits)
    sockets = [_connect(p.ports.admin) for _ in range(50)]
    sockets[0].sendall(b"GET /v1/status HTTP/1.1\r\n")
    assert all(_closed_within(s, 10) is not None for s in sockets)
    assert f'endpoint="127.0.0.1:{p.ports.admin}",reason="header_timeout"}} 50.0' in p.metrics()


def test_a_grpc_connection_that_never_sends_the_http2_preface_is_closed_after_handshake_timeout(start):
    p = start(grpc_="        handshake_timeout: 500ms\n")
    sockets = [_connect(p.ports.grpc) for _ in range(50)]
    assert all(_closed_within(s, 10) is not None for s in sockets)
    export(p.ports.grpc, request(1).SerializeToString())
    assert count(p) == 1


def test_an_idle_grpc_connection_is_sent_goaway_after_max_connection_idle(start):
    p = start(grpc_="        keepalive: {server_parameters: {max_connection_idle: 500ms}}\n")
    s = _connect(p.ports.grpc)
    preface, settings = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    s.sendall(preface + settings)
    s.settimeout(10)
    frames = b""
    started = time.monotonic()
    while time.monotonic() - started < 10 and (chunk := s.recv(65536)):
        frames += chunk
        if _frame_types(frames).count(7):
            break
    assert 7 in _frame_types(frames)  # GOAWAY


def _frame_types(data: bytes) -> list[int]:
    types, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        types.append(data[i + 3])
        i += 9 + length
    return types
