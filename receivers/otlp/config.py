from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agent_sre.pipeline.component.auth import SECRET_SAFE_ERRORS, AuthConfig
from agent_sre.pipeline.component.config import ConfigModel, Duration, HostPort
from agent_sre.pipeline.component.listener import ListenerSettings
from agent_sre.pipeline.component.tls import TlsServerConfig

_MIB = 1 << 20


class KeepaliveServerParameters(ConfigModel):
    # GOAWAY to a connection without a call for this long (idle clients reconnect on their next export).
    max_connection_idle: Duration | None = Field(default=60.0, gt=0)
    max_connection_age: Duration | None = Field(default=None, gt=0)  # null: no limit (gRPC's default)
    max_connection_age_grace: Duration | None = Field(default=None, gt=0)
    time: Duration | None = Field(default=None, gt=0)  # server pings; null: gRPC's 2h
    timeout: Duration | None = Field(default=None, gt=0)  # null: gRPC's 20s


class KeepaliveEnforcementPolicy(ConfigModel):
    min_time: Duration | None = Field(default=None, gt=0)  # clients pinging more often get GOAWAY; null: 5m
    permit_without_stream: bool = False


class KeepaliveConfig(ConfigModel):
    server_parameters: KeepaliveServerParameters = KeepaliveServerParameters()
    enforcement_policy: KeepaliveEnforcementPolicy = KeepaliveEnforcementPolicy()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class GrpcConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:4317"
    max_recv_msg_size_mib: float = Field(default=4, gt=0)
    max_concurrent_streams: int = Field(default=64, gt=0)
    # Threads that decode and wait for commit; concurrent exports beyond this queue in gRPC.
    max_workers: int = Field(default=32, gt=0)
    # A connection that has not sent the HTTP/2 preface and SETTINGS by then is closed (gRPC: 120s).
    handshake_timeout: Duration = Field(default=10.0, gt=0)
    keepalive: KeepaliveConfig = KeepaliveConfig()
    tls: TlsServerConfig | None = None

    @model_validator(mode="after")
    def _grpc_tls_floor(self) -> GrpcConfig:
        if self.tls is not None and self.tls.min_version != "1.2":
            # grpc's Python server credentials take no version: its floor is TLS 1.2, 1.3 is negotiated.
            raise ValueError("tls.min_version: gRPC servers cannot enforce a minimum above 1.2 (leave it at 1.2)")
        return self

    @property
    def max_recv_bytes(self) -> int:
        return int(self.max_recv_msg_size_mib * _MIB)

    def connection_options(self) -> list[tuple[str, int]]:
        """gRPC server options for the handshake timeout and the keepalive settings that are set."""
        params, policy = self.keepalive.server_parameters, self.keepalive.enforcement_policy
        durations = {"grpc.server_handshake_timeout_ms": self.handshake_timeout,
                     "grpc.max_connection_idle_ms": params.max_connection_idle,
                     "grpc.max_connection_age_ms": params.max_connection_age,
                     "grpc.max_connection_age_grace_ms": params.max_connection_age_grace,
                     "grpc.keepalive_time_ms": params.time, "grpc.keepalive_timeout_ms": params.timeout,
                     "grpc.http2.min_ping_interval_without_data_ms": policy.min_time}
        options = [(name, _ms(value)) for name, value in durations.items() if value is not None]
        return [*options, ("grpc.keepalive_permit_without_calls", int(policy.permit_without_stream))]


class HttpConfig(ListenerSettings):  # + read_header_timeout, read_timeout, idle_timeout, max_connections
    endpoint: HostPort = "127.0.0.1:4318"
    traces_url_path: str = Field(default="/v1/traces", pattern="^/")
    metrics_url_path: str = Field(default="/v1/metrics", pattern="^/")
    logs_url_path: str = Field(default="/v1/logs", pattern="^/")
    # Limit on the (decompressed) body, as the collector's confighttp max_request_body_size.
    max_request_body_size: int = Field(default=20 * _MIB, gt=0)
    tls: TlsServerConfig | None = None


class ProtocolsConfig(ConfigModel):
    grpc: GrpcConfig | None = None
    http: HttpConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # `grpc:` with no value enables the protocol with its defaults, as in the collector.
        if isinstance(data, dict):
            data = {k: ({} if v is None and k in ("grpc", "http") else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> ProtocolsConfig:
        if self.grpc is None and self.http is None:
            raise ValueError("must enable at least one protocol (grpc, http)")
        return self


class OtlpAuthConfig(AuthConfig):
    # A span claiming an agent its key may not speak for: refused (partial_success) or stored as the
    # key's own agent (the first of its `agents`).
    on_foreign_agent: Literal["reject", "reattribute"] = "reject"


class LimitsConfig(ConfigModel):
    # A request with more spans is refused whole (400 / INVALID_ARGUMENT, saying to split the batch):
    # keeping an arbitrary part as partial_success would lose spans the client cannot tell apart.
    max_spans_per_request: int | None = Field(default=100_000, gt=0)
    # As the OTel SDK's span limits: the excess is dropped (first N kept, dropped_attributes_count
    # grows); values are cut to N characters, their keys listed in agent_sre.truncated_attributes.
    # Applied to span, event and link attributes.  null: no limit.
    max_attributes_per_span: int | None = Field(default=1024, gt=0)
    max_attribute_value_length: int | None = Field(default=1 << 20, gt=0)
    # What the requests one process is reading, decoding and committing may cost together, counted as
    # 4x their decompressed bodies (what decoding costs, measured); beyond it requests are refused
    # retryably (503 / UNAVAILABLE) before they are read, except one at a time.  Per process: the
    # pipeline process, or each receiver worker.  null: no limit.
    max_inflight_mib: float | None = Field(default=64, gt=0)

    @property
    def max_inflight_bytes(self) -> int | None:
        return None if self.max_inflight_mib is None else int(self.max_inflight_mib * (1 << 20))


class OtlpReceiverConfig(ConfigModel):
    model_config = ConfigModel.model_config | SECRET_SAFE_ERRORS  # keys never in an error's text

    protocols: ProtocolsConfig = ProtocolsConfig(grpc=GrpcConfig(), http=HttpConfig())
    # 0: receive and convert in the pipeline process.  N > 0: N worker processes share the
    # ports (SO_REUSEPORT), decode and convert in parallel, and hand Arrow batches to the
    # pipeline process, which acknowledges each request after its commit.
    workers: int = Field(default=0, ge=0, le=64)
    # Workers run this much nicer than the pipeline process, so that storing what was acknowledged
    # comes before accepting more when the cores are saturated (measured: at full rate the spool
    # backlog then stays bounded instead of growing; docs/benchmarks.md).  0: equal priority.
    workers_nice: int = Field(default=5, ge=0, le=19)
    limits: LimitsConfig = LimitsConfig()
    # API keys every request must present (Authorization: Bearer / x-api-key); absent: no authentication.
    auth: OtlpAuthConfig | None = None
