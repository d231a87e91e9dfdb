"""OTLP/gRPC: TraceService/Export, and MetricsService/Export and LogsService/Export for the
signals the receiver has pipelines for (the others answer UNIMPLEMENTED, as gRPC does).

The request arrives as raw bytes (no deserializer in gRPC) so that undecodable
payloads are answered INVALID_ARGUMENT rather than gRPC's INTERNAL.  gzip is
handled by gRPC itself; messages over ``max_recv_msg_size_mib`` get gRPC's
RESOURCE_EXHAUSTED before we see them.  With ``auth``, a call without a valid key in its
``authorization: Bearer`` (or ``x-api-key``) metadata is answered UNAUTHENTICATED; with ``tls`` the port
is TLS-only (mutual with ``client_ca_file``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agent_sre.pipeline.component.tls import TlsServerConfig
from agent_sre.receivers.otlp.config import GrpcConfig
from agent_sre.receivers.otlp.ingest import DECODE_COST, ExportFailed, Ingest, Outcome
from agent_sre.receivers.otlp.ports import probe_endpoint

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _status(outcome: Outcome, message: str, retry_after: float) -> grpc.Status:
    if outcome is Outcome.INVALID:
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message))
    if outcome is Outcome.UNAUTHENTICATED:
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message))
    detail = any_pb2.Any()
    seconds = max(1, math.ceil(retry_after))
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail]))


def _credentials(tls: TlsServerConfig) -> grpc.ServerCredentials:
    cert, key, client_ca = tls.pem()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class GrpcTraceServer:
    def __init__(self, config: GrpcConfig, ingest: Ingest | dict[str, Ingest], reuse_port: bool = False):
        self.config = config
        self.ingests = ingest if isinstance(ingest, dict) else {"traces": ingest}
        options = [
            ("grpc.max_receive_message_length", config.max_recv_bytes),
            ("grpc.max_concurrent_streams", config.max_concurrent_streams),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *config.connection_options(),
        ]
        self._pool = ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="otlp-grpc")
        self.server = grpc.server(self._pool, options=options)
        for ingest in self.ingests.values():
            handler = grpc.unary_unary_rpc_method_handler(
                self._exporter(ingest), request_deserializer=None,
                response_serializer=ingest.codec.response.SerializeToString)
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(ingest.codec.service, {"Export": handler}),))
        try:
            if config.tls is None:
                self.port = self.server.add_insecure_port(config.endpoint)
            else:
                self.port = self.server.add_secure_port(config.endpoint, _credentials(config.tls))
        except RuntimeError:  # grpc says only "Failed to bind": ask the kernel why
            self.port = 0
        if self.port == 0:
            self._pool.shutdown(wait=False)
            probe_endpoint(config.endpoint)  # raises EndpointInUse when another process listens there
            raise OSError(f"cannot listen on {config.endpoint} (address not available)")

    @staticmethod
    def _exporter(ingest: Ingest):
        def export(body: bytes, context: grpc.ServicerContext):
            try:
                principal = None
                if ingest.auth is not None:
                    metadata = dict(context.invocation_metadata())  # gRPC lower-cases metadata keys
                    principal = ingest.authenticate(metadata.get("authorization"), metadata.get("x-api-key"),
                                                    "grpc", context.peer())
                with ingest.admit(len(body) * DECODE_COST, "grpc"):  # gRPC has read the message: decoding is what is saved
                    return ingest.export_protobuf(body, "grpc", principal)
            except ExportFailed as exc:
                context.abort_with_status(_status(exc.outcome, exc.message, exc.retry_after))
                raise  # not reached: abort raises

        return export

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait(grace + 1)
        self._pool.shutdown(wait=False)
