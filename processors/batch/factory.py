"""batch: group commit.

Requests from many receiver threads are gathered into one batch and handed on
by one flusher thread; each request waits until the batch that carries it has
reached its durable point downstream, then returns (or raises what the flush
raised).  So clients are acknowledged only for committed spans, while the
store sees few, large commits.

A batch is sent when it holds ``send_batch_size`` spans or when its oldest
request has waited ``timeout``.  ``send_batch_max_size`` caps one flush; the
rest waits for the next.  ``max_pending_spans`` bounds memory: beyond it new
requests are refused with the retryable answer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future

import pyarrow as pa
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Consumer, Factory, Kind, Processor
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.errors import RefusedError


class BatchConfig(ConfigModel):
    send_batch_size: int = Field(default=8192, gt=0)
    send_batch_max_size: int = Field(default=0, ge=0)  # 0: no cap
    timeout: Duration = Field(default="200ms", ge=0)
    max_pending_spans: int = Field(default=262_144, gt=0)

    @model_validator(mode="after")
    def _max_not_below_size(self) -> BatchConfig:
        if self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            raise ValueError(f"send_batch_max_size ({self.send_batch_max_size}) must be 0 or "
                             f">= send_batch_size ({self.send_batch_size})")
        return self


class _Pending:
    __slots__ = ("table", "future", "enqueued")

    def __init__(self, table: pa.Table):
        self.table = table
        self.future: Future = Future()
        self.enqueued = time.perf_counter()


class BatchProcessor(Processor):
    config: BatchConfig

    def __init__(self, settings, config: BatchConfig):
        super().__init__(settings, config)
        self._next: Consumer | None = None
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = True
        self._thread: threading.Thread | None = None
        t = settings.telemetry
        name = str(settings.id)
        self._size_hist = t.batch_size.labels(name)
        self._latency_hist = t.batch_latency.labels(name)
        self._pending_gauge = t.batch_queue.labels(name)

    def bind(self, next_consumer: Consumer) -> Consumer:
        self._next = next_consumer
        return self

    def _start(self, host) -> None:
        with self._cond:
            self._closed = False
        self._thread = threading.Thread(target=self._flusher, name=f"{self.id}-flusher", daemon=True)
        self._thread.start()

    def consume(self, batch: pa.Table) -> None:
        item = _Pending(batch)
        with self._cond:
            if self._closed:
                raise RefusedError("pipeline is shutting down", 1.0)
            if self._rows + batch.num_rows > self.config.max_pending_spans and self._queue:
                raise RefusedError(f"batch queue is full ({self._rows} spans pending)", 1.0)
            self._queue.append(item)
            self._rows += batch.num_rows
            self._pending_gauge.set(self._rows)
            self._cond.notify()
        item.future.result()

    def _take(self) -> list[_Pending] | None:
        """Wait for a batch to be due; None once closed and drained."""
        cfg = self.config
        with self._cond:
            while True:
                if self._queue:
                    due = self._queue[0].enqueued + cfg.timeout
                    wait = due - time.perf_counter()
                    if self._rows >= cfg.send_batch_size or wait <= 0 or self._closed:
                        break
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()
            cap = cfg.send_batch_max_size or float("inf")
            items: list[_Pending] = []
            rows = 0
            while self._queue and (not items or rows + self._queue[0].table.num_rows <= cap):
                item = self._queue.popleft()
                items.append(item)
                rows += item.table.num_rows
            self._rows -= rows
            self._pending_gauge.set(self._rows)
            return items

    def _flusher(self) -> None:
        # The batch lives in _flush's frame only: a loop variable would keep the last one (and its
        # requests' spans) for as long as no new batch comes.
        while self._flush(self._take()):
            pass

    def _flush(self, items: list[_Pending] | None) -> bool:
        """Hands ``items`` on as one batch; False when there is nothing more (closed and drained)."""
        if items is None:
            return False
        assert self._next is not None
        table = items[0].table if len(items) == 1 else pa.concat_tables([i.table for i in items])
        error: BaseException | None = None
        try:
            self._next.consume(table)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            error = exc
        done = time.perf_counter()
        self._size_hist.observe(table.num_rows)
        for item in items:
            self._latency_hist.observe(done - item.enqueued)
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(error)
        return True

    def _shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)


factory = Factory(
    type="batch",
    kind=Kind.PROCESSOR,
    config_model=BatchConfig,
    create=BatchProcessor,
    signals=("traces", "metrics", "logs"),
    description="Group commit: gathers concurrent requests into one batch; each request returns when its batch is durable.",
)
