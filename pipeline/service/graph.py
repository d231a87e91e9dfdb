"""The service: builds the pipeline graph from a validated config and runs its lifecycle.

    receiver ─▶ fan-out over pipelines ─▶ processor ─▶ … ─▶ batch (group commit) ─▶ … ─▶ exporter fan-out

Exporters are shared by the pipelines that name them; processors are created
per pipeline (as in the collector).  Start order: extensions, exporters,
processors, receivers; shutdown is the reverse, so every stage drains into a
still-running next stage.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import pyarrow as pa
from aiohttp import web

from agent_sre.pipeline.component import (
    Component,
    Consumer,
    Exporter,
    ExportStatus,
    Kind,
    Processor,
    Receiver,
    Settings,
)
from agent_sre.pipeline.component.capabilities import MemoryLimit, SpanStore
from agent_sre.pipeline.component.errors import PermanentError, RefusedError
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.schema import signal_of
from agent_sre.pipeline.service.config import PipelineConfig

log = logging.getLogger("agent_sre.service")


class ExporterFanout:
    """Hands a batch to every exporter of a pipeline.

    Synchronous exporters (the duckdb store: the durable point the client waits for) go first; if
    one fails, the batch is refused (retryable) and nothing was queued anywhere, so the client's
    retry sends nothing twice.  Before them, a queued exporter with ``on_full: block`` whose queue is
    full refuses the batch (retryable: the client backs off and nobody has stored it yet).  Then every
    queued exporter (the exporter helper) takes the batch into its own queue; a full queue with
    ``on_full: drop`` is that exporter's loss, counted as ``enqueue_failed`` and logged, and refuses
    the batch only when no other exporter took it (a retry would then duplicate nothing)."""

    def __init__(self, exporters: list[Exporter], telemetry: Telemetry):
        self.sync = [e for e in exporters if not getattr(e, "queued", False)]
        self.queued = [e for e in exporters if getattr(e, "queued", False)]
        self.exporters = exporters
        self.telemetry = telemetry

    def consume(self, batch: pa.Table) -> None:
        full = [e for e in self.queued if e.blocks and not e.has_room()]
        if full:
            raise RefusedError("; ".join(f"{e.id}: sending queue is full (on_full: block); retry when it drains"
                                         for e in full), 1.0)
        self._consume_sync(batch)
        refused = []
        for exp in self.queued:
            result = exp.export(batch)  # enqueues; never raises (a bug would be caught by the helper)
            if not result.ok:
                refused.append((exp, result))
                exp.logger.error("%d spans not taken: %s", batch.num_rows, result.message)
        if refused and len(refused) == len(self.queued) and not self.sync:
            raise RefusedError("; ".join(r.message for _, r in refused),
                               max(r.retry_after or 1.0 for _, r in refused))

    def _consume_sync(self, batch: pa.Table) -> None:
        failures = []
        t = self.telemetry
        for exp in self.sync:
            name = str(exp.id)
            started = time.perf_counter()
            try:
                result = exp.export(batch)
            except Exception as exc:  # noqa: BLE001 - exporters return failures; a raise is a bug, not a crash
                exp.logger.exception("export raised")
                result = None
                failures.append((exp, ExportStatus.RETRYABLE, f"{name}: {exc}", 1.0))
            t.exporter_latency.labels(name).observe(time.perf_counter() - started)
            if result is not None and result.ok:
                t.sent(signal_of(batch.schema), name).inc(batch.num_rows)
            else:
                t.failed(signal_of(batch.schema), name).inc(batch.num_rows)
                if result is not None:
                    failures.append((exp, result.status, f"{name}: {result.message}", result.retry_after or 1.0))
        if not failures:
            return
        message = "; ".join(f[2] for f in failures)
        if all(f[1] is ExportStatus.PERMANENT for f in failures):
            raise PermanentError(message)
        raise RefusedError(message, max(f[3] for f in failures))


class Fanout:
    def __init__(self, consumers: list[Consumer]):
        self.consumers = consumers

    def consume(self, batch: pa.Table) -> None:
        for c in self.consumers:
            c.consume(batch)


class SignalRouter:
    """A receiver's consumer: each batch goes to the pipelines of its signal (traces, metrics, logs,
    events: ``schema.signal_of``); ``signals`` says which the receiver should accept at all."""

    def __init__(self, by_signal: dict[str, list[Consumer]]):
        self.heads = {sig: cs[0] if len(cs) == 1 else Fanout(cs) for sig, cs in by_signal.items()}
        self.signals = tuple(self.heads)

    def consume(self, batch: pa.Table) -> None:
        signal = signal_of(batch.schema)
        head = self.heads.get(signal)
        if head is None:
            raise PermanentError(f"no {signal} pipeline takes this receiver's data")
        head.consume(batch)


class Service:
    def __init__(self, config: PipelineConfig, telemetry: Telemetry | None = None):
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.host = Host(self.telemetry)
        self.extensions: list[Component] = []
        self.exporters: dict[str, Exporter] = {}
        self.processors: list[Processor] = []
        self.receivers: list[Receiver] = []
        self._started = False
        self._build()

    def _settings(self, kind: Kind, cc) -> Settings:
        return Settings(cc.id, kind, self.telemetry)

    def _build(self) -> None:
        # The config takes each component's factory from the registry by kind, and a factory of a kind
        # creates that kind of component (Factory.create is typed for all kinds: the casts say which).
        cfg = self.config
        assert cfg.service is not None
        for name in cfg.service.extensions:
            cc = cfg.extensions[name]
            ext = cc.factory.create(self._settings(Kind.EXTENSION, cc), cc.settings)
            self.extensions.append(ext)
            self.host.components[f"extensions::{name}"] = ext
        heads: dict[str, dict[str, list[Consumer]]] = {}  # receiver -> signal -> pipeline heads
        for pid, spec in cfg.service.pipelines.items():
            exporters = []
            for name in spec.exporters:
                if name not in self.exporters:
                    cc = cfg.exporters[name]
                    self.exporters[name] = cast(Exporter, cc.factory.create(self._settings(Kind.EXPORTER, cc),
                                                                            cc.settings))
                    self.host.components[f"exporters::{name}"] = self.exporters[name]
                exporters.append(self.exporters[name])
            consumer: Consumer = ExporterFanout(exporters, self.telemetry)
            for name in reversed(spec.processors):
                cc = cfg.processors[name]
                proc = cast(Processor, cc.factory.create(self._settings(Kind.PROCESSOR, cc), cc.settings))
                self.processors.insert(0, proc)
                self.host.components[f"processors::{name}@{pid}"] = proc
                consumer = proc.bind(consumer)
            for name in spec.receivers:
                heads.setdefault(name, {}).setdefault(pid.partition("/")[0], []).append(consumer)
        for name, by_signal in heads.items():
            cc = cfg.receivers[name]
            rec = cast(Receiver, cc.factory.create(self._settings(Kind.RECEIVER, cc), cc.settings,
                                                   SignalRouter(by_signal)))
            self.receivers.append(rec)
            self.host.components[f"receivers::{name}"] = rec
        self.host.memory_limits = [p for p in self.processors if isinstance(p, MemoryLimit)]
        limits = [m.memory_limit_bytes for m in self.host.memory_limits]
        self.host.memory_limit_bytes = min(limits) if limits else None

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            self._start_metrics_endpoint()
            for comp in [*self.extensions, *self.exporters.values()]:
                comp.start(self.host)
            self._attach_event_history()
            for comp in [*self.processors, *self.receivers]:
                comp.start(self.host)
            self.host.decisions.start()
        except Exception:
            self.shutdown()
            raise
        self.host.ready = True

    def components_of(self, type_: str) -> list[Component]:
        """The running components of one type (for tests and diagnostics; components themselves find
        each other through capabilities)."""
        return [c for c in self.host.components.values() if c.id.type == type_]

    def _attach_event_history(self) -> None:
        """Derived events are kept in the store's ``events`` table when there is one store."""
        # SpanStore is a Protocol, which mypy does not take for type[T] (python/mypy#4717).
        stores = self.host.all(SpanStore)  # type: ignore[type-abstract]
        if len(stores) == 1:
            self.host.events.persist_to(stores[0].record_events)
            self.host.decisions.restore(stores[0].read)

    def _start_metrics_endpoint(self) -> None:
        assert self.config.service is not None
        address = self.config.service.telemetry.metrics.address
        if not address:
            return

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.telemetry.exposition(),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        self.host.http.add_route(address, "GET", "/metrics", metrics)

    def describe(self) -> list[str]:
        lines = []
        for comp in [*self.receivers, *self.exporters.values(), *self.extensions]:
            lines.extend(comp.describe())
        assert self.config.service is not None
        address = self.config.service.telemetry.metrics.address
        if address:
            lines.append(f"pipeline metrics on http://{address}/metrics")
        return lines

    def shutdown(self) -> None:
        self.host.ready = False
        self.host.decisions.shutdown()
        for comp in [*self.receivers, *self.processors, *self.exporters.values(), *reversed(self.extensions)]:
            try:
                comp.shutdown()
            except Exception:  # noqa: BLE001 - keep shutting the rest down
                log.exception("shutdown of %s failed", comp.id)
        self.host.events.persist_to(None)
        self.host.http.shutdown()
        self._started = False
