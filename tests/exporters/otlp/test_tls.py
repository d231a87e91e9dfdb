"""TLS for otlp (gRPC) and otlphttp: with the test CA in `tls.ca_file` the batch arrives; without it
the server's certificate is not trusted and nothing is sent.  Certificates come from trustme; the
servers are local (a TLS gRPC TraceService and an HTTPS OTLP sink)."""

from __future__ import annotations

import ssl
import time
from concurrent import futures

import grpc
import pytest
import trustme
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml
from tests.otlp_builders import request
from tests.otlp_sink import Sink


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    authority.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    return d


def run(tmp_path, name: str, settings: str) -> Service:
    text = pipeline_yaml(Ports.allocate(), tmp_path, exporters=f"duckdb, {name}", extra=f"  {name}:\n{settings}"
                         "    retry_on_failure: {enabled: false}\n")
    service = Service(parse_config(text, "test"))
    service.start()
    service.receivers[0].ingest.export(request(3, start_ns=time.time_ns()), "test")
    return service


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("trusted", [True, False])
def test_otlphttp_over_https_needs_the_servers_ca(tmp_path, ca, trusted):
    sink = Sink()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(ca / "server.pem"))
    sink.server.socket = context.wrap_socket(sink.server.socket, server_side=True)
    tls = f"    tls: {{ca_file: {ca / 'ca.pem'}}}\n" if trusted else ""
    service = run(tmp_path, "otlphttp", f"    endpoint: https://127.0.0.1:{sink.port}\n{tls}")
    try:
        assert wait(lambda: len(sink.got.span_ids) == 3, 10 if trusted else 3) is trusted
        if not trusted:
            metrics = service.telemetry.exposition().decode()
            assert 'agent_sre_exporter_send_failed_spans_total{exporter="otlphttp"} 3.0' in metrics
    finally:
        service.shutdown()
        sink.close()


class TraceService:
    def __init__(self):
        self.spans = 0

    def export(self, body: bytes, context) -> ExportTraceServiceResponse:
        self.spans += sum(len(ss.spans) for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                          for ss in rs.scope_spans)
        return ExportTraceServiceResponse()


@pytest.mark.parametrize("trusted", [True, False])
def test_otlp_grpc_over_tls_needs_the_servers_ca(tmp_path, ca, trusted):
    backend = TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(backend.export, request_deserializer=None,
                                                  response_serializer=ExportTraceServiceResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))
    port = free_port()
    creds = grpc.ssl_server_credentials([((ca / "server.key").read_bytes(), (ca / "server.crt").read_bytes())])
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    tls = f"    tls: {{ca_file: {ca / 'ca.pem'}}}\n" if trusted else ""
    service = run(tmp_path, "otlp", f"    endpoint: 127.0.0.1:{port}\n    timeout: 2s\n{tls}")
    try:
        assert wait(lambda: backend.spans == 3, 10 if trusted else 3) is trusted
    finally:
        service.shutdown()
        server.stop(0)
