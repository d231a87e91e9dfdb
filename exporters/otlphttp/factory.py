"""otlphttp: spans to any OTLP/HTTP backend, protobuf or JSON, through the exporter helper.

``POST {endpoint}/v1/traces`` (or ``traces_endpoint`` as given) with ``Content-Type:
application/x-protobuf`` or ``application/json`` (OTLP/JSON: hex ids, integer enums), optional
gzip, the configured headers and TLS.  Answers follow OTLP/HTTP: 200 with an
ExportTraceServiceResponse (a partial success is logged and counted); 429, 502, 503 and 504 are
retried, honouring ``Retry-After``; any other status is permanent.  Each consumer thread keeps one
keep-alive connection.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import model_validator

from agent_sre.exporters.helper.http import RETRYABLE_HTTP, TlsConfig, apply_preset, retry_after_seconds
from agent_sre.exporters.helper.sender import HelperConfig, QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.pdata.arrow_otlp import encoded
from agent_sre.pipeline.pdata.schema import signal_of

_RESPONSES = {"traces": (ExportTraceServiceResponse, "rejected_spans"),
              "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
              "logs": (ExportLogsServiceResponse, "rejected_log_records")}


class OtlpHttpConfig(HelperConfig):
    endpoint: str | None = None  # base URL; traces go to {endpoint}/v1/traces
    traces_endpoint: str | None = None  # the full URL, when it is not {endpoint}/v1/traces
    metrics_endpoint: str | None = None  # default {endpoint}/v1/metrics
    logs_endpoint: str | None = None  # default {endpoint}/v1/logs
    preset: str | None = None  # see exporters/helper/http.py
    encoding: str = "proto"  # proto | json
    compression: str = "gzip"  # gzip | none
    headers: dict[str, str] = {}
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _resolve(self) -> OtlpHttpConfig:
        if self.encoding not in ("proto", "json"):
            raise ValueError(f"encoding must be proto or json (got {self.encoding!r})")
        if self.compression not in ("gzip", "none"):
            raise ValueError(f"compression must be gzip or none (got {self.compression!r})")
        if self.traces_endpoint is None:
            self.endpoint, self.headers = apply_preset("otlphttp", self.preset, self.endpoint, self.headers)
            self.traces_endpoint = self.endpoint.rstrip("/") + "/v1/traces"
        else:
            self.endpoint, self.headers = apply_preset("otlphttp", self.preset, self.traces_endpoint, self.headers)
        base = self.endpoint.rstrip("/") if self.traces_endpoint != self.endpoint else None
        self.metrics_endpoint = self.metrics_endpoint or (f"{base}/v1/metrics" if base else None)
        self.logs_endpoint = self.logs_endpoint or (f"{base}/v1/logs" if base else None)
        for what, value in (("traces", self.traces_endpoint), ("metrics", self.metrics_endpoint),
                            ("logs", self.logs_endpoint)):
            url = urllib.parse.urlsplit(value or "http://x")
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"{what} endpoint must be an http:// or https:// URL (got {value!r})")
        self.preset = None  # applied: validating again must not apply it twice
        return self


class OtlpHttpExporter(QueuedExporter):
    config: OtlpHttpConfig

    def _start_client(self, host) -> None:
        self._targets: dict[str, tuple[bool, str, int, str]] = {}  # signal -> (https, host, port, path)
        for signal in ("traces", "metrics", "logs"):
            endpoint = getattr(self.config, f"{signal}_endpoint")
            if endpoint:
                url = urllib.parse.urlsplit(endpoint)
                https = url.scheme == "https"
                self._targets[signal] = (https, url.hostname, url.port or (443 if https else 80),
                                         url.path + (f"?{url.query}" if url.query else ""))
        self._context = self._ssl_context() if any(t[0] for t in self._targets.values()) else None
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._headers = {"Content-Type": "application/json" if self.config.encoding == "json"
                         else "application/x-protobuf", "User-Agent": "agent-sre", **self.config.headers}
        if self.config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connection(self, https: bool, host: str, port: int) -> http.client.HTTPConnection:
        """This consumer thread's keep-alive connection to (host, port)."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((host, port))
        if conn is None:
            timeout = self.config.timeout
            conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context)
                    if https else http.client.HTTPConnection(host, port, timeout=timeout))
            conns[(host, port)] = conn
            self._conns.append(conn)
        return conn

    def _body(self, batch) -> bytes:
        form = self.config.encoding + ("+gzip" if self.config.compression == "gzip" else "")
        return encoded(batch, form)  # once per batch for every exporter that sends the same form

    def prepare(self, batch) -> None:
        if signal_of(batch.schema) in self._targets:
            self._body(batch)  # the request body, encoded while the batch is hot (QueuedExporter.prepare)

    def send(self, batch) -> ExportResult:
        signal = signal_of(batch.schema)
        target = self._targets.get(signal)
        if target is None:
            return ExportResult(ExportStatus.PERMANENT, f"no {signal}_endpoint configured for {signal}")
        https, host, port, path = target
        url = getattr(self.config, f"{signal}_endpoint")
        body = self._body(batch)
        conn = self._connection(https, host, port)
        try:
            conn.request("POST", path, body=body, headers=self._headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # reconnects at the next attempt (close() leaves the object reusable)
            return ExportResult(ExportStatus.RETRYABLE, f"{url}: {exc}")
        if resp.status == 200:
            self._partial_success(signal, resp.getheader("Content-Type", ""), payload)
            return SUCCESS
        message = f"HTTP {resp.status} from {url}: {payload[:300]!r}"
        if resp.status in RETRYABLE_HTTP:
            return ExportResult(ExportStatus.RETRYABLE, message, retry_after_seconds(resp.getheader("Retry-After")))
        return ExportResult(ExportStatus.PERMANENT, message)

    def _partial_success(self, signal: str, content_type: str, payload: bytes) -> None:
        if not payload:
            return
        response_class, field = _RESPONSES[signal]
        response = response_class()
        try:
            if "json" in content_type:
                json_format.ParseDict(json.loads(payload), response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - an odd 200 body is still a 200
            return
        rejected = getattr(response.partial_success, field)
        if rejected:
            self._telemetry.failed(signal, self._name).inc(rejected)
            self.logger.warning("%s accepted the batch but rejected %d of it: %s",
                                getattr(self.config, f"{signal}_endpoint"), rejected,
                                response.partial_success.error_message)

    def _stop_client(self) -> None:
        for conn in self._conns:  # every consumer thread's
            conn.close()
        self._conns = []

    def describe(self) -> list[str]:
        return [f"{self.id}: OTLP/HTTP ({self.config.encoding}) to {self.config.traces_endpoint}"]


factory = Factory(type="otlphttp", kind=Kind.EXPORTER, config_model=OtlpHttpConfig, create=OtlpHttpExporter,
                  signals=("traces", "metrics", "logs"),
                  description="Spans to an OTLP/HTTP backend, protobuf or JSON (Langfuse, LangSmith, Braintrust...).")
