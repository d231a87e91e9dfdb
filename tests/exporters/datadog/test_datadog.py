"""datadog: a contract check against a local server that checks what Datadog documents (Datadog
cannot be reached from here): the v2 series intake (POST /api/v2/series, DD-API-KEY, JSON, gzip,
integer types, timestamps in seconds, count series with their interval) and the v1 events intake;
bodies are validated with the official datadog-api-client models."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time

import pytest
from datadog_api_client.configuration import Configuration
from datadog_api_client.model_utils import validate_and_convert_types
from datadog_api_client.v1.model.event_create_request import EventCreateRequest
from datadog_api_client.v2.model.metric_payload import MetricPayload

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request

KEY = "0123456789abcdef0123456789abcdef"


class Datadog(http.server.BaseHTTPRequestHandler):
    got: list[dict] = []
    problems: list[str] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.headers.get("DD-API-KEY") != KEY:
                return self._answer(403, {"errors": ["Forbidden"]})
            assert self.headers["Content-Type"] == "application/json", self.headers["Content-Type"]
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            doc = json.loads(body)
            if self.path == "/api/v2/series":
                model = validate_and_convert_types(doc, (MetricPayload,), ["body"], True, True, Configuration())
                assert model.to_dict() == doc, "fields the model does not know"
                for s in doc["series"]:
                    assert s["type"] in (1, 2, 3) and isinstance(s["points"][0]["timestamp"], int)
                    assert abs(s["points"][0]["timestamp"] - time.time()) < 600
                    assert ("interval" in s) == (s["type"] in (1, 2))
                    assert all(":" in t for t in s["tags"])
            elif self.path == "/api/v1/events":
                model = validate_and_convert_types(doc, (EventCreateRequest,), ["body"], True, True, Configuration())
                assert model.to_dict() == doc and len(doc["text"]) <= 4000 and len(doc["aggregation_key"]) <= 100
            else:
                return self._answer(404, {"errors": ["Not found"]})
        except Exception as exc:  # noqa: BLE001 - a contract check: anything off is a 400 and a test failure
            Datadog.problems.append(f"{self.path}: {exc!r}")
            return self._answer(400, {"errors": [str(exc)]})
        Datadog.got.append({"path": self.path, "json": doc})
        self._answer(202, {"errors": []} if self.path == "/api/v2/series" else {"status": "ok"})

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def datadog():
    Datadog.got, Datadog.problems = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Datadog)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


SLO = """  sli: {}
  slo:
    interval: 1h
    objectives:
      - {name: tools, sli: tool_call_accuracy, target: 0.99, window: 1h}
"""


def test_metrics_and_events_reach_datadog_in_its_documented_shape(tmp_path, datadog):
    ports = Ports.allocate()
    extra = (f"  datadog:\n    api_key: {KEY}\n    api_url: {datadog}\n    metrics: {{interval: 1h, tags: [env:test]}}\n"
             "    sending_queue: {num_consumers: 1}\n")
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, sli, slo, batch",
                         exporters="duckdb, datadog", extra=extra)
    text = text.replace("  batch:\n", "  cost: {}\n" + SLO + "  batch:\n", 1)
    text = text.replace("receivers:\n", "receivers:\n  alerts: {}\n", 1).replace(
        "      exporters: [duckdb, datadog]\n", "      exporters: [duckdb, datadog]\n    events:\n"
        "      receivers: [alerts]\n      exporters: [datadog]\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        llm = {"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
               "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
        tool = {"agent.did": "a1", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
        ingest = service.receivers[0].ingest
        ingest.export(request(4, attrs=llm, start_ns=time.time_ns()), "test")
        failed = request(3, attrs=tool, start_ns=time.time_ns())
        for sp in failed.resource_spans[0].scope_spans[0].spans:
            sp.status.code = 2
        ingest.export(failed, "test")
        service.exporters["duckdb"].store.sync()
        (slo,) = service.components_of("slo")
        slo.clock = lambda: time.time() + 60  # the minute of the failures has ended: the tools SLO pages
        slo.report()
        (dd,) = [e for e in service.exporters.values() if e.id.type == "datadog"]
        assert dd.flush() > 0
        deadline = time.monotonic() + 20
        while not ({"/api/v2/series", "/api/v1/events"} <= {g["path"] for g in Datadog.got}):
            assert time.monotonic() < deadline and not Datadog.problems, Datadog.problems
            time.sleep(0.05)
    finally:
        service.shutdown()
    assert Datadog.problems == []
    series = {(s["metric"], tuple(sorted(s["tags"]))): s for g in Datadog.got if g["path"] == "/api/v2/series"
              for s in g["json"]["series"]}
    spans = series["agent_sre.spans", ("agent_id:a1", "env:test", "span_role:tool")]
    assert (spans["type"], spans["points"][0]["value"], spans["interval"]) == (1, 3.0, 3600)
    assert series["agent_sre.errors", ("agent_id:a1", "env:test", "span_role:tool")]["points"][0]["value"] == 3.0
    tokens = series["agent_sre.llm.tokens", ("agent_id:a1", "env:test", "model:gpt-4o-mini", "token_type:input")]
    assert tokens["points"][0]["value"] == 400.0
    cost = series["agent_sre.llm.cost_usd", ("agent_id:a1", "env:test", "model:gpt-4o-mini")]
    assert cost["type"] == 1 and cost["points"][0]["value"] > 0
    sli = series["agent_sre.slo.sli_value", ("agent_id:a1", "env:test", "slo:tools")]
    assert (sli["type"], sli["points"][0]["value"]) == (3, 0.0) and "interval" not in sli
    events = {e["title"]: e for g in Datadog.got if g["path"] == "/api/v1/events" for e in [g["json"]]}
    event = events["[agent-sre alert] page:14.4x:1h/5m firing"]  # every rule that fires is one event
    assert event["alert_type"] == "error" and "slo:tools" in event["tags"] and event["source_type_name"] == "agent-sre"
    assert event["text"].startswith("SLO tools (tool_call_accuracy, target 0.99) of agent a1 burns")


def test_a_wrong_api_key_is_a_permanent_failure_counted_as_send_failed(tmp_path, datadog):
    extra = f"  datadog:\n    api_key: wrong\n    api_url: {datadog}\n    metrics: {{interval: 1h}}\n"
    text = pipeline_yaml(Ports.allocate(), tmp_path, exporters="duckdb, datadog", extra=extra)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        service.receivers[0].ingest.export(request(2, attrs={"agent.did": "a1"}, start_ns=time.time_ns()), "test")
        (dd,) = [e for e in service.exporters.values() if e.id.type == "datadog"]
        n = dd.flush()
        deadline = time.monotonic() + 10
        metrics = ""
        while f'agent_sre_exporter_send_failed_spans_total{{exporter="datadog"}} {float(n)}' not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
            metrics = service.telemetry.exposition().decode()
        assert 'agent_sre_exporter_retries_total{exporter="datadog"} 0.0' in metrics  # 403: not retried
    finally:
        service.shutdown()
