"""prometheusremotewrite, cardinality limit: the pushed WriteRequest holds at most max_series_per_metric
series of a metric plus its overflow series, their values sum to every span, the fold is counted, and a real
Prometheus (remote-write receiver on) stores the overflow series."""

from __future__ import annotations

import cramjam
import pytest

from agent_sre.exporters.prometheusremotewrite.remote_write import WriteRequest
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, eventually, free_port, pipeline_yaml
from tests.exporters.prometheus.test_cardinality import LIMIT, RED, send, tool_calls
from tests.exporters.prometheusremotewrite.test_remote_write import receiver  # noqa: F401 - a fixture
from tests.prometheus_server import prometheus


def start(tmp_path, endpoint: str) -> tuple[Service, Ports]:
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, exporters="duckdb, prometheusremotewrite")
    text = text.replace("  debug:\n", f"  prometheusremotewrite:\n    endpoint: {endpoint}\n    interval: 1h\n"
                                      f"    max_series_per_metric: {LIMIT}\n  debug:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service, ports


def pushed(body: bytes, metric: str) -> list[tuple[dict, float]]:
    req = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    series = [({lb.name: lb.value for lb in ts.labels}, ts.samples[0].value) for ts in req.timeseries]
    return [(labels, value) for labels, value in series if labels["__name__"] == metric]


def push_until(service: Service, rec, spans: int) -> list[tuple[dict, float]] | None:
    """Pushes until the RED counts sent sum to ``spans`` (the exporter sees a batch after its commit); the
    series of the last push to ``rec``, if given."""
    (exporter,) = service.components_of("prometheusremotewrite")

    def check():
        assert exporter.push_now()
        families = exporter.metrics.families(None)
        if sum(s.value for f in families for s in f.samples if s.name == f"{RED}_count") != spans:
            return None
        return pushed(rec.bodies[-1], f"{RED}_count") if rec is not None else [({}, spans)]

    return eventually(check)


def overflow_total(service: Service) -> float:
    families = {m.name: m for m in service.telemetry.registry.collect()}
    return sum(s.value for s in families["agent_sre_exporter_series_overflow"].samples
               if s.name.endswith("_total") and s.labels == {"exporter": "prometheusremotewrite", "metric": RED})


def test_the_pushed_request_holds_the_limit_plus_the_overflow_series_summing_to_every_span(receiver, tmp_path):  # noqa: F811
    url, rec = receiver
    service, ports = start(tmp_path, url)
    try:
        send(ports, tool_calls(range(LIMIT)))  # the first agents seen keep their series
        assert push_until(service, rec, LIMIT)
        send(ports, tool_calls(range(30), per_agent=2))  # the first LIMIT still count after the limit
        series = push_until(service, rec, 65)
        assert len(series) == LIMIT + 1
        assert sum(v for _, v in series) == 65
        (over,) = [(labels, v) for labels, v in series if labels.get("otel_metric_overflow") == "true"]
        assert over[0]["agent_id"] == "__overflow__" and over[1] == 50
        assert sorted(v for labels, v in series if labels is not over[0]) == [3] * LIMIT
        assert overflow_total(service) == 50
    finally:
        service.shutdown()


@pytest.mark.slow
def test_a_real_prometheus_stores_the_pushed_overflow_series(tmp_path):
    with prometheus(tmp_path, free_port(), remote_write_receiver=True) as prom:
        service, ports = start(tmp_path, f"http://127.0.0.1:{prom.port}/api/v1/write")
        try:
            send(ports, tool_calls(range(20), per_agent=2))
            assert push_until(service, None, 40)
            (over,) = prom.query_until(f'{RED}_count{{otel_metric_overflow="true"}}')
            (total,) = prom.query_until(f"sum({RED}_count)")
        finally:
            service.shutdown()
    assert over["metric"]["agent_id"] == "__overflow__" and float(over["value"][1]) == 30
    assert float(total["value"][1]) == 40
