"""Each alert channel against a local HTTP server that checks the documented request strictly.

These are contract checks of the wire format each service documents (Slack incoming webhooks and
Block Kit limits, PagerDuty Events API v2, Opsgenie Alert API v2, Teams Adaptive Cards, the
Alertmanager webhook shape): the real services cannot be reached from here.
"""

from __future__ import annotations

import http.server
import json
import re
import threading

import pytest

from agent_sre.exporters.alerting.notifier import Alert, DeliveryError, Notification
from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.registry import registry
from agent_sre.pipeline.component.telemetry import Telemetry

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LABELS = {"alertname": "AgentSloBurnRate", "slo": "tools", "sli": "tool_call_accuracy", "agent_id": "a1",
          "severity": "page", "rule": "page:14.4x:1h/5m"}
FIRING = Alert("f1", "firing", "page", "page:14.4x:1h/5m", "SLO tools burns " + "x" * 2000, LABELS,
               1_700_000_000_000_000_000)
RESOLVED = Alert("f2", "resolved", "page", "page:6x:6h/30m", "SLO tools no longer burns", {**LABELS, "rule": "r2"},
                 1_700_000_000_000_000_000, 1_700_000_060_000_000_000)
NOTE = Notification('{slo="tools",agent_id="a1"}', {"slo": "tools", "agent_id": "a1"}, [FIRING, RESOLVED])


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 202

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.requests, Recorder.status = [], 202
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", Recorder
    srv.shutdown()


def channel(type_: str, **settings):
    factory = registry.get(Kind.EXPORTER, type_)
    return factory.create(Settings(ComponentID.parse(type_), Kind.EXPORTER, Telemetry()),
                          factory.config_model(**settings))


def test_webhook_posts_the_alertmanager_webhook_shape(server):
    url, rec = server
    channel("webhook", url=f"{url}/hook").deliver(NOTE)
    (req,) = rec.requests
    body = req["json"]
    assert req["path"] == "/hook" and req["headers"]["Content-Type"] == "application/json"
    assert {k: body[k] for k in ("version", "status", "groupKey", "receiver")} == {
        "version": "4", "status": "firing", "groupKey": NOTE.group_key, "receiver": "webhook"}
    assert body["commonLabels"] == {"alertname": "AgentSloBurnRate", "slo": "tools", "sli": "tool_call_accuracy",
                                    "agent_id": "a1", "severity": "page"}
    firing, resolved = body["alerts"]
    assert firing["status"] == "firing" and firing["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["status"] == "resolved" and RFC3339.match(resolved["endsAt"]) and RFC3339.match(firing["startsAt"])
    assert firing["labels"] == LABELS and firing["fingerprint"] == "f1"


def test_slack_blocks_respect_block_kit_limits(server):
    url, rec = server
    channel("slack", webhook_url=url).deliver(NOTE)
    body = rec.requests[0]["json"]
    assert set(body) == {"text", "blocks"} and body["text"].startswith("[FIRING:1] ")
    header, *sections = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150
    assert [s["type"] for s in sections] == ["section", "section"] and len(body["blocks"]) <= 50
    assert all(s["text"]["type"] == "mrkdwn" and len(s["text"]["text"]) <= 3000 for s in sections)
    assert ":large_green_circle: *resolved*" in sections[1]["text"]["text"]


def test_pagerduty_triggers_and_resolves_with_one_dedup_key_per_alert(server):
    url, rec = server
    channel("pagerduty", routing_key="R" * 32, url=f"{url}/v2/enqueue").deliver(NOTE)
    trigger, resolve = (r["json"] for r in rec.requests)
    assert all(r["path"] == "/v2/enqueue" for r in rec.requests)
    assert set(trigger) == {"routing_key", "event_action", "dedup_key", "payload"}
    assert (trigger["event_action"], trigger["dedup_key"], trigger["routing_key"]) == ("trigger", "f1", "R" * 32)
    p = trigger["payload"]
    assert p["severity"] in ("critical", "error", "warning", "info") and p["severity"] == "critical"
    assert len(p["summary"]) <= 1024 and p["source"] == "agent-sre" and RFC3339.match(p["timestamp"])
    assert p["component"] == "a1" and p["group"] == "tools" and p["custom_details"] == LABELS
    assert resolve == {"routing_key": "R" * 32, "event_action": "resolve", "dedup_key": "f2"}


def test_opsgenie_creates_with_alias_and_closes_by_alias(server):
    url, rec = server
    channel("opsgenie", api_key="k-123", api_url=url).deliver(NOTE)
    create, close = rec.requests
    assert create["path"] == "/v2/alerts" and create["headers"]["Authorization"] == "GenieKey k-123"
    c = create["json"]
    assert len(c["message"]) <= 130 and c["alias"] == "f1" and c["priority"] in ("P1", "P2", "P3", "P4", "P5")
    assert c["priority"] == "P1" and "slo:tools" in c["tags"] and c["details"] == LABELS
    assert close["path"] == "/v2/alerts/f2/close?identifierType=alias"
    assert close["headers"]["Authorization"] == "GenieKey k-123" and close["json"]["source"] == "agent-sre"


def test_teams_posts_one_adaptive_card(server):
    url, rec = server
    channel("teams", webhook_url=url).deliver(NOTE)
    body = rec.requests[0]["json"]
    assert body["type"] == "message"
    (att,) = body["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4" and card["$schema"].startswith("http")
    assert card["body"][0]["type"] == "TextBlock" and card["body"][0]["text"].startswith("FIRING")
    facts = [b for b in card["body"] if b["type"] == "FactSet"]
    assert len(facts) == 2 and {"title": "slo", "value": "tools"} in facts[0]["facts"]


def test_alertmanager_posts_api_v2_alerts_with_ends_at_for_resolved(server):
    url, rec = server
    channel("alertmanager", url=url).deliver(NOTE)
    (req,) = rec.requests
    assert req["path"] == "/api/v2/alerts"
    firing, resolved = req["json"]
    assert firing["labels"] == LABELS and "endsAt" not in firing and RFC3339.match(firing["startsAt"])
    assert RFC3339.match(resolved["endsAt"]) and resolved["annotations"]["summary"].startswith("SLO tools")


@pytest.mark.parametrize("status,retryable", [(500, True), (429, True), (400, False), (404, False)])
def test_http_errors_map_to_retryable_or_not(server, status, retryable):
    url, rec = server
    rec.status = status
    with pytest.raises(DeliveryError) as exc:
        channel("webhook", url=url).deliver(NOTE)
    assert exc.value.retryable is retryable and f"HTTP {status}" in str(exc.value)
