"""A customer-support team built with AutoGen AgentChat, as its docs show: a Swarm in which the
triage assistant hands off to the billing assistant (a HandoffMessage on the team's topic), whose
tools are plain Python functions.  Traced with OpenInference's AutoGen AgentChat instrumentation
(the team run; each agent's turn, with the agent whose message it answers; the model calls with
their tokens; the tools), exported over OTLP to agent-sre.

AutoGen's own spans (agent runtime, create/invoke agent) are left off: they name each agent of a
team `<name>_<team uuid>`, a new id per run, so the team's messages could not be credited by name.

Run by tests/integration/test_frameworks_a.py in its own virtualenv (.servers/fw-autogen):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=lookup_order makes that tool raise (an order service that answers 503).
"""

from __future__ import annotations

import asyncio
import os

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.teams import Swarm
from autogen_ext.models.openai import OpenAIChatCompletionClient
from openinference.instrumentation.autogen_agentchat import AutogenAgentChatInstrumentor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint, then the instrumentation ---
provider = TracerProvider(resource=Resource.create({"service.name": "support-desk", "service.version": "1.4.0"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
AutogenAgentChatInstrumentor().instrument(tracer_provider=provider)


async def lookup_order(order_id: str) -> str:
    """Look an order up in the order service."""
    if os.environ.get("FAIL_TOOL") == "lookup_order":
        raise RuntimeError("order service error: 503 Service Unavailable")
    return f"order {order_id}: 2 items, paid 42.00 EUR, delivered"


async def issue_refund(order_id: str, amount_eur: float) -> str:
    """Refund part or all of an order."""
    return f"refunded {amount_eur:.2f} EUR on order {order_id}"


async def main() -> None:
    # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment, as for the openai client.
    model = OpenAIChatCompletionClient(model="gpt-4o-mini", base_url=os.environ["OPENAI_BASE_URL"])
    triage = AssistantAgent(
        "triage", model_client=model, handoffs=["billing"],
        system_message="Triage agent. Hand billing questions to billing.")
    billing = AssistantAgent(
        "billing", model_client=model, tools=[lookup_order, issue_refund], max_tool_iterations=10,
        system_message="Billing agent. Look the order up before refunding it; say TERMINATE when done.")
    team = Swarm([triage, billing],
                 termination_condition=TextMentionTermination("TERMINATE") | MaxMessageTermination(30))
    result = await team.run(task="I want a refund for order A-1001.")
    print(f"stop reason: {result.stop_reason}; last: {result.messages[-1].to_text()}")
    await model.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        provider.shutdown()  # flushes the last spans
