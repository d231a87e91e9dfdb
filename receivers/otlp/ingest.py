"""Transport-independent handling of one OTLP trace export.

Both the gRPC and the HTTP server call ``TraceIngest``: decode, convert to the
canonical table (one place: ``otlp_arrow``), hand to the pipeline, and map the
outcome to the OTLP answer.  The pipeline call returns only after the spans
are durable, so a success here means the spans are committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent_sre.pipeline.component import Consumer
from agent_sre.pipeline.errors import PermanentError, RefusedError
from agent_sre.pipeline.otlp_arrow import Conversion, protobuf_to_table, request_to_table
from agent_sre.pipeline.otlp_json import OtlpJsonError, decode_trace_request
from agent_sre.pipeline.telemetry import Telemetry


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


class TelemetryStats:
    def __init__(self, telemetry: Telemetry):
        self._metrics = {"accepted": telemetry.receiver_accepted, "refused": telemetry.receiver_refused,
                         "requests": telemetry.receiver_requests}

    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        self._metrics[metric].labels(*labels).inc(n)


class TraceIngest:
    def __init__(self, receiver_id: str, consumer: Consumer, stats: IngestStats, logger: logging.Logger):
        self.receiver_id = receiver_id
        self.consumer = consumer
        self.stats = stats
        self.logger = logger

    def export_protobuf(self, body: bytes, transport: str) -> ExportTraceServiceResponse:
        try:
            conv = protobuf_to_table(body)
        except DecodeError as exc:
            self._invalid(transport, f"cannot decode protobuf ExportTraceServiceRequest: {exc}")
        return self._export(conv, transport)

    def export_json(self, body: bytes, transport: str) -> ExportTraceServiceResponse:
        try:
            request = decode_trace_request(body)
        except OtlpJsonError as exc:
            self._invalid(transport, f"cannot decode OTLP/JSON ExportTraceServiceRequest: {exc}")
        return self.export(request, transport)

    def _invalid(self, transport: str, message: str):
        self.logger.warning("%s: %s", transport, message)
        self.stats.count("requests", (self.receiver_id, transport, "invalid_argument"))
        raise ExportFailed(Outcome.INVALID, message)

    def export(self, request: ExportTraceServiceRequest, transport: str) -> ExportTraceServiceResponse:
        return self._export(request_to_table(request), transport)

    def _export(self, conv: Conversion, transport: str) -> ExportTraceServiceResponse:
        count = self.stats.count
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
                count("requests", (rid, transport, "invalid_argument"))
                raise ExportFailed(Outcome.INVALID, f"pipeline rejected the data: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is retryable, never a crash
                self.logger.exception("%s: pipeline failed on %d spans", transport, conv.accepted)
                self._refused(transport, conv.accepted, "failed", 1.0, f"pipeline failed: {exc}")
            count("accepted", (rid, transport), conv.accepted)
        response = ExportTraceServiceResponse()
        if conv.rejected:
            response.partial_success.rejected_spans = conv.rejected
            response.partial_success.error_message = conv.message
            count("requests", (rid, transport, "partial_success"))
        else:
            count("requests", (rid, transport, "ok"))
        return response

    def _refused(self, transport: str, spans: int, reason: str, retry_after: float, message: str):
        self.stats.count("refused", (self.receiver_id, transport, reason), spans)
        self.stats.count("requests", (self.receiver_id, transport, "unavailable"))
        raise ExportFailed(Outcome.REFUSED, message, retry_after)
