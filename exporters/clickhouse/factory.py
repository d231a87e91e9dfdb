"""clickhouse: canonical agent spans and events into ClickHouse, through the exporter helper.

Large inserts.  ClickHouse wants few, large inserts (each insert is a part, and on 18.16 a part of
the rollup view too): measured on 18.16, 1,024-span inserts cost ~150 µs/span of server time, 20k-span
inserts ~23.  So each consumer merges the batches waiting in the sending queue into one insert of up
to ``merge_rows`` rows, waiting at most ``merge_timeout`` for more, and acks them together once the
insert succeeded.  The insert is encoded from the Arrow buffers with numpy (native.py), not value by
value in the driver.

Exactly-once per batch.  Each queued batch's id is a hash of its (trace_id, span_id, start_ns) — or,
for events, (fingerprint, time_ns, state) — columns: the same id for the same rows on every retry and
after a restart from the persistent queue, however the batches are merged.  Every row carries its
batch's id (``batch_id``).  Before an insert the exporter asks which of its batches are already stored
(``SELECT DISTINCT batch_id[, day]``, narrowed by agent and time so the primary key prunes it) and
drops them from the insert: one insert writes one part per partition, all or nothing, so a batch is
either wholly in a (batch, day) part or not at all.  That makes a retry after a lost answer, and a
restart that merges the pending batches differently, store nothing twice.  Only one consumer holds a
batch at a time, so nothing races the check.
  - current schema (spans partitioned by day): the check is per (batch, day); the insert also carries
    ``insert_deduplication_token`` (a hash of the (batch, day) keys it holds), so the server itself
    drops a repeated insert and the rollup view's block with it.
  - compat schema (18.16, tokens only for replicated tables): spans are not partitioned, so one insert
    of up to ``max_insert_block_size`` (1,048,576) rows is one part; the check alone does it.

Once per span, for reads.  The batch check cannot see a span a client re-sent (its OK lost when a
pipeline was killed) in another batch, to this pipeline or another one: that copy is inserted.  Spans go
to ``spans_raw``, a ReplacingMergeTree keyed by the span's identity, and are read through the view
``spans`` (``FINAL``): the copies are one row to every reader at once, and merges drop them (schema.py).
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.exporters.clickhouse import native
from agent_sre.exporters.clickhouse.config import ClickHouseConfig
from agent_sre.exporters.clickhouse.schema import (
    EVALUATIONS,
    EVENT_COLUMNS,
    LEGACY_SPANS_SQL,
    LOG_COLUMNS,
    MAP_COLUMNS,
    METRIC_COLUMNS,
    NESTED_COLUMNS,
    RAW_SPANS,
    SPAN_COLUMNS,
    ddl,
    legacy_spans,
    missing_columns,
    spans_view,
    with_evaluations,
)
from agent_sre.exporters.helper.sender import QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.pdata.schema import LOG_SCHEMA, METRIC_SCHEMA, signal_of

# Server errors worth a retry (the rest — unknown table, type mismatch, syntax — are permanent):
# TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, SOCKET_TIMEOUT,
# NETWORK_ERROR, TOO_MANY_PARTS, TABLE_IS_READ_ONLY, KEEPER_EXCEPTION, ABORTED.
RETRYABLE_CODES = {159, 202, 241, 209, 210, 252, 242, 999, 236}
# A batch's id is a hash of these columns' values.  Spans and events have an identity; a metric point or a
# log record has none, so their batch id hashes every column (NULLs told from '' and 0): only a batch equal
# in every value -- the same batch again -- is taken for one already stored.
ID_COLUMNS = {"traces": ("trace_id", "span_id", "start_ns"), "events": ("fingerprint", "time_ns", "state"),
              "metrics": tuple(METRIC_SCHEMA.names), "logs": tuple(LOG_SCHEMA.names)}
_WHOLE_ROW = ("metrics", "logs")
# Per signal: the table and its columns (spans: the exporter's _spans_table and _span_columns), the time its rows are partitioned
# and looked up by (Arrow column, ClickHouse column), and the insert's columns that are not Nullable.
TABLES = {"events": ("events", EVENT_COLUMNS), "metrics": ("metrics", METRIC_COLUMNS), "logs": ("logs", LOG_COLUMNS)}
TIME_COLUMNS = {"traces": ("start_ns", "start_time"), "metrics": ("time_ns", "time"), "logs": ("time_ns", "time")}
NOT_NULL = {"traces": frozenset(("trace_id", "span_id", "agent_id")),
            "events": frozenset(("time_ns", "kind", "state", "fingerprint")),
            "metrics": frozenset(("time_ns", "metric_name", "service_name")),
            "logs": frozenset(("time_ns", "trace_id", "span_id", "service_name"))}
CURRENT_FROM = (22, 2)  # insert_deduplication_token for non-replicated MergeTree
NS_PER_DAY = 86_400 * 10**9


def batch_id(batch: pa.Table, signal: str) -> str:
    """The same id for the same rows, on every retry and after a restart (a hash of the id columns)."""
    h = hashlib.blake2b(digest_size=16)
    for name in ID_COLUMNS[signal]:  # the values, not the Arrow layout (slices, chunks, validity bitmaps)
        _hash_values(h, batch.column(name).combine_chunks(), signal in _WHOLE_ROW)
    return h.hexdigest()


def _hash_values(h, col: pa.Array, nulls: bool) -> None:
    """Feed one column's values to ``h``: strings as lengths and bytes, numbers with NULL as 0, and (with
    ``nulls``) which values are NULL; lists and maps as their lengths and their elements, structs field by
    field.  Spans and events hash without ``nulls``: their ids must not change for batches already queued."""
    if nulls:
        h.update(pc.is_null(col).to_numpy(zero_copy_only=False).tobytes())
    if pa.types.is_string(col.type):
        offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset: col.offset + len(col) + 1]
        h.update((offsets - offsets[0]).tobytes())
        data = col.buffers()[2]
        h.update(data[int(offsets[0]): int(offsets[-1])] if data is not None and len(col) else b"")
    elif pa.types.is_map(col.type) or pa.types.is_list(col.type):
        if pa.types.is_map(col.type):
            col = pa.ListArray.from_arrays(col.offsets, col.values, mask=col.is_null() if col.null_count else None)
        h.update(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).tobytes())
        _hash_values(h, pc.list_flatten(col), nulls)
    elif pa.types.is_struct(col.type):
        for i in range(col.type.num_fields):
            _hash_values(h, pc.struct_field(col, [i]), nulls)
    else:
        if pa.types.is_boolean(col.type):
            col = pc.cast(col, pa.uint8())
        h.update(pc.fill_null(col, 0).to_numpy(zero_copy_only=False).tobytes())


def with_batch_ids(tables: list[pa.Table], signal: str) -> pa.Table:
    """Queued batches as one table, each row carrying its own batch's id (``batch_id``)."""
    ids = pa.array([batch_id(t, signal) for t in tables])
    which = np.repeat(np.arange(len(tables)), [t.num_rows for t in tables])
    merged = pa.concat_tables([t.drop_columns(["batch_id"]) if "batch_id" in t.schema.names else t for t in tables])
    return merged.append_column("batch_id", pc.take(ids, pa.array(which, pa.int32())))


def _strings(col: pa.ChunkedArray) -> list:
    return pc.fill_null(col, "").to_pylist()


def _map_columns(col: pa.ChunkedArray, name: str, current: bool) -> dict[str, list]:
    if current:  # the driver takes a dict per row for Map (a NULL value stored as '', as native.py does)
        return {name: [{k: "" if v is None else v for k, v in m} if m else {} for m in col.to_pylist()]}
    arr = col.combine_chunks()  # Nested(key, value): two array columns, built without a row loop
    return {f"{name}.key": pa.ListArray.from_arrays(arr.offsets, arr.keys).to_pylist(),
            f"{name}.value": pa.ListArray.from_arrays(arr.offsets, pc.fill_null(arr.items, "")).to_pylist()}


def insert_columns(batch: pa.Table, columns: tuple[str, ...], bid: str | list[str], current: bool,
                   not_null: frozenset[str] = NOT_NULL["traces"]) -> dict[str, list]:
    """Arrow columns as clickhouse-driver's column lists, in insert order: the fallback when the server
    wants a column type native.py does not encode (slow: the driver encodes value by value)."""
    out: dict[str, list] = {}
    for name in columns:
        col = batch.column(name) if name != "batch_id" else None
        if col is None:
            out[name] = [bid] * batch.num_rows if isinstance(bid, str) else list(bid)
        elif name in MAP_COLUMNS:
            out.update(_map_columns(col, name, current))
        elif name in NESTED_COLUMNS:
            out.update({k: _arrays(v) for k, v in _nested_columns(col.combine_chunks(), name).items()})
        elif pa.types.is_list(col.type):
            out[name] = _arrays(col)
        elif name in not_null:
            out[name] = _strings(col) if pa.types.is_string(col.type) else pc.fill_null(col, 0).to_pylist()
        elif pa.types.is_boolean(col.type):
            out[name] = pc.cast(col, pa.uint8()).to_pylist()
        else:
            out[name] = col.to_pylist()
    return out


def _arrays(col: pa.Array | pa.ChunkedArray) -> list[list]:
    """An Array(number) column for the driver: a NULL list empty, a NULL element 0 (as native.py writes them)."""
    return [[0 if e is None else e for e in v] if v else [] for v in col.to_pylist()]


def _nested_columns(col: pa.ListArray, name: str) -> dict[str, pa.Array]:
    """A list of structs as the Nested columns ``name.field``: one list array per field, offsets shared."""
    mask = col.is_null() if col.null_count else None
    return {f"{name}.{field}": pa.ListArray.from_arrays(col.offsets, pc.struct_field(col.values, field), mask=mask)
            for field in NESTED_COLUMNS[name]}


def arrow_columns(batch: pa.Table, columns: tuple[str, ...], current: bool) -> dict[str, pa.Array]:
    """The insert's columns as Arrow arrays, in insert order (``batch`` carries ``batch_id``); compat
    maps become the Nested pair ``name.key``/``name.value`` (offsets shared, no copy of the strings)."""
    out: dict[str, pa.Array] = {}
    for name in columns:
        col = batch.column(name).combine_chunks()
        if name in NESTED_COLUMNS:
            out.update(_nested_columns(col, name))
        elif name in MAP_COLUMNS and not current:
            mask = col.is_null() if col.null_count else None
            out[f"{name}.key"] = pa.ListArray.from_arrays(col.offsets, col.keys, mask=mask)
            out[f"{name}.value"] = pa.ListArray.from_arrays(col.offsets, col.items, mask=mask)
        else:
            out[name] = col
    return out


class ClickHouseExporter(QueuedExporter):
    config: ClickHouseConfig

    def _start_client(self, host) -> None:
        import importlib.util

        if importlib.util.find_spec("clickhouse_driver") is None:  # said at start, not at every retry
            raise ImportError("the clickhouse exporter needs the ClickHouse client: pip install 'agent-sre[fleet]' "
                              "(clickhouse-driver)")
        compression = self.config.compression
        needs = {"lz4": ("lz4", "clickhouse_cityhash"), "zstd": ("zstd", "clickhouse_cityhash")}.get(compression, ())
        if any(importlib.util.find_spec(m) is None for m in needs):
            raise ImportError(f"compression: {compression} needs pip install "
                              f"{' '.join(m.replace('_', '-') for m in needs)}")
        self._local = threading.local()  # clickhouse-driver clients are not thread-safe: one per consumer
        self._ready_lock = threading.Lock()
        self._current: bool | None = None
        self._spans_table = RAW_SPANS  # ``spans`` when that is an older version's MergeTree (see _ready)
        self._span_columns = SPAN_COLUMNS  # without ``evaluations`` in a table made before it, left as it is
        self.deduplicated = 0  # queued batches found already stored and not inserted again
        self.inserts = 0  # inserts sent (merged batches count once)
        self._fallback_logged = False

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
                db = self.config.database
                engine = client.execute(LEGACY_SPANS_SQL, {"db": db})
                legacy = legacy_spans(engine[0][0] if engine else None)
                if self.config.create_schema:
                    for statement in ddl(db, current, self.config.ttl_days, self.config.dedup_window):
                        if not (legacy and RAW_SPANS in statement):  # nothing read from a second spans table
                            client.execute(statement)
                if legacy:
                    self._spans_table = "spans"
                    self.logger.warning(
                        "%s.spans is a %s table created by an older agent-sre: spans go on into it, and a span "
                        "a client re-sent is stored and counted by fleet SQL once per copy. To count each span "
                        "once, move it to %s.%s and the view spans (exporters/clickhouse/README.md: "
                        "Tables of an older version)", db, engine[0][0], db, RAW_SPANS)
                self._upgrade(client, db, current, legacy)
                self._current = current
                self.logger.info("ClickHouse %s at %s: %s schema, spans into %s", ".".join(map(str, version)),
                                 self.config.endpoint.split("@")[-1], "current" if current else "compat",
                                 self._spans_table)
            return self._current

    def _upgrade(self, client, db: str, current: bool, legacy: bool) -> None:
        """A spans table an earlier version made gets the columns added since (when this exporter creates the
        schema; the view ``spans`` is made again to show them), or is inserted into without them."""
        table = self._spans_table
        present = {r[0] for r in client.execute("SELECT name FROM system.columns WHERE database = %(db)s "
                                                "AND table = %(t)s", {"db": db, "t": table})}
        alter = missing_columns(db, table, current, present)
        if not present or not alter:  # no table (create_schema off): nothing to tell yet
            return
        if not self.config.create_schema:
            self._span_columns = tuple(c for c in SPAN_COLUMNS if c != EVALUATIONS)
            self.logger.info("%s.%s has no %s column (create_schema is off): spans are stored without their "
                             "evaluation results, and the fleet views leave hallucination_rate out", db, table,
                             EVALUATIONS)
            return
        for statement in alter:
            client.execute(statement)
        if not legacy:
            client.execute(f"DROP TABLE IF EXISTS {db}.spans")  # a view: SELECT * is expanded when it is made
            client.execute(spans_view(db))
        self.logger.info("%s.%s: added %s (the spans' evaluation results)", db, table, EVALUATIONS)

    # --- merging queued batches into large inserts ---------------------------------------------

    def _consume(self) -> None:
        """The helper's consumer loop, taking every batch waiting (up to ``merge_rows``) per insert;
        the batches are acked together after the insert (or given up together)."""
        queue = self._queue
        assert queue is not None
        while not self._stopping.is_set():
            items = self._take(queue)
            by_signal: dict[str, list] = {}
            for item in items:
                by_signal.setdefault(signal_of(item.table.schema), []).append(item)
            for signal, group in by_signal.items():
                try:
                    merged = [(group, _merge([item.table for item in group], signal))]
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # e.g. a batch queued by an older version
                    self.logger.warning("queued batches not merged (%s): sent one by one", exc)
                    merged = [([item], _merge([item.table], signal)) for item in group]
                for items_of_batch, batch in merged:
                    result = self._deliver(batch)
                    if result.status is ExportStatus.RETRYABLE and self._stopping.is_set():
                        if queue.persistent:
                            continue  # cut short by shutdown: not acked, so the next start sends them again
                        self._give_up(batch, result, "shut down while retrying")
                    for item in items_of_batch:
                        queue.ack(item)

    def _take(self, queue) -> list:
        first = queue.get(timeout=0.5)
        if first is None:
            return []
        items, rows = [first], first.rows
        deadline = time.monotonic() + self.config.merge_timeout
        while rows < self.config.merge_rows and not self._stopping.is_set():
            item = queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            items.append(item)
            rows += item.rows
        return items

    # --- one insert ----------------------------------------------------------------------------

    def send(self, batch: pa.Table) -> ExportResult:
        from clickhouse_driver.errors import Error, ServerException

        signal = signal_of(batch.schema)
        if signal not in ID_COLUMNS:
            return ExportResult(ExportStatus.PERMANENT, f"{signal} are not stored in ClickHouse")
        if batch.num_rows == 0:
            return SUCCESS
        if "batch_id" not in batch.schema.names:  # one batch, not merged by the consumer
            batch = with_batch_ids([batch], signal)
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
        table, columns = (self._spans_table, self._span_columns) if signal == "traces" else TABLES[signal]
        target = f"{self.config.database}.{table}"
        by_day = signal in TIME_COLUMNS and current  # current spans, metrics, logs: one part per day partition
        keys = _part_keys(batch, TIME_COLUMNS[signal][0] if by_day else None)
        stored = self._stored(client, target, batch, signal, by_day)
        if stored:
            fresh = pc.invert(pc.is_in(keys, value_set=pa.array(sorted(stored))))
            skipped = set(pc.unique(batch.column("batch_id")).to_pylist())
            batch = batch.filter(fresh)
            keys = keys.filter(fresh)
            skipped -= set(pc.unique(batch.column("batch_id")).to_pylist())
            self.deduplicated += len(skipped)
            self.logger.info("%d batches already in %s: not inserted again (%d rows left)", len(skipped), target,
                             batch.num_rows)
            if batch.num_rows == 0:
                return
        if EVALUATIONS in columns:
            batch = with_evaluations(batch)
        query = f"INSERT INTO {target} ({', '.join(_insert_names(columns, current))}) VALUES"
        settings = {}
        if current:
            token = hashlib.blake2b("\n".join(pc.unique(keys).sort().to_pylist()).encode(), digest_size=16)
            settings = {"insert_deduplication_token": token.hexdigest(),
                        "deduplicate_blocks_in_dependent_materialized_views": 1}
        try:
            native.insert(client, query, arrow_columns(batch, columns, current), settings)
        except native.UnsupportedType as exc:
            if not self._fallback_logged:  # e.g. a table altered by hand; still correct, only slower
                self._fallback_logged = True
                self.logger.warning("%s: %s; inserting through the driver's own (slower) encoding", target, exc)
            data = insert_columns(batch, columns, batch.column("batch_id").to_pylist(), current, NOT_NULL[signal])
            client.execute(query, list(data.values()), columnar=True, settings=settings)
        self.inserts += 1

    @staticmethod
    def _stored(client, target: str, batch: pa.Table, signal: str, by_day: bool) -> set[str]:
        """The batch's (batch id[, day]) keys already in the table.  For spans, metrics and logs the look-up is
        narrowed to the batch's agents (services, metrics) and seconds, so the primary key -- (agent_id,
        start_time); (service_name, metric_name, time); (service_name, time) -- prunes it to a few granules
        instead of scanning every batch_id ever stored."""
        ids = tuple(pc.unique(batch.column("batch_id")).to_pylist())
        where = "batch_id IN %(ids)s"
        params: dict[str, object] = {"ids": ids}
        if signal in TIME_COLUMNS:
            ns, time_column = TIME_COLUMNS[signal]
            start = batch.column(ns)
            bounds = pc.min_max(start)
            lo = 0 if start.null_count else bounds["min"].as_py() // 1_000_000_000
            params.update(lo=lo, hi=(bounds["max"].as_py() or 0) // 1_000_000_000 + 1)
            for column in {"traces": ("agent_id",), "metrics": ("service_name", "metric_name"),
                           "logs": ("service_name",)}[signal]:
                params[column] = tuple(pc.unique(pc.fill_null(batch.column(column), "")).to_pylist())
                where += f" AND {column} IN %({column})s"
            where += f" AND {time_column} >= toDateTime(%(lo)s) AND {time_column} <= toDateTime(%(hi)s)"
        else:
            time_column = ""
        key = f"concat(batch_id, '/', toString(toUInt16(toDate({time_column}))))" if by_day else "batch_id"
        return {row[0] for row in client.execute(f"SELECT DISTINCT {key} FROM {target} WHERE {where}", params)}

    def describe(self) -> list[str]:
        return [f"{self.id}: spans, events, metrics and logs to {self.config.endpoint.split('@')[-1]}"
                f" (schema {self.config.schema_version}{', created on start' if self.config.create_schema else ''})"]


def _merge(tables: list[pa.Table], signal: str) -> pa.Table:
    return with_batch_ids(tables, signal) if signal in ID_COLUMNS else pa.concat_tables(tables)


def _part_keys(batch: pa.Table, time_ns: str | None) -> pa.Array:
    """Each row's unit of atomicity: its batch id, and for day-partitioned tables (``time_ns``: the column
    of the time they are partitioned by) '<id>/<day number>'."""
    ids = batch.column("batch_id").combine_chunks()
    if time_ns is None:
        return ids
    days = pc.divide(pc.fill_null(batch.column(time_ns), 0), NS_PER_DAY)
    return pc.binary_join_element_wise(ids, pc.cast(days, pa.string()), "/").combine_chunks()


def _insert_names(columns: tuple[str, ...], current: bool) -> list[str]:
    maps = () if current else MAP_COLUMNS
    return [n for c in columns for n in ((f"{c}.key", f"{c}.value") if c in maps else
                                         tuple(f"{c}.{f}" for f in NESTED_COLUMNS[c]) if c in NESTED_COLUMNS else (c,))]


factory = Factory(type="clickhouse", kind=Kind.EXPORTER, config_model=ClickHouseConfig, create=ClickHouseExporter,
                  signals=("traces", "events", "metrics", "logs"),
                  description="Agent spans (with per-minute SLI and cost rollups), events, metrics and logs to ClickHouse, "
                              "exactly once per batch, in large merged inserts.")
