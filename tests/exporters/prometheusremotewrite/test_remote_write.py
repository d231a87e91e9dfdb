"""prometheusremotewrite: a real Prometheus (remote-write receiver on) accepts our writes and the values read
back match; the wire format and retries, against a local server that checks the spec's headers."""

from __future__ import annotations

import http.server
import threading

import cramjam
import pytest

from agent_sre.exporters.prometheusremotewrite.remote_write import WriteRequest, push
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml
from tests.exporters.prometheus.test_prometheus_exporter import CONFIG, _load
from tests.prometheus_server import prometheus


def start(tmp_path, endpoint: str) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch",
                         exporters="duckdb, prometheusremotewrite")
    text = text.replace("  batch:\n", CONFIG + "  batch:\n", 1)
    text = text.replace("  debug:\n", f"  prometheusremotewrite:\n    endpoint: {endpoint}\n    interval: 1h\n"
                                      "  debug:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers with the next status of `statuses`, after checking the remote-write 1.0 request."""

    statuses: list[int] = []
    bodies: list[bytes] = []
    problems: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        h = self.headers
        for name, want in (("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy"),
                           ("X-Prometheus-Remote-Write-Version", "0.1.0")):
            if h.get(name) != want:
                self.problems.append(f"{name}: {h.get(name)!r}")
        self.bodies.append(self.rfile.read(int(h["Content-Length"])))
        status = self.statuses.pop(0) if self.statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.statuses, _Receiver.bodies, _Receiver.problems = [], [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write", _Receiver
    server.shutdown()


def test_request_is_snappy_protobuf_with_sorted_labels(receiver, tmp_path):
    url, rec = receiver
    service = start(tmp_path, url)
    try:
        _load(service)
        (exporter,) = service.components_of("prometheusremotewrite")
        assert exporter.push_now()
    finally:
        service.shutdown()
    assert rec.problems == []
    req = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(rec.bodies[0])))
    series = {tuple((lb.name, lb.value) for lb in ts.labels): ts.samples[0].value for ts in req.timeseries}
    for labels in series:
        assert list(labels) == sorted(labels) and labels[0][0] == "__name__"
    key = (("__name__", "agent_sre_sli_good_events_total"), ("agent_id", "a1"), ("agent_version", "1.2"),
           ("sli", "tool_call_accuracy"))
    assert series[key] == 98


def test_server_errors_are_retried_and_client_errors_are_not(receiver):
    url, rec = receiver
    rec.statuses = [503, 429, 204]
    naps = []
    ok = push(url, b"x", {}, 5, 5, sleep=naps.append)
    assert (ok.ok, ok.attempts, naps) == (True, 3, [0.2, 0.4])
    rec.statuses = [400]
    bad = push(url, b"x", {}, 5, 5, sleep=naps.append)
    assert (bad.ok, bad.status, bad.attempts) == (False, 400, 1)
    gone = push("http://127.0.0.1:1/api/v1/write", b"x", {}, 1, 2, sleep=lambda s: None)
    assert (gone.ok, gone.status, gone.attempts) == (False, 0, 2)


@pytest.mark.slow
def test_a_real_prometheus_accepts_our_writes_and_reads_back_the_values(tmp_path):
    with prometheus(tmp_path, free_port(), remote_write_receiver=True) as prom:
        service = start(tmp_path, f"http://127.0.0.1:{prom.port}/api/v1/write")
        try:
            _load(service)
            (exporter,) = service.components_of("prometheusremotewrite")
            assert exporter.push_now()
            (burn,) = prom.query_until('agent_sre_slo_burn_rate{slo="tools",agent_id="a1",window="1h"}')
            (tokens,) = prom.query_until('gen_ai_client_token_usage_sum{gen_ai_token_type="input"}')
        finally:
            service.shutdown()
    assert float(burn["value"][1]) == pytest.approx(2.0)
    assert float(tokens["value"][1]) == 300
