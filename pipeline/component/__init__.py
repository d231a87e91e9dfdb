"""The component framework: what a receiver, processor, exporter or extension is made of.

Component authors import from here: the interfaces and lifecycle (``base``), the config value types
(``config``) and the errors (``errors``).  The registry, the host's capabilities, the event bus and
the decisions board are in their own modules of this package."""

from agent_sre.pipeline.component.base import (
    SUCCESS,
    Component,
    ComponentID,
    Consumer,
    Exporter,
    ExportResult,
    ExportStatus,
    Extension,
    Factory,
    FunctionConsumer,
    Kind,
    Processor,
    ProcessorNode,
    Receiver,
    Settings,
    Stage,
)

__all__ = ["SUCCESS", "Component", "ComponentID", "Consumer", "ExportResult", "ExportStatus", "Exporter", "Extension",
           "Factory", "FunctionConsumer", "Kind", "Processor", "ProcessorNode", "Receiver", "Settings", "Stage"]
