"""OTLP/HTTP answers, per the OTLP specification, sent with a plain HTTP client."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.otlp_builders import request


def post(port: int, body: bytes, content_type: str = "application/x-protobuf", encoding: str | None = None,
         method: str = "POST", path: str = "/v1/traces"):
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body if method == "POST" else None,
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def rpc_status(headers: dict, body: bytes, content_type: str = "application/x-protobuf") -> status_pb2.Status:
    """The google.rpc.Status an OTLP/HTTP error answer must carry, in the encoding it must use."""
    assert headers["Content-Type"] == content_type
    if content_type == "application/json":
        return json_format.Parse(body, status_pb2.Status())  # rejects anything that is not a Status
    return status_pb2.Status.FromString(body)


def count(p) -> int:
    return p.sql("SELECT count(*) FROM spans")[0][0]


def test_protobuf_export_is_committed_and_answered_in_protobuf(pipeline):
    status, headers, body = post(pipeline.ports.http, request(5).SerializeToString())
    assert status == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    resp = ExportTraceServiceResponse.FromString(body)
    assert not resp.HasField("partial_success")
    assert count(pipeline) == 5  # the OK came after the commit


def test_gzip_body_is_accepted(pipeline):
    status, _, _ = post(pipeline.ports.http, gzip.compress(request(4).SerializeToString()), encoding="gzip")
    assert status == 200
    assert count(pipeline) == 4


def test_json_request_is_answered_in_json(pipeline):
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "j",
        "kind": 3, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000000100000000,
        "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}}],
        "unknownField": {"ignored": True}}]}]}]}).encode()
    status, headers, resp = post(pipeline.ports.http, body, "application/json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(resp) == {}
    row = pipeline.sql("SELECT trace_id, span_id, kind, duration_ns, model FROM spans")
    assert row == [("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "client", 100_000_000, "gpt-4o")]


def test_partial_success_rejects_only_the_bad_spans(pipeline):
    status, _, body = post(pipeline.ports.http, request(3, bad_trace_ids=2).SerializeToString())
    assert status == 200
    resp = ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 2
    assert "trace_id must be 16 bytes, got 15" in resp.partial_success.error_message
    assert count(pipeline) == 3


def test_partial_success_in_json(pipeline):
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok"},
        {"traceId": "5b8efff798038103", "spanId": "eee19b7ec3c1b175", "name": "short-trace-id"}]}]}]}).encode()
    status, _, resp = post(pipeline.ports.http, body, "application/json")
    assert status == 200
    answer = json.loads(resp)
    assert answer["partialSuccess"]["rejectedSpans"] in ("1", 1)
    assert "short-trace-id" in answer["partialSuccess"]["errorMessage"]
    assert count(pipeline) == 1


def test_malformed_protobuf_is_400_with_a_status_body_and_the_pipeline_keeps_running(pipeline):
    post(pipeline.ports.http, request(2).SerializeToString())
    status, headers, body = post(pipeline.ports.http, b"\xff\xff\xff\xff not protobuf")
    assert status == 400
    st = rpc_status(headers, body)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "cannot decode protobuf" in st.message
    assert post(pipeline.ports.http, request(1).SerializeToString())[0] == 200
    assert count(pipeline) == 3


def test_malformed_json_is_400_with_a_json_status(pipeline):
    status, headers, body = post(pipeline.ports.http, b"{not json", "application/json")
    assert status == 400
    st = rpc_status(headers, body, "application/json")
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "OTLP/JSON" in st.message


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_invalid_gzip_is_400_in_the_request_encoding(pipeline, content_type):
    status, headers, body = post(pipeline.ports.http, b"\x1f\x8b garbage", content_type, encoding="gzip")
    assert status == 400
    st = rpc_status(headers, body, content_type)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "cannot decompress gzip" in st.message


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_oversize_body_is_413_in_the_request_encoding(start_pipeline, content_type):
    p = start_pipeline(http_body=4096)
    status, headers, body = post(p.ports.http, b"x" * 5000, content_type)
    assert status == 413
    st = rpc_status(headers, body, content_type)
    assert st.code == code_pb2.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 4096 bytes" in st.message
    assert post(p.ports.http, request(1).SerializeToString())[0] == 200


def test_gzip_bomb_over_the_limit_after_decompression_is_413(start_pipeline):
    p = start_pipeline(http_body=4096)
    bomb = gzip.compress(b"\x00" * 1_000_000)
    assert len(bomb) < 4096
    status, headers, body = post(p.ports.http, bomb, encoding="gzip")
    assert status == 413
    st = rpc_status(headers, body)
    assert st.code == code_pb2.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 4096 bytes" in st.message


def test_unknown_content_type_is_415_with_a_protobuf_status(pipeline):
    # The request's encoding is unusable, so the answer falls back to binary protobuf.
    status, headers, body = post(pipeline.ports.http, b"hello", "text/plain")
    assert status == 415
    st = rpc_status(headers, body)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "unsupported content type 'text/plain'" in st.message


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_unknown_content_encoding_is_415_in_the_request_encoding(pipeline, content_type):
    status, headers, body = post(pipeline.ports.http, b"x", content_type, encoding="br")
    assert status == 415
    st = rpc_status(headers, body, content_type)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert "unsupported Content-Encoding 'br'" in st.message


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_with_allow_and_a_protobuf_status(pipeline, method):
    status, headers, body = post(pipeline.ports.http, b"", "text/plain", method=method)
    assert status == 405
    assert headers["Allow"] == "POST"
    st = rpc_status(headers, body)
    assert st.code == code_pb2.UNIMPLEMENTED
    assert f"method {method} not allowed for /v1/traces" in st.message


def test_wrong_method_with_a_json_content_type_is_405_with_a_json_status(pipeline):
    status, headers, body = post(pipeline.ports.http, b"", "application/json", method="GET")
    assert status == 405
    assert headers["Allow"] == "POST"
    st = rpc_status(headers, body, "application/json")
    assert st.code == code_pb2.UNIMPLEMENTED
    assert "method GET not allowed" in st.message


def test_other_endpoints_keep_their_json_405(pipeline):
    # The Status body is the OTLP path's own 405 answer, not the shared router's.
    status, headers, body = post(pipeline.ports.metrics, b"", method="DELETE", path="/metrics")
    assert status == 405
    assert headers["Allow"] == "GET"
    assert "not allowed" in json.loads(body)["error"]


def test_unknown_path_is_404(pipeline):
    assert post(pipeline.ports.http, b"", path="/v1/nothing")[0] == 404


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_memory_limiter_refusal_is_503_with_retry_after(start_pipeline, content_type):
    p = start_pipeline(limit_mib=2)  # soft limit 1 MiB: always above it
    payload = request(3).SerializeToString()
    if content_type == "application/json":
        payload = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"eee19b7ec3c1b17{i}", "name": "s"}
            for i in range(3)]}]}]}).encode()
    status, headers, body = post(p.ports.http, payload, content_type)
    assert status == 503
    assert headers["Retry-After"] == "1"
    st = rpc_status(headers, body, content_type)
    assert st.code == code_pb2.UNAVAILABLE
    assert st.message
    assert count(p) == 0
    # Refused at admission, before the body was read or decoded (so no span count).
    assert ('agent_sre_receiver_admission_refused_requests_total{reason="memory_limiter",receiver="otlp",'
            'transport="http"} 1.0') in p.metrics()


def test_unexpected_failure_is_500_with_a_status(pipeline, monkeypatch):
    def broken(body: bytes, transport: str, principal=None):
        raise RuntimeError("converter bug")

    monkeypatch.setattr(pipeline.service.receivers[0].ingest, "export_protobuf", broken)
    status, headers, body = post(pipeline.ports.http, request(1).SerializeToString())
    assert status == 500
    st = rpc_status(headers, body)
    assert st.code == code_pb2.INTERNAL
    assert "converter bug" in st.message


@pytest.mark.parametrize("verbosity", ["basic", "normal", "detailed"])
def test_debug_exporter_logs_every_batch(start_pipeline, caplog, verbosity):
    import logging

    caplog.set_level(logging.INFO, logger="agent_sre")
    p = start_pipeline(exporters="duckdb, debug")
    p.service.exporters["debug"].config.verbosity = verbosity
    post(p.ports.http, request(2).SerializeToString())
    summary = [r for r in caplog.records if r.name == "agent_sre.exporter.debug" and "TracesExporter" in r.message]
    assert summary and "2 spans" in summary[0].getMessage()
    per_span = [r for r in caplog.records if r.name == "agent_sre.exporter.debug" and r.message.startswith("span ")]
    assert len(per_span) == (0 if verbosity == "basic" else 2)
