"""What a running component can reach: shared HTTP endpoints, self-telemetry and its peers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent_sre.pipeline.decisions import DecisionBoard
from agent_sre.pipeline.events import EventBus
from agent_sre.pipeline.httpserver import HttpServers
from agent_sre.pipeline.telemetry import Telemetry

if TYPE_CHECKING:
    from agent_sre.pipeline.component import Component, ComponentID


@dataclass
class Host:
    telemetry: Telemetry
    http: HttpServers = field(default_factory=HttpServers)
    components: dict[str, Component] = field(default_factory=dict)  # "exporters::duckdb" -> component
    ready: bool = False
    events: EventBus = field(default_factory=EventBus)  # derived events: alerts, budgets, decisions, ...
    decisions: DecisionBoard = field(init=False)  # per-agent decisions from cost budgets and breakers

    def __post_init__(self) -> None:
        self.decisions = DecisionBoard(self.events)

    def find(self, section: str, id_: ComponentID | str | None = None, type_: str | None = None) -> list:
        """Components of one section, by id or by type."""
        out = []
        for key, comp in self.components.items():
            sec, _, cid = key.partition("::")
            if sec != section:
                continue
            if id_ is not None and cid != str(id_):
                continue
            if type_ is not None and comp.id.type != type_:
                continue
            out.append(comp)
        return out

    def span_store(self, storage: str, user: str):
        """The store of the duckdb exporter named ``storage`` (or of the only one, when empty),
        for processors that keep their state next to the spans; ``ValueError`` naming ``user`` if
        there is not exactly one running."""
        found = self.find("exporters", id_=storage or None, type_="duckdb")
        if len(found) != 1 or found[0].store is None:
            raise ValueError(f"{user}: needs exactly one running duckdb exporter"
                             + (f" (storage: {storage!r})" if storage else "; name it with 'storage'"))
        return found[0].store
