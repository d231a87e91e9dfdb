"""LangGraph, the OpenAI Agents SDK and AutoGen as they really run: a real agent of each framework
(tests/frameworks/NAME/agent.py, in its own virtualenv .servers/fw-NAME built by `make test-deps`),
instrumented as a user does, talks to a stand-in OpenAI API and exports OTLP to a real `agent-sre
run`; the stored rows must credit every span to an agent, mark the task's success, name the tools,
price the model calls and show the handoffs as delegation edges; a tool that raises must move an
SLO, a cost or a decision.

The fast tests at the top feed the attributes each instrumentation was seen to emit (recorded from
those runs, values shortened) through the shipped normalisation table, so a change to
pipeline/pdata/conventions.yaml that breaks a framework fails without the virtualenvs."""

from __future__ import annotations

import os

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
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
from tests.otlp_builders import kv

# gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens (genai-prices).
COST_PER_CALL = PROMPT_TOKENS * 0.15e-6 + COMPLETION_TOKENS * 0.60e-6
ORDER = {"order_id": "A-1001"}
REFUND = {"order_id": "A-1001", "amount_eur": 42.0}
RETRIES = 5  # the model calls a failing tool 1 + 5 times: over the breaker's 5 failures a minute


# --- the table, on what each instrumentation emits -------------------------------------------------


def _normalized(*spans: dict[str, object], resource: dict[str, object] | None = None) -> list[dict]:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kv(k, v) for k, v in {"service.name": "support-desk", **(resource or {})}.items())
    ss = rs.scope_spans.add()
    for i, attrs in enumerate(spans):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name, sp.kind = os.urandom(16), os.urandom(8), f"span-{i}", Span.SPAN_KIND_INTERNAL
        sp.start_time_unix_nano, sp.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_000_001_000
        sp.status.code = Status.STATUS_CODE_OK
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
    return normalize(request_to_table(req).table, load_conventions()).to_pylist()


def test_openllmetry_langgraph_workflow_span_is_its_graph_not_the_run_id():
    [row] = _normalized({"traceloop.span.kind": "workflow", "traceloop.entity.name": "support-desk",
                         "traceloop.workflow.name": "support-desk", "gen_ai.operation.name": "invoke_agent",
                         "gen_ai.agent.name": "support-desk", "gen_ai.agent.id": "01a23647-37ef-758e-abcc-5464055f5e47"})
    assert (row["agent_id"], row["task_name"], row["span_role"], row["task_success"]) == (
        "support-desk", "support-desk", "agent_task", True)


def test_openllmetry_langgraph_command_goto_is_a_delegation_between_nodes():
    [row] = _normalized({"gen_ai.operation.name": "goto", "langgraph.command.source_node": "triage",
                         "langgraph.command.goto_node": "billing"})
    assert (row["span_role"], row["delegation_from"], row["delegation_to"]) == ("delegation", "triage", "billing")


def test_openinference_openai_agents_handed_off_agent_span_is_the_edge_from_the_agent_that_handed_off():
    entry, handed = _normalized(
        {"openinference.span.kind": "AGENT", "agent.name": "Triage", "graph.node.id": "Triage"},
        {"openinference.span.kind": "AGENT", "agent.name": "Billing", "graph.node.id": "Billing",
         "graph.node.parent_id": "Triage"})
    assert (entry["agent_id"], entry["span_role"], entry["delegation_from"], entry["delegation_to"]) == (
        "Triage", "agent_task", None, "Triage")
    assert (handed["agent_id"], handed["span_role"], handed["delegation_from"], handed["delegation_to"]) == (
        "Billing", "agent_task", "Triage", "Billing")


def test_openinference_autogen_agent_span_names_its_agent_by_graph_node_and_who_spoke_before():
    [row] = _normalized({"openinference.span.kind": "AGENT", "graph.node.id": "billing",
                         "graph.node.parent_id": "triage", "input.value": "{\"messages\": []}"})
    assert (row["agent_id"], row["agent_name"], row["delegation_from"], row["delegation_to"]) == (
        "billing", "billing", "triage", "billing")


def test_autogen_own_spans_name_the_agent_not_its_per_run_team_id():
    [row] = _normalized({"gen_ai.operation.name": "invoke_agent", "gen_ai.system": "autogen",
                         "gen_ai.agent.name": "billing",
                         "gen_ai.agent.id": "billing_8c3c4b84-bb18-485c-b99f-809ec2198954/8c3c4b84-bb18-485c-b99f"})
    assert (row["agent_id"], row["agent_name"], row["span_role"]) == ("billing", "billing", "agent_task")


def test_a_child_span_naming_a_graph_node_does_not_become_an_agent():
    # graph.node.id names an agent only on an AGENT span; a CHAIN step keeps inheriting its agent.
    [row] = _normalized({"openinference.span.kind": "CHAIN", "graph.node.id": "router"})
    assert (row["agent_id"], row["agent_name"], row["delegation_to"]) == (None, None, None)


# --- the real agents --------------------------------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path):
    running = start_default_pipeline(tmp_path)
    yield running
    running.stop()


def run_twice(name: str, pipeline: DefaultPipeline, steps: list[ToolStep], final: str = "All done.") -> tuple[int, int]:
    """A healthy run, then one whose lookup_order raises: the number of model calls of each."""
    calls = []
    for env in ({}, {"FAIL_TOOL": "lookup_order"}):
        with StandInLLM(Script(steps, final=final, retries=RETRIES)) as llm:
            run_agent(name, llm, pipeline, env=env)
        calls.append(len(llm.requests))
    return calls[0], calls[1]


def traces(pipeline: DefaultPipeline, expected: int) -> tuple[str, str]:
    """(healthy trace, failing trace): the failing one has the tool spans in error."""
    rows = eventually(lambda: (r := pipeline.query(
        "SELECT trace_id, count(*) FILTER (WHERE span_role = 'tool' AND status_code = 'error') AS failed "
        "FROM spans GROUP BY 1 ORDER BY failed, min(start_ns)")) and len(r) == expected and r)
    assert rows and len(rows) == expected, pipeline.query("SELECT trace_id, name FROM spans ORDER BY start_ns")
    return rows[0][0], rows[-1][0]


def assert_every_span_has_an_agent(pipeline: DefaultPipeline, agents: set[str]) -> None:
    assert pipeline.query("SELECT count(*) FROM spans WHERE agent_id IS NULL") == [[0]]
    assert {r[0] for r in pipeline.query("SELECT DISTINCT agent_id FROM spans")} == agents


def assert_llm_calls_priced(pipeline: DefaultPipeline, trace_id: str, calls: int) -> None:
    """One LLM span per model call, with the model, the stand-in's tokens and the price of those."""
    rows = pipeline.query(f"SELECT model, input_tokens, output_tokens, cost_usd FROM spans "
                          f"WHERE trace_id = '{trace_id}' AND span_role = 'llm'")
    assert len(rows) == calls, rows
    for model, input_tokens, output_tokens, cost in rows:
        assert model.startswith("gpt-4o-mini")
        assert (input_tokens, output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        assert cost == pytest.approx(COST_PER_CALL)


def agent_costs(pipeline: DefaultPipeline) -> dict[str, float]:
    return {r["agent_id"]: r["cost_usd"] for r in pipeline.get("/v1/costs")["summary"]}


def slo(pipeline: DefaultPipeline, agent: str, name: str) -> dict:
    rows = [r for r in pipeline.get("/v1/slos")["slos"] if r["agent_id"] == agent and r["slo"] == name]
    return rows[0] if rows else {}


def assert_breaker_opens_for(pipeline: DefaultPipeline, agent: str, tool: str, failures: int, events: int) -> None:
    """The injected failures: the tool-accuracy SLO counts them, and the tool's breaker opened."""
    accuracy = eventually(lambda: (s := slo(pipeline, agent, "tool-accuracy")).get("bad_events") == failures and s)
    assert accuracy and (accuracy["events"], accuracy["bad_events"]) == (events, failures), \
        slo(pipeline, agent, "tool-accuracy")
    decision = eventually(lambda: (d := pipeline.get(f"/v1/decisions/{agent}?tool={tool}"))["action"]
                          == "circuit_open" and d)
    assert decision, pipeline.get(f"/v1/decisions/{agent}?tool={tool}")


@pytest.mark.slow
def test_openai_agents_handoff_lands_with_agents_tools_costs_and_the_handoff_edge(pipeline):
    healthy_calls, failing_calls = run_twice("openai_agents", pipeline, [
        ToolStep("transfer_to_billing"), ToolStep("lookup_order", ORDER), ToolStep("issue_refund", REFUND)])
    assert (healthy_calls, failing_calls) == (4, 1 + 1 + RETRIES + 1 + 1)  # triage; lookups, refund, answer
    healthy, failing = traces(pipeline, 2)
    # The workflow's root span is the service's; each agent's span and everything under it, the agent's.
    assert_every_span_has_an_agent(pipeline, {"support-desk", "Triage", "Billing"})
    tools = pipeline.query(f"SELECT agent_id, tool_name, status_code FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'tool' AND tool_name IS NOT NULL ORDER BY start_ns")
    assert tools == [["Billing", "lookup_order", "ok"], ["Billing", "issue_refund", "ok"]]
    tasks = pipeline.query(f"SELECT agent_id, task_success FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'agent_task' ORDER BY start_ns")
    assert tasks == [["support-desk", True], ["Triage", True], ["Billing", True]]
    assert_llm_calls_priced(pipeline, healthy, healthy_calls)
    assert_llm_calls_priced(pipeline, failing, failing_calls)
    # The handoff: Triage -> Billing, on Billing's agent span, once per run.
    assert pipeline.query("SELECT agent_id, delegation_from, delegation_to, count(*) FROM spans "
                          "WHERE delegation_from IS NOT NULL GROUP BY ALL") == [["Billing", "Triage", "Billing", 2]]
    costs = eventually(lambda: (c := agent_costs(pipeline)).get("Billing") and c)
    assert costs["Billing"] == pytest.approx((3 + failing_calls - 1) * COST_PER_CALL)
    assert costs["Triage"] == pytest.approx(2 * COST_PER_CALL)
    # Billing called 2 tools, then 6 failing lookups and a refund.
    assert_breaker_opens_for(pipeline, "Billing", "lookup_order", failures=1 + RETRIES, events=2 + 1 + RETRIES + 1)


@pytest.mark.slow
def test_langgraph_graph_lands_with_its_nodes_tools_costs_and_the_goto_edge(pipeline):
    healthy_calls, failing_calls = run_twice("langgraph", pipeline, [
        ToolStep("transfer_to_billing"), ToolStep("lookup_order", ORDER), ToolStep("issue_refund", REFUND)])
    assert (healthy_calls, failing_calls) == (4, 1 + 1 + RETRIES + 1 + 1)
    healthy, failing = traces(pipeline, 2)
    # The graph is the agent (its workflow span names it, not its run id); the billing subgraph's own
    # span names billing.
    assert_every_span_has_an_agent(pipeline, {"support-desk", "billing"})
    tools = pipeline.query(f"SELECT agent_id, tool_name, status_code FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'tool' ORDER BY start_ns")
    assert tools == [["support-desk", "transfer_to_billing", "unset"], ["support-desk", "lookup_order", "unset"],
                     ["support-desk", "issue_refund", "unset"]]
    tasks = pipeline.query(f"SELECT agent_id, task_name, task_success FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'agent_task' ORDER BY start_ns")
    assert tasks == [["support-desk", None, True], ["support-desk", "support-desk", True], ["billing", None, True]]
    assert_llm_calls_priced(pipeline, healthy, healthy_calls)
    assert_llm_calls_priced(pipeline, failing, failing_calls)
    # The node handing off with Command(goto="billing"): a delegation span per run.
    assert pipeline.query("SELECT span_role, delegation_from, delegation_to, count(*) FROM spans "
                          "WHERE delegation_to IS NOT NULL GROUP BY ALL") == [["delegation", "triage", "billing", 2]]
    costs = eventually(lambda: (c := agent_costs(pipeline)).get("support-desk") and c)
    assert costs["support-desk"] == pytest.approx((healthy_calls + failing_calls) * COST_PER_CALL)
    # 3 tool calls, then transfer, 6 failing lookups and a refund.
    assert_breaker_opens_for(pipeline, "support-desk", "lookup_order", failures=1 + RETRIES,
                             events=3 + 1 + 1 + RETRIES + 1)


@pytest.mark.slow
def test_autogen_swarm_lands_with_agents_tools_costs_and_the_team_handoff_edge(pipeline):
    healthy_calls, failing_calls = run_twice("autogen", pipeline, [
        ToolStep("transfer_to_billing"), ToolStep("lookup_order", ORDER), ToolStep("issue_refund", REFUND)],
        final="Refund issued. TERMINATE")
    assert (healthy_calls, failing_calls) == (4, 1 + 1 + RETRIES + 1 + 1)
    healthy, failing = traces(pipeline, 2)
    assert_every_span_has_an_agent(pipeline, {"support-desk", "triage", "billing"})
    tools = pipeline.query(f"SELECT agent_id, tool_name FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'tool' ORDER BY start_ns")
    assert tools == [["triage", "transfer_to_billing"], ["billing", "lookup_order"], ["billing", "issue_refund"]]
    tasks = pipeline.query(f"SELECT agent_id, task_success FROM spans WHERE trace_id = '{healthy}' "
                           "AND span_role = 'agent_task' ORDER BY start_ns")
    assert tasks == [["triage", True], ["billing", True]]
    assert_llm_calls_priced(pipeline, healthy, healthy_calls)
    assert_llm_calls_priced(pipeline, failing, failing_calls)
    # The team's messages: the user's task reached triage, triage's handoff reached billing.
    assert pipeline.query("SELECT delegation_from, delegation_to, count(*) FROM spans "
                          "WHERE delegation_to IS NOT NULL GROUP BY ALL ORDER BY 1 DESC") == [
        ["triage", "billing", 2], ["start", "triage", 2]]
    # openinference-instrumentation-autogen-agentchat 0.1.22 ends a failed tool's span OK (it sets OK
    # before ERROR, and OTel keeps the first), so the failure shows as what it cost: the model's
    # retries, charged to billing.
    costs = eventually(lambda: (c := agent_costs(pipeline)).get("billing") and c)
    assert costs["billing"] == pytest.approx((healthy_calls - 1 + failing_calls - 1) * COST_PER_CALL)
    failing_cost, healthy_cost = (pipeline.query(f"SELECT sum(cost_usd) FROM spans WHERE trace_id = '{t}'")[0][0]
                                  for t in (failing, healthy))
    assert failing_cost - healthy_cost == pytest.approx(RETRIES * COST_PER_CALL)  # the retried lookups
