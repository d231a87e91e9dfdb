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
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import model_validator

from agent_sre.exporters.helper.sender import HelperConfig, QueuedExporter
from agent_sre.exporters.otlp.common import RETRYABLE_HTTP, TlsConfig, apply_preset, retry_after_seconds
from agent_sre.pipeline.arrow_otlp import encoded
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind


class OtlpHttpConfig(HelperConfig):
    endpoint: str | None = None  # base URL; traces go to {endpoint}/v1/traces
    traces_endpoint: str | None = None  # the full URL, when it is not {endpoint}/v1/traces
    preset: str | None = None  # see exporters/otlp/common.py
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
        url = urllib.parse.urlsplit(self.traces_endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"traces endpoint must be an http:// or https:// URL (got {self.traces_endpoint!r})")
        self.preset = None  # applied: validating again must not apply it twice
        return self


class OtlpHttpExporter(QueuedExporter):
    config: OtlpHttpConfig

    def _start_client(self, host) -> None:
        url = urllib.parse.urlsplit(self.config.traces_endpoint)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._path = url.path + (f"?{url.query}" if url.query else "")
        self._context = self._ssl_context() if self._https else None
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

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            timeout = self.config.timeout
            conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
                    if self._https else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    def _body(self, batch) -> bytes:
        form = self.config.encoding + ("+gzip" if self.config.compression == "gzip" else "")
        return encoded(batch, form)  # once per batch for every exporter that sends the same form

    def send(self, batch) -> ExportResult:
        body = self._body(batch)
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # reconnects at the next attempt (close() leaves the object reusable)
            return ExportResult(ExportStatus.RETRYABLE, f"{self.config.traces_endpoint}: {exc}")
        if resp.status == 200:
            self._partial_success(resp.getheader("Content-Type", ""), payload)
            return SUCCESS
        message = f"HTTP {resp.status} from {self.config.traces_endpoint}: {payload[:300]!r}"
        if resp.status in RETRYABLE_HTTP:
            return ExportResult(ExportStatus.RETRYABLE, message, retry_after_seconds(resp.getheader("Retry-After")))
        return ExportResult(ExportStatus.PERMANENT, message)

    def _partial_success(self, content_type: str, payload: bytes) -> None:
        if not payload:
            return
        response = ExportTraceServiceResponse()
        try:
            if "json" in content_type:
                json_format.ParseDict(json.loads(payload), response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - an odd 200 body is still a 200
            return
        rejected = response.partial_success.rejected_spans
        if rejected:
            self._failed.inc(rejected)
            self.logger.warning("%s accepted the batch but rejected %d spans: %s", self.config.traces_endpoint,
                                rejected, response.partial_success.error_message)

    def _stop_client(self) -> None:
        for conn in self._conns:  # every consumer thread's
            conn.close()
        self._conns = []

    def describe(self) -> list[str]:
        return [f"{self.id}: OTLP/HTTP ({self.config.encoding}) to {self.config.traces_endpoint}"]


factory = Factory(type="otlphttp", kind=Kind.EXPORTER, config_model=OtlpHttpConfig, create=OtlpHttpExporter,
                  description="Spans to an OTLP/HTTP backend, protobuf or JSON (Langfuse, LangSmith, Braintrust...).")
