"""The exporter helper: a sending queue, consumers, retries and self-metrics for every exporter.

An exporter built on ``QueuedExporter`` implements one method, ``send(batch) -> ExportResult``:
one attempt, within ``timeout``, its failure *returned* (retryable with an optional
``retry_after``, or permanent).  The helper does the rest, configured as in the collector:

    sending_queue:     enabled: true, num_consumers: 2, queue_size: 20000, sizer: items,
                       storage: {directory: ..., fsync: true}   (a persistent queue on disk)
    retry_on_failure:  enabled: true, initial_interval: 1s, randomization_factor: 0.5,
                       multiplier: 1.5, max_interval: 30s, max_elapsed_time: 300s
    timeout: 10s       per attempt

``export`` (called by the pipeline's fan-out) only enqueues: a slow or dead backend fills its own
queue, never the receiver's time or another exporter's.  ``num_consumers`` threads take batches
from the queue and send them, retrying a retryable failure with exponential backoff and jitter —
never sooner than the backend's ``Retry-After`` / ``RetryInfo`` — until it succeeds, fails for
good, or ``max_elapsed_time`` has passed since the first attempt; a batch given up is counted in
``send_failed`` and logged.  A full queue (``on_full``) either holds the client back — the fan-out
asks ``has_room`` before anything is stored and refuses the request retryably — or drops the batch
for this exporter, counted (``enqueue_failed``, ``/v1/status``) and logged.  With the queue disabled,
``export`` sends (and retries) in the caller's thread.

Self-metrics per exporter: ``agent_sre_exporter_sent_{spans,...}``, ``..._send_failed_...``,
``..._enqueue_failed_...``, ``agent_sre_exporter_retries``, ``agent_sre_exporter_queue_size`` and
``..._capacity`` (in the sizer's unit).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from agent_sre.exporters.helper.queue import MemoryQueue, PersistentQueue, QueueFull
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, ExportStatus
from agent_sre.pipeline.component.capabilities import SendingQueue, SloReports
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.schema import signal_of


class QueueStorage(ConfigModel):
    directory: str  # one directory per exporter
    fsync: bool = True


class SendingQueueConfig(ConfigModel):
    enabled: bool = True
    num_consumers: int = Field(default=2, ge=1, le=64)
    queue_size: int = Field(default=20_000, gt=0)  # in the sizer's unit
    sizer: Literal["requests", "items", "bytes"] = "items"
    storage: QueueStorage | None = None  # a persistent queue, on disk
    # A full queue: `block` refuses the client's request (retryable) before anything is stored, so the
    # client retries and this exporter gets every span (backpressure); `drop` stores the batch and this
    # exporter loses it, counted (agent_sre_exporter_enqueue_failed_*, /v1/status) and logged.
    on_full: Literal["block", "drop"] = "block"
    drain_timeout: Duration = Field(default="10s", ge=0)  # at shutdown, how long to keep sending what is queued


class RetryConfig(ConfigModel):
    enabled: bool = True
    initial_interval: Duration = Field(default="1s", gt=0)
    randomization_factor: float = Field(default=0.5, ge=0, le=1)
    multiplier: float = Field(default=1.5, ge=1)
    max_interval: Duration = Field(default="30s", gt=0)
    max_elapsed_time: Duration = Field(default="300s", ge=0)  # 0: retry for ever

    @model_validator(mode="after")
    def _order(self) -> RetryConfig:
        if self.max_interval < self.initial_interval:
            raise ValueError("max_interval must not be below initial_interval")
        return self


class HelperConfig(ConfigModel):
    """Settings every queued exporter has (subclasses add their own)."""

    timeout: Duration = Field(default="10s", gt=0)
    sending_queue: SendingQueueConfig = SendingQueueConfig()
    retry_on_failure: RetryConfig = RetryConfig()


class Backoff:
    """Exponential backoff with jitter, as the collector's (and OTLP's) retry policy."""

    def __init__(self, cfg: RetryConfig, rng: random.Random | None = None):
        self.cfg = cfg
        self.rng = rng or random.Random()
        self.interval = cfg.initial_interval

    def next(self, retry_after: float | None = None) -> float:
        cfg = self.cfg
        spread = cfg.randomization_factor * self.interval
        delay = self.interval + self.rng.uniform(-spread, spread)
        self.interval = min(self.interval * cfg.multiplier, cfg.max_interval)
        if retry_after is not None:  # the backend said when: never sooner
            delay = max(delay, retry_after)
        return delay


class QueuedExporter(Exporter):
    """Subclasses set ``config`` (a HelperConfig) and ``signal`` (which metric names to use), and
    implement ``send``; optional ``_start_client``/``_stop_client`` open and close connections."""

    config: HelperConfig
    queued = True  # the fan-out calls export() after the synchronous exporters (see service.py)

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._queue: MemoryQueue | PersistentQueue | None = None
        self._consumers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._accepting = False
        t, name = settings.telemetry, str(settings.id)
        self._telemetry, self._name = t, name
        self._enqueue_failed = t.exporter_enqueue_failed.labels(name)
        self._retries = t.exporter_retries.labels(name)
        self._latency = t.exporter_latency.labels(name)
        self.queued = config.sending_queue.enabled
        self.blocks = self.queued and config.sending_queue.on_full == "block"  # the fan-out asks has_room()
        self.dropped = 0  # rows a full queue (on_full: drop) did not take
        self._host = None
        self._drop_logged = 0.0

    # --- what subclasses implement --------------------------------------------------------

    def send(self, batch: pa.Table) -> ExportResult:
        raise NotImplementedError

    def prepare(self, batch: pa.Table) -> None:  # noqa: B027 - optional hook
        """The part of ``send`` that needs no network (encoding a request body), done where ``export`` is
        called, before the batch is queued, for ``send`` to reuse.  There the batch was just written by
        the synchronous exporters and is still in the CPU's caches; by the time a sender thread takes it
        from the queue it is not.  Measured (bench/fanout.py, one ``otlphttp`` exporter beside duckdb, the
        protobuf encoding and gzip in C with the GIL released either way): -11.3 % of committed spans/s
        with the encoding on the sender thread, -4.1 % here (medians of three rounds, docs/benchmarks.md).
        Not for a persistent queue (its sender reads the batch back from disk: a new table, encoded anew)."""

    def _start_client(self, host) -> None:  # noqa: B027 - optional hook
        pass

    def _stop_client(self) -> None:  # noqa: B027 - optional hook
        pass

    # --- lifecycle -------------------------------------------------------------------------

    def _start(self, host) -> None:
        self._start_client(host)
        q = self.config.sending_queue
        self._stopping.clear()
        if q.enabled:
            if q.storage is not None:
                self._queue = PersistentQueue(Path(q.storage.directory), q.queue_size, q.sizer, q.storage.fsync)
            else:
                self._queue = MemoryQueue(q.queue_size, q.sizer)
            t, name = self.settings.telemetry, str(self.id)
            t.exporter_queue.labels(name).set_function(lambda: self._queue.size if self._queue else 0)
            t.exporter_queue_capacity.labels(name).set(q.queue_size)
            t.exporter_queue_corrupt.labels(name).set_function(lambda: getattr(self._queue, "corrupt", 0))
            self._consumers = [threading.Thread(target=self._consume, name=f"{self.id}-send-{i}", daemon=True)
                               for i in range(q.num_consumers)]
            for c in self._consumers:
                c.start()
            host.provide(SendingQueue, self.id, self)
            self._host = host
        self._accepting = True

    def _shutdown(self) -> None:
        self._accepting = False
        if self._host is not None:
            self._host.withdraw(SendingQueue, self.id)
        queue = self._queue
        if queue is not None:
            deadline = time.monotonic() + self.config.sending_queue.drain_timeout
            while queue.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            self._stopping.set()  # consumers stop after their current attempt; retries are cut short
            queue.close()
            for c in self._consumers:
                c.join(timeout=self.config.timeout + 5)
            left = queue.pending
            if left:
                where = "stay in the persistent queue for the next start" if queue.persistent else "are lost"
                self.logger.error("%d batches not delivered at shutdown %s", left, where)
            self._queue = None
        self._stop_client()

    # --- the data path -----------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether the queue takes more now (asked before the batch is stored anywhere, with ``block``)."""
        return self._queue is None or not self._queue.full

    def queue_status(self) -> dict:
        q = self._queue
        return {"on_full": self.config.sending_queue.on_full, "size": q.size if q else 0,
                "capacity": self.config.sending_queue.queue_size, "sizer": self.config.sending_queue.sizer,
                "persistent": bool(q and q.persistent), "dropped": self.dropped}

    def export(self, batch: pa.Table) -> ExportResult:
        if not self._accepting:
            return ExportResult(ExportStatus.RETRYABLE, f"{self.id} is not running", 1.0)
        if self._queue is None:
            return self._deliver(batch)
        if not self._queue.persistent and not self._queue.full:
            try:
                self.prepare(batch)
            except Exception:  # noqa: BLE001 - send does it again and reports what fails there
                self.logger.debug("preparing a batch failed; its sender will try again", exc_info=True)
        try:
            # Admitted by has_room() before the batch was stored: taken even if others filled it since.
            self._queue.put(batch, force=self.blocks)
        except (QueueFull, OSError) as exc:
            self._enqueue_failed.inc(batch.num_rows)
            self.dropped += batch.num_rows
            if time.monotonic() - self._drop_logged >= 10:  # one line per 10 s, with the running total
                self._drop_logged = time.monotonic()
                self.logger.error("sending queue full (on_full: drop): %d rows dropped for this exporter so "
                                  "far; they are stored by the pipeline's other exporters (%s)", self.dropped, exc)
            return ExportResult(ExportStatus.RETRYABLE, f"{self.id}: {exc}", 1.0)
        return SUCCESS

    def _consume(self) -> None:
        queue = self._queue
        assert queue is not None
        while not self._stopping.is_set():
            item = queue.get(timeout=0.5)
            if item is None:
                continue
            assert item.table is not None
            result = self._deliver(item.table)
            if result.status is ExportStatus.RETRYABLE and self._stopping.is_set():
                if queue.persistent:
                    continue  # cut short by shutdown: not acked, so the next start sends it again
                self._give_up(item.table, result, "shut down while retrying")
            if result.later is not None and result.later.num_rows:
                try:  # queued again before the batch is acked: the rows are always in one or the other
                    queue.put(result.later, force=True)
                except (QueueFull, OSError) as exc:
                    self._give_up(result.later, ExportResult(ExportStatus.PERMANENT, str(exc)), "not queued again")
            queue.ack(item)

    def _deliver(self, batch: pa.Table) -> ExportResult:
        """Send with retries; count the outcome.  Returns the last attempt's result."""
        retry = self.config.retry_on_failure
        backoff = Backoff(retry)
        first = time.monotonic()
        while True:
            started = time.perf_counter()
            try:
                result = self.send(batch)
            except Exception as exc:  # noqa: BLE001 - send returns its failures; a raise is a bug, not a crash
                self.logger.exception("send raised")
                result = ExportResult(ExportStatus.RETRYABLE, f"send raised {type(exc).__name__}: {exc}")
            self._latency.observe(time.perf_counter() - started)
            if result.ok:
                later = result.later.num_rows if result.later is not None else 0
                self._telemetry.sent(signal_of(batch.schema), self._name).inc(batch.num_rows - later)
                return result
            if result.status is ExportStatus.PERMANENT or not retry.enabled:
                return self._give_up(batch, result, "permanent" if result.status is ExportStatus.PERMANENT
                                     else "retries disabled")
            delay = backoff.next(result.retry_after)
            elapsed = time.monotonic() - first
            if retry.max_elapsed_time and elapsed + delay > retry.max_elapsed_time:
                return self._give_up(batch, result, f"retried for {elapsed:.0f}s (max_elapsed_time)")
            self.logger.warning("send of %d rows failed (%s); retrying in %.1fs", batch.num_rows, result.message,
                                delay)
            self._retries.inc()
            if self._stopping.wait(delay):
                return result  # shutting down: the caller decides what happens to the batch

    def _give_up(self, batch: pa.Table, result: ExportResult, why: str) -> ExportResult:
        self._telemetry.failed(signal_of(batch.schema), self._name).inc(batch.num_rows)
        self.logger.error("dropped %d rows after a failed send (%s): %s", batch.num_rows, why, result.message)
        return result


class AggregatingExporter(QueuedExporter):
    """A queued exporter that counts what passes and, every ``flush_interval``, queues its own payload
    (``flush()``): datadog's series, mlflow's and wandb's metric rows.  What was counted since the
    last interval is flushed at shutdown too, before the queue drains."""

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self._flusher = PeriodicWorker(f"{self.id}-flush", lambda: self.flush_interval or 3600.0, self.flush,
                                       self.logger)
        self._host = None
        self.clock = time.time

    @property
    def flush_interval(self) -> float | None:
        """Seconds between flushes; None: no flushing (e.g. metrics disabled)."""
        raise NotImplementedError

    def flush(self) -> int:
        raise NotImplementedError

    def _start_client(self, host) -> None:
        self._host = host
        if self.flush_interval:
            self._flusher.start()

    def _stop_client(self) -> None:
        self._flusher.stop()

    def _shutdown(self) -> None:
        if self.flush_interval:
            self.flush()
        super()._shutdown()


    def slo_processors(self) -> list:
        return self._host.all(SloReports) if self._host is not None else []
