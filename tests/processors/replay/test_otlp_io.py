"""One trace out as OTLP/JSON and back (processors/replay/otlp_io.py): store → export → import into a fresh
store gives the same rows; into a running pipeline through its OTLP/HTTP receiver too."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.replay.otlp_io import (
    ReceiverUnreachable,
    export_trace,
    import_file,
    import_otlp_json,
)
from tests.conftest import free_port
from tests.otlp_builders import kv

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
OTHER = bytes.fromhex("00f067aa0ba902b7a3ce929d0e0e4736")
BASE_NS = 1_700_000_000_000_000_000


def _span(scope_spans, n: int, parent: int | None, name: str, attrs: dict, trace: bytes = TRACE, **fields) -> Span:
    sp = scope_spans.spans.add()
    sp.trace_id, sp.span_id = trace, n.to_bytes(8, "big")
    if parent is not None:
        sp.parent_span_id = parent.to_bytes(8, "big")
    sp.name, sp.kind = name, fields.pop("kind", Span.SPAN_KIND_INTERNAL)
    sp.start_time_unix_nano = BASE_NS + n * 1_000_000
    sp.end_time_unix_nano = BASE_NS + n * 1_000_000 + 5_000_000
    sp.attributes.extend(kv(k, v) for k, v in attrs.items())
    for key, value in fields.items():
        if key == "status":
            sp.status.CopyFrom(value)
        else:
            setattr(sp, key, value)
    return sp


def agent_request() -> ExportTraceServiceRequest:
    """Two services (resources), two scopes, every AnyValue kind, events, links, status, trace state, flags,
    dropped counts; an LLM span without a client cost (the store prices it) and a tool span without an agent
    of its own (attribution gives it the root's)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "triage-svc"), kv("service.version", "1.4.0"),
                                   kv("deployment.environment", "prod")])
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "openai-agents", "0.3"
    ss.scope.attributes.append(kv("scope.kind", "sdk"))
    root = _span(ss, 1, None, "invoke_agent triage", {"gen_ai.operation.name": "invoke_agent",
                                                      "gen_ai.agent.id": "triage", "agent.task.name": "ticket",
                                                      "agent.task.success": True, "session.id": "s-1"},
                 kind=Span.SPAN_KIND_SERVER, trace_state="vendor=a", flags=0x101, dropped_attributes_count=2)
    root.events.add(time_unix_nano=BASE_NS + 2, name="checkpoint", attributes=[kv("step", 3)],
                    dropped_attributes_count=1)
    llm = _span(ss, 2, 1, "chat gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                                          "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 80,
                                          "gen_ai.request.temperature": 0.25, "gen_ai.request.stop": ["\n", "END"],
                                          "llm.meta": {"a": 1, "b": [True, None]}, "blob": b"\x00\xff",
                                          "empty": None, "agent.trust_score": 0.93},
                kind=Span.SPAN_KIND_CLIENT, dropped_events_count=4, dropped_links_count=5)
    llm.links.add(trace_id=OTHER, span_id=(9).to_bytes(8, "big"), trace_state="k=v", flags=1,
                  attributes=[kv("link.kind", "caused-by")], dropped_attributes_count=3)
    tool = _span(ss, 3, 1, "execute_tool search", {"gen_ai.operation.name": "execute_tool",
                                                   "gen_ai.tool.name": "search", "error.type": "TimeoutError"})
    tool.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="search timed out"))
    ss2 = rs.scope_spans.add()
    ss2.scope.name = "custom"
    _span(ss2, 4, 1, "policy", {"agent.policy.name": "pii", "agent.policy.decision": "allow",
                                "agent.cost.usd": 0.5}, status=Status(code=Status.STATUS_CODE_OK))
    rs2 = req.resource_spans.add()
    rs2.resource.attributes.append(kv("service.name", "billing-svc"))
    ss3 = rs2.scope_spans.add()
    _span(ss3, 5, 4, "invoke_agent billing", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "billing",
                                              "agent.delegation.from": "triage", "agent.delegation.to": "billing"})
    _span(ss3, 6, None, "another trace", {"gen_ai.agent.id": "other"}, trace=OTHER)
    return req


def stored(tmp_path, name: str = "source.duckdb", cost_of_llm: float | None = 0.0031) -> SpanStore:
    """The request as the pipeline stores it: converted, normalised, priced (the LLM span) and appended."""
    table = normalize(request_to_table(agent_request()).table, load_conventions())
    if cost_of_llm is not None:  # what the cost processor does for an LLM span the client sent no cost for
        costs = pc.if_else(pc.fill_null(pc.equal(table.column("model"), "gpt-4o"), False), cost_of_llm,
                          table.column("cost_usd"))
        table = table.set_column(SPAN_SCHEMA.get_field_index("cost_usd"), "cost_usd", costs)
    store = SpanStore(tmp_path / name)
    store.append(table)
    return store


def rows(store_or_path, trace: str) -> list[dict]:
    """Every canonical column of the trace's stored spans, by span id (maps as dicts)."""
    from agent_sre.processors.replay.traces import trace_spans

    if isinstance(store_or_path, SpanStore):
        read = store_or_path.read
    else:
        store_or_path = SpanStore(store_or_path)
        read = store_or_path.read
    found = sorted(trace_spans(read, trace, follow_links=False), key=lambda s: s["span_id"])
    store_or_path.close()
    return found


def test_export_then_import_into_a_fresh_store_gives_identical_rows(tmp_path):
    source = stored(tmp_path)
    before = rows(source, TRACE.hex())
    doc = export_trace(SpanStore(tmp_path / "source.duckdb").read, TRACE.hex())
    result = import_otlp_json(json.dumps(doc), db=tmp_path / "fresh.duckdb")
    assert (result.spans, result.rejected, result.trace_ids) == (5, 0, [TRACE.hex()])
    after = rows(tmp_path / "fresh.duckdb", TRACE.hex())
    assert len(before) == len(after) == 5
    llm = next(i for i, r in enumerate(before) if r["model"] == "gpt-4o")
    # The one documented difference: the price the store computed travels as agent_sre.cost_usd.
    assert after[llm]["attributes"].pop("agent_sre.cost_usd") == "0.0031"
    assert before[llm]["cost_usd"] == after[llm]["cost_usd"] == 0.0031
    for b, a in zip(before, after, strict=True):
        assert a == b
    # and what the pipeline derived came back the same way: attribution, roles, typed columns
    by_name = {r["name"]: r for r in after}
    assert by_name["execute_tool search"]["agent_id"] == "triage"  # from its root, by attribution
    assert by_name["invoke_agent billing"]["span_role"] == "agent_task"
    assert by_name["policy"]["cost_usd"] == 0.5 and by_name["policy"]["status_code"] == "ok"
    assert by_name["chat gpt-4o"]["links"][0]["trace_state"] == "k=v"


def test_the_export_is_otlp_json_grouped_by_resource_and_scope_with_typed_values(tmp_path):
    store = stored(tmp_path)
    doc = export_trace(store.read, TRACE.hex())
    store.close()
    assert [len(rs["scopeSpans"]) for rs in doc["resourceSpans"]] == [2, 1]  # triage-svc, then billing-svc
    services = [{a["key"]: a["value"] for a in rs["resource"]["attributes"]}["service.name"]
                for rs in doc["resourceSpans"]]
    assert services == [{"stringValue": "triage-svc"}, {"stringValue": "billing-svc"}]
    spans = {s["name"]: s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}
    assert set(spans) == {"invoke_agent triage", "chat gpt-4o", "execute_tool search", "policy",
                          "invoke_agent billing"}  # not the other trace of the request
    llm = spans["chat gpt-4o"]
    assert llm["traceId"] == TRACE.hex() and llm["parentSpanId"] == (1).to_bytes(8, "big").hex()
    attrs = {a["key"]: a["value"] for a in llm["attributes"]}
    assert attrs["gen_ai.usage.input_tokens"] == {"intValue": "1200"}
    assert attrs["agent.trust_score"] == {"doubleValue": 0.93}
    assert attrs["gen_ai.request.model"] == {"stringValue": "gpt-4o"}
    assert llm["kind"] == Span.SPAN_KIND_CLIENT and llm["links"][0]["traceId"] == OTHER.hex()
    assert spans["execute_tool search"]["status"] == {"message": "search timed out", "code": 2}


def test_a_trace_that_is_not_stored_exports_as_none(tmp_path):
    store = stored(tmp_path)
    assert export_trace(store.read, "ab" * 16) is None
    store.close()


def test_a_body_that_is_not_otlp_json_is_refused_with_where_it_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"resourceSpans\[0\].scopeSpans\[0\].spans\[0\].traceId"):
        import_otlp_json({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]},
                         db=tmp_path / "x.duckdb")
    with pytest.raises(ValueError, match="cannot read"):
        import_file(tmp_path / "missing.json", db=tmp_path / "x.duckdb")
    with pytest.raises(ValueError, match="exactly one"):
        import_otlp_json({}, db=tmp_path / "x.duckdb", endpoint="127.0.0.1:1")


def test_spans_the_converter_rejects_are_counted_not_stored(tmp_path):
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": TRACE.hex(), "spanId": "0000000000000001", "name": "ok"},
        {"traceId": TRACE.hex()[:30], "spanId": "0000000000000002", "name": "short trace id"}]}]}]}
    result = import_otlp_json(doc, db=tmp_path / "x.duckdb")
    assert (result.spans, result.rejected) == (1, 1) and "trace" in result.message.lower()
    assert [r["name"] for r in rows(tmp_path / "x.duckdb", TRACE.hex())] == ["ok"]


def test_no_receiver_at_the_endpoint_is_told_apart(tmp_path):
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": TRACE.hex(), "spanId": "0000000000000001"}]}]}]}
    with pytest.raises(ReceiverUnreachable, match="no OTLP/HTTP receiver"):
        import_otlp_json(doc, endpoint=f"127.0.0.1:{free_port()}", timeout=5)


@pytest.mark.slow
def test_an_export_posted_to_a_running_pipeline_is_stored_the_same(tmp_path, start_pipeline):
    source = stored(tmp_path, cost_of_llm=None)
    before = rows(source, TRACE.hex())
    path = tmp_path / "t.json"
    path.write_text(json.dumps(export_trace(SpanStore(tmp_path / "source.duckdb").read, TRACE.hex())))
    running = start_pipeline()
    result = import_file(path, endpoint=f"127.0.0.1:{running.ports.http}")
    assert (result.spans, result.rejected) == (5, 0)
    running.store.sync()
    after = sorted(trace_rows(running), key=lambda r: r["span_id"])
    assert after == before


def trace_rows(running) -> list[dict]:
    from agent_sre.processors.replay.traces import trace_spans

    return trace_spans(running.store.read, TRACE.hex(), follow_links=False)


def test_a_large_request_is_posted_in_bodies_under_the_limit(monkeypatch):
    from agent_sre.processors.replay import otlp_io

    monkeypatch.setattr(otlp_io, "MAX_POST_BYTES", 600)
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [
        {"scope": {"name": f"s{i}"}, "spans": [{"traceId": TRACE.hex(), "spanId": f"{i:016x}", "name": "x" * 200}]}
        for i in range(6)]}]}
    chunks = otlp_io._chunks(json.dumps(doc).encode())
    assert len(chunks) > 1 and all(len(c) <= 600 for c in chunks)
    names = [ss["scope"]["name"] for c in chunks for rs in json.loads(c)["resourceSpans"] for ss in rs["scopeSpans"]]
    assert names == [f"s{i}" for i in range(6)]

