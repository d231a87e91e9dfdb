"""The C encoder of OTLP trace requests gives exactly the bytes of the Python path.

Differential: random canonical tables (nulls, empty strings, unicode, huge and negative ints, NaN/inf/-0.0
costs, typed keys with values that parse and values that nearly do, sliced tables, several chunks, events
and links) go through ``span_fields`` and ``table_to_bytes`` twice, with the C encoder and with
``AGENT_SRE_PURE_PYTHON_ENCODER=1``; the bytes must be equal and upb must parse them.  More examples for a
local run: ``AGENT_SRE_ENCODE_EXAMPLES=5000 .venv/bin/python -m pytest tests/pipeline/test_otlp_encode_c.py``.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.pdata import arrow_otlp
from agent_sre.pipeline.pdata.arrow_otlp import (
    PURE_PYTHON_ENCODER_ENV,
    _c_span_fields,
    _python_span_fields,
    span_fields,
    table_to_bytes,
    typed_keys,
)
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from agent_sre.pipeline.pdata.schema import SPAN_KINDS, SPAN_SCHEMA, STATUS_CODES
from bench.agent_spans import request_bodies

encoder = pytest.importorskip("agent_sre.pipeline.pdata._otlp_encode",
                              reason="the C encoder is not built (no C compiler or Python headers)")

EXAMPLES = int(os.environ.get("AGENT_SRE_ENCODE_EXAMPLES", "150"))
INT64 = st.integers(-(2**63), 2**63 - 1)


def _bytes_by(table: pa.Table, pure: bool):
    """table_to_bytes by one path, or the exception's type and text."""
    old = os.environ.pop(PURE_PYTHON_ENCODER_ENV, None)
    if pure:
        os.environ[PURE_PYTHON_ENCODER_ENV] = "1"
    try:
        return table_to_bytes(table)
    except Exception as exc:  # noqa: BLE001 - the two paths must fail alike
        return type(exc), str(exc)
    finally:
        os.environ.pop(PURE_PYTHON_ENCODER_ENV, None)
        if old is not None:
            os.environ[PURE_PYTHON_ENCODER_ENV] = old


def _assert_same(table: pa.Table, c_answers: bool = True) -> None:
    c_fields = _c_span_fields(table)
    if c_answers:
        assert c_fields is not None, "the C encoder fell back"
    if c_fields is not None:
        py_fields = _python_span_fields(table)
        assert c_fields.type == py_fields.type and c_fields.null_count == py_fields.null_count == 0
        assert c_fields.to_pylist() == py_fields.to_pylist()
    c, py = _bytes_by(table, pure=False), _bytes_by(table, pure=True)
    assert c == py
    if isinstance(c, bytes):  # and upb reads both as the same request, one span per row
        c_req, py_req = ExportTraceServiceRequest.FromString(c), ExportTraceServiceRequest.FromString(py)
        assert c_req.SerializeToString(deterministic=True) == py_req.SerializeToString(deterministic=True)
        assert sum(len(ss.spans) for rs in c_req.resource_spans for ss in rs.scope_spans) == table.num_rows


# --- random canonical tables -------------------------------------------------------------------------

TYPED = sorted(typed_keys())
KEYS = st.sampled_from(TYPED + ["gen_ai.usage.cost", "agent_sre.cost_usd", "service.name", "", "ü"]) \
    | st.text(max_size=8)
# texts that parse, or nearly parse, as the typed kinds (the Python path's regexes decide)
NEAR = ["0", "-0", "007", "-007", "1" * 18, "9" * 18, "-" + "9" * 18, "1" * 19, "-", "", "+1", " 1", "1 ",
        "1\n", "\n1", "1.", ".5", "-.5e-3", "5.e+7", "1e", "e5", "1e+", ".", "-.", "0x10", "1_0", "١٢",
        "nan", "-nan", "NaN", "inf", "-inf", "+inf", "Inf", "infinity", "1e999", "-1e999", "1e-400",
        "4.9e-324", "2.4e-324", "2.2250738585072011e-308", "9007199254740993", "0.1", "1e+300",
        "1" * 40 + "." + "7" * 40 + "e-30", "0." + "0" * 330 + "1", "1e0000000000000000000001",
        "1e-99999999999999", "true", "false", "True", "FALSE", "1", "yes", "truee"]
VALUES = (st.none() | st.sampled_from(NEAR) | st.text(max_size=10) | INT64.map(str)
          | st.floats().map(repr) | st.floats().map(str) | st.booleans().map(lambda b: str(b).lower()))
MAPS = st.none() | st.lists(st.tuples(KEYS, VALUES), max_size=6)
TEXT = st.none() | st.just("") | st.text(max_size=10)
COUNTS = st.none() | st.sampled_from([0, 1, 2**31, 2**32, -1]) | INT64


def hex_id(width: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=width, max_size=width).map(bytes.hex) \
        | st.binary(min_size=width, max_size=width).map(lambda b: b.hex().upper())


@st.composite
def events(draw) -> list[dict] | None:
    if draw(st.integers(0, 3)):
        return None
    return [{"time_ns": draw(st.none() | st.integers(0, 2**63 - 1)), "name": draw(TEXT),
             "attributes": draw(MAPS), "dropped_attributes_count": draw(st.none() | st.integers(0, 2**32 - 1))}
            for _ in range(draw(st.integers(0, 2)))]


@st.composite
def links(draw) -> list[dict] | None:
    if draw(st.integers(0, 3)):
        return None
    return [{"trace_id": draw(hex_id(16)), "span_id": draw(hex_id(8)), "trace_state": draw(TEXT),
             "attributes": draw(MAPS), "dropped_attributes_count": draw(st.none() | st.integers(0, 2**32 - 1)),
             "flags": draw(st.none() | st.integers(0, 2**32 - 1))}
            for _ in range(draw(st.integers(0, 2)))]


RESOURCES = [[("service.name", "a")], [("service.name", "b"), ("host", "h")], [], None]


@st.composite
def rows(draw) -> dict:
    return {
        "trace_id": draw(hex_id(16)), "span_id": draw(hex_id(8)), "parent_span_id": draw(st.none() | hex_id(8)),
        "trace_state": draw(TEXT), "flags": draw(COUNTS), "name": draw(TEXT),
        "kind": draw(st.none() | st.sampled_from(SPAN_KINDS) | st.sampled_from(["kind_7", "kind_-1"])),
        "start_ns": draw(st.none() | INT64), "end_ns": draw(st.none() | INT64),
        "status_code": draw(st.none() | st.sampled_from(STATUS_CODES) | st.just("status_-1")),
        "status_message": draw(TEXT),
        "scope_name": draw(st.sampled_from([None, "", "sdk", "ü"])), "scope_version": draw(st.sampled_from([None, "1"])),
        "cost_usd": draw(st.none() | st.floats() | st.sampled_from([0.0, -0.0, float("nan"), float("-inf")])),
        "attributes": draw(MAPS),
        "resource_attributes": draw(st.sampled_from(RESOURCES) | MAPS),
        "scope_attributes": draw(st.sampled_from([None, [("k", "v")]])),
        "events": draw(events()), "links": draw(links()),
        "dropped_attributes_count": draw(COUNTS), "dropped_events_count": draw(COUNTS),
        "dropped_links_count": draw(COUNTS),
    }


@st.composite
def tables(draw) -> pa.Table:
    """A canonical table, maybe split into chunks, maybe sliced."""
    table = pa.Table.from_pylist(draw(st.lists(rows(), min_size=1, max_size=12)), schema=SPAN_SCHEMA)
    cuts = sorted(draw(st.lists(st.integers(0, table.num_rows), max_size=3)))
    if cuts:
        bounds = [0, *cuts, table.num_rows]
        table = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)])
    start = draw(st.integers(0, table.num_rows - 1))
    return table.slice(start, draw(st.integers(1, table.num_rows - start)))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_random_tables_encode_to_the_python_paths_bytes(table):
    _assert_same(table)


# --- what the C path answers itself, and what it leaves to the Python path -----------------------------


def _bench_table() -> pa.Table:
    tables = [normalize(protobuf_to_table(b).table, load_conventions()) for b in request_bodies(seed=2, count=2)]
    table = pa.concat_tables(tables)
    costs = pa.array([0.25 * i if i % 3 else None for i in range(table.num_rows)], pa.float64())
    return table.set_column(table.schema.get_field_index("cost_usd"), "cost_usd", costs)


def test_the_benchmark_tables_are_encoded_by_c_as_by_python_whole_and_sliced():
    table = _bench_table()
    _assert_same(table)
    _assert_same(table.slice(77, 300))
    # every part table_to_bytes asks of the C encoder is answered by it
    typed = arrow_otlp._c_keys()[0]
    resources, scopes = (arrow_otlp._map_parts(table.column(c).combine_chunks())
                         for c in ("resource_attributes", "scope_attributes"))
    names, versions = (arrow_otlp._parts(table.column(c).combine_chunks()) for c in ("scope_name", "scope_version"))
    assert _c_span_fields(table, field=2) is not None
    assert encoder.encode_key_values(resources, 1, typed) is not None
    assert encoder.encode_scopes(names, versions, scopes, typed) is not None
    # the whole request in one call, batch by batch (this table has two chunks), sliced too
    for t in (table, table.slice(77, 600)):
        batches = arrow_otlp._c_request_batches(t)
        assert len(batches) == 2
        assert encoder.encode_request(batches, t.num_rows, *arrow_otlp._c_keys()) == _bytes_by(t, pure=True)


def test_an_empty_table_has_no_span_fields_by_either_path():
    table = SPAN_SCHEMA.empty_table()
    assert len(_c_span_fields(table)) == len(_python_span_fields(table)) == 0
    assert table_to_bytes(table) == b""


def test_a_computed_cost_in_a_slice_is_judged_by_the_slices_own_keys():
    # a slice of a map array keeps the whole key array: the client-cost check must read the slice's part
    attrs = [[("gen_ai.usage.cost", "0.1")], [("a", "1")], []]
    table = pa.Table.from_pylist([{"trace_id": "01" * 16, "span_id": "02" * 8, "attributes": a, "cost_usd": 0.5}
                                  for a in attrs], schema=SPAN_SCHEMA).slice(1)
    _assert_same(table)
    spans = ExportTraceServiceRequest.FromString(table_to_bytes(table)).resource_spans[0].scope_spans[0].spans
    assert [[kv.key for kv in s.attributes] for s in spans] == [["a", "agent_sre.cost_usd"], ["agent_sre.cost_usd"]]


@pytest.mark.parametrize("column, value", [
    ("trace_id", "01" * 15),  # not 2 x 16 characters: the Python path's answer, whatever it is
    ("span_id", ""),
    ("parent_span_id", "0" * 17),
])
def test_ids_of_another_length_are_left_to_the_python_path(column, value):
    row = {"trace_id": "01" * 16, "span_id": "02" * 8, column: value}
    table = pa.Table.from_pylist([row, {"trace_id": "03" * 16, "span_id": "04" * 8}], schema=SPAN_SCHEMA)
    assert _c_span_fields(table) is None
    _assert_same(table, c_answers=False)


@pytest.mark.parametrize("column, value, c_answers", [
    ("kind", "kind_7", True), ("kind", "kind_-1", True), ("status_code", "status_-1", True),
    ("kind", "kind_007", True), ("status_code", "error", True),
    ("kind", "kind_" + "1" * 19, False),  # past 18 digits: the Python path's cast decides
    ("kind", "kind_x", False), ("kind", "", False), ("status_code", "ERROR", False), ("kind", "xkind_7", False),
])
def test_enum_names_are_read_in_c_and_other_text_is_left_to_the_python_path(column, value, c_answers):
    table = pa.Table.from_pylist([{"trace_id": "01" * 16, "span_id": "02" * 8, column: value},
                                  {"trace_id": "03" * 16, "span_id": "04" * 8}], schema=SPAN_SCHEMA)
    answer = encoder.encode_request(arrow_otlp._c_request_batches(table), table.num_rows, *arrow_otlp._c_keys())
    assert (answer is not None) == c_answers
    _assert_same(table, c_answers=c_answers)


def test_a_table_of_another_type_is_left_to_the_python_path():
    table = pa.Table.from_pylist([{"trace_id": "01" * 16, "span_id": "02" * 8, "name": "op"}], schema=SPAN_SCHEMA)
    table = table.set_column(table.schema.get_field_index("name"), "name", pa.array(["op"], pa.large_string()))
    assert _c_span_fields(table) is None
    assert span_fields(table).equals(_python_span_fields(table))


def test_typed_values_go_out_typed_and_near_misses_as_strings():
    attrs = [("gen_ai.usage.input_tokens", "-007"), ("gen_ai.usage.output_tokens", "1" * 19),
             ("agent.trust_score", "nan"), ("gen_ai.usage.cost", "-.5e-3"), ("llm.cost.total", "-nan"),
             ("agent.task.success", "true"), ("agent.cost.usd", "1e999")]
    table = pa.Table.from_pylist([{"trace_id": "01" * 16, "span_id": "02" * 8, "attributes": attrs}],
                                 schema=SPAN_SCHEMA)
    _assert_same(table)
    (span,) = ExportTraceServiceRequest.FromString(table_to_bytes(table)).resource_spans[0].scope_spans[0].spans
    got = {kv.key: (kv.value.WhichOneof("value"), getattr(kv.value, kv.value.WhichOneof("value"))) for kv in span.attributes}
    assert got["gen_ai.usage.input_tokens"] == ("int_value", -7)
    assert got["gen_ai.usage.output_tokens"] == ("string_value", "1" * 19)
    assert got["agent.trust_score"][0] == "double_value" and np.isnan(got["agent.trust_score"][1])
    assert got["gen_ai.usage.cost"] == ("double_value", -0.0005)
    assert got["llm.cost.total"] == ("string_value", "-nan")
    assert got["agent.task.success"] == ("bool_value", True)
    assert got["agent.cost.usd"] == ("double_value", float("inf"))


def test_the_env_var_forces_the_python_path(monkeypatch):
    class Refuses:
        @staticmethod
        def encode_spans(*args):
            raise AssertionError("the C encoder was called")

        encode_key_values = encode_spans

    monkeypatch.setattr(arrow_otlp, "_otlp_encode", Refuses)
    monkeypatch.setenv(PURE_PYTHON_ENCODER_ENV, "1")
    assert table_to_bytes(_bench_table().slice(0, 10))


def test_threads_encode_at_once_and_each_gets_its_own_bytes():
    tables = [_bench_table().slice(i * 100, 150) for i in range(4)]
    expected = [_bytes_by(t, pure=True) for t in tables]
    failures: list[int] = []

    def encode(i: int) -> None:
        for _ in range(5):
            if table_to_bytes(tables[i]) != expected[i]:
                failures.append(i)

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
