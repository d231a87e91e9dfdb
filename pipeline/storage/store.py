"""The DuckDB span store: the one place that writes spans to DuckDB.

One database file has one writer (this process).  ``append`` makes a batch durable in the
write-ahead spool (spool.py) and returns; a loader thread inserts spooled batches in large
transactions, each of which attributes agents (attribution.py), inserts the released spans,
rolls them up (rollups.py) and records the spool position, so everything is exactly once; commit
callbacks (budgets, breakers, SLO wake-ups) run after it on their own thread.

Ad hoc SQL (``query``) goes through the sandbox (sandbox.py), and the whole database instance has
external access switched off with no directory allowed: no SQL reads or writes any file (the
spool is read and Parquet written by Python).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from agent_sre.pipeline.pdata.schema import EVENT_SCHEMA, LOG_SCHEMA, METRIC_SCHEMA, SPAN_SCHEMA
from agent_sre.pipeline.storage import attribution
from agent_sre.pipeline.storage.attribution import HELD_DDL, AttributionSettings
from agent_sre.pipeline.storage.dedup import DedupSettings, RecentSpans, span_keys
from agent_sre.pipeline.storage.map_reads import stored_view_sql
from agent_sre.pipeline.storage.rollups import (
    AGENT_MINUTES_DDL,
    AGENT_ROLLUP_SQL,
    CHARGES_SPLIT_SQL,
    CHARGES_SQL,
    COST_MINUTES_DDL,
    COST_MINUTES_MIGRATION,
    COST_ROLLUP_SQL,
    COUNTED_ALL,
    COUNTED_WITHOUT_REPLAYS,
    REPLAY_KEY,
    SPAN_ROLLUP_SQL,
    TASK_GRACE_NS,
    TASK_SPEND_RETURNING,
    TRACE_ID_KEY,
    TRACE_ROLLUPS_DDL,
    TRACE_ROLLUPS_KEY_MIGRATION,
    TRACE_ROLLUPS_MIGRATION,
    Lookup,
    SliRollup,
    finalize_tasks_sql,
    held_presence_sql,
    lookups,
    orphan_cutoff,
    present,
    rollup_sql,
    stored_after,
    validate_sql,
    without,
)
from agent_sre.pipeline.storage.sandbox import (
    QueryError,
    QueryLimits,
    QueryResult,
    check_read_only,
    restrict_file_access,
    run_query,
)
from agent_sre.pipeline.storage.spool import (
    LEGACY_SUFFIX,
    Spool,
    SpooledBatch,
    load,
    read_after,
    read_legacy,
    recover,
    remove_segments,
    segments,
)

log = logging.getLogger("agent_sre.store")

_NS_PER_DAY = 86_400 * 1_000_000_000
_FINALIZE_EVERY_S = 5.0  # how often inserts also count the tasks that became due
# Consecutive failed inserts after which the store refuses new data (retryable) and reports unhealthy:
# one failure is the large-value case the loader mends itself (see _insert_failed).
_FAILURES_BEFORE_REFUSING = 3
# The buffer pools tried, in turn, for a WAL replay or a checkpoint that does not fit the configured one
# (once, at open): 4 and 16 times it, then 2GB.  A checkpoint of a store sized for a 256 MiB pipeline
# (32 MiB) that lacked 3 MiB took the process to 1.25 GiB RSS with the 2GB pool straight away.
_RECOVERY_FACTORS = (4, 16)
_RECOVERY_MEMORY = "2GB"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


def size_bytes(size: str) -> int:
    """A DuckDB size as the config takes it ("48MB", "1.5 GiB"): KB/MB/GB in powers of 1000, as DuckDB reads them."""
    number = size.rstrip("BIKMGbikmg ")
    return int(float(number) * _UNITS[size[len(number):].strip().upper()])


def recovery_pools(memory_limit: str) -> list[str]:
    """The buffer pools to checkpoint with, smallest first (``_RECOVERY_FACTORS`` of the configured one
    under ``_RECOVERY_MEMORY``, then that)."""
    try:
        configured = size_bytes(str(memory_limit))
    except (KeyError, ValueError):
        return [_RECOVERY_MEMORY]
    ceiling = size_bytes(_RECOVERY_MEMORY)
    return [f"{configured * k}B" for k in _RECOVERY_FACTORS if configured * k < ceiling] + [_RECOVERY_MEMORY]


_DRAIN_SAMPLE_ROWS = 1024  # the loader's insert rate is measured on inserts of at least this many spans


class StoreBehind(Exception):
    """The store cannot take more now (its loader is behind, or it is closing): retry later."""


@dataclass(frozen=True)
class StoreSettings:
    """DuckDB's own limits: the one set of defaults (the duckdb exporter's config takes them from here).
    Measured on 2 cores (docs/benchmarks.md): one thread leaves the other core to the receiver workers,
    and a checkpoint every 96MB of WAL keeps inserts fast within a 48MB buffer pool."""

    memory_limit: str = "48MB"
    # More buffer pool for the time an ad hoc query runs (`SpanStore.query`), given back after it: an exact
    # quantile_cont over 10M spans holds every value (~80 MB) and DuckDB does not spill it.  At most half
    # the query's own growth limit is used (QueryLimits.max_memory_bytes, 256 MiB): the pool also caches
    # the blocks a scan reads, and with 48 + 256 MB a 10M-span scan grew the process past that limit.
    query_memory: str = "128MB"
    threads: int = 1
    # DuckDB's threads while an ad hoc query runs (10M spans, in process: a trace by id 64 -> 52 ms, the
    # attribute group-by 1.5 -> 0.87 s on 2 cores); one for ingest alone (two made the loader slower).
    query_threads: int = 2
    checkpoint_threshold: str = "96MB"
    on_damaged: str = "refuse"  # a missing or corrupt store file: refuse to start, or start_new
    # DuckDB keeps the metadata of every row group written since the file was attached in the C heap for
    # as long as it stays attached (measured: ~16 bytes per stored row with 8,192-row groups, ~128 KiB per
    # group, not in its buffer pool and not freed by CHECKPOINT); after this many rows inserted the store
    # detaches and re-attaches its file (~0.1 s plus a checkpoint), which frees it.  0: never.
    reattach_rows: int = 1_000_000


@dataclass(frozen=True)
class SpoolSettings:
    """Where the spool lives and when its loader inserts into DuckDB (see pipeline/storage/spool.py)."""

    directory: str
    flush_spans: int = 16_384  # insert once this many spans are spooled ...
    flush_interval: float = 0.5  # ... or the oldest has waited this long (seconds)
    max_pending_spans: int = 1_048_576  # spooled, not yet inserted (on disk, ~1 KB each); beyond it append() refuses
    # Arrow bytes per insert transaction: DuckDB pins a transaction's large values in its buffer pool, so a few
    # multi-MiB attributes must not share one.  Halved after each failed insert, doubled back after a success.
    # 0: 16 MiB, or 1 KiB per ``flush_spans`` span when that is more (raising flush_spans alone, a fixed
    # 16 MiB budget still ended transactions at ~16k spans).
    max_insert_bytes: int = 0
    segment_bytes: int = 64 << 20
    # While the loader is behind (a whole ``flush_spans`` insert already waits after the one it takes), its
    # inserts leave the SRE rollups to the rollup thread (SpanStore._roll), which rolls up what they stored at
    # most this long (seconds) or ``4 * flush_spans`` spans apart: each rollup statement has a fixed cost per
    # run (pipeline/storage/rollups.py, "deferred rollups").  Keeping up, every insert rolls up.
    rollup_interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.max_insert_bytes:
            object.__setattr__(self, "max_insert_bytes", max(16 << 20, self.flush_spans << 10))


# Spans are stored in the table `span_rows`, where the attribute maps are lists of (key, value)
# structs, and read through the view `spans`, which presents them as MAP(VARCHAR, VARCHAR).
# Measured here: DuckDB ingests Arrow maps at about half the rate of the same data as lists of
# structs (it validates map keys row by row), and ingest is the hot path; the view pays that cost
# only for the rows a query reads.  Keys are unique per span already (the converter dedups them).
MAP_COLUMNS = ("attributes", "resource_attributes", "scope_attributes")
_ENTRY = pa.struct([("key", pa.string()), ("value", pa.string())])
STORAGE_SCHEMA = pa.schema([
    pa.field(f.name, pa.list_(_ENTRY)) if f.name in MAP_COLUMNS else f for f in SPAN_SCHEMA])


# Set by the store when a span is inserted (pipeline/attribution.py reads recent ancestors by it).
STORED_SCHEMA = STORAGE_SCHEMA.append(pa.field("received_ns", pa.int64()))


def _invert(mask: pa.Array) -> pa.Array:
    import pyarrow.compute as pc  # see replay_mask

    return pc.invert(mask)


def replay_mask(rows: pa.Table) -> pa.Array | None:
    """Which rows (storage layout) are spans of a replay's re-run (``REPLAY_KEY`` on their resource or
    on the span); None when there are none.  Columnar: one comparison per attribute key."""
    # here, not at the top: pyarrow.compute is ~40 ms of `agent-sre query --db`'s start-up
    from agent_sre.pipeline.pdata.maps import rows_with_key

    mask = None
    for column in ("resource_attributes", "attributes"):
        if column in rows.column_names and (hit := rows_with_key(rows.column(column), REPLAY_KEY)) is not None:
            mask = hit if mask is None else mask | hit
    return None if mask is None else pa.array(mask)


@contextlib.contextmanager
def _rolled_back_on_error(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """A transaction begun on ``con`` within the block is rolled back if the block raises."""
    try:
        yield
    except BaseException:
        try:
            con.execute("ROLLBACK").fetchall()
        except duckdb.Error:
            pass  # nothing to roll back (BEGIN itself failed)
        raise


class _Statements:
    """An insert transaction's statements, those whose results are not read sent to DuckDB together: one
    call for several (a call releases the GIL and takes it back, and the loader shares it with the
    receiver's and the flusher's threads); each statement whose result is read first sends what waits."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.waiting: list[str] = []

    def add(self, sql: str) -> None:
        self.waiting.append(sql)

    def flush(self) -> None:
        if self.waiting:
            text, self.waiting = ";\n".join(self.waiting), []
            self.con.execute(text).fetchall()

    def run(self, sql: str, params: list | None = None) -> list[tuple]:
        self.flush()
        return self.con.execute(sql, params or []).fetchall()


@dataclass(frozen=True)
class _Rollups:
    """An insert transaction's rollup statements: the span-scope SLIs', the trace rollup's (None without
    task SLIs or task budgets), the per-minute agent and cost rollups' and the charges query."""

    span: list[str]
    trace: str | None
    agent: str
    cost: str
    charges: str

    def reading(self, source: str) -> _Rollups:
        """The same statements reading ``source`` (the batch ``_in``, or rollups.stored_after) where they
        read the ``_counted`` view."""
        def read(sql: str) -> str:
            sql = sql.replace("FROM _counted", f"FROM {source}")
            if re.search(r"\b_counted\b", sql):  # a view only the attribution and replay paths create
                raise AssertionError(f"a rollup statement reads _counted other than 'FROM _counted': {sql}")
            return sql

        return _Rollups([read(x) for x in self.span], None if self.trace is None else read(self.trace),
                        read(self.agent), read(self.cost), read(self.charges))


def to_storage(batch: pa.Table) -> pa.Table:
    """Canonical batch -> storage layout: map columns become list<struct<key, value>> (zero copy).

    Columns are taken by name, so a batch spooled by an older version (fewer columns) still loads."""
    columns = []
    fields = []
    for field in batch.schema:
        col = batch.column(field.name)
        if field.name in MAP_COLUMNS:
            col = pa.chunked_array([_entries(c) for c in col.chunks], pa.list_(_ENTRY))
            field = pa.field(field.name, col.type)
        columns.append(col)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _entries(maps: pa.MapArray) -> pa.ListArray:
    """A map array as a list of (key, value) structs, sharing its buffers.  A slice's offsets are a slice
    too, indexing its keys and items from the start of the whole array; Arrow takes a null mask only with
    offsets that are not a slice, so a slice with null maps gets new offsets from 0 (one small array) and
    its entries sliced to match (no copy)."""
    offsets, keys, items = maps.offsets, maps.keys, maps.items
    mask = maps.is_null() if maps.null_count else None
    if mask is not None and maps.offset:
        import pyarrow.compute as pc  # here, not at the top: ~36 ms of `agent-sre query --db`'s start-up

        start, end = offsets[0].as_py(), offsets[-1].as_py()
        offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))
        keys, items = keys.slice(start, end - start), items.slice(start, end - start)
    return pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays([keys, items], fields=list(_ENTRY)), mask=mask)


_STORED = "(SELECT * FROM span_rows UNION ALL BY NAME SELECT * FROM held_spans)"

# Where a trace's spans lie: trace ids are random, so DuckDB's zone maps cannot skip any row group when
# one is looked up by id (a scan of the whole trace_id column: 30-130 ms over 10M spans), but a trace's
# spans start close together and are stored roughly in arrival order.  One row per trace per insert,
# keyed by the id as a 128-bit integer (no index: appending costs ~0.25 us/span), gives the start_ns
# range to read (zone maps on start_ns); ``received_ns`` ages the rows out with the spans.  A trace
# without rows (spans still only in the spool, read-only) is found by the scan.
TRACE_LOCATOR_DDL = ("CREATE TABLE IF NOT EXISTS trace_locator (trace_key UHUGEINT NOT NULL, first_ns BIGINT, "
                     "last_ns BIGINT, received_ns BIGINT)")
TRACE_KEY = TRACE_ID_KEY  # the trace rollup's key too


def locate_sql(source: str, received: str) -> str:
    key = TRACE_KEY.format("trace_id")
    return (f"INSERT INTO trace_locator SELECT {key}, min(start_ns), max(start_ns), max({received}) FROM {source} "
            f"WHERE {key} IS NOT NULL GROUP BY trace_id")


def _view_sql(source: str = _STORED, temp: bool = False) -> str:
    """``spans``: the stored rows (those still waiting for their agent included) with their
    attribute lists presented as maps; and ``spans_stored``, the same rows as stored."""
    replaced = ", ".join(f"map_from_entries({c}) AS {c}" for c in MAP_COLUMNS)
    return (f"CREATE OR REPLACE {'TEMP ' if temp else ''}VIEW spans AS SELECT * REPLACE ({replaced}) FROM {source};\n"
            + stored_view_sql(source, temp))  # what ad hoc lookups of one attribute read (map_reads.py)


_VERIFY_ROWS = 122_880  # rows per read of the background verification (~60 ms of CPU; the rowid range prunes the rest)
_VERIFY_DUTY = 0.1  # the verification is busy at most this share of the time: it waits 9x each read
_REATTACH_TRIES = 20  # inserts that find a reader's cursor open before new readers wait for a re-attach
_REATTACH_WAIT_S = 5.0  # ... and how long it then waits for those open (a longer query: tried again later)


class SpanStore:
    """The writer side of one DuckDB file.

    With a spool (the default in the duckdb exporter), ``append`` returns once the
    batch is in the spool and a loader thread inserts spooled batches into DuckDB
    in large transactions; ``sync`` waits until everything appended is in DuckDB
    (queries and exports call it, so they read their writes).  Without a spool,
    ``append`` inserts and commits directly.
    """

    # The spool's state: set by _open_spool, only with a spool (the methods that use it run only then).
    _spool_settings: SpoolSettings
    _pending: deque[tuple[SpooledBatch, float]]
    _pending_rows: int
    _appended_seq: int
    _applied_seq: int
    _sync_wanted: int
    _closing: bool
    _closed: bool
    _cond: threading.Condition
    _loader: threading.Thread | None
    _dispatcher: threading.Thread
    _dispatched_seq: int

    def __init__(self, path: str | os.PathLike, memory_limit: str = StoreSettings.memory_limit,
                 threads: int = StoreSettings.threads, checkpoint_threshold: str = StoreSettings.checkpoint_threshold,
                 spool: SpoolSettings | None = None,
                 attribution: AttributionSettings | None = None, on_damaged: str = StoreSettings.on_damaged,
                 count_replays: bool = False, dedup: DedupSettings | None = None,
                 reattach_rows: int = StoreSettings.reattach_rows, query_memory: str = StoreSettings.query_memory,
                 query_threads: int = StoreSettings.query_threads, query_room: Callable[[], int | None] | None = None):
        self.path = Path(path).absolute()
        self.directory = self.path.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        # allocator_background_threads: DuckDB's jemalloc hands dirty pages back to the system only as it
        # allocates, so after a burst an idle pipeline kept them; with its purging thread it does so idle too
        # (bench/store_idle.py: 1M spans, then 5 s idle: 146-153 against 172-177 MiB RssAnon).
        # max_vacuum_tasks 0: a checkpoint does not merge the partly filled row groups that transactions leave
        # (their rows modulo ROW_GROUP_SIZE) into fewer: it read them back, compressed them again and spilled
        # past the pool.  The soak's loader commits 12,288-row transactions, and each re-attach's checkpoint
        # stalled every commit 4-7 s at a 256 MiB pipeline with 300-540 MiB of temporary files;
        # bench/checkpoint.py, 400k rows in such transactions: CHECKPOINT 2.30 s and 242 bytes per span on disk
        # (the rewritten blocks left free) against 0.03 s and 133 (16,384-row ones: 0.02 s, 133), for 66 row
        # groups against 50.  Row groups emptied by retention are dropped all the same.
        self._duckdb_config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": memory_limit, "threads": threads, "checkpoint_threshold": checkpoint_threshold,
            "allocator_background_threads": True, "max_vacuum_tasks": 0}
        self._con = self._open_checked(on_damaged)
        self._lock = threading.Lock()  # the write connection
        # DuckDB's pool while ad hoc queries run (_query_pool): raised by query_memory for the first, lowered
        # back when the last ends (what they left cached is evicted then, so the pipeline holds it no longer).
        self._pool = (size_bytes(str(memory_limit)), size_bytes(str(query_memory)))
        self._query_room = query_room  # the room left under the memory limiter's soft limit (None: unbounded)
        self._threads = (threads, max(threads, query_threads))
        self._pool_lock = threading.Lock()
        self._pool_queries = 0
        self._pool_raised = False
        # Readers' cursors open now (_reading); a re-attach of the file waits for them, and new ones for it.
        self._readers_cond = threading.Condition()
        self._readers = 0
        self._reattaching = False
        self._reattach_rows = reattach_rows
        self._rows_attached = 0  # rows inserted since the file was attached (_reattach_if_due)
        self._reattach_tries = 0
        self.reattached = 0  # times the file was re-attached to free DuckDB's metadata (a self-metric)
        self._on_charges: list = []  # callbacks([(agent, trace, model, tenant, usd, spans, minute)]) after each insert
        self._on_commit: list = []  # callbacks(rows) with every committed batch (storage layout)
        # callbacks([(agent, trace, added usd, added calls, trace's usd, trace's calls)]) after each insert
        self._on_task_spend: list = []
        self._on_rollup: list = []  # callbacks() after each rollup transaction (the SLO stage's evaluation)
        self._charges_by_task = False
        self._dispatch: queue.Queue | None = None  # commit callbacks off the loader thread (with a spool)
        self._loader = None
        self.attribution = attribution or AttributionSettings()
        self.unattributed_spans = 0  # released without an agent since start (a self-metric)
        # Spans of replays' re-runs count in SLIs, budgets and incidents only when this is set.
        self.count_replays = count_replays
        self._replays_seen = False  # set once a batch held any: held spans released later are filtered too
        self._ensure_schema()
        self._held, self._held_oldest_ns = self._con.execute(
            "SELECT count(*), min(received_ns) FROM held_spans").fetchall()[0]
        self._replays_seen = self._held > 0  # what the last run held may be replays: filtered when released
        # Inserts' times (rollups.stored_after): the last stored, the last rolled up, and what the spans
        # stored since (not rolled up yet) hold: how many, which looked-up keys, whether some are replays.
        self._stored_ns, self._rolled_ns = self._con.execute(
            "SELECT stored_ns, (SELECT rolled_ns FROM rollup_state) FROM spool_state").fetchall()[0]
        self._roll_lock = threading.RLock()  # a rollup transaction, and what must not run beside one (_roll_stored)
        self._cond = threading.Condition()  # the spool's state, and what the rollup thread waits for
        self._roller: threading.Thread | None = None
        self._roller_done = False  # set at close: the rollup thread rolls up what is left, then ends
        self._roll_failures = 0
        self._dispatched_seq = 0  # the spool position whose callbacks have run (with a spool)
        # Rolled up with its callbacks run (what sync() waits for), and what a sync() waits to see rolled up.
        self._rolled_done_ns, self._roll_wanted = self._rolled_ns, 0
        self._rolled_at = time.monotonic()
        self._unrolled_rows = 0
        # after a crash, whether those spans hold replays is not known: filtered, as every replay is by default
        self._unrolled_filtered = self._rolled_ns < self._stored_ns and not count_replays
        self._unrolled_found: frozenset[Lookup] = frozenset()  # (_use_rollups: all of them, after a crash)
        # The SLIs of the last run roll up what the spool replays: those spans were taken under them.
        self._track_tasks = bool(self._con.execute("SELECT bool_or(track_tasks) FROM rollup_options").fetchall()[0][0])
        self._use_rollups([SliRollup(*r) for r in self._con.execute(
            "SELECT name, total, good, coalesce(scope, 'span') FROM sli_rollups ORDER BY position").fetchall()])
        self.settings = spool
        # Identities of the spans taken recently: a client's re-send is stored once (pipeline/storage/dedup.py).
        self.recent = RecentSpans(dedup or DedupSettings())
        self._remember_stored()
        self.corrupt: str | None = None  # set when DuckDB finds a block that fails its checksum
        self._stop_verify = threading.Event()
        self._verifier = threading.Thread(target=self._verify, name="span-store-verify", daemon=True)
        self._verifier.start()
        self.problem: str | None = None  # why the loader cannot insert (None: it can)
        self._failures = 0
        self._spool: Spool | None = None
        if self._rolled_ns < self._stored_ns:  # the last run stopped with spans not rolled up: now, once
            self._insert([])
        if spool is not None:
            self._open_spool(spool)

    def _open_checked(self, on_damaged: str) -> duckdb.DuckDBPyConnection:
        """Open the file, refusing (unless ``on_damaged`` is ``start_new``) a store that is missing while
        its marker says it existed, or that DuckDB finds corrupt: starting silently empty is data loss."""
        marker = self.path.with_name(self.path.name + ".created")
        damage = None
        if not self.path.exists() and marker.exists():
            damage = (f"span store {self.path} is missing, but {marker.name} says it was created on "
                      f"{marker.read_text().strip()}: its spans are gone unless you restore the file")
        else:
            try:
                con = self._connect()
            except OSError as exc:
                if "Corrupt database file" not in str(exc) and "not a valid DuckDB" not in str(exc):
                    raise
                damage = f"span store {self.path} is corrupt ({str(exc).splitlines()[0]})"
            else:
                if not marker.exists():
                    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
                return con
        if on_damaged != "start_new":
            raise OSError(f"{damage}. Refusing to start; to start a new, empty store instead, set "
                          "exporters::duckdb::on_damaged_store: start_new (a corrupt file is kept aside)")
        log.error("%s; starting a new, empty store (on_damaged_store: start_new)", damage)
        if self.path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for part in (self.path, self.path.with_name(self.path.name + ".wal")):
                if part.exists():
                    os.replace(part, part.with_name(f"{part.name}.corrupt-{stamp}"))
            log.error("span store: the corrupt file is kept as %s.corrupt-%s", self.path.name, stamp)
        marker.unlink(missing_ok=True)
        return self._open_checked("refuse")

    def _verify(self) -> None:
        """Read every stored block once, in the background after opening: DuckDB checks each block's
        checksum as it reads it, and a corrupt one would otherwise surface only when a query happens to
        scan it (the store answering healthy meanwhile).  One range of rows at a time (the rowid range prunes
        the other row groups), every value hashed inside DuckDB rather than converted to Arrow, and busy at most
        _VERIFY_DUTY of the time.  Measured on bench/console.py's 10M-span store: the unthrottled Arrow
        pass took 8.7 s of CPU right after opening (the pipeline's busiest thread while the console's
        first pages were timed); hashing takes half of that, spread over ~3 minutes."""
        started = time.monotonic()
        try:
            with self._reading() as cursor:
                tables = [r[0] for r in cursor.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database()").fetchall()]
                lasts = [cursor.execute(f'SELECT max(rowid) FROM "{table}"').fetchall()[0][0] for table in tables]
            for table, last in zip(tables, lasts, strict=True):
                for first in range(0, -1 if last is None else int(last) + 1, _VERIFY_ROWS):
                    began = time.monotonic()
                    with self._reading() as cursor:  # a cursor per range: a re-attach can come between them
                        cursor.execute(f'SELECT max(hash(COLUMNS(*))) FROM "{table}" '
                                       f"WHERE rowid >= {first} AND rowid < {first + _VERIFY_ROWS}").fetchall()
                    if self._stop_verify.wait((time.monotonic() - began) * (1 / _VERIFY_DUTY - 1)):
                        return
        except (duckdb.Error, OSError) as exc:
            self._found_corrupt(exc)
            return
        log.debug("span store: %s verified in %.1fs", self.path, time.monotonic() - started)

    def _found_corrupt(self, exc: BaseException) -> None:
        if "Corrupt database file" in str(exc) and self.corrupt is None:
            self.corrupt = f"span store {self.path} is corrupt: {str(exc).splitlines()[0]}"
            log.error("%s. Its data cannot all be read; restore it from a backup, or move it aside and "
                      "restart (exporters::duckdb::on_damaged_store: start_new does that)", self.corrupt)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            try:
                con = attach_store(self.path, self._duckdb_config)
            except duckdb.OutOfMemoryException as exc:
                self._checkpoint_with_more_memory(exc)
                con = attach_store(self.path, self._duckdb_config)
        except duckdb.Error as exc:
            raise OSError(f"cannot open span store {self.path}: {exc}") from exc
        restrict_file_access(con, lock=False)  # unlocked: _query_pool sets the pool
        return con

    @contextlib.contextmanager
    def _query_pool(self, growth_limit: int | None = None) -> Iterator[None]:
        """DuckDB's buffer pool raised by ``query_memory`` (at most half of ``growth_limit``, the query's own
        limit on the process's growth, and at most half of the room ``query_room`` says is left under the
        memory limiter's soft limit), and its threads to ``query_threads``, while at least one ad hoc query
        runs, then set back to ``memory_limit`` and ``threads``: the pool is the instance's, shared with the
        loader's inserts, and sized for them (a fixed 48 MB pool answered an exact quantile over 10M spans
        with out-of-memory through the API, issue #12).  The room, because a share of the limit fits an
        idle pipeline, and a query must not make the limiter refuse ingest: issue #11's soak at 256 MiB
        held ~200 MiB when its count queries raised the pool by 64 MiB, and went past its limit."""
        base, extra = self._pool
        if growth_limit is not None:
            extra = min(extra, growth_limit // 2)
        room = self._query_room() if self._query_room is not None else None
        if room is not None:
            extra = min(extra, max(room, 0) // 2)
        if extra <= 0 and self._threads[0] == self._threads[1]:
            yield
            return
        with self._pool_lock:
            self._pool_queries += 1
            if self._pool_queries == 1 and not self._pool_raised:
                self._pool_raised = self._set_pool(base + max(extra, 0), self._threads[1])
        try:
            yield
        finally:
            with self._pool_lock:
                self._pool_queries -= 1
                if self._pool_queries == 0 and self._pool_raised:
                    self._pool_raised = not self._set_pool(base, self._threads[0])

    def _set_pool(self, size: int, threads: int) -> bool:
        cursor = self._con.cursor()
        try:
            cursor.execute(f"SET threads = {int(threads)}")
            cursor.execute(f"SET memory_limit = '{size >> 10}KiB'")
            return True
        except duckdb.Error as exc:  # lowering: what is pinned cannot be evicted now; again after the next query
            log.warning("span store: DuckDB's buffer pool not set to %d MiB: %s", size >> 20,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        finally:
            cursor.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the store (readers never wait for the writer's lock), on the store's
        database (a cursor starts on the instance's default, the empty in-memory one)."""
        cur = self._con.cursor()
        cur.execute(f"USE {catalog_name(self.path)}").fetchall()
        return cur

    @contextlib.contextmanager
    def _reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own on the store for the block (``_cursor``); a re-attach of the file waits until
        no such block runs, and blocks starting meanwhile wait for the re-attach."""
        with self._readers_cond:
            while self._reattaching:
                self._readers_cond.wait()
            self._readers += 1
        try:
            cursor = self._cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            with self._readers_cond:
                self._readers -= 1
                self._readers_cond.notify_all()

    def _reattach_if_due(self) -> None:
        """Detach and re-attach the file once ``reattach_rows`` rows went in since it was attached: DuckDB
        frees the row groups' metadata only then (StoreSettings.reattach_rows).  Done when no reader has a
        cursor open; while readers keep one open, tried again after each insert, and after
        _REATTACH_TRIES inserts new readers wait (at most _REATTACH_WAIT_S) for those open to finish."""
        if not self._reattach_rows or self._rows_attached < self._reattach_rows:
            return
        with self._readers_cond:
            if self._reattaching:  # another inserting thread (signals, spans) is at it
                return
            if self._readers:
                self._reattach_tries += 1
                if self._reattach_tries < _REATTACH_TRIES:
                    return
                self._reattaching = True
                deadline = time.monotonic() + _REATTACH_WAIT_S
                while self._readers and time.monotonic() < deadline:
                    self._readers_cond.wait(deadline - time.monotonic())
                if self._readers:  # a long query: next time
                    self._reattaching = False
                    self._readers_cond.notify_all()
                    return
            self._reattaching = True
        try:
            lost = self._reattach()
        finally:
            with self._readers_cond:
                self._reattaching, self._reattach_tries = False, 0
                self._readers_cond.notify_all()
        if lost:  # the instance may have lost the file: a new one (what a fatal error gets)
            self._reconnect()

    def _reattach(self) -> bool:
        """CHECKPOINT, DETACH and ATTACH on the write connection; True when the file is no longer attached."""
        name, started = catalog_name(self.path), time.monotonic()
        with self._lock:
            rows, self._rows_attached = self._rows_attached, 0
            con = self._con
            try:
                con.execute("CHECKPOINT").fetchall()
            except duckdb.Error as exc:  # a full disk, a pool too small: the file stays attached, tried again later
                log.warning("span store: not re-attaching %s now, its checkpoint failed: %s", self.path, exc)
                return False
            try:
                con.execute("USE memory").fetchall()
                con.execute(f"DETACH {name}").fetchall()
                _attach(con, self.path)
                failed = None
            except duckdb.Error as exc:
                failed = exc
        if failed is not None:
            log.error("span store: re-attaching %s failed (%s); opening it again", self.path, failed)
            return True
        self.reattached += 1
        log.info("span store: %s re-attached after %d rows (frees DuckDB's metadata of their row groups) in %.2fs",
                 self.path, rows, time.monotonic() - started)
        return False

    def _checkpoint_with_more_memory(self, exc: duckdb.Error | None = None) -> None:
        """A WAL written with large values may need more than the buffer pool to replay or checkpoint (a
        commit that fit, a replay that does not): do it once with a larger pool, the smallest of
        ``recovery_pools`` that is enough, then open as usual."""
        pools = recovery_pools(str(self._duckdb_config["memory_limit"]))
        why = str(exc).splitlines()[0] if exc else "large values filled the configured one"
        for pool in pools:
            log.warning("span store: checkpointing %s with a %s buffer pool once (%s)", self.path, pool, why)
            try:
                con = duckdb.connect(str(self.path), config={**self._duckdb_config, "memory_limit": pool})
                try:
                    con.execute("CHECKPOINT").fetchall()
                finally:
                    con.close()
                return
            except duckdb.Error as more:  # out of memory, or a block it could not pin: a larger pool next
                if pool is pools[-1]:
                    raise
                why = str(more).splitlines()[0]

    def _reconnect(self, checkpoint: bool = False) -> None:
        """After a fatal error (disk full while DuckDB wrote) its instance refuses all work until it is
        opened again; what it committed is in its file and WAL, and what it did not is still spooled.
        ``checkpoint``: write the WAL out first, with a pool large enough for it."""
        self._stop_verifier()  # its connection would keep the invalidated instance alive
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:
                pass
            try:
                if checkpoint:
                    self._checkpoint_with_more_memory()
                self._con = self._connect()
                log.warning("span store: reopened %s", self.path)
            except (OSError, duckdb.Error) as exc:  # the loader's next failure tries again
                # duckdb.Error: "Unique file handle conflict" while an ad hoc query's cursor keeps the instance
                # (and so the file) attached; uncaught, it ended the loader thread for good (bench/query10m.py).
                log.error("span store: cannot reopen %s yet: %s", self.path, exc)

    def _ensure_schema(self) -> None:
        con = self._con
        con.register("_empty_spans", STORED_SCHEMA.empty_table())
        con.execute("CREATE TABLE IF NOT EXISTS span_rows AS SELECT * FROM _empty_spans LIMIT 0")
        existing = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'span_rows'").fetchall()}
        # Columns added to the schema after a store was created are added in place.
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE _empty_spans)").fetchall())
        for field in STORED_SCHEMA:
            if field.name not in existing:
                con.execute(f'ALTER TABLE span_rows ADD COLUMN "{field.name}" {types[field.name]}')
        con.unregister("_empty_spans")
        con.execute(HELD_DDL)
        held_columns = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'held_spans'").fetchall()}
        for field in STORED_SCHEMA:
            if field.name not in held_columns:
                con.execute(f'ALTER TABLE held_spans ADD COLUMN "{field.name}" {types.get(field.name, "BIGINT")}')
        con.execute(_view_sql())
        located = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'trace_locator'").fetchall()[0][0]
        con.execute(TRACE_LOCATOR_DDL)
        if not located:  # a store from before the locator: every stored span located once
            for table in ("span_rows", "held_spans"):
                con.execute(locate_sql(table, "received_ns")).fetchall()
        con.execute("CREATE TABLE IF NOT EXISTS parquet_exports (directory VARCHAR PRIMARY KEY, "
                    "exported_until_ns BIGINT NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS sli_minutes (minute BIGINT NOT NULL, sli VARCHAR NOT NULL, "
                    "agent_id VARCHAR NOT NULL, agent_version VARCHAR NOT NULL, good BIGINT NOT NULL, "
                    "total BIGINT NOT NULL, PRIMARY KEY (minute, sli, agent_id, agent_version))")
        con.execute("CREATE TABLE IF NOT EXISTS sli_rollups (position INTEGER, name VARCHAR, total VARCHAR, "
                    "good VARCHAR)")
        con.execute("ALTER TABLE sli_rollups ADD COLUMN IF NOT EXISTS scope VARCHAR DEFAULT 'span'")
        con.execute(TRACE_ROLLUPS_DDL)
        for sql in TRACE_ROLLUPS_MIGRATION:
            con.execute(sql)
        if con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'trace_rollups' "
                       "AND column_name = 'trace_id'").fetchall()[0][0] == "VARCHAR":
            for sql in TRACE_ROLLUPS_KEY_MIGRATION:
                con.execute(sql)
        con.execute("CREATE TABLE IF NOT EXISTS rollup_options (track_tasks BOOLEAN NOT NULL)")
        con.execute(AGENT_MINUTES_DDL)
        con.execute(COST_MINUTES_DDL)
        if not con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'cost_minutes' "
                           "AND column_name = 'tenant'").fetchall()[0][0]:
            for sql in COST_MINUTES_MIGRATION:
                con.execute(sql)
        # `events`: every derived event (pipeline/component/events.py); stores from before the event bus kept
        # only alerts, in a table of that name, which becomes `events` (`alerts` is now a view).
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "alerts" in tables and "events" not in tables:
            con.execute("ALTER TABLE alerts RENAME TO events")
        con.register("_empty_events", EVENT_SCHEMA.empty_table())
        con.execute("CREATE TABLE IF NOT EXISTS events AS SELECT * FROM _empty_events LIMIT 0")
        con.unregister("_empty_events")
        con.execute("CREATE OR REPLACE VIEW alerts AS SELECT * FROM events WHERE kind = 'alert'")
        for name, schema in (("metrics", METRIC_SCHEMA), ("logs", LOG_SCHEMA)):
            con.register("_empty", schema.empty_table())
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM _empty LIMIT 0")
            con.unregister("_empty")
        con.execute("CREATE TABLE IF NOT EXISTS spool_state (applied_seq BIGINT NOT NULL)")
        if con.execute("SELECT count(*) FROM spool_state").fetchall()[0][0] == 0:
            con.execute("INSERT INTO spool_state (applied_seq) VALUES (0)")
        # The times of the last insert and of the last rolled up (rollups.stored_after).  A store from before
        # them rolled up every span as it stored it: both start at its newest span's.
        if not con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'spool_state' "
                           "AND column_name = 'rolled_ns'").fetchall()[0][0]:
            newest = con.execute("SELECT coalesce(max(received_ns), 0) FROM span_rows").fetchall()[0][0]
            for column in ("stored_ns", "rolled_ns"):
                con.execute(f"ALTER TABLE spool_state ADD COLUMN {column} BIGINT DEFAULT {int(newest)}")
        # The time of the last rolled up, committed with the rollups by the rollup thread: a table of its own, as
        # two transactions updating one row conflict (a store from before it kept it in spool_state).
        con.execute("CREATE TABLE IF NOT EXISTS rollup_state (rolled_ns BIGINT NOT NULL)")
        if con.execute("SELECT count(*) FROM rollup_state").fetchall()[0][0] == 0:
            con.execute("INSERT INTO rollup_state SELECT rolled_ns FROM spool_state")

    # --- writing ----------------------------------------------------------------

    def _remember_stored(self) -> None:
        """At start: the identities of the spans stored or held within the dedup window, read back a
        record batch at a time (received_ns prunes the older row groups) into the window's generations."""
        recent = self.recent
        if not recent.enabled:
            return
        now_ns = time.time_ns()
        step_ns = max(1, int(recent.settings.window * 1e9) // 4)
        since = now_ns - 4 * step_ns
        parts: dict[int, list[np.ndarray]] = {}
        reader = self._con.sql(
            "SELECT trace_id, span_id, received_ns FROM span_rows WHERE received_ns >= $1 "
            "UNION ALL SELECT trace_id, span_id, received_ns FROM held_spans WHERE received_ns >= $1",
            params=[since]).to_arrow_reader(65_536)
        for batch in reader:
            keys, has_key = span_keys(batch.column(0), batch.column(1))
            generation = np.clip((batch.column(2).to_numpy(zero_copy_only=False) - since) // step_ns, 0, 3)
            for g in np.unique(generation[has_key]):
                parts.setdefault(int(g), []).append(keys[has_key & (generation == g)])
        for g in sorted(parts):  # oldest first, each stamped with its generation's start
            keys = np.concatenate(parts[g])
            recent.add(keys, np.ones(len(keys), dtype=bool), (since + g * step_ns) / 1e9)
        if parts:
            log.info("span store: %d span identities of the last %gs remembered (a client's re-send is stored once)",
                     recent.stats(now_ns / 1e9)["remembered_spans"], recent.settings.window)

    def _insert(self, tables: list[pa.Table] | list[pa.RecordBatch], seq: int | None = None,
                roll: bool = True) -> None:
        """Insert in one transaction (with the spool position, when given); the only INSERT into spans.

        Spans without an agent are attributed through their trace first (pipeline/attribution.py):
        what is released is ``_batch``, which every rollup and callback of the transaction sees (the
        batch itself, ``_in``, when there is nothing to attribute or leave out).  With ``roll``, the
        rollups run in the same transaction, over the batch, or over every span stored since the last
        rollup when earlier inserts left theirs (rollups.stored_after); without, they are left to the
        rollup thread (``_roll``: the loader's inserts while it is behind)."""
        rows = (to_storage(pa.Table.from_batches(tables) if isinstance(tables[0], pa.RecordBatch)
                           else pa.concat_tables(tables) if len(tables) > 1 else tables[0])
                if tables else to_storage(SPAN_SCHEMA.empty_table()))
        # The insert's time, later than the last one's whatever the wall clock did (rollups.stored_after).
        now_ns = max(time.time_ns(), self._stored_ns + 1)
        before = rows.num_rows
        rows, taken = self.recent.drop_copies(rows)  # a client's re-send: stored, counted and charged once
        if rows.num_rows < before:
            log.info("span store: %d spans already stored (a client's re-send) not stored again",
                     before - rows.num_rows)
        attribute = self._held > 0 or rows.column("agent_id").null_count > 0
        replays = None if self.count_replays else replay_mask(rows)
        wanted = self._lookups
        found = present(rows, wanted) if wanted else frozenset()
        self._replays_seen = self._replays_seen or replays is not None
        # The rollup lock (when it rolls up) until its callbacks are handed on: a rollup thread's charges
        # come after them (budgets count a task's spend so far: out of order, twice).
        with self._roll_lock if roll else contextlib.nullcontext():
            with self._lock:
                con = self._con
                con.register("_in", rows)
                sql = _Statements(con)
                try:
                    with _rolled_back_on_error(con):
                        # Each result is fetched: DuckDB refuses new work on a connection with one open.
                        sql.add("BEGIN TRANSACTION")
                        # Nothing to attribute or filter out (the common case): every statement reads the batch
                        # where it lies (``_in``), through no view (two statements fewer per transaction).
                        direct = not attribute and replays is None
                        if attribute:
                            for statement in attribution.statements(self.attribution, now_ns):
                                sql.add(statement)
                        elif not direct:
                            sql.add(attribution.direct_statement(now_ns))
                        # Keys the rollups look up that no span released now has (held ones released too, read in SQL).
                        if attribute and wanted - found:
                            maybe = sorted(wanted - found, key=repr)
                            found = found | {k for k, yes in zip(maybe, sql.run(held_presence_sql(maybe, "_held"))[0],
                                                                 strict=True) if yes}
                        sql.add(attribution.direct_insert(now_ns) if direct
                                else "INSERT INTO span_rows BY NAME SELECT * FROM _batch")
                        sql.add(locate_sql("_in", str(now_ns)))  # every span as it arrives, held ones too
                        # Released held spans may be replays seen in an earlier batch: filtered in SQL then too.
                        filtered = replays is not None or (attribute and self._replays_seen and not self.count_replays)
                        if not direct:
                            sql.add(COUNTED_WITHOUT_REPLAYS if filtered else COUNTED_ALL)
                        charges: list[tuple] | None = None
                        task_spend: list[tuple] | None = None
                        if roll and self._rolled_ns < self._stored_ns:  # with what earlier inserts left
                            rollups = self._statements(wanted - (found | self._unrolled_found), "_counted").reading(
                                stored_after(self._rolled_ns, self._unrolled_filtered or filtered))
                        elif roll:
                            rollups = self._statements(wanted - found, "_in" if direct else "_counted")
                        if roll:
                            charges, task_spend = self._roll_up(sql, rollups, now_ns)
                        if attribute:
                            held, oldest, unattributed = sql.run(
                                "SELECT (SELECT count(*) FROM held_spans), (SELECT min(received_ns) FROM held_spans), "
                                "(SELECT count(*) FILTER (WHERE agent_id IS NULL) FROM _batch)")[0]
                            if held > self.attribution.max_held_spans:
                                sql.add(attribution.overflow_statement(self.attribution))
                            sql.flush()
                            released = (con.sql("SELECT * EXCLUDE (received_ns) FROM _counted").to_arrow_table()
                                        if self._on_commit else rows)
                            sql.add("DROP VIEW IF EXISTS _counted")
                            for statement in attribution.CLEANUP:
                                sql.add(statement)
                        else:
                            held, oldest = 0, None
                            released = rows if replays is None else rows.filter(_invert(replays))
                            unattributed = rows.column("agent_id").null_count
                        sql.add(f"UPDATE spool_state SET stored_ns = {now_ns}"
                                + (f", applied_seq = {int(seq)}" if seq is not None else ""))
                        if roll:
                            sql.add(f"UPDATE rollup_state SET rolled_ns = {now_ns}")
                        sql.add("COMMIT")
                        sql.flush()
                finally:
                    con.unregister("_in")
                self._held, self._held_oldest_ns = held, oldest
                with self._cond:  # what the rollup thread reads
                    self._stored_ns = now_ns
                    if roll:
                        self._rolled_ns = now_ns
                        self._unrolled_rows = 0
                        self._rolled_at = time.monotonic()
                        self._unrolled_found, self._unrolled_filtered = frozenset(), False
                    else:
                        self._unrolled_rows += rows.num_rows
                        self._unrolled_found |= found
                        self._unrolled_filtered = self._unrolled_filtered or filtered
                        self._cond.notify_all()
                self._rows_attached += rows.num_rows
                self.unattributed_spans += unattributed
                if taken is not None:
                    self.recent.add_sorted(taken, now_ns / 1e9)
            # After the commit (what is charged is stored) and outside the lock: callbacks may publish
            # events, which the store records.  From the loader, they run on the dispatcher thread, so
            # the next insert (DuckDB, without the GIL) overlaps them; sync() waits for both.
            if self._dispatch is not None and threading.current_thread() is self._loader:
                # bounded: the loader waits rather than piling up
                self._dispatch.put((seq, charges, task_spend, released, now_ns if roll else None))
            else:
                self._dispatched((None, charges, task_spend, released, now_ns if roll else None))
        self._reattach_if_due()

    def _roll_up(self, sql: _Statements, rollups: _Rollups, now_ns: int) -> tuple[list[tuple], list[tuple]]:
        """Run the rollups in the transaction of ``sql`` (an insert's or the rollup thread's), ``now_ns`` the
        time of the last insert they take: (charges, task spend) for the callbacks."""
        task_spend: list[tuple] = []
        for statement in rollups.span:
            sql.add(statement)
        if rollups.trace is not None and self._on_task_spend:
            task_spend = [r for r in sql.run(rollups.trace + TASK_SPEND_RETURNING, [now_ns]) if r[2]]
        elif rollups.trace is not None:
            sql.run(rollups.trace, [now_ns])
        if self._finalize and time.monotonic() - self._finalized_at >= _FINALIZE_EVERY_S:
            sql.flush()
            self._finalize_due(now_ns, sql.con)
        sql.add(rollups.agent)
        sql.add(rollups.cost)
        return (sql.run(rollups.charges) if self._on_charges else []), task_spend

    def _roll(self) -> None:
        """Rollup thread (with a spool): the rollups of what the loader stored while it was behind, in
        transactions of their own beside the loader's (DESIGN: a stage after the durable point that falls
        behind does not slow ingest): every ``rollup_interval`` or ``4 x flush_spans`` spans; at once for a
        ``sync()``; at close, what is left.  The loader's first insert that is not behind rolls up what is
        left in its own transaction (under the rollup lock, so never beside one of these)."""
        while True:
            with self._cond:
                while not self._roll_due():
                    if self._roller_done:
                        return
                    self._cond.wait(self._roll_wait())
            try:
                self._roll_stored()
                if self._roll_failures:
                    log.warning("span store: rolling up works again after %d failed attempts", self._roll_failures)
                self._roll_failures = 0
            except Exception:  # noqa: BLE001 - rolled back: the next rollup takes the same spans
                self._roll_failures += 1
                log.exception("span store: rolling up what was stored failed (attempt %d; retried)", self._roll_failures)
                with self._cond:
                    if self._roller_done:
                        return
                    self._cond.wait(min(0.1 * 2 ** min(self._roll_failures, 6), 5.0))

    def _roll_due(self) -> bool:
        """Whether the rollup thread rolls up now (under ``_cond``)."""
        if self._rolled_ns >= self._stored_ns:
            return False
        settings = self._spool_settings
        return (self._roller_done or self._roll_wanted > self._rolled_ns
                or time.monotonic() - self._rolled_at >= settings.rollup_interval
                or self._unrolled_rows >= 4 * settings.flush_spans)

    def _roll_wait(self) -> float | None:
        if self._rolled_ns >= self._stored_ns:
            return None
        return max(0.01, self._rolled_at + self._spool_settings.rollup_interval - time.monotonic())

    def _roll_stored(self) -> None:
        """One rollup transaction over every span stored since the last (rollups.stored_after), on a cursor
        of its own: the position (``rollup_state``) commits with the rollups, so exactly once."""
        with self._roll_lock:
            with self._cond:
                rolled, until = self._rolled_ns, self._stored_ns
                rows, found, filtered = self._unrolled_rows, self._unrolled_found, self._unrolled_filtered
            if rolled >= until:
                return
            rollups = self._statements(self._lookups - found, "_counted").reading(stored_after(rolled, filtered, until))
            with self._reading() as cursor, _rolled_back_on_error(cursor):
                sql = _Statements(cursor)
                sql.add("BEGIN TRANSACTION")
                charges, task_spend = self._roll_up(sql, rollups, until)
                sql.add(f"UPDATE rollup_state SET rolled_ns = {until}")
                sql.add("COMMIT")
                sql.flush()
            with self._cond:
                self._rolled_ns, self._rolled_at = until, time.monotonic()
                self._unrolled_rows -= rows
                if self._stored_ns == until:  # else what was found since stays (more keys looked up: as right)
                    self._unrolled_found, self._unrolled_filtered = frozenset(), False
            # Charges and task spend in rollup order: on the callback thread, after those of the inserts before.
            item = (None, charges, task_spend, None, until)
            if self._dispatch is not None and self._dispatcher.is_alive():
                self._dispatch.put(item)
            else:
                self._dispatched(item)

    def _run_callbacks(self, charges: list[tuple] | None, task_spend: list[tuple] | None,
                       rows: pa.Table | None) -> None:
        """A failing callback must not make a committed insert retry: logged, the spans are stored.
        None: not this kind (an insert that left its rollups has no charges; a rollup no rows)."""
        rolled = charges is not None  # (task_spend too: both come from the rollup)
        for callback, args in [*((c, (charges,)) for c in (self._on_charges if rolled else ())),
                               *((c, (task_spend,)) for c in (self._on_task_spend if rolled else ())),
                               *((c, (rows,)) for c in (self._on_commit if rows is not None else ())),
                               *((c, ()) for c in (self._on_rollup if rolled else ()))]:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - logged; the spans are stored either way
                log.exception("span store: commit callback %r failed", callback)

    def _dispatch_committed(self, dispatch: queue.Queue) -> None:
        """Dispatcher thread: commit callbacks in commit order; ``None`` ends it."""
        # The batch lives in _dispatched's frame only: a loop variable would keep the last one for as
        # long as no new commit comes.
        while self._dispatched(dispatch.get()):
            pass

    def _dispatched(self, item: tuple[int | None, list[tuple] | None, list[tuple] | None, pa.Table | None,
                                      int | None] | None) -> bool:
        """(spool position, charges, task spend, committed rows, rolled up to): an insert's callbacks, or a
        rollup's (no rows); then what sync() waits for is marked done."""
        if item is None:
            return False
        seq, charges, task_spend, rows, rolled = item
        self._run_callbacks(charges, task_spend, rows)
        if seq is not None or rolled is not None:
            with self._cond:
                self._dispatched_seq = seq if seq is not None else self._dispatched_seq
                self._rolled_done_ns = max(self._rolled_done_ns, rolled or 0)
                self._cond.notify_all()
        return True

    def on_charges(self, callback, by_task: bool = False) -> None:
        """``callback([(agent_id, trace_id, model, tenant, cost_usd, spans, minute), ...])`` after every rollup
        (an insert's own, or the rollup thread's of what inserts left: after its commit, on the callback thread
        with a spool, else in the thread that inserted, in commit order): per agent, model, tenant and minute
        (``trace_id`` None); and when some callback asked for charges ``by_task``, also one row per agent
        and trace with ``model``, ``tenant`` and ``minute`` None (rollups.CHARGES_SPLIT_SQL)."""
        self._on_charges.append(callback)
        self._charges_by_task = self._charges_by_task or by_task

    def on_task_spend(self, callback) -> None:
        """``callback([(agent, trace_id, added_usd, added_calls, trace_usd, trace_calls), ...])`` after every
        rollup (as ``on_charges``): per trace the rollup priced spans of (cost > 0), what they added and the
        trace's spend so far (``trace_rollups``, in the rollup's transaction: exactly once across spool
        replays and restarts).  The agent is the task's (its agent_task span's),
        else that of the trace's last priced span.  Keeps per-trace rollups (``track_tasks``)."""
        self.track_tasks()
        self._on_task_spend.append(callback)

    def on_rollup(self, callback) -> None:
        """``callback()`` after every rollup (what was stored since the last one is in the rollup tables), as
        ``on_charges``: the inserts of a loader that is behind leave their rollups to the rollup thread, so what
        reads the rollups waits for this rather than for ``on_commit``."""
        self._on_rollup.append(callback)

    def on_commit(self, callback) -> None:
        """``callback(rows)`` with every committed batch (storage layout: attribute maps are lists of
        key/value structs), after the commit, in the thread that inserted."""
        self._on_commit.append(callback)

    def remove_callback(self, callback) -> None:
        self._on_charges = [c for c in self._on_charges if c != callback]
        self._on_commit = [c for c in self._on_commit if c != callback]
        self._on_task_spend = [c for c in self._on_task_spend if c != callback]
        self._on_rollup = [c for c in self._on_rollup if c != callback]

    def track_tasks(self) -> None:
        """Keep per-trace rollups so finished tasks (count and cost) land in ``agent_minutes``,
        also without task-scope SLIs (remembered in the store for spool replays)."""
        with self._roll_lock, self._lock:
            if self._track_tasks:
                return
            self._con.execute("DELETE FROM rollup_options").fetchall()
            self._con.execute("INSERT INTO rollup_options VALUES (true)").fetchall()
            self._track_tasks = True
            self._use_rollups(self._slis)

    def set_sli_rollups(self, slis: list[SliRollup]) -> None:
        """Roll these SLIs up per minute, agent and version into ``sli_minutes``, in the same
        transaction as the spans (so exactly once, also on spool replay); see pipeline/storage/rollups.py.
        A predicate that does not bind raises ``ValueError`` naming the SLI."""
        with self._roll_lock, self._lock:
            con = self._con
            for sli in slis:  # bind each on an empty batch: a bad column name is named here, not at insert
                con.register("_counted", STORAGE_SCHEMA.empty_table())
                try:
                    con.execute(validate_sql(sli)).fetchall()
                except duckdb.Error as exc:
                    raise ValueError(f"SLI {sli.name!r}: {exc}") from exc
                finally:
                    con.unregister("_counted")
            con.execute("BEGIN TRANSACTION").fetchall()
            con.execute("DELETE FROM sli_rollups").fetchall()
            for i, sli in enumerate(slis):
                con.execute("INSERT INTO sli_rollups (position, name, total, good, scope) VALUES (?, ?, ?, ?, ?)",
                            [i, sli.name, sli.total, sli.good, sli.scope]).fetchall()
            con.execute("COMMIT").fetchall()
            self._use_rollups(slis)

    def _use_rollups(self, slis: list[SliRollup]) -> None:
        self._slis = slis
        self._rollup_sqls = rollup_sql(slis, self._track_tasks)
        self._variants: dict[tuple[frozenset[Lookup], bool, str], _Rollups] = {}
        self._lookups = lookups([*self._rollup_sqls, COST_ROLLUP_SQL, CHARGES_SPLIT_SQL, CHARGES_SQL])
        self._finalize = finalize_tasks_sql(slis, self._track_tasks)
        self._finalized_at = time.monotonic()
        if self._rolled_ns < self._stored_ns:  # spans left to a rollup, not known to lack the keys looked up now
            self._unrolled_found = self._lookups

    def _statements(self, absent: frozenset[Lookup], source: str) -> _Rollups:
        """The rollups and the charges query of a batch in which no span has the ``absent`` keys
        (rollups.without), reading ``source`` (a few variants, kept)."""
        key = (absent, self._charges_by_task, source)
        if (found := self._variants.get(key)) is None:
            span = [without(sql, absent) for sql in self._rollup_sqls if sql is not SPAN_ROLLUP_SQL]
            trace = SPAN_ROLLUP_SQL if any(sql is SPAN_ROLLUP_SQL for sql in self._rollup_sqls) else None
            found = _Rollups(span, trace, AGENT_ROLLUP_SQL, without(COST_ROLLUP_SQL, absent),
                             without(CHARGES_SPLIT_SQL if self._charges_by_task else CHARGES_SQL, absent))
            if source != "_counted":
                found = found.reading(source)
            self._variants[key] = found
        return found

    def _finalize_due(self, now_ns: int, con: duckdb.DuckDBPyConnection) -> None:
        """Count the tasks that are due (inside the transaction of ``con``, under the rollup lock)."""
        assert self._finalize is not None
        cutoff = now_ns - TASK_GRACE_NS
        counts, forget = self._finalize
        for count in counts:
            con.execute(count, [cutoff]).fetchall()
        con.execute(forget, [cutoff, orphan_cutoff(cutoff)]).fetchall()
        self._finalized_at = time.monotonic()

    def finalize_tasks(self, now_ns: int | None = None) -> None:
        """Count every task whose trace has been quiet for the grace period (task-scope SLIs).  Without
        ``now_ns``, nothing is done if an insert transaction did it less than ``_FINALIZE_EVERY_S`` ago
        (the SLO and anomaly stages ask every second, for the case with no traffic), and what is counted is
        what is committed: waiting for every acknowledged span to be inserted, under load, made the loader
        insert what was pending at once, each insert rolling up its own, and held the SLO evaluation up
        (a span of a trace quiet for the grace period, still in the spool, is then not counted, as one
        arriving after the grace is not).  With ``now_ns``, everything acknowledged is inserted first."""
        if self._finalize is None:
            return
        if now_ns is None and time.monotonic() - self._finalized_at < _FINALIZE_EVERY_S:
            return
        if now_ns is not None:
            self.sync()
        with self._roll_lock, self._lock:  # beside a rollup transaction, the two would conflict
            con = self._con
            con.execute("BEGIN TRANSACTION").fetchall()
            try:
                self._finalize_due(now_ns if now_ns is not None else time.time_ns(), con)
                con.execute("COMMIT").fetchall()
            except BaseException:
                con.execute("ROLLBACK").fetchall()
                raise

    def append(self, batch: pa.Table) -> None:
        """Make one batch durable; returns after the spool write (or the commit, without a spool).

        Raises ``StoreBehind`` when the loader is too far behind to take more (retryable)."""
        if self._spool is None:
            self._insert([batch])
            return
        n = batch.num_rows
        with self._cond:
            if self._closed:
                raise StoreBehind("span store is closed")
            if self._failures >= _FAILURES_BEFORE_REFUSING:
                raise StoreBehind(f"span store cannot write ({self._failures} inserts failed): {self.problem}")
            if self._pending_rows + n > self._spool_settings.max_pending_spans and self._pending:
                raise StoreBehind(f"span store is behind: {self._pending_rows} spans waiting to be written")
            spooled = self._spool.append(batch)  # under the lock: spool order = sequence order = insert order
            self._pending.append((spooled, time.monotonic()))
            self._pending_rows += n
            self._appended_seq = spooled.seq
            if self._pending_rows >= self._spool_settings.flush_spans:
                self._cond.notify_all()

    # --- the spool --------------------------------------------------------------

    def _open_spool(self, settings: SpoolSettings) -> None:
        directory = Path(settings.directory)
        applied = self._con.execute("SELECT applied_seq FROM spool_state").fetchall()[0][0]
        last = applied
        chunk: list[pa.RecordBatch] = []
        for seq, batch in read_legacy(directory, applied):  # an older version's spool: replayed first
            chunk.append(batch)
            last = seq
            if sum(b.num_rows for b in chunk) >= settings.flush_spans:
                self._insert(chunk, seq)
                chunk = []
        if chunk:
            self._insert(chunk, last)
        for path in segments(directory):
            if path.suffix == LEGACY_SUFFIX:
                path.unlink()
        recovery = recover(directory, last)
        self._spool_settings = settings
        self._insert_bytes = settings.max_insert_bytes
        self._drain_rate = 0.0  # spans/s the loader inserts while busy (a moving average; 0: not known yet)
        last = max(last, recovery.last_seq)
        applied = recovery.batches[0].seq - 1 if recovery.batches else last
        self._spool = spool = Spool(directory, last + 1, settings.segment_bytes, recovery.segments)
        self._pending = deque((b, 0.0) for b in recovery.batches)
        self._pending_rows = sum(b.rows for b in recovery.batches)
        self._appended_seq, self._applied_seq = last, applied
        self._sync_wanted = 0
        self._closing = self._closed = False
        self._dispatched_seq = applied
        self._replay(recovery.batches, spool)
        spool.release(self._applied_seq)
        self._dispatched_seq = self._applied_seq
        self._roller = threading.Thread(target=self._roll, name="span-store-rollup", daemon=True)
        self._roller.start()
        self._dispatch = queue.Queue(maxsize=8)
        self._dispatcher = threading.Thread(target=self._dispatch_committed, args=(self._dispatch,),
                                            name="span-store-callbacks", daemon=True)
        self._dispatcher.start()
        self._loader = threading.Thread(target=self._load, args=(spool,), name="span-store-loader",
                                        daemon=True)
        self._loader.start()

    def _held_expiry(self) -> float | None:
        """Seconds until the oldest held span's wait ends (None: nothing held)."""
        if not self._held or self._held_oldest_ns is None:
            return None
        return (self._held_oldest_ns + self.attribution.wait * 1e9 - time.time_ns()) / 1e9

    def _due(self) -> bool:
        if not self._pending:
            expiry = self._held_expiry()
            return expiry is not None and expiry <= 0 and not self._closing
        return (self._closing or self._sync_wanted > self._applied_seq
                or self._pending_rows >= self._spool_settings.flush_spans
                or time.monotonic() - self._pending[0][1] >= self._spool_settings.flush_interval)

    def _replay(self, batches: list[SpooledBatch], spool: Spool) -> None:
        """What the last run acknowledged and did not insert, inserted before the pipeline starts.
        If it cannot be (yet), it stays pending for the loader, which keeps trying: the pipeline
        starts either way, reports the problem and refuses new data until it is solved."""
        rows = sum(b.rows for b in batches)
        attempts = 0
        while self._pending and attempts < 6:
            if not self._load_step(self._take(), spool):
                attempts += 1
        if rows and not self._pending:
            log.info("span store: replayed %d acknowledged spans from the spool into %s", rows, self.path)

    def _load(self, spool: Spool) -> None:
        """Loader thread: spool -> DuckDB in large transactions, oldest first; with nothing spooled,
        it still releases held spans whose wait for an agent is over."""
        while True:
            with self._cond:
                while not self._due():
                    if self._closing and not self._pending:
                        return
                    wait = self._spool_settings.flush_interval
                    if self._pending:
                        wait = max(0.0, self._pending[0][1] + wait - time.monotonic())
                    expiry = self._held_expiry()
                    if expiry is not None:
                        wait = min(wait, max(expiry, 0.05))
                    self._cond.wait(wait)
                items = self._take()
            try:
                loaded = self._load_step(items, spool)
            except Exception:  # noqa: BLE001 - a bug in the failure handling must not end the loader
                log.exception("span store: the loader's failure handling failed; retrying")
                loaded = False
            if not loaded:
                if self._closing:
                    return
                time.sleep(min(0.1 * 2 ** min(self._failures, 6), 5.0))

    def _load_step(self, items: list[SpooledBatch], spool: Spool) -> bool:
        """Insert ``items`` (none: release held spans that are due); False when it failed (logged):
        they stay in the spool and pending, and the next try takes half as many bytes."""
        last = items[-1].seq if items else None
        started = time.monotonic()
        rows = sum(i.rows for i in items)
        # Behind: a whole insert waits after this one, and no sync() waits for this one's rollups (one waiting
        # for a later batch has them rolled up by the insert that takes that batch, or by the rollup thread).
        # Keeping up, an insert rolls up in its own transaction: a rollup transaction of its own after each
        # insert cost the clients' p99 at half rate ~5 ms more (docs/benchmarks.md, twenty-ninth stop).
        behind = (self._roller is not None and threading.current_thread() is self._loader and not self._closing
                  and not (last is not None and self._applied_seq < self._sync_wanted <= last)
                  and self._pending_rows - rows >= self._spool_settings.flush_spans)
        try:
            self._insert(load(items) if items else [], last, roll=not behind)
        except Exception as exc:  # noqa: BLE001 - still in the spool; retried (a bug must not end the loader)
            self._insert_failed(exc, items)
            return False
        took = time.monotonic() - started
        if rows >= _DRAIN_SAMPLE_ROWS and took > 0:  # small inserts are mostly fixed cost: no rate from them
            rate = rows / took
            self._drain_rate = rate if not self._drain_rate else 0.8 * self._drain_rate + 0.2 * rate
        if self._failures:
            log.warning("span store: inserting works again after %d failed attempts", self._failures)
        self._failures, self.problem = 0, None
        self._insert_bytes = min(self._spool_settings.max_insert_bytes, self._insert_bytes * 2)
        if last is not None:
            with self._cond:
                for _ in items:
                    spooled, _ = self._pending.popleft()
                    self._pending_rows -= spooled.rows
                self._applied_seq = last
                spool.release(last)
                self._cond.notify_all()
        return True

    def _insert_failed(self, exc: Exception, items: list[SpooledBatch]) -> None:
        self._failures += 1
        self._found_corrupt(exc)
        self.problem = f"cannot insert into {self.path}: {exc}"
        size = sum(i.length for i in items)
        if len(items) > 1:  # too big for the buffer pool, perhaps: smaller transactions next time
            self._insert_bytes = max(1, size // 2)
        log.error("span store: insert of %d spooled spans (%d bytes) failed (attempt %d; %s): %s",
                  sum(i.rows for i in items), size, self._failures,
                  "they stay in the spool" if self._closing else "will retry", exc)
        pinned = isinstance(exc, duckdb.OutOfMemoryException) or any(
            m in str(exc) for m in ("failed to pin", "could not allocate"))
        # Out of memory once may be an ad hoc query holding the shared pool (quantile_cont over 10M spans needs
        # ~128 MB): retried as is; twice in a row, large values pinned until a checkpoint (below).
        if isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc) or (pinned and self._failures >= 2):
            # Large values committed since the last checkpoint stay pinned in the buffer pool until a
            # checkpoint writes them out (measured: two 15 MiB attributes filled the 48MB pool, every
            # later insert failed "failed to pin block", and a checkpoint within it failed too).
            self._reconnect(checkpoint=True)

    def _take(self) -> list[SpooledBatch]:
        """The oldest pending batches of one schema, up to ``flush_spans`` rows and the current byte budget
        (at least one): a spool written by an older version may hold batches of fewer columns."""
        items: list[SpooledBatch] = []
        rows = size = 0
        for spooled, _ in self._pending:
            if items and (rows + spooled.rows > self._spool_settings.flush_spans
                          or size + spooled.length > self._insert_bytes
                          or not spooled.schema.equals(items[0].schema)):
                break
            items.append(spooled)
            rows += spooled.rows
            size += spooled.length
        return items

    def sync(self, timeout: float = 60.0) -> None:
        """Wait until every batch appended so far is in DuckDB, rolled up, and its commit callbacks have run."""
        if self._spool is None:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._appended_seq
            self._sync_wanted = max(self._sync_wanted, target)
            self._cond.notify_all()
            while self._applied_seq < target or self._dispatched_seq < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreBehind(f"span store did not catch up within {timeout:g}s")
                self._cond.wait(left)
            if self._roller is None:
                return
            # and everything stored by then rolled up (held spans released since included), charges handed on
            stored = self._stored_ns
            self._roll_wanted = max(self._roll_wanted, stored)
            self._cond.notify_all()
            while self._rolled_done_ns < stored:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreBehind(f"span store did not roll up within {timeout:g}s")
                self._cond.wait(left)

    def health(self) -> str | None:
        """What keeps the store from storing (the health check's ``Health`` capability), or None."""
        if self.corrupt is not None:
            return self.corrupt
        if self._spool is not None and self._failures >= _FAILURES_BEFORE_REFUSING:
            return f"{self.problem} ({self._failures} attempts; {self._pending_rows} spans wait in the spool)"
        return None

    @property
    def held_spans(self) -> int:
        """Spans without an agent waiting for an ancestor (as of the last insert)."""
        return self._held

    @property
    def unrolled_spans(self) -> int:
        """Spans stored since the last rollup (the rollup thread's next)."""
        return self._unrolled_rows

    @property
    def pending_spans(self) -> int:
        return self._pending_rows if self._spool is not None else 0

    # --- reading and housekeeping -------------------------------------------------

    def count(self) -> int:
        self.sync()
        with self._lock:
            return self._con.execute("SELECT count(*) FROM spans").fetchall()[0][0]

    def delete_older_than(self, days: float, now_ns: int | None = None) -> int:
        cutoff = (now_ns if now_ns is not None else time.time_ns()) - int(days * _NS_PER_DAY)
        self.sync()  # spooled spans are subject to retention too
        with self._lock:
            for table in ("metrics", "logs"):
                self._con.execute(f"DELETE FROM {table} WHERE time_ns < ?", [cutoff]).fetchall()
            # By the time the pipeline received a span, not by the client's clock: a client 8 days behind
            # must not have what it just sent deleted at the next pass (stores from before received_ns
            # have it NULL: their spans go by start time).
            self._con.execute("DELETE FROM trace_locator WHERE received_ns < ?", [cutoff]).fetchall()
            return self._con.execute("DELETE FROM span_rows WHERE coalesce(received_ns, start_ns) < ?",
                                     [cutoff]).fetchall()[0][0]

    def export_parquet(self, directory: str | os.PathLike, since_ns: int | None = None,
                       until_ns: int | None = None) -> list[str]:
        """Write spans as hourly Parquet files: DIR/date=YYYY-MM-DD/hour=HH/*.parquet."""
        self.sync()
        return export_parquet(self._con, self._lock, directory, since_ns, until_ns)

    def append_signal(self, table: str, batch: pa.Table) -> None:
        """Metric points or log records: inserted and committed in one transaction before this returns
        (their volume is far below the spans', so they skip the spool)."""
        if table not in ("metrics", "logs"):
            raise ValueError(f"no such signal table: {table}")
        with self._lock:
            self._con.register("_signal", batch)
            try:
                self._con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _signal").fetchall()
            finally:
                self._con.unregister("_signal")
            self._rows_attached += batch.num_rows
        self._reattach_if_due()

    def record_events(self, events: pa.Table) -> None:
        """Append events (``EVENT_SCHEMA``) to the ``events`` history table."""
        with self._lock:
            self._con.register("_events", events)
            try:
                self._con.execute("INSERT INTO events BY NAME SELECT * FROM _events").fetchall()
            finally:
                self._con.unregister("_events")

    def write(self, statements: list[tuple[str, list]]) -> None:
        """Processors' own state tables (anomaly marks, incidents, breakers): the statements in one
        transaction on the write connection.  Never spans: those go through ``append``."""
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION").fetchall()
            try:
                for sql, params in statements:
                    con.execute(sql, params).fetchall()
                con.execute("COMMIT").fetchall()
            except BaseException:
                con.execute("ROLLBACK").fetchall()
                raise

    def read(self, sql: str, params: list | None = None) -> list[tuple]:
        """Internal reads (processors' state), on their own connection; not for ad hoc SQL."""
        with self._reading() as cursor:
            return cursor.execute(sql, params or []).fetchall()

    def parquet_exported_until(self, directory: str | os.PathLike) -> int | None:
        """Spans before this start time have been exported to ``directory`` (None: nothing yet)."""
        with self._lock:
            rows = self._con.execute("SELECT exported_until_ns FROM parquet_exports WHERE directory = ?",
                                     [str(Path(directory).absolute())]).fetchall()
        return rows[0][0] if rows else None

    def set_parquet_exported_until(self, directory: str | os.PathLike, until_ns: int) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO parquet_exports VALUES (?, ?)",
                              [str(Path(directory).absolute()), until_ns]).fetchall()

    def query(self, sql: str, max_rows: int = 1000, timeout_s: float = 10.0,
              limits: QueryLimits | None = None) -> QueryResult:
        """Ad hoc SQL through the sandbox; ``limits`` (else ``max_rows`` and ``timeout_s`` with the
        default byte and memory limits) bound it, the wait for the loader included.  The query first
        waits for the spans acknowledged before it to be committed: up to ``limits.wait_s``, after which
        it answers over what is committed with ``pending_spans`` saying how many were not (under ingest at
        the loader's limit the store can stay seconds behind, and a query that waited for all of it
        answered 503 at its time limit, bench/query10m.py); at once when the loader, at the rate it has
        been inserting, would not insert what is pending within ``wait_s`` (under max-rate ingest every
        query waited the whole 5 s and then answered without them anyway); with ``wait_s`` None, up to
        the time limit and 503 if the store has not caught up by then."""
        limits = limits or QueryLimits(max_rows=max_rows, timeout_s=timeout_s)
        check_read_only(sql)
        started = time.monotonic()
        pending = 0
        wait = limits.timeout_s if limits.wait_s is None else min(limits.wait_s, limits.timeout_s)
        if limits.wait_s is None:
            try:
                self.sync(wait)
            except StoreBehind as exc:
                raise QueryError(f"{exc}; try again later", 503, "store_behind") from exc
        else:
            pending = self.catch_up(wait)
        left = limits.timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise QueryError(f"query exceeded the time limit of {limits.timeout_s:g}s", 408, "time")
        with self._query_pool(limits.max_memory_bytes), self._reading() as cursor:
            result = run_query(cursor, sql, dataclasses.replace(limits, timeout_s=left))
        return dataclasses.replace(result, pending_spans=pending) if pending else result

    def catch_up(self, wait: float) -> int:
        """Read your writes, bounded: wait up to ``wait`` seconds for the spans acknowledged so far to be
        committed — not at all when the loader, at the rate it has been inserting, could not insert them
        within ``wait`` (under max-rate ingest a reader would wait the whole time and then read without
        them anyway).  Returns how many acknowledged spans are still not committed (0: caught up, or only
        the commit callbacks were behind)."""
        if self._spool is None:  # no loader: every append was committed before it returned
            return 0
        try:
            if self._hopelessly_behind(wait):
                return self.pending_spans
            self.sync(wait)
        except StoreBehind:
            return self.pending_spans
        return 0

    def _hopelessly_behind(self, wait: float) -> bool:
        """Whether the loader, busy at the rate it has been inserting, would not insert what is pending within
        ``wait``: only ever with more than one flush pending (a store keeping up has less, and waits)."""
        pending, rate = self.pending_spans, self._drain_rate
        return bool(rate) and pending > self._spool_settings.flush_spans and pending / rate > wait

    def checkpoint(self) -> None:
        self.sync()
        with self._roll_lock, self._lock:  # DuckDB refuses a CHECKPOINT beside another writing transaction
            self._con.execute("CHECKPOINT")

    def _stop_verifier(self) -> None:
        self._stop_verify.set()
        if self._verifier is not threading.current_thread():
            self._verifier.join(timeout=30)

    def close(self) -> None:
        """Drain the spool into DuckDB, then close.  What cannot be drained stays in the spool."""
        self._stop_verifier()
        if self._spool is not None and not self._closed:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            if self._loader is not None:
                self._loader.join(timeout=120)
            if self._roller is not None:  # what the loader's last inserts left, then it ends
                with self._cond:
                    self._roller_done = True
                    self._cond.notify_all()
                self._roller.join(timeout=120)
            if self._dispatch is not None:
                self._dispatch.put(None)
                self._dispatcher.join(timeout=60)
            with self._cond:
                self._closed = True
                drained = not self._pending
                self._spool.close()
            if drained:
                remove_segments(self._spool.directory)
            else:
                log.error("span store: %d spans could not be written; they stay in the spool %s and are "
                          "replayed at the next start", self._pending_rows, self._spool.directory)
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:
                pass


def export_parquet(con: duckdb.DuckDBPyConnection, lock: threading.Lock | None, directory: str | os.PathLike,
                   since_ns: int | None, until_ns: int | None) -> list[str]:
    """Spans with since <= start_ns < until as Parquet: DIR/date=YYYY-MM-DD/hour=HH/spans-*.parquet.

    DuckDB streams the rows as Arrow and pyarrow writes the files, so the database itself never
    needs access to the output directory (its file access stays limited to the store)."""
    out = Path(directory).absolute()
    out.mkdir(parents=True, exist_ok=True)
    where = []
    params: list[int] = []
    if since_ns is not None:
        where.append("start_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("start_ns < ?")
        params.append(until_ns)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    sql = ("SELECT *, strftime(make_timestamp(start_ns // 1000), '%Y-%m-%d') AS date, "
           f"strftime(make_timestamp(start_ns // 1000), '%H') AS hour FROM spans {cond}")
    written: list[str] = []
    # Named by the range: exporting the same range again (after a crash) replaces, not duplicates.
    stamp = f"{since_ns if since_ns is not None else 'start'}-{until_ns if until_ns is not None else 'end'}"

    def write() -> None:
        import pyarrow.dataset as pads  # here: Parquet/dataset libraries cost ~15 MiB RSS once loaded

        cur = cursor_on_store(con)
        try:
            reader = cur.sql(sql, params=params).to_arrow_reader(65_536)
            pads.write_dataset(reader, out, format="parquet", partitioning=["date", "hour"],
                               partitioning_flavor="hive", basename_template=f"spans-{stamp}-{{i}}.parquet",
                               existing_data_behavior="overwrite_or_ignore",
                               file_visitor=lambda f: written.append(f.path))
        finally:
            cur.close()

    if lock is None:
        write()
    else:
        with lock:
            write()
    return sorted(written)


# DuckDB's row group size for the store (its default: 122,880 rows).  An insert of at least a row group is
# written to the database file compressed, at once ("optimistic write"), instead of row by row into the WAL
# and compressed again at the next checkpoint.  The loader inserts up to SpoolSettings.flush_spans rows per
# transaction, or what came in during flush_interval: under load, several thousand.  Measured on bench spans
# (whole insert transaction, CPU per span, 393k spans; scratch script): 8,192-span inserts 22.2 us with row
# groups of 8,192 against 27.2 with DuckDB's default, 12,000-span inserts 18.1; in the running pipeline at
# max rate the loader thread went from 28 to 20 us per span.  Smaller groups than this compress worse.  It
# is an option of ATTACH (not of a connection's config, and not kept in the file), hence the in-memory
# instance the store is attached to.
ROW_GROUP_SIZE = 8_192


def attach_store(path: str | os.PathLike, config: dict) -> duckdb.DuckDBPyConnection:
    """An instance with the store file attached (row groups of ROW_GROUP_SIZE) as its default database,
    under the name a plain ``duckdb.connect(path)`` gives it (the file's stem)."""
    p = Path(path)
    # Spilled data next to the file: an in-memory instance's default is ".tmp" in the process's working
    # directory (a read-only root in a container; and a soak lost its checkpoint when that was cleaned).
    con = duckdb.connect(config={"temp_directory": f"{p.absolute()}.tmp", **config})
    try:
        _attach(con, p)
    except BaseException:
        con.close()
        raise
    return con


def _attach(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """The store file attached to ``con``'s instance (row groups of ROW_GROUP_SIZE) and made its default
    database: at opening, and when the store re-attaches it (SpanStore._reattach)."""
    name = catalog_name(path)
    con.execute(f"ATTACH {_literal(str(path))} AS {name} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})").fetchall()
    con.execute(f"USE {name}").fetchall()


_RESERVED_CATALOGS = {"memory", "system", "temp", "main"}


def catalog_name(path: str | os.PathLike) -> str:
    """The attached store's database name, quoted: the file's stem, as ``duckdb.connect(path)`` names it,
    unless that is one of DuckDB's own catalogs (a store at memory.duckdb would clash with the instance's)."""
    stem = Path(path).stem
    return _ident(stem if stem.lower() not in _RESERVED_CATALOGS else f"{stem}_store")


def cursor_on_store(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A new connection to ``con``'s instance on ``con``'s database: a cursor starts on the instance's
    default (for an attached store, the empty in-memory one), not on the database ``con`` uses."""
    cur = con.cursor()
    (name,) = cur.execute("SELECT current_database()").fetchall()[0]
    if name == "memory":
        dbs = [r[0] for r in cur.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal "
                                         "AND database_name <> 'memory'").fetchall()]
        if len(dbs) == 1:
            cur.execute(f"USE {_ident(dbs[0])}").fetchall()
    return cur


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def default_spool_dir(store_path: str | os.PathLike) -> str:
    return str(Path(store_path).absolute()) + ".spool"


def open_read_only(path: str | os.PathLike, spool_dir: str | os.PathLike | None = None) -> duckdb.DuckDBPyConnection:
    """Open a store no pipeline is running on, read-only, with no file access (restrict_file_access).

    Spans acknowledged but still in the spool (the pipeline was killed before its loader
    inserted them; the next start replays them) are shown too: ``spans`` is then a
    temporary view over the table and the spooled batches."""
    p = Path(path).absolute()
    if not p.exists():
        raise FileNotFoundError(f"no span store at {p}")
    con = duckdb.connect(str(p), read_only=True)
    _overlay_spool(con, Path(spool_dir or default_spool_dir(p)))
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    if "spans_stored" not in views and "spans" in views:  # a file of an older version: the rows as stored
        held = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'held_spans'").fetchall()[0][0]
        con.execute(stored_view_sql("(SELECT * FROM main.span_rows"
                                    + (" UNION ALL BY NAME SELECT * FROM main.held_spans)" if held else ")"), temp=True))
    restrict_file_access(con)
    return con


def _overlay_spool(con: duckdb.DuckDBPyConnection, spool_dir: Path) -> None:
    has_state = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'spool_state'").fetchall()[0][0]
    applied = con.execute("SELECT applied_seq FROM spool_state").fetchall()[0][0] if has_state else 0
    batches = [b for _, b in read_after(spool_dir, applied)]
    if not batches:
        return
    con.register("_spooled", to_storage(pa.concat_tables(batches, promote_options="default")))
    con.execute("CREATE TEMP TABLE spooled_rows AS SELECT * FROM _spooled")
    con.unregister("_spooled")
    held = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'held_spans'").fetchall()[0][0]
    located = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'trace_locator'").fetchall()[0][0]
    if located:  # the spooled spans are located too (a temporary view in front of the table)
        key = TRACE_KEY.format("trace_id")
        con.execute(f"CREATE TEMP VIEW trace_locator AS SELECT * FROM main.trace_locator UNION ALL SELECT {key}, "
                    f"min(start_ns), max(start_ns), NULL FROM temp.spooled_rows WHERE {key} IS NOT NULL GROUP BY trace_id")
    con.execute(_view_sql("(SELECT * FROM main.span_rows UNION ALL BY NAME SELECT * FROM temp.spooled_rows"
                          + (" UNION ALL BY NAME SELECT * FROM main.held_spans)" if held else ")"), temp=True))
