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

    <first seq, 20 digits>.q    records: MAGIC | seq u64 | length u32 | crc32 u32 | Arrow IPC stream
    acks                        acked seqs, u64 each

A record whose checksum does not match (a corrupt entry) is skipped and counted, and reading
resumes at the next record marker; a torn record at the end of a segment (a crash mid-write, never
acknowledged) ends the segment.  A segment is deleted once every record in it is acked; the ack log
is rewritten when it has grown past what is still pending.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from agent_sre.pipeline.storage.spool import fsync_dir

log = logging.getLogger("agent_sre.exporter.queue")

SIZERS = ("requests", "items", "bytes")
MAGIC = b"ASQ1"
_HEADER = struct.Struct("<4sQII")  # magic, seq, payload length, crc32
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


def serialize(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def deserialize(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


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

    def put(self, table: pa.Table) -> None:
        nbytes = table.nbytes
        size = _size(self.sizer, table.num_rows, nbytes)
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if self._used + size > self.capacity and (self._items or self._in_flight):
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
        self._file = None
        self._current: _Segment | None = None
        self._acks = open(self.directory / "acks", "ab")

    # --- recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        acked = _read_acks(self.directory / "acks")
        for path in sorted(p for p in self.directory.iterdir() if p.suffix == SUFFIX and p.stem.isdigit()):
            seg = self._segments[path] = _Segment(path, closed=True)
            for item in self._scan(path):
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

    def _scan(self, path: Path) -> Iterator[Item]:
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            magic, seq, length, crc = _HEADER.unpack_from(data, pos)
            start = pos + _HEADER.size
            if magic != MAGIC:
                nxt = data.find(MAGIC, pos + 1)
                if nxt < 0:
                    return
                pos = nxt
                continue
            if start + length > len(data):
                return  # torn at the end: written by a crash, never acknowledged
            payload = data[start:start + length]
            if zlib.crc32(payload) != crc:
                self.corrupt += 1
                log.error("persistent queue %s: a corrupt record (seq %d) in %s is skipped", self.directory, seq,
                          path.name)
                nxt = data.find(MAGIC, pos + 1)
                if nxt < 0:
                    return
                pos = nxt
                continue
            try:
                rows = _rows_of(payload)
            except (pa.ArrowInvalid, OSError) as exc:
                self.corrupt += 1
                log.error("persistent queue %s: record %d in %s does not decode (%s); skipped", self.directory, seq,
                          path.name, exc)
                pos = start + length
                continue
            yield Item(seq, rows, length, None, path, start, length)
            pos = start + length

    # --- the queue ---------------------------------------------------------------------

    def put(self, table: pa.Table) -> None:
        payload = serialize(table)
        size = _size(self.sizer, table.num_rows, len(payload))
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if self._used + size > self.capacity and (self._items or self._in_flight):
                raise QueueFull(f"sending queue is full ({self._used} of {self.capacity} {self.sizer})")
            self._seq += 1
            seq = self._seq
            seg = self._writable()
            offset = self._file.tell()
            try:
                self._file.write(_HEADER.pack(MAGIC, seq, len(payload), zlib.crc32(payload)) + payload)
                self._file.flush()
                if self.fsync:
                    os.fdatasync(self._file.fileno())
            except OSError:
                self._abandon(offset)  # not taken: cut it off and never write after it
                raise
            seg.live.add(seq)
            seg.last = seq
            item = Item(seq, table.num_rows, len(payload), None, seg.path, offset + _HEADER.size, len(payload))
            self._items.append(item)
            self._used += size
            self._cond.notify()

    def _writable(self) -> _Segment:
        if self._current is None or self._file.tell() >= self.segment_bytes:
            if self._current is not None:
                self._file.close()
                self._current.closed = True
                self._drop_if_done(self._current)
            path = self.directory / f"{self._seq:020d}{SUFFIX}"
            self._file = open(path, "ab")
            self._current = self._segments[path] = _Segment(path)
            fsync_dir(self.directory)
        return self._current

    def _abandon(self, offset: int) -> None:
        try:
            os.ftruncate(self._file.fileno(), offset)
            self._file.close()
        except (OSError, ValueError):
            pass
        assert self._current is not None
        self._current.closed = True
        self._current = self._file = None

    def get(self, timeout: float | None = None) -> Item | None:
        item = self._take(timeout)
        if item is None:
            return None
        try:
            with open(item.segment, "rb") as f:
                f.seek(item.offset)
                item.table = deserialize(f.read(item.length))
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
        """Seqs in ``seg`` that are acked: its records (seqs after the one in its name, up to the last
        written; one writer hands them out in order) that are neither pending nor in flight."""
        return set(range(int(seg.path.stem) + 1, seg.last + 1)) - seg.live

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._file is not None:
                self._file.close()
                self._file = None
            self._acks.close()


def _rows_of(payload: bytes) -> int:
    return deserialize(payload).num_rows


def _read_acks(path: Path) -> set[int]:
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = len(data) - len(data) % _ACK.size  # a torn last ack was never acknowledged to anyone
    return {v for (v,) in _ACK.iter_unpack(data[:whole])}

