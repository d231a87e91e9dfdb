"""memory_limiter: refuse data with the retryable OTLP answer instead of growing without bound.

Like the collector's, but over every process of the pipeline: the memory held by the pipeline
process and by its receiver workers (its child processes; anonymous and shared resident pages, not
the libraries' code) is summed every ``check_interval``; above the soft limit it first hands back
what Python and the allocator keep (a GC and ``malloc_trim``, as the Collector forces a GC; the trim again
at every check while refusing, so what the draining backlog frees counts), then, if still at or
above the soft limit (``limit_mib - spike_limit_mib``), every batch is refused with ``RefusedError``,
and the receivers in every process refuse new requests before reading them (the host's
``Admission``), until usage drops below it again.  Receivers answer a refusal with HTTP 503 +
Retry-After / gRPC UNAVAILABLE with RetryInfo, so well-behaved clients back off and retry: nothing is
lost.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import psutil
import pyarrow as pa
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Factory, Kind, Processor
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.errors import RefusedError
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.memory import release_freed_memory

_MIB = 1 << 20


class MemoryLimiterConfig(ConfigModel):
    check_interval: Duration = Field(default="1s", gt=0)
    limit_mib: int = Field(default=1024, gt=0)
    # Headroom for a burst between two checks; defaults to 20 % of limit_mib.
    spike_limit_mib: int | None = Field(default=None, ge=0)
    retry_after: Duration = Field(default="1s", gt=0)

    @model_validator(mode="after")
    def _spike_below_limit(self) -> MemoryLimiterConfig:
        if self.spike_limit_mib is not None and self.spike_limit_mib >= self.limit_mib:
            raise ValueError(f"spike_limit_mib ({self.spike_limit_mib}) must be less than limit_mib ({self.limit_mib})")
        return self

    @property
    def soft_limit_bytes(self) -> int:
        spike = self.spike_limit_mib if self.spike_limit_mib is not None else self.limit_mib // 5
        return (self.limit_mib - spike) * _MIB


def held_bytes(process: psutil.Process) -> int:
    """What one process holds: its anonymous and shared resident pages (plain RSS where /proc does not say)."""
    try:
        with open(f"/proc/{process.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssShmem")))
        if fields:
            return sum(int(v.split()[0]) for v in fields.values()) * 1024
        return process.memory_info().rss
    except (OSError, ValueError, psutil.Error):  # exited between the listing and the reading
        return 0


class _PipelineHeld:
    """The pipeline's held memory, measured once for every limiter of the process: each pipeline of the
    service (traces, metrics, logs) has its own limiter, and listing the children means reading every
    process's /proc entry (measured: three limiters scanning every second cost 0.6-0.9 us per span at max
    rate on a busy box)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._at = -1e9
        self._value = 0

    def measure(self, max_age_s: float) -> int:
        with self._lock:
            now = time.monotonic()
            if self._pid != os.getpid() or now - self._at > max_age_s:  # a forked child measures its own
                process = psutil.Process()
                total = held_bytes(process)
                for child in process.children(recursive=True):
                    total += held_bytes(child)
                self._pid, self._at, self._value = os.getpid(), time.monotonic(), total
            return self._value


_HELD = _PipelineHeld()


class MemoryLimiter(Processor):
    config: MemoryLimiterConfig

    def __init__(self, settings, config: MemoryLimiterConfig):
        super().__init__(settings, config)
        self._refusing = False
        self._admission = None
        self._worker = PeriodicWorker(f"{self.id}-check", config.check_interval, self.check, self.logger)
        self._gauge = settings.telemetry.memory_limit_refusing.labels(str(settings.id))
        self._refused = settings.telemetry.processor_refused.labels(str(settings.id))

    @property
    def refusing(self) -> bool:
        return self._refusing

    def rss(self, max_age_s: float | None = None) -> int:
        """Memory the pipeline holds: this process and its children (the receiver workers), each
        counted as its anonymous and shared-memory resident pages (``RssAnon + RssShmem``, as the
        Collector counts its heap): the code of the libraries it maps (~100 MiB here: Arrow,
        DuckDB, gRPC) is file pages the kernel shares and drops, not pressure.  Plain RSS where
        /proc does not say.  A measurement up to ``max_age_s`` old (default: half the check interval)
        taken by another limiter of the process is reused."""
        return _HELD.measure(self.config.check_interval / 2 if max_age_s is None else max_age_s)

    def check(self) -> None:
        rss = self.rss()
        if rss >= self.config.soft_limit_bytes:
            # What Python and the C allocator keep after a burst, handed back before refusing anyone
            # (the Collector's limiter forces a GC the same way) -- and at every check while refusing:
            # the backlog drains meanwhile, and what it frees counts only once handed back (without
            # this, a pipeline that crossed the limit once refused for good: issue #11's soak).  The full
            # GC (~0.1 s of the GIL with the loop's state) runs once per crossing.
            if not self._refusing:
                gc.collect()
            release_freed_memory()
            rss = self.rss(max_age_s=0)
        refusing = rss >= self.config.soft_limit_bytes
        if refusing != self._refusing:
            self.logger.warning("memory usage %d MiB %s the soft limit of %d MiB: %s data", rss // _MIB,
                                "is above" if refusing else "is back below", self.config.soft_limit_bytes // _MIB,
                                "refusing" if refusing else "accepting")
        self._refusing = refusing
        if self._admission is not None:
            self._admission.refuse(refusing, self.config.retry_after, str(self.id))
        self._gauge.set(1 if refusing else 0)

    def _start(self, host) -> None:
        self._admission = host.admission
        self.check()
        self._worker.start()

    def _shutdown(self) -> None:
        self._worker.stop(timeout=5)
        if self._admission is not None:
            self._admission.refuse(False, source=str(self.id))

    def process(self, batch: pa.Table) -> pa.Table | None:
        if self._refusing:
            self._refused.inc(batch.num_rows)
            raise RefusedError("data refused due to high memory usage (memory_limiter)", self.config.retry_after)
        return batch


factory = Factory(
    type="memory_limiter",
    kind=Kind.PROCESSOR,
    config_model=MemoryLimiterConfig,
    create=MemoryLimiter,
    signals=("traces", "metrics", "logs"),
    description="Refuses data with the retryable OTLP answer while process memory is above its soft limit.",
)
