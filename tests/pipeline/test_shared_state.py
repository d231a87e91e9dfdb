"""Fleet state on a real Redis (Debian's redis-server 7.0 on loopback, no persistence): budgets charged from
two pipelines are enforced once at the fleet's total, breakers open from failures seen across two, and
a Redis killed and restarted empty means each pipeline's local view, then a reconcile that counts every
pipeline's spend once."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import ConfigError, parse_config
from agent_sre.pipeline.storage.shared_state import SharedState, parse_state_url
from agent_sre.processors.cost.budget import BudgetLedger, BudgetSpec, FleetBudgets, utc
from agent_sre.processors.incidents.breaker import CLOSED, OPEN, BreakerSettings, CircuitBreaker
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request
from tests.redis_server import running_redis

NOW = utc(2026, 12, 2, 12, 0)
ORG = BudgetSpec("org", "org_month", 10.0)  # throttle at 85 %, kill at 95 %, alerts at 50/75/90 %


@pytest.fixture
def redis_server(tmp_path):
    with running_redis(tmp_path) as server:
        yield server


def _fleet(url: str, instance: str, *specs: BudgetSpec) -> FleetBudgets:
    fleet = FleetBudgets(BudgetLedger(list(specs or [ORG])), SharedState(url, instance))
    fleet.refresh(NOW)
    return fleet


def _alerts(events) -> list[str]:
    return [e.detail for e in events if e.kind == "alert"]


def test_a_state_url_that_is_not_redis_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="must be a redis://"):
        parse_state_url("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="database must be a number"):
        parse_state_url("redis://127.0.0.1:6379/zero")
    text = pipeline_yaml(Ports.allocate(), __import__("pathlib").Path("/tmp"),
                         processors="memory_limiter, agent_semconv, cost, batch")
    text = text.replace("  batch:\n", "  cost:\n    state: redis//nohost\n  batch:\n", 1)
    with pytest.raises(ConfigError, match=r"processors::cost::state: .*must be a redis://"):
        parse_config(text, "test")


@pytest.mark.slow
def test_an_org_budget_spent_from_two_pipelines_throttles_and_kills_both_at_the_fleet_total(redis_server):
    a, b = _fleet(redis_server.url, "a"), _fleet(redis_server.url, "b")
    a.ledger.charge("agent-a", 4.0, NOW)
    alerts = _alerts(a.push(NOW))
    b.ledger.charge("agent-b", 4.0, NOW)
    alerts += _alerts(b.push(NOW))  # 8 of 10 in the fleet: B's view is the fleet's at once
    assert b.ledger.spent("org", "org", NOW) == pytest.approx(8.0)
    a.refresh(NOW)
    assert a.ledger.assess("agent-a", NOW).action == "allow"  # 80 %: neither pipeline alone is near
    a.ledger.charge("agent-a", 0.6, NOW)
    alerts += _alerts(a.push(NOW))  # 86 %: throttle
    b.refresh(NOW)
    for ledger, agent in ((a.ledger, "agent-a"), (b.ledger, "agent-b")):
        d = ledger.assess(agent, NOW)
        assert d.action == "throttle" and d.reason == "budget org (org_month) at 86% of $10"
    b.ledger.charge("agent-b", 1.0, NOW)
    alerts += _alerts(b.push(NOW))  # 9.6 of 10: kill, for both, not at twice the limit
    a.refresh(NOW)
    assert [a.ledger.assess("agent-a", NOW).action, b.ledger.assess("agent-b", NOW).action] == ["kill", "kill"]
    assert a.ledger.spent("org", "org", NOW) == b.ledger.spent("org", "org", NOW) == pytest.approx(9.6)
    # each step announced once in the fleet, by the pipeline whose spend crossed it
    assert sorted(alerts, key=float) == ["0.5", "0.75", "0.85", "0.9", "0.95"]
    assert a.try_charge("agent-a", 0.01, NOW) == (False, [])


@pytest.mark.slow
def test_check_and_charge_is_atomic_across_pipelines_racing_for_the_last_dollars(redis_server):
    fleets = [_fleet(redis_server.url, name) for name in ("a", "b")]
    accepted = [0, 0]
    # Both pipelines charge once, then race from the same moment: without it one thread could take every
    # charge before the other started (it did in a CI run: 38 and 0), and no race would have been tested.
    both_in = threading.Barrier(2, timeout=30)

    def spend(k: int) -> None:
        while True:
            ok, _ = fleets[k].try_charge(f"agent-{k}", 0.0625, NOW)
            if not ok:
                return
            accepted[k] += 1
            if accepted[k] == 1:
                both_in.wait()

    threads = [threading.Thread(target=spend, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    # refused once the fleet's total reached the kill point (9.5): 152 charges of 1/16, whoever made them
    assert 0.0625 * sum(accepted) == 9.5 and min(accepted) >= 1
    assert fleets[0].state.totals([("org", "2026-12", [])])[("org", "2026-12", "org")] == (pytest.approx(9.5), 152)


@pytest.mark.slow
def test_breakers_open_from_failures_seen_across_two_pipelines(redis_server):
    settings = BreakerSettings(failure_threshold=5, window_s=60, recovery_timeout_s=30)
    state_a, state_b = SharedState(redis_server.url, "a"), SharedState(redis_server.url, "b")
    a = CircuitBreaker(settings, fleet=state_a.breaker("agent-1"))
    b = CircuitBreaker(settings, fleet=state_b.breaker("agent-1"))
    t0 = int(NOW * 1e9)
    ends = t0 + np.arange(5, dtype=np.int64) * 1_000_000_000
    assert a.record(ends[:3], np.ones(3, bool), NOW) == []  # 3 failures here: under the threshold
    opened = b.record(ends[3:], np.ones(2, bool), NOW + 5)  # 2 there: 5 in the fleet's window
    assert [(t.old, t.new, t.reason) for t in opened] == [(CLOSED, OPEN, "5 failed calls within 60s")]
    # A adopts B's transition before it counts anything more: both block
    adopted = a.sync(NOW + 6)
    assert [(t.new, t.reason) for t in adopted] == [(OPEN, "5 failed calls within 60s (seen by pipeline b)")]
    assert a.blocks() and b.blocks() and a.open_until == b.open_until == NOW + 35
    # a third pipeline that saw none of these calls finds the open breaker
    assert list(SharedState(redis_server.url, "c").breakers_not_closed()) == [("agent-1", "")]
    # a pipeline alone with 4 failures would not have opened: the count is the fleet's
    alone = CircuitBreaker(settings)
    assert alone.record(ends[:4], np.ones(4, bool), NOW) == [] and alone.state == CLOSED


@pytest.mark.slow
def test_redis_killed_and_restarted_means_local_views_then_a_reconcile_that_counts_spend_once(redis_server):
    registry = CollectorRegistry()
    a, b = _fleet(redis_server.url, "a"), _fleet(redis_server.url, "b")
    a.state.bind_metrics(registry)
    a.ledger.charge("agent-a", 3.0, NOW)
    a.push(NOW)
    b.ledger.charge("agent-b", 3.0, NOW)
    b.push(NOW)
    a.refresh(NOW)
    assert a.ledger.spent("org", "org", NOW) == pytest.approx(6.0)

    redis_server.kill()  # everything Redis held is gone
    a.ledger.charge("agent-a", 1.5, NOW)
    assert _alerts(a.push(NOW)) == ["0.75"]  # 7.5 of 10 in A's local view: its own alert, from its view
    b.ledger.charge("agent-b", 1.5, NOW)
    b.push(NOW)
    assert a.refresh(NOW) == (False, [])
    status = a.state.status()
    assert status["available"] is False and status["view"] == "local" and "Error" in status["last_error"]
    assert registry.get_sample_value("agent_sre_shared_state_up", {"component": "shared_state"}) == 0
    assert a.ledger.spent("org", "org", NOW) == pytest.approx(7.5)  # the fleet's 6 as last seen + its own 1.5
    assert b.ledger.spent("org", "org", NOW) == pytest.approx(7.5)

    redis_server.start()  # the same port, empty
    a.refresh(NOW)
    b.refresh(NOW)
    a.refresh(NOW)
    # every pipeline's spend once: A's 3 + 1.5, B's 3 + 1.5, neither twice nor lost with Redis's memory
    assert a.ledger.spent("org", "org", NOW) == b.ledger.spent("org", "org", NOW) == pytest.approx(9.0)
    assert a.state.totals([("org", "2026-12", [])])[("org", "2026-12", "org")][0] == pytest.approx(9.0)
    assert a.state.status()["available"] and a.state.outages == 1
    assert registry.get_sample_value("agent_sre_shared_state_up", {"component": "shared_state"}) == 1
    assert a.ledger.assess("agent-a", NOW).action == "throttle"  # 90 %: the fleet's view decides again


COST = """  cost:
    state: {url}
    state_instance: {name}
    state_refresh: 100ms
    budgets:
      - {{name: org, scope: org_month, limit_usd: 1.0}}
"""


def _service(tmp_path, name: str, url: str) -> tuple[Service, Ports]:
    ports = Ports.allocate()
    (tmp_path / name).mkdir()
    text = pipeline_yaml(ports, tmp_path / name, processors="memory_limiter, agent_semconv, cost, batch")
    text = text.replace("  batch:\n", COST.format(url=url, name=name) + "  batch:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service, ports


def _spend(service: Service, usd_each: float, n: int, agent: str) -> None:
    attrs = {"agent.did": agent, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
             "gen_ai.usage.cost": usd_each}
    service.receivers[0].ingest.export(request(n, attrs=attrs, start_ns=time.time_ns()), "test")
    service.exporters["duckdb"].store.sync()


def _get(ports: Ports, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}{path}", timeout=10) as r:
        return json.loads(r.read())


def _eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.slow
def test_two_running_pipelines_throttle_and_kill_on_the_org_budget_they_share(redis_server, tmp_path):
    (one, p1), (two, p2) = (_service(tmp_path, n, redis_server.url) for n in ("one", "two"))
    try:
        _spend(one, 0.1, 5, "agent-1")  # 0.5 USD
        _spend(two, 0.1, 4, "agent-2")  # 0.9 USD in the fleet: past 85 %, neither alone is
        assert _eventually(lambda: _get(p1, "/v1/decisions/agent-1")["action"] == "throttle")
        assert _eventually(lambda: _get(p2, "/v1/decisions/agent-2")["action"] == "throttle")
        _spend(one, 0.1, 1, "agent-1")  # 1.0 USD: past 95 %
        assert _eventually(lambda: _get(p2, "/v1/decisions/agent-2")["action"] == "kill")
        assert _eventually(lambda: _get(p1, "/v1/decisions/agent-1")["action"] == "kill")
        status = " ".join(line for lines in _get(p1, "/v1/status")["components"].values() for line in lines)
        assert f"shared state {redis_server.url} as one: fleet view" in status
        redis_server.kill()
        assert _eventually(lambda: "UNREACHABLE" in " ".join(
            line for lines in _get(p2, "/v1/status")["components"].values() for line in lines))
        assert _get(p2, "/v1/decisions/agent-2")["action"] == "kill"  # the local view keeps the last fleet view
    finally:
        one.shutdown()
        two.shutdown()


def test_a_pipeline_that_never_reaches_redis_decides_from_its_own_spend_and_says_so():
    from tests.conftest import free_port

    fleet = FleetBudgets(BudgetLedger([ORG]), SharedState(f"redis://127.0.0.1:{free_port()}/0", "alone"))
    assert fleet.refresh(NOW) == (False, [])
    fleet.ledger.charge("agent-a", 9.0, NOW)
    assert _alerts(fleet.push(NOW)) == ["0.5", "0.75", "0.85", "0.9"]  # from its local view
    assert fleet.ledger.assess("agent-a", NOW).action == "throttle"
    assert fleet.try_charge("agent-a", 0.6, NOW)[0] is True  # the local ledger's check: 96 % now
    assert fleet.try_charge("agent-a", 0.1, NOW) == (False, [])
    status = fleet.state.status()
    assert (status["view"], status["outages"]) == ("local", 1) and "Connection" in status["last_error"]


INCIDENTS = """  incidents:
    state: {url}
    state_instance: {name}
    breakers: {{roles: [tool], failure_threshold: 5, recovery_timeout: 1h}}
"""


@pytest.mark.slow
def test_two_running_pipelines_open_an_agents_breaker_from_failures_seen_across_both(redis_server, tmp_path):
    from tests.processors.incidents.test_incidents_in_pipeline import spans, tool

    services = []
    for name in ("one", "two"):
        ports = Ports.allocate()
        (tmp_path / name).mkdir()
        text = pipeline_yaml(ports, tmp_path / name, processors="memory_limiter, agent_semconv, incidents, batch")
        text = text.replace("  batch:\n", INCIDENTS.format(url=redis_server.url, name=name) + "  batch:\n", 1)
        services.append((Service(parse_config(text, "test")), ports))
        services[-1][0].start()
    try:
        def fail(k: int, n: int) -> None:
            services[k][0].receivers[0].ingest.export(spans([(tool("agent-1", "search"), True)] * n), "test")
            services[k][0].exporters["duckdb"].store.sync()

        fail(0, 3)  # 3 failures here, 2 there: 5 in the fleet
        fail(1, 2)
        for _, ports in services:  # the second by the fleet's count, the first by adopting it (tick)
            assert _eventually(lambda p=ports: _get(p, "/v1/decisions/agent-1")["action"] == "circuit_open")
        status = " ".join(line for lines in _get(services[0][1], "/v1/status")["components"].values() for line in lines)
        assert f"shared breakers {redis_server.url} as one: fleet view" in status
    finally:
        for service, _ in services:
            service.shutdown()


@pytest.mark.slow
def test_two_live_pipelines_with_one_instance_name_are_told_so(redis_server):
    first, second = _fleet(redis_server.url, "same"), _fleet(redis_server.url, "same")
    assert not first.state.name_clash and second.state.name_clash
    assert second.state.status()["instance_name_clash"] is True
