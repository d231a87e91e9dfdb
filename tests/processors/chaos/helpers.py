"""A running pipeline with the chaos processor (in this process, on free ports and a temporary store), and
spans built the way agents send them."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.component.registry import registry
from agent_sre.pipeline.service import Service
from agent_sre.processors.chaos.factory import factory as chaos_factory
from tests.conftest import Ports, pipeline_yaml, start_on_free_ports
from tests.otlp_builders import kv

# The lead registers the chaos processor among the built-ins; until then (and harmlessly after: the same
# factory object) the tests register it.
registry.register(chaos_factory)

CHAOS = """  sli: {}
  chaos:
    check_interval: 1h          # the tests call check() themselves, on their own clock
    settle: 0s
"""
_OPS = {"tool": "execute_tool", "llm": "chat", "task": "invoke_agent", "delegation": None}


@dataclass
class Span:
    """One span as an agent sends it; ``end_s``: seconds from the test's time origin."""

    agent: str
    role: str  # tool | llm | task
    end_s: float
    error: bool = False
    injected: str | None = None  # the experiment id this fault was injected by
    fault: str = "tool_error"
    cost: float | None = None
    trace: bytes = field(default_factory=lambda: os.urandom(16))
    success: bool | None = None  # agent.task.success of a task span
    duration_s: float = 0.001


def request(spans: list[Span], origin_ns: int) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for s in spans:
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = s.trace, os.urandom(8), s.role
        end = origin_ns + int(s.end_s * 1e9)
        sp.start_time_unix_nano, sp.end_time_unix_nano = end - int(s.duration_s * 1e9), end
        attrs = {"agent.did": s.agent, "gen_ai.operation.name": _OPS[s.role]}
        if s.role == "tool":
            attrs["gen_ai.tool.name"] = "search"
        if s.role == "llm":
            attrs["gen_ai.request.model"] = "gpt-4o-mini"
        if s.cost is not None:
            attrs["gen_ai.usage.cost"] = s.cost
        if s.success is not None:
            attrs["agent.task.success"] = s.success
        if s.injected:
            attrs.update({"chaos.experiment.id": s.injected, "chaos.fault.type": s.fault})
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
        if s.error:
            sp.status.code = 2
    return req


@dataclass
class ChaosPipeline:
    service: Service
    ports: Ports

    @property
    def chaos(self):
        (proc,) = self.service.components_of("chaos")
        return proc

    @property
    def store(self):
        return self.service.exporters["duckdb"].store

    def send(self, spans: list[Span], origin_ns: int) -> None:
        self.service.receivers[0].ingest.export(request(spans, origin_ns), "test")
        self.store.sync()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.admin}{path}", timeout=10) as r:
            return json.loads(r.read())

    def shutdown(self) -> None:
        self.service.shutdown()


def start(tmp_path: Path, chaos: str = CHAOS, processors: str = "memory_limiter, agent_semconv, sli, chaos, batch",
          more: str = "") -> ChaosPipeline:
    def text(ports: Ports, _attempt: int) -> str:
        return pipeline_yaml(ports, tmp_path, processors=processors).replace("  batch:\n", chaos + more + "  batch:\n", 1)

    service, ports, _ = start_on_free_ports(text)
    return ChaosPipeline(service, ports)
