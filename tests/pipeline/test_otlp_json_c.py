"""The C OTLP/JSON writer (pipeline/pdata/_otlp_json.c) writes, from a request's protobuf bytes, the document
protobuf's own JSON printer writes for them (with the OTLP specification's hex ids): for any valid request
through the pipeline's encoder, for the values the pipeline never writes itself (arrays, key-value lists,
bytes, non-finite doubles, events, links), and it declines (None: Python writes the JSON) what it does not
handle exactly -- truncated bytes, text that is not UTF-8, a repeated field split by another field."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from agent_sre.pipeline.pdata import arrow_otlp
from agent_sre.pipeline.pdata.arrow_otlp import table_to_bytes, table_to_json
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_json import encode_trace_request
from tests.pipeline.test_otlp_json_columns import _span_by_span, _typed_table
from tests.pipeline.test_roundtrip_property import PROPERTY, VALID_REQUESTS

_otlp_json = pytest.importorskip("agent_sre.pipeline.pdata._otlp_json")
traces_json = _otlp_json.traces_json


def _oracle(body: bytes) -> dict:
    return json.loads(encode_trace_request(ExportTraceServiceRequest.FromString(body)))


@PROPERTY
@given(VALID_REQUESTS)
def test_the_json_of_any_valid_request_is_protobufs_json_of_its_bytes(req):
    table = request_to_table(req).table
    body = table_to_bytes(table)
    text = traces_json(body)
    assert text is not None
    assert json.loads(text) == _oracle(body)
    assert json.loads(text) == json.loads(_span_by_span(table))  # and the Python paths' document


def test_typed_values_and_computed_costs_as_the_python_paths_write_them():
    table = _typed_table()
    assert arrow_otlp._c_json_enabled()
    assert json.loads(table_to_json(table)) == json.loads(_span_by_span(table)) == _oracle(table_to_bytes(table))


def _request() -> ExportTraceServiceRequest:
    """What the pipeline's encoder never writes: nested AnyValues, bytes, non-finite doubles, int64 extremes,
    escapes of every kind, events and links with their attributes, flags, dropped counts, schema URLs."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    rs.resource.dropped_attributes_count = 2
    rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "lib", "1"
    ss.schema_url = "s"
    sp = ss.spans.add()
    sp.trace_id, sp.span_id, sp.parent_span_id = bytes(range(16)), b"\x00\xff" * 4, b"\x01" * 8
    sp.trace_state, sp.name, sp.kind, sp.flags = "k=v", 'q"\\\n\r\t\b\f\x01\x1f\x7f é 😀', 3, 0x301
    sp.start_time_unix_nano, sp.end_time_unix_nano = 2**64 - 1, 1
    values = [AnyValue(string_value=""), AnyValue(bool_value=False), AnyValue(bool_value=True),
              AnyValue(int_value=0), AnyValue(int_value=-(2**63)), AnyValue(int_value=2**63 - 1),
              AnyValue(double_value=0.0), AnyValue(double_value=-0.0), AnyValue(double_value=0.1),
              AnyValue(double_value=1e300), AnyValue(double_value=5e-324), AnyValue(double_value=123456789.0),
              AnyValue(double_value=math.nan), AnyValue(double_value=math.inf), AnyValue(double_value=-math.inf),
              AnyValue(bytes_value=b""), AnyValue(bytes_value=b"\x00\x01\x02\x03\xfe"), AnyValue()]
    for i, v in enumerate(values):
        sp.attributes.add(key=f"k{i}", value=v)
    nested = AnyValue()
    nested.array_value.values.extend([AnyValue(int_value=1), AnyValue(string_value="two")])
    inner = nested.array_value.values.add()
    inner.kvlist_value.values.add(key="deep", value=AnyValue(double_value=2.5))
    inner.kvlist_value.values.add(key="", value=AnyValue())
    sp.attributes.add(key="nested", value=nested)
    sp.attributes.append(KeyValue(key="no value"))
    sp.dropped_attributes_count, sp.dropped_events_count, sp.dropped_links_count = 1, 2, 3
    ev = sp.events.add(time_unix_nano=5, name="exception", dropped_attributes_count=4)
    ev.attributes.add(key="exception.message", value=AnyValue(string_value="boom"))
    sp.events.add(name="")
    ln = sp.links.add(trace_id=b"\x02" * 16, span_id=b"\x03" * 8, trace_state="a=b", flags=1,
                      dropped_attributes_count=1)
    ln.attributes.add(key="link", value=AnyValue(int_value=7))
    sp.status.message, sp.status.code = "bad", 2
    ss.spans.add(trace_id=b"\x04" * 16, span_id=b"\x05" * 8)  # everything else default
    rs2 = req.resource_spans.add()  # an empty resource and scope: written as {}
    rs2.resource.SetInParent()
    ss2 = rs2.scope_spans.add()
    ss2.scope.SetInParent()
    ss2.spans.add(trace_id=b"\x06" * 16, span_id=b"\x07" * 8, kind=1).status.code = 1
    return req


def test_every_value_and_field_of_the_trace_messages():
    body = _request().SerializeToString()
    text = traces_json(body)
    assert text is not None
    assert json.loads(text) == _oracle(body)
    assert b'"doubleValue":"NaN"' in text and b'"bytesValue":"AAECA/4="' in text
    assert b'"traceId":"000102030405060708090a0b0c0d0e0f"' in text


def test_a_status_with_nothing_set_is_left_out_and_resource_and_scope_are_always_there():
    req = ExportTraceServiceRequest()
    sp = req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    sp.status.SetInParent()  # present in the bytes, empty
    doc = json.loads(traces_json(req.SerializeToString()))
    assert doc == {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [
        {"traceId": "01" * 16, "spanId": "02" * 8}]}]}]}


def test_an_empty_request_is_an_empty_object():
    assert traces_json(b"") == b"{}"


def test_what_it_cannot_write_exactly_is_left_to_python():
    body = _request().SerializeToString()
    for cut in (1, 7, len(body) // 2, len(body) - 1):
        assert traces_json(body[:cut]) is None  # truncated
    bad = ExportTraceServiceRequest()
    sp = bad.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    sp.name = "ok"
    raw = bad.SerializeToString()
    assert traces_json(raw.replace(b"ok", b"\xff\xfe")) is None  # not UTF-8
    a = KeyValue(key="a", value=AnyValue(string_value="1")).SerializeToString()
    split = (b"\x4a" + bytes([len(a)]) + a) + b"\x2a\x01x" + (b"\x4a" + bytes([len(a)]) + a)  # attrs, name, attrs
    span = b"\x0a\x10" + b"\x01" * 16 + b"\x12\x08" + b"\x02" * 8 + split
    scope_spans = b"\x12" + bytes([len(span)]) + span
    resource_spans = b"\x12" + bytes([len(scope_spans)]) + scope_spans
    assert traces_json(b"\x0a" + bytes([len(resource_spans)]) + resource_spans) is None  # not consecutive
    assert traces_json(b"\x0a\x02\x08\x00") is None  # ResourceSpans.resource with another wire type
    # an unknown field is left out, as protobuf's printer does (and the resource written as {})
    assert json.loads(traces_json(b"\x0a\x02\x2a\x00")) == {"resourceSpans": [{"resource": {}}]}


def test_the_file_exporters_json_comes_from_the_protobuf_bytes_the_batch_already_has(monkeypatch):
    table = _typed_table()
    proto = arrow_otlp.encoded(table, "proto")
    seen = []
    real = _otlp_json.traces_json
    monkeypatch.setattr(arrow_otlp._otlp_json, "traces_json", lambda body: seen.append(body) or real(body))
    text = arrow_otlp.encoded(table, "json")
    assert seen == [proto] and seen[0] is proto  # the cached protobuf bytes, not a second encoding
    assert json.loads(text) == _oracle(proto)


def _nested_request(depth: int) -> bytes:
    """One span whose one attribute is an array in an array ... ``depth`` deep, as wire bytes."""

    def frame(field: int, body: bytes) -> bytes:
        head, n = bytes([(field << 3) | 2]), len(body)
        while n >= 0x80:
            head += bytes([(n & 0x7F) | 0x80])
            n >>= 7
        return head + bytes([n]) + body

    value = frame(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = frame(5, frame(1, value))  # AnyValue.array_value { values: value }
    span = frame(1, b"\x01" * 16) + frame(2, b"\x02" * 8) + frame(9, frame(1, b"k") + frame(2, value))
    return frame(1, frame(1, b"") + frame(2, frame(1, b"") + frame(2, span)))  # resource and scope: present, empty


def test_nesting_deeper_than_protobufs_limit_is_left_to_python():
    shallow = _nested_request(40)
    assert json.loads(traces_json(shallow)) == _oracle(shallow)
    deep = _nested_request(48)  # 2 messages per level: past upb's 100, which the Python paths hit too
    assert traces_json(deep) is None
    with pytest.raises(Exception, match="MaxDepth"):
        _oracle(deep)
