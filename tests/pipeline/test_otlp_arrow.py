"""The OTLP -> Arrow converter: value rendering, ids, enums, rejection."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table, value_to_str
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from tests.otlp_builders import request


def test_values_render_as_documented():
    assert value_to_str(AnyValue(string_value="x")) == "x"
    assert value_to_str(AnyValue(bool_value=True)) == "true"
    assert value_to_str(AnyValue(int_value=-7)) == "-7"
    assert value_to_str(AnyValue(double_value=0.1)) == "0.1"
    assert value_to_str(AnyValue(double_value=float("nan"))) == "NaN"
    assert value_to_str(AnyValue(double_value=float("-inf"))) == "-Infinity"
    assert value_to_str(AnyValue(bytes_value=b"\x00\xff")) == "AP8="
    assert value_to_str(AnyValue()) is None
    arr = AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(double_value=float("inf")),
                                                  AnyValue(string_value="a")]))
    assert value_to_str(arr) == '[1,"Infinity","a"]'
    kvl = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=AnyValue(bool_value=False))]))
    assert value_to_str(kvl) == '{"k":false}'


def test_schema_ids_enums_and_durations():
    req = request(2)
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.kind = 2
    sp.status.code = 2
    sp.parent_span_id = bytes(8)  # all-zero parent: a root span
    table = request_to_table(req).table
    assert table.schema == SPAN_SCHEMA
    row = table.to_pylist()[0]
    assert row["trace_id"] == sp.trace_id.hex() and row["span_id"] == sp.span_id.hex()
    assert row["parent_span_id"] is None
    assert (row["kind"], row["status_code"]) == ("server", "error")
    assert row["duration_ns"] == 1_000_000
    assert row["service_name"] == "svc" and row["scope_name"] == "tests"


def test_repeated_attribute_key_keeps_the_last_value():
    req = request(1)
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.attributes.add(key="k", value=AnyValue(string_value="first"))
    sp.attributes.add(key="k", value=AnyValue(string_value="last"))
    assert request_to_table(req).table.to_pylist()[0]["attributes"] == [("k", "last")]


def test_times_beyond_int64_reject_the_span_with_a_reason():
    req = request(3)
    req.resource_spans[0].scope_spans[0].spans[1].end_time_unix_nano = 2**64 - 1
    conv = request_to_table(req)
    assert (conv.accepted, conv.rejected) == (2, 1)
    assert "beyond 2262-04-11" in conv.message


def test_unknown_enum_values_are_kept_visible():
    req = request(1)
    req.resource_spans[0].scope_spans[0].spans[0].kind = 9
    assert request_to_table(req).table.column("kind").to_pylist() == ["kind_9"]


def test_empty_request_gives_an_empty_table():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    conv = request_to_table(ExportTraceServiceRequest())
    assert conv.accepted == 0 and conv.rejected == 0 and conv.table.schema == SPAN_SCHEMA
