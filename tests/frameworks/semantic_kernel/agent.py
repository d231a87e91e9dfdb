"""An IT helpdesk built with Semantic Kernel, as its docs show: a triage agent hands the conversation off
to a network agent (HandoffOrchestration on the in-process runtime), whose tools are plain Python
methods of a plugin (`@kernel_function`).  Traced by Semantic Kernel's own OpenTelemetry support (its
GenAI diagnostics: agent, model-call and tool spans), switched on by its environment variable, and
exported over OTLP to agent-sre.

Run by tests/integration/test_frameworks_b.py in its own virtualenv (.servers/fw-semantic_kernel):
OPENAI_BASE_URL points at the test's stand-in LLM, OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline.
FAIL_TOOL=ping_host makes that tool raise (a monitoring service that answers 503).
"""

from __future__ import annotations

import asyncio
import os

# Read when Semantic Kernel is imported: its GenAI spans are off unless this says otherwise.
os.environ.setdefault("SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS", "true")

from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

# --- telemetry: the OTel SDK with agent-sre as the OTLP endpoint; Semantic Kernel uses the global one ---
provider = TracerProvider(resource=Resource.create({"service.name": "it-helpdesk", "service.version": "3.2.0"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
trace.set_tracer_provider(provider)

from semantic_kernel.agents import ChatCompletionAgent, HandoffOrchestration, OrchestrationHandoffs  # noqa: E402
from semantic_kernel.agents.runtime import InProcessRuntime  # noqa: E402
from semantic_kernel.connectors.ai.open_ai import OpenAIChatCompletion  # noqa: E402
from semantic_kernel.functions import kernel_function  # noqa: E402


class NetworkPlugin:
    """What the network agent can do."""

    @kernel_function(description="Ping a host and report its round-trip time.")
    def ping_host(self, host: str) -> str:
        if os.environ.get("FAIL_TOOL") == "ping_host":
            raise RuntimeError("monitoring error: answered 503")
        return f"{host}: 4 packets, 0% loss, 12 ms"

    @kernel_function(description="Restart the router of a site.")
    def restart_router(self, site: str) -> str:
        return f"router at {site} restarted"


# OPENAI_API_KEY from the environment; the OpenAI SDK under it reads OPENAI_BASE_URL.
service = OpenAIChatCompletion(ai_model_id="gpt-4o-mini")
# Each agent object gets a fresh UUID as its id (gen_ai.agent.id) unless given one: a stable id makes it
# the same agent to the SLOs and budgets from one run to the next.
triage = ChatCompletionAgent(
    id="triage-agent",
    name="TriageAgent",
    description="First line: routes each ticket.",
    instructions="TriageAgent: route network problems to NetworkAgent.",
    service=service,
)
network = ChatCompletionAgent(
    id="network-agent",
    name="NetworkAgent",
    description="Diagnoses and fixes network problems.",
    instructions="NetworkAgent: ping the host, restart the router if needed.",
    service=service,
    plugins=[NetworkPlugin()],
)
handoffs = OrchestrationHandoffs().add(
    source_agent=triage.name, target_agent=network.name, description="Transfer network problems to this agent.")
helpdesk = HandoffOrchestration(members=[triage, network], handoffs=handoffs)


async def main() -> None:
    runtime = InProcessRuntime()
    runtime.start()
    try:
        result = await helpdesk.invoke(task="The Lyon office cannot reach the file server.", runtime=runtime)
        print(f"final answer: {await result.get(timeout=60)}")
    finally:
        await runtime.stop_when_idle()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        provider.shutdown()  # flushes the last spans
