"""What the otlp (gRPC) and otlphttp exporters share: TLS settings, presets, OTLP's retry rules.

OTLP says which failures a client retries (opentelemetry-proto, otlp.md "Failures"):

    gRPC   CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS; and
           RESOURCE_EXHAUSTED when the server sends RetryInfo; everything else is permanent.
    HTTP   429, 502, 503, 504 (honouring Retry-After); every other 4xx/5xx is permanent.

A ``partial_success`` answer is a success for the rest of the batch: the rejected spans are
logged with the server's message and counted as failed, never retried.

**Presets** fill the endpoint and check the header names a backend documents (the values, i.e.
the keys, come from the YAML, usually from ``${env:...}``):

    preset         exporter   endpoint                                         headers required
    langfuse       otlphttp   https://cloud.langfuse.com/api/public/otel       authorization (Basic) *
    langsmith      otlphttp   https://api.smith.langchain.com/otel             x-api-key (langsmith-project optional)
    braintrust     otlphttp   https://api.braintrust.dev/otel                  authorization (Bearer), x-bt-parent
    arize          otlp       otlp.arize.com:443                               authorization, arize-space-id
    datadog_agent  otlphttp   http://localhost:4318 (the Agent's OTLP intake)  -
                   otlp       localhost:4317

    * the ``langfuse`` exporter builds it from public and secret keys.
"""

from __future__ import annotations

import email.utils
import time

from pydantic import model_validator

from agent_sre.pipeline.component.config import ConfigModel

RETRYABLE_HTTP = (429, 502, 503, 504)

PRESETS: dict[str, dict[str, dict]] = {
    "otlphttp": {
        "langfuse": {"endpoint": "https://cloud.langfuse.com/api/public/otel", "required": ["authorization"],
                     "headers": {"x-langfuse-ingestion-version": "4"}},
        "langsmith": {"endpoint": "https://api.smith.langchain.com/otel", "required": ["x-api-key"]},
        "braintrust": {"endpoint": "https://api.braintrust.dev/otel", "required": ["authorization", "x-bt-parent"]},
        "datadog_agent": {"endpoint": "http://localhost:4318", "required": []},
    },
    "otlp": {
        "arize": {"endpoint": "otlp.arize.com:443", "required": ["authorization", "arize-space-id"],
                  "headers": {"arize-interface": "otel"}},
        "datadog_agent": {"endpoint": "localhost:4317", "required": [], "insecure": True},
    },
}


class TlsConfig(ConfigModel):
    insecure: bool = False  # gRPC: plaintext (no TLS at all); HTTP: follows the endpoint's scheme
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate (mTLS), with key_file
    key_file: str | None = None
    insecure_skip_verify: bool = False  # TLS without checking the server's certificate

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


def apply_preset(kind: str, preset: str | None, endpoint: str | None, headers: dict[str, str]) -> tuple[str, dict]:
    """(endpoint, headers) with the preset's defaults; ValueError naming what a preset needs."""
    if preset is None:
        if not endpoint:
            raise ValueError("endpoint is required (or a preset)")
        return endpoint, headers
    table = PRESETS[kind]
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r} for {kind} (valid values: [{', '.join(table)}])")
    p = table[preset]
    merged = {**p.get("headers", {}), **headers}
    missing = [h for h in p["required"] if h not in {k.lower() for k in merged}]
    if missing:
        raise ValueError(f"preset {preset} needs headers: {', '.join(missing)}")
    return endpoint or p["endpoint"], merged


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
