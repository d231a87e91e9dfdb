"""The admin API's key and TLS: the incident lifecycle needs the key (reads too with ``reads: true``),
the CLI sends it from AGENT_SRE_ADMIN_TOKEN, and the admin endpoint (health check included) serves
HTTPS and mTLS.  Real pipeline, real SDK spans, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agent_sre.pipeline.cli.admin_client import AdminClient, AdminError
from agent_sre.pipeline.component.capabilities import Incidents
from agent_sre.pipeline.service import Service
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml, start_on_free_ports

TOKEN = "admin-token-0123456789abcdef"


def admin_yaml(reads: bool = False, tls: str = "") -> str:
    return f"""    auth:
      reads: {str(reads).lower()}
      keys:
        - name: oncall
          key: ${{env:ADMIN_KEY}}
{tls}"""


@pytest.fixture
def start(tmp_path, monkeypatch):
    monkeypatch.setenv("ADMIN_KEY", TOKEN)
    services: list[Service] = []

    def run(admin: str) -> tuple[RunningPipeline, object]:
        data = tmp_path / f"data-{len(services)}"  # one store per pipeline
        data.mkdir()

        def text(ports: Ports, _attempt: int) -> str:
            text = pipeline_yaml(ports, data, processors="memory_limiter, agent_semconv, incidents, batch")
            text = text.replace("  agent_semconv: {}\n", "  agent_semconv: {}\n  incidents: {}\n")
            return text.replace(f"  admin:\n    endpoint: 127.0.0.1:{ports.admin}\n",
                                f"  admin:\n    endpoint: 127.0.0.1:{ports.admin}\n{admin}")

        service, ports, yaml_text = start_on_free_ports(text)
        services.append(service)
        config = data / "pipeline.yaml"
        config.write_text(yaml_text)
        return RunningPipeline(service, ports, data), config

    yield run
    for s in services:
        s.shutdown()


def open_incident(p: RunningPipeline) -> str:
    """A policy violation (one SDK span) opens an incident; its id."""
    provider = TracerProvider(resource=Resource.create({"service.name": "billing"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{p.ports.grpc}",
                                                                     insecure=True)))
    with provider.get_tracer("tests").start_as_current_span("guard", attributes={
            "agent.did": "did:web:billing", "agent.policy.name": "pii-guard", "agent.policy.decision": "deny"}):
        pass
    p.store.sync()
    (incidents,) = p.service.host.all(Incidents)
    found = eventually(lambda: incidents.list(False), 10)
    assert found, "no incident opened"
    return found[0]["id"]


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def cli(config, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SRE_ADMIN_")}
    return subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def test_an_incident_transition_without_the_token_is_401_and_counted(start):
    p, _ = start(admin_yaml())
    incident = open_incident(p)
    base = f"http://127.0.0.1:{p.ports.admin}/v1/incidents/{incident}"
    status, headers, body = call(f"{base}/resolve", "POST", {"by": "attacker"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(f"{base}/resolve", "POST", {"by": "attacker"}, token="not-the-token-at-all")[0] == 401
    assert call(base)[2]["state"] == "open"
    metrics = p.metrics()
    assert 'agent_sre_auth_failures_total{component="admin",reason="missing",transport="http"} 1.0' in metrics
    assert 'agent_sre_auth_failures_total{component="admin",reason="invalid",transport="http"} 1.0' in metrics
    status, _, body = call(f"{base}/ack", "POST", {"by": "alice"}, token=TOKEN)
    assert (status, body["state"]) == (200, "acknowledged")


def test_reads_need_no_token_unless_reads_is_set(start):
    p, _ = start(admin_yaml())
    assert call(f"http://127.0.0.1:{p.ports.admin}/v1/incidents")[0] == 200
    q, _ = start(admin_yaml(reads=True))
    for path in ("/v1/incidents", "/v1/status", "/v1/slos"):
        assert call(f"http://127.0.0.1:{q.ports.admin}{path}")[0] == 401
        assert call(f"http://127.0.0.1:{q.ports.admin}{path}", token=TOKEN)[0] == 200
    assert call(f"http://127.0.0.1:{q.ports.admin}/")[0] == 200  # the health check stays open


def test_cli_incidents_ack_sends_the_token_from_the_environment(start):
    p, config = start(admin_yaml())
    incident = open_incident(p)
    refused = cli(config, "incidents", "ack", incident, "--by", "alice")
    assert refused.returncode != 0 and "401" in refused.stderr and "AGENT_SRE_ADMIN_TOKEN" in refused.stderr
    done = cli(config, "incidents", "ack", incident, "--by", "alice", env={"AGENT_SRE_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert f"{incident}: acknowledged" in done.stdout


def test_the_admin_endpoint_serves_https_with_the_health_check_and_the_cli_trusts_the_ca(start, pki):
    tls = f"    tls: {{cert_file: {pki / 'server.crt'}, key_file: {pki / 'server.key'}}}\n"
    p, config = start(admin_yaml(tls=tls))
    trusting = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assert call(f"https://127.0.0.1:{p.ports.admin}/", context=trusting)[0] == 200  # health, registered first
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
        call(f"http://127.0.0.1:{p.ports.admin}/v1/incidents")
    incident = open_incident(p)
    done = cli(config, "incidents", "ack", incident, "--by", "alice",
               env={"AGENT_SRE_ADMIN_TOKEN": TOKEN, "AGENT_SRE_ADMIN_CA_FILE": str(pki / "ca.pem")})
    assert done.returncode == 0, done.stderr
    assert f"{incident}: acknowledged" in done.stdout


def test_admin_mtls_refuses_a_client_without_a_certificate(start, pki, monkeypatch):
    tls = (f"    tls: {{cert_file: {pki / 'server.crt'}, key_file: {pki / 'server.key'}, "
           f"client_ca_file: {pki / 'ca.pem'}}}\n")
    p, _ = start(admin_yaml(tls=tls))
    url = f"https://127.0.0.1:{p.ports.admin}"
    monkeypatch.setenv("AGENT_SRE_ADMIN_CA_FILE", str(pki / "ca.pem"))
    with pytest.raises(AdminError):
        AdminClient(url, timeout=5).get_json("/v1/status")
    monkeypatch.setenv("AGENT_SRE_ADMIN_CLIENT_CERT", str(pki / "client.crt"))
    monkeypatch.setenv("AGENT_SRE_ADMIN_CLIENT_KEY", str(pki / "client.key"))
    assert AdminClient(url, timeout=5).get_json("/v1/status")["ready"] is True
