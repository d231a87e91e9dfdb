"""`agent-sre slo rules`: the rules pass promtool, and a real Prometheus running them over our SLI counters
computes the burn rate /v1/slos reports, and fires the same alert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: I001

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml
from tests.otlp_builders import kv
from tests.processors.sli.test_sli import TOOL
from tests.prometheus_server import binary, prometheus

SLO = """  sli: {}
  slo:
    interval: 1s
    objectives:
      - name: tools
        sli: tool_call_accuracy
        target: 0.99
        window: 1h
        rules:
          - {severity: page, factor: 1, long_window: 2m, short_window: 1m}
"""


def _config(tmp_path, ports: Ports, metrics_port: int) -> str:
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch",
                         exporters="duckdb, prometheus")
    text = text.replace("  batch:\n", SLO + "  batch:\n", 1)
    return text.replace("  debug:\n", f"  prometheus:\n    endpoint: 127.0.0.1:{metrics_port}\n  debug:\n", 1)


def _rules(tmp_path, config_text: str):
    config = tmp_path / "pipeline.yaml"
    config.write_text(config_text)
    rules = tmp_path / "rules.yaml"
    out = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "slo", "rules", "--config", str(config),
                          "--out", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return rules


def test_generated_rules_pass_promtool(tmp_path):
    rules = _rules(tmp_path, _config(tmp_path, Ports.allocate(), free_port()))
    check = subprocess.run([binary("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout  # 2 windows x (ratio, burn) + 1 alert


def _steady_traffic(ingest, stop: threading.Event) -> None:
    """50 tool calls every 0.2 s, 1 of them failed (2%), ending now."""
    while not stop.is_set():
        req = ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        now = time.time_ns()
        for i in range(50):
            sp = ss.spans.add()
            sp.trace_id, sp.span_id, sp.name = os.urandom(16), os.urandom(8), "tool"
            sp.start_time_unix_nano, sp.end_time_unix_nano = now - 2_000_000, now
            sp.attributes.extend(kv(k, v) for k, v in TOOL.items())
            if i == 0:
                sp.status.code = 2
        ingest.export(req, "test")
        stop.wait(0.2)


@pytest.mark.slow
def test_prometheus_rules_give_the_burn_rate_and_alert_of_v1_slos(tmp_path):
    ports, metrics_port = Ports.allocate(), free_port()
    text = _config(tmp_path, ports, metrics_port)
    rules = _rules(tmp_path, text)
    service = Service(parse_config(text, "test"))
    service.start()
    stop = threading.Event()
    sender = threading.Thread(target=_steady_traffic, args=(service.receivers[0].ingest, stop))
    try:
        # /v1/slos holds the minute in progress (its windows end now), as the Prometheus rules do.
        sender.start()
        with prometheus(tmp_path, metrics_port, [rules]) as prom:
            time.sleep(8)  # a few scrapes of steady traffic
            (burn,) = prom.query_until('agent_sre:slo_burn_rate:1m{slo="tools"}')
            alerts = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "AgentSloBurnRate"]
            deadline = time.monotonic() + 30
            while not any(a["state"] == "firing" for a in alerts) and time.monotonic() < deadline:
                time.sleep(0.5)
                alerts = [a for a in prom.get("/api/v1/alerts")["alerts"]
                          if a["labels"]["alertname"] == "AgentSloBurnRate"]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/v1/slos", timeout=30) as r:
            (row,) = json.loads(r.read())["slos"]
        # 2% bad at 99%: burn 2 in both; Prometheus extrapolates increase(), hence the tolerance
        assert row["burn_rates"]["1m"] == pytest.approx(2.0, rel=0.01)
        assert float(burn["value"][1]) == pytest.approx(row["burn_rates"]["1m"], rel=0.01)
        assert burn["metric"]["agent_id"] == "a1"
        assert row["firing"] == ["page:1x:2m/1m"]
        assert [(a["labels"]["rule"], a["labels"]["agent_id"], a["state"]) for a in alerts] == [
            ("page:1x:2m/1m", "a1", "firing")]
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=10)
        service.shutdown()
