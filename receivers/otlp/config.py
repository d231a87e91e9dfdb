from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from agent_sre.pipeline.component.config import ConfigModel, HostPort

_MIB = 1 << 20


class GrpcConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:4317"
    max_recv_msg_size_mib: float = Field(default=4, gt=0)
    max_concurrent_streams: int = Field(default=64, gt=0)
    # Threads that decode and wait for commit; concurrent exports beyond this queue in gRPC.
    max_workers: int = Field(default=32, gt=0)

    @property
    def max_recv_bytes(self) -> int:
        return int(self.max_recv_msg_size_mib * _MIB)


class HttpConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:4318"
    traces_url_path: str = Field(default="/v1/traces", pattern="^/")
    metrics_url_path: str = Field(default="/v1/metrics", pattern="^/")
    logs_url_path: str = Field(default="/v1/logs", pattern="^/")
    # Limit on the (decompressed) body, as the collector's confighttp max_request_body_size.
    max_request_body_size: int = Field(default=20 * _MIB, gt=0)


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


class OtlpReceiverConfig(ConfigModel):
    protocols: ProtocolsConfig = ProtocolsConfig(grpc=GrpcConfig(), http=HttpConfig())
    # 0: receive and convert in the pipeline process.  N > 0: N worker processes share the
    # ports (SO_REUSEPORT), decode and convert in parallel, and hand Arrow batches to the
    # pipeline process, which acknowledges each request after its commit.
    workers: int = Field(default=0, ge=0, le=64)
    # Workers run this much nicer than the pipeline process, so that storing what was acknowledged
    # comes before accepting more when the cores are saturated (measured: at full rate the spool
    # backlog then stays bounded instead of growing; docs/benchmarks.md).  0: equal priority.
    workers_nice: int = Field(default=5, ge=0, le=19)
