"""Budgets in the running pipeline announce themselves: budget steps and decision changes are events
(kept in the store's `events` table), resolved when the period resets; spend is summarised at
/v1/costs and by `agent-sre cost summary`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.processors.cost.test_budgets_in_pipeline import COST, _get, _spend


def test_steps_and_decisions_are_events_that_resolve_when_the_day_resets(tmp_path):
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch")
    config = tmp_path / "pipeline.yaml"
    config.write_text(text.replace("  batch:\n", COST + "  batch:\n", 1))
    service = Service(parse_config(config.read_text(), "test"))
    service.start()
    heard: list[dict] = []
    service.host.events.subscribe(heard.extend)
    try:
        _spend(service, 0.1, 5)  # 50 %
        assert [(e["kind"], e["state"], e["severity"], e["name"]) for e in heard] == [
            ("budget", "firing", "ticket", "daily 50%")]
        _spend(service, 0.1, 4)  # 90 %: two steps in one charge (the higher is announced), and a throttle
        assert [(e["kind"], e["state"], e["severity"], e["name"]) for e in heard[1:]] == [
            ("budget", "firing", "ticket", "daily 90%"), ("decision", "firing", "ticket", "throttle")]
        throttle = heard[-1]
        assert throttle["labels"]["agent_id"] == "a1" and float(throttle["labels"]["suggested_rate_per_min"]) > 0
        assert len({e["fingerprint"] for e in heard if e["kind"] == "budget"}) == 1  # one budget alert, updated
        _spend(service, 0.06, 1)  # 96 %: the kill point, as a budget event (page) and a decision
        step, kill = heard[-2:]
        assert (step["kind"], step["severity"], step["name"]) == ("budget", "page", "daily 95%")
        assert (kill["kind"], kill["state"], kill["severity"], kill["name"]) == ("decision", "firing", "page", "kill")
        assert kill["fingerprint"] == throttle["fingerprint"] and kill["started_ns"] == throttle["started_ns"]

        costs = _get(ports, "/v1/costs")
        (row,) = costs["summary"]
        assert (row["agent_id"], row["model"], row["llm_spans"]) == ("a1", "gpt-4o-mini", 10)
        assert row["cost_usd"] == pytest.approx(0.96) and row["utilisation"] == pytest.approx(0.96)
        daily, monthly = sorted(costs["budgets"], key=lambda b: b["budget"])
        assert (daily["budget"], daily["subject"], daily["utilisation"]) == ("daily", "a1", pytest.approx(0.96))
        assert (monthly["budget"], monthly["subject"], monthly["spent_usd"]) == ("monthly", "org", pytest.approx(0.96))

        (cost,) = service.components_of("cost")
        cost.clock = lambda: time.time() + 86400  # tomorrow: the day's budget resets
        heard.clear()
        service.host.decisions.tick()
        assert sorted((e["kind"], e["state"], e["name"]) for e in heard) == [
            ("budget", "resolved", "daily reset"), ("decision", "resolved", "allow")]
        store = service.exporters["duckdb"].store
        assert store.read("SELECT kind, count(*) FROM events GROUP BY ALL ORDER BY ALL") == [
            ("budget", 4), ("decision", 3)]
    finally:
        service.shutdown()

    out = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "cost", "summary", "--config", str(config),
                          "--format", "json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["summary"]  # from the file: the pipeline is stopped
    assert (row["agent_id"], row["model"]) == ("a1", "gpt-4o-mini") and row["cost_usd"] == pytest.approx(0.96)
