"""``agent_sre.chaos``: fault injection inside an agent (standard library only at import).

The pipeline declares chaos experiments (``agent-sre chaos start tool-error-storm --agent A``); every
agent process picks them up from ``GET /v1/decisions/{agent}`` (the ``chaos`` entry, asked again
every ``refresh`` seconds) and injects their faults, for real, into the calls it wraps::

    from agent_sre.chaos import Chaos

    chaos = Chaos("research-agent", "http://127.0.0.1:13133", refresh=1.0)

    @chaos.tool("web_search")                  # tool_timeout, tool_error, tool_wrong_schema, ...
    def web_search(query: str) -> dict: ...

    with chaos.call("delegation", "billing-agent") as c:      # delegation_reject, ...
        answer = c.result(delegate(task))

    http = httpx.Client(transport=chaos.transport(httpx.HTTPTransport()))
    llm = openai.OpenAI(http_client=http)      # llm_latency, llm_degraded, cost_spike, credential_expire, ...

Each injected fault is tagged on the current OpenTelemetry span (``chaos.experiment.id``,
``chaos.fault.type``; failures also set its status to error) when the agent uses OpenTelemetry, so
the pipeline's report tells injected failures from real ones.  The faults, their parameters and the
errors they raise are in ``agent_sre.chaos.faults``; rates, blast radius, seeds and schedules in
``agent_sre.chaos._experiments``.  When the pipeline cannot be asked, nothing is injected, and an
experiment the pipeline ends or aborts stops at the next refresh.
"""

from ._inject import Call, Chaos
from .faults import (
    FAULT_TYPES,
    ChaosCredentialExpired,
    ChaosDelegationRejected,
    ChaosNetworkPartition,
    ChaosTimeout,
    ChaosToolError,
    InjectedFault,
)

__all__ = ["Chaos", "Call", "FAULT_TYPES", "InjectedFault", "ChaosTimeout", "ChaosToolError",
           "ChaosDelegationRejected", "ChaosCredentialExpired", "ChaosNetworkPartition"]
