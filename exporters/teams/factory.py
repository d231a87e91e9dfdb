"""teams: alert notifications to a Microsoft Teams incoming webhook (Workflows), as an Adaptive Card."""

from __future__ import annotations

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json
from agent_sre.exporters.alerting.notifier import Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind


class TeamsConfig(RoutingConfig):
    webhook_url: str = Field(pattern=r"^https?://")


def teams_payload(n: Notification) -> dict:
    body: list[dict] = [{"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True,
                         "color": "Attention" if n.status == "firing" else "Good",
                         "text": f"{n.status.upper()}: " + ", ".join(f"{k}={v}" for k, v in n.group_labels.items())}]
    for a in n.alerts:
        body.append({"type": "TextBlock", "wrap": True, "text": f"{a.state}: {a.summary}"})
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in sorted(a.labels.items())]})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "body": body}
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


class TeamsExporter(ChannelExporter):
    config: TeamsConfig

    def deliver(self, notification: Notification) -> None:
        post_json(self.config.webhook_url, teams_payload(notification), timeout=self.config.timeout)


factory = Factory(type="teams", kind=Kind.EXPORTER, config_model=TeamsConfig, create=TeamsExporter,
                  signals=("events",), description="Alert notifications to Microsoft Teams as an Adaptive Card.")
