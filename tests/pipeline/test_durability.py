"""An OK to the client means committed: kill -9 after the OK, restart, every acknowledged span is there."""

from __future__ import annotations

import os
import signal
import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import Ports, pipeline_yaml, spawn_pipeline


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_acknowledged_spans_survive_kill_9(tmp_path, workers):
    ports = Ports.allocate()
    proc = spawn_pipeline(pipeline_yaml(ports, tmp_path, workers=workers), ports, tmp_path, tmp_path / "run.log")
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}", insecure=True, timeout=10)
    provider = TracerProvider(resource=Resource.create({"service.name": "durability"}))
    tracer = provider.get_tracer("durability")
    acknowledged = 0
    deadline = time.monotonic() + 3
    batch_no = 0
    while time.monotonic() < deadline:
        spans = []
        for i in range(50):
            with tracer.start_as_current_span(f"s{batch_no}-{i}") as s:
                s.set_attribute("agent.did", "did:web:dur")
            spans.append(s)
        # export() returns SUCCESS only after the pipeline answered OK.
        if exporter.export(spans) is SpanExportResult.SUCCESS:
            acknowledged += len(spans)
        batch_no += 1
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=10)
    if workers:
        time.sleep(1)  # orphaned workers notice the socket closed and exit
    exporter.shutdown()
    assert acknowledged > 0
    # The file is reopened after a crash (WAL replay): everything acknowledged is there.
    assert proc.count_spans() >= acknowledged
    restarted = spawn_pipeline(proc.config.read_text(), ports, tmp_path, tmp_path / "run2.log")
    try:
        restarted.proc.send_signal(signal.SIGTERM)
        assert restarted.proc.wait(timeout=30) == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.proc.kill()
    assert proc.count_spans() >= acknowledged
