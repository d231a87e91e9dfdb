from agent_sre.exporters.duckdb.config import DuckDBExporterConfig
from agent_sre.exporters.duckdb.exporter import DuckDBExporter
from agent_sre.pipeline.component import Factory, Kind

factory = Factory(
    type="duckdb",
    kind=Kind.EXPORTER,
    config_model=DuckDBExporterConfig,
    create=DuckDBExporter,
    signals=("traces", "metrics", "logs"),
    description="Stores spans, metric points and log records in an embedded DuckDB file (the first durable "
                "point), with retention and hourly Parquet export.",
)
