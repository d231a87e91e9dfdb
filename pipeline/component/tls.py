"""Server-side TLS settings shared by every listener: the OTLP receivers (gRPC and HTTP) and the
admin/health HTTP endpoint.

    tls:
      cert_file: /etc/agent-sre/server.crt   # PEM, the chain (leaf first)
      key_file: /etc/agent-sre/server.key    # PEM private key
      client_ca_file: /etc/agent-sre/ca.pem  # optional: mTLS, clients must present a certificate it signed
      min_version: "1.2"                     # or "1.3"

Files are read when the listener starts (``ssl_context``/``grpc_credentials``), so a missing or
unreadable file fails the start with its path; the config check (``validate``) only checks the shape.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from agent_sre.pipeline.component.config import ConfigModel

__all__ = ["TlsServerConfig"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsServerConfig(ConfigModel):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: mutual TLS, a client without a certificate it signed is refused
    min_version: Literal["1.2", "1.3"] = "1.2"

    model_config = ConfigModel.model_config | {"frozen": True}  # a listener's TLS does not change under it

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """The server context for an HTTP listener; OSError/ssl.SSLError name the file that failed."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _VERSIONS[self.min_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                ctx.load_verify_locations(cafile=self.client_ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load TLS files (cert_file {self.cert_file}, key_file {self.key_file}"
                          f"{', client_ca_file ' + self.client_ca_file if self.client_ca_file else ''}): {exc}") \
                from exc
        return ctx

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, client CA or None) as bytes, for gRPC's credentials."""
        self.ssl_context()  # checked by OpenSSL here: gRPC would only say that it cannot bind
        try:
            ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
            return Path(self.cert_file).read_bytes(), Path(self.key_file).read_bytes(), ca
        except OSError as exc:
            raise OSError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from exc
