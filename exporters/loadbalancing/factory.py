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

A trace in progress keeps its backend while the ring changes (affinity.py): a key is sent where it was
first sent within ``affinity.window``, and the rows of a key whose backend is down wait up to
``affinity.hold`` for it to return before they go to the ring's next node -- handed back to the helper
(``ExportResult.later``), which queues them again behind what came since, so the rest of the queue goes on.
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent_sre.exporters.helper.sender import QueuedExporter
from agent_sre.exporters.loadbalancing.affinity import NONE, Affinity, outage_began
from agent_sre.exporters.loadbalancing.config import LoadBalancingConfig
from agent_sre.exporters.loadbalancing.resolver import Resolver
from agent_sre.exporters.loadbalancing.ring import Ring, hash_strings, partition, routing_keys
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
            "split": Counter("agent_sre_loadbalancer_split_spans", "Spans of keys in progress moved to another "
                             "backend (theirs down longer than affinity.hold); the key's later spans follow "
                             "them there.", ["exporter"], registry=registry),
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
        self._down: dict[str, float] = {}  # endpoint -> when its outage began (monotonic)
        self._back: dict[str, tuple[float, float]] = {}  # endpoint -> (its last outage began, it came back)
        self._ring = Ring([], config.virtual_nodes)
        self._affinity = Affinity(config.affinity.window) if config.affinity.window > 0 else None
        self._holding: set[str] = set()  # backends down whose traces in progress wait for them (said once)
        # Held rows wait for the helper's next attempt: without retries they would be given up instead.
        self._hold = config.affinity.hold if config.retry_on_failure.enabled else 0.0
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
            self._down = {e: t for e, t in self._down.items() if e in endpoints}
            self._back = {e: t for e, t in self._back.items() if e in endpoints}
            self._holding &= set(endpoints)
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
            now = time.monotonic()
            if down:
                self._down[endpoint] = outage_began(now, self._back.get(endpoint), self._hold)
            else:
                self._back[endpoint] = (self._down.pop(endpoint), now)
                self._holding.discard(endpoint)
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
        held = remaining.slice(0, 0)
        while remaining.num_rows:
            with self._lock:
                ring, backends, down = self._ring, dict(self._backends), dict(self._down)
            if not len(ring):
                self._keep(batch, pa.concat_tables([remaining, held]))
                return ExportResult(ExportStatus.RETRYABLE, f"no backend is up ({len(self._endpoints)} known: "
                                    f"{', '.join(self._endpoints)}); {remaining.num_rows + held.num_rows} rows wait")
            if rerouted:
                self._m["rerouted"].labels(label).inc(remaining.num_rows)
            failed = []
            pieces, waiting = self._route(remaining, ring, sorted(backends), down)
            if waiting is not None:
                held = pa.concat_tables([held, waiting])
            for endpoint, piece, fresh in pieces:
                result = self._send_piece(backends[endpoint], endpoint, piece)
                self._m["outcome"].labels(label, endpoint, str(result.ok).lower()).inc()
                if result.ok:
                    if self._affinity is not None:
                        self._affinity.record(fresh, endpoint, time.monotonic())
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
        if held.num_rows:
            message = (f"{held.num_rows} rows of traces in progress on {', '.join(sorted(down))} wait up to "
                       f"{self._hold:g}s for it")
            if not set(down) <= self._holding:
                self._holding |= set(down)
                self.logger.warning("%s: the rest of these traces waits in the queue up to %gs (affinity.hold) for "
                                    "their backend, then goes to the ring's next node", message, self._hold)
            if self._queue is None:  # no queue to wait in: the helper's retry holds the batch instead
                self._keep(batch, held)
                return ExportResult(ExportStatus.RETRYABLE, message)
            if held.num_rows == batch.num_rows:  # nothing else to do: pace the rows' turns through the queue
                self._stopping.wait(min(0.1, self.config.probe_interval))
            # Queued again behind what came since (on disk with a persistent queue): the rest of the
            # queue goes on meanwhile.
            return ExportResult(ExportStatus.SUCCESS, message, later=held)
        return SUCCESS

    def _route(self, rows: pa.Table, ring: Ring, endpoints: list[str], down: dict[str, float]
               ) -> tuple[list[tuple[str, pa.Table, np.ndarray]], pa.Table | None]:
        """([(endpoint, its rows, the hashes to remember there)], the rows held for a backend that is down).

        A key remembered for a backend that is up goes there; for one that is down, it waits while that
        backend is down for less than ``affinity.hold``, else it goes to the ring's owner (and is
        remembered there); any other key goes to the ring's owner, and is remembered there."""
        hashes = hash_strings(routing_keys(rows, self.config.routing_key, self.config.routing_attributes))
        index = {e: i for i, e in enumerate(endpoints)}
        dest = np.array([index[e] for e in ring.endpoints], np.int32)[ring.owners(hashes)]
        fresh = np.ones(len(hashes), bool)
        wait = np.zeros(len(hashes), bool)
        if self._affinity is not None:
            now = time.monotonic()
            hold = 0.0 if self._stopping.is_set() else self._hold  # at shutdown: deliver rather than wait
            sticky = self._affinity.lookup(hashes, now, endpoints)
            known = sticky != NONE
            is_down = np.zeros(len(endpoints) + 1, bool)  # the last slot: NONE
            holding = np.zeros(len(endpoints) + 1, bool)
            for e, since in down.items():
                if e in index:
                    is_down[index[e]] = True
                    holding[index[e]] = now - since < hold
            wait = known & holding[sticky]
            keep = known & ~is_down[sticky]
            dest[keep] = sticky[keep]
            fresh = ~known | is_down[sticky]  # new keys, and keys moved off a backend down past the hold
            split = int(np.count_nonzero(known & is_down[sticky] & ~wait))
            if split:
                self._m["split"].labels(str(self.id)).inc(split)
        dest[wait] = len(endpoints)  # past every endpoint: the held rows
        pieces, held = [], None
        for i, rows_of in partition(dest, len(endpoints) + 1):
            if i == len(endpoints):
                held = rows.take(rows_of)
            else:
                pieces.append((endpoints[i], rows.take(rows_of), hashes[rows_of][fresh[rows_of]]))
        return pieces, held

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
