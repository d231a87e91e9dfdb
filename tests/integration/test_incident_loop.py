"""The closed loop, end to end through the running pipeline with the real OpenTelemetry SDK (OTLP/gRPC):

a tool starts failing -> the SLO pages -> an incident opens -> the breaker opens and joins it (P1),
the decision is circuit_open -> someone acknowledges it (CLI) -> failures stop, the recovery timeout
passes, probe calls succeed -> the breaker closes -> the SLO resolves -> the incident resolves ->
the postmortem (CLI) has the timeline in order; the incident's events reached a webhook channel.

Spans carry explicit timestamps on a timeline that starts 20 minutes ago, and every processor's
clock is set to that timeline, so minutes pass in milliseconds; everything else is real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.exporters.alerting.test_channels import server  # noqa: F401 - fixture

S = 10**9
MINUTE = 60 * S
T0 = (time.time_ns() // MINUTE - 20) * MINUTE  # the scenario's minute 0

PROCESSORS = """  sli: {}
  slo:
    interval: 1h
    objectives:
      - name: tools
        sli: tool_call_accuracy
        target: 0.99
        window: 1h
        rules:
          - {severity: page, factor: 2, long_window: 5m, short_window: 2m}
  incidents:
    breakers:
      roles: [tool]
      failure_threshold: 5
      window: 60s
      recovery_timeout: 60s
      half_open_max_calls: 3
      success_threshold: 2
"""


def events_pipeline(hook: str) -> tuple[str, str]:
    exporter = f"""  webhook:
    url: {hook}/incidents
    group_wait: 0s
    group_interval: 0s
    kinds: [incident]
"""
    pipeline = """    events:
      receivers: [alerts]
      exporters: [webhook]
"""
    return exporter, pipeline


class Scenario:
    def __init__(self, service: Service, ports: Ports):
        self.service, self.ports = service, ports
        self.now = T0
        self.clock = lambda: self.now / 1e9
        for proc in service.processors:
            proc.clock = self.clock
        service.host.decisions.clock = self.clock
        provider = TracerProvider(resource=Resource.create({"service.name": "research-agent"}))
        self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}", insecure=True))
        provider.add_span_processor(self.processor)
        self.provider = provider
        self.tracer = provider.get_tracer("scenario")

    def at(self, minute: float) -> None:
        self.now = T0 + int(minute * MINUTE)

    def tool_calls(self, minute: float, ok: int, failed: int = 0) -> None:
        """Tool spans ending within the second after ``minute``; sent and committed before returning."""
        for i in range(ok + failed):
            start = T0 + int(minute * MINUTE) + i * 1_000_000
            span = self.tracer.start_span("search", start_time=start, attributes={
                "agent.did": "a1", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search"})
            if i >= ok:
                span.set_status(Status(StatusCode.ERROR, "upstream 503"))
            span.end(end_time=start + 500_000)
        assert self.processor.force_flush(30_000)
        self.service.exporters["duckdb"].store.sync()  # committed: breakers and rollups have seen them

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.admin}{path}", timeout=30) as r:
            return json.loads(r.read())

    def decision(self) -> dict:
        return self.get("/v1/decisions/a1")

    def until(self, predicate, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)
        return value

    def cli(self, config, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", *args, "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.mark.slow
def test_a_failing_tool_pages_opens_an_incident_and_the_breaker_and_all_resolve_with_a_postmortem(tmp_path, server):  # noqa: F811
    hook, recorder = server
    ports = Ports.allocate()
    exporter, events = events_pipeline(hook)
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, sli, slo, incidents, batch",
                         extra=exporter)
    text = text.replace("  batch:\n", PROCESSORS + "  batch:\n", 1)
    text = text.replace("      exporters: [duckdb]\n", "      exporters: [duckdb]\n" + events, 1)
    text = text.replace("  duckdb:\n", "  duckdb:\n    retention: 0s\n", 1)  # the timeline is in the past
    text = text.replace("receivers:\n", "receivers:\n  alerts: {}\n", 1)
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    service = Service(parse_config(text, "test"))
    service.start()
    sc = Scenario(service, ports)
    try:
        for minute in range(5):
            sc.at(minute + 0.5)
            sc.tool_calls(minute, ok=20)
        assert sc.decision()["action"] == "allow"

        # minute 5: the tool starts failing, 4 calls of 20: below the breaker's 5 in 60 s
        sc.at(5.5)
        sc.tool_calls(5, ok=16, failed=4)
        assert sc.decision()["action"] == "allow" and sc.get("/v1/incidents")["incidents"] == []

        # minute 6 begins: the SLO pages (5m: 4/100 bad = 4x, 2m: 4/40 = 10x at 99 %) and opens an incident
        sc.at(6)
        (slo,) = sc.get("/v1/slos")["slos"]
        assert slo["firing"] == ["page:2x:5m/2m"]
        (inc,) = sc.get("/v1/incidents")["incidents"]
        assert (inc["id"], inc["priority"], inc["state"], inc["agent_id"]) == ("INC-00001", "P2", "open", "a1")

        # the failures go on: the breaker opens, joins the incident (P1), and the decision is circuit_open
        sc.at(6.1)
        sc.tool_calls(6.1, ok=0, failed=10)
        d = sc.decision()
        assert (d["action"], d["reason"]) == ("circuit_open", "circuit of agent is open")
        assert d["until"] == pytest.approx((T0 + 6.1 * MINUTE) / 1e9 + 60)
        assert sc.get("/v1/incidents/INC-00001")["priority"] == "P1"
        sc.at(6.2)
        assert "INC-00001: acknowledged (P1)" in sc.cli(config, "incidents", "ack", "INC-00001", "--by", "alice",
                                                          "--why", "search provider outage")

        # the failures stop; 60 s after it opened the breaker lets probes through (the ticker, every second)
        sc.at(7.15)
        # The tools SLO has no error budget left (14 bad of 174 at 99 % over 1h): releases are frozen, and
        # calls go on: the half-open breaker's probes are part of that answer.
        half = sc.until(lambda: (d := sc.decision())["action"] == "freeze" and d.get("circuits") and d,
                        "the breaker to go half-open")
        assert half["exhausted_slos"] == ["tools"]
        (circuit,) = half["circuits"]
        assert (circuit["state"], circuit["probes_left"], circuit["tool"]) == ("half_open", 3, None)
        sc.at(7.2)
        sc.tool_calls(7.2, ok=2)  # two probe calls succeed: closed
        d = sc.decision()
        assert (d["action"], [s["source"] for s in d["sources"]], d.get("circuits")) == ("freeze", ["slo"], None)

        # minutes 7 and 8 are clean: at minute 9 the page resolves, and with it the incident
        sc.tool_calls(7.3, ok=38)
        sc.tool_calls(8, ok=40)
        sc.at(9)
        assert sc.get("/v1/slos")["slos"][0]["firing"] == []
        inc = sc.until(lambda: (i := sc.get("/v1/incidents/INC-00001"))["state"] == "resolved" and i,
                       "the incident to resolve")
        assert inc["resolved_ns"] == T0 + 9 * MINUTE

        postmortem = sc.cli(config, "postmortem", "INC-00001")
    finally:
        sc.provider.shutdown()
        service.shutdown()

    # the timeline, in order
    steps = ["| alert | page:2x:5m/2m firing |", "| open (P2) | by agent-sre: opened by slo_page",
             "| circuit | open firing |", "| priority P1 |", "| acknowledged (P1) | by alice: search provider",
             "| circuit | half_open firing |", "| circuit | closed resolved |", "| alert | page:2x:5m/2m resolved |",
             "| resolved (P1) | by agent-sre: every signal resolved"]
    positions = [postmortem.find(s) for s in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions), postmortem
    # from 5 minutes before it opened (minute 1) to its end: 1-4 (80), 5 (20, 4 failed), 6.1 (10 failed), 7, 8 (80)
    assert "- Tool calls: 190, of which failed: 14" in postmortem
    assert "## Traces most involved" in postmortem and "web_search" in postmortem
    assert "What made the calls fail" in postmortem  # the circuit's action-item prompt

    # the channel got the incident firing, then resolved (it notifies the latest state of each tick)
    got = [r["json"] for r in recorder.requests if r["path"] == "/incidents"]
    assert [n["status"] for n in got][0] == "firing" and got[-1]["status"] == "resolved"
    assert {a["labels"]["incident_id"] for n in got for a in n["alerts"]} == {"INC-00001"}
    assert got[-1]["alerts"][0]["labels"]["incident_state"] == "resolved"
