"""pagerduty: alerts as PagerDuty Events API v2 events: trigger on firing, resolve with the same dedup_key."""

from __future__ import annotations

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json, rfc3339
from agent_sre.exporters.alerting.notifier import Alert, Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind

SEVERITY = {"page": "critical", "ticket": "warning"}  # Events API v2: critical, error, warning, info


class PagerDutyConfig(RoutingConfig):
    routing_key: str = Field(min_length=1)  # the integration key of an Events API v2 integration
    url: str = Field(default="https://events.pagerduty.com/v2/enqueue", pattern=r"^https?://")
    source: str = "agent-sre"


def pagerduty_event(a: Alert, routing_key: str, source: str) -> dict:
    if a.state == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": a.fingerprint}
    return {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": a.fingerprint,
        "payload": {"summary": a.summary[:1024], "source": source, "severity": SEVERITY.get(a.severity, "error"),
                    "timestamp": rfc3339(a.started_ns), "component": a.labels.get("agent_id", ""),
                    "group": a.labels.get("slo", ""), "class": a.name, "custom_details": a.labels},
    }


class PagerDutyExporter(ChannelExporter):
    config: PagerDutyConfig

    def deliver(self, notification: Notification) -> None:
        for alert in notification.alerts:  # the Events API takes one event per request
            post_json(self.config.url, pagerduty_event(alert, self.config.routing_key, self.config.source),
                      timeout=self.config.timeout)


factory = Factory(type="pagerduty", kind=Kind.EXPORTER, config_model=PagerDutyConfig, create=PagerDutyExporter,
                  signals=("events",), description="Alerts as PagerDuty Events API v2 trigger/resolve events.")
