"""A market-research crew built with CrewAI, as its docs show: a research lead who may delegate
(`allow_delegation=True`) and a data analyst whose tool is a plain Python function (`@tool`); the
lead's task is done by delegating the figures to the analyst, CrewAI's crew delegation.  Traced with
OpenInference's CrewAI instrumentation and exported over OTLP to agent-sre.

The instrumentation runs in its event-listener mode (`use_event_listener=True`): its default mode
wraps `Task._execute_core`, which a delegated coworker never passes through, so the coworker's model
calls and tools would be credited to the agent that delegated; the listener sees every agent run on
CrewAI's event bus (the coworker's too, under the delegation tool's span) and makes the model-call
spans itself, with the usage the API answered, in the same trace (an OpenAI client instrumentation
on top would count every call twice, in traces of its own).

Run by tests/integration/test_frameworks_b.py in its own virtualenv (.servers/fw-crewai):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=fetch_sales_figures makes that tool raise (a warehouse that answers 503).  Arguments: the
regions to ask about, one crew run each (`kickoff_for_each`); EMEA when none is given.
"""

from __future__ import annotations

import os
import sys

# CrewAI's own usage telemetry and its hosted tracing (both to crewai.com) are off: offline here,
# and this agent's traces go to agent-sre.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import LLM, Agent, Crew, Process, Task  # noqa: E402
from crewai.tools import tool  # noqa: E402
from openinference.instrumentation.crewai import CrewAIInstrumentor  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint, then the instrumentation ---
provider = TracerProvider(resource=Resource.create({"service.name": "market-research", "service.version": "0.9.2"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
trace.set_tracer_provider(provider)
# CREWAI_EVENT_LISTENER=false: the instrumentation's default mode, whose delegation is only the
# lead's `Delegate work to coworker` tool call (the test checks that edge too).
CrewAIInstrumentor().instrument(tracer_provider=provider,
                                use_event_listener=os.environ.get("CREWAI_EVENT_LISTENER", "true") != "false")


@tool("fetch_sales_figures")
def fetch_sales_figures(region: str) -> str:
    """Fetch last quarter's sales figures for a region from the warehouse."""
    if os.environ.get("FAIL_TOOL") == "fetch_sales_figures":
        raise RuntimeError("warehouse error: answered 503")
    return f"{region}: 1,240 units, revenue 3.1M EUR, +12% on the quarter before"


llm = LLM(model="gpt-4o-mini")  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment

lead = Agent(
    role="Research Lead",
    goal="Answer the client's market question with figures.",
    backstory="Runs the research desk and hands number-crunching to the analyst.",
    allow_delegation=True,
    llm=llm,
)
analyst = Agent(
    role="Data Analyst",
    goal="Pull exact sales figures.",
    backstory="Knows the sales warehouse.",
    tools=[fetch_sales_figures],
    allow_delegation=False,
    llm=llm,
)
question = Task(
    name="market_question",
    description="How did the {region} region sell last quarter?",
    expected_output="Two sentences with the figures.",
    agent=lead,
)
crew = Crew(agents=[lead, analyst], tasks=[question], process=Process.sequential)


if __name__ == "__main__":
    try:
        regions = sys.argv[1:] or ["EMEA"]
        for region, result in zip(regions, crew.kickoff_for_each(inputs=[{"region": r} for r in regions]), strict=True):
            print(f"final answer ({region}): {result.raw}")
    finally:
        provider.shutdown()  # flushes the last spans
