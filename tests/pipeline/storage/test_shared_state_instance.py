"""A pipeline's claim on its fleet name (``state_instance``) in Redis belongs to its data, not its process
(pipeline/storage/shared_state.py, ``kept_claim_token``: a token kept in the span store).  The slow tests
run real `agent-sre run` processes, Debian's redis-server 7.0, `cost` with `state: redis://` and an org-month
budget:

- killed with -9 and restarted at once on its data directory, a pipeline takes over its own claim: no
  "another live pipeline" in /v1/status or the log, and its spend stays its own in Redis, counted once;
- a second live pipeline with the same name (its own data directory) is told it clashes."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from agent_sre.pipeline.storage.shared_state import INSTANCE_TTL_S, kept_claim_token
from agent_sre.pipeline.storage.store import SpanStore
from tests.conftest import PipelineProcess, Ports, eventually, spawn_pipeline
from tests.otlp_builders import request
from tests.redis_server import running_redis

CLASH_STATUS = "ANOTHER LIVE PIPELINE HAS THIS NAME"
CLASH_LOG = "another live pipeline is named 'same'"


def config(ports: Ports, data: Path, redis_url: str, name: str) -> str:
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
    state: {redis_url}
    state_instance: {name}
    state_refresh: 100ms
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


def start(tmp_path: Path, redis_url: str, data_name: str, log_name: str = "run.log",
          ports: Ports | None = None) -> PipelineProcess:
    data = tmp_path / data_name
    data.mkdir(exist_ok=True)
    ports = ports or Ports.allocate()
    return spawn_pipeline(config(ports, data, redis_url, "same"), ports, data, data / log_name)


def status_lines(p: PipelineProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.ports.admin}/v1/status", timeout=10) as r:
        return "\n".join(line for lines in json.loads(r.read())["components"].values() for line in lines)


def in_fleet_view(p: PipelineProcess) -> bool:
    return "as same: fleet view" in status_lines(p)


def send_spend(p: PipelineProcess, usd_per_span: float, spans: int) -> None:
    """One OTLP/HTTP request of ``spans`` chat spans, each reporting ``usd_per_span``."""
    body = request(spans, attrs={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                                 "gen_ai.usage.cost": usd_per_span, "gen_ai.agent.id": "agent-a"},
                   start_ns=time.time_ns()).SerializeToString()
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.http}/v1/traces", data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def spend_in_redis(r, field: str) -> float:
    """The org budget's ``field`` summed over its periods: ``spent:org`` the fleet total, ``spent:org:<name>``
    a pipeline's own contribution (the hashes the Lua script keeps)."""
    kind = "own" if field.count(":") > 1 else "budget"
    return sum(float(r.hget(key, field) or 0) for key in r.scan_iter(f"agent_sre:{kind}:org:*"))


def kill9(p: PipelineProcess) -> None:
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait(timeout=10)


def stop(p: PipelineProcess | None) -> None:
    if p is not None and p.proc.poll() is None:
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - never leave it running
            p.proc.kill()
            p.proc.wait(timeout=10)


def test_a_store_keeps_one_claim_token_per_component_across_reopening(tmp_path):
    store = SpanStore(tmp_path / "spans.duckdb")
    try:
        cost, other = kept_claim_token(store, "cost"), kept_claim_token(store, "cost/b")
        assert len(cost) == 32 and other != cost
        assert kept_claim_token(store, "cost") == cost
    finally:
        store.close()
    reopened, elsewhere = SpanStore(tmp_path / "spans.duckdb"), SpanStore(tmp_path / "elsewhere.duckdb")
    try:
        assert kept_claim_token(reopened, "cost") == cost
        assert kept_claim_token(elsewhere, "cost") not in ("", cost)
    finally:
        reopened.close()
        elsewhere.close()


def test_a_store_that_cannot_be_written_gives_a_token_per_process_and_says_so(tmp_path, caplog):
    store = SpanStore(tmp_path / "spans.duckdb")
    store.close()  # its writes now fail as DuckDB's do
    assert kept_claim_token(store, "cost") == ""
    assert "cost cannot keep its instance claim in its store" in caplog.text


@pytest.mark.slow
def test_a_pipeline_restarted_at_once_after_kill_9_keeps_its_name_and_its_spend(tmp_path):
    import redis

    with running_redis(tmp_path) as server:
        r = redis.Redis.from_url(server.url)
        claim = "agent_sre:instance:same"
        p = start(tmp_path, server.url, "data", "run1.log")
        try:
            send_spend(p, 0.25, 4)  # 1 USD: exact in floating point
            assert eventually(lambda: spend_in_redis(r, "spent:org:same") == 1.0, timeout=20)
            token = r.get(claim)
            kill9(p)
            # the dead process's claim outlives the restart however slow this box is (it would: 15 s)
            assert r.expire(claim, 300)
            p = start(tmp_path, server.url, "data", "run2.log", ports=p.ports)
            assert eventually(lambda: in_fleet_view(p), timeout=20), status_lines(p)
            time.sleep(1.0)  # ten refreshes: each one would have seen the clash
            assert CLASH_STATUS not in status_lines(p)
            # the restarted pipeline holds the claim with the token its store kept, and renews it
            assert r.get(claim) == token
            assert 0 < r.ttl(claim) <= INSTANCE_TTL_S
            send_spend(p, 0.5, 1)
            assert eventually(lambda: spend_in_redis(r, "spent:org:same") == 1.5, timeout=20)
            assert spend_in_redis(r, "spent:org") == 1.5  # its spend before the kill counted once
        finally:
            stop(p)
            r.close()
    logs = [(tmp_path / "data" / name).read_text() for name in ("run1.log", "run2.log")]
    assert not any(CLASH_LOG in log for log in logs), logs[1][-3000:]


@pytest.mark.slow
def test_a_second_live_pipeline_with_the_same_name_is_told_it_clashes(tmp_path):
    with running_redis(tmp_path) as server:
        first = second = None
        try:
            first = start(tmp_path, server.url, "first")
            assert eventually(lambda: in_fleet_view(first), timeout=20), status_lines(first)
            second = start(tmp_path, server.url, "second")
            assert eventually(lambda: CLASH_STATUS in status_lines(second), timeout=20), status_lines(second)
            assert CLASH_STATUS not in status_lines(first)  # the first holds the claim
        finally:
            stop(second)
            stop(first)
    log = (tmp_path / "second" / "run.log").read_text()
    assert any(CLASH_LOG in line and "ERROR" in line for line in log.splitlines()), log[-3000:]
    assert CLASH_LOG not in (tmp_path / "first" / "run.log").read_text()
