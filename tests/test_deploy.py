"""The Kubernetes manifests: deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas (the JSON schemas
shipped in the kubernetes-validate package, strict: unknown fields fail), the pipeline configs they
carry loaded by our own config loader, and the wiring between the objects (probes on the health
endpoint, scrape annotations on the metrics port, the headless Service the sidecars resolve).

No helm binary can be installed from the registries here (PyPI, npm, Debian), so the chart under
deploy/helm/ is not rendered or linted by these tests: deploy/k8s/gateway.yaml is its default render
written out by hand, and what can be compared without rendering (the config, the ports, the chart's
metadata) is compared below."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # the Kubernetes OpenAPI schemas as JSON, from PyPI (pyproject's test extra)
import pytest
import yaml

from agent_sre.exporters.loadbalancing.factory import factory as loadbalancing_factory
from agent_sre.pipeline.component.registry import registry
from agent_sre.pipeline.service.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CHART = ROOT / "deploy" / "helm" / "agent-sre"
VERSIONS = ("1.29.0", "1.33.0")  # an older supported cluster and a current one
registry.register(loadbalancing_factory)  # until it is in the built-in list (idempotent afterwards)


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in docs if d["kind"] == kind])
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["gateway.yaml", "sidecar-pod.yaml"])
def test_every_manifest_is_valid_against_the_kubernetes_schema(name, version):
    for doc in _docs(name):
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the failing path


def test_the_schema_check_catches_a_misspelt_field():
    deployment = _kind(_docs("gateway.yaml"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _pipeline_config(text: str, monkeypatch):
    monkeypatch.setenv("AGENT_SRE_ADMIN_ALLOWED_HOST", "agent-sre-gateway")  # as the Deployment sets it
    return parse_config(text, "configmap")


def test_the_gateway_configmap_is_the_charts_config_and_loads(monkeypatch):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    configmap = _kind(_docs("gateway.yaml"), "ConfigMap")
    assert configmap["data"]["config.yaml"] == values["config"]
    cfg = _pipeline_config(values["config"], monkeypatch)
    assert "duckdb" in {str(i) for i in cfg.exporters}


def test_the_sidecar_config_loads_and_balances_over_the_gateways_headless_service(monkeypatch):
    sidecar = _docs("sidecar-pod.yaml")
    text = _kind(sidecar, "ConfigMap")["data"]["config.yaml"]
    cfg = _pipeline_config(text, monkeypatch)
    assert {"duckdb", "loadbalancing"} <= {str(i) for i in cfg.exporters}
    raw = yaml.safe_load(text)["exporters"]["loadbalancing"]
    headless = _kind(_docs("gateway.yaml"), "Service", "agent-sre-gateway-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert raw["resolver"]["dns"]["hostname"].startswith(headless["metadata"]["name"] + ".")
    assert raw["resolver"]["dns"]["port"] == headless["spec"]["ports"][0]["port"]
    pod = _kind(sidecar, "Pod")
    assert {c["name"] for c in pod["spec"]["containers"]} == {"agent", "agent-sre"}  # sharing localhost


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_probes_hit_the_health_endpoint_and_scrape_annotations_the_metrics_port():
    docs = _docs("gateway.yaml")
    config = yaml.safe_load(_kind(docs, "ConfigMap")["data"]["config.yaml"])
    template = _kind(docs, "Deployment")["spec"]["template"]
    container = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health = config["extensions"]["health_check"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == health.get("path", "/") and ports[get["port"]] == _port(health["endpoint"])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _port(config["service"]["telemetry"]["metrics"]["address"])
    assert ports["otlp-grpc"] == _port(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert ports["prometheus"] == _port(config["exporters"]["prometheus"]["endpoint"])


def test_services_and_the_hpa_point_at_the_gateway_deployment():
    docs = _docs("gateway.yaml")
    deployment = _kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"]["selector"] == pod_labels
    hpa = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"]  # the HPA owns the count


def test_the_chart_declares_what_the_plain_manifests_hold():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "agent-sre" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    container = _kind(_docs("gateway.yaml"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert sorted(values["ports"].values()) == sorted(p["containerPort"] for p in container["ports"])
    templates = {p.name for p in (CHART / "templates").iterdir()}
    assert {"configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "servicemonitor.yaml"} <= templates
    kinds = " ".join((CHART / "templates" / t).read_text() for t in templates)
    for kind in ("ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"):
        assert f"kind: {kind}" in kinds
