"""Column-wise attribute decoding: every wire shape gives the values the plain path gives."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table, request_to_table
from agent_sre.pipeline.pdata.otlp_attributes import ShadowExportTraceServiceRequest
from tests.otlp_builders import request


def _with_raw_attributes(*raw: bytes) -> bytes:
    """A one-span request whose Span.attributes are exactly these encoded KeyValues."""
    shadow = ShadowExportTraceServiceRequest.FromString(request(1).SerializeToString())
    shadow.resource_spans[0].scope_spans[0].spans[0].attributes.extend(raw)
    return shadow.SerializeToString()


def _attributes(body: bytes, columnar: bool = True) -> list:
    if columnar:
        conv = request_to_table(ShadowExportTraceServiceRequest.FromString(body), columnar_attributes=True)
        assert conv is not None, "fell back to the plain path"
    else:
        conv = request_to_table(ExportTraceServiceRequest.FromString(body))
    return conv.table.column("attributes").to_pylist()[0]


CASES = [
    KeyValue(key="k" * 200, value=AnyValue(string_value="long key: two-byte length")),
    KeyValue(key="big", value=AnyValue(string_value="x" * 20_000)),  # three-byte length
    KeyValue(key="neg", value=AnyValue(int_value=-(2**63))),  # ten-byte varint
    KeyValue(key="max", value=AnyValue(int_value=2**63 - 1)),
    KeyValue(key="zero", value=AnyValue(int_value=0)),
    KeyValue(key="t", value=AnyValue(bool_value=True)),
    KeyValue(key="f", value=AnyValue(bool_value=False)),
    KeyValue(key="nan", value=AnyValue(double_value=float("nan"))),
    KeyValue(key="inf", value=AnyValue(double_value=float("-inf"))),
    KeyValue(key="d", value=AnyValue(double_value=0.1)),
    KeyValue(key="empty", value=AnyValue()),
    KeyValue(key="empty-string", value=AnyValue(string_value="")),
    KeyValue(key="", value=AnyValue(string_value="empty key")),
    KeyValue(key="arr", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)]))),
    KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00\xff")),
    KeyValue(key="ünïcødé", value=AnyValue(string_value="値")),
]


@pytest.mark.parametrize("kv", CASES, ids=lambda kv: kv.key[:12] or "empty-key")
def test_each_value_shape_matches_the_plain_path(kv):
    body = _with_raw_attributes(kv.SerializeToString())
    assert _attributes(body) == _attributes(body, columnar=False)


def test_all_shapes_in_one_span_match_the_plain_path():
    body = _with_raw_attributes(*(kv.SerializeToString() for kv in CASES))
    got = _attributes(body)
    assert got == _attributes(body, columnar=False)
    assert dict(got)["neg"] == "-9223372036854775808" and dict(got)["nan"] == "NaN"


def test_unusual_field_order_and_unknown_fields_are_decoded_by_protobuf():
    value_first = b"\x12\x03\x0a\x01v" + b"\x0a\x01k"  # value before key: legal protobuf
    unknown = b"\x0a\x01u\x12\x03\x0a\x01w" + b"\x18\x05"  # an unknown field 3 after the value
    no_value = b"\x0a\x01n"  # a KeyValue without its value field
    body = _with_raw_attributes(value_first, unknown, no_value)
    assert _attributes(body) == [("k", "v"), ("u", "w"), ("n", None)] == _attributes(body, columnar=False)


def test_a_key_repeated_in_a_span_is_left_to_the_plain_path_which_keeps_the_last():
    body = _with_raw_attributes(KeyValue(key="a", value=AnyValue(string_value="1")).SerializeToString(),
                                KeyValue(key="a", value=AnyValue(string_value="2")).SerializeToString())
    assert request_to_table(ShadowExportTraceServiceRequest.FromString(body), columnar_attributes=True) is None
    assert protobuf_to_table(body).table.column("attributes").to_pylist()[0] == [("a", "2")]


def test_invalid_utf8_in_an_attribute_is_undecodable():
    body = _with_raw_attributes(b"\x0a\x02\xff\xfe\x12\x03\x0a\x01v")
    with pytest.raises(DecodeError):
        protobuf_to_table(body)


def test_a_truncated_key_value_is_undecodable():
    body = _with_raw_attributes(b"\x0a\x05ab")  # says 5 bytes of key, has 2
    with pytest.raises(DecodeError):
        protobuf_to_table(body)
