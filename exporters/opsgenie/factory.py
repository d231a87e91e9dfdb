"""opsgenie: alerts created in Opsgenie (Alert API v2) with the fingerprint as alias, closed on resolve."""

from __future__ import annotations

import urllib.parse

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json
from agent_sre.exporters.alerting.notifier import Alert, Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind

PRIORITY = {"page": "P1", "ticket": "P3"}


class OpsgenieConfig(RoutingConfig):
    api_key: str = Field(min_length=1)
    api_url: str = Field(default="https://api.opsgenie.com", pattern=r"^https?://")  # EU: https://api.eu.opsgenie.com


def opsgenie_create(a: Alert) -> dict:
    return {"message": a.summary[:130], "alias": a.fingerprint, "description": a.summary[:15000],
            "priority": PRIORITY.get(a.severity, "P3"), "source": "agent-sre",
            "tags": [f"{k}:{v}" for k, v in sorted(a.labels.items())][:20], "details": a.labels,
            "entity": a.labels.get("agent_id", "")}


class OpsgenieExporter(ChannelExporter):
    config: OpsgenieConfig

    def deliver(self, notification: Notification) -> None:
        base = self.config.api_url.rstrip("/") + "/v2/alerts"
        headers = {"Authorization": f"GenieKey {self.config.api_key}"}
        for a in notification.alerts:
            if a.state == "firing":
                post_json(base, opsgenie_create(a), headers, self.config.timeout)
            else:
                url = f"{base}/{urllib.parse.quote(a.fingerprint, safe='')}/close?identifierType=alias"
                post_json(url, {"source": "agent-sre", "note": a.summary[:25000]}, headers, self.config.timeout)


factory = Factory(type="opsgenie", kind=Kind.EXPORTER, config_model=OpsgenieConfig, create=OpsgenieExporter,
                  signals=("events",), description="Alerts created and closed in Opsgenie (Alert API v2).")
