"""Component interfaces: receivers, processors, exporters, extensions.

The data contract is one method: a ``Consumer`` takes a batch (a ``pyarrow.Table``
in ``schema.SPAN_SCHEMA``) and returns once the batch reached its first durable
point, or raises ``RefusedError`` / ``PermanentError``.  A plain function can be a
consumer.

Lifecycle is separate from data: ``start(host)`` and ``shutdown()`` are idempotent,
and ``shutdown()`` without ``start()`` is safe.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the framework must not load Arrow (agent-sre query starts fast)
    import pyarrow as pa
    from pydantic import BaseModel

if TYPE_CHECKING:
    from agent_sre.pipeline.component.host import Host
    from agent_sre.pipeline.component.telemetry import Telemetry


@runtime_checkable
class Consumer(Protocol):
    def consume(self, batch: pa.Table) -> None: ...


class FunctionConsumer:
    """Adapts a plain function to the Consumer protocol."""

    def __init__(self, fn: Callable[[pa.Table], None]):
        self._fn = fn

    def consume(self, batch: pa.Table) -> None:
        self._fn(batch)


class Kind(str, Enum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    EXTENSION = "extension"

    @property
    def section(self) -> str:
        return self.value + "s"


@dataclass(frozen=True)
class ComponentID:
    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentID:
        type_, _, name = text.partition("/")
        return cls(type_, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


@dataclass
class Settings:
    """What a factory gets besides the config: identity, logger, self-telemetry."""

    id: ComponentID
    kind: Kind
    telemetry: Telemetry
    logger: logging.Logger = field(init=False)

    def __post_init__(self) -> None:
        self.logger = logging.getLogger(f"agent_sre.{self.kind.value}.{self.id}")


class Component:
    """Base for all components: idempotent lifecycle."""

    def __init__(self, settings: Settings, config: Any):
        self.settings = settings
        self.config = config
        self.logger = settings.logger
        self._started = False

    @property
    def id(self) -> ComponentID:
        return self.settings.id

    def start(self, host: Host) -> None:
        if self._started:
            return
        self._started = True
        self._start(host)

    def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        self._shutdown()

    def _start(self, host: Host) -> None:  # noqa: B027 - optional hook
        pass

    def _shutdown(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> list[str]:
        """Lines printed at startup: what this component listens on or writes to."""
        return []


class Receiver(Component):
    def __init__(self, settings: Settings, config: Any, next_consumer: Consumer):
        super().__init__(settings, config)
        self.next = next_consumer


class Processor(Component):
    def process(self, batch: pa.Table) -> pa.Table | None:
        return batch

    def bind(self, next_consumer: Consumer) -> Consumer:
        """The consumer that runs this processor then hands on; stages that queue override it."""
        return ProcessorNode(self, next_consumer)


class Stage(Processor):
    """An SRE stage after the durable point (sli, slo, anomaly, incidents): declared in a pipeline's
    ``processors`` like any component, so it is configured, validated, started and stopped in order,
    but it is not on the data path.  Its input is what the store committed, taken through the
    ``SpanStore`` capability (rollups in the insert transaction, commit callbacks), never the
    client's batch."""

    def process(self, batch: pa.Table) -> pa.Table | None:
        return batch

    def bind(self, next_consumer: Consumer) -> Consumer:
        return next_consumer  # off the data path: the batch goes straight on


class ProcessorNode:
    def __init__(self, processor: Processor, next_consumer: Consumer):
        self.processor = processor
        self.next = next_consumer

    def consume(self, batch: pa.Table) -> None:
        out = self.processor.process(batch)
        if out is not None and out.num_rows:
            self.next.consume(out)


class ExportStatus(str, Enum):
    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class ExportResult:
    status: ExportStatus
    message: str = ""
    retry_after: float | None = None
    # With SUCCESS from a queued exporter's send: rows (a pa.Table) it did not send yet and wants tried again
    # later without holding up what is queued behind them; the exporter helper queues them again (on disk
    # with a persistent queue) before it acks the batch.
    later: Any = None

    @property
    def ok(self) -> bool:
        return self.status is ExportStatus.SUCCESS


SUCCESS = ExportResult(ExportStatus.SUCCESS)


class Exporter(Component):
    """``export`` returns its failures; it never raises into the data path.  An exporter that
    ``blocks`` is asked ``has_room`` before a batch is stored anywhere (back-pressure: the fan-out
    refuses the batch, retryably, while it says no)."""

    blocks = False

    def export(self, batch: pa.Table) -> ExportResult:
        raise NotImplementedError

    def has_room(self) -> bool:
        return True


class Extension(Component):
    pass


@dataclass(frozen=True)
class Factory:
    """Registered under ``type``; ``create`` builds a component from a validated config."""

    type: str
    kind: Kind
    config_model: builtins.type[BaseModel]  # `type` in this class body is the field above
    create: Callable[..., Component]
    signals: tuple[str, ...] = ("traces",)
    description: str = ""
