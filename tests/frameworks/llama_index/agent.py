"""A research-and-report team built with LlamaIndex's AgentWorkflow, as its docs show: a research agent
whose tool is a plain Python function hands off to a writer agent, which files the report with its own
tool; traced with OpenInference's LlamaIndex instrumentation and exported over OTLP to agent-sre.

That instrumentation names no agent and marks no task (the workflow, its steps and the agents' turns
are all CHAIN spans), so the run is wrapped in the task span `agent_sre.instrument.task()` makes
(a GenAI `invoke_agent` span with `gen_ai.agent.id`, `agent.task.name` and `agent.task.success`),
written here with the OpenTelemetry API: the framework's virtualenv does not hold agent-sre.  And
LlamaIndex's OpenAI client streams without usage unless asked: `stream_options.include_usage` makes
the API report the tokens on the last chunk, where the instrumentation reads them.

Run by tests/integration/test_frameworks_b.py in its own virtualenv (.servers/fw-llama_index):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=search_web makes that tool raise (a search service that answers 503).
"""

from __future__ import annotations

import asyncio
import os

from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
from llama_index.llms.openai import OpenAI
from openinference.instrumentation.llama_index import LlamaIndexInstrumentor
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint, then the instrumentation ---
provider = TracerProvider(resource=Resource.create({"service.name": "research-desk", "service.version": "2.0.1"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
trace.set_tracer_provider(provider)
LlamaIndexInstrumentor().instrument(tracer_provider=provider)


def search_web(query: str) -> str:
    """Search the web for sources on a topic."""
    if os.environ.get("FAIL_TOOL") == "search_web":
        raise RuntimeError("search service error: answered 503")
    return f"3 sources on {query}: grid storage costs fell 30% in 2024; sodium-ion cells shipped at scale"


def write_report(title: str, body: str) -> str:
    """File the finished report."""
    return f"report '{title}' filed ({len(body)} characters)"


# LlamaIndex reads its own OPENAI_API_BASE, not the OpenAI SDK's OPENAI_BASE_URL: pass it on.
llm = OpenAI(model="gpt-4o-mini", api_base=os.environ.get("OPENAI_BASE_URL"),
             additional_kwargs={"stream_options": {"include_usage": True}})

research = FunctionAgent(
    name="ResearchAgent",
    description="Finds sources on a topic.",
    system_prompt="ResearchAgent: search the web, then hand off to WriteAgent.",
    tools=[search_web],
    llm=llm,
    can_handoff_to=["WriteAgent"],
)
writer = FunctionAgent(
    name="WriteAgent",
    description="Writes and files the report.",
    system_prompt="WriteAgent: write the report from the notes and file it.",
    tools=[write_report],
    llm=llm,
    can_handoff_to=[],
)
workflow = AgentWorkflow(agents=[research, writer], root_agent="ResearchAgent")


async def main() -> None:
    tracer = provider.get_tracer("research-desk")
    with tracer.start_as_current_span("invoke_agent research-desk", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "research-desk",
            "gen_ai.agent.name": "Research desk", "agent.task.name": "battery_report"}) as task:
        try:
            result = await workflow.run(user_msg="Write a short report on grid-scale battery storage.")
        except Exception as exc:
            task.set_attribute("agent.task.success", False)
            task.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
            raise
        task.set_attribute("agent.task.success", True)
        task.set_status(Status(StatusCode.OK))
    print(f"final answer: {result}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        provider.shutdown()  # flushes the last spans
