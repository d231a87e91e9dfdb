"""clickhouse: canonical agent spans and events into ClickHouse, through the exporter helper.

Each queued batch is one ``INSERT … VALUES`` in ClickHouse's native protocol (``clickhouse-driver``),
sent column by column (``columnar=True``: Arrow columns become the driver's column lists; the driver
encodes them).  The per-minute SLI/cost rollups are a materialised view of the spans table (schema.py),
so they follow the spans insert exactly.

Exactly-once per batch.  A batch's id is a hash of its (trace_id, span_id, start_ns) — or, for
events, (fingerprint, time_ns, state) — columns, so the same batch gets the same id on every retry,
after a restart from the persistent queue too.
  - current schema: the insert carries ``insert_deduplication_token = <batch id>``; the server keeps
    the last ``dedup_window`` tokens per table and drops a block it has seen (the rollup view's block
    with it), so a retry after a lost answer stores nothing twice.
  - compat schema (18.16, which has tokens only for replicated tables): before inserting, the
    exporter asks ``SELECT count() FROM spans WHERE batch_id = …``; a batch already there is acked
    without a second insert.  One batch is one part (the compat spans table is not partitioned), so
    the insert is all or nothing, and only one consumer holds a batch at a time.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.exporters.clickhouse.config import ClickHouseConfig
from agent_sre.exporters.clickhouse.schema import EVENT_COLUMNS, MAPS, SPAN_COLUMNS, ddl
from agent_sre.exporters.helper.sender import QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.pdata.schema import signal_of

# Server errors worth a retry (the rest — unknown table, type mismatch, syntax — are permanent):
# TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, SOCKET_TIMEOUT,
# NETWORK_ERROR, TOO_MANY_PARTS, TABLE_IS_READ_ONLY, KEEPER_EXCEPTION, ABORTED.
RETRYABLE_CODES = {159, 202, 241, 209, 210, 252, 242, 999, 236}
ID_COLUMNS = {"traces": ("trace_id", "span_id", "start_ns"), "events": ("fingerprint", "time_ns", "state")}
CURRENT_FROM = (22, 2)  # insert_deduplication_token for non-replicated MergeTree


def batch_id(batch: pa.Table, signal: str) -> str:
    """The same id for the same rows, on every retry and after a restart (a hash of the id columns)."""
    h = hashlib.blake2b(digest_size=16)
    for name in ID_COLUMNS[signal]:  # the values, not the Arrow layout (slices, chunks, validity bitmaps)
        col = batch.column(name).combine_chunks()
        if pa.types.is_string(col.type):
            offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset: col.offset + len(col) + 1]
            h.update((offsets - offsets[0]).tobytes())
            data = col.buffers()[2]
            h.update(data[int(offsets[0]): int(offsets[-1])] if data is not None and len(col) else b"")
        else:
            h.update(pc.fill_null(col, 0).to_numpy(zero_copy_only=False).tobytes())
    return h.hexdigest()


def _strings(col: pa.ChunkedArray) -> list:
    return pc.fill_null(col, "").to_pylist()


def _map_columns(col: pa.ChunkedArray, name: str, current: bool) -> dict[str, list]:
    if current:  # the driver takes a dict per row for Map
        return {name: [dict(m) if m else {} for m in col.to_pylist()]}
    arr = col.combine_chunks()  # Nested(key, value): two array columns, built without a row loop
    return {f"{name}.key": pa.ListArray.from_arrays(arr.offsets, arr.keys).to_pylist(),
            f"{name}.value": pa.ListArray.from_arrays(arr.offsets, arr.items).to_pylist()}


def insert_columns(batch: pa.Table, columns: tuple[str, ...], bid: str, current: bool) -> dict[str, list]:
    """Arrow columns as the driver's column lists, in insert order."""
    out: dict[str, list] = {}
    for name in columns:
        if name == "batch_id":
            out[name] = [bid] * batch.num_rows
        elif name in MAPS or name == "labels":
            out.update(_map_columns(batch.column(name), name, current))
        elif name in ("trace_id", "span_id", "agent_id", "fingerprint", "kind", "state"):
            out[name] = _strings(batch.column(name))
        elif name == "task_success":
            out[name] = pc.cast(batch.column(name), pa.uint8()).to_pylist()
        else:
            out[name] = batch.column(name).to_pylist()
    return out


class ClickHouseExporter(QueuedExporter):
    config: ClickHouseConfig

    def _start_client(self, host) -> None:
        import importlib.util

        if importlib.util.find_spec("clickhouse_driver") is None:  # said at start, not at every retry
            raise ImportError("the clickhouse exporter needs the ClickHouse client: pip install 'agent-sre[fleet]' "
                              "(clickhouse-driver)")
        self._local = threading.local()  # clickhouse-driver clients are not thread-safe: one per consumer
        self._ready_lock = threading.Lock()
        self._current: bool | None = None
        self.deduplicated = 0  # batches found already stored (compat schema) and not inserted again

    def _stop_client(self) -> None:
        pass  # the consumers' connections close with their threads

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from clickhouse_driver import Client

            client = self._local.client = Client(**self.config.client_kwargs())
        return client

    def _ready(self, client) -> bool:
        """Pick the schema (from the server's version) and create it when asked; once."""
        with self._ready_lock:
            if self._current is None:
                version = tuple(int(p) for p in client.execute("SELECT version()")[0][0].split(".")[:2])
                mode = self.config.schema_version
                current = version >= CURRENT_FROM if mode == "auto" else mode == "current"
                if self.config.create_schema:
                    for statement in ddl(self.config.database, current, self.config.ttl_days,
                                         self.config.dedup_window):
                        client.execute(statement)
                self._current = current
                self.logger.info("ClickHouse %s at %s: %s schema", ".".join(map(str, version)),
                                 self.config.endpoint.split("@")[-1], "current" if current else "compat")
            return self._current

    def send(self, batch: pa.Table) -> ExportResult:
        from clickhouse_driver.errors import Error, ServerException

        signal = signal_of(batch.schema)
        if signal not in ID_COLUMNS:
            return ExportResult(ExportStatus.PERMANENT, f"{signal} are not stored in ClickHouse (traces, events)")
        if batch.num_rows == 0:
            return SUCCESS
        client = self._client()
        try:
            current = self._ready(client)
            self._insert(client, batch, signal, current)
        except ServerException as exc:
            first = str(exc.message).splitlines()[0].split(" Stack trace:")[0]
            message = f"ClickHouse error {exc.code}: {first[:300]}"
            status = ExportStatus.RETRYABLE if exc.code in RETRYABLE_CODES else ExportStatus.PERMANENT
            return ExportResult(status, message)
        except (Error, OSError, EOFError) as exc:
            client.disconnect()
            return ExportResult(ExportStatus.RETRYABLE, f"{self.config.endpoint.split('@')[-1]}: {exc}")
        return SUCCESS

    def _insert(self, client, batch: pa.Table, signal: str, current: bool) -> None:
        table, columns = ("spans", SPAN_COLUMNS) if signal == "traces" else ("events", EVENT_COLUMNS)
        target = f"{self.config.database}.{table}"
        bid = batch_id(batch, signal)
        if not current and self._stored(client, target, batch, signal, bid):
            self.deduplicated += 1
            self.logger.info("batch %s (%d rows) is already in %s: not inserted again", bid, batch.num_rows, target)
            return
        data = insert_columns(batch, columns, bid, current)
        settings = {"insert_deduplication_token": bid,
                    "deduplicate_blocks_in_dependent_materialized_views": 1} if current else {}
        client.execute(f"INSERT INTO {target} ({', '.join(data)}) VALUES", list(data.values()), columnar=True,
                       settings=settings)

    @staticmethod
    def _stored(client, target: str, batch: pa.Table, signal: str, bid: str) -> bool:
        """Whether the batch is already there (compat).  For spans the look-up is narrowed to the batch's
        agents and seconds, so the primary key (agent_id, start_time) prunes it to a few granules instead
        of scanning every batch_id ever stored."""
        where, params = "batch_id = %(b)s", {"b": bid}
        if signal == "traces":
            start = batch.column("start_ns")
            bounds = pc.min_max(start)
            lo = 0 if start.null_count else bounds["min"].as_py() // 1_000_000_000
            params.update(agents=tuple(pc.unique(pc.fill_null(batch.column("agent_id"), "")).to_pylist()),
                          lo=lo, hi=(bounds["max"].as_py() or 0) // 1_000_000_000 + 1)
            where += (" AND agent_id IN %(agents)s AND start_time >= toDateTime(%(lo)s)"
                      " AND start_time <= toDateTime(%(hi)s)")
        return client.execute(f"SELECT count() FROM {target} WHERE {where}", params)[0][0] > 0

    def describe(self) -> list[str]:
        return [f"{self.id}: spans and events to {self.config.endpoint.split('@')[-1]}"
                f" (schema {self.config.schema_version}{', created on start' if self.config.create_schema else ''})"]


factory = Factory(type="clickhouse", kind=Kind.EXPORTER, config_model=ClickHouseConfig, create=ClickHouseExporter,
                  signals=("traces", "events"),
                  description="Agent spans (with per-minute SLI and cost rollups) and events to ClickHouse, "
                              "exactly once per batch.")
