"""The loadbalancing exporter's settings, in the Collector's shape (exporter/loadbalancingexporter):

    routing_key: traceID | service | attributes      (attributes: routing_attributes, e.g. [agent_id])
    protocol:    {otlp: {...}} | {otlphttp: {...}}   the template of every backend's exporter, no endpoint
    resolver:    {static: {hostnames: [...]}} | {dns: {hostname, port, interval, timeout}}
    affinity:    {window: 60s, hold: 10s}             ours: a trace in progress keeps its gateway (affinity.py)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from agent_sre.exporters.helper.sender import HelperConfig
from agent_sre.pipeline.component.config import ConfigModel, Duration


class StaticResolver(ConfigModel):
    hostnames: list[str] = Field(min_length=1)  # host:port (otlp) or http(s)://host:port (otlphttp)


class DnsResolver(ConfigModel):
    hostname: str  # a headless Service's name: every A/AAAA record is one backend
    port: int = Field(default=4317, gt=0, lt=65536)
    interval: Duration = Field(default="5s", gt=0)  # re-resolved this often
    timeout: Duration = Field(default="1s", gt=0)


class ResolverConfig(ConfigModel):
    static: StaticResolver | None = None
    dns: DnsResolver | None = None

    @model_validator(mode="after")
    def _one(self) -> ResolverConfig:
        if (self.static is None) == (self.dns is None):
            raise ValueError("give exactly one resolver: static (hostnames) or dns (hostname)")
        return self


class AffinityConfig(ConfigModel):
    # A key keeps the backend it was first sent to for this long (to twice this), whatever the ring does
    # meanwhile; 0s: no memory, every span goes to the ring's owner (the Collector's behaviour).
    window: Duration = Field(default="60s", ge=0)
    # A backend that fails keeps its remembered keys' rows queued for this long before they go to the
    # ring's next node (a restart shorter than this splits no trace); 0s: at once.
    hold: Duration = Field(default="10s", ge=0)


class ProtocolConfig(ConfigModel):
    # Validated by the backend exporter's own config model when the exporter is built (factory.py),
    # so every otlp / otlphttp setting is accepted and checked there, with its path.
    otlp: dict[str, Any] | None = None
    otlphttp: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> ProtocolConfig:
        if self.otlp is not None and self.otlphttp is not None:
            raise ValueError("give one protocol: otlp or otlphttp")
        for name in ("otlp", "otlphttp"):
            template = getattr(self, name)
            if template and ("endpoint" in template or "traces_endpoint" in template):
                raise ValueError(f"{name}: the endpoint comes from the resolver; do not set it here")
        if self.otlp is None and self.otlphttp is None:
            self.otlp = {}
        return self

    @property
    def kind(self) -> str:
        return "otlp" if self.otlp is not None else "otlphttp"

    @property
    def template(self) -> dict[str, Any]:
        return dict(self.otlp if self.otlp is not None else self.otlphttp or {})


class LoadBalancingConfig(HelperConfig):
    """The helper's queue and retries hold what no backend took yet (see README: in-flight data)."""

    routing_key: Literal["traceID", "service", "attributes"] = "traceID"
    routing_attributes: list[str] = []  # canonical columns (agent_id, session_id) or span/resource attribute keys
    protocol: ProtocolConfig = ProtocolConfig()
    resolver: ResolverConfig
    virtual_nodes: int = Field(default=128, ge=1, le=4096)  # ring positions per backend
    probe_interval: Duration = Field(default="1s", gt=0)  # how often a backend marked down is tried again
    affinity: AffinityConfig = AffinityConfig()

    @model_validator(mode="after")
    def _routing(self) -> LoadBalancingConfig:
        if self.routing_key == "attributes" and not self.routing_attributes:
            raise ValueError("routing_key attributes needs routing_attributes (e.g. [agent_id])")
        if self.routing_key != "attributes" and self.routing_attributes:
            raise ValueError(f"routing_attributes is used only with routing_key: attributes (not {self.routing_key})")
        self._check_template()
        return self

    def _check_template(self) -> None:
        """The backend exporter's own model checks the template now, so a typo fails at load, not at start."""
        from agent_sre.exporters.otlp.factory import OtlpGrpcConfig
        from agent_sre.exporters.otlphttp.factory import OtlpHttpConfig

        kind = self.protocol.kind
        model = OtlpGrpcConfig if kind == "otlp" else OtlpHttpConfig
        try:
            model.model_validate({**self.protocol.template, "endpoint": "http://127.0.0.1:1"})
        except ValidationError as exc:
            problems = "; ".join(f"{'::'.join(str(p) for p in e['loc']) or '(template)'}: {e['msg']}"
                                 for e in exc.errors())
            raise ValueError(f"protocol::{kind}: {problems}") from None
