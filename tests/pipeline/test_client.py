"""The decisions client an agent embeds: should_proceed against a running pipeline (allow, throttle at
the suggested rate, kill, half-open probes), its cache, and fail-open / fail-closed without one."""

from __future__ import annotations

import time

import pytest

from agent_sre.pipeline.client import DecisionClient, should_proceed
from tests.conftest import free_port
from tests.processors.incidents.test_incidents_in_pipeline import send, start, tool


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def llm(agent: str, usd: float) -> dict:
    return {"agent.did": agent, "gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.usage.cost": usd}


def test_should_proceed_follows_the_decisions_and_keeps_a_throttles_rate(tmp_path):
    from tests.conftest import Ports

    ports = Ports.allocate()
    service = start(tmp_path, ports)
    endpoint = f"127.0.0.1:{ports.admin}"
    try:
        clock = Clock()
        client = DecisionClient(endpoint, cache_ttl=0, clock=clock)
        assert client.should_proceed("a1") and should_proceed("a1", endpoint=endpoint)
        send(service, [(llm("a1", 0.045), False)] * 20)  # 0.90 of a 1.00 day: throttled
        d = client.decision("a1")
        assert d["action"] == "throttle"
        rate = d["suggested_rate_per_min"]
        # 0.95 - 0.90 = 0.05 USD left at 0.045 per call: 1.11 calls over the minutes to midnight (UTC)
        # (the rate is given to two significant digits: within 5 % of the exact one, at any hour; an absolute
        # 1e-4 failed after ~22:10 UTC, when the rate passes 0.01 calls/min)
        minutes_left = (86400 - time.time() % 86400) / 60
        assert rate == pytest.approx((0.05 / 0.045) / minutes_left, rel=0.05)
        assert client.should_proceed("a1") is True  # the bucket holds one call
        assert client.should_proceed("a1") is False
        assert client.should_proceed("a1", task="another-task") is False  # one rate per agent, not per task
        clock.t += 60 / rate  # one call's worth of time later
        assert client.should_proceed("a1") is True
        send(service, [(llm("a1", 0.045), False)] * 2)  # 0.99: killed
        assert client.should_proceed("a1") is False

        cached = DecisionClient(endpoint, cache_ttl=3600)
        assert cached.should_proceed("a3") is True
        send(service, [(llm("a3", 0.5), False)] * 2)
        assert cached.should_proceed("a3") is True  # the cached answer, until it expires
        assert DecisionClient(endpoint, cache_ttl=0).should_proceed("a3") is False

        send(service, [(llm("team/a4", 0.5), False)] * 2)  # an agent id with a slash is one path segment
        assert DecisionClient(endpoint, cache_ttl=0, fail_open=True).should_proceed("team/a4") is False
    finally:
        service.shutdown()


def test_half_open_lets_only_the_probes_through(tmp_path):
    from tests.conftest import Ports

    ports = Ports.allocate()
    service = start(tmp_path, ports)
    try:
        send(service, [(tool("a1", "search"), True)] * 2)
        client = DecisionClient(f"127.0.0.1:{ports.admin}", cache_ttl=3600)
        assert client.should_proceed("a1", tool="search") is False  # open
        (proc,) = service.components_of("incidents")
        proc.clock = lambda: time.time() + 3601
        service.host.decisions.tick()
        probing = DecisionClient(f"127.0.0.1:{ports.admin}", cache_ttl=0)  # asking each time changes nothing:
        assert [probing.should_proceed("a1", tool="search", task=f"t{i}") for i in range(5)] == [
            True, True, True, False, False]  # the breaker's three probes, whatever the task
        assert probing.should_proceed("a1", tool="calc") is True
    finally:
        service.shutdown()


def test_without_a_pipeline_the_answer_is_the_configured_failure_mode():
    nobody = f"127.0.0.1:{free_port()}"
    assert DecisionClient(nobody, timeout=0.2).should_proceed("a1") is True
    assert DecisionClient(nobody, timeout=0.2, fail_open=False).should_proceed("a1") is False
