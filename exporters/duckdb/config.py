from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent_sre.exporters.duckdb.defaults import STORE_PATH
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.storage.attribution import AttributionSettings
from agent_sre.pipeline.storage.dedup import DedupSettings
from agent_sre.pipeline.storage.store import SpoolSettings, StoreSettings

_A, _S, _P, _D = AttributionSettings, StoreSettings, SpoolSettings, DedupSettings  # one set of defaults: the storage layer's


class ParquetConfig(ConfigModel):
    """Hourly Parquet files written for each completed hour (any engine can read them)."""

    directory: str = "./agent-sre-data/parquet"
    interval: Duration = Field(default="1h", gt=0)


class SpoolConfig(ConfigModel):
    """The write-ahead spool: clients are answered once their spans are in it (fsync-ed), and a
    loader inserts it into DuckDB in large transactions.  Off: every group commit is a DuckDB commit."""

    enabled: bool = True
    directory: str = ""  # default: <path>.spool
    flush_spans: int = Field(default=_P.flush_spans, gt=0)
    flush_interval: Duration = Field(default=_P.flush_interval, gt=0)
    max_pending_spans: int = Field(default=_P.max_pending_spans, gt=0)  # on disk, about 1 KB each
    # While the loader is behind, the rollup thread rolls up what it stored at most this long apart
    # (SpoolSettings.rollup_interval); keeping up, every insert rolls up its spans.
    rollup_interval: Duration = Field(default=_P.rollup_interval, ge=0)


class AttributionConfig(ConfigModel):
    """Agent identity follows the trace: how long a span without an agent waits for an ancestor
    that has one, how far back committed ancestors are looked up, and the service.name fallback."""

    wait: Duration = Field(default=_A.wait, gt=0)
    lookback: Duration = Field(default=_A.lookback, gt=0)
    service_name_fallback: bool = _A.service_name_fallback
    max_held_spans: int = Field(default=_A.max_held_spans, gt=0)


class DedupConfig(ConfigModel):
    """A client's re-send (spans with the trace and span ids of spans already stored, e.g. after the pipeline
    was killed before its OK left) within ``window`` is stored, counted and charged once; ``window: 0`` stores
    every copy.  ``max_spans`` identities at most are remembered (8 bytes each): at a higher rate the window
    is shorter (the store's status line says how long it reaches now)."""

    window: Duration = Field(default=_D.window, ge=0)
    max_spans: int = Field(default=_D.max_spans, gt=0)


class DuckDBExporterConfig(ConfigModel):
    path: str = STORE_PATH
    # Spans whose start is older than this are deleted; 0 keeps everything.
    retention: Duration = Field(default="7d", ge=0)
    retention_check_interval: Duration = Field(default="1h", gt=0)
    # DuckDB's own limits; the pipeline's RSS budget depends on them (why these: StoreSettings).
    memory_limit: str = Field(default=_S.memory_limit, pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    # More of it for the time an ad hoc query runs (`POST /v1/query`), given back after:
    # an exact quantile over millions of spans does not fit the pool ingest needs.  "0MB": no more.
    query_memory_limit: str = Field(default=_S.query_memory, pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    threads: int = Field(default=_S.threads, ge=1, le=64)
    # DuckDB's threads while an ad hoc query runs (set back after it; never fewer than `threads`).
    query_threads: int = Field(default=_S.query_threads, ge=1, le=64)
    # WAL size that triggers a checkpoint.  Larger: fewer, longer pauses of the loader.
    checkpoint_threshold: str = Field(default=_S.checkpoint_threshold,
                                      pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    # A store file that is missing (while its `<path>.created` marker says it existed) or corrupt:
    # `refuse` to start (the default: starting silently empty loses data), or `start_new` (loudly;
    # a corrupt file is renamed `<path>.corrupt-<time>`, never deleted).
    on_damaged_store: Literal["refuse", "start_new"] = _S.on_damaged  # type: ignore[assignment]
    # DuckDB holds the metadata of the row groups written since the file was attached (~16 bytes per row)
    # until it is detached: the store re-attaches its file after this many rows (~0.1 s); 0 never does.
    reattach_rows: int = Field(default=_S.reattach_rows, ge=0)
    parquet: ParquetConfig | None = None
    spool: SpoolConfig = SpoolConfig()
    attribution: AttributionConfig = AttributionConfig()
    dedup: DedupConfig = DedupConfig()
    # Spans of a replay's re-run (`agent-sre replay`: `agent_sre.replay.of` on the resource or span) are
    # stored but left out of SLIs, budgets, anomaly series, breakers and incidents; true counts them.
    count_replays: bool = False
