"""The agent's tracer provider: the OTel SDK, the agent's resource, an OTLP exporter behind a batch
processor; and the state ``instrument``, ``task`` and ``tool`` share (one agent per process)."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("agent_sre.instrument")

PROTOCOLS = ("grpc", "http")
# Where `agent-sre run` listens by default (config/default.yaml).
DEFAULT_ENDPOINTS = {"grpc": "http://127.0.0.1:4317", "http": "http://127.0.0.1:4318"}
EXPORTER_PACKAGES = {"grpc": "opentelemetry-exporter-otlp-proto-grpc", "http": "opentelemetry-exporter-otlp-proto-http"}
EXPORTER_MODULES = {"grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                    "http": "opentelemetry.exporter.otlp.proto.http.trace_exporter"}


class InstrumentError(RuntimeError):
    """``setup()`` not called (or called twice), or an instrumentation that could not be installed."""


class MissingPackage(InstrumentError, ImportError):
    """A package to install; ``pip`` is the exact command."""

    def __init__(self, message: str, pip: str):
        super().__init__(f"{message}: {pip}")
        self.pip = pip


def require(module: str, pip: str, why: str) -> Any:
    """``module`` imported, or ``MissingPackage`` naming ``pip`` (``why``: what needs it)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingPackage(f"{why} needs {module.split('.')[0]} (no module {exc.name!r})", pip) from exc


@dataclass
class Agent:
    """What ``setup`` made: the provider and the agent's identity, and what ``instrument`` installed."""

    provider: Any  # opentelemetry.sdk.trace.TracerProvider
    agent_id: str
    agent_version: str | None
    agent_name: str | None
    is_global: bool  # the global tracer provider (what instrumentations without a provider argument use)
    instrumented: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (package, instrumentor)


_agent: Agent | None = None
_lock = threading.Lock()


def current() -> Agent:
    if _agent is None:
        raise InstrumentError("call agent_sre.instrument.setup(agent_id=...) first")
    return _agent


def setup(agent_id: str, agent_version: str | None = None, endpoint: str | None = None, protocol: str = "grpc",
          service_name: str | None = None, *, agent_name: str | None = None, headers: dict[str, str] | None = None,
          resource_attributes: dict[str, Any] | None = None, span_exporter: Any = None,
          set_global: bool = True) -> Any:
    """The agent's tracer provider (returned), exporting over OTLP to agent-sre.

    ``endpoint``: ``http://host:port`` of the OTLP receiver (default: the exporter's, which reads
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, else 127.0.0.1:4317 for grpc, :4318 for http).
    The resource carries ``service.name`` (default: the agent id), ``agent.id`` and
    ``gen_ai.agent.id``, ``agent.version``/``gen_ai.agent.version``/``service.version``: the
    pipeline's normalisation reads them from the resource, so every span of the process is credited
    to the agent, whichever instrumentation made it.  ``span_exporter``: an exporter of your own
    instead of OTLP (a test's in-memory one).  ``set_global``: also make it the global provider
    (instrumentations that take no provider, and ``trace.get_tracer``, use that one)."""
    global _agent
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise ValueError("agent_id must be a non-empty string")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"endpoint must be http://host:port or https://host:port (got {endpoint!r})")
    with _lock:
        if _agent is not None:
            raise InstrumentError(f"already set up for agent {_agent.agent_id!r}: call shutdown() first")
        sdk = require("opentelemetry.sdk.trace", f"pip install opentelemetry-sdk {EXPORTER_PACKAGES[protocol]}",
                      "agent_sre.instrument.setup")
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = span_exporter if span_exporter is not None else _otlp_exporter(protocol, endpoint, headers)
        provider = sdk.TracerProvider(resource=Resource.create(
            _resource(agent_id, agent_version, service_name, agent_name, resource_attributes)))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _agent = Agent(provider, agent_id, agent_version, agent_name, set_global and _set_global(provider))
        return provider


def _resource(agent_id: str, version: str | None, service_name: str | None, agent_name: str | None,
              extra: dict[str, Any] | None) -> dict[str, Any]:
    # Both spellings of the id: agent.id is the seed's (first in conventions.yaml), gen_ai.agent.id
    # the GenAI conventions', which other backends read.
    attrs: dict[str, Any] = {**(extra or {}), "service.name": service_name or agent_id, "agent.id": agent_id,
                             "gen_ai.agent.id": agent_id}
    if version:
        attrs.update({"agent.version": version, "gen_ai.agent.version": version, "service.version": version})
    if agent_name:
        attrs.update({"agent.name": agent_name, "gen_ai.agent.name": agent_name})
    return attrs


def _otlp_exporter(protocol: str, endpoint: str | None, headers: dict[str, str] | None) -> Any:
    module = require(EXPORTER_MODULES[protocol], f"pip install {EXPORTER_PACKAGES[protocol]}",
                     f"exporting over OTLP/{protocol}")
    if protocol == "grpc":
        if endpoint is None:
            return module.OTLPSpanExporter(headers=headers)
        return module.OTLPSpanExporter(endpoint=endpoint, insecure=urlsplit(endpoint).scheme == "http",
                                       headers=headers)
    if endpoint is not None and not urlsplit(endpoint).path.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # the OTLP/HTTP signal path, as the SDK's env does
    return module.OTLPSpanExporter(endpoint=endpoint, headers=headers)


def _set_global(provider: Any) -> bool:
    from opentelemetry import trace

    # The API keeps the first global provider for good and only logs a second one: say what that means.
    if type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
        log.warning("a global tracer provider is already set: the instrumentations agent_sre.instrument "
                    "installs and its task spans use the agent's provider; others keep the global one")
        return False
    trace.set_tracer_provider(provider)
    return True


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Export what is buffered now (True when everything went out in time)."""
    return bool(current().provider.force_flush(timeout_millis))


def shutdown() -> None:
    """Remove the instrumentations ``instrument`` installed, export what is buffered and stop the
    provider; ``setup`` may then be called again.  Safe without ``setup`` and safe twice."""
    global _agent
    with _lock:
        agent, _agent = _agent, None
    if agent is None:
        return
    for name, (package, instrumentor) in agent.instrumented.items():
        if instrumentor is None:  # a framework's own support, switched on by its environment: stays on
            continue
        try:
            instrumentor.uninstrument()
        except Exception:  # noqa: BLE001 - a broken uninstrument must not keep the spans from going out
            log.warning("uninstrumenting %s (%s) failed", name, package, exc_info=True)
    agent.provider.shutdown()
