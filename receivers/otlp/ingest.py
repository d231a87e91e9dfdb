"""Transport-independent handling of one OTLP export, for each signal.

Both the gRPC and the HTTP server call an ``Ingest``: decode, convert to the
signal's table (one place each: ``otlp_arrow`` for spans, ``otlp_signals`` for
metrics and logs), hand to the pipeline, and map the outcome to the OTLP answer
(``partial_success`` with the rejected count).  The pipeline call returns only
after the data is durable, so a success here means it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from agent_sre.pipeline.component.admission import Admission, InflightBytes, Ticket
from agent_sre.pipeline.component.auth import Authenticator, AuthFailure, Principal
from agent_sre.pipeline.component.errors import PermanentError, RefusedError
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.identity import TENANT_ATTRIBUTE, bind_agents, stamp_resource_attribute
from agent_sre.pipeline.pdata.limits import limit_span_attributes
from agent_sre.pipeline.pdata.memory import release_freed_memory
from agent_sre.pipeline.pdata.otlp_arrow import Conversion, protobuf_to_table, request_to_table
from agent_sre.pipeline.pdata.otlp_json import OtlpJsonError, decode_request
from agent_sre.pipeline.pdata.otlp_signals import logs_request_to_table, metrics_request_to_table
from agent_sre.receivers.otlp.config import LimitsConfig

_LARGE_REQUEST = 4 << 20  # after a request this large, freed memory is handed back to the OS
# What decoding a request costs, per byte of its (decompressed) body: what admission holds for it.
# Measured: one 15 MiB request took a worker 220-250 MiB above its base while decoded and converted;
# ordinary 512-span requests about 3x their size.
DECODE_COST = 4


class Outcome(str, Enum):
    INVALID = "invalid_argument"  # HTTP 400 / INVALID_ARGUMENT
    REFUSED = "unavailable"  # HTTP 503 + Retry-After / UNAVAILABLE + RetryInfo
    UNAUTHENTICATED = "unauthenticated"  # HTTP 401 + WWW-Authenticate / UNAUTHENTICATED


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
                         "admission_refused": telemetry.receiver_admission_refused,
                         "metric_points_accepted": telemetry.receiver_accepted_points,
                         "metric_points_refused": telemetry.receiver_refused_points,
                         "log_records_accepted": telemetry.receiver_accepted_logs,
                         "log_records_refused": telemetry.receiver_refused_logs,
                         "auth_failures": telemetry.auth_failures, "reattributed": telemetry.receiver_reattributed,
                         "dropped_attributes": telemetry.receiver_dropped_attributes,
                         "truncated_values": telemetry.receiver_truncated_values,
                         "connections_closed": telemetry.http_connections_closed}

    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        self._metrics[metric].labels(*labels).inc(n)


class Ingest:
    def __init__(self, receiver_id: str, consumer: Consumer, stats: IngestStats, logger: logging.Logger,
                 codec: Codec = CODECS["traces"], auth: Authenticator | None = None, reattribute: bool = False,
                 limits: LimitsConfig | None = None, admission: Admission | None = None,
                 inflight: InflightBytes | None = None):
        self.receiver_id = receiver_id
        self.consumer = consumer
        self.stats = stats
        self.logger = logger
        self.codec = codec
        self.auth = auth  # None: requests need no key
        self.reattribute = reattribute  # spans of a foreign agent: stored as the key's agent, not refused
        self.limits = limits or LimitsConfig()
        self.admission = admission
        self.inflight = inflight or InflightBytes(self.limits.max_inflight_bytes)

    @contextmanager
    def admit(self, nbytes: int, transport: str) -> Iterator[Ticket]:
        """Hold ``nbytes`` (a body's size times ``DECODE_COST``) while the request is read, decoded and
        committed; ExportFailed(REFUSED), counted, while memory is short (the memory limiter, across all
        the pipeline's processes) or this process already holds ``limits.max_inflight_mib``."""
        try:
            with self.inflight.admit(0) as ticket:
                self.grow(ticket, nbytes, transport)
                try:
                    yield ticket
                finally:
                    if ticket.held >= _LARGE_REQUEST:
                        release_freed_memory()
        except RefusedError as exc:  # raised by grow() only: ExportFailed passes through as it is
            raise self._admission_refused(exc, transport) from None

    def grow(self, ticket: Ticket, nbytes: int, transport: str) -> None:
        """The admitted request is larger than announced (inflated): hold that too, or refuse it."""
        try:
            room, alone = self.admission.check() if self.admission is not None else (None, False)
            ticket.grow(nbytes, room, alone)
        except RefusedError as exc:
            raise self._admission_refused(exc, transport) from None

    def _admission_refused(self, exc: RefusedError, transport: str) -> ExportFailed:
        reason = "memory_limiter" if "memory_limiter" in str(exc) else "inflight_bytes"
        self.stats.count("requests", (self.receiver_id, transport, "unavailable"))
        self.stats.count("admission_refused", (self.receiver_id, transport, reason))
        return ExportFailed(Outcome.REFUSED, str(exc), exc.retry_after)

    def authenticate(self, authorization: str | None, api_key: str | None, transport: str,
                     peer: str | None = None) -> Principal | None:
        """The request's principal (None without auth), or ExportFailed(UNAUTHENTICATED), counted."""
        if self.auth is None:
            return None
        try:
            return self.auth.authenticate(authorization, api_key)
        except AuthFailure as exc:
            self.auth.log_failure(transport, exc, peer)
            self.stats.count("auth_failures", (self.receiver_id, transport, exc.reason))
            self.stats.count("requests", (self.receiver_id, transport, "unauthenticated"))
            raise ExportFailed(Outcome.UNAUTHENTICATED, str(exc)) from None

    def export_protobuf(self, body: bytes, transport: str, principal: Principal | None = None) -> Message:
        try:
            conv = self.codec.from_bytes(body)
        except DecodeError as exc:
            self._invalid(transport, f"cannot decode protobuf {self.codec.request.__name__}: {exc}")
        return self._export(conv, transport, principal)

    def export_json(self, body: bytes, transport: str, principal: Principal | None = None) -> Message:
        try:
            request = decode_request(body, self.codec.request)
        except OtlpJsonError as exc:
            self._invalid(transport, f"cannot decode OTLP/JSON {self.codec.request.__name__}: {exc}")
        return self.export(request, transport, principal)

    def _invalid(self, transport: str, message: str):
        self.logger.warning("%s: %s", transport, message)
        self.stats.count("requests", (self.receiver_id, transport, "invalid_argument"))
        raise ExportFailed(Outcome.INVALID, message)

    def export(self, request: Message, transport: str, principal: Principal | None = None) -> Message:
        return self._export(self.codec.convert(request), transport, principal)

    def _export(self, conv: Conversion, transport: str, principal: Principal | None = None) -> Message:
        count = self._count
        rid = self.receiver_id
        if conv.rejected:
            self.logger.warning("%s: %s", transport, conv.message)
            count("refused", (rid, transport, "invalid"), conv.rejected)
        if self.codec.signal == "traces":
            conv = self._limit(conv, transport)
        if principal is not None:
            conv = self._bind(conv, principal, transport)
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

    def _bind(self, conv: Conversion, principal: Principal, transport: str) -> Conversion:
        """Hold the data to its key: the key's agents (spans) and its tenant (every signal)."""
        table, rejected, message = conv.table, conv.rejected, conv.message
        if principal.agents is not None and self.codec.signal == "traces":
            bound = bind_agents(table, principal.agents, self.reattribute)
            table = bound.table
            if bound.foreign:
                claims = ", ".join(repr(a) for a in bound.examples)
                note = (f"{bound.foreign} spans claim agents ({claims}) that key {principal.name!r} may not "
                        "speak for")
                if bound.reattributed:
                    self.logger.warning("%s: %s; stored as agent %r", transport, note, principal.agents[0])
                    self.stats.count("reattributed", (self.receiver_id, transport), bound.reattributed)
                else:
                    self.logger.warning("%s: %s; refused", transport, note)
                    self._count("refused", (self.receiver_id, transport, "foreign_agent"), bound.foreign)
                    rejected += bound.foreign
                    message = f"{message}; {note}" if message else note
        if principal.tenant is not None:
            table = stamp_resource_attribute(table, TENANT_ATTRIBUTE, principal.tenant)
        return Conversion(table, rejected, message)

    def _limit(self, conv: Conversion, transport: str) -> Conversion:
        """The request-size and attribute limits (receivers/otlp/README.md, "Limits")."""
        rid, limits = self.receiver_id, self.limits
        spans = conv.accepted + conv.rejected
        if limits.max_spans_per_request is not None and spans > limits.max_spans_per_request:
            message = (f"request has {spans} spans, over the limit of {limits.max_spans_per_request} per request "
                       "(limits.max_spans_per_request); split the batch into smaller requests")
            self.logger.warning("%s: %s", transport, message)
            self._count("refused", (rid, transport, "too_many_spans"), conv.accepted)
            self.stats.count("requests", (rid, transport, "invalid_argument"))
            raise ExportFailed(Outcome.INVALID, message)
        report = limit_span_attributes(conv.table, limits.max_attributes_per_span, limits.max_attribute_value_length)
        if not report.spans_affected:
            return conv
        self.logger.warning("%s: attribute limits applied to %d span(s): %d attribute(s) dropped over "
                            "max_attributes_per_span=%s, %d value(s) cut to max_attribute_value_length=%s",
                            transport, report.spans_affected, report.dropped_attributes,
                            limits.max_attributes_per_span, report.truncated_values,
                            limits.max_attribute_value_length)
        if report.dropped_attributes:
            self.stats.count("dropped_attributes", (rid, transport), report.dropped_attributes)
        if report.truncated_values:
            self.stats.count("truncated_values", (rid, transport), report.truncated_values)
        return Conversion(report.table, conv.rejected, conv.message)

    def _count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        """Items accepted or refused, in this signal's counters (requests are counted for all signals)."""
        self.stats.count(self.codec.stats + metric, labels, n)

    def _refused(self, transport: str, items: int, reason: str, retry_after: float, message: str):
        self._count("refused", (self.receiver_id, transport, reason), items)
        self.stats.count("requests", (self.receiver_id, transport, "unavailable"))
        raise ExportFailed(Outcome.REFUSED, message, retry_after)


TraceIngest = Ingest  # the traces codec is the default
