"""Transport-independent handling of one OTLP export, for each signal.

Both the gRPC and the HTTP server call an ``Ingest``: decode, convert to the
signal's table (one place each: ``otlp_arrow`` for spans, ``otlp_signals`` for
metrics and logs), hand to the pipeline, and map the outcome to the OTLP answer
(``partial_success`` with the rejected count).  The pipeline call returns only
after the data is durable, so a success here means it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent_sre.pipeline.component import Consumer
from agent_sre.pipeline.component.errors import PermanentError, RefusedError
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.otlp_arrow import Conversion, protobuf_to_table, request_to_table
from agent_sre.pipeline.pdata.otlp_json import OtlpJsonError, decode_request
from agent_sre.pipeline.pdata.otlp_signals import logs_request_to_table, metrics_request_to_table


class Outcome(str, Enum):
    INVALID = "invalid_argument"  # HTTP 400 / INVALID_ARGUMENT
    REFUSED = "unavailable"  # HTTP 503 + Retry-After / UNAVAILABLE + RetryInfo


@dataclass
class ExportFailed(Exception):
    outcome: Outcome
    message: str
    retry_after: float = 0.0

    def __str__(self) -> str:
        return self.message


class IngestStats(Protocol):
    """Where the receiver's counters go: the pipeline's Telemetry, or (in a worker process) the pipeline."""

    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None: ...


@dataclass(frozen=True)
class Codec:
    """What differs between signals: the messages, the converter, the partial-success field."""

    signal: str
    service: str  # the gRPC service
    request: type[Message]
    response: type[Message]
    convert: Callable  # request -> Conversion (rows, rejected, message)
    from_bytes: Callable  # protobuf bytes -> Conversion (raises DecodeError)
    rejected_field: str
    what: str  # spans | data points | log records
    stats: str  # the prefix of its counters ("" for spans)


def _from_bytes(request_class, convert):
    return lambda body: convert(request_class.FromString(body))


CODECS = {
    "traces": Codec("traces", "opentelemetry.proto.collector.trace.v1.TraceService", ExportTraceServiceRequest,
                    ExportTraceServiceResponse, request_to_table, protobuf_to_table, "rejected_spans", "spans", ""),
    "metrics": Codec("metrics", "opentelemetry.proto.collector.metrics.v1.MetricsService",
                     ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_request_to_table,
                     _from_bytes(ExportMetricsServiceRequest, metrics_request_to_table), "rejected_data_points",
                     "data points", "metric_points_"),
    "logs": Codec("logs", "opentelemetry.proto.collector.logs.v1.LogsService", ExportLogsServiceRequest,
                  ExportLogsServiceResponse, logs_request_to_table,
                  _from_bytes(ExportLogsServiceRequest, logs_request_to_table), "rejected_log_records",
                  "log records", "log_records_"),
}


class TelemetryStats:
    def __init__(self, telemetry: Telemetry):
        self._metrics = {"accepted": telemetry.receiver_accepted, "refused": telemetry.receiver_refused,
                         "requests": telemetry.receiver_requests,
                         "metric_points_accepted": telemetry.receiver_accepted_points,
                         "metric_points_refused": telemetry.receiver_refused_points,
                         "log_records_accepted": telemetry.receiver_accepted_logs,
                         "log_records_refused": telemetry.receiver_refused_logs}

    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        self._metrics[metric].labels(*labels).inc(n)


class Ingest:
    def __init__(self, receiver_id: str, consumer: Consumer, stats: IngestStats, logger: logging.Logger,
                 codec: Codec = CODECS["traces"]):
        self.receiver_id = receiver_id
        self.consumer = consumer
        self.stats = stats
        self.logger = logger
        self.codec = codec

    def export_protobuf(self, body: bytes, transport: str) -> Message:
        try:
            conv = self.codec.from_bytes(body)
        except DecodeError as exc:
            self._invalid(transport, f"cannot decode protobuf {self.codec.request.__name__}: {exc}")
        return self._export(conv, transport)

    def export_json(self, body: bytes, transport: str) -> Message:
        try:
            request = decode_request(body, self.codec.request)
        except OtlpJsonError as exc:
            self._invalid(transport, f"cannot decode OTLP/JSON {self.codec.request.__name__}: {exc}")
        return self.export(request, transport)

    def _invalid(self, transport: str, message: str):
        self.logger.warning("%s: %s", transport, message)
        self.stats.count("requests", (self.receiver_id, transport, "invalid_argument"))
        raise ExportFailed(Outcome.INVALID, message)

    def export(self, request: Message, transport: str) -> Message:
        return self._export(self.codec.convert(request), transport)

    def _export(self, conv: Conversion, transport: str) -> Message:
        count = self._count
        rid = self.receiver_id
        if conv.rejected:
            self.logger.warning("%s: %s", transport, conv.message)
            count("refused", (rid, transport, "invalid"), conv.rejected)
        if conv.accepted:
            try:
                self.consumer.consume(conv.table)
            except RefusedError as exc:
                self._refused(transport, conv.accepted, "refused", exc.retry_after, str(exc))
            except PermanentError as exc:
                count("refused", (rid, transport, "permanent"), conv.accepted)
                self.stats.count("requests", (rid, transport, "invalid_argument"))
                raise ExportFailed(Outcome.INVALID, f"pipeline rejected the data: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is retryable, never a crash
                self.logger.exception("%s: pipeline failed on %d %s", transport, conv.accepted, self.codec.what)
                self._refused(transport, conv.accepted, "failed", 1.0, f"pipeline failed: {exc}")
            count("accepted", (rid, transport), conv.accepted)
        response = self.codec.response()
        if conv.rejected:
            setattr(response.partial_success, self.codec.rejected_field, conv.rejected)
            response.partial_success.error_message = conv.message
            self.stats.count("requests", (rid, transport, "partial_success"))
        else:
            self.stats.count("requests", (rid, transport, "ok"))
        return response

    def _count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        """Items accepted or refused, in this signal's counters (requests are counted for all signals)."""
        self.stats.count(self.codec.stats + metric, labels, n)

    def _refused(self, transport: str, items: int, reason: str, retry_after: float, message: str):
        self._count("refused", (self.receiver_id, transport, reason), items)
        self.stats.count("requests", (self.receiver_id, transport, "unavailable"))
        raise ExportFailed(Outcome.REFUSED, message, retry_after)


TraceIngest = Ingest  # the traces codec is the default
