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

import random
import threading
import time
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


def sidecar_config(ports: Ports, data: Path, gateway: Ports, redis_url: str, name: str) -> str:
    return _COMMON.format(ports=ports) + f"""processors:
  agent_semconv: {{}}
  batch: {{send_batch_size: 8192, timeout: 5ms}}
  cost:
    state: {redis_url}
    state_instance: {name}
    state_refresh: 100ms
    budgets:
      - {{name: org, scope: org_month, limit_usd: 1000000000}}
exporters:
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
      processors: [agent_semconv, batch, cost]
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


def test_two_sidecars_and_a_gateway_count_and_charge_every_acknowledged_span_once_across_kill_9(tmp_path):
    started = time.monotonic()
    with clickhouse_server(tmp_path) as ch, running_redis(tmp_path) as rs:
        configs: dict[str, tuple[str, Ports, Path]] = {}
        running: dict[str, PipelineProcess] = {}
        try:
            gw_ports = Ports.allocate()
            for name in ("gateway", "s0", "s1"):
                data = tmp_path / name
                data.mkdir()
                ports = gw_ports if name == "gateway" else Ports.allocate()
                text = (gateway_config(ports, data, ch.url(DB)) if name == "gateway"
                        else sidecar_config(ports, data, gw_ports, rs.url, name))
                configs[name] = (text, ports, data)
                running[name] = spawn_pipeline(text, ports, data, data / "run.log")
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
