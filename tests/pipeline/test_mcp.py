"""``agent-sre mcp`` (pipeline/cli/mcp.py) through the MCP SDK's own client: over stdio (the client spawns
the command) and over streamable HTTP; the tools listed and called, their answers checked against a
store with known data, from the running pipeline's admin API and from its file once it has stopped.

The store: a pipeline in this process (cost, sli, slo, incidents with per-tool breakers, the replay
extension) takes two tasks of agent ``triage-bot``: task 1 succeeds (an LLM call of $0.25, one good
``web_search``), task 2 fails (an LLM call of $0.25, three failed ``web_search`` calls, which open
that tool's breaker: a ``circuit_open`` decision; with task-success's page alert, a P1 incident)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.cli.mcp import SreState, announced_decisions
from tests.conftest import REPO, eventually, free_port, pipeline_yaml, start_on_free_ports
from tests.otlp_builders import kv

AGENT = "triage-bot"
T1, T2 = "11" * 16, "22" * 16
TOOLS = ["sre_budgets", "sre_cost_summary", "sre_decisions", "sre_incident", "sre_incidents", "sre_query",
         "sre_slo_status", "sre_trace"]
PROCESSORS = """  cost:
    budgets:
      - {name: agent-daily, scope: agent_day, limit_usd: 1.0}
      - {name: per-task, scope: task, limit_usd: 0.5}
  sli: {}
  slo:
    objectives:
      - {name: task-success, sli: task_success_rate, target: 0.99, window: 30d}
      - {name: tool-accuracy, sli: tool_call_accuracy, target: 0.9, window: 30d}
  incidents:
    breakers:
      per_tool: true
      roles: [tool]
      failure_threshold: 3
      window: 60s
      recovery_timeout: 1h
"""


def config_text(ports, data_dir: Path) -> str:
    text = pipeline_yaml(ports, data_dir, processors="memory_limiter, agent_semconv, cost, sli, slo, incidents, batch",
                         admin="  replay: {}\n")
    return text.replace("  batch:\n", PROCESSORS + "  batch:\n", 1).replace(
        "extensions: [health_check, admin]", "extensions: [health_check, admin, replay]")


def task_request(trace_id: str, success: bool, tools: list[bool]) -> ExportTraceServiceRequest:
    """One task of the agent: its invoke_agent span, an LLM call of $0.25, and tool calls (ok or failed)."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    root = bytes.fromhex(trace_id[:14] + "01")

    def span(i: int, name: str, attrs: dict, failed: bool = False) -> None:
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = bytes.fromhex(trace_id), root if i == 0 else bytes.fromhex(
            trace_id[:14] + f"{i + 1:02x}"), name
        if i:
            sp.parent_span_id = root
        sp.start_time_unix_nano, sp.end_time_unix_nano = now + i * 1000, now + i * 1000 + 500
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
        if failed:
            sp.status.code = 2

    span(0, "invoke_agent triage-bot", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": AGENT,
                                        "agent.task.name": "triage", "agent.task.success": success})
    span(1, "chat m", {"gen_ai.agent.id": AGENT, "gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                       "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10, "gen_ai.usage.cost": 0.25})
    for i, ok in enumerate(tools, start=2):
        span(i, "execute_tool web_search", {"gen_ai.agent.id": AGENT, "gen_ai.operation.name": "execute_tool",
                                            "gen_ai.tool.name": "web_search"}, failed=not ok)
    return req


@pytest.fixture
def sre_store(tmp_path):
    """The running pipeline with the two tasks committed, its decision and incident out: (service, config)."""
    service, ports, text = start_on_free_ports(lambda ports, _: config_text(ports, tmp_path))
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    try:
        store = service.exporters["duckdb"].store
        for req in (task_request(T1, True, [True]), task_request(T2, False, [False, False, False])):
            service.receivers[0].ingest.export(req, "test")
        store.sync()
        assert eventually(lambda: store.read("SELECT count(*) FROM events WHERE kind = 'decision'")[0][0] == 1)
        # the open breaker (P2) and task-success's page alert (burn 50x: P2) in one incident: two kinds at P2, P1
        assert eventually(lambda: store.read("SELECT priority FROM incidents") == [("P1",)])
    except BaseException:
        service.shutdown()
        raise
    yield service, ports, config
    service.shutdown()


def over(server, calls: list[tuple[str, dict]]) -> tuple[list[str], list]:
    """(the tool names listed, each call's result) through the SDK's client."""
    async def session():
        async with Client(server, read_timeout_seconds=60) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            return names, [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(session)


def stdio(*args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "agent_sre.pipeline.cli", "mcp", *args],
                                 cwd=str(REPO), env={**os.environ})


CALLS = [("sre_slo_status", {}), ("sre_cost_summary", {"days": 1}), ("sre_budgets", {}),
         ("sre_decisions", {"agent_id": AGENT, "tool": "web_search"}), ("sre_incidents", {}),
         ("sre_trace", {"trace_id": T2}),
         ("sre_query", {"sql": "SELECT span_role, count(*) AS n, sum(cost_usd) AS usd FROM spans GROUP BY 1 ORDER BY 1"})]


def answers(results: list) -> dict[str, dict]:
    out = {}
    for (name, _), result in zip(CALLS, results, strict=True):
        assert not result.is_error, (name, result.content)
        assert json.loads(result.content[0].text) == result.structured_content  # text and structure agree
        out[name] = result.structured_content
    return out


def check_known_data(got: dict[str, dict]) -> None:
    """The answers, by hand: 2 tasks (1 failed), 4 tool calls (3 failed), $0.50 on model m, breaker open."""
    slos = {r["slo"]: r for r in got["sre_slo_status"]["slos"]}
    assert (slos["task-success"]["agent_id"], slos["task-success"]["events"], slos["task-success"]["bad_events"],
            slos["task-success"]["sli_value"]) == (AGENT, 2, 1, 0.5)
    assert (slos["tool-accuracy"]["events"], slos["tool-accuracy"]["bad_events"],
            slos["tool-accuracy"]["sli_value"], slos["tool-accuracy"]["status"]) == (4, 3, 0.25, "exhausted")
    (spend,) = got["sre_cost_summary"]["summary"]
    assert (spend["agent_id"], spend["model"], spend["cost_usd"], spend["llm_spans"]) == (AGENT, "m", 0.5, 2)
    assert spend["utilisation"] == 0.5  # of the $1 agent-daily budget
    budgets = got["sre_budgets"]
    assert [(b["budget"], b["subject"], b["spent_usd"], b["utilisation"]) for b in budgets["budgets"]] == [
        ("agent-daily", AGENT, 0.5, 0.5)]
    (per_task,) = budgets["task_budgets"]
    assert (per_task["budget"], per_task["tasks"], per_task["spent_usd"], per_task["max_utilisation"]) == (
        "per-task", 2, 0.5, 0.5)
    (incident,) = got["sre_incidents"]["incidents"]
    assert (incident["agent_id"], incident["priority"], incident["state"]) == (AGENT, "P1", "open")
    trace = got["sre_trace"]
    assert trace["trace_id"] == T2 and trace["totals"]["spans"] == 5 and trace["totals"]["cost_usd"] == 0.25
    rows = got["sre_query"]["rows"]
    assert rows == [["agent_task", 2, None], ["llm", 2, 0.5], ["tool", 4, None]]


@pytest.mark.slow
def test_over_stdio_the_tools_answer_alike_from_the_running_pipeline_and_from_its_file(sre_store):
    service, ports, config = sre_store
    names, results = over(stdio("--config", str(config)), CALLS)  # its admin API answers
    assert names == TOOLS
    running = answers(results)
    assert {a["source"] for a in running.values()} == {f"the running pipeline at 127.0.0.1:{ports.admin}"}
    check_known_data(running)
    (decision,) = running["sre_decisions"]["decisions"]
    assert (decision["agent_id"], decision["action"]) == (AGENT, "circuit_open")

    service.shutdown()  # stopped: the same answers from its file
    names, results = over(stdio("--config", str(config)), CALLS)
    stopped = answers(results)
    assert {a["source"] for a in stopped.values()} == {f"the store file {config.parent / 'spans.duckdb'} (read-only)"}
    check_known_data(stopped)
    for name in ("sre_slo_status", "sre_cost_summary", "sre_budgets", "sre_incidents", "sre_trace", "sre_query"):
        assert _content(stopped[name]) == _content(running[name]), name
    (announced,) = stopped["sre_decisions"]["decisions"]  # the last decision the pipeline announced
    assert (announced["agent_id"], announced["tool"], announced["action"]) == (AGENT, "web_search", "circuit_open")


@pytest.mark.slow
def test_over_streamable_http_the_tools_are_listed_and_called(sre_store, tmp_path):
    service, _, config = sre_store
    service.shutdown()
    db = config.parent / "spans.duckdb"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent_sre.pipeline.cli", "mcp", "--transport", "http", "--listen",
                             f"127.0.0.1:{port}", "--config", str(config), "--db", str(db)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mcp.log", "ab"))
    try:
        _wait_port(port)
        names, results = over(f"http://127.0.0.1:{port}/mcp", CALLS + [("sre_incident", {"incident_id": "INC-99999"}),
                                                                        ("sre_query", {"sql": "DELETE FROM spans"})])
        assert names == TOOLS
        check_known_data(answers(results[:len(CALLS)]))
        missing, refused = results[len(CALLS):]
        assert missing.is_error and "no incident 'INC-99999'" in missing.content[0].text
        assert refused.is_error and "query failed" in refused.content[0].text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_http_with_a_token_refuses_callers_without_it_and_a_public_address_needs_one(sre_store, tmp_path):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    service, _, config = sre_store
    service.shutdown()
    port = free_port()
    env = {**os.environ, "AGENT_SRE_MCP_TOKEN": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "agent_sre.pipeline.cli", "mcp", "--transport", "http", "--listen",
                             f"127.0.0.1:{port}", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mcp.log", "ab"))
    try:
        _wait_port(port)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/mcp", data=b"{}", headers={
                "Content-Type": "application/json"}), timeout=10)
        assert refused.value.code == 401
        transport = streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=httpx2.AsyncClient(
            headers={"Authorization": "Bearer s3cret"}, timeout=60))
        names, (slo,) = over(transport, [("sre_slo_status", {"agent_id": AGENT})])
        assert names == TOOLS and {r["slo"] for r in slo.structured_content["slos"]} == {"task-success", "tool-accuracy"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "mcp", "--transport", "http", "--listen",
                          "0.0.0.0:8765", "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if k != "AGENT_SRE_MCP_TOKEN"})
    assert res.returncode == 2 and "is not a loopback address: set AGENT_SRE_MCP_TOKEN" in res.stderr


def _content(answer: dict) -> dict:
    """An answer without where it came from and how long it took."""
    return {k: v for k, v in answer.items() if k not in ("source", "elapsed_ms")}


def _wait_port(port: int) -> None:
    """Until the HTTP server accepts connections."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "agent-sre mcp did not listen"
            time.sleep(0.1)


# --- without a server: the file paths and the decisions from events ----------------------------------

def test_the_stopped_answers_say_so_when_no_pipeline_ran(tmp_path):
    from agent_sre.pipeline.cli.common import CliError, load

    config = tmp_path / "p.yaml"
    config.write_text(config_text(_FreePorts(), tmp_path / "never"))
    state = SreState(load(str(config)))
    body = state.slo_status(None)
    assert body["slos"] == [] and body["note"].startswith("no SLO data yet: no span store at")
    assert state.costs(7)["summary"] == [] and state.incidents(False)["incidents"] == []
    assert state.decisions(AGENT, None, None)["decisions"] == []
    with pytest.raises(CliError, match="no incident 'INC-00001'"):
        state.incident("INC-00001")
    with pytest.raises(CliError, match="a trace id is 32 hex digits"):
        state.trace("abc", True)
    with pytest.raises(CliError, match="days must be 1 to 366"):
        state.costs(0)


def test_announced_decisions_are_the_last_event_of_each_agent_and_tool(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "e.duckdb"))
    con.execute("CREATE TABLE events (time_ns BIGINT, kind VARCHAR, state VARCHAR, name VARCHAR, summary VARCHAR, "
                "labels MAP(VARCHAR, VARCHAR))")
    con.execute("""INSERT INTO events VALUES
        (1, 'decision', 'firing', 'throttle', 'a1: throttle', MAP {'agent_id': 'a1', 'reason': '90% of daily'}),
        (2, 'decision', 'firing', 'kill', 'a1: kill', MAP {'agent_id': 'a1', 'reason': '100% of daily'}),
        (3, 'decision', 'firing', 'circuit_open', 'a2 web', MAP {'agent_id': 'a2', 'tool': 'web', 'reason': '3 failures'}),
        (4, 'decision', 'resolved', 'allow', 'a2 web allowed', MAP {'agent_id': 'a2', 'tool': 'web', 'reason': ''}),
        (5, 'budget', 'firing', 'kill', 'not a decision', MAP {'agent_id': 'a3'})""")
    read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
    got = [(d["agent_id"], d["tool"], d["action"], d["reason"], d["announced_ns"])
           for d in announced_decisions(read, None, None, None)]
    assert got == [("a1", None, "kill", "100% of daily", 2), ("a2", "web", "allow", "", 4)]
    assert [d["action"] for d in announced_decisions(read, "a2", "web", None)] == ["allow"]
    assert announced_decisions(read, "a3", None, None) == []


class _FreePorts:
    def __init__(self):
        self.grpc, self.http, self.admin, self.metrics = (free_port() for _ in range(4))
