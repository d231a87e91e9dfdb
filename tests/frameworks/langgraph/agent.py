"""A customer-support graph built with LangGraph, as its multi-agent docs show: agents as graph
nodes, the triage agent handing off to the billing agent (a prebuilt ReAct agent) by returning a
`Command(goto=...)` when the model calls its handoff tool; tools are plain Python functions.  Traced with OpenLLMetry's
LangChain/LangGraph instrumentation and exported over OTLP to agent-sre.

Run by tests/integration/test_frameworks_a.py in its own virtualenv (.servers/fw-langgraph):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=lookup_order makes that tool raise (an order service that answers 503).
"""

from __future__ import annotations

import os
from typing import Literal

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent
from langgraph.types import Command
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.langchain import LangchainInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint, then the instrumentation ---
provider = TracerProvider(resource=Resource.create({"service.name": "support-desk", "service.version": "1.4.0"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
trace.set_tracer_provider(provider)
LangchainInstrumentor().instrument(tracer_provider=provider)


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up in the order service."""
    if os.environ.get("FAIL_TOOL") == "lookup_order":
        raise RuntimeError("order service error: 503 Service Unavailable")
    return f"order {order_id}: 2 items, paid 42.00 EUR, delivered"


@tool
def issue_refund(order_id: str, amount_eur: float) -> str:
    """Refund part or all of an order."""
    return f"refunded {amount_eur:.2f} EUR on order {order_id}"


model = ChatOpenAI(model="gpt-4o-mini", max_retries=0)  # OPENAI_BASE_URL, OPENAI_API_KEY


@tool
def transfer_to_billing() -> str:
    """Hand refunds, invoices and payments to the billing agent."""
    return "Transferred to billing"


def triage(state: MessagesState) -> Command[Literal["billing", "__end__"]]:
    """The triage agent: answers itself, or hands off with a Command (LangGraph's handoff)."""
    reply = model.bind_tools([transfer_to_billing]).invoke(
        [{"role": "system", "content": "Triage agent. Hand billing questions to the billing agent."},
         *state["messages"]])
    if not reply.tool_calls:
        return Command(goto=END, update={"messages": [reply]})
    call = reply.tool_calls[0]
    done = {"role": "tool", "content": transfer_to_billing.invoke(call["args"]), "tool_call_id": call["id"]}
    return Command(goto="billing", update={"messages": [reply, done]})


# The billing agent: a prebuilt ReAct agent; a tool that raises goes back to the model as an error message.
billing = create_react_agent(
    model, tools=ToolNode([lookup_order, issue_refund], handle_tool_errors=True),
    prompt="Billing agent. Look the order up before refunding it.", name="billing")

graph = (StateGraph(MessagesState)
         .add_node("triage", triage)
         .add_node("billing", billing)
         .add_edge(START, "triage")
         .compile(name="support-desk"))


if __name__ == "__main__":
    try:
        result = graph.invoke({"messages": [{"role": "user", "content": "I want a refund for order A-1001."}]},
                              {"recursion_limit": 40})
        print("final answer:", result["messages"][-1].content)
    finally:
        provider.shutdown()  # flushes the last spans
