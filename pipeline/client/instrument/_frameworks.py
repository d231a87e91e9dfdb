"""``instrument(name)``: the maintained instrumentation of a framework or model client, installed on the
agent's tracer provider.

Per name, the instrumentations in the order they are preferred; the first one available is used
(or the one named with ``package=``).  Why this order (docs/frameworks.md has the table):

- the framework's own OpenTelemetry support where its maintainers ship one: nothing to install, and
  no second instrumentation on top (two would count every model call's tokens and cost twice).
  Anthropic's Python SDK emits GenAI ``chat`` spans itself from 2.x (``anthropic._tracing``);
  Semantic Kernel its GenAI diagnostics, switched on by an environment variable before it is
  imported.  Both use the global tracer provider, which ``setup`` sets;
- the official OpenTelemetry GenAI instrumentation where one exists (``openai``: contrib's
  openai-v2 speaks the GenAI conventions the pipeline maps first);
- else OpenInference (Arize): one maintained package per framework, agent/tool/LLM span kinds the
  normalisation table maps (``openinference.span.kind``), tokens on every LLM span;
- else OpenLLMetry (Traceloop), mapped through ``traceloop.*`` and ``gen_ai.*`` — first for LangGraph,
  where its spans carry the graph's agent and its handoffs and OpenInference's do not.

Nothing is installed by force: a missing package is a ``MissingPackage`` naming the ``pip install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ._provider import InstrumentError, MissingPackage, current, require

log = logging.getLogger("agent_sre.instrument")

OFFICIAL, OPENINFERENCE, OPENLLMETRY, BUILT_IN = ("OpenTelemetry GenAI (official)", "OpenInference",
                                                  "OpenLLMetry", "the framework's own OpenTelemetry support")


@dataclass(frozen=True)
class Instrumentation:
    """One maintained instrumentation: the distribution to install, and its instrumentor class."""

    package: str
    module: str = ""  # the instrumentor's module; BUILT_IN: the framework's module that has the support
    instrumentor: str = ""
    family: str = OPENINFERENCE
    env: dict[str, str] = field(default_factory=dict)  # BUILT_IN: what switches the framework's spans on
    off_env: dict[str, str] = field(default_factory=dict)  # BUILT_IN: what switches them off, when another is used


@dataclass(frozen=True)
class Framework:
    name: str
    package: str  # the framework's (or client's) own distribution
    instrumentations: tuple[Instrumentation, ...]
    note: str = ""


def _oi(package_suffix: str, module: str, cls: str) -> Instrumentation:
    return Instrumentation(f"openinference-instrumentation-{package_suffix}", f"openinference.instrumentation.{module}",
                           cls, OPENINFERENCE)


def _ollm(package_suffix: str, module: str, cls: str) -> Instrumentation:
    return Instrumentation(f"opentelemetry-instrumentation-{package_suffix}", f"opentelemetry.instrumentation.{module}",
                           cls, OPENLLMETRY)


_SK_ENV = {"SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS": "true"}
# Read once, when Semantic Kernel's model diagnostics module is imported.
_SK_SETTINGS_MODULE = "semantic_kernel.utils.telemetry.model_diagnostics.decorators"

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework("openai", "openai", (
        Instrumentation("opentelemetry-instrumentation-openai-v2", "opentelemetry.instrumentation.openai_v2",
                        "OpenAIInstrumentor", OFFICIAL),
        _oi("openai", "openai", "OpenAIInstrumentor"),
        _ollm("openai", "openai", "OpenAIInstrumentor"))),
    Framework("anthropic", "anthropic", (
        Instrumentation("anthropic", "anthropic._tracing", family=BUILT_IN,
                        off_env={"ANTHROPIC_OPEN_TELEMETRY": "false"}),
        _oi("anthropic", "anthropic", "AnthropicInstrumentor"),
        _ollm("anthropic", "anthropic", "AnthropicInstrumentor"))),
    # OpenLLMetry first here: its spans name the compiled graph as the agent (invoke_agent) and make each
    # Command(goto=...) a delegation span, which OpenInference's LangChain spans do not (docs/frameworks.md).
    Framework("langgraph", "langgraph", (
        _ollm("langchain", "langchain", "LangchainInstrumentor"),
        _oi("langchain", "langchain", "LangChainInstrumentor")),
        "LangGraph runs on LangChain's callbacks: its LangChain instrumentation traces graph nodes, models and tools"),
    Framework("openai-agents", "openai-agents", (
        _oi("openai-agents", "openai_agents", "OpenAIAgentsInstrumentor"),
        _ollm("openai-agents", "openai_agents", "OpenAIAgentsInstrumentor")),
        "a trace processor on the SDK's own tracing: agents, handoffs, tools and model calls"),
    Framework("crewai", "crewai", (
        _oi("crewai", "crewai", "CrewAIInstrumentor"),
        _ollm("crewai", "crewai", "CrewAIInstrumentor")),
        "crews, agents and tasks; the model calls are the LLM client's: instrument it too (\"openai\" or \"litellm\")"),
    Framework("autogen", "autogen-agentchat", (
        _oi("autogen-agentchat", "autogen_agentchat", "AutogenAgentChatInstrumentor"),),
        "AgentChat agents, teams and tools; autogen-core's own runtime spans use the global provider"),
    Framework("semantic-kernel", "semantic-kernel", (
        Instrumentation("semantic-kernel", "semantic_kernel", family=BUILT_IN, env=_SK_ENV),),
        "Semantic Kernel's GenAI diagnostics (chat and execute_tool spans), on the global provider"),
    Framework("llama-index", "llama-index-core", (
        _oi("llama-index", "llama_index", "LlamaIndexInstrumentor"),
        _ollm("llamaindex", "llamaindex", "LlamaIndexInstrumentor"))),
    Framework("litellm", "litellm", (
        _oi("litellm", "litellm", "LiteLLMInstrumentor"),
        _ollm("litellm", "litellm", "LiteLLMInstrumentor")),
        "the model calls of frameworks that go through LiteLLM (CrewAI among them)"),
)}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _available(inst: Instrumentation) -> bool:
    if inst.family != BUILT_IN:
        return _installed(inst.package)
    try:  # a submodule's spec imports its package: the framework, which the agent is about to use
        return _installed(inst.package) and importlib.util.find_spec(inst.module) is not None
    except ImportError:
        return False


def _choose(fw: Framework, package: str | None) -> Instrumentation:
    if package is not None:
        for inst in fw.instrumentations:
            if inst.package == package:
                return inst
        raise ValueError(f"{package!r} is not an instrumentation of {fw.name!r} "
                         f"(one of: {', '.join(i.package for i in fw.instrumentations)})")
    for inst in fw.instrumentations:
        if _available(inst):
            return inst
    packages = [i.package for i in fw.instrumentations if i.family != BUILT_IN] or [fw.package]
    first, *others = packages
    alternatives = f" (or one of: {', '.join(others)})" if others else ""
    raise MissingPackage(f"no instrumentation for {fw.name!r} is installed{alternatives}; install the "
                         "maintained one", f"pip install {first}")


def instrument(name: str, *, package: str | None = None, **options: Any) -> str:
    """Install the maintained instrumentation of ``name`` on the agent's provider (``setup`` first);
    returns the package used.  ``package``: that instrumentation rather than the preferred installed
    one; ``options``: passed to its ``instrument()`` (e.g. OpenInference's ``config``).  Calling it
    again for the same name does nothing."""
    key = name.strip().lower().replace("_", "-")
    fw = FRAMEWORKS.get(key)
    if fw is None:
        raise ValueError(f"unknown framework {name!r} (valid values: {', '.join(FRAMEWORKS)})")
    agent = current()
    if key in agent.instrumented:
        return agent.instrumented[key][0]
    inst = _choose(fw, package)
    if inst.family == BUILT_IN:
        _switch_on(fw, inst)
        agent.instrumented[key] = (inst.package, None)
        return inst.package
    for other in fw.instrumentations:  # the framework's own spans off: one span per model call, not two
        if other.family == BUILT_IN and other is not inst and _available(other):
            os.environ.update(other.off_env)
    module = require(inst.module, f"pip install {inst.package}", f"instrument({fw.name!r})")
    instrumentor = getattr(module, inst.instrumentor)()
    _check_dependencies(fw, inst, instrumentor)
    try:
        instrumentor.instrument(tracer_provider=agent.provider, **options)
    except Exception as exc:
        raise InstrumentError(f"{inst.package} could not instrument {fw.name}: {exc}") from exc
    agent.instrumented[key] = (inst.package, instrumentor)
    return inst.package


def _check_dependencies(fw: Framework, inst: Instrumentation, instrumentor: Any) -> None:
    """The instrumented library itself at a version the instrumentation supports: BaseInstrumentor
    only logs a conflict and instruments nothing, which would leave the agent without spans."""
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    if conflict is not None:
        requirement = str(getattr(conflict, "required", None) or fw.package)
        raise MissingPackage(f"{inst.package} instruments {requirement} ({conflict})",
                             f"pip install '{requirement}'")


def _switch_on(fw: Framework, inst: Instrumentation) -> None:
    if not _available(inst):
        raise MissingPackage(f"instrument({fw.name!r}) uses {fw.package}'s own OpenTelemetry support, and "
                             f"{fw.package} is not installed", f"pip install {fw.package}")
    if _SK_SETTINGS_MODULE in sys.modules and not all(os.environ.get(k) == v for k, v in inst.env.items()):
        raise InstrumentError(f"{fw.package} was imported before instrument({fw.name!r}): its diagnostics "
                              "settings are read at import; call instrument() first, or set "
                              + " ".join(f"{k}={v}" for k, v in inst.env.items()) + " in the environment")
    os.environ.update(inst.env)
    for key in inst.off_env:  # switched off earlier (another instrumentation was chosen): on again
        os.environ.pop(key, None)
    if not current().is_global:
        log.warning("%s's own spans go to the global tracer provider, which is not the agent's "
                    "(setup(set_global=False), or another one was set first)", fw.package)
