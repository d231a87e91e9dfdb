"""The exporter helper under faults, against a local OTLP/HTTP sink (tests/otlp_sink.py):

- the backend is down for 30 s, then back: everything is delivered, nothing twice;
- the backend answers 429 with Retry-After: the retry waits at least that long;
- one backend hangs: the receiver and the other exporter keep their pace;
- kill -9 with a persistent queue holding data: delivered after the restart.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml, spawn_pipeline
from tests.otlp_builders import request
from tests.otlp_sink import Sink


def exporter(name: str, url: str, extra: str = "") -> str:
    return (f"  {name}:\n    endpoint: {url}\n    timeout: 2s\n"
            "    retry_on_failure: {initial_interval: 500ms, max_interval: 4s, max_elapsed_time: 120s}\n" + extra)


def start(tmp_path, exporters: dict[str, str]) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, exporters="duckdb, " + ", ".join(exporters),
                         extra="".join(exporters.values()))
    service = Service(parse_config(text, "test"))
    service.start()
    return service


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def send(service: Service, n: int, spans: int) -> set[str]:
    ids = set()
    for _ in range(n):
        req = request(spans, start_ns=time.time_ns())
        ids |= {sp.span_id.hex() for sp in req.resource_spans[0].scope_spans[0].spans}
        service.receivers[0].ingest.export(req, "test")  # acknowledged: stored in DuckDB, queued for the sink
    return ids


@pytest.mark.slow
def test_a_backend_down_for_30s_gets_everything_once_it_is_back(tmp_path):
    port = free_port()
    service = start(tmp_path, {"otlphttp": exporter("otlphttp", f"http://127.0.0.1:{port}")})
    sink = None
    try:
        began = time.monotonic()
        sent = send(service, 20, 50)
        time.sleep(max(0.0, 30 - (time.monotonic() - began)))  # down for 30 s
        sink = Sink(port)
        until(lambda: len(sink.got.span_ids) >= len(sent), 60, "delivery after the backend came back")
        time.sleep(1)  # anything sent twice would arrive now
        assert sorted(sink.got.span_ids) == sorted(sent)  # all of them, each once
    finally:
        service.shutdown()
        if sink is not None:
            sink.close()


def test_429_with_retry_after_is_honoured(tmp_path):
    sink = Sink(behaviour="429", times=1, retry_after=2)
    service = start(tmp_path, {"otlphttp": exporter("otlphttp", sink.url)})
    try:
        sent = send(service, 1, 10)
        until(lambda: sink.got.span_ids, 20, "delivery after the 429")
        assert sorted(sink.got.span_ids) == sorted(sent)
        waited = sink.got.requests[0]["time"] - sink.got.refused[0]
        assert waited >= 2.0, f"retried after {waited:.2f}s, before the Retry-After of 2 s"
        assert 'agent_sre_exporter_retries_total{exporter="otlphttp"} 1.0' in service.telemetry.exposition().decode()
    finally:
        service.shutdown()
        sink.close()


def test_a_hanging_backend_slows_neither_the_receiver_nor_the_other_exporter(tmp_path):
    stuck, fine = Sink(behaviour="hang", hang_s=30), Sink()
    service = start(tmp_path, {"otlphttp/stuck": exporter("otlphttp/stuck", stuck.url),
                               "otlphttp/fine": exporter("otlphttp/fine", fine.url)})
    try:
        took = []
        sent = set()
        for _ in range(20):
            started = time.monotonic()
            sent |= send(service, 1, 50)
            took.append(time.monotonic() - started)
        assert max(took) < 1.0, f"a receiver call took {max(took):.2f}s"
        until(lambda: len(fine.got.span_ids) >= len(sent), 10, "the healthy exporter's delivery")
        assert sorted(fine.got.span_ids) == sorted(sent) and stuck.got.span_ids == []
    finally:
        service.shutdown()
        stuck.close()
        fine.close()


@pytest.mark.slow
def test_kill_9_with_a_persistent_queue_delivers_after_the_restart(tmp_path):
    port = free_port()
    queue_dir = tmp_path / "queue"
    ports = Ports.allocate()
    extra = exporter("otlphttp", f"http://127.0.0.1:{port}",
                     f"    sending_queue: {{storage: {{directory: {queue_dir}}}}}\n")
    text = pipeline_yaml(ports, tmp_path, exporters="duckdb, otlphttp", extra=extra)
    first = spawn_pipeline(text, ports, tmp_path, tmp_path / "first.log")
    try:
        import grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: F401

        channel = grpc.insecure_channel(f"127.0.0.1:{ports.grpc}")
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                   request_serializer=None, response_deserializer=None)
        sent = set()
        for _ in range(10):
            req = request(30, start_ns=time.time_ns())
            sent |= {sp.span_id.hex() for sp in req.resource_spans[0].scope_spans[0].spans}
            call(req.SerializeToString(), timeout=10)  # acknowledged: in DuckDB's spool and in the queue
        channel.close()
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
    assert list(queue_dir.glob("*.q")), "the persistent queue holds the undelivered batches"
    sink = Sink(port)
    second = spawn_pipeline(text, ports, tmp_path, tmp_path / "second.log")
    try:
        until(lambda: len(set(sink.got.span_ids)) >= len(sent), 60, "delivery after the restart")
        assert set(sink.got.span_ids) == sent
    finally:
        second.proc.terminate()
        second.proc.wait(timeout=60)
        sink.close()
