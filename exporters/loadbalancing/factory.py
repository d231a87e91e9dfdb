"""loadbalancing: every span of a trace (or of an agent) to the same gateway, by consistent hashing.

One queue (the exporter helper's: bounded, optionally on disk) holds what the pipeline handed over.
A consumer takes a batch, splits it column-wise by the ring of the backends that are *up* and sends
each piece with that backend's own ``otlp`` / ``otlphttp`` exporter (built through its public factory,
queue and retries off: one attempt per call).  A piece that fails retryably marks its backend down and
is routed again at once over the ring without it (its arcs go to the next node); a permanent failure
drops the piece, counted.  The batch leaves the queue only when every row was delivered; with no
backend up, the helper backs off and retries the rows still undelivered (never the delivered ones).
A backend marked down is probed (an empty export) every ``probe_interval`` and rejoins the ring when
it answers; the DNS resolver re-resolves every ``interval`` and the ring follows the answer.
"""

from __future__ import annotations

import threading
import weakref

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent_sre.exporters.helper.sender import QueuedExporter
from agent_sre.exporters.loadbalancing.config import LoadBalancingConfig
from agent_sre.exporters.loadbalancing.resolver import Resolver
from agent_sre.exporters.loadbalancing.ring import Ring, routing_keys
from agent_sre.exporters.otlp.factory import factory as otlp_factory
from agent_sre.exporters.otlphttp.factory import factory as otlphttp_factory
from agent_sre.pipeline.component import (
    SUCCESS,
    ComponentID,
    ExportResult,
    ExportStatus,
    Factory,
    Kind,
    Settings,
)
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.schema import signal_of

_PROTOCOLS = {"otlp": otlp_factory, "otlphttp": otlphttp_factory}
_METRICS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per service registry: created once


def _metrics(registry: CollectorRegistry) -> dict:
    if registry not in _METRICS:
        _METRICS[registry] = {
            "backends": Gauge("agent_sre_loadbalancer_num_backends", "Backends the resolver returned.",
                              ["exporter"], registry=registry),
            "up": Gauge("agent_sre_loadbalancer_backends_up", "Backends in the ring now (not marked down).",
                        ["exporter"], registry=registry),
            "resolutions": Counter("agent_sre_loadbalancer_num_resolutions", "Resolutions, by outcome.",
                                   ["exporter", "resolver", "success"], registry=registry),
            "outcome": Counter("agent_sre_loadbalancer_backend_outcome", "Sends to a backend, by outcome.",
                               ["exporter", "endpoint", "success"], registry=registry),
            "rerouted": Counter("agent_sre_loadbalancer_rerouted_spans", "Spans sent to the ring's next "
                                "backend because theirs failed.", ["exporter"], registry=registry),
        }
    return _METRICS[registry]


class LoadBalancingExporter(QueuedExporter):
    config: LoadBalancingConfig

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._factory = _PROTOCOLS[config.protocol.kind]
        self._resolver = Resolver(config.resolver, http=config.protocol.kind == "otlphttp")
        self._lock = threading.Lock()
        self._backends: dict[str, QueuedExporter] = {}
        self._endpoints: list[str] = []
        self._down: set[str] = set()
        self._ring = Ring([], config.virtual_nodes)
        # id(batch) -> its rows no attempt delivered yet; an entry goes with its batch (tables are unhashable)
        self._undelivered: dict[int, pa.Table] = {}
        self._m = _metrics(settings.telemetry.registry)
        self._backend_host = None
        self._empty_like: pa.Table | None = None  # the schema of what was sent, for the probes
        self._prober = PeriodicWorker(f"{self.id}-probe", config.probe_interval, self._probe, self.logger)
        interval = self._resolver.interval
        self._resolving = PeriodicWorker(f"{self.id}-resolve", interval, self.resolve, self.logger) \
            if interval else None

    # --- backends and the ring ------------------------------------------------------------------

    def _backend(self, endpoint: str) -> QueuedExporter:
        cfg = self._factory.config_model.model_validate({
            **self.config.protocol.template, "endpoint": endpoint,
            "sending_queue": {"enabled": False}, "retry_on_failure": {"enabled": False}})
        name = f"{self.id.name or self.id.type}/{endpoint}"
        exporter = self._factory.create(Settings(ComponentID(self._factory.type, name), Kind.EXPORTER,
                                                 self.settings.telemetry), cfg)
        assert isinstance(exporter, QueuedExporter) and self._backend_host is not None
        exporter.start(self._backend_host)
        return exporter

    def resolve(self) -> list[str]:
        """Ask the resolver; build exporters for new endpoints, stop those that left; rebuild the ring."""
        label = str(self.id)
        try:
            endpoints = self._resolver.resolve()
        except OSError as exc:
            self._m["resolutions"].labels(label, self._resolver.kind, "false").inc()
            self.logger.warning("resolving the backends failed, keeping %s: %s", self._endpoints, exc)
            return self._endpoints
        self._m["resolutions"].labels(label, self._resolver.kind, "true").inc()
        if endpoints == self._endpoints:
            return endpoints
        added = [e for e in endpoints if e not in self._backends]
        fresh = {e: self._backend(e) for e in added}
        with self._lock:
            gone = {e: b for e, b in self._backends.items() if e not in endpoints}
            self._backends = {**{e: b for e, b in self._backends.items() if e in endpoints}, **fresh}
            self._endpoints = endpoints
            self._down &= set(endpoints)
            self._rebuild()
        for backend in gone.values():  # a send in progress there fails and is routed again
            backend.shutdown()
        self.logger.info("backends now %s (added %s, removed %s)", endpoints, added, sorted(gone))
        self._m["backends"].labels(label).set(len(endpoints))
        return endpoints

    def _rebuild(self) -> None:  # with the lock held
        self._ring = Ring([e for e in self._endpoints if e not in self._down], self.config.virtual_nodes)
        self._m["up"].labels(str(self.id)).set(len(self._ring))

    def _mark(self, endpoint: str, down: bool) -> None:
        with self._lock:
            if (endpoint in self._down) == down or endpoint not in self._backends:
                return
            (self._down.add if down else self._down.discard)(endpoint)
            self._rebuild()
        self.logger.warning("backend %s is %s; %d of %d in the ring", endpoint, "down" if down else "back",
                            len(self._ring), len(self._endpoints))

    def _probe(self) -> None:
        with self._lock:
            down = [(e, self._backends[e]) for e in sorted(self._down)]
        for endpoint, backend in down:  # an empty export: the backend's receiver answers, not just its port
            if self._empty_like is not None and self._send_piece(backend, endpoint, self._empty_like).ok:
                self._mark(endpoint, down=False)

    @property
    def ring(self) -> Ring:
        return self._ring

    # --- lifecycle ---------------------------------------------------------------------------------

    def _start_client(self, host) -> None:
        self._backend_host = host
        self.resolve()
        self._prober.start()
        if self._resolving is not None:
            self._resolving.start()

    def _stop_client(self) -> None:
        if self._resolving is not None:
            self._resolving.stop()
        self._prober.stop()
        self._resolver.close()
        with self._lock:
            backends, self._backends, self._endpoints = self._backends, {}, []
            self._down.clear()
            self._rebuild()
        for backend in backends.values():
            backend.shutdown()

    # --- one attempt -------------------------------------------------------------------------------

    def send(self, batch: pa.Table) -> ExportResult:
        """Deliver every row of ``batch`` not delivered by an earlier attempt of the same batch."""
        remaining = self._undelivered.get(id(batch), batch)
        self._empty_like = batch.slice(0, 0)
        label = str(self.id)
        rerouted = False
        while remaining.num_rows:
            with self._lock:
                ring, backends = self._ring, dict(self._backends)
            if not len(ring):
                self._keep(batch, remaining)
                return ExportResult(ExportStatus.RETRYABLE, f"no backend is up ({len(self._endpoints)} known: "
                                    f"{', '.join(self._endpoints)}); {remaining.num_rows} rows wait")
            if rerouted:
                self._m["rerouted"].labels(label).inc(remaining.num_rows)
            failed = []
            for endpoint, piece in ring.split(remaining, routing_keys(remaining, self.config.routing_key,
                                                                      self.config.routing_attributes)):
                result = self._send_piece(backends[endpoint], endpoint, piece)
                self._m["outcome"].labels(label, endpoint, str(result.ok).lower()).inc()
                if result.ok:
                    continue
                if result.status is ExportStatus.PERMANENT:
                    self._telemetry.failed(signal_of(piece.schema), self._name).inc(piece.num_rows)
                    self.logger.error("%s refused %d rows for good, dropped: %s", endpoint, piece.num_rows,
                                      result.message)
                    continue
                self.logger.warning("%s failed (%s): its %d rows go to the next backend", endpoint,
                                    result.message, piece.num_rows)
                self._mark(endpoint, down=True)
                failed.append(piece)
            remaining = pa.concat_tables(failed) if failed else remaining.slice(0, 0)
            rerouted = True
        self._undelivered.pop(id(batch), None)
        return SUCCESS

    def _send_piece(self, backend: QueuedExporter, endpoint: str, piece: pa.Table) -> ExportResult:
        try:
            return backend.send(piece)
        except Exception as exc:  # noqa: BLE001 - e.g. its channel closed by a re-resolution meanwhile
            return ExportResult(ExportStatus.RETRYABLE, f"{endpoint}: send raised {type(exc).__name__}: {exc}")

    def _keep(self, batch: pa.Table, remaining: pa.Table) -> None:
        """Remember what the next attempt of ``batch`` still has to send (the helper retries the same
        object); the entry is dropped when the batch is delivered, given up or freed."""
        if id(batch) not in self._undelivered:
            weakref.finalize(batch, self._undelivered.pop, id(batch), None)
        self._undelivered[id(batch)] = remaining

    def describe(self) -> list[str]:
        return [f"{self.id}: {self.config.protocol.kind} to {len(self._endpoints)} backends by "
                f"{self.config.routing_key} ({self._resolver.kind} resolver)"]


factory = Factory(type="loadbalancing", kind=Kind.EXPORTER, config_model=LoadBalancingConfig,
                  create=LoadBalancingExporter, signals=("traces",),
                  description="Spans to N gateways by consistent hashing on trace id, service or agent "
                              "(static list or DNS), each backend an otlp/otlphttp exporter.")
