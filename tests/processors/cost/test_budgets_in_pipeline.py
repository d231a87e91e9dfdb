"""Budgets in the running pipeline: spend charged as spans are committed, decisions at
/v1/decisions, kept across a restart (rebuilt from the store), reset by the clock."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request

COST = """  cost:
    budgets:
      - {name: daily, scope: agent_day, limit_usd: 1.0}
      - {name: monthly, scope: org_month, limit_usd: 1000}
"""


def _spend(service: Service, usd_each: float, n: int, agent: str = "a1") -> None:
    attrs = {"agent.did": agent, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
             "gen_ai.usage.cost": usd_each}
    service.receivers[0].ingest.export(request(n, attrs=attrs, start_ns=time.time_ns()), "test")
    service.exporters["duckdb"].store.sync()  # charged once committed


def _get(ports: Ports, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}{path}", timeout=10) as r:
        return json.loads(r.read())


def test_spend_throttles_then_kills_survives_a_restart_and_resets_the_next_day(tmp_path):
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch")
    text = text.replace("  batch:\n", COST + "  batch:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        _spend(service, 0.1, 5)  # 0.5 USD: 50 %
        assert _get(ports, "/v1/decisions/a1")["action"] == "allow"
        _spend(service, 0.1, 4)  # 0.9 USD: past 85 %
        d = _get(ports, "/v1/decisions/a1")
        assert d["action"] == "throttle" and d["reason"] == "budget daily (agent_day) at 90% of $1"
        assert d["until"] == (int(time.time()) // 86400 + 1) * 86400  # the next UTC midnight
        _spend(service, 0.06, 1)  # 0.96 USD: past 95 %
        assert [{k: v for k, v in d.items() if k in ("agent_id", "action", "reason", "until")}
                for d in _get(ports, "/v1/decisions")["decisions"]] == [
            {"agent_id": "a1", "action": "kill", "reason": "budget daily (agent_day) at 96% of $1",
             "until": d["until"]}]
        assert _get(ports, "/v1/decisions/someone-else")["action"] == "allow"
    finally:
        service.shutdown()

    restarted = Service(parse_config(text, "test"))  # same store: the day's spend is rebuilt from it
    restarted.start()
    try:
        assert _get(ports, "/v1/decisions/a1")["action"] == "kill"
        (cost,) = restarted.components_of("cost")
        cost.clock = lambda: time.time() + 86400  # tomorrow
        assert _get(ports, "/v1/decisions/a1")["action"] == "allow"
    finally:
        restarted.shutdown()


def test_a_task_budget_decides_per_task_and_a_running_tasks_spend_survives_a_restart(tmp_path):
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch")
    text = text.replace("  batch:\n", "  cost:\n    budgets:\n      - {name: task, scope: task, limit_usd: 0.1}\n"
                        "  batch:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        req = request(3, attrs={"agent.did": "a1", "gen_ai.operation.name": "chat",
                                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.cost": 0.035},
                      start_ns=time.time_ns())
        for sp in req.resource_spans[0].scope_spans[0].spans[1:]:
            sp.trace_id = req.resource_spans[0].scope_spans[0].spans[0].trace_id  # one task, three LLM calls
        task = req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
        service.receivers[0].ingest.export(req, "test")
        service.exporters["duckdb"].store.sync()
        assert _get(ports, f"/v1/decisions/a1?task={task}")["action"] == "kill"  # 0.105 of 0.10
        assert _get(ports, "/v1/decisions/a1?task=another")["action"] == "allow"
        announced = service.exporters["duckdb"].store.read(
            "SELECT name, labels['task'] FROM events WHERE kind = 'decision'")
        assert announced == [("kill", task)]  # the task's decision is an event too
        steps = service.exporters["duckdb"].store.read(
            "SELECT name, labels['subject'], labels['agent_id'] FROM events WHERE kind = 'budget' ORDER BY name")
        assert steps == [("task 95%", task, "a1")]  # a task's budget event names the agent that spends in it
    finally:
        service.shutdown()
    restarted = Service(parse_config(text, "test"))
    restarted.start()
    heard: list[dict] = []
    restarted.host.events.subscribe(heard.extend, ["budget"])
    try:
        assert _get(ports, f"/v1/decisions/a1?task={task}")["action"] == "kill"  # rebuilt from its spans
        (cost,) = restarted.components_of("cost")
        cost.clock = lambda: time.time() + 2 * 3600  # the task idle for longer than TASK_IDLE_S: forgotten
        restarted.host.decisions.tick()
        assert [(e["state"], e["labels"]["subject"], e["labels"].get("agent_id")) for e in heard] == [
            ("resolved", task, "a1")]
    finally:
        restarted.shutdown()


def test_spend_counts_in_the_period_of_its_spans_live_and_after_a_restart_on_an_injected_clock(tmp_path):
    from agent_sre.processors.cost.budget import utc

    noon = utc(2026, 11, 25, 12)
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch")
    text = text.replace("  batch:\n", COST + "  batch:\n", 1).replace("  duckdb:\n", "  duckdb:\n    retention: 0s\n", 1)

    def started() -> Service:
        service = Service(parse_config(text, "test"))
        (cost,) = [p for p in service.processors if p.id.type == "cost"]
        cost.clock = lambda: noon  # before start: the rebuild runs on it too
        service.start()
        return service

    def spend(service: Service, usd: float, when: float) -> None:
        attrs = {"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                 "gen_ai.usage.cost": usd}
        service.receivers[0].ingest.export(request(1, attrs=attrs, start_ns=int(when * 1e9)), "test")
        service.exporters["duckdb"].store.sync()

    service = started()
    try:
        spend(service, 0.5, utc(2026, 11, 24, 23))  # yesterday's, arriving late: not today's spend
        spend(service, 0.5, utc(2026, 11, 27, 9))  # from the day after tomorrow (a wrong clock): not today's
        spend(service, 0.9, utc(2026, 11, 25, 10))  # today's: 90 %
        d = _get(ports, "/v1/decisions/a1")
        assert (d["action"], d["utilisation"]) == ("throttle", pytest.approx(0.9))
    finally:
        service.shutdown()
    service = started()
    try:
        d = _get(ports, "/v1/decisions/a1")  # rebuilt from cost_minutes by the same rule
        assert (d["action"], d["utilisation"]) == ("throttle", pytest.approx(0.9))
    finally:
        service.shutdown()
