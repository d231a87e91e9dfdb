"""The component registry: built-in factories plus third-party plugins.

Plugins register through the ``agent_sre.components`` entry-point group; each
entry point names a ``Factory``.  Conflicts are rejected at registration.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from agent_sre.pipeline.component import Factory, Kind

log = logging.getLogger("agent_sre.registry")

BUILTIN = (
    "agent_sre.receivers.otlp.factory:factory",
    "agent_sre.processors.memory_limiter.factory:factory",
    "agent_sre.processors.batch.factory:factory",
    "agent_sre.processors.agent_semconv.factory:factory",
    "agent_sre.processors.redaction.factory:factory",
    "agent_sre.processors.sli.factory:factory",
    "agent_sre.processors.cost.factory:factory",
    "agent_sre.processors.anomaly.factory:factory",
    "agent_sre.processors.incidents.factory:factory",
    "agent_sre.processors.slo.factory:factory",
    "agent_sre.exporters.duckdb.factory:factory",
    "agent_sre.exporters.debug.factory:factory",
    "agent_sre.exporters.otlp.factory:factory",
    "agent_sre.exporters.otlphttp.factory:factory",
    "agent_sre.exporters.langfuse.factory:factory",
    "agent_sre.exporters.loadbalancing.factory:factory",
    "agent_sre.exporters.datadog.factory:factory",
    "agent_sre.exporters.clickhouse.factory:factory",
    "agent_sre.exporters.file.factory:factory",
    "agent_sre.exporters.mlflow.factory:factory",
    "agent_sre.exporters.wandb.factory:factory",
    "agent_sre.exporters.prometheus.factory:factory",
    "agent_sre.exporters.prometheusremotewrite.factory:factory",
    "agent_sre.exporters.webhook.factory:factory",
    "agent_sre.exporters.slack.factory:factory",
    "agent_sre.exporters.pagerduty.factory:factory",
    "agent_sre.exporters.opsgenie.factory:factory",
    "agent_sre.exporters.teams.factory:factory",
    "agent_sre.exporters.alertmanager.factory:factory",
    "agent_sre.receivers.alerts.factory:factory",
    "agent_sre.pipeline.service.health_check:factory",
    "agent_sre.pipeline.service.admin:factory",
    "agent_sre.pipeline.service.console:factory",
    "agent_sre.processors.replay.factory:factory",
    "agent_sre.processors.chaos.factory:factory",
    "agent_sre.processors.delivery.factory:factory",
)

ENTRY_POINT_GROUP = "agent_sre.components"


class Registry:
    def __init__(self) -> None:
        self._factories: dict[tuple[Kind, str], Factory] = {}
        self._loaded = False

    def register(self, factory: Factory) -> None:
        key = (factory.kind, factory.type)
        if key in self._factories and self._factories[key] is not factory:
            raise ValueError(f"{factory.kind.value} type {factory.type!r} is already registered")
        self._factories[key] = factory

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ref in BUILTIN:
            self.register(_resolve(ref))
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                self.register(ep.load())
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the pipeline
                log.error("plugin %s (%s) could not be loaded: %s", ep.name, ep.value, exc)

    def get(self, kind: Kind, type_: str) -> Factory | None:
        self._load()
        return self._factories.get((kind, type_))

    def types(self, kind: Kind) -> list[str]:
        self._load()
        return sorted(t for k, t in self._factories if k is kind)

    def all(self) -> list[Factory]:
        self._load()
        return sorted(self._factories.values(), key=lambda f: (f.kind.value, f.type))


def _resolve(ref: str) -> Factory:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


registry = Registry()
