"""A full sending queue: `on_full: block` (the default) refuses the client retryably before anything
is stored, so a retry duplicates nothing and the exporter loses nothing; `on_full: drop` stores the
batch, acknowledges it, and counts and reports what that exporter lost."""

from __future__ import annotations

import json
import time
import urllib.request

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from agent_sre.receivers.otlp.ingest import ExportFailed, Outcome
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request
from tests.otlp_sink import Sink


def _start(tmp_path, url: str, queue: str) -> tuple[Service, Ports]:
    ports = Ports.allocate()
    extra = (f"  otlphttp/slow:\n    endpoint: {url}\n    timeout: 10s\n"
             f"    sending_queue: {{queue_size: 100, num_consumers: 1{queue}}}\n")
    service = Service(parse_config(pipeline_yaml(ports, tmp_path, exporters="duckdb, otlphttp/slow", extra=extra),
                                   "test"))
    service.start()
    return service, ports


def _send(service: Service, rounds: int) -> tuple[set[str], int]:
    accepted, refused = set(), 0
    for _ in range(rounds):
        req = request(50, start_ns=time.time_ns())
        try:
            service.receivers[0].ingest.export(req, "test")
        except ExportFailed as exc:
            assert exc.outcome is Outcome.REFUSED and "on_full: block" in exc.message
            refused += 1
            continue
        accepted |= {sp.span_id.hex() for sp in req.resource_spans[0].scope_spans[0].spans}
    return accepted, refused


def test_a_full_queue_that_blocks_refuses_the_client_before_anything_is_stored_and_loses_nothing(tmp_path):
    slow = Sink(behaviour="hang", hang_s=1.5)  # a backend slower than the clients: its queue fills
    service, _ = _start(tmp_path, slow.url, "")
    try:
        accepted, refused = _send(service, 12)
        assert refused > 0 and accepted  # back-pressure reached the client (retryable), not a silent drop
        store = service.exporters["duckdb"].store
        store.sync()
        assert store.count() == len(accepted)  # a refused batch was stored nowhere: its retry is no duplicate
        deadline = time.monotonic() + 60
        while set(slow.got.span_ids) != accepted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(slow.got.span_ids) == sorted(accepted)  # every acknowledged span reached the backend
    finally:
        service.shutdown()
        slow.close()


def test_a_full_queue_that_drops_acknowledges_stores_and_reports_what_the_exporter_lost(tmp_path, caplog):
    slow = Sink(behaviour="hang", hang_s=1.5)
    service, ports = _start(tmp_path, slow.url, ", on_full: drop")
    try:
        accepted, refused = _send(service, 12)
        assert refused == 0 and len(accepted) == 600
        store = service.exporters["duckdb"].store
        store.sync()
        assert store.count() == 600
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/v1/status", timeout=5) as r:
            queue = json.loads(r.read())["sending_queues"]["otlphttp/slow"]
        assert queue["on_full"] == "drop" and queue["dropped"] >= 400 and queue["capacity"] == 100
        assert any("rows dropped for this exporter" in r.getMessage() for r in caplog.records)
    finally:
        service.shutdown()
        slow.close()
