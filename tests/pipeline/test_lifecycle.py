"""One lifecycle test for every registered component: create -> shutdown; create -> start -> shutdown, twice."""

from __future__ import annotations

import sys

import pytest

from agent_sre.pipeline.component import FunctionConsumer, Kind, Settings
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.registry import registry
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import free_port


def _config(factory, tmp_path):
    """Defaults, moved to free ports and a temporary directory so tests never collide."""
    if factory.type == "prometheusremotewrite":  # nothing listens there: one attempt, no retries
        return factory.config_model(endpoint=f"http://127.0.0.1:{free_port()}/api/v1/write", max_attempts=1)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    required = {"webhook": {"url": url}, "slack": {"webhook_url": url}, "teams": {"webhook_url": url},
                "pagerduty": {"routing_key": "k", "url": url}, "opsgenie": {"api_key": "k", "api_url": url},
                "alertmanager": {"url": url}, "otlp": {"endpoint": url, "tls": {"insecure": True}},
                "otlphttp": {"endpoint": url}, "langfuse": {"host": url, "public_key": "pk", "secret_key": "sk"},
                "datadog": {"api_key": "k", "api_url": url}, "mlflow": {"tracking_uri": url, "traces": "off"},
                "wandb": {"dir": str(tmp_path / "wandb")},
                "loadbalancing": {"resolver": {"static": {"hostnames": [f"127.0.0.1:{free_port()}"]}}},
                "clickhouse": {"endpoint": f"clickhouse://127.0.0.1:{free_port()}/agent_sre"}}
    if factory.type in required and factory.kind is Kind.EXPORTER:
        return factory.config_model(**required[factory.type])
    if factory.type == "slo":  # an SLO processor has at least one objective
        return factory.config_model(objectives=[{"name": "tools", "sli": "tool_call_accuracy", "target": 0.99}])
    cfg = factory.config_model()
    if factory.type == "otlp":
        cfg.protocols.grpc.endpoint = f"127.0.0.1:{free_port()}"
        cfg.protocols.http.endpoint = f"127.0.0.1:{free_port()}"
    elif hasattr(cfg, "endpoint"):
        cfg.endpoint = f"127.0.0.1:{free_port()}"
    if hasattr(cfg, "path") and factory.kind is Kind.EXPORTER:
        cfg.path = str(tmp_path / "spans.duckdb")
    return cfg


@pytest.mark.parametrize("factory", registry.all(), ids=lambda f: f"{f.kind.value}-{f.type}")
def test_component_lifecycle(factory, tmp_path):
    telemetry = Telemetry()

    def create():
        settings = Settings(parse_id(factory.type), factory.kind, telemetry)
        cfg = _config(factory, tmp_path)
        if factory.kind is Kind.RECEIVER:
            return factory.create(settings, cfg, FunctionConsumer(lambda batch: None))
        return factory.create(settings, cfg)

    create().shutdown()  # shutdown without start is safe
    for _ in range(2):
        host = Host(telemetry)
        store = _duckdb_exporter(telemetry, tmp_path) if factory.type in NEEDS_STORE else None
        if store is not None:
            store.start(host)
            host.components["exporters::duckdb"] = store
        comp = create()
        comp.start(host)
        comp.start(host)  # idempotent
        comp.shutdown()
        comp.shutdown()  # idempotent
        if store is not None:
            store.shutdown()
        host.http.shutdown()


NEEDS_STORE = ("sli", "slo", "anomaly", "incidents", "chaos", "delivery")  # processors that keep their state in the duckdb exporter's store


def _duckdb_exporter(telemetry, tmp_path):
    factory = registry.get(Kind.EXPORTER, "duckdb")
    return factory.create(Settings(parse_id("duckdb"), Kind.EXPORTER, telemetry), _config(factory, tmp_path))


def parse_id(text):
    from agent_sre.pipeline.component import ComponentID

    return ComponentID.parse(text)


def test_every_component_type_has_a_readme_with_a_yaml_example():
    from pathlib import Path

    root = Path(__file__).parents[2]
    for factory in registry.all():
        # next to the module that defines the component (extensions: pipeline/service, or their engine's folder)
        readme = Path(sys.modules[factory.create.__module__].__file__).parent / "README.md"
        assert root in readme.parents and readme.exists(), f"{readme} is missing"
        assert "```yaml" in readme.read_text() and factory.type in readme.read_text()


def test_default_config_builds_a_service():
    from agent_sre.pipeline.service import Service

    Service(parse_config(open(Path_default()).read(), "default", env={})).shutdown()


def Path_default():
    from pathlib import Path

    return Path(__file__).parents[2] / "config" / "default.yaml"


@pytest.mark.parametrize("name", ["default.yaml", "sidecar.yaml", "store-only.yaml"])
def test_every_shipped_config_starts_and_stops(name, tmp_path):
    """Each config/ YAML validates and its service starts (on free ports, a temporary store) and stops."""
    from pathlib import Path

    from agent_sre.pipeline.service import Service

    text = (Path(__file__).parents[2] / "config" / name).read_text()
    ports = {k: f"127.0.0.1:{free_port()}" for k in ("grpc", "http", "admin", "metrics")}
    env = {"AGENT_SRE_OTLP_GRPC_ENDPOINT": ports["grpc"], "AGENT_SRE_OTLP_HTTP_ENDPOINT": ports["http"],
           "AGENT_SRE_ADMIN_ENDPOINT": ports["admin"], "AGENT_SRE_METRICS_ADDRESS": ports["metrics"],
           "AGENT_SRE_DATA": str(tmp_path), "AGENT_SRE_RECEIVER_WORKERS": "0",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}"}
    for fixed, key in (("127.0.0.1:4317", "grpc"), ("127.0.0.1:4318", "http"), ("127.0.0.1:8888", "metrics")):
        text = text.replace(f"endpoint: {fixed}", f"endpoint: {ports[key]}").replace(f"address: {fixed}",
                                                                                     f"address: {ports[key]}")
    text = text.replace("health_check: {}", f"health_check: {{endpoint: {ports['admin']}}}").replace(
        "admin: {}", f"admin: {{endpoint: {ports['admin']}}}").replace("./agent-sre-data", str(tmp_path))
    service = Service(parse_config(text, name, env=env))
    try:
        service.start()
    finally:
        service.shutdown()
