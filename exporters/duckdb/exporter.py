"""The duckdb exporter: the first durable point of the pipeline.

``export`` returns after the batch is committed, so a receiver acknowledges only
committed spans.  Retention and hourly Parquet export run on a timer thread.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa

from agent_sre.exporters.duckdb.config import DuckDBExporterConfig
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult, ExportStatus
from agent_sre.pipeline.component.capabilities import Health
from agent_sre.pipeline.component.capabilities import SpanStore as SpanStoreCapability
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.pdata.schema import signal_of
from agent_sre.pipeline.storage.attribution import AttributionSettings
from agent_sre.pipeline.storage.dedup import DedupSettings
from agent_sre.pipeline.storage.store import (
    SpanStore,
    SpoolSettings,
    StoreBehind,
    default_spool_dir,
    size_bytes,
)

STORE_MEMORY_SHARE = 1 / 8  # of the pipeline's memory limit, at most, for DuckDB when memory_limit is not set
STORE_MEMORY_FLOOR = 16 << 20  # ... but no less (the store's statements fail under a few MiB)
QUERY_MEMORY_SHARE = 1 / 4  # ... and more of it while an ad hoc query runs, when query_memory_limit is not set
DEDUP_MEMORY_SHARE = 1 / 32  # ... for the dedup window's keys when dedup.max_spans is not set
DEDUP_FLOOR_SPANS = 100_000

_NS_PER_HOUR = 3600 * 1_000_000_000


class DuckDBExporter(Exporter):
    config: DuckDBExporterConfig

    def __init__(self, settings, config: DuckDBExporterConfig):
        super().__init__(settings, config)
        self.store: SpanStore | None = None
        self._host = None
        self._timer = PeriodicWorker(f"{self.id}-housekeeping", self._housekeeping_interval, self.run_housekeeping,
                                     self.logger)

    def _start(self, host) -> None:
        if self.config.parquet is not None:
            Path(self.config.parquet.directory).mkdir(parents=True, exist_ok=True)
        a = self.config.attribution
        memory_limit, checkpoint_threshold, max_spans = self._sized(host)
        self.store = SpanStore(self.config.path, memory_limit, self.config.threads,
                               checkpoint_threshold, self._spool_settings(),
                               AttributionSettings(a.wait, a.lookback, a.service_name_fallback, a.max_held_spans),
                               self.config.on_damaged_store, self.config.count_replays,
                               DedupSettings(self.config.dedup.window, max_spans), self.config.reattach_rows,
                               self._query_memory(host), self.config.query_threads, host.memory_headroom)
        self._host = host
        host.provide(SpanStoreCapability, self.id, self.store)
        host.provide(Health, self.id, self.store)
        t = self.settings.telemetry
        t.exporter_queue.labels(str(self.id)).set_function(lambda: self.store.pending_spans if self.store else 0)
        t.attribution_held.labels(str(self.id)).set_function(lambda: self.store.held_spans if self.store else 0)
        t.attribution_unattributed.labels(str(self.id)).set_function(
            lambda: self.store.unattributed_spans if self.store else 0)
        t.store_resent_spans.labels(str(self.id)).set_function(lambda: self.store.recent.dropped if self.store else 0)
        t.store_reattached.labels(str(self.id)).set_function(lambda: self.store.reattached if self.store else 0)
        t.store_unrolled_spans.labels(str(self.id)).set_function(lambda: self.store.unrolled_spans if self.store else 0)
        t.exporter_queue_capacity.labels(str(self.id)).set(self.config.spool.max_pending_spans
                                                           if self.config.spool.enabled else 0)
        self._timer.start()

    def _sized(self, host) -> tuple[str, str, int]:
        """DuckDB's memory limit and checkpoint threshold and the dedup window's spans: as configured, or,
        where the config leaves them to their defaults, shrunk to a share of the pipeline's memory limit
        (``Host.memory_share``: an eighth for DuckDB, a thirty-second for the dedup keys at 8 bytes each).
        A shrunk buffer pool also checkpoints once its own size of WAL is written rather than at the
        default threshold (twice the default pool): what a checkpoint must hold grows with the WAL, and
        at 256 MiB (a 32 MiB pool, 96MB threshold) the soak's inserts and checkpoints ran out of the pool
        four times in ten minutes, each time rescued with a pool of 128 MiB (held memory 349 MiB);
        with the threshold at the pool's size, none in 4- and 10-minute runs (docs/benchmarks.md)."""
        memory_limit, max_spans = self.config.memory_limit, self.config.dedup.max_spans
        checkpoint_threshold = self.config.checkpoint_threshold
        if "memory_limit" not in self.config.model_fields_set:
            default = size_bytes(memory_limit)
            share = host.memory_share(STORE_MEMORY_SHARE, default, STORE_MEMORY_FLOOR)
            if share < default:
                memory_limit = f"{share >> 10}KiB"
                if ("checkpoint_threshold" not in self.config.model_fields_set
                        and share < size_bytes(checkpoint_threshold)):
                    checkpoint_threshold = memory_limit
        if "max_spans" not in self.config.dedup.model_fields_set:
            max_spans = host.memory_share(DEDUP_MEMORY_SHARE, max_spans * 8, DEDUP_FLOOR_SPANS * 8) // 8
        if (memory_limit, max_spans) != (self.config.memory_limit, self.config.dedup.max_spans):
            self.logger.info("sized for the pipeline's %d MiB memory limit: DuckDB memory_limit %s, "
                             "checkpoint_threshold %s, dedup.max_spans %d (set them to override)",
                             host.memory_limit_bytes >> 20, memory_limit, checkpoint_threshold, max_spans)
        return memory_limit, checkpoint_threshold, max_spans

    def _query_memory(self, host) -> str:
        """The pool an ad hoc query may add: as configured, or a quarter of the pipeline's memory limit when
        that is less than the default (at 256 MiB: 64 MiB), so a query cannot carry a small pipeline past
        its limit (the memory limiter would then refuse ingest while it ran).  At most, either way: the
        store takes no more than half the room the memory limiter last saw left under its soft limit
        (``host.memory_headroom``)."""
        configured = self.config.query_memory_limit
        if "query_memory_limit" in self.config.model_fields_set:
            return configured
        return f"{host.memory_share(QUERY_MEMORY_SHARE, size_bytes(configured), 0) >> 10}KiB"

    def _spool_settings(self) -> SpoolSettings | None:
        sp = self.config.spool
        if not sp.enabled:
            return None
        return SpoolSettings(directory=sp.directory or default_spool_dir(self.config.path),
                             flush_spans=sp.flush_spans, flush_interval=sp.flush_interval,
                             max_pending_spans=sp.max_pending_spans, rollup_interval=sp.rollup_interval)

    def describe(self) -> list[str]:
        lines = [f"spans, metrics and logs stored in DuckDB at {Path(self.config.path).absolute()}"]
        if self.store is not None and self.store.settings is not None:
            lines.append(f"  (write-ahead spool in {self.store.settings.directory})")
        if self.store is not None and self.store.recent.enabled:
            st = self.store.recent.stats(time.time())
            lines.append(f"  re-sent spans stored once: {st['remembered_spans']} identities remembered, reaching "
                         f"{st['window_s']:.0f}s back (window {self.config.dedup.window:g}s); "
                         f"{st['dropped_copies']} copies not stored again")
        return lines

    def export(self, batch: pa.Table) -> ExportResult:
        store = self.store
        if store is None:
            return ExportResult(ExportStatus.RETRYABLE, "duckdb exporter is not started")
        signal = signal_of(batch.schema)
        try:
            if signal == "traces":
                store.append(batch)
            else:
                store.append_signal(signal, batch)
        except StoreBehind as exc:
            return ExportResult(ExportStatus.RETRYABLE, str(exc), retry_after=1.0)
        except (duckdb.Error, OSError) as exc:
            self.logger.error("insert of %d %s rows failed: %s", batch.num_rows, signal, exc)
            return ExportResult(ExportStatus.RETRYABLE, f"span store write failed: {exc}")
        return SUCCESS

    def _housekeeping_interval(self) -> float:
        interval = self.config.retention_check_interval
        if self.config.parquet is not None:
            interval = min(interval, self.config.parquet.interval)
        return interval if interval > 0 else 3600

    def run_housekeeping(self, now_ns: int | None = None) -> None:
        store = self.store
        if store is None:
            return
        now_ns = now_ns if now_ns is not None else time.time_ns()
        try:
            if self.config.retention > 0:
                deleted = store.delete_older_than(self.config.retention / 86400, now_ns)
                if deleted:
                    self.logger.info("retention: deleted %d spans older than %gs", deleted, self.config.retention)
            if self.config.parquet is not None:
                self._export_completed_hours(store, now_ns)
        except (duckdb.Error, OSError, StoreBehind) as exc:  # tried again at the next interval
            self.logger.error("housekeeping failed: %s", exc)

    def _export_completed_hours(self, store: SpanStore, now_ns: int) -> None:
        """Every completed hour not exported yet; the mark is kept in the store, so a restart
        neither repeats nor skips hours.  Spans arriving after their hour was exported stay in
        DuckDB only."""
        assert self.config.parquet is not None
        directory = self.config.parquet.directory
        hour_start = now_ns - now_ns % _NS_PER_HOUR
        since = store.parquet_exported_until(directory)
        if since is not None and since >= hour_start:
            return
        files = store.export_parquet(directory, since, hour_start)
        store.set_parquet_exported_until(directory, hour_start)
        self.logger.info("parquet: exported spans up to %d into %s (%d files)", hour_start, directory, len(files))

    def _shutdown(self) -> None:
        if self._host is not None:
            self._host.withdraw(SpanStoreCapability, self.id)
            self._host.withdraw(Health, self.id)
        self._timer.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
