"""sli: spans become per-minute SLI rollups in DuckDB, in the spans' own transaction."""

from __future__ import annotations

import os

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: I001

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from agent_sre.pipeline.storage.store import SliRollup, SpanStore, SpoolSettings
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import kv

MINUTE = 60 * 10**9
T0 = 28_333_333 * MINUTE  # a minute boundary


def spans(specs: list[tuple[dict, bool, int]]) -> ExportTraceServiceRequest:
    """(attributes, failed, end minute offset) per span, each 1 ms long, ending in that minute."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for attrs, failed, minute in specs:
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = os.urandom(16), os.urandom(8), "s"
        sp.start_time_unix_nano = T0 + minute * MINUTE + 1000
        sp.end_time_unix_nano = sp.start_time_unix_nano + 1_000_000
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
        if failed:
            sp.status.code = 2  # STATUS_CODE_ERROR
    return req


TOOL = {"agent.did": "a1", "gen_ai.operation.name": "execute_tool", "agent.version": "1.2"}
OTHER_AGENT_TOOL = {**TOOL, "agent.did": "a2"}
TASK = {"agent.did": "a1", "gen_ai.operation.name": "invoke_agent", "agent.version": "1.2"}

SLI_YAML = """  sli:
    latency_threshold: 500ms
    custom:
      - name: big_llm_calls
        total: "span_role = 'tool'"
        good: "attributes['tool.size'] = 'small'"
      - name: sized_tools
        total: "span_role = 'tool'"
        good: "map_contains(attributes, 'tool.size')"
"""


def start(tmp_path, sli_yaml: str = SLI_YAML) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, sli, batch")
    service = Service(parse_config(text.replace("  batch:\n", sli_yaml + "  batch:\n", 1), "test"))
    service.start()
    return service


def rollups(service: Service) -> list[tuple]:
    store = service.exporters["duckdb"].store
    store.sync()
    return store.read("SELECT minute - ?, sli, agent_id, agent_version, good, total FROM sli_minutes "
                      "ORDER BY ALL", [T0 // MINUTE])


def test_tool_spans_roll_up_per_minute_agent_and_version(tmp_path):
    service = start(tmp_path)
    try:
        ingest = service.receivers[0].ingest
        ingest.export(spans([(TOOL, False, 0)] * 7 + [(TOOL, True, 0)] * 3 + [(TOOL, False, 1)] * 2
                            + [(OTHER_AGENT_TOOL, True, 0)]), "test")
        ingest.export(spans([(TOOL, False, 1)] * 4 + [(TASK, False, 0)]), "test")  # same minute: added up
        got = [r for r in rollups(service) if r[1] == "tool_call_accuracy"]
        assert got == [(0, "tool_call_accuracy", "a1", "1.2", 7, 10), (0, "tool_call_accuracy", "a2", "1.2", 0, 1),
                       (1, "tool_call_accuracy", "a1", "1.2", 6, 6)]
        # the task span is an event of task_success_rate and response_latency (1 ms < 500 ms), not of tools
        assert [r for r in rollups(service) if r[1] in ("task_success_rate", "response_latency")] == [
            (0, "response_latency", "a1", "1.2", 1, 1), (0, "task_success_rate", "a1", "1.2", 1, 1)]
    finally:
        service.shutdown()


def test_custom_slis_read_attributes_as_in_spans(tmp_path):
    service = start(tmp_path)
    try:
        small, big = {**TOOL, "tool.size": "small"}, {**TOOL, "tool.size": "big"}
        service.receivers[0].ingest.export(spans([(small, False, 0)] * 2 + [(big, False, 0)] + [(TOOL, False, 0)]),
                                           "test")
        assert [r for r in rollups(service) if r[1] == "big_llm_calls"] == [(0, "big_llm_calls", "a1", "1.2", 2, 4)]
        # any other use of the column sees it as the MAP of `spans`
        assert [r for r in rollups(service) if r[1] == "sized_tools"] == [(0, "sized_tools", "a1", "1.2", 3, 4)]
    finally:
        service.shutdown()


def test_a_predicate_on_an_unknown_column_stops_the_start_naming_the_sli(tmp_path):
    bad = '  sli:\n    builtin: []\n    custom:\n      - {name: broken, total: "no_such_column = 1", good: "true"}\n'
    with pytest.raises(ValueError, match="SLI 'broken': Binder Error: Referenced column \"no_such_column\""):
        start(tmp_path, bad)


def test_unknown_builtin_sli_is_a_config_error_with_the_valid_values():
    from agent_sre.processors.sli.factory import SliConfig

    with pytest.raises(ValueError, match=r"unknown SLI 'task_sucess_rate' \(valid values: \[task_success_rate, "):
        SliConfig(builtin=["task_sucess_rate"])


def test_spool_replay_after_a_crash_rolls_up_exactly_once(tmp_path):
    settings = SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10**9, flush_interval=3600)
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, spool=settings)
    store.set_sli_rollups([SliRollup("tools", "span_role = 'tool'", "status_code <> 'error'")])
    table = normalize(request_to_table(spans([(TOOL, False, 0)] * 3 + [(TOOL, True, 0)])).table, load_conventions())
    store.append(table)
    store._stop_verifier()
    store._con.close()  # kill -9: the batch is only in the spool
    reopened = SpanStore(db, spool=settings)  # no SLIs set yet: the last run's roll up the replay
    assert reopened.read("SELECT good, total FROM sli_minutes") == [(3, 4)]
    reopened.close()
    again = SpanStore(db, spool=settings)
    assert again.read("SELECT good, total FROM sli_minutes") == [(3, 4)]
    again.close()


def test_hallucination_scores_come_from_the_attribute_or_a_genai_evaluation_event(tmp_path):
    service = start(tmp_path, "  sli:\n    builtin: [hallucination_rate]\n")
    try:
        req = spans([({"agent.did": "a1", "eval.hallucination.score": 0.9}, False, 0),  # bad, by attribute
                     ({"agent.did": "a1", "eval.hallucination.score": "0.1"}, False, 0),  # good, by attribute
                     ({"agent.did": "a1"}, False, 0), ({"agent.did": "a1"}, False, 0),  # scored by events below
                     ({"agent.did": "a1"}, False, 0)])  # no score: not an event of this SLI
        sp = req.resource_spans[0].scope_spans[0].spans
        for span, name, score in ((sp[2], "hallucination", 0.7), (sp[3], "hallucination", 0.2),
                                  (sp[4], "relevance", 0.9)):
            ev = span.events.add()
            ev.name, ev.time_unix_nano = "gen_ai.evaluation.result", span.end_time_unix_nano
            ev.attributes.extend([kv("gen_ai.evaluation.name", name), kv("gen_ai.evaluation.score.value", score)])
        service.receivers[0].ingest.export(req, "test")
        assert [r for r in rollups(service) if r[1] == "hallucination_rate"] == [
            (0, "hallucination_rate", "a1", "", 2, 4)]
    finally:
        service.shutdown()
