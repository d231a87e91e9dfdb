"""The admin API refuses what a browser can be made to send: a foreign Host (DNS rebinding), a
cross-site Origin, and POST bodies that are not application/json (issue #11, defect 11)."""

from __future__ import annotations

import http.client
import json
import logging

import pytest

from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, RunningPipeline, pipeline_yaml
from tests.pipeline.test_query_api import refused
from tests.processors.incidents.test_incidents_in_pipeline import INCIDENTS, send


def call(p, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One request with exactly these headers (Host included: http.client sends only what it is told)."""
    conn = http.client.HTTPConnection("127.0.0.1", p.ports.admin, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"127.0.0.1:{p.ports.admin}", **(headers or {})}.items():
            if value is not None:
                conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        raw = answer.read()
        try:
            return answer.status, json.loads(raw or b"{}")
        except ValueError:
            return answer.status, {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}
SELECT = json.dumps({"sql": "SELECT 42"}).encode()


def test_a_foreign_host_header_is_refused_counted_and_logged(pipeline, caplog):
    caplog.set_level(logging.WARNING, logger="agent_sre.extension.admin")
    for method, path, body in (("GET", "/v1/status", None), ("POST", "/v1/query", SELECT)):
        status, answer = call(pipeline, method, path, body, {**JSON, "Host": f"attacker.example:{pipeline.ports.admin}"})
        assert status == 403, path
        assert "Host 'attacker.example:" in answer["error"] and "allowed_hosts" in answer["error"]
    assert refused(pipeline, "host") == 2
    assert any(r.name == "agent_sre.extension.admin" and "refused (host)" in r.getMessage() for r in caplog.records)
    status, _ = call(pipeline, "GET", "/v1/status", headers={"Host": None})
    assert status in (400, 403)  # no Host at all: not one of its names either (aiohttp may say 400 first)


def test_the_host_check_passes_the_listeners_own_names_and_ip_addresses_only(pipeline):
    port = pipeline.ports.admin
    assert call(pipeline, "POST", "/v1/query", SELECT, {**JSON, "Host": f"127.0.0.1.nip.io:{port}"})[0] == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", f"10.1.2.3:{port}"):
        status, answer = call(pipeline, "POST", "/v1/query", SELECT, {**JSON, "Host": host})
        assert (status, answer.get("rows")) == (200, [[42]]), host


def test_allowed_hosts_adds_names_and_a_star_allows_any(start_pipeline):
    p = start_pipeline(admin="    allowed_hosts: [sre.internal]\n")
    assert call(p, "GET", "/v1/status", headers={"Host": f"sre.internal:{p.ports.admin}"})[0] == 200
    assert call(p, "GET", "/v1/status", headers={"Host": f"localhost:{p.ports.admin}"})[0] == 200
    assert call(p, "GET", "/v1/status", headers={"Host": "other.example"})[0] == 403
    p.service.shutdown()  # the next one opens the same store
    anyone = start_pipeline(admin="    allowed_hosts: ['*']\n")
    assert call(anyone, "GET", "/v1/status", headers={"Host": "other.example"})[0] == 200


def test_a_post_from_another_origin_is_refused(pipeline):
    port = pipeline.ports.admin
    for origin in ("http://attacker.example", "null", f"http://attacker.example:{port}", f"https://127.0.0.1:{port}"):
        status, answer = call(pipeline, "POST", "/v1/query", SELECT, {**JSON, "Origin": origin})
        assert status == 403, origin
        assert "cross-site request refused" in answer["error"]
    assert refused(pipeline, "origin") == 4
    status, _ = call(pipeline, "POST", "/v1/query", SELECT, {**JSON, "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200  # its own origin (a console served by the API itself)
    assert call(pipeline, "GET", "/v1/status", headers={"Origin": "http://attacker.example"})[0] == 200


def test_allowed_origins_may_post(start_pipeline):
    p = start_pipeline(admin="    allowed_origins: ['https://console.example.com']\n")
    status, answer = call(p, "POST", "/v1/query", SELECT, {**JSON, "Origin": "https://console.example.com"})
    assert (status, answer["rows"]) == (200, [[42]])


def test_an_allowed_origin_that_is_not_scheme_host_port_is_a_config_error(tmp_path):
    text = pipeline_yaml(Ports.allocate(), tmp_path, admin="    allowed_origins: [console.example.com/app]\n")
    with pytest.raises(ConfigError, match=r"extensions::admin.*scheme://host\[:port\]"):
        parse_config(text, "test")


def test_post_bodies_a_browser_may_send_cross_site_are_refused_with_415(pipeline):
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", None):
        status, answer = call(pipeline, "POST", "/v1/query", SELECT, {"Content-Type": content_type})
        assert status == 415, content_type
        assert "must be application/json" in answer["error"]
    assert refused(pipeline, "content_type") == 5
    status, _ = call(pipeline, "POST", "/v1/query", SELECT, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_a_cross_site_text_plain_post_cannot_resolve_an_incident(tmp_path):
    """Issue #11: a text/plain cross-site POST acknowledged and resolved an incident as by: "attacker"."""
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, incidents, batch")
    service = Service(parse_config(text.replace("  batch:\n", INCIDENTS + "  batch:\n", 1), "test"))
    service.start()
    p = RunningPipeline(service, ports, tmp_path)
    try:
        check = {"agent.did": "a1", "agent.policy.name": "pii-guard", "agent.policy.decision": "deny"}
        send(service, [(check, False)] * 3)
        (incident,) = call(p, "GET", "/v1/incidents")[1]["incidents"]
        path = f"/v1/incidents/{incident['id']}"
        forged = json.dumps({"by": "attacker", "why": "x"}).encode()
        for headers in ({"Content-Type": "text/plain", "Origin": "http://attacker.example"},
                        {"Content-Type": "text/plain"}, {**JSON, "Origin": "http://attacker.example"}):
            for action in ("ack", "resolve"):
                assert call(p, "POST", f"{path}/{action}", forged, headers)[0] in (403, 415), (headers, action)
        shown = call(p, "GET", path)[1]
        assert shown["state"] == "open" and "attacker" not in json.dumps(shown["log"])
        status, resolved = call(p, "POST", f"{path}/resolve", json.dumps({"by": "bob", "why": "fixed"}).encode(), JSON)
        assert (status, resolved["state"]) == (200, "resolved")
    finally:
        service.shutdown()
