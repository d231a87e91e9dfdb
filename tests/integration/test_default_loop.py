"""The user path of the embedded default: `agent-sre run` with no config, an agent instrumented the
way the GenAI conventions describe (`gen_ai.agent.id` on the `invoke_agent` span only), every span
exported in its own request as it ends (children first) through the receiver's worker processes:
every span is attributed to the agent, its LLM call is priced and charged to it, its tool failures
open the breaker, and its SLOs, costs and decisions are visible within seconds; the same after
kill -9 and a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.conftest import Ports, eventually, wait_http

CLI = [sys.executable, "-m", "agent_sre.pipeline.cli"]
AGENT = "triage-bot"


def run_default(tmp_path, ports: Ports) -> subprocess.Popen:
    env = {**os.environ, "AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}",
           "AGENT_SRE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports.http}",
           "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports.prometheus}",
           "AGENT_SRE_DATA": str(tmp_path / "data"),
           # The embedded default runs no receiver workers since the C decoder; here two, so children and
           # roots reach the pipeline through different processes (tests/pipeline/test_cli.py runs it with none).
           "AGENT_SRE_RECEIVER_WORKERS": "2"}
    proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "pipeline.log", "ab"))
    wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
    return proc


def get(ports: Ports, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}{path}", timeout=10) as r:
        return json.loads(r.read())


def query(ports: Ports, sql: str) -> list[list]:
    req = urllib.request.Request(f"http://127.0.0.1:{ports.admin}/v1/query", data=json.dumps({"sql": sql}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["rows"]


def run_agent(port: int, failures: int) -> None:
    """One agent run with the real SDK: each span exported alone, as it ends (children first)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-service"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)))
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent triage-bot", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": AGENT, "gen_ai.agent.name": "Triage",
            "gen_ai.conversation.id": "conv-1"}):
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 120_000,
                "gen_ai.usage.output_tokens": 20_000}):
            pass
        for _ in range(failures):
            with tracer.start_as_current_span("execute_tool web_search", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search"}) as tool:
                tool.set_status(Status(StatusCode.ERROR, "upstream 503"))
    provider.shutdown()


@pytest.mark.slow
def test_the_embedded_default_runs_the_whole_loop_for_an_agent_named_only_on_its_root_span(tmp_path):
    ports = Ports.allocate()
    proc = run_default(tmp_path, ports)
    try:
        run_agent(ports.grpc, failures=6)
        # Every span is the agent's, none left unattributed, and the session came along.
        assert eventually(lambda: query(ports, "SELECT agent_id, session_id, count(*) FROM spans GROUP BY ALL")
                          == [[AGENT, "conv-1", 8]]), query(ports, "SELECT agent_id, count(*) FROM spans GROUP BY 1")
        # Priced (genai-prices) and charged to the agent.
        costs = eventually(lambda: [r for r in get(ports, "/v1/costs")["summary"] if r["agent_id"] == AGENT])
        assert costs and costs[0]["cost_usd"] > 0
        budgets = {b["budget"] for b in get(ports, "/v1/costs")["budgets"]}
        assert {"agent-daily", "org-monthly"} <= budgets
        assert "per-task" not in budgets  # a task of cents is under the $2 budget's first step: no account
        # Six tool failures in a minute opened the breaker of that tool.
        decision = eventually(lambda: (d := get(ports, f"/v1/decisions/{AGENT}?tool=web_search"))["action"]
                              == "circuit_open" and d)
        assert decision and decision["action"] == "circuit_open", get(ports, f"/v1/decisions/{AGENT}?tool=web_search")
        # SLOs are evaluated for the agent seen: tool accuracy counted 6 bad events.
        slos = {r["slo"]: r for r in get(ports, "/v1/slos")["slos"] if r["agent_id"] == AGENT}
        assert set(slos) == {"task-success", "tool-accuracy", "latency"}
        assert (slos["tool-accuracy"]["events"], slos["tool-accuracy"]["bad_events"]) == (6, 6)
        assert slos["task-success"]["events"] == 1
        # Nothing waits for an ancestor and nothing stayed unattributed (the pipeline's own metrics).
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=10) as r:
            own = r.read().decode()
        assert 'agent_sre_attribution_held_spans{exporter="duckdb"} 0.0' in own
        assert 'agent_sre_attribution_unattributed_spans{exporter="duckdb"} 0.0' in own
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # After kill -9 and a restart: the same answers, from the store.
    proc = run_default(tmp_path, ports)
    try:
        assert query(ports, "SELECT agent_id, count(*) FROM spans GROUP BY ALL") == [[AGENT, 8]]
        slos = {r["slo"]: r for r in get(ports, "/v1/slos")["slos"] if r["agent_id"] == AGENT}
        assert (slos["tool-accuracy"]["events"], slos["tool-accuracy"]["bad_events"]) == (6, 6)
        assert [r for r in get(ports, "/v1/costs")["summary"] if r["agent_id"] == AGENT][0]["cost_usd"] > 0
        assert get(ports, f"/v1/decisions/{AGENT}?tool=web_search")["action"] == "circuit_open"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
