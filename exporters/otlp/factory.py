"""otlp: spans to any OTLP/gRPC backend (TraceService/Export), through the exporter helper.

Headers become gRPC metadata; ``compression: gzip`` (the default) compresses each call; TLS is on
unless ``tls.insecure`` (or an ``http://`` endpoint).  Failures follow OTLP's rules
(exporters/helper/http.py): the retryable codes, RESOURCE_EXHAUSTED only with RetryInfo, whose
delay the helper honours; a partial success is logged and its rejected spans counted.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import model_validator

from agent_sre.exporters.helper.http import PRESETS, TlsConfig, apply_preset
from agent_sre.exporters.helper.sender import HelperConfig, QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.pdata.arrow_otlp import encoded
from agent_sre.pipeline.pdata.schema import signal_of

METHODS = {"traces": ("/opentelemetry.proto.collector.trace.v1.TraceService/Export", ExportTraceServiceResponse,
                      "rejected_spans"),
           "metrics": ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                       ExportMetricsServiceResponse, "rejected_data_points"),
           "logs": ("/opentelemetry.proto.collector.logs.v1.LogsService/Export", ExportLogsServiceResponse,
                    "rejected_log_records")}
RETRYABLE = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}


class OtlpGrpcConfig(HelperConfig):
    endpoint: str | None = None  # host:port (or http:// / https:// host:port)
    preset: str | None = None  # see exporters/helper/http.py
    headers: dict[str, str] = {}
    compression: str = "gzip"  # gzip | none
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _resolve(self) -> OtlpGrpcConfig:
        if self.compression not in ("gzip", "none"):
            raise ValueError(f"compression must be gzip or none (got {self.compression!r})")
        self.endpoint, self.headers = apply_preset("otlp", self.preset, self.endpoint, self.headers)
        if self.preset and PRESETS["otlp"][self.preset].get("insecure"):
            self.tls.insecure = True
        if self.endpoint.startswith("http://"):
            self.tls.insecure = True
        if self.tls.insecure_skip_verify:
            raise ValueError("tls::insecure_skip_verify is not available for gRPC: give tls::ca_file instead")
        self.preset = None  # applied: validating again must not apply it twice
        return self

    @property
    def target(self) -> str:
        return self.endpoint.split("://", 1)[-1].rstrip("/")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def retry_info(error: grpc.RpcError) -> float | None:
    """The server's RetryInfo delay (seconds) from the status details, if it sent one."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class OtlpGrpcExporter(QueuedExporter):
    config: OtlpGrpcConfig

    def _start_client(self, host) -> None:
        cfg = self.config
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.primary_user_agent", "agent-sre")]
        if cfg.tls.insecure:
            self._channel = grpc.insecure_channel(cfg.target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(_read(cfg.tls.ca_file), _read(cfg.tls.key_file),
                                                 _read(cfg.tls.cert_file))
            self._channel = grpc.secure_channel(cfg.target, creds, options=options)
        self._calls = {signal: (self._channel.unary_unary(method, request_serializer=None,
                                                          response_deserializer=response.FromString), field)
                       for signal, (method, response, field) in METHODS.items()}
        self._metadata = tuple((k.lower(), v) for k, v in cfg.headers.items())
        self._compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression

    def _stop_client(self) -> None:
        self._channel.close()

    def prepare(self, batch) -> None:
        encoded(batch)  # the request, encoded while the batch is hot (QueuedExporter.prepare)

    def send(self, batch) -> ExportResult:
        call, rejected_field = self._calls[signal_of(batch.schema)]
        try:
            response = call(encoded(batch), timeout=self.config.timeout, metadata=self._metadata,
                            compression=self._compression)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            delay = retry_info(exc)
            message = f"{self.config.target}: {code.name} {exc.details()}"  # type: ignore[attr-defined]
            if code in RETRYABLE or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
                return ExportResult(ExportStatus.RETRYABLE, message, delay)
            return ExportResult(ExportStatus.PERMANENT, message)
        rejected = getattr(response.partial_success, rejected_field)
        if rejected:
            self._telemetry.failed(signal_of(batch.schema), self._name).inc(rejected)
            self.logger.warning("%s accepted the batch but rejected %d of it: %s", self.config.target, rejected,
                                response.partial_success.error_message)
        return SUCCESS

    def describe(self) -> list[str]:
        return [f"{self.id}: OTLP/gRPC to {self.config.target}"]


factory = Factory(type="otlp", kind=Kind.EXPORTER, config_model=OtlpGrpcConfig, create=OtlpGrpcExporter,
                  signals=("traces", "metrics", "logs"),
                  description="Spans to an OTLP/gRPC backend (Phoenix, Jaeger, Tempo, Arize, another agent-sre...).")
