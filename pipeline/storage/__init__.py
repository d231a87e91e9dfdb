"""Storage: the spool (a segment log), the DuckDB span store with its insert transaction (attribution,
rollups) and its SQL sandbox."""
