"""A sidecar killed with -9 after it acknowledged (or before its OK left): the agent's exporter re-sends the
same spans to it once it is back, and they are stored, priced and charged once (pipeline/storage/dedup.py).
A real pipeline process, real kill -9, real OTLP/HTTP."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PipelineProcess, Ports, spawn_pipeline
from tests.integration.test_fleet_kill9 import _store_cost, post, priced_request, stop

pytestmark = pytest.mark.slow


def config(ports: Ports, data: Path) -> str:
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{ports.grpc}}}
      http: {{endpoint: 127.0.0.1:{ports.http}}}
processors:
  agent_semconv: {{}}
  batch: {{send_batch_size: 8192, timeout: 5ms}}
  cost:
    budgets:
      - {{name: org, scope: org_month, limit_usd: 1000000}}
exporters:
  duckdb: {{path: {data}/spans.duckdb}}
extensions:
  health_check: {{endpoint: 127.0.0.1:{ports.admin}}}
  admin: {{endpoint: 127.0.0.1:{ports.admin}}}
service:
  extensions: [health_check, admin]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [agent_semconv, batch, cost]
      exporters: [duckdb]
  telemetry:
    metrics:
      address: 127.0.0.1:{ports.metrics}
"""


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _org_spend(p: PipelineProcess) -> float:
    accounts = json.loads(_get(f"http://127.0.0.1:{p.ports.admin}/v1/costs"))["budgets"]
    return sum(a["spent_usd"] for a in accounts if a["budget"] == "org")


def _resent_metric(p: PipelineProcess) -> float:
    lines = _get(f"http://127.0.0.1:{p.ports.metrics}/metrics").splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("agent_sre_store_resent_spans{"))


def test_a_request_re_sent_after_kill_9_is_stored_and_charged_once(tmp_path):
    ports = Ports.allocate()
    body, costs = priced_request(random.Random(3))
    total = sum(costs.values())
    p = spawn_pipeline(config(ports, tmp_path), ports, tmp_path, tmp_path / "run.log")
    try:
        assert post(ports.http, body) == "ok"
        p.proc.kill()  # kill -9: the client's OK may or may not have left; the client sends again
        p.proc.wait(timeout=30)
        p = spawn_pipeline(config(ports, tmp_path), ports, tmp_path, tmp_path / "run.log")
        assert post(ports.http, body) == "ok"
        assert post(ports.http, body) == "ok"  # and once more, while the first re-send is still in the spool
        query = json.dumps({"sql": "SELECT count(*), count(DISTINCT span_id), sum(cost_usd) FROM spans"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{ports.admin}/v1/query", data=query, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            rows, spans, cost = json.loads(r.read())["rows"][0]
        assert (rows, spans) == (len(costs), len(costs))
        assert cost == pytest.approx(total, abs=1e-9)
        assert _org_spend(p) == pytest.approx(total, abs=1e-9)  # the budget was charged once
        assert _resent_metric(p) == 2 * len(costs)
    finally:
        stop(p)
    assert _store_cost(tmp_path) == pytest.approx(total, abs=1e-9)
    assert "not stored again" in (tmp_path / "run.log").read_text()
