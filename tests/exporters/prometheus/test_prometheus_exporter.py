"""prometheus exporter: the scrape carries SLO gauges, SLI counters, RED and GenAI histograms with the right
values; a real Prometheus (Debian's) scrapes it and answers queries for our SLO series."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml
from tests.processors.sli.test_sli import MINUTE, T0, TOOL, spans
from tests.prometheus_server import prometheus

LLM = {"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
       "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20}
CONFIG = """  sli: {}
  slo:
    interval: 1h
    objectives:
      - {name: tools, sli: tool_call_accuracy, target: 0.99, window: 1d}
"""


def start(tmp_path, metrics_port: int) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch",
                         exporters="duckdb, prometheus")
    text = text.replace("  batch:\n", CONFIG + "  batch:\n", 1)
    text = text.replace("  debug:\n", f"  prometheus:\n    endpoint: 127.0.0.1:{metrics_port}\n  debug:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample(families: dict, metric: str, name: str | None = None, **labels) -> float:
    found = [s.value for s in families[metric] if (name is None or s.name == name)
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (metric, name, labels, families[metric])
    return found[0]


def _load(service: Service) -> None:
    slo = service.components_of("slo")[0]
    ingest = service.receivers[0].ingest
    # minute 0: 98 good tool calls, 2 failed; 3 LLM calls of 100 input / 20 output tokens
    ingest.export(spans([(TOOL, False, 0)] * 98 + [(TOOL, True, 0)] * 2 + [(LLM, False, 0)] * 3), "test")
    slo.clock = lambda: (T0 + MINUTE) / 1e9
    slo.report()


def test_scrape_carries_red_genai_sli_and_slo_values(tmp_path):
    port = free_port()
    service = start(tmp_path, port)
    try:
        _load(service)
        f = scrape(port)
        red = "agent_sre_span_duration_seconds"
        assert sample(f, red, f"{red}_count", agent_id="a1", span_role="tool", status_code="error") == 2
        assert sample(f, red, f"{red}_count", agent_id="a1", span_role="tool", status_code="unset") == 98
        assert sample(f, red, f"{red}_bucket", span_role="llm", le="0.01") == 3  # each 1 ms long
        tok = "gen_ai_client_token_usage"
        common = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
        assert sample(f, tok, f"{tok}_sum", gen_ai_token_type="input", **common) == 300
        assert sample(f, tok, f"{tok}_count", gen_ai_token_type="output", **common) == 3
        assert sample(f, tok, f"{tok}_bucket", gen_ai_token_type="output", le="16.0", **common) == 0
        assert sample(f, tok, f"{tok}_bucket", gen_ai_token_type="output", le="64.0", **common) == 3
        assert sample(f, "agent_sre_sli_events", sli="tool_call_accuracy", agent_id="a1") == 100
        assert sample(f, "agent_sre_sli_good_events", sli="tool_call_accuracy", agent_id="a1") == 98
        key = {"slo": "tools", "agent_id": "a1"}
        assert sample(f, "agent_sre_slo_sli_value", **key) == pytest.approx(0.98)
        assert sample(f, "agent_sre_slo_objective", **key) == 0.99
        # 2 bad of an allowed 1: burn 2 over every window, budget exhausted
        assert sample(f, "agent_sre_slo_burn_rate", window="1h", **key) == pytest.approx(2.0)
        assert sample(f, "agent_sre_slo_error_budget_remaining", **key) == 0.0
        assert sample(f, "agent_sre_slo_status", status="exhausted", **key) == 1
    finally:
        service.shutdown()


@pytest.mark.slow
def test_a_real_prometheus_scrapes_our_slo_series(tmp_path):
    port = free_port()
    service = start(tmp_path, port)
    try:
        _load(service)
        with prometheus(tmp_path, port) as prom:
            (result,) = prom.query_until('agent_sre_slo_burn_rate{slo="tools",agent_id="a1",window="1h"}')
        assert float(result["value"][1]) == pytest.approx(2.0)
        assert result["metric"]["job"] == "agent_sre"
    finally:
        service.shutdown()


def test_scrape_carries_spend_per_agent_and_model_and_every_budget(tmp_path):
    """3 gpt-4o calls of 100 input / 20 output tokens at $2.50 / $10 per million: $0.0013500 spent by a1,
    against an agent-day budget of $0.001 (135 % used: past its kill line) and a task budget per call."""
    port = free_port()
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters="duckdb, prometheus")
    text = text.replace("  batch:\n", "  cost:\n    budgets:\n      - {name: day, scope: agent_day, limit_usd: 0.001}\n"
                        "      - {name: task, scope: task, limit_usd: 0.0004}\n  batch:\n", 1)
    text = text.replace("  debug:\n", f"  prometheus:\n    endpoint: 127.0.0.1:{port}\n  debug:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        request = spans([(LLM, False, 0)] * 3)
        for sp in request.resource_spans[0].scope_spans[0].spans:  # spent now: in the budgets' current period
            sp.start_time_unix_nano, sp.end_time_unix_nano = time.time_ns() - 10**6, time.time_ns()
        service.receivers[0].ingest.export(request, "test")
        service.exporters["duckdb"].store.sync()
        f = scrape(port)
        per_call = (100 * 2.5 + 20 * 10) / 1e6
        assert sample(f, "agent_sre_llm_cost_usd", "agent_sre_llm_cost_usd_total", agent_id="a1",
                      model="gpt-4o") == pytest.approx(3 * per_call)
        day = {"budget": "day", "scope": "agent_day", "subject": "a1"}
        assert sample(f, "agent_sre_cost_budget_spent_usd", **day) == pytest.approx(3 * per_call)
        assert sample(f, "agent_sre_cost_budget_limit_usd", **day) == 0.001
        assert sample(f, "agent_sre_cost_budget_utilisation", **day) == pytest.approx(3 * per_call / 0.001, rel=1e-4)
        # each call is its own task (its own trace) at $0.00045 of $0.0004: every one is killed
        assert sample(f, "agent_sre_cost_task_budgets_limited", budget="task", action="kill") == 3
    finally:
        service.shutdown()
