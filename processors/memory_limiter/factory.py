"""memory_limiter: refuse data with the retryable OTLP answer instead of growing without bound.

Like the collector's, but over every process of the pipeline: the memory held by the pipeline
process and by its receiver workers (its child processes; anonymous and shared resident pages, not
the libraries' code) is summed every ``check_interval`` (four times as often while over the soft
limit: ``PRESSURE_CHECKS``); above the soft limit it first hands back
what Python and the allocator keep (a GC and ``malloc_trim``, as the Collector forces a GC; the trim again
once per ``check_interval`` while over it, so what the draining backlog frees counts).  If still at or above the
soft limit (``limit_mib - spike_limit_mib``):

- on crossing it, every batch is refused with ``RefusedError`` and the receivers in every process
  refuse new requests before reading them (the host's ``Admission``) until the next check, so what
  was in flight drains;
- from then on the receivers take one request at a time per process, within what is left under the
  refusing line (``limit_mib - spike_limit_mib / 2``): the pipeline goes on serving, slower, over its
  soft limit.  What a burst leaves behind (the loop's state, the allocators' high-water marks:
  measured ~120 MiB over the idle pipeline after 700k bench spans, docs/benchmarks.md) can keep it over the soft
  limit for good, and refusing everything there meant refusing for good (issue #11's soak);
- at the refusing line everything is refused until the pipeline is under it again; requests are
  taken freely again under a quarter of the spike below the soft limit;
- unless refusing frees nothing: when the held memory has not fallen for ``FLOOR_CHECKS`` checks (five
  check intervals) in a row
  at the refusing line, what is left is the pipeline's own floor (the loop's state, what the allocators
  keep fragmented; after a minute of overload at 256 MiB it sat at 220-238 MiB, over the 230 MiB line, and
  the pipeline refused every request while idle until restarted: bench/soak.py's recovery probe).
  Refusing more cannot bring it down, so the receivers take one request at a time again within what is
  left under ``limit_mib - spike_limit_mib / 4`` (the floor line), with a WARNING that says how much limit
  the floor needs; at the floor line everything is refused again.

At every level the requests in flight in each process may take at most what the last check saw left
under the refusing line (divided among the processes), so one burst between two checks cannot carry
the pipeline far past its limit.

Receivers answer a refusal with HTTP 503 + Retry-After / gRPC UNAVAILABLE with RetryInfo, so
well-behaved clients back off and retry: nothing is lost.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import psutil
import pyarrow as pa
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Factory, Kind, Processor
from agent_sre.pipeline.component.admission import ACCEPT, ONE_AT_A_TIME, REFUSE
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.errors import RefusedError
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.memory import release_freed_memory

_MIB = 1 << 20
# Checks per check_interval while over the soft limit: between two checks the receivers' room and level
# are as the last check left them, and at 256 MiB the soak's pipeline passed its limit in one 100-ms
# sample of ~6,000 with a check a second, none in two runs with four (bench/soak.py, docs/benchmarks.md).
PRESSURE_CHECKS = 4
# Checks (five check intervals) at the refusing line without the held memory falling: what is left is the floor.
FLOOR_CHECKS = 5 * PRESSURE_CHECKS
_FLOOR = 3  # a log level of its own for the floor (the admission level is ONE_AT_A_TIME)


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
    def spike_bytes(self) -> int:
        return (self.spike_limit_mib if self.spike_limit_mib is not None else self.limit_mib // 5) * _MIB

    @property
    def soft_limit_bytes(self) -> int:
        return self.limit_mib * _MIB - self.spike_bytes

    @property
    def resume_bytes(self) -> int:
        """Once over the soft limit, requests are taken freely again only below this (a quarter of the
        spike headroom under the soft limit): at the soft limit itself the pipeline went back and forth
        every check, and each return let a burst past the limit (bench/soak.py)."""
        return self.soft_limit_bytes - self.spike_bytes // 4

    @property
    def floor_line_bytes(self) -> int:
        """At the floor (refusing frees nothing), one request at a time is taken only under this: a quarter of
        the spike headroom under the limit, for what the loader's work adds beyond the requests' bytes (at the
        limit itself, 4.3 % of the 10-minute soak's 100 ms samples passed it, against 1 % below the line)."""
        return self.limit_mib * _MIB - self.spike_bytes // 4

    @property
    def refuse_line_bytes(self) -> int:
        """Where one request at a time stops: half the spike headroom under the limit, for what a request
        and the pipeline's state may add between two checks."""
        return self.limit_mib * _MIB - self.spike_bytes // 2


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
        self.children = 0  # the receiver workers, at the last measurement
        self._logged = 0  # the level last logged by a limiter of the process (ACCEPT)

    def measure(self, max_age_s: float) -> int:
        with self._lock:
            now = time.monotonic()
            if self._pid != os.getpid() or now - self._at > max_age_s:  # a forked child measures its own
                process = psutil.Process()
                total = held_bytes(process)
                children = process.children(recursive=True)
                for child in children:
                    total += held_bytes(child)
                self.children = len(children)
                self._pid, self._at, self._value = os.getpid(), time.monotonic(), total
            return self._value

    def logged(self, level: int) -> bool:
        """Whether a limiter that moved to ``level`` logs it: once for the process, not once per pipeline."""
        with self._lock:
            if level == self._logged:
                return False
            self._logged = level
            return True


_HELD = _PipelineHeld()


class MemoryLimiter(Processor):
    config: MemoryLimiterConfig

    def __init__(self, settings, config: MemoryLimiterConfig):
        super().__init__(settings, config)
        self._level = ACCEPT
        self._floor = False  # one request at a time under the floor line: refusing freed nothing (FLOOR_CHECKS)
        self._lowest = 0  # the least held memory seen while refusing at the line, and checks since (-1: off it)
        self._still = -1
        self._trimmed_at = -1e9
        self._admission = None
        self._worker = PeriodicWorker(f"{self.id}-check", self._interval, self.check, self.logger)
        self._gauge = settings.telemetry.memory_limit_refusing.labels(str(settings.id))
        self._level_gauge = settings.telemetry.memory_limit_level.labels(str(settings.id))
        self._refused = settings.telemetry.processor_refused.labels(str(settings.id))

    @property
    def refusing(self) -> bool:
        """Every batch and request refused (on crossing the soft limit, and near the limit)."""
        return self._level == REFUSE

    @property
    def level(self) -> int:
        return self._level

    @property
    def memory_limit_bytes(self) -> int:  # capabilities.MemoryLimit
        return self.config.limit_mib * _MIB

    def _interval(self) -> float:
        """``check_interval``, a ``PRESSURE_CHECKS``-th of it while over the soft limit."""
        return self.config.check_interval / (1 if self._level == ACCEPT else PRESSURE_CHECKS)

    def memory_headroom_bytes(self) -> int:  # capabilities.MemoryLimit
        """The soft limit less what the pipeline held at a measurement up to a check interval old: what
        it may still take before this limiter refuses data (the spike headroom above is for bursts)."""
        return self.config.soft_limit_bytes - self.rss(max_age_s=self.config.check_interval)

    def rss(self, max_age_s: float | None = None) -> int:
        """Memory the pipeline holds: this process and its children (the receiver workers), each
        counted as its anonymous and shared-memory resident pages (``RssAnon + RssShmem``, as the
        Collector counts its heap): the code of the libraries it maps (~100 MiB here: Arrow,
        DuckDB, gRPC) is file pages the kernel shares and drops, not pressure.  Plain RSS where
        /proc does not say.  A measurement up to ``max_age_s`` old (default: half the check interval)
        taken by another limiter of the process is reused."""
        return _HELD.measure(self.config.check_interval / 2 if max_age_s is None else max_age_s)

    def check(self) -> None:
        rss = self.rss(max_age_s=self._interval() / 2)
        soft = self.config.soft_limit_bytes
        if rss >= soft or self._level != ACCEPT:
            # What Python and the C allocator keep after a burst, handed back first (the Collector's
            # limiter forces a GC the same way) -- and once per check_interval while over: the backlog
            # drains meanwhile, and what it frees counts only once handed back.  The full GC (~0.1 s of
            # the GIL with the loop's state) runs once per crossing.  The trim at each of the quicker
            # checks too cost the soak's overloaded pipeline 6 % of what it took, for no fewer samples
            # over the limit (bench/soak.py, 256 MiB: 32,270 against 34,158 spans/s).
            if self._level == ACCEPT:
                gc.collect()
            now = time.monotonic()
            if self._level == ACCEPT or now - self._trimmed_at >= self.config.check_interval * 0.99:
                self._trimmed_at = now
                release_freed_memory()
                rss = self.rss(max_age_s=0)
        line, ceiling = self.config.refuse_line_bytes, self.config.floor_line_bytes
        if rss < (soft if self._level == ACCEPT else self.config.resume_bytes):
            level = ACCEPT
        elif rss >= line or (self._level == ACCEPT and rss >= soft):
            level = REFUSE  # near the limit; or just crossed the soft one: what is in flight drains first
        else:
            level = ONE_AT_A_TIME
        floor = self._at_floor(rss, ceiling, at_line=level == REFUSE and rss >= line)
        if floor:
            level = ONE_AT_A_TIME
        if (level, floor) != (self._level, self._floor) and _HELD.logged(_FLOOR if floor else level):
            self._log(level, floor, rss, soft, line)
        self._level, self._floor = level, floor
        if self._admission is not None:  # what the requests in flight may take, in each process
            processes = 1 + _HELD.children
            room = (ceiling if floor else line) - rss
            self._admission.set_level(level, self.config.retry_after, str(self.id), room=max(room, 0) / processes)
        self._gauge.set(1 if level == REFUSE else 0)
        self._level_gauge.set(level)

    def _at_floor(self, rss: int, ceiling: int, at_line: bool) -> bool:
        """Whether refusing at the line has stopped freeing anything: no new low (by a MiB) for
        ``FLOOR_CHECKS`` checks in a row, and room left under ``ceiling`` (the floor line).  Off the line, or
        at the ceiling, the count starts again."""
        if not at_line or rss >= ceiling:
            self._still = -1
            return False
        if self._still < 0 or (rss < self._lowest - _MIB and not self._floor):
            self._lowest, self._still = rss, 0
        else:
            self._still += 1
        return self._still >= FLOOR_CHECKS

    def _log(self, level: int, floor: bool, rss: int, soft: int, line: int) -> None:
        if floor:
            # Once per floor: the operator's limit is too tight for what this pipeline keeps.
            self.logger.warning(
                "memory usage %d MiB has not fallen for %d checks while refusing data: that is what the pipeline "
                "itself keeps, over its refusing line (%d MiB); taking one request at a time that fits under %d MiB "
                "(limit %d MiB) -- raise limit_mib to at least %d MiB to keep the spike headroom",
                rss // _MIB, FLOOR_CHECKS, line // _MIB, self.config.floor_line_bytes // _MIB, self.config.limit_mib,
                -(-(rss + self.config.spike_bytes) // _MIB))
            return
        what = {ACCEPT: "accepting data", REFUSE: "refusing data",
                ONE_AT_A_TIME: "taking one request at a time that fits under the limit"}[level]
        where = ("is back under the soft limit" if level == ACCEPT else "is near the limit" if rss >= line
                 else "is above the soft limit")
        # Entering and leaving the pressure levels is a WARNING; going between them (every few seconds
        # at the refusing line) is in the level metric, and DEBUG here.
        pressure = ACCEPT in (level, self._level)
        self.logger.log(logging.WARNING if pressure else logging.DEBUG,
                        "memory usage %d MiB %s (soft %d MiB, refusing from %d MiB, limit %d MiB): %s",
                        rss // _MIB, where, soft // _MIB, line // _MIB, self.config.limit_mib, what)

    def _start(self, host) -> None:
        self._admission = host.admission
        self.check()
        self._worker.start()

    def _shutdown(self) -> None:
        self._worker.stop(timeout=5)
        if self._admission is not None:
            self._admission.refuse(False, source=str(self.id))

    def process(self, batch: pa.Table) -> pa.Table | None:
        if self._level == REFUSE:
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
