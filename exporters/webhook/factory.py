"""webhook: alert notifications as generic JSON, in the shape of Alertmanager's webhook (version 4)."""

from __future__ import annotations

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json, rfc3339
from agent_sre.exporters.alerting.notifier import Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing


class WebhookConfig(RoutingConfig):
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = {}


def webhook_payload(n: Notification, receiver: str) -> dict:
    common = {k: v for k, v in n.alerts[0].labels.items() if all(a.labels.get(k) == v for a in n.alerts)}
    return {
        "version": "4", "groupKey": n.group_key, "truncatedAlerts": 0, "status": n.status, "receiver": receiver,
        "groupLabels": n.group_labels, "commonLabels": common, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": a.state, "labels": a.labels, "annotations": {"summary": a.summary},
                    "startsAt": rfc3339(a.started_ns), "endsAt": rfc3339(a.ended_ns) if a.ended_ns else ZERO_TIME,
                    "generatorURL": "", "fingerprint": a.fingerprint} for a in n.alerts],
    }


class WebhookExporter(ChannelExporter):
    config: WebhookConfig

    def deliver(self, notification: Notification) -> None:
        post_json(self.config.url, webhook_payload(notification, str(self.id)), self.config.headers,
                  self.config.timeout)


factory = Factory(type="webhook", kind=Kind.EXPORTER, config_model=WebhookConfig, create=WebhookExporter,
                  signals=("events",), description="Alert notifications as generic JSON (Alertmanager webhook shape).")
