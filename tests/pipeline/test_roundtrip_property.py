"""Property tests: every encoding of a request gives the converter the same rows.

For any valid ExportTraceServiceRequest, the canonical rows are the same whether
the converter sees the request itself, its protobuf bytes decoded again, or its
OTLP/JSON decoded again.  Rows are compared with ``Table.to_pylist()``.

NaN (with any sign or payload) and the infinities are generated as double
attribute values on purpose: OTLP/JSON carries them as "NaN"/"Infinity"
strings, and rows hold attribute values as strings ("nan", "inf"), so they must
survive both encodings.  Only the proto messages are not compared with ``==``
when NaN may be present, because NaN != NaN; serialised bytes are compared instead.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re

from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from agent_sre.pipeline.pdata.otlp_arrow import Conversion, protobuf_to_table, request_to_table
from agent_sre.pipeline.pdata.otlp_attributes import ShadowExportTraceServiceRequest
from agent_sre.pipeline.pdata.otlp_json import decode_trace_request, encode_trace_request

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
TIMES = st.integers(0, 2**63 - 1)
SHORT_TEXT = st.text(max_size=12)
# Keys the converter lifts into columns, mixed with arbitrary ones.
KEYS = st.one_of(
    st.sampled_from(["service.name", "service.version", "deployment.environment.name",
                     "deployment.environment", "gen_ai.request.model"]),
    SHORT_TEXT,
)


def nonzero_id(size: int) -> st.SearchStrategy[bytes]:
    # Hypothesis shrinks towards zero bytes; an all-zero id is invalid, so nudge it.
    return st.binary(min_size=size, max_size=size).map(lambda b: b if any(b) else b[:-1] + b"\x01")


def leaf_values() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        st.just(AnyValue()),
        st.text(max_size=30).map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        INT64.map(lambda v: AnyValue(int_value=v)),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda v: AnyValue(double_value=v)),
        st.sampled_from([0.0, -0.0]).map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=12).map(lambda v: AnyValue(bytes_value=v)),
    )


def nest(children: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[AnyValue]:
    arrays = st.lists(children, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs)))
    kvlists = st.lists(st.tuples(SHORT_TEXT, children), max_size=3).map(
        lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])))
    return arrays | kvlists


ANY_VALUES = st.recursive(leaf_values(), nest, max_leaves=6)
ATTRIBUTES = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), KEYS, ANY_VALUES), max_size=4)
FEW_ATTRIBUTES = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), KEYS, ANY_VALUES), max_size=2)


def events() -> st.SearchStrategy[Span.Event]:
    return st.builds(lambda t, n, a, d: Span.Event(time_unix_nano=t, name=n, attributes=a,
                                                   dropped_attributes_count=d),
                     TIMES, SHORT_TEXT, FEW_ATTRIBUTES, UINT32)


def links(trace_ids: st.SearchStrategy[bytes], span_ids: st.SearchStrategy[bytes]) -> st.SearchStrategy:
    return st.builds(lambda t, s, ts, a, d, f: Span.Link(trace_id=t, span_id=s, trace_state=ts, attributes=a,
                                                         dropped_attributes_count=d, flags=f),
                     trace_ids, span_ids, SHORT_TEXT, FEW_ATTRIBUTES, UINT32, UINT32)


@st.composite
def spans(draw, trace_ids: st.SearchStrategy[bytes], span_ids: st.SearchStrategy[bytes],
          parent_ids: st.SearchStrategy[bytes]) -> Span:
    return Span(
        trace_id=draw(trace_ids),
        span_id=draw(span_ids),
        parent_span_id=draw(parent_ids),
        trace_state=draw(SHORT_TEXT),
        flags=draw(UINT32),
        name=draw(st.text(max_size=20)),
        kind=draw(st.integers(-1, 7)),  # 0..5 are named; proto3 enums are open, so others must survive too
        start_time_unix_nano=draw(TIMES),
        end_time_unix_nano=draw(TIMES),
        attributes=draw(ATTRIBUTES),
        dropped_attributes_count=draw(UINT32),
        events=draw(st.lists(events(), max_size=2)),
        dropped_events_count=draw(UINT32),
        links=draw(st.lists(links(trace_ids, span_ids), max_size=2)),
        dropped_links_count=draw(UINT32),
        status=Status(code=draw(st.integers(0, 3)), message=draw(SHORT_TEXT)),
    )


def requests(trace_ids: st.SearchStrategy[bytes], span_ids: st.SearchStrategy[bytes],
             parent_ids: st.SearchStrategy[bytes]) -> st.SearchStrategy[ExportTraceServiceRequest]:
    scope = st.builds(lambda n, v, a: InstrumentationScope(name=n, version=v, attributes=a),
                      SHORT_TEXT, SHORT_TEXT, FEW_ATTRIBUTES)
    scope_spans = st.builds(lambda s, sp, url: ScopeSpans(scope=s, spans=sp, schema_url=url),
                            scope, st.lists(spans(trace_ids, span_ids, parent_ids), max_size=3), SHORT_TEXT)
    resource = st.builds(lambda a, d: Resource(attributes=a, dropped_attributes_count=d), ATTRIBUTES, UINT32)
    resource_spans = st.builds(lambda r, ss: ResourceSpans(resource=r, scope_spans=ss),
                               resource, st.lists(scope_spans, max_size=2))
    return st.lists(resource_spans, max_size=2).map(lambda rs: ExportTraceServiceRequest(resource_spans=rs))


VALID_REQUESTS = requests(nonzero_id(16), nonzero_id(8), st.just(b"") | nonzero_id(8))
# Any id length, zero ids included: the converter must reject the same spans on every path.
ANY_ID_REQUESTS = requests(st.binary(max_size=18), st.binary(max_size=10), st.binary(max_size=10))


def rows(conversion: Conversion) -> list[dict]:
    return conversion.table.to_pylist()


def via_protobuf(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(request.SerializeToString())


def via_json(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    return decode_trace_request(encode_trace_request(request))


# --- the round trips -------------------------------------------------------------------


@PROPERTY
@given(VALID_REQUESTS)
def test_protobuf_round_trip_gives_the_same_rows(request):
    original = request_to_table(request)
    assert original.rejected == 0, original.message
    assert rows(request_to_table(via_protobuf(request))) == rows(original)
    assert rows(protobuf_to_table(request.SerializeToString())) == rows(original)  # what the receiver runs


def _has_repeated_keys(request: ExportTraceServiceRequest) -> bool:
    return any(len({kv.key for kv in sp.attributes}) != len(sp.attributes)
               for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans)


@PROPERTY
@given(VALID_REQUESTS)
def test_columnar_attribute_decoding_gives_the_rows_of_the_plain_path(request):
    shadow = ShadowExportTraceServiceRequest.FromString(request.SerializeToString())
    columnar = request_to_table(shadow, columnar_attributes=True)
    if _has_repeated_keys(request):
        assert columnar is None  # left to the plain path, which keeps the last value
    else:
        assert columnar is not None
        assert rows(columnar) == rows(request_to_table(request))


@PROPERTY
@given(VALID_REQUESTS)
def test_json_round_trip_gives_the_same_rows(request):
    assert rows(request_to_table(via_json(request))) == rows(request_to_table(request))


@PROPERTY
@given(VALID_REQUESTS)
def test_json_round_trip_gives_the_same_message(request):
    expected = _canonical_nans(via_protobuf(request))
    assert via_json(request).SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@PROPERTY
@given(ANY_ID_REQUESTS)
def test_every_path_rejects_the_same_spans_for_any_id_length(request):
    original = request_to_table(request)
    for conversion in (request_to_table(via_protobuf(request)), request_to_table(via_json(request)),
                       protobuf_to_table(request.SerializeToString())):
        assert (conversion.rejected, conversion.message) == (original.rejected, original.message)
        assert rows(conversion) == rows(original)


# --- the JSON decoder against protobuf's own parser --------------------------------------


def _ids_to_base64(document: dict) -> dict:
    """What json_format.ParseDict needs: OTLP/JSON's hex ids as protobuf JSON's base64."""
    def convert(obj: dict, keys: tuple[str, ...]) -> None:
        for key in keys:
            if key in obj:
                obj[key] = base64.b64encode(bytes.fromhex(obj[key])).decode()

    for rs in document.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                convert(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", ()):
                    convert(link, ("traceId", "spanId"))
    return document


@PROPERTY
@given(ANY_ID_REQUESTS)
def test_json_decoder_agrees_with_protobuf_parse_dict(request):
    body = encode_trace_request(request)
    reference = json_format.ParseDict(_ids_to_base64(json.loads(body)), ExportTraceServiceRequest())
    assert decode_trace_request(body).SerializeToString(deterministic=True) == \
        reference.SerializeToString(deterministic=True)


# --- spellings the decoder must accept besides the canonical one -------------------------

_INT64_KEYS = frozenset({"startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "intValue"})
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), key)


def _respell(value: object, rnd: random.Random) -> object:
    """Same request, other legal spelling: snake_case keys, int64 as numbers, upper-case hex,
    unknown fields sprinkled in."""
    if isinstance(value, list):
        return [_respell(v, rnd) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict = {}
    for key, item in value.items():
        if key in _INT64_KEYS and rnd.random() < 0.5:
            item = int(item)
        elif key in _ID_KEYS and rnd.random() < 0.5:
            item = item.upper()
        else:
            item = _respell(item, rnd)
        out[_snake(key) if rnd.random() < 0.5 else key] = item
    if rnd.random() < 0.3:
        out["someFutureField"] = {"nested": [1, "two", None, {"deeper": True}]}
    return out


@PROPERTY
@given(VALID_REQUESTS, st.randoms(use_true_random=False))
def test_other_legal_spellings_decode_to_the_same_request(request, rnd):
    body = encode_trace_request(request)
    respelled = json.dumps(_respell(json.loads(body), rnd)).encode()
    assert decode_trace_request(respelled).SerializeToString(deterministic=True) == \
        decode_trace_request(body).SerializeToString(deterministic=True)


# --- helpers -------------------------------------------------------------------------------


def _canonical_nans(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """OTLP/JSON has one NaN ("NaN"): a NaN's sign and payload do not survive it."""
    def fix(value: AnyValue) -> None:
        which = value.WhichOneof("value")
        if which == "double_value" and math.isnan(value.double_value):
            value.double_value = math.nan
        elif which == "array_value":
            for item in value.array_value.values:
                fix(item)
        elif which == "kvlist_value":
            for kv in value.kvlist_value.values:
                fix(kv.value)

    def fix_all(attributes) -> None:
        for kv in attributes:
            fix(kv.value)

    for rs in request.resource_spans:
        fix_all(rs.resource.attributes)
        for ss in rs.scope_spans:
            fix_all(ss.scope.attributes)
            for span in ss.spans:
                fix_all(span.attributes)
                for item in [*span.events, *span.links]:
                    fix_all(item.attributes)
    return request
