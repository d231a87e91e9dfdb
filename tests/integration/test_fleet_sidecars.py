"""Issue #16, the topology it names: two sidecars and one gateway.  Each sidecar (`agent-sre run`: DuckDB for
its pod, `cost` charging an org-month budget in a shared Redis, and an `otlp` exporter with a persistent
queue to the gateway) gets its own agents' spans over OTLP/HTTP; the gateway (DuckDB and the `clickhouse`
exporter with a persistent queue) writes the fleet store.  A sidecar, then the gateway, are killed with
SIGKILL mid-traffic and restarted on their data directories; a sidecar's agents re-send an unacknowledged
request to their own sidecar, as an agent next to its sidecar would.  Afterwards:

- fleet SQL (the view ``spans``) counts every span acknowledged to a client exactly once, and nothing else
  (a sidecar's queue may deliver a batch to the gateway twice across a kill: ``spans_raw`` keeps the copy
  until a merge, ``spans`` reads it once);
- the fleet's org spend in Redis equals the acknowledged spend exactly, and both sidecars' stores' cost: a
  re-sent request is stored and charged once by its sidecar (pipeline/storage/dedup.py), and the gateway
  charges nothing.

Versions: ClickHouse 18.16.1 (compat schema) and Redis 7.0.15, Debian's packages."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.clickhouse_server import clickhouse_server
from tests.conftest import PipelineProcess, Ports, spawn_pipeline
from tests.integration.test_fleet_kill9 import (
    DB,
    SPANS_PER_REQUEST,
    Ledger,
    _store_cost,
    fleet_spend,
    fleet_sql_counts,
    kill9,
    post,
    priced_request,
    stop,
)
from tests.otlp_builders import kv
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow

_COMMON = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{ports.grpc}}}
      http: {{endpoint: 127.0.0.1:{ports.http}}}
extensions:
  health_check: {{endpoint: 127.0.0.1:{ports.admin}}}
  admin: {{endpoint: 127.0.0.1:{ports.admin}}}
"""
_RETRY = "    retry_on_failure: {initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0s}\n"


def sidecar_config(ports: Ports, data: Path, gateway: Ports, redis_url: str, name: str,
                   org_usd: float = 1e9, breakers: bool = False) -> str:
    incidents = (f"""  incidents:
    state: {redis_url}
    state_instance: {name}
    breakers: {{roles: [tool], failure_threshold: 5, recovery_timeout: 1h}}
""" if breakers else "")
    return _COMMON.format(ports=ports) + f"""processors:
  agent_semconv: {{}}
  batch: {{send_batch_size: 8192, timeout: 5ms}}
  cost:
    state: {redis_url}
    state_instance: {name}
    state_refresh: 100ms
    budgets:
      - {{name: org, scope: org_month, limit_usd: {org_usd}}}
{incidents}exporters:
  duckdb: {{path: {data}/spans.duckdb}}
  otlp/gateway:
    endpoint: http://127.0.0.1:{gateway.grpc}
    tls: {{insecure: true}}
    sending_queue: {{num_consumers: 2, storage: {{directory: {data}/queue-gateway}}}}
{_RETRY}service:
  extensions: [health_check, admin]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [agent_semconv, batch, cost{", incidents" if breakers else ""}]
      exporters: [duckdb, otlp/gateway]
  telemetry:
    metrics:
      address: 127.0.0.1:{ports.metrics}
"""


def gateway_config(ports: Ports, data: Path, clickhouse_url: str) -> str:
    return _COMMON.format(ports=ports) + f"""processors:
  agent_semconv: {{}}
  batch: {{send_batch_size: 8192, timeout: 5ms}}
exporters:
  duckdb: {{path: {data}/spans.duckdb}}
  clickhouse:
    endpoint: {clickhouse_url}
    create_schema: true
    merge_timeout: 50ms
    sending_queue: {{num_consumers: 2, storage: {{directory: {data}/queue-clickhouse}}}}
{_RETRY}service:
  extensions: [health_check, admin]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [agent_semconv, batch]
      exporters: [duckdb, clickhouse]
  telemetry:
    metrics:
      address: 127.0.0.1:{ports.metrics}
"""


def agent(k: int, port: int, ledger: Ledger, halt: threading.Event) -> None:
    """An agent next to its sidecar: a request it got no OK for is sent again, with the same span ids, to
    the same sidecar (down while it restarts) until one OK."""
    rng = random.Random(100 + k)
    while not halt.is_set():
        body, costs = priced_request(rng)
        failed = ambiguous = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = post(port, body)
            if answer == "ok":
                break
            failed, ambiguous = True, ambiguous or answer == "ambiguous"
            time.sleep(0.05)
        else:
            raise AssertionError("the sidecar acknowledged nothing for 60 s")
        with ledger.lock:
            ledger.acked.update(costs)
            ledger.failures += failed
            if ambiguous:
                ledger.ambiguous_requests += 1
                ledger.ambiguous.update(costs)


def start_topology(tmp_path: Path, clickhouse_url: str, redis_url: str, configs: dict, running: dict,
                   **sidecar) -> None:
    """The gateway (to ``clickhouse_url``) and sidecars s0, s1 (sharing ``redis_url``) as `agent-sre run`
    processes: their (config, ports, data dir) into ``configs``, the processes into ``running``."""
    gw_ports = Ports.allocate()
    for name in ("gateway", "s0", "s1"):
        data = tmp_path / name
        data.mkdir()
        ports = gw_ports if name == "gateway" else Ports.allocate()
        text = (gateway_config(ports, data, clickhouse_url) if name == "gateway"
                else sidecar_config(ports, data, gw_ports, redis_url, name, **sidecar))
        configs[name] = (text, ports, data)
        running[name] = spawn_pipeline(text, ports, data, data / "run.log")


def test_two_sidecars_and_a_gateway_count_and_charge_every_acknowledged_span_once_across_kill_9(tmp_path):
    started = time.monotonic()
    with clickhouse_server(tmp_path) as ch, running_redis(tmp_path) as rs:
        configs: dict[str, tuple[str, Ports, Path]] = {}
        running: dict[str, PipelineProcess] = {}
        try:
            start_topology(tmp_path, ch.url(DB), rs.url, configs, running)
            ledger, halt = Ledger(), threading.Event()
            agents = [threading.Thread(target=agent, args=(k, configs[f"s{k % 2}"][1].http, ledger, halt))
                      for k in range(4)]
            for t in agents:
                t.start()
            time.sleep(2)
            for round_no, victim in enumerate(("s0", "gateway")):  # kill -9 mid-traffic, restart on its data
                kill9(running[victim])
                time.sleep(1)
                text, ports, data = configs[victim]
                running[victim] = spawn_pipeline(text, ports, data, data / f"run{round_no + 2}.log")
                time.sleep(1.5)
            halt.set()
            for t in agents:
                t.join(timeout=90)
            acked = ledger.acked
            client = ch.client()
            deadline, stored = time.monotonic() + 60, -1
            while time.monotonic() < deadline:  # drain: sidecar queues -> gateway -> its queue -> ClickHouse
                try:
                    stored = client.execute(f"SELECT uniqExact(span_id) FROM {DB}.spans")[0][0]
                except Exception:  # noqa: BLE001 - the schema is created by the gateway's first export
                    stored = -1
                if stored >= len(acked):
                    break
                time.sleep(0.3)
            time.sleep(1)  # a late copy would land now
            counts, ch_cost = fleet_sql_counts(ch.url(DB))
            deadline, spend = time.monotonic() + 20, fleet_spend(rs.url)
            while spend != pytest.approx(sum(acked.values()), abs=1e-9) and time.monotonic() < deadline:
                time.sleep(0.2)  # each sidecar pushes its spend after its loader's commits
                spend = fleet_spend(rs.url)
        finally:
            for p in running.values():
                stop(p)
    assert len(acked) >= 20 * SPANS_PER_REQUEST, "too little traffic to prove anything"
    assert ledger.failures > 0, "no request failed: the kill did not happen under traffic"
    missing = [s for s in acked if s not in counts]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged spans are not in ClickHouse"
    strangers = [s for s in counts if s not in acked]
    assert not strangers, f"{len(strangers)} spans in ClickHouse were never acknowledged"
    doubled = {s: n for s, n in counts.items() if n != 1}
    assert not doubled, f"fleet SQL counts {len(doubled)} spans more than once: {list(doubled.items())[:5]}"
    assert ch_cost == pytest.approx(sum(acked.values()), abs=1e-9)
    # Charged once, re-sends included: each sidecar keeps one copy of a re-sent span and charges it once.
    sidecars = _store_cost(tmp_path / "s0") + _store_cost(tmp_path / "s1")
    assert sidecars == pytest.approx(sum(acked.values()), abs=1e-9)
    assert spend == pytest.approx(sum(acked.values()), abs=1e-9), f"Redis fleet spend {spend} != acknowledged"
    print(f"\n{len(acked)} spans acknowledged by the sidecars, {ledger.failures} requests re-sent after a kill "
          f"({ledger.ambiguous_requests} ambiguous); fleet SQL ${ch_cost}, Redis ${spend}, "
          f"{time.monotonic() - started:.1f} s")


def _spans(n: int, agent: str, usd: float = 0.0, tool_failures: bool = False) -> bytes:
    """n LLM spans of ``agent`` costing ``usd`` each, or n failed tool calls of it, in one OTLP request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(n):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.start_time_unix_nano, sp.end_time_unix_nano = (
            os.urandom(16), os.urandom(8), now + i, now + i + 10**6)
        if tool_failures:
            sp.name, sp.status.code = "execute_tool search", 2
            attrs: dict = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
        else:
            sp.name = "chat gpt-4o-mini"
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.cost": usd}
        sp.attributes.extend(kv(k, v) for k, v in {**attrs, "gen_ai.agent.id": agent}.items())
    return req.SerializeToString()


def _decision(p: PipelineProcess, agent: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.ports.admin}/v1/decisions/{agent}", timeout=10) as r:
        return json.loads(r.read())["action"]


def _until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_two_sidecars_throttle_kill_and_break_at_the_fleets_totals_not_their_own(tmp_path):
    """The same topology with a real org budget ($10 a month) and tool breakers (5 failures), both in Redis.
    Three failed tool calls through one sidecar and two through the other open the agent's breaker on both
    (neither saw 5).  $5 spent through one sidecar and $4 through the other (50 % and 40 % each) is 90 % of the
    fleet's budget, so both sidecars throttle their agents; $1 more through the second is 100 %, so both kill
    -- at the fleet's total, not at twice it.  Fleet SQL on ClickHouse has every span once and the $10.
    Versions: ClickHouse 18.16.1 and Redis 7.0.15, as above."""
    with clickhouse_server(tmp_path) as ch, running_redis(tmp_path) as rs:
        running: dict[str, PipelineProcess] = {}
        try:
            start_topology(tmp_path, ch.url(DB + "_budget"), rs.url, {}, running, org_usd=10, breakers=True)
            s0, s1 = running["s0"], running["s1"]
            assert post(s0.ports.http, _spans(3, "researcher", tool_failures=True)) == "ok"
            time.sleep(1.0)
            assert _decision(s0, "researcher") != "circuit_open" and _decision(s1, "researcher") != "circuit_open"
            assert post(s1.ports.http, _spans(2, "researcher", tool_failures=True)) == "ok"  # 5 in the fleet
            assert _until(lambda: _decision(s0, "researcher") == "circuit_open"
                          and _decision(s1, "researcher") == "circuit_open")

            assert post(s0.ports.http, _spans(20, "planner", 0.25)) == "ok"  # $5: 50 % of the fleet's budget
            time.sleep(1.0)  # pushed to Redis and refreshed by s1 (commit <= 0.5 s, refresh 100 ms)
            assert _decision(s0, "planner") == _decision(s1, "writer") == "allow"
            assert post(s1.ports.http, _spans(16, "writer", 0.25)) == "ok"  # $9: 90 %, neither alone is
            assert _until(lambda: _decision(s0, "planner") == "throttle" and _decision(s1, "writer") == "throttle")
            assert post(s1.ports.http, _spans(4, "writer", 0.25)) == "ok"  # $10: the fleet's budget spent
            assert _until(lambda: _decision(s0, "planner") == "kill" and _decision(s1, "writer") == "kill")
            assert fleet_spend(rs.url) == pytest.approx(10.0)

            client = ch.client()
            assert _until(lambda: _count(client, f"SELECT count() FROM {DB}_budget.spans") == 45, timeout=60)
            by_agent = client.execute(f"SELECT agent_id, count(), sum(cost_usd) FROM {DB}_budget.spans "
                                      "GROUP BY agent_id ORDER BY agent_id")
            assert by_agent == [("planner", 20, 5.0), ("researcher", 5, None), ("writer", 20, 5.0)]  # tools: no cost
        finally:
            for p in running.values():
                stop(p)


def _count(client, sql: str) -> int:
    try:
        return client.execute(sql)[0][0]
    except Exception:  # noqa: BLE001 - the schema is created by the gateway's first export
        return -1
