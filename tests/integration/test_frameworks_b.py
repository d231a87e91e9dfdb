"""CrewAI, Semantic Kernel and LlamaIndex as they really run: a real multi-agent app of each framework
(tests/frameworks/NAME/agent.py, in its own virtualenv under .servers/fw-NAME), instrumented the way
its users do it, talks to the stand-in OpenAI API and exports OTLP to a real `agent-sre run`; the
stored rows are checked: an agent on every span, task success, tool names, model, tokens and cost,
delegation edges where the instrumentation says who delegated to whom, and the SRE loop's answer to
a tool that fails (tool-accuracy SLO, the tool's breaker).

One pipeline serves the module (each app is a service of its own); each app runs once as it should
and once with a failing tool.  The stand-in answers every model call with 300 prompt and 40 completion
tokens, so tokens and cost are counted by hand from the calls it saw.
"""

from __future__ import annotations

import urllib.parse

import pytest

from tests.conftest import eventually
from tests.frameworks.common import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    DefaultPipeline,
    Script,
    StandInLLM,
    ToolStep,
    run_agent,
    start_default_pipeline,
)

pytestmark = pytest.mark.slow

# gpt-4o-mini at $0.15 / $0.60 per million input / output tokens (genai-prices).
CALL_USD = PROMPT_TOKENS * 0.15e-6 + COMPLETION_TOKENS * 0.60e-6


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = start_default_pipeline(tmp_path_factory.mktemp("frameworks-b"))
    yield p
    p.stop()


# --- reading the stored rows of one app ---------------------------------------------------------------

SPAN_COLUMNS = ("trace_id", "name", "status_code", "span_role", "agent_id", "task_name", "task_success", "tool_name",
                "model", "provider", "input_tokens", "output_tokens", "cost_usd", "delegation_from", "delegation_to")


def spans(p: DefaultPipeline, service: str, after: set[str] = frozenset()) -> list[dict]:
    """The stored spans of ``service``'s traces, in start order, without the traces in ``after``."""
    found = p.query(f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans WHERE service_name = '{service}' ORDER BY start_ns")
    return [r for r in (dict(zip(SPAN_COLUMNS, row, strict=True)) for row in found) if r["trace_id"] not in after]


def stored_run(p: DefaultPipeline, service: str, expected: int, after: set[str] = frozenset()) -> list[dict]:
    """The run's spans once all ``expected`` are in and attributed (none waits for an ancestor)."""
    rows = eventually(lambda: (r := spans(p, service, after)) and len(r) >= expected
                      and all(s["agent_id"] for s in r) and r, timeout=30)
    assert rows, f"{service}: expected {expected} attributed spans, got {spans(p, service, after)}"
    return rows


def tools(rows: list[dict]) -> list[tuple]:
    return [(s["agent_id"], s["tool_name"], s["status_code"]) for s in rows if s["span_role"] == "tool"]


def tasks(rows: list[dict]) -> list[tuple]:
    return [(s["agent_id"], s["task_name"], s["task_success"]) for s in rows if s["span_role"] == "agent_task"]


def delegations(rows: list[dict]) -> list[tuple]:
    """(agent, delegator, target, tool) of the delegation spans: the agent whose span it is delegated.

    The delegator of a handoff recorded as a tool call is that span's agent; when the span has none
    of its own (it inherits it through the trace), the store fills ``delegation_from`` (see
    pipeline/storage/attribution.py), so it is checked against the agent, not spelt out."""
    out = [(s["agent_id"], s["delegation_from"], s["delegation_to"], s["tool_name"])
           for s in rows if s["span_role"] == "delegation"]
    assert all(frm == agent for agent, frm, _, _ in out), out
    return [(agent, to, tool) for agent, _, to, tool in out]


def model_calls(rows: list[dict]) -> list[dict]:
    """LLM spans that carry the usage the API answered (one per model call)."""
    return [s for s in rows if s["span_role"] == "llm" and s["input_tokens"] is not None]


def assert_priced(calls: list[dict], n: int) -> None:
    assert len(calls) == n
    assert {s["model"] for s in calls} == {"gpt-4o-mini"}
    assert sum(s["input_tokens"] for s in calls) == n * PROMPT_TOKENS
    assert sum(s["output_tokens"] for s in calls) == n * COMPLETION_TOKENS
    assert sum(s["cost_usd"] for s in calls) == pytest.approx(n * CALL_USD)


def agent_cost(p: DefaultPipeline, agent: str) -> float:
    return sum(r["cost_usd"] for r in p.get("/v1/costs")["summary"] if r["agent_id"] == agent)


def slo(p: DefaultPipeline, agent: str, name: str) -> dict:
    return next((r for r in p.get("/v1/slos")["slos"] if r["agent_id"] == agent and r["slo"] == name), {})


def decision(p: DefaultPipeline, agent: str, tool: str) -> dict:
    return p.get(f"/v1/decisions/{urllib.parse.quote(agent)}?tool={urllib.parse.quote(tool)}")


def assert_breaker_opens(p: DefaultPipeline, agent: str, tool: str) -> None:
    answer = eventually(lambda: (d := decision(p, agent, tool))["action"] == "circuit_open" and d)
    assert answer, decision(p, agent, tool)


# --- CrewAI: crew delegation --------------------------------------------------------------------------

CREW = "market-research"
DELEGATE = ToolStep("delegate_work_to_coworker", {"task": "Pull EMEA sales figures for last quarter",
                                                  "context": "the client asks", "coworker": "Data Analyst"})
FETCH = ToolStep("fetch_sales_figures", {"region": "EMEA"})


def test_crewai_delegation_lands_as_an_edge_from_the_lead_to_the_analyst_and_a_failing_tool_opens_its_breaker(
        pipeline):
    with StandInLLM(Script([DELEGATE, FETCH], final="Done: {agent}")) as llm:
        run_agent("crewai", llm, pipeline)
    # crew.kickoff, the lead's agent span (2 model calls, the delegation tool), the analyst's agent
    # span under that tool (2 model calls, the warehouse tool).
    rows = stored_run(pipeline, CREW, expected=1 + 1 + 2 + 1 + 1 + 2 + 1)
    assert {s["agent_id"] for s in rows} == {CREW, "Research Lead", "Data Analyst"}  # the kickoff is the app's
    assert tasks(rows) == [("Research Lead", "market_question", True), ("Data Analyst", None, True)]
    assert tools(rows) == [("Research Lead", "delegate_work_to_coworker", "ok"),
                           ("Data Analyst", "fetch_sales_figures", "ok")]
    assert [(s["delegation_from"], s["delegation_to"]) for s in rows if s["delegation_from"]] == [
        ("Research Lead", "Data Analyst")]
    calls = model_calls(rows)
    assert_priced(calls, len(llm.requests))
    assert [s["agent_id"] for s in calls] == ["Research Lead", "Data Analyst", "Data Analyst", "Research Lead"]
    assert eventually(lambda: agent_cost(pipeline, "Data Analyst") == pytest.approx(2 * CALL_USD))

    # The warehouse fails: the analyst tries it four times per question (CrewAI stops a fifth identical
    # call), answers anyway, and the crew finishes; two questions make eight failures in a minute.
    seen = {s["trace_id"] for s in rows}
    with StandInLLM(Script([DELEGATE, FETCH], final="Done: {agent}", retries=3)) as llm:
        run_agent("crewai", llm, pipeline, "EMEA", "APAC", env={"FAIL_TOOL": "fetch_sales_figures"})
    failed = stored_run(pipeline, CREW, expected=2 * (1 + 1 + 2 + 1 + 1 + 5 + 4), after=seen)
    assert tools(failed).count(("Data Analyst", "fetch_sales_figures", "error")) == 8
    assert tasks(failed) == 2 * [("Research Lead", "market_question", True), ("Data Analyst", None, True)]
    assert_breaker_opens(pipeline, "Data Analyst", "fetch_sales_figures")
    accuracy = slo(pipeline, "Data Analyst", "tool-accuracy")
    assert (accuracy["events"], accuracy["bad_events"]) == (9, 8)
    assert decision(pipeline, "Research Lead", "delegate_work_to_coworker")["action"] == "allow"


def test_crewai_default_mode_delegation_lands_as_an_edge_on_the_leads_delegation_tool_call(pipeline):
    # The instrumentation's default mode gives the coworker no agent span (docs/frameworks.md): the
    # lead's `Delegate work to coworker` tool call, whose JSON input names the coworker, is the edge.
    seen = {s["trace_id"] for s in spans(pipeline, CREW)}
    with StandInLLM(Script([DELEGATE, FETCH], final="Done: {agent}")) as llm:
        run_agent("crewai", llm, pipeline, env={"CREWAI_EVENT_LISTENER": "false"})
    # kickoff, the lead's _execute_core span, the delegation tool, the warehouse tool (the coworker's,
    # credited to the lead in this mode).
    rows = stored_run(pipeline, CREW, expected=4, after=seen)
    assert delegations(rows) == [("Research Lead", "Data Analyst", "Delegate work to coworker")]
    assert tools(rows) == [("Research Lead", "fetch_sales_figures", "ok")]


# --- Semantic Kernel: handoff orchestration -----------------------------------------------------------

HELPDESK = "it-helpdesk"
HANDOFF = ToolStep("Handoff-transfer_to_NetworkAgent")
PING = ToolStep("NetworkPlugin-ping_host", {"host": "fs1.lyon"})
RESTART = ToolStep("NetworkPlugin-restart_router", {"site": "lyon"})


def test_semantic_kernel_handoff_runs_land_per_agent_with_priced_model_calls_and_a_failing_plugin_opens_its_breaker(
        pipeline):
    with StandInLLM(Script([HANDOFF, PING, RESTART], final="Done: {agent}")) as llm:
        run_agent("semantic_kernel", llm, pipeline)
    rows = stored_run(pipeline, HELPDESK, expected=29)
    agent_spans = [s for s in rows if s["agent_id"] != HELPDESK]
    # The runtime's own message spans (no agent in their trace) are the app's; the rest are the agents'.
    assert {s["agent_id"] for s in rows} == {HELPDESK, "triage-agent", "network-agent"}
    assert {s["name"].split()[0] for s in rows if s["agent_id"] == HELPDESK} == {"agent_runtime"}
    assert tasks(rows) == [("triage-agent", None, True), ("network-agent", None, True)]
    # The handoff is the triage agent's function call `Handoff-transfer_to_NetworkAgent`: a delegation
    # to the agent it names (by name: the handoff knows no id), not a tool call.
    assert delegations(rows) == [("triage-agent", "NetworkAgent", "Handoff-transfer_to_NetworkAgent")]
    assert tools(rows) == [("network-agent", "NetworkPlugin-ping_host", "unset"),
                           ("network-agent", "NetworkPlugin-restart_router", "unset")]
    calls = model_calls(agent_spans)
    assert_priced(calls, len(llm.requests))
    assert {s["provider"] for s in calls} == {"openai"}
    assert [s["agent_id"] for s in calls] == ["triage-agent"] + 3 * ["network-agent"]
    assert eventually(lambda: agent_cost(pipeline, "network-agent") == pytest.approx(3 * CALL_USD))

    # The monitoring service fails: the network agent calls ping five times, then gives up on it.
    seen = {s["trace_id"] for s in rows}
    with StandInLLM(Script([HANDOFF, PING, RESTART], final="Done: {agent}", retries=4)) as llm:
        run_agent("semantic_kernel", llm, pipeline, env={"FAIL_TOOL": "ping_host"})
    failed = eventually(lambda: (r := spans(pipeline, HELPDESK, seen))
                        and tools(r).count(("network-agent", "NetworkPlugin-ping_host", "error")) == 5 and r)
    assert failed, tools(spans(pipeline, HELPDESK, seen))
    assert_breaker_opens(pipeline, "network-agent", "NetworkPlugin-ping_host")
    accuracy = slo(pipeline, "network-agent", "tool-accuracy")
    assert accuracy["bad_events"] == 5


# --- LlamaIndex: AgentWorkflow handoff ------------------------------------------------------------------

DESK = "research-desk"
SEARCH = ToolStep("search_web", {"query": "grid-scale battery storage"})
HAND_OVER = ToolStep("handoff", {"to_agent": "WriteAgent", "reason": "sources found"})
WRITE = ToolStep("write_report", {"title": "Grid storage", "body": "Costs fell 30% in 2024."})


def test_llama_index_workflow_lands_under_its_task_span_with_priced_model_calls_and_a_failing_tool_opens_its_breaker(
        pipeline):
    with StandInLLM(Script([SEARCH, HAND_OVER, WRITE], final="Done: {agent}")) as llm:
        run_agent("llama_index", llm, pipeline)
    rows = stored_run(pipeline, DESK, expected=32)
    assert {s["agent_id"] for s in rows} == {DESK}
    assert tasks(rows) == [(DESK, "battery_report", True)]
    # The handoff tool's JSON input names the agent handed to: a delegation from the task's agent (the
    # instrumentation names no agent of LlamaIndex's own), not a tool call.
    assert delegations(rows) == [(DESK, "WriteAgent", "handoff")]
    assert tools(rows) == [(DESK, "search_web", "ok"), (DESK, "write_report", "ok")]
    assert_priced(model_calls(rows), len(llm.requests))
    assert eventually(lambda: agent_cost(pipeline, DESK) == pytest.approx(len(llm.requests) * CALL_USD))

    # The search service fails six times in a row; the agents go on without it and file the report.
    seen = {s["trace_id"] for s in rows}
    with StandInLLM(Script([SEARCH, HAND_OVER, WRITE], final="Done: {agent}", retries=5)) as llm:
        run_agent("llama_index", llm, pipeline, env={"FAIL_TOOL": "search_web"})
    failed = stored_run(pipeline, DESK, expected=32 + 5 * 7, after=seen)
    assert tools(failed).count((DESK, "search_web", "error")) == 6
    assert tasks(failed) == [(DESK, "battery_report", True)]
    assert_breaker_opens(pipeline, DESK, "search_web")
    accuracy = slo(pipeline, DESK, "tool-accuracy")
    assert delegations(failed) == [(DESK, "WriteAgent", "handoff")]
    assert (accuracy["events"], accuracy["bad_events"]) == (2 + 6 + 1, 6)  # tool calls; the handoffs are not
