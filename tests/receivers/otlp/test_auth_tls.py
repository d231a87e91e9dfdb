"""API keys, tenants, agent binding and TLS on the otlp receiver, driven through the real OpenTelemetry
SDK exporters (gRPC and HTTP) and plain clients.  Certificates come from trustme (cryptography), made
at test time."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from agent_sre.pipeline.service import Service
from agent_sre.receivers.otlp.config import OtlpReceiverConfig
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml, start_on_free_ports
from tests.otlp_builders import kv, request

KEY = "billing-key-0123456789abcdef"
OTHER_KEY = "support-key-0123456789abcdef"
TRACE_SERVICE = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_PIPELINE = """    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [duckdb]
"""


def auth_yaml(on_foreign_agent: str = "reject") -> str:
    return f"""    auth:
      on_foreign_agent: {on_foreign_agent}
      keys:
        - name: billing
          key: ${{env:BILLING_KEY}}
          tenant: acme
          agents: [did:web:billing]
        - name: ops
          key: {OTHER_KEY}
"""


def tls_yaml(pki, mutual: bool = False, min_version: str = "1.2") -> str:
    ca = f", client_ca_file: {pki / 'ca.pem'}" if mutual else ""
    return (f"        tls: {{cert_file: {pki / 'server.crt'}, key_file: {pki / 'server.key'}{ca}, "
            f"min_version: '{min_version}'}}\n")


@pytest.fixture
def start(tmp_path, monkeypatch):
    """Start a pipeline whose otlp receiver has ``receiver`` (YAML lines) added, and gRPC/HTTP ``tls``."""
    monkeypatch.setenv("BILLING_KEY", KEY)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would prefer them to certificate_file
        monkeypatch.delenv(name, raising=False)
    services: list[Service] = []

    def run(receiver: str = "", grpc_tls: str = "", http_tls: str = "", workers: int = 0,
            logs: bool = False) -> RunningPipeline:
        def text(ports: Ports, _attempt: int) -> str:
            text = pipeline_yaml(ports, tmp_path, workers=workers)
            if logs:
                text = text.replace("  telemetry:\n", LOGS_PIPELINE + "  telemetry:\n", 1)
            text = text.replace(f"    workers: {workers}\n", f"    workers: {workers}\n{receiver}")
            text = text.replace("        max_recv_msg_size_mib: 4\n", f"        max_recv_msg_size_mib: 4\n{grpc_tls}")
            return text.replace(f"        max_request_body_size: {20 << 20}\n",
                                f"        max_request_body_size: {20 << 20}\n{http_tls}")

        service, ports, _ = start_on_free_ports(text)
        services.append(service)
        return RunningPipeline(service, ports, tmp_path)

    yield run
    for s in services:
        s.shutdown()


def sdk_spans(attrs: dict | None = None, resource: dict | None = None, n: int = 2):
    """Spans made by the real SDK (ended, ready to export)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-svc", **(resource or {})}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.auth")
    for i in range(n):
        with tracer.start_as_current_span(f"op-{i}", attributes=attrs or {}):
            pass
    return memory.get_finished_spans()


def grpc_exporter(port: int, key: str | None = None, credentials=None) -> GrpcExporter:
    headers = (("authorization", f"Bearer {key}"),) if key else None
    return GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=credentials is None, credentials=credentials,
                        headers=headers, timeout=3)


def post(url: str, body: bytes, headers: dict | None = None, context: ssl.SSLContext | None = None):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def grpc_call(port: int, body: bytes, metadata=(), credentials=None):
    """(status code, response or None) of one raw TraceService/Export call."""
    channel = (grpc.secure_channel(f"127.0.0.1:{port}", credentials) if credentials
               else grpc.insecure_channel(f"127.0.0.1:{port}"))
    try:
        call = channel.unary_unary(TRACE_SERVICE, request_serializer=None,
                                   response_deserializer=ExportTraceServiceResponse.FromString)
        try:
            return grpc.StatusCode.OK, call(body, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), None
    finally:
        channel.close()


def count(p: RunningPipeline) -> int:
    return p.sql("SELECT count(*) FROM spans")[0][0]


def metric(p: RunningPipeline, line: str) -> bool:
    return any(m.startswith(line) for m in p.metrics().splitlines())


# --- authentication ---------------------------------------------------------------------------


def test_grpc_export_without_a_key_is_unauthenticated_and_counted(start):
    p = start(auth_yaml())
    code, _ = grpc_call(p.ports.grpc, request(2).SerializeToString())
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_exporter(p.ports.grpc).export(sdk_spans()) is SpanExportResult.FAILURE
    assert count(p) == 0
    assert metric(p, 'agent_sre_auth_failures_total{component="otlp",reason="missing",transport="grpc"} 2.0')
    assert metric(p, 'agent_sre_receiver_requests_total{outcome="unauthenticated",receiver="otlp",transport="grpc"}')


def test_grpc_export_with_a_wrong_key_is_unauthenticated(start):
    p = start(auth_yaml())
    assert grpc_exporter(p.ports.grpc, "wrong-key-0123456789abcdef").export(sdk_spans()) is SpanExportResult.FAILURE
    assert count(p) == 0
    assert metric(p, 'agent_sre_auth_failures_total{component="otlp",reason="invalid",transport="grpc"} 1.0')


def test_grpc_export_with_a_bearer_key_is_committed(start):
    p = start(auth_yaml())
    assert grpc_exporter(p.ports.grpc, OTHER_KEY).export(sdk_spans(n=3)) is SpanExportResult.SUCCESS
    assert count(p) == 3


def test_grpc_export_with_an_x_api_key_header_is_committed(start):
    p = start(auth_yaml())
    code, _ = grpc_call(p.ports.grpc, request(2).SerializeToString(), metadata=(("x-api-key", OTHER_KEY),))
    assert code is grpc.StatusCode.OK
    assert count(p) == 2


def test_http_export_without_a_key_is_401_with_www_authenticate_and_a_status_body(start):
    p = start(auth_yaml())
    status, headers, body = post(f"http://127.0.0.1:{p.ports.http}/v1/traces", request(2).SerializeToString())
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"] == "application/x-protobuf"
    assert status_pb2.Status.FromString(body).code == code_pb2.UNAUTHENTICATED
    assert count(p) == 0
    assert metric(p, 'agent_sre_auth_failures_total{component="otlp",reason="missing",transport="http"} 1.0')


def test_http_export_with_a_wrong_key_is_401_and_with_the_key_is_committed(start):
    p = start(auth_yaml())
    url = f"http://127.0.0.1:{p.ports.http}/v1/traces"
    wrong = HttpExporter(endpoint=url, headers={"Authorization": "Bearer nope-nope-nope-nope-nope"}, timeout=3)
    assert wrong.export(sdk_spans()) is SpanExportResult.FAILURE
    right = HttpExporter(endpoint=url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=3)
    assert right.export(sdk_spans(n=4)) is SpanExportResult.SUCCESS
    assert count(p) == 4
    assert metric(p, 'agent_sre_auth_failures_total{component="otlp",reason="invalid",transport="http"} 1.0')


def test_key_from_a_key_file_is_accepted(start, tmp_path):
    (tmp_path / "key").write_text(f"{KEY}\n")
    p = start(f"    auth:\n      keys:\n        - key_file: {tmp_path / 'key'}\n")
    code, _ = grpc_call(p.ports.grpc, request(1).SerializeToString(), metadata=(("authorization", f"Bearer {KEY}"),))
    assert code is grpc.StatusCode.OK
    assert count(p) == 1


def test_keys_never_show_in_the_config_repr_or_its_errors():
    config = OtlpReceiverConfig.model_validate({"auth": {"keys": [{"key": KEY, "tenant": "acme"}]}})
    assert KEY not in repr(config) and KEY not in config.model_dump_json()
    with pytest.raises(ValidationError) as err:
        OtlpReceiverConfig.model_validate({"auth": {"keys": [{"key": KEY, "key_file": "/k"}]}})
    assert KEY[:10] not in str(err.value)  # not even the start pydantic would print


def test_auth_holds_in_worker_processes(start):
    p = start(auth_yaml(), workers=1)
    url = f"http://127.0.0.1:{p.ports.http}/v1/traces"
    status, _, _ = post(url, request(2).SerializeToString())
    assert status == 401
    assert grpc_exporter(p.ports.grpc).export(sdk_spans()) is SpanExportResult.FAILURE
    status, _, _ = post(url, request(3).SerializeToString(), {"Authorization": f"Bearer {OTHER_KEY}"})
    assert status == 200
    assert count(p) == 3
    # Counted in the worker, reported to the pipeline process's metrics.
    assert eventually(lambda: metric(
        p, 'agent_sre_auth_failures_total{component="otlp",reason="missing",transport="http"} 1.0'), 10)


# --- tenants and agent identity ------------------------------------------------------------------


def tenants(p: RunningPipeline) -> list[tuple]:
    return p.sql("SELECT resource_attributes['tenant.id'], count(*) FROM spans GROUP BY ALL")


def test_the_keys_tenant_is_stored_on_every_span_over_what_the_client_sent(start):
    p = start(auth_yaml())
    spans = sdk_spans({"agent.id": "did:web:billing"}, resource={"tenant.id": "globex"}, n=3)
    assert grpc_exporter(p.ports.grpc, KEY).export(spans) is SpanExportResult.SUCCESS
    assert tenants(p) == [("acme", 3)]


def test_a_key_without_a_tenant_leaves_the_clients_resource_as_sent(start):
    p = start(auth_yaml())
    assert grpc_exporter(p.ports.grpc, OTHER_KEY).export(sdk_spans(resource={"tenant.id": "globex"})) \
        is SpanExportResult.SUCCESS
    assert tenants(p) == [("globex", 2)]


def test_the_keys_tenant_is_stored_on_log_records_too(start):
    p = start(auth_yaml(), logs=True)
    provider = LoggerProvider(resource=Resource.create({"service.name": "billing-svc", "tenant.id": "globex"}))
    exporter = HttpLogs(endpoint=f"http://127.0.0.1:{p.ports.http}/v1/logs", headers={"x-api-key": KEY}, timeout=3)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))  # exports on emit
    provider.get_logger("billing").emit(body="refund issued", severity_text="INFO")
    provider.shutdown()
    assert p.sql("SELECT resource_attributes['tenant.id'], count(*) FROM logs GROUP BY ALL") == [("acme", 1)]


def mixed_request():
    """Two spans of billing (its own agent), one claiming support (another agent), one claiming none."""
    req = request(2, service="billing-svc", attrs={"gen_ai.agent.id": "did:web:billing"})
    spans = req.resource_spans[0].scope_spans[0].spans
    foreign = spans.add()
    foreign.CopyFrom(spans[0])
    foreign.span_id, foreign.name = b"\x01" * 8, "forged"
    del foreign.attributes[:]
    foreign.attributes.extend([kv("agent.id", "did:web:support"), kv("agent.task.success", False)])
    plain = spans.add()
    plain.CopyFrom(spans[0])
    plain.span_id, plain.name = b"\x02" * 8, "plain"
    del plain.attributes[:]
    return req


def test_a_span_claiming_an_agent_its_key_may_not_speak_for_is_rejected_with_partial_success(start):
    p = start(auth_yaml())
    status, _, body = post(f"http://127.0.0.1:{p.ports.http}/v1/traces", mixed_request().SerializeToString(),
                           {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert partial.rejected_spans == 1
    assert "did:web:support" in partial.error_message and "billing" in partial.error_message
    assert sorted(p.sql("SELECT name, agent_id FROM spans")) == [
        ("plain", "did:web:billing"), ("span-0", "did:web:billing"), ("span-1", "did:web:billing")]
    assert metric(p, 'agent_sre_receiver_refused_spans_total{reason="foreign_agent",receiver="otlp",transport="http"} '
                     '1.0')


def test_a_span_claiming_a_foreign_agent_is_reattributed_when_configured(start):
    p = start(auth_yaml("reattribute"))
    code, response = grpc_call(p.ports.grpc, mixed_request().SerializeToString(),
                               metadata=(("authorization", f"Bearer {KEY}"),))
    assert code is grpc.StatusCode.OK and not response.HasField("partial_success")
    assert p.sql("SELECT agent_id, count(*) FROM spans GROUP BY ALL") == [("did:web:billing", 4)]
    # The claim itself stays in the attributes, for whoever investigates.
    assert p.sql("SELECT attributes['agent.id'] FROM spans WHERE name = 'forged'") == [("did:web:support",)]
    assert metric(p, 'agent_sre_receiver_reattributed_spans_total{receiver="otlp",transport="grpc"} 1.0')


def test_a_span_naming_another_agent_only_by_service_name_stays_with_the_keys_agent(start):
    p = start(auth_yaml())
    status, _, _ = post(f"http://127.0.0.1:{p.ports.http}/v1/traces",
                        request(1, service="did:web:support").SerializeToString(), {"x-api-key": KEY})
    assert status == 200
    assert p.sql("SELECT agent_id FROM spans") == [("did:web:billing",)]


def test_a_key_bound_to_no_agents_may_speak_for_any(start):
    p = start(auth_yaml())
    status, _, body = post(f"http://127.0.0.1:{p.ports.http}/v1/traces", mixed_request().SerializeToString(),
                           {"Authorization": f"Bearer {OTHER_KEY}"})
    assert status == 200 and not ExportTraceServiceResponse.FromString(body).HasField("partial_success")
    assert count(p) == 4


# --- TLS -------------------------------------------------------------------------------------


def test_grpc_over_tls_takes_the_sdk_exporter_that_trusts_the_ca_and_refuses_plaintext(start, pki):
    p = start(grpc_tls=tls_yaml(pki))
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    assert grpc_exporter(p.ports.grpc, credentials=creds).export(sdk_spans(n=2)) is SpanExportResult.SUCCESS
    assert count(p) == 2
    code, _ = grpc_call(p.ports.grpc, request(1).SerializeToString())
    assert code is grpc.StatusCode.UNAVAILABLE
    assert count(p) == 2


def test_grpc_mtls_refuses_a_client_without_a_certificate(start, pki):
    p = start(grpc_tls=tls_yaml(pki, mutual=True))
    ca = (pki / "ca.pem").read_bytes()
    code, _ = grpc_call(p.ports.grpc, request(1).SerializeToString(),
                        credentials=grpc.ssl_channel_credentials(ca))
    assert code is grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes())
    assert grpc_exporter(p.ports.grpc, credentials=with_cert).export(sdk_spans(n=3)) is SpanExportResult.SUCCESS
    assert count(p) == 3


def test_grpc_tls_with_a_key_needs_both(start, pki):
    p = start(auth_yaml(), grpc_tls=tls_yaml(pki))
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    code, _ = grpc_call(p.ports.grpc, request(1).SerializeToString(), credentials=creds)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_exporter(p.ports.grpc, OTHER_KEY, creds).export(sdk_spans(n=1)) is SpanExportResult.SUCCESS


def test_grpc_tls_min_version_above_1_2_is_a_config_error(pki):
    with pytest.raises(ValidationError, match="min_version"):
        OtlpReceiverConfig.model_validate({"protocols": {"grpc": {"tls": {
            "cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"), "min_version": "1.3"}}}})


def test_http_over_tls_takes_the_sdk_exporter_that_trusts_the_ca_and_refuses_plain_http(start, pki):
    p = start(http_tls=tls_yaml(pki))
    url = f"https://127.0.0.1:{p.ports.http}/v1/traces"
    exporter = HttpExporter(endpoint=url, certificate_file=str(pki / "ca.pem"), timeout=3)
    assert exporter.export(sdk_spans(n=2)) is SpanExportResult.SUCCESS
    assert count(p) == 2
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        post(f"http://127.0.0.1:{p.ports.http}/v1/traces", request(1).SerializeToString())
    assert count(p) == 2


def test_http_mtls_refuses_a_client_without_a_certificate(start, pki):
    p = start(http_tls=tls_yaml(pki, mutual=True))
    url = f"https://127.0.0.1:{p.ports.http}/v1/traces"
    no_cert = HttpExporter(endpoint=url, certificate_file=str(pki / "ca.pem"), timeout=2)
    assert no_cert.export(sdk_spans()) is SpanExportResult.FAILURE
    with_cert = HttpExporter(endpoint=url, certificate_file=str(pki / "ca.pem"), timeout=3,
                             client_certificate_file=str(pki / "client.crt"),
                             client_key_file=str(pki / "client.key"))
    assert with_cert.export(sdk_spans(n=3)) is SpanExportResult.SUCCESS
    assert count(p) == 3


def test_http_tls_min_version_1_3_refuses_a_tls_1_2_client(start, pki):
    p = start(http_tls=tls_yaml(pki, min_version="1.3"))
    url = f"https://127.0.0.1:{p.ports.http}/v1/traces"
    old = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(urllib.error.URLError):
        post(url, request(1).SerializeToString(), context=old)
    status, _, _ = post(url, request(1).SerializeToString(), context=ssl.create_default_context(
        cafile=str(pki / "ca.pem")))
    assert status == 200


@pytest.mark.parametrize("server", ["grpc", "http"])
@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_missing_or_bad_certificate_file_fails_the_start_naming_it(start, tmp_path, server, content):
    cert = tmp_path / "server-cert.pem"
    if content is not None:
        cert.write_text(content)
    with pytest.raises(OSError, match="server-cert.pem"):
        start(**{f"{server}_tls": f"        tls: {{cert_file: {cert}, key_file: {cert}}}\n"})
