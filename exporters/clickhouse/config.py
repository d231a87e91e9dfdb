"""The clickhouse exporter's settings (the exporter helper's queue, retry and timeout included)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Literal

from pydantic import Field, model_validator

from agent_sre.exporters.helper.sender import HelperConfig
from agent_sre.pipeline.component.config import Duration

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseConfig(HelperConfig):
    # clickhouse://[user[:password]@]host[:port]/database — the native TCP protocol (port 9000 by default)
    endpoint: str
    username: str | None = None  # overrides the endpoint's user
    password: str | None = None
    create_schema: bool = False  # create the database, tables and view when missing (see schema.py)
    # current: ClickHouse >= 22.2 (Map, LowCardinality, DateTime64, TTL, skip index, dedup tokens);
    # compat: 18.16 and later; auto: chosen from the server's version at start
    schema_version: Literal["auto", "current", "compat"] = "auto"
    ttl_days: int = Field(default=30, ge=1)  # current schema: spans, events and rollups are dropped after this
    dedup_window: int = Field(default=10_000, ge=100)  # current schema: inserts remembered for deduplication
    # Native-protocol block compression: lz4 cuts the bench's spans from ~840 to ~85 bytes each for ~1 µs/span
    # of CPU (README); worth it off loopback.  lz4 needs pip install lz4 clickhouse-cityhash, zstd: zstd too.
    compression: Literal["none", "lz4", "zstd"] = "none"
    # Queued batches merged into one insert, up to this many rows (the batch that crosses it included):
    # ClickHouse wants few large inserts (README: ~150 µs/span of server time at 1k rows, ~23 at 20k on 18.16).
    # Memory: each consumer holds up to this many rows twice (Arrow, encoded block), ~1 KB/span each.
    merge_rows: int = Field(default=32_768, ge=1, le=1_000_000)  # < max_insert_block_size: one part
    merge_timeout: Duration = Field(default=0.2, ge=0)  # how long a consumer waits for more batches

    @model_validator(mode="after")
    def _check(self) -> ClickHouseConfig:
        url = urllib.parse.urlsplit(self.endpoint)
        if url.scheme != "clickhouse" or not url.hostname:
            raise ValueError(f"endpoint must be clickhouse://host[:port]/database (got {self.endpoint!r})")
        if not _IDENT.match(self.database):
            raise ValueError(f"the database name must be an identifier (got {self.database!r})")
        return self

    @property
    def database(self) -> str:
        return urllib.parse.urlsplit(self.endpoint).path.strip("/") or "default"

    def client_kwargs(self) -> dict:
        url = urllib.parse.urlsplit(self.endpoint)
        kwargs = {"host": url.hostname, "port": url.port or 9000, "database": "default",
                  "user": self.username or urllib.parse.unquote(url.username or "default"),
                  "password": self.password if self.password is not None else urllib.parse.unquote(url.password or ""),
                  "connect_timeout": min(self.timeout, 10), "send_receive_timeout": self.timeout,
                  "sync_request_timeout": self.timeout}
        if self.compression != "none":
            kwargs["compression"] = self.compression
        return kwargs
