"""alerts: the events the pipeline's processors derive, for an `events` pipeline.

Every event published on the pipeline's event bus (``alert`` from ``slo``, ``budget``
from ``cost``, ``decision`` from the decisions board, ``anomaly``, ``circuit`` and
``incident`` from ``anomaly`` and ``incidents``; see pipeline/component/events.py) whose kind is in
``kinds`` becomes one row in ``EVENT_SCHEMA``; the events pipeline then routes them to
channel exporters (webhook, Slack, PagerDuty, Opsgenie, Teams, Alertmanager), which
group, deduplicate and retry.
"""

from __future__ import annotations

from pydantic import field_validator

from agent_sre.pipeline.component import Factory, Kind, Receiver
from agent_sre.pipeline.component.config import ConfigModel
from agent_sre.pipeline.component.events import EVENT_KINDS, alert_events


class AlertsReceiverConfig(ConfigModel):
    kinds: list[str] = list(EVENT_KINDS)

    @field_validator("kinds")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in EVENT_KINDS]
        if unknown:
            raise ValueError(f"unknown event kinds {unknown} (valid values: [{', '.join(EVENT_KINDS)}])")
        return v


class AlertsReceiver(Receiver):
    config: AlertsReceiverConfig

    def _start(self, host) -> None:
        self._bus = host.events
        self._bus.subscribe(self._on_events, self.config.kinds)

    def _shutdown(self) -> None:
        self._bus.unsubscribe(self._on_events)

    def _on_events(self, rows: list[dict]) -> None:
        if rows:
            try:
                self.next.consume(alert_events(rows))
            except Exception:  # noqa: BLE001 - a failing channel must not stop what publishes
                self.logger.exception("events could not be handed to the events pipeline")

    def describe(self) -> list[str]:
        return [f"events ({', '.join(self.config.kinds)}) from the pipeline's processors"]


factory = Factory(
    type="alerts",
    kind=Kind.RECEIVER,
    config_model=AlertsReceiverConfig,
    create=AlertsReceiver,
    signals=("events",),
    description="Events the processors derive (alerts, budgets, decisions, anomalies, incidents) for an events pipeline.",
)
