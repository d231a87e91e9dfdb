"""alertmanager: alerts posted to Prometheus Alertmanager's API v2 (POST /api/v2/alerts).

Alertmanager groups, silences and routes them itself, so this channel forwards at
once (no group wait) and re-posts firing alerts every ``repeat_interval`` (Alertmanager
resolves an alert it has not heard of for its resolve_timeout). A resolved alert is
posted with ``endsAt``, so the resolution propagates to Alertmanager's receivers.
"""

from __future__ import annotations

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json, rfc3339
from agent_sre.exporters.alerting.notifier import Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind
from agent_sre.pipeline.component.config import Duration


class AlertmanagerConfig(RoutingConfig):
    url: str = Field(pattern=r"^https?://")  # e.g. http://127.0.0.1:9093
    group_wait: Duration = Field(default="0s", ge=0)
    group_interval: Duration = Field(default="0s", ge=0)
    repeat_interval: Duration = Field(default="1m", gt=0)
    generator_url: str = ""


def alertmanager_alerts(n: Notification, generator_url: str = "") -> list[dict]:
    out = []
    for a in n.alerts:
        alert = {"labels": a.labels, "annotations": {"summary": a.summary}, "startsAt": rfc3339(a.started_ns),
                 "generatorURL": generator_url}
        if a.ended_ns:
            alert["endsAt"] = rfc3339(a.ended_ns)
        out.append(alert)
    return out


class AlertmanagerExporter(ChannelExporter):
    config: AlertmanagerConfig

    def deliver(self, notification: Notification) -> None:
        post_json(self.config.url.rstrip("/") + "/api/v2/alerts",
                  alertmanager_alerts(notification, self.config.generator_url), timeout=self.config.timeout)


factory = Factory(type="alertmanager", kind=Kind.EXPORTER, config_model=AlertmanagerConfig,
                  create=AlertmanagerExporter, signals=("events",),
                  description="Alerts posted to Prometheus Alertmanager (API v2), resolutions included.")
