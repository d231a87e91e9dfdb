"""The column-wise OTLP/JSON (pipeline/pdata/otlp_json_columns.py) is the document the span-by-span path
writes, for any valid request and for what the pipeline adds (typed values, the computed cost); spans with
events or links come from that path inside the same document; a control character it does not escape
sends the batch to that path."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
from hypothesis import given
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.pdata.arrow_otlp import (
    COST_ATTRIBUTE,
    PURE_PYTHON_ENCODER_ENV,
    SPAN_KINDS,
    STATUS_CODES,
    _col,
    _cost_keys,
    _enum_codes,
    table_to_json,
    table_to_request,
    typed_keys,
)
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_json import encode_trace_request
from agent_sre.pipeline.pdata.otlp_json_columns import spans_json
from tests.otlp_builders import kv, request
from tests.pipeline.test_roundtrip_property import PROPERTY, VALID_REQUESTS


def _span_by_span(table: pa.Table) -> bytes:
    os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
    try:
        return table_to_json(table)
    finally:
        del os.environ[PURE_PYTHON_ENCODER_ENV]


def _columns(table: pa.Table) -> bytes | None:
    def one_span(i: int) -> bytes:
        raise AssertionError("no span here has events or links")

    return spans_json(table, _enum_codes(_col(table, "kind"), SPAN_KINDS, "kind"),
                      _enum_codes(_col(table, "status_code"), STATUS_CODES, "status"), typed_keys(), _cost_keys(),
                      COST_ATTRIBUTE, one_span)


@PROPERTY
@given(VALID_REQUESTS)
def test_column_wise_json_is_the_span_by_span_json_of_any_valid_request(req):
    table = request_to_table(req).table
    fast = table_to_json(table)
    assert json.loads(fast) == json.loads(_span_by_span(table))
    assert json.loads(fast) == json.loads(encode_trace_request(table_to_request(table)))


def _typed_table() -> pa.Table:
    """Three resources (the first two alike), scopes that change within one, typed keys with text that parses and
    text that does not, a key-less attribute, a null value, strings to escape, and computed costs."""
    req = ExportTraceServiceRequest()
    values = [("gen_ai.usage.input_tokens", "007"), ("gen_ai.usage.input_tokens", "12x"), ("agent.trust_score", "1e999"),
              ("agent.trust_score", "nan"), ("agent.trust_score", ".5"), ("agent.task.success", "true"),
              ("agent.task.success", "yes"), ("note", 'say "hi"\\\n\tthere'), ("", "keyless")]
    for r, service in enumerate(["a", "a", "b"]):
        rs = req.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", service))
        for s, scope in enumerate(["one", "two"]):
            ss = rs.scope_spans.add()
            ss.scope.name = scope
            ss.scope.version = "1.0" if s else ""
            for i, (k, v) in enumerate(values):
                sp = ss.spans.add()
                sp.trace_id = bytes([r + 1]) * 16
                sp.span_id = bytes([s + 1, i + 1]) * 4
                sp.name = f"span {i} ü"
                sp.kind = i % 6
                sp.start_time_unix_nano = 0 if i == 3 else 1_700_000_000_000_000_000 + i
                sp.end_time_unix_nano = sp.start_time_unix_nano + 5
                sp.attributes.append(kv(k, v))
                sp.status.code = i % 3
                sp.status.message = "bad" if i % 2 else ""
                sp.flags = 0x101 if i % 4 == 0 else 0
    table = normalize(request_to_table(req).table, load_conventions())
    costs = [None if i % 3 == 0 else float(i) / 7 for i in range(table.num_rows)]
    costs[4] = float("inf")
    return table.set_column(table.schema.get_field_index("cost_usd"), "cost_usd", pa.array(costs, pa.float64()))


def test_typed_values_costs_escapes_and_runs_of_resources_and_scopes_as_the_span_by_span_path():
    table = _typed_table()
    fast = _columns(table)
    assert fast is not None  # nothing here needs the span-by-span path
    document = json.loads(fast)
    assert document == json.loads(_span_by_span(table))
    # runs: the two alike resources in a row are one (as the span-by-span path groups them), their scopes four
    assert [len(rs["scopeSpans"]) for rs in document["resourceSpans"]] == [4, 2]
    spans = [sp for rs in document["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]]
    values = {kv_["value"].get("intValue") or kv_["value"].get("stringValue") for sp in spans for kv_ in sp["attributes"]
              if kv_.get("key") == "gen_ai.usage.input_tokens"}
    assert values == {"7", "12x"}  # "007" parses as an int; "12x" stays text


def test_spans_with_events_or_links_come_from_the_span_by_span_path_in_the_same_document():
    req = request(4)
    spans = req.resource_spans[0].scope_spans[0].spans
    ev = spans[1].events.add()
    ev.name, ev.time_unix_nano = "gen_ai.evaluation", 5
    ev.attributes.append(kv("score", "0.9"))
    link = spans[2].links.add()
    link.trace_id, link.span_id = b"\x07" * 16, b"\x08" * 8
    table = request_to_table(req).table
    assert json.loads(table_to_json(table)) == json.loads(_span_by_span(table))
    assert json.loads(table_to_json(table)) == json.loads(encode_trace_request(table_to_request(table)))


def test_a_control_character_sends_the_batch_to_the_span_by_span_path():
    table = request_to_table(request(2, attrs={"note": "bell \x07"})).table
    assert _columns(table) is None
    assert json.loads(table_to_json(table)) == json.loads(_span_by_span(table))


def test_a_batch_of_many_spans_has_one_run_per_resource_and_scope():
    table = pa.concat_tables([request_to_table(request(500)).table for _ in range(4)])
    document = json.loads(_columns(table))
    assert [len(ss["spans"]) for rs in document["resourceSpans"] for ss in rs["scopeSpans"]] == [2000]
    assert np.all([sp["name"].startswith("span-") for sp in document["resourceSpans"][0]["scopeSpans"][0]["spans"]])
