"""A customer-support agent built with the OpenAI Agents SDK, as its docs show: a triage agent that
hands off to a billing agent, whose tools are plain Python functions; traced with OpenInference's
OpenAI Agents instrumentation and exported over OTLP to agent-sre.

Run by tests/integration/test_frameworks_a.py in its own virtualenv (.servers/fw-openai_agents):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=lookup_order makes that tool raise (an order service that answers 503).
"""

from __future__ import annotations

import asyncio
import os
import sys

from agents import Agent, Runner, function_tool, set_default_openai_api
from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint, then the instrumentation ---
provider = TracerProvider(resource=Resource.create({"service.name": "support-desk", "service.version": "1.4.0"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
trace.set_tracer_provider(provider)
OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)  # replaces the SDK's own trace export

# The stand-in (like most OpenAI-compatible servers) speaks Chat Completions, not the Responses API.
set_default_openai_api("chat_completions")


@function_tool
def lookup_order(order_id: str) -> str:
    """Look an order up in the order service."""
    if os.environ.get("FAIL_TOOL") == "lookup_order":
        raise RuntimeError("order service error: 503 Service Unavailable")
    return f"order {order_id}: 2 items, paid 42.00 EUR, delivered"


@function_tool
def issue_refund(order_id: str, amount_eur: float) -> str:
    """Refund part or all of an order."""
    return f"refunded {amount_eur:.2f} EUR on order {order_id}"


billing = Agent(
    name="Billing",
    handoff_description="Refunds, invoices and payments.",
    instructions="Billing agent. Look the order up before refunding it.",
    tools=[lookup_order, issue_refund],
    model="gpt-4o-mini",
)
triage = Agent(
    name="Triage",
    instructions="Triage agent. Hand billing questions to the Billing agent.",
    handoffs=[billing],
    model="gpt-4o-mini",
)


async def main() -> None:
    result = await Runner.run(triage, "I want a refund for order A-1001.", max_turns=15)
    print(f"final answer ({result.last_agent.name}): {result.final_output}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        provider.shutdown()  # flushes the last spans
    sys.exit(0)
