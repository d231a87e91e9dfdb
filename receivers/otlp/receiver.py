"""The otlp receiver: OTLP/gRPC and OTLP/HTTP servers feeding one pipeline consumer."""

from __future__ import annotations

from agent_sre.pipeline.component import Receiver
from agent_sre.pipeline.component.admission import InflightBytes
from agent_sre.pipeline.component.auth import Authenticator
from agent_sre.receivers.otlp.config import OtlpReceiverConfig

# The servers, gRPC and the OTLP decoding are imported where they run: with worker processes the
# pipeline process never decodes OTLP, and not importing them keeps ~25 MiB out of its RSS.


class OtlpReceiver(Receiver):
    config: OtlpReceiverConfig

    def __init__(self, settings, config: OtlpReceiverConfig, next_consumer):
        super().__init__(settings, config, next_consumer)
        self.ingest = None  # the in-process TraceIngest, once started without workers
        self._grpc = None
        self._http = None
        self._workers = None

    def _start(self, host) -> None:
        if self.config.workers:
            from agent_sre.receivers.otlp.workers import WorkerPool

            self._workers = WorkerPool(self, host)
            self._workers.start()
            return
        from agent_sre.receivers.otlp.grpc_server import GrpcTraceServer
        from agent_sre.receivers.otlp.http_server import HttpTraceServer
        from agent_sre.receivers.otlp.ingest import CODECS, Ingest, TelemetryStats

        stats = TelemetryStats(self.settings.telemetry)
        auth = self.config.auth
        authenticator = Authenticator(auth, str(self.id), self.logger) if auth is not None else None
        reattribute = auth is not None and auth.on_foreign_agent == "reattribute"
        inflight = InflightBytes(self.config.limits.max_inflight_bytes)  # one budget for the process
        self.ingests = {s: Ingest(str(self.id), self.next, stats, self.logger, CODECS[s], authenticator, reattribute,
                                  limits=self.config.limits, admission=host.admission, inflight=inflight)
                        for s in self.signals}
        self.ingest = self.ingests.get("traces")
        protocols = self.config.protocols
        try:
            if protocols.grpc is not None:
                self._grpc = GrpcTraceServer(protocols.grpc, self.ingests)
                self._grpc.start()
            if protocols.http is not None:
                self._http = HttpTraceServer(protocols.http, self.ingests, host.http)
                self._http.start()
        except Exception:
            self._shutdown()
            raise

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals this receiver has pipelines for (traces alone when fed a plain consumer)."""
        return tuple(s for s in getattr(self.next, "signals", ("traces",)) if s in ("traces", "metrics", "logs"))

    def describe(self) -> list[str]:
        p = self.config.protocols
        lines = []
        what = "/".join(self.signals)
        if p.grpc is not None:
            lines.append(f"OTLP/gRPC on {p.grpc.endpoint} ({what}{_tls(p.grpc.tls)})")
        if p.http is not None:
            paths = ", ".join(getattr(p.http, f"{s}_url_path") for s in self.signals)
            scheme = "https" if p.http.tls is not None else "http"
            lines.append(f"OTLP/HTTP on {scheme}://{p.http.endpoint} ({paths}; protobuf, JSON{_tls(p.http.tls)})")
        if self.config.auth is not None:
            lines.append(f"  (API keys required: {len(self.config.auth.keys)} configured)")
        if self.config.workers:
            lines.append(f"  ({self.config.workers} receiver worker processes)")
        return lines

    def _shutdown(self) -> None:
        if self._workers is not None:
            self._workers.stop()
            self._workers = None
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        if self._http is not None:
            self._http.stop()
            self._http = None


def _tls(tls) -> str:
    if tls is None:
        return ""
    return "; mTLS" if tls.mutual else "; TLS"
