"""The Kubernetes manifests: deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas (the JSON schemas
shipped in the kubernetes-validate package, strict: unknown fields fail), the pipeline configs they
carry loaded by our own config loader, and the wiring between the objects (probes on the health
endpoint, scrape annotations on the metrics port, the headless Service the sidecars resolve).

The chart under deploy/helm/ is rendered, not only read: no helm binary can be installed from the
registries here (PyPI, npm, Debian; Debian's Go cannot build it offline), so `make test-deps` builds
tests/helm/render.go -- Go's text/template with the sprig functions (Debian's packages), what Helm's own
engine is made of, plus Helm's include/toYaml/required -- and the tests render the chart with it: every
object against the Kubernetes schemas, the default render equal to deploy/k8s/gateway.yaml (what a user
without helm applies), values switching the HPA, the ServiceMonitor and the config's checksum.  Not
covered, as it needs helm itself: `helm lint`'s chart checks and installing into a cluster."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import kubernetes_validate  # the Kubernetes OpenAPI schemas as JSON, from PyPI (pyproject's test extra)
import pytest
import yaml

from agent_sre.exporters.loadbalancing.factory import factory as loadbalancing_factory
from agent_sre.pipeline.component.registry import registry
from agent_sre.pipeline.service.config import parse_config
from tests.servers import SERVERS

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


# --- the Helm chart, rendered -------------------------------------------------------------------------


def _render(tmp_path: Path | None = None, values: dict | None = None, chart: Path = CHART,
            name: str = "agent-sre") -> list[dict]:
    renderer = SERVERS / "helm-render" / "bin" / "helm-render"
    if not renderer.exists():
        pytest.fail(f"{renderer} is missing: `make test-deps` builds it from tests/helm/render.go")
    args = [str(renderer), "-name", name]
    if values is not None:
        assert tmp_path is not None
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp_path / "values.yaml")]
    done = subprocess.run([*args, str(chart)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _without_helm_marks(doc: dict) -> dict:
    """A rendered object without what only Helm adds: the managed-by label and the config's checksum."""
    doc = yaml.safe_load(yaml.safe_dump(doc))
    for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        meta.get("labels", {}).pop("app.kubernetes.io/managed-by", None)
        meta.get("annotations", {}).pop("checksum/config", None)
    return doc


def test_the_charts_default_render_is_the_plain_gateway_manifests():
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in _render()}
    plain = {(d["kind"], d["metadata"]["name"]): d for d in _docs("gateway.yaml")}
    assert sorted(rendered) == sorted(plain)
    for key, doc in rendered.items():
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert _without_helm_marks(doc) == plain[key], key
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    annotations = rendered[("Deployment", "agent-sre-gateway")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(values["config"].encode()).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("autoscaling", [True, False])
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(tmp_path, version, autoscaling):
    docs = _render(tmp_path, {"autoscaling": {"enabled": autoscaling}, "serviceMonitor": {"enabled": True}},
                   name="prod")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "Service", "ServiceMonitor",
                            *(["HorizontalPodAutoscaler"] if autoscaling else [])])
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":  # a CRD of the Prometheus Operator: checked below
            kubernetes_validate.validate(doc, version, strict=True)
    deployment = _kind(docs, "Deployment")
    assert deployment["metadata"]["name"] == "prod-gateway"
    assert ("replicas" in deployment["spec"]) is not autoscaling  # the HPA owns the count when it is on
    if not autoscaling:
        assert deployment["spec"]["replicas"] == yaml.safe_load((CHART / "values.yaml").read_text())["replicaCount"]


def test_the_service_monitor_scrapes_both_metrics_ports_of_the_gateway_service(tmp_path):
    docs = _render(tmp_path, {"serviceMonitor": {"enabled": True, "interval": "15s"}})
    monitor = _kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _kind(docs, "Service", "agent-sre-gateway")
    headless = _kind(docs, "Service", "agent-sre-gateway-headless")
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    excluded = {e["key"] for e in selector["matchExpressions"] if e["operator"] == "DoesNotExist"}
    assert excluded & headless["metadata"]["labels"].keys() and not excluded & service["metadata"]["labels"].keys()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [(e["port"], e["interval"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "15s"),
                                                                                ("prometheus", "15s")]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert "ServiceMonitor" not in {d["kind"] for d in _render()}  # off by default: it needs the CRD


def test_a_changed_config_renders_a_new_checksum_so_the_gateways_roll(tmp_path, monkeypatch):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config = values["config"].replace("limit_mib: 1536", "limit_mib: 1024")
    docs = _render(tmp_path, {"config": config})
    assert _kind(docs, "ConfigMap")["data"]["config.yaml"] == config
    _pipeline_config(config, monkeypatch)  # the changed config still loads
    template = _kind(docs, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["checksum/config"] == hashlib.sha256(config.encode()).hexdigest()
    assert template["metadata"]["annotations"]["checksum/config"] != hashlib.sha256(values["config"].encode()).hexdigest()


def test_a_template_error_fails_the_render_with_its_message(tmp_path):
    broken = tmp_path / "chart"
    (broken / "templates").mkdir(parents=True)
    (broken / "Chart.yaml").write_text((CHART / "Chart.yaml").read_text())
    (broken / "values.yaml").write_text("a: 1\n")
    (broken / "templates" / "cm.yaml").write_text("kind: ConfigMap\nx: {{ .Values.b | required \"b is required\" }}\n")
    renderer = SERVERS / "helm-render" / "bin" / "helm-render"
    done = subprocess.run([str(renderer), str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "b is required" in done.stderr
    assert _render(tmp_path, {"b": "here"}, chart=broken) == [{"kind": "ConfigMap", "x": "here"}]
