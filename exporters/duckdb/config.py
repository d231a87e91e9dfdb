from __future__ import annotations

from pydantic import Field

from agent_sre.pipeline.config import ConfigModel, Duration


class ParquetConfig(ConfigModel):
    """Hourly Parquet files written for each completed hour (any engine can read them)."""

    directory: str = "./agent-sre-data/parquet"
    interval: Duration = Field(default="1h", gt=0)


class SpoolConfig(ConfigModel):
    """The write-ahead spool: clients are answered once their spans are in it (fsync-ed), and a
    loader inserts it into DuckDB in large transactions.  Off: every group commit is a DuckDB commit."""

    enabled: bool = True
    directory: str = ""  # default: <path>.spool
    flush_spans: int = Field(default=16_384, gt=0)
    flush_interval: Duration = Field(default="500ms", gt=0)
    max_pending_spans: int = Field(default=1_048_576, gt=0)  # on disk, about 1 KB each


class DuckDBExporterConfig(ConfigModel):
    path: str = "./agent-sre-data/spans.duckdb"
    # Spans whose start is older than this are deleted; 0 keeps everything.
    retention: Duration = Field(default="7d", ge=0)
    retention_check_interval: Duration = Field(default="1h", gt=0)
    # DuckDB's own limits; the pipeline's RSS budget depends on them.  Measured on 2 cores
    # (docs/benchmarks.md): one thread leaves the other core to the receiver workers, and a
    # checkpoint every 96MB of WAL keeps inserts fast within a 96MB buffer pool.
    memory_limit: str = Field(default="48MB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    threads: int = Field(default=1, ge=1, le=64)
    # WAL size that triggers a checkpoint.  Larger: fewer, longer pauses of the loader.
    checkpoint_threshold: str = Field(default="96MB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    parquet: ParquetConfig | None = None
    spool: SpoolConfig = SpoolConfig()
