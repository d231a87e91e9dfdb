"""OTLP/gRPC answers, per the OTLP specification, sent with a raw gRPC channel."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.otlp_builders import request

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def export(port: int, body: bytes, compression=None):
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        call = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
        return call(body, timeout=10, compression=compression)


def count(p) -> int:
    return p.sql("SELECT count(*) FROM spans")[0][0]


def test_export_ok_means_committed(pipeline):
    resp = export(pipeline.ports.grpc, request(7).SerializeToString())
    assert not resp.HasField("partial_success")
    assert count(pipeline) == 7


def test_gzip_compressed_export_is_accepted(pipeline):
    export(pipeline.ports.grpc, request(3).SerializeToString(), compression=grpc.Compression.Gzip)
    assert count(pipeline) == 3


def test_partial_success_counts_rejected_spans(pipeline):
    resp = export(pipeline.ports.grpc, request(2, bad_trace_ids=1).SerializeToString())
    assert resp.partial_success.rejected_spans == 1
    assert "trace_id must be 16 bytes" in resp.partial_success.error_message
    assert count(pipeline) == 2


def test_undecodable_payload_is_invalid_argument(pipeline):
    with pytest.raises(grpc.RpcError) as err:
        export(pipeline.ports.grpc, b"\xff\xff\xff garbage")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode protobuf" in err.value.details()
    export(pipeline.ports.grpc, request(1).SerializeToString())
    assert count(pipeline) == 1


def test_oversize_message_is_resource_exhausted(start_pipeline):
    p = start_pipeline(grpc_mib=0.01)
    with pytest.raises(grpc.RpcError) as err:
        export(p.ports.grpc, request(200).SerializeToString())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    export(p.ports.grpc, request(1).SerializeToString())
    assert count(p) == 1


def test_memory_limiter_refusal_is_unavailable_with_retry_info(start_pipeline):
    p = start_pipeline(limit_mib=2)
    with pytest.raises(grpc.RpcError) as err:
        export(p.ports.grpc, request(3).SerializeToString())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(err.value)
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert info.retry_delay.seconds == 1
    assert count(p) == 0
