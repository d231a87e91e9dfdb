"""Sending queues of the exporter helper: bounded, in memory or on disk.

Both hold Arrow tables (a batch of spans, metric points or log records) and share one interface:
``put`` (raises ``QueueFull`` beyond the capacity), ``get`` (the oldest item not taken, or None on
timeout or close), ``ack`` (the item was delivered or given up: forget it).  Capacity is counted by
the ``sizer``: ``requests`` (batches), ``items`` (rows) or ``bytes``.

The **persistent queue** survives a restart and ``kill -9``: every item is appended to a segment
file as one record and ``fdatasync``-ed (``fsync: true``, the default) before ``put`` returns, and
every ack is appended to an ack log the same way.  At start, every record not acked is pending
again, oldest first (so an item taken but not acked when the process died is sent again: at least
once).  On disk, in ``DIR``:

    <first seq, 20 digits>.q    checksummed records, each an Arrow IPC stream (the pipeline's segment
                                log, shared with the span store's spool: pipeline/storage/segmentlog.py)
    acks                        acked seqs, u64 each

A record whose checksum does not match (a corrupt entry) is skipped and counted, reading resumes at
the next record marker, and the damaged segment is copied to ``DIR/quarantine/`` (never deleted); a
torn record at the end of the last segment (a crash mid-write, never acknowledged) ends it.  A
segment is deleted once every record in it is acked; the ack log is rewritten when it has grown past
what is still pending.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from agent_sre.pipeline.pdata.ipc import decode_table, encode_table
from agent_sre.pipeline.storage.segmentlog import (
    SegmentWriter,
    fsync_dir,
    quarantine,
    scan_all,
)

log = logging.getLogger("agent_sre.exporter.queue")

SIZERS = ("requests", "items", "bytes")
_ACK = struct.Struct("<Q")
SUFFIX = ".q"


class QueueFull(Exception):
    """The queue holds its capacity: the item was not taken."""


@dataclass
class Item:
    seq: int
    rows: int
    nbytes: int
    table: pa.Table | None = None  # in memory; the persistent queue reads it back at get()
    segment: Path | None = None
    offset: int = 0
    length: int = 0


def _size(sizer: str, rows: int, nbytes: int) -> int:
    return 1 if sizer == "requests" else rows if sizer == "items" else nbytes


class _Queue:
    """What both queues share: their accounting."""

    _used: int
    _items: deque
    _in_flight: dict
    _cond: threading.Condition
    _closed: bool

    @property
    def size(self) -> int:
        """What the queue holds, in its sizer's unit (waiting and being sent)."""
        return self._used

    @property
    def pending(self) -> int:
        """Items waiting or being sent."""
        return len(self._items) + len(self._in_flight)

    @property
    def full(self) -> bool:
        return self._used >= self.capacity

    def _take(self, timeout: float | None) -> Item | None:
        """The oldest waiting item, now in flight (None on timeout or once closed and empty)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._in_flight[item.seq] = item
            return item


class MemoryQueue(_Queue):
    persistent = False

    def __init__(self, capacity: int, sizer: str = "items"):
        if sizer not in SIZERS:
            raise ValueError(f"sizer must be one of {SIZERS}")
        self.capacity, self.sizer = capacity, sizer
        self._items: deque[Item] = deque()
        self._in_flight: dict[int, Item] = {}  # taken, not yet acked: still counted
        self._used = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, table: pa.Table, force: bool = False) -> None:
        """Take ``table``; ``force``: even past the capacity (admitted while there was room)."""
        nbytes = table.nbytes
        size = _size(self.sizer, table.num_rows, nbytes)
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if not force and self._used + size > self.capacity and (self._items or self._in_flight):
                raise QueueFull(f"sending queue is full ({self._used} of {self.capacity} {self.sizer})")
            self._seq += 1
            self._items.append(Item(self._seq, table.num_rows, nbytes, table))
            self._used += size
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Item | None:
        return self._take(timeout)

    def ack(self, item: Item) -> None:
        with self._cond:
            if self._in_flight.pop(item.seq, None) is not None:
                self._used -= _size(self.sizer, item.rows, item.nbytes)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Segment:
    path: Path
    live: set[int] = field(default_factory=set)  # seqs in it not acked yet
    closed: bool = False
    first: int = 0  # the seq in its name: its first record's
    last: int = 0  # the highest seq written to it


class PersistentQueue(_Queue):
    persistent = True

    def __init__(self, directory: str | os.PathLike, capacity: int, sizer: str = "bytes", fsync: bool = True,
                 segment_bytes: int = 64 << 20):
        if sizer not in SIZERS:
            raise ValueError(f"sizer must be one of {SIZERS}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity, self.sizer, self.fsync, self.segment_bytes = capacity, sizer, fsync, segment_bytes
        self.corrupt = 0  # records skipped because their checksum did not match
        self._cond = threading.Condition()
        self._closed = False
        self._items: deque[Item] = deque()
        self._in_flight: dict[int, Item] = {}
        self._segments: dict[Path, _Segment] = {}
        self._used = 0
        self._seq = 0
        self._acked_since_rewrite = 0
        self._recover()
        self._writer = SegmentWriter(self.directory, SUFFIX, segment_bytes, fsync)
        self._current: _Segment | None = None
        self._acks = open(self.directory / "acks", "ab")

    # --- recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        acked = _read_acks(self.directory / "acks")
        # Segments are deleted whenever all their records are acked, not oldest first: gaps are normal.
        for scanned in scan_all(self.directory, SUFFIX, contiguous=False):
            path = scanned.path
            if scanned.problems:
                self.corrupt += len(scanned.problems)
                where = quarantine(path, scanned.problems)
                for problem in scanned.problems:
                    log.error("persistent queue %s: segment %s: %s; what is readable is sent, a copy is kept in %s",
                              self.directory, path.name, problem, where)
            seg = self._segments[path] = _Segment(path, closed=True, first=int(path.stem))
            for item in self._items_of(scanned.records):
                self._seq = max(self._seq, item.seq)
                seg.last = max(seg.last, item.seq)
                if item.seq in acked:
                    continue
                seg.live.add(item.seq)
                self._items.append(item)
                self._used += _size(self.sizer, item.rows, item.nbytes)
            if not seg.live:
                path.unlink(missing_ok=True)
                del self._segments[path]
        self._seq = max([self._seq, *acked]) if acked else self._seq
        if self._items:
            log.info("persistent queue %s: %d batches (%d rows) not yet delivered are pending again", self.directory,
                     len(self._items), sum(i.rows for i in self._items))
        self._rewrite_acks()

    def _items_of(self, records) -> Iterator[Item]:
        for rec in records:
            try:
                rows = _rows_of(rec.read())
            except (pa.ArrowInvalid, OSError) as exc:
                self.corrupt += 1
                log.error("persistent queue %s: record %d in %s does not decode (%s); skipped", self.directory,
                          rec.seq, rec.path.name, exc)
                continue
            yield Item(rec.seq, rows, rec.length, None, rec.path, rec.offset, rec.length)

    # --- the queue ---------------------------------------------------------------------

    def put(self, table: pa.Table, force: bool = False) -> None:
        payload = encode_table(table)
        size = _size(self.sizer, table.num_rows, len(payload))
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if not force and self._used + size > self.capacity and (self._items or self._in_flight):
                raise QueueFull(f"sending queue is full ({self._used} of {self.capacity} {self.sizer})")
            seq = self._seq + 1
            rec = self._writer.append(seq, payload)  # OSError: not taken (nothing of it stays)
            self._seq = seq
            seg = self._segments.get(rec.path)
            if seg is None:
                self._close_current()
                seg = self._current = self._segments[rec.path] = _Segment(rec.path, first=seq)
            seg.live.add(seq)
            seg.last = seq
            item = Item(seq, table.num_rows, len(payload), None, rec.path, rec.offset, rec.length)
            self._items.append(item)
            self._used += size
            self._cond.notify()

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.closed = True
            self._drop_if_done(self._current)
        self._current = None

    def get(self, timeout: float | None = None) -> Item | None:
        item = self._take(timeout)
        if item is None:
            return None
        try:
            with open(item.segment, "rb") as f:
                f.seek(item.offset)
                item.table = decode_table(f.read(item.length))
        except (OSError, pa.ArrowInvalid) as exc:  # checked at recovery; a disk error now: give it up
            self.corrupt += 1
            log.error("persistent queue %s: record %d cannot be read back (%s); skipped", self.directory, item.seq, exc)
            self.ack(item)
            return self.get(0)
        return item

    def ack(self, item: Item) -> None:
        with self._cond:
            if self._in_flight.pop(item.seq, None) is None:
                return
            item.table = None
            self._used -= _size(self.sizer, item.rows, item.nbytes)
            self._acks.write(_ACK.pack(item.seq))
            self._acks.flush()
            if self.fsync:
                os.fdatasync(self._acks.fileno())
            seg = self._segments.get(item.segment)
            if seg is not None:
                seg.live.discard(item.seq)
                self._drop_if_done(seg)
            self._acked_since_rewrite += 1
            if self._acked_since_rewrite > 1024 and self._acked_since_rewrite > 4 * self.pending:
                self._acks.close()
                self._rewrite_acks()
                self._acks = open(self.directory / "acks", "ab")

    def _drop_if_done(self, seg: _Segment) -> None:
        if seg.closed and not seg.live:
            seg.path.unlink(missing_ok=True)
            self._segments.pop(seg.path, None)

    def _rewrite_acks(self) -> None:
        """Keep only the acks of records still on disk (atomically: a crash leaves the old or the new log)."""
        on_disk = {s for seg in self._segments.values() for s in self._records_acked(seg)}
        tmp = self.directory / "acks.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(_ACK.pack(s) for s in sorted(on_disk)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / "acks")
        fsync_dir(self.directory)
        self._acked_since_rewrite = 0

    @staticmethod
    def _records_acked(seg: _Segment) -> set[int]:
        """Seqs in ``seg`` that are acked: its records (seqs from the one in its name up to the last
        written; one writer hands them out in order) that are neither pending nor in flight."""
        return set(range(seg.first, seg.last + 1)) - seg.live

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._writer.close()
            self._acks.close()


def _rows_of(payload: bytes) -> int:
    return decode_table(payload).num_rows


def _read_acks(path: Path) -> set[int]:
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = len(data) - len(data) % _ACK.size  # a torn last ack was never acknowledged to anyone
    return {v for (v,) in _ACK.iter_unpack(data[:whole])}

