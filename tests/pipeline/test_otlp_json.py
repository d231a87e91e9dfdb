"""OTLP/JSON trace codec: hand-written bodies in the shapes the OTLP specification shows."""

from __future__ import annotations

import json

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as SpanStatus

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_json import (
    OtlpJsonError,
    decode_trace_request,
    encode_message,
    encode_trace_request,
)

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
SPAN_ID = "EEE19B7EC3C1B174"
PARENT_ID = "EEE19B7EC3C1B173"

# examples/trace.json from opentelemetry-proto: upper-case hex ids, int64 times as numbers.
SPEC_EXAMPLE = {
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
            "scope": {
                "name": "my.library",
                "version": "1.0.0",
                "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}],
            },
            "spans": [{
                "traceId": TRACE_ID,
                "spanId": SPAN_ID,
                "parentSpanId": PARENT_ID,
                "name": "I'm a server span",
                "startTimeUnixNano": 1544712660000000000,
                "endTimeUnixNano": 1544712661000000000,
                "kind": 2,
                "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}],
            }],
        }],
    }],
}


def body_of(document: object) -> bytes:
    return json.dumps(document).encode()


def with_span(**fields) -> bytes:
    """A one-span request whose span is a valid minimal span plus ``fields``."""
    span = {"traceId": TRACE_ID, "spanId": SPAN_ID, "name": "s", **fields}
    return body_of({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


def only_span(request: ExportTraceServiceRequest) -> Span:
    (rs,) = request.resource_spans
    (ss,) = rs.scope_spans
    (span,) = ss.spans
    return span


def only_row(request: ExportTraceServiceRequest) -> dict:
    conversion = request_to_table(request)
    assert conversion.rejected == 0, conversion.message
    (row,) = conversion.table.to_pylist()
    return row


def attribute(value: dict) -> AnyValue:
    span = only_span(decode_trace_request(with_span(attributes=[{"key": "a", "value": value}])))
    return span.attributes[0].value


def decode_error(body: bytes) -> str:
    with pytest.raises(OtlpJsonError) as info:
        decode_trace_request(body)
    return str(info.value)


# --- the specification's example and encoding rules -------------------------------------


def test_spec_example_decodes_with_hex_ids_and_integer_enum():
    span = only_span(decode_trace_request(body_of(SPEC_EXAMPLE)))
    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1544712660000000000


def test_spec_example_becomes_one_canonical_row():
    row = only_row(decode_trace_request(body_of(SPEC_EXAMPLE)))
    assert row["trace_id"] == TRACE_ID.lower()
    assert row["span_id"] == SPAN_ID.lower()
    assert row["parent_span_id"] == PARENT_ID.lower()
    assert row["kind"] == "server"
    assert row["duration_ns"] == 1_000_000_000
    assert row["service_name"] == "my.service"
    assert (row["scope_name"], row["scope_version"]) == ("my.library", "1.0.0")
    assert row["scope_attributes"] == [("my.scope.attribute", "some scope attribute")]
    assert row["attributes"] == [("my.span.attr", "some value")]


def test_lowercase_and_uppercase_hex_ids_are_the_same_id():
    upper = only_span(decode_trace_request(with_span(traceId=TRACE_ID.upper())))
    lower = only_span(decode_trace_request(with_span(traceId=TRACE_ID.lower())))
    assert upper.trace_id == lower.trace_id == bytes.fromhex(TRACE_ID)


def test_link_ids_are_hex_too():
    link = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "flags": 257}
    span = only_span(decode_trace_request(with_span(links=[link])))
    assert span.links[0].trace_id.hex() == link["traceId"]
    assert span.links[0].span_id.hex() == link["spanId"]
    assert span.links[0].flags == 257


def test_int64_is_accepted_as_decimal_string_and_as_number():
    span = only_span(decode_trace_request(with_span(
        startTimeUnixNano="1544712660000000000",
        endTimeUnixNano=1544712661000000001,
        attributes=[{"key": "s", "value": {"intValue": "-42"}}, {"key": "n", "value": {"intValue": 42}},
                    {"key": "e", "value": {"intValue": 1.5e3}}],
    )))
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000001  # a JSON number keeps every digit
    assert [a.value.int_value for a in span.attributes] == [-42, 42, 1500]


def test_enums_are_integers_and_names_are_tolerated():
    span = only_span(decode_trace_request(with_span(kind=3, status={"code": 2, "message": "boom"})))
    assert (span.kind, span.status.code) == (Span.SPAN_KIND_CLIENT, SpanStatus.STATUS_CODE_ERROR)
    named = only_span(decode_trace_request(with_span(kind="SPAN_KIND_CONSUMER", status={"code": "STATUS_CODE_OK"})))
    assert (named.kind, named.status.code) == (Span.SPAN_KIND_CONSUMER, SpanStatus.STATUS_CODE_OK)


def test_unknown_enum_number_is_kept_and_unknown_enum_name_is_ignored():
    assert only_row(decode_trace_request(with_span(kind=9)))["kind"] == "kind_9"
    assert only_span(decode_trace_request(with_span(kind="SPAN_KIND_FUTURE"))).kind == 0


def test_unknown_fields_are_ignored_at_every_level():
    document = json.loads(json.dumps(SPEC_EXAMPLE))
    document["futureTopLevel"] = {"anything": [1, "two", None]}
    rs = document["resourceSpans"][0]
    rs["resource"]["futureResourceField"] = 1
    rs["scopeSpans"][0]["scope"]["futureScopeField"] = "x"
    span = rs["scopeSpans"][0]["spans"][0]
    span["futureSpanField"] = [{"nested": {"deeper": True}}]
    span["attributes"][0]["value"]["futureValueKind"] = {"x": 1}
    assert decode_trace_request(body_of(document)) == decode_trace_request(body_of(SPEC_EXAMPLE))


def test_original_snake_case_names_are_accepted():
    snake = {"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": TRACE_ID, "span_id": SPAN_ID, "parent_span_id": PARENT_ID,
        "start_time_unix_nano": "5", "dropped_attributes_count": 2,
        "attributes": [{"key": "k", "value": {"string_value": "v"}}],
    }]}]}]}
    span = only_span(decode_trace_request(body_of(snake)))
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert (span.start_time_unix_nano, span.dropped_attributes_count) == (5, 2)
    assert span.attributes[0].value.string_value == "v"


def test_null_means_not_set():
    span = only_span(decode_trace_request(with_span(parentSpanId=None, kind=None, status=None, attributes=None)))
    assert (span.parent_span_id, span.kind, span.HasField("status"), len(span.attributes)) == (b"", 0, False, 0)


def test_empty_body_and_empty_object_are_empty_requests():
    for body in (b"", b"  \n", b"{}", b'{"resourceSpans": []}'):
        request = decode_trace_request(body)
        assert request == ExportTraceServiceRequest()
        assert request_to_table(request).table.num_rows == 0


# --- attribute values ------------------------------------------------------------------


def test_nested_array_and_kvlist_values_decode_and_render_as_json():
    value = {"kvlistValue": {"values": [
        {"key": "list", "value": {"arrayValue": {"values": [
            {"intValue": "1"}, {"doubleValue": 2.5}, {"boolValue": True}, {"stringValue": "s"},
            {"arrayValue": {"values": []}}, {},
        ]}}},
        {"key": "map", "value": {"kvlistValue": {"values": [{"key": "b", "value": {"bytesValue": "AAE="}}]}}},
    ]}}
    decoded = attribute(value)
    inner = decoded.kvlist_value.values[0].value.array_value.values
    assert [v.WhichOneof("value") for v in inner] == [
        "int_value", "double_value", "bool_value", "string_value", "array_value", None]
    assert decoded.kvlist_value.values[1].value.kvlist_value.values[0].value.bytes_value == b"\x00\x01"
    row = only_row(decode_trace_request(with_span(attributes=[{"key": "a", "value": value}])))
    assert json.loads(dict(row["attributes"])["a"]) == {"list": [1, 2.5, True, "s", [], None], "map": {"b": "AAE="}}


def test_bytes_value_is_base64_standard_or_url_safe_padded_or_not():
    for text in ("+/8=", "-_8=", "-_8"):
        assert attribute({"bytesValue": text}).bytes_value == b"\xfb\xff"


def test_doubles_accept_numbers_and_the_special_strings():
    assert attribute({"doubleValue": 1.25}).double_value == 1.25
    assert attribute({"doubleValue": "1.25"}).double_value == 1.25
    assert attribute({"doubleValue": "-Infinity"}).double_value == float("-inf")
    nan = attribute({"doubleValue": "NaN"}).double_value
    assert nan != nan
    negative_zero = attribute({"doubleValue": -0.0}).double_value
    assert str(negative_zero) == "-0.0"


def test_empty_string_and_false_still_select_their_oneof_member():
    assert attribute({"stringValue": ""}).WhichOneof("value") == "string_value"
    assert attribute({"boolValue": False}).WhichOneof("value") == "bool_value"


# --- errors ----------------------------------------------------------------------------


def test_body_that_is_not_json_is_an_error():
    assert decode_error(b"{not json").startswith("request body is not valid JSON: ")
    assert decode_error(b'{"a": NaN}') == "request body is not valid JSON: NaN is not a JSON value"


def test_json_array_at_top_level_is_an_error():
    assert decode_error(b"[]") == "request body: expected a JSON object, got an array"


def test_non_hex_id_names_its_path():
    body = body_of({"resourceSpans": [{"scopeSpans": [{}, {"spans": [{}, {}, {}, {"traceId": "zz" * 16}]}]}]})
    assert decode_error(body) == (
        "resourceSpans[0].scopeSpans[1].spans[3].traceId: not a hex string: "
        "'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'"
    )


def test_base64_id_is_not_mistaken_for_hex():
    # What a plain protobuf JSON encoder would send; the spec says hex.
    assert decode_error(with_span(spanId="7uGbfsPBsXQ=")).endswith("spans[0].spanId: not a hex string: '7uGbfsPBsXQ='")


def test_hex_id_with_odd_digits_or_whitespace_is_an_error():
    assert decode_error(with_span(spanId="abc")).endswith("spanId: odd number of hex digits: 'abc'")
    assert decode_error(with_span(spanId="ab cd")).endswith("spanId: not a hex string: 'ab cd'")


def test_link_id_error_names_the_link():
    assert decode_error(with_span(links=[{"traceId": TRACE_ID}, {"spanId": "xyz!"}])) == (
        "resourceSpans[0].scopeSpans[0].spans[0].links[1].spanId: not a hex string: 'xyz!'"
    )


@pytest.mark.parametrize(("fields", "expected"), [
    ({"name": 5}, "spans[0].name: expected a string, got number 5"),
    ({"kind": True}, "spans[0].kind: expected an enum number, got true"),
    ({"spanId": 12}, "spans[0].spanId: expected a hex string, got number 12"),
    ({"startTimeUnixNano": "soon"}, "spans[0].startTimeUnixNano: expected an integer, got string 'soon'"),
    ({"startTimeUnixNano": 1.5}, "spans[0].startTimeUnixNano: expected an integer, got number 1.5"),
    ({"startTimeUnixNano": -1}, "spans[0].startTimeUnixNano: -1 is out of range for fixed64"),
    ({"droppedEventsCount": 2**32}, "spans[0].droppedEventsCount: 4294967296 is out of range for uint32"),
    ({"attributes": {"key": "a"}}, "spans[0].attributes: expected an array, got an object"),
    ({"attributes": [None]}, "spans[0].attributes[0]: expected an object, got null"),
    ({"status": "ok"}, "spans[0].status: expected an object, got string 'ok'"),
    ({"attributes": [{"key": "a", "value": {"boolValue": "true"}}]},
     "spans[0].attributes[0].value.boolValue: expected true or false, got string 'true'"),
    ({"attributes": [{"key": "a", "value": {"bytesValue": "a$b="}}]},
     "spans[0].attributes[0].value.bytesValue: not a base64 string: 'a$b='"),
    ({"attributes": [{"key": "a", "value": {"stringValue": "x", "intValue": "1"}}]},
     "spans[0].attributes[0].value.intValue: more than one field of oneof 'value' is set"),
    ({"trace_id": TRACE_ID}, "spans[0].trace_id: field is given twice (as lowerCamelCase and as its original name)"),
])
def test_wrong_value_type_names_its_path(fields, expected):
    assert decode_error(with_span(**fields)) == "resourceSpans[0].scopeSpans[0]." + expected


def test_double_that_overflows_must_be_written_as_infinity():
    body = with_span(attributes=[{"key": "a", "value": {"doubleValue": 0}}]).replace(b'"doubleValue": 0', b'"doubleValue": 1e400')
    assert decode_error(body).endswith(
        'value.doubleValue: number out of range for a double (write "Infinity" as a string)')


def test_top_level_field_of_the_wrong_type_is_an_error():
    assert decode_error(b'{"resourceSpans": {}}') == "resourceSpans: expected an array, got an object"


def test_unpaired_surrogate_in_a_string_is_an_error():
    assert decode_error(with_span(name="\ud800")).endswith("spans[0].name: string has an unpaired surrogate: '\\ud800'")


def test_nesting_beyond_protobuf_limits_is_an_error():
    value: dict = {"stringValue": "leaf"}
    for _ in range(60):
        value = {"arrayValue": {"values": [value]}}
    assert "nested deeper than 100 messages" in decode_error(with_span(attributes=[{"key": "a", "value": value}]))
    assert decode_error(b"[" * 100_000) == "request body: JSON is nested too deeply"


# --- wrong-length ids are the converter's business -------------------------------------


def test_wrong_length_hex_id_decodes_and_only_that_span_is_rejected():
    spans = [
        {"traceId": TRACE_ID, "spanId": "00000000000000a1", "name": "good-1"},
        {"traceId": TRACE_ID[:30], "spanId": "00000000000000a2", "name": "short-trace"},
        {"traceId": TRACE_ID, "spanId": "00000000000000a3", "name": "good-2"},
    ]
    request = decode_trace_request(body_of({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}))
    assert request.resource_spans[0].scope_spans[0].spans[1].trace_id == bytes.fromhex(TRACE_ID[:30])
    conversion = request_to_table(request)
    assert conversion.rejected == 1
    assert conversion.table.column("name").to_pylist() == ["good-1", "good-2"]
    assert "'short-trace': trace_id must be 16 bytes, got 15" in conversion.message


def test_empty_id_decodes_and_the_converter_rejects_the_span():
    conversion = request_to_table(decode_trace_request(with_span(spanId="")))
    assert (conversion.accepted, conversion.rejected) == (0, 1)


# --- encoding --------------------------------------------------------------------------


def test_encoded_request_uses_hex_ids_camel_case_integer_enums_and_int64_strings():
    request = decode_trace_request(body_of(SPEC_EXAMPLE))
    request.resource_spans[0].scope_spans[0].spans[0].links.add(trace_id=bytes(range(16)), span_id=b"\x01" * 8)
    document = json.loads(encode_trace_request(request))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE_ID.lower()
    assert span["parentSpanId"] == PARENT_ID.lower()
    assert span["links"][0] == {"traceId": bytes(range(16)).hex(), "spanId": "01" * 8}
    assert span["kind"] == 2
    assert span["startTimeUnixNano"] == "1544712660000000000"
    assert decode_trace_request(encode_trace_request(request)) == request


def test_encoded_request_keeps_non_finite_doubles_as_strings():
    request = decode_trace_request(with_span(attributes=[{"key": "a", "value": {"doubleValue": "NaN"}}]))
    document = json.loads(encode_trace_request(request))
    assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]["value"] == {
        "doubleValue": "NaN"}


def test_partial_success_response_encodes_in_camel_case_with_int64_as_string():
    response = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=3, error_message="bad ids"))
    assert json.loads(encode_message(response)) == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "bad ids"}}


def test_full_success_response_is_an_empty_object():
    assert encode_message(ExportTraceServiceResponse()) == b"{}"


def test_status_encodes_code_and_message():
    assert json.loads(encode_message(Status(code=3, message="cannot decode"))) == {
        "code": 3, "message": "cannot decode"}
