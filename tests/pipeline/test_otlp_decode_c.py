"""The C decoder of OTLP trace requests gives exactly the table, rejections and errors of the Python path.

Differential: random requests (every AnyValue type, repeated keys, invalid ids, big times, events,
links) and random mutations of valid bodies go through ``protobuf_to_table`` twice, with the C
decoder and with ``AGENT_SRE_PURE_PYTHON_DECODER=1``.  More examples for a local run:
``AGENT_SRE_DECODE_EXAMPLES=5000 .venv/bin/python -m pytest tests/pipeline/test_otlp_decode_c.py``.
"""

from __future__ import annotations

import os
import threading

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from agent_sre.pipeline.pdata import otlp_arrow
from agent_sre.pipeline.pdata.otlp_arrow import PURE_PYTHON_DECODER_ENV, protobuf_to_table
from bench.agent_spans import request_bodies
from tests.otlp_builders import kv

decoder = pytest.importorskip("agent_sre.pipeline.pdata._otlp_decode",
                              reason="the C decoder is not built (no C compiler or Python headers)")

EXAMPLES = int(os.environ.get("AGENT_SRE_DECODE_EXAMPLES", "120"))


def _convert(body: bytes, pure: bool):
    """(table, rejected, message) or the exception type and text, by one path."""
    old = os.environ.pop(PURE_PYTHON_DECODER_ENV, None)
    if pure:
        os.environ[PURE_PYTHON_DECODER_ENV] = "1"
    try:
        conv = protobuf_to_table(body)
    except Exception as exc:  # noqa: BLE001 - the two paths must fail alike
        return type(exc), str(exc)
    finally:
        os.environ.pop(PURE_PYTHON_DECODER_ENV, None)
        if old is not None:
            os.environ[PURE_PYTHON_DECODER_ENV] = old
    return conv


def _assert_same(body: bytes) -> None:
    c, py = _convert(body, pure=False), _convert(body, pure=True)
    if isinstance(py, tuple):
        assert c == py
        return
    assert not isinstance(c, tuple), c
    assert (c.rejected, c.message) == (py.rejected, py.message)
    assert c.table.schema == py.table.schema
    if not c.table.equals(py.table):
        for name in c.table.column_names:
            assert c.table.column(name).to_pylist() == py.table.column(name).to_pylist(), name
        raise AssertionError("tables differ")


# --- random requests -------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "service.name", "ü", ""]) | st.text(max_size=6)
scalars = (st.none() | st.text(max_size=12) | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats() | st.binary(max_size=10) | st.sampled_from([0.0, -0.0, 1e16, 1e-7, 0.1, 2.5e-308]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@st.composite
def key_values(draw, max_size: int = 6, scalar: bool = False) -> list[KeyValue]:
    out = []
    kinds = scalars if scalar else values
    for key, value, absent in draw(st.lists(st.tuples(keys, kinds, st.booleans()), max_size=max_size)):
        # an empty AnyValue either absent or present with no field: both are a null map value
        out.append(KeyValue(key=key) if value is None and absent else kv(key, value))
    return out


ids16 = st.binary(min_size=16, max_size=16) | st.just(bytes(16)) | st.binary(max_size=18)
ids8 = st.binary(min_size=8, max_size=8) | st.just(bytes(8)) | st.binary(max_size=9)
times = st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def spans(draw, clean: bool) -> Span:
    """``clean``: a span the C decoder converts itself (valid ids and times, scalar attribute values)."""
    valid_ids = clean or draw(st.booleans())
    span = Span(
        trace_id=draw(st.binary(min_size=16, max_size=16).filter(any) if valid_ids else ids16),
        span_id=draw(st.binary(min_size=8, max_size=8).filter(any) if valid_ids else ids8),
        parent_span_id=draw(st.sampled_from([b"", bytes(8)]) | st.binary(min_size=8, max_size=8)
                            | (st.just(b"") if valid_ids else ids8)),
        trace_state=draw(st.text(max_size=8)), name=draw(st.text(max_size=12)), flags=draw(u32),
        kind=draw(st.integers(-2, 7)),
        start_time_unix_nano=draw(st.integers(0, 2**63 - 1) if clean else times),
        end_time_unix_nano=draw(st.integers(0, 2**63 - 1) if clean else times),
        attributes=draw(key_values(8, scalar=clean)),
        dropped_attributes_count=draw(u32), dropped_events_count=draw(u32), dropped_links_count=draw(u32),
    )
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(st.integers(-1, 4)), message=draw(st.text(max_size=8))))
    for _ in range(draw(st.integers(0, 2))):
        span.events.add(time_unix_nano=draw(times), name=draw(st.text(max_size=6)),
                        attributes=draw(key_values(3)), dropped_attributes_count=draw(u32))
    for _ in range(draw(st.integers(0, 2))):
        span.links.add(trace_id=draw(ids16), span_id=draw(ids8), trace_state=draw(st.text(max_size=4)),
                       attributes=draw(key_values(3)), dropped_attributes_count=draw(u32), flags=draw(u32))
    return span


@st.composite
def requests(draw) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    clean = draw(st.integers(0, 3)) > 0
    for _ in range(draw(st.integers(0, 3))):
        rs = ResourceSpans(resource=Resource(attributes=draw(key_values(4))),
                           schema_url=draw(st.text(max_size=4)))
        for _ in range(draw(st.integers(0, 3))):
            scope = InstrumentationScope(name=draw(st.text(max_size=6)), version=draw(st.text(max_size=4)),
                                         attributes=draw(key_values(2)))
            rs.scope_spans.append(ScopeSpans(scope=scope, spans=draw(st.lists(spans(clean), max_size=4))))
        req.resource_spans.append(rs)
    return req


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_random_requests_convert_as_the_python_path_converts_them(req):
    _assert_same(req.SerializeToString())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]),
                                      st.integers(0, 10**6), st.binary(min_size=1, max_size=3)),
                            min_size=1, max_size=3))
def test_mutated_bodies_convert_or_fail_as_the_python_path_does(req, mutations):
    body = bytearray(req.SerializeToString())
    for op, at, data in mutations:
        at = at % (len(body) + 1)
        if op == "flip" and at < len(body):
            body[at] ^= data[0] or 0x80
        elif op == "cut":
            del body[at:]
        elif op == "insert":
            body[at:at] = data
        else:
            del body[at:at + len(data)]
    _assert_same(bytes(body))


# --- what the C path answers itself, and what it leaves to the Python path -----------------------------


def _one_span(**fields) -> ExportTraceServiceRequest:
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="op", start_time_unix_nano=1,
                end_time_unix_nano=2)
    for name, value in fields.items():
        if name == "attributes":
            span.attributes.extend(value)
        else:
            setattr(span, name, value)
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])


def test_the_benchmark_requests_are_answered_by_the_c_decoder_with_the_python_paths_table():
    for body in request_bodies(seed=3, count=2, n_spans=300):
        assert decoder.decode(body) is not None
        _assert_same(body)


SCALARS = [kv("s", "x"), kv("t", True), kv("f", False), kv("i", -(2**63)), kv("d", 0.1), kv("big", 1e300),
           kv("nan", float("nan")), kv("inf", float("-inf")), kv("b", b"\x00\xff\x10"), kv("null", None),
           KeyValue(key="absent"), kv("a", "first"), kv("a", "last")]


def test_scalar_values_and_a_repeated_key_are_rendered_in_c_as_in_python():
    body = _one_span(attributes=SCALARS).SerializeToString()
    assert decoder.decode(body) is not None
    _assert_same(body)
    attrs = dict(protobuf_to_table(body).table.column("attributes")[0].as_py())
    assert attrs["d"] == "0.1" and attrs["big"] == "1e+300" and attrs["b"] == "AP8Q" and attrs["a"] == "last"
    assert list(attrs).index("a") == 11 and attrs["null"] is None and attrs["absent"] is None


@pytest.mark.parametrize("request_", [
    _one_span(trace_id=b"\x01" * 15),  # invalid ids are rejected one by one, with reasons
    _one_span(span_id=bytes(8)),
    _one_span(end_time_unix_nano=2**63),
    _one_span(attributes=[kv("arr", [1, "x"])]),  # JSON and nesting limits: Python's
    _one_span(attributes=[kv("kv", {"a": 1})]),
], ids=["short-trace-id", "zero-span-id", "time-past-int64", "array", "kvlist"])
def test_unusual_requests_are_left_to_the_python_path(request_):
    body = request_.SerializeToString()
    assert decoder.decode(body) is None
    _assert_same(body)


def test_invalid_utf8_in_a_span_name_raises_protobufs_decode_error_by_both_paths():
    body = _one_span(name="NAME").SerializeToString().replace(b"NAME", b"N\xffME")
    assert decoder.decode(body) is None
    with pytest.raises(DecodeError):
        protobuf_to_table(body)
    _assert_same(body)


@pytest.mark.parametrize("unknown", [
    b"\xa8\x06\x05",  # field 101, varint
    b"\xa9\x06" + bytes(8),  # fixed64
    b"\xaa\x06\x02ab",  # length-delimited
    b"\xad\x06" + bytes(4),  # fixed32
    b"\xab\x06\xac\x06",  # a group: protobuf's rules, left to it
], ids=["varint", "fixed64", "bytes", "fixed32", "group"])
def test_unknown_fields_in_a_span_are_skipped_as_protobuf_skips_them(unknown):
    req = _one_span(attributes=[kv("k", "v")])
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.CopyFrom(Span.FromString(span.SerializeToString() + unknown))  # kept as an unknown field
    body = req.SerializeToString()
    assert body.endswith(unknown)
    _assert_same(body)
    assert protobuf_to_table(body).table.num_rows == 1


def test_events_and_links_come_through_the_skeleton():
    req = _one_span()
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.events.add(time_unix_nano=5, name="exception", attributes=[kv("exception.type", "E"), kv("n", [1])])
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8, attributes=[kv("k", {"a": True})])
    body = req.SerializeToString()
    assert decoder.decode(body) is not None
    _assert_same(body)
    row = protobuf_to_table(body).table.to_pylist()[0]
    assert row["events"][0]["attributes"] == [("exception.type", "E"), ("n", "[1]")]
    assert row["links"][0]["span_id"] == "04" * 8


def test_the_env_var_forces_the_python_path(monkeypatch):
    class Refuses:
        @staticmethod
        def decode(body: bytes) -> None:
            raise AssertionError("the C decoder was called")

    monkeypatch.setattr(otlp_arrow, "_otlp_decode", Refuses)
    monkeypatch.setenv(PURE_PYTHON_DECODER_ENV, "1")
    assert protobuf_to_table(_one_span().SerializeToString()).table.num_rows == 1


def test_threads_decode_at_once_and_each_gets_its_own_columns():
    bodies = request_bodies(seed=5, count=4, n_spans=200)
    expected = [protobuf_to_table(b).table for b in bodies]
    failures: list[str] = []

    def convert(i: int) -> None:
        for _ in range(5):
            if not protobuf_to_table(bodies[i]).table.equals(expected[i]):
                failures.append(f"body {i}")

    threads = [threading.Thread(target=convert, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
