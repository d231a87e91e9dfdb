"""Task-scope SLIs: cost per task and delegation depth, summed over a trace whose spans arrive in several
batches, counted once the trace has been quiet for the grace period."""

from __future__ import annotations

import os
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import kv
from tests.processors.sli.test_sli import MINUTE, T0

TASK = {"agent.did": "a1", "gen_ai.operation.name": "invoke_agent", "agent.version": "2.0"}
SLI = """  sli:
    builtin: [cost_per_task, delegation_chain_depth]
    cost_per_task_usd: 1.0
    max_delegation_depth: 1
"""


def trace_spans(trace: bytes, specs: list[dict], minute: int = 0) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for attrs in specs:
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = trace, os.urandom(8), "s"
        sp.start_time_unix_nano = T0 + minute * MINUTE + 1000
        sp.end_time_unix_nano = sp.start_time_unix_nano + 1_000_000
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
    return req


def llm(cost: float) -> dict:
    return {"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.usage.cost": cost}


DELEGATE = {"agent.did": "a1", "agent.delegation.to": "researcher"}


def test_tasks_are_counted_once_with_the_cost_and_delegations_of_their_whole_trace(tmp_path):
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, sli, batch")
    service = Service(parse_config(text.replace("  batch:\n", SLI + "  batch:\n", 1), "test"))
    service.start()
    try:
        ingest = service.receivers[0].ingest
        cheap, costly, orphan = os.urandom(16), os.urandom(16), os.urandom(16)
        ingest.export(trace_spans(cheap, [TASK, llm(0.2), llm(0.2)]), "test")  # 0.4 USD, no delegation
        ingest.export(trace_spans(costly, [llm(0.5), llm(0.5), DELEGATE]), "test")  # this trace in two batches
        ingest.export(trace_spans(costly, [TASK, llm(0.5), DELEGATE]), "test")  # 1.5 USD, 2 delegations
        ingest.export(trace_spans(orphan, [llm(9.0)]), "test")  # no agent_task span: never a task
        store = service.exporters["duckdb"].store
        now = time.time_ns()
        store.finalize_tasks(now)  # nothing is quiet for the grace period yet
        assert store.read("SELECT count(*) FROM sli_minutes") == [(0,)]
        store.finalize_tasks(now + 2 * 60 * 10**9)
        rows = store.read("SELECT minute - ?, sli, agent_id, agent_version, good, total FROM sli_minutes "
                          "ORDER BY sli", [T0 // MINUTE])
        assert rows == [(0, "cost_per_task", "a1", "2.0", 1, 2), (0, "delegation_chain_depth", "a1", "2.0", 1, 2)]
        store.finalize_tasks(now + 3 * 60 * 10**9)  # counted once
        assert store.read("SELECT sum(total) FROM sli_minutes") == [(4,)]
        assert store.read("SELECT count(*) FROM trace_rollups") == [(1,)]  # the orphan, until it is an hour old
        store.finalize_tasks(now + 2 * 3600 * 10**9)
        assert store.read("SELECT count(*) FROM trace_rollups") == [(0,)]
        assert store.read("SELECT sum(total) FROM sli_minutes") == [(4,)]
    finally:
        service.shutdown()
