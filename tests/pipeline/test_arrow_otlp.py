"""The column-wise encoder back to OTLP: for any valid request, converting it to canonical rows,
encoding the rows to ExportTraceServiceRequest bytes and converting those again gives the same
rows; typed values go out typed; a cost the pipeline computed goes out as agent_sre.cost_usd."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given

from agent_sre.pipeline.pdata.arrow_otlp import COST_ATTRIBUTE, table_to_bytes, table_to_request
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table, request_to_table
from tests.otlp_builders import request
from tests.pipeline.test_roundtrip_property import PROPERTY, VALID_REQUESTS


@PROPERTY
@given(VALID_REQUESTS)
def test_rows_encoded_and_converted_again_are_the_same_rows(req):
    table = request_to_table(req).table
    again = protobuf_to_table(table_to_bytes(table))
    assert again.rejected == 0
    assert again.table.to_pylist() == table.to_pylist()


def test_values_of_typed_keys_go_out_typed_and_others_as_strings():
    attrs = {"gen_ai.usage.input_tokens": 1200, "agent.trust_score": 0.5, "agent.task.success": True,
             "llm.token_count.prompt": "not a number", "http.status_code": 200}
    (span,) = table_to_request(request_to_table(request(1, attrs=attrs)).table).resource_spans[0].scope_spans[0].spans
    got = {kv.key: kv.value.WhichOneof("value") for kv in span.attributes}
    assert got == {"gen_ai.usage.input_tokens": "int_value", "agent.trust_score": "double_value",
                   "agent.task.success": "bool_value", "llm.token_count.prompt": "string_value",
                   "http.status_code": "string_value"}  # an int the table does not know is text, as stored


def test_a_computed_cost_goes_out_once_and_a_client_cost_is_not_repeated():
    table = normalize(request_to_table(request(2, attrs={"gen_ai.operation.name": "chat"})).table, load_conventions())
    table = table.set_column(table.schema.get_field_index("cost_usd"), "cost_usd", pa.array([0.25, None]))
    spans = table_to_request(table).resource_spans[0].scope_spans[0].spans
    assert [[kv.value.double_value for kv in sp.attributes if kv.key == COST_ATTRIBUTE] for sp in spans] == [[0.25], []]
    client = normalize(request_to_table(request(1, attrs={"gen_ai.usage.cost": 0.1})).table, load_conventions())
    assert pc.sum(client.column("cost_usd")).as_py() == 0.1
    (span,) = table_to_request(client).resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in span.attributes] == ["gen_ai.usage.cost"]


@PROPERTY
@given(VALID_REQUESTS)
def test_the_fast_json_is_protobufs_own_json_of_the_same_request(req):
    import json

    from agent_sre.pipeline.pdata.arrow_otlp import table_to_json
    from agent_sre.pipeline.pdata.otlp_json import encode_trace_request

    table = request_to_table(req).table
    assert json.loads(table_to_json(table)) == json.loads(encode_trace_request(table_to_request(table)))


def test_gzip_bodies_are_rfc_1952_that_pythons_gzip_reads_back():
    """Exporters' bodies are gzipped by ISA-L (isal), not zlib: any gzip reader must take them."""
    import gzip

    from agent_sre.pipeline.pdata import arrow_otlp

    table = request_to_table(request(300, attrs={"gen_ai.request.model": "gpt-4o"})).table
    for form in ("proto", "json"):
        body = arrow_otlp.encoded(table, f"{form}+gzip")
        assert body[:2] == b"\x1f\x8b" and gzip.decompress(body) == arrow_otlp.encoded(table, form)
    assert arrow_otlp._gzip.__name__ == "isal.igzip"  # the dependency is installed and used
