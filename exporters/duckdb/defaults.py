"""The duckdb exporter's defaults that the command line needs without loading the exporter."""

STORE_PATH = "./agent-sre-data/spans.duckdb"
