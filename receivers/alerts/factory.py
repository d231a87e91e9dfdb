"""alerts: the alerts the pipeline's `slo` processors raise, as events for an `events` pipeline.

Each firing or resolved transition becomes one row in ``EVENT_SCHEMA``; the
events pipeline then routes them to channel exporters (webhook, Slack,
PagerDuty, Opsgenie, Teams, Alertmanager), which group, deduplicate and retry.
"""

from __future__ import annotations

from agent_sre.pipeline.component import Factory, Kind, Receiver
from agent_sre.pipeline.config import ConfigModel
from agent_sre.pipeline.events import alert_events


class AlertsReceiverConfig(ConfigModel):
    pass


class AlertsReceiver(Receiver):
    config: AlertsReceiverConfig

    def _start(self, host) -> None:
        sources = host.find("processors", type_="slo")
        if not sources:
            raise ValueError(f"{self.id}: no slo processor in any pipeline raises alerts")
        for proc in sources:
            proc.subscribe(self._on_alerts)

    def _on_alerts(self, rows: list[dict]) -> None:
        if rows:
            try:
                self.next.consume(alert_events(rows))
            except Exception:  # noqa: BLE001 - a failing channel must not stop SLO evaluation
                self.logger.exception("alerts could not be handed to the events pipeline")

    def describe(self) -> list[str]:
        return ["alerts from the slo processors, as events"]


factory = Factory(
    type="alerts",
    kind=Kind.RECEIVER,
    config_model=AlertsReceiverConfig,
    create=AlertsReceiver,
    signals=("events",),
    description="The alerts the slo processors raise, as events for an events pipeline.",
)
