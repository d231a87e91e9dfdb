"""The span store's write-ahead spool: an append-only log of Arrow batches on disk.

Why it exists: a DuckDB commit costs a few milliseconds however small it is,
and its per-row cost falls as batches grow, but the group commit in front of
the store can only gather what concurrent clients have in flight (a few
thousand spans).  So the store acknowledges a batch once it is in the spool
(written and ``fdatasync``-ed: one sequential write), and a loader inserts the
spool into DuckDB in large transactions behind it.  Each batch carries a
sequence number; the store records the last applied one in DuckDB in the same
transaction as the rows, so replay after a crash is exactly once.

On disk: ``DIR/<first seq, 20 digits>.arrows``, each an Arrow IPC stream whose
record batches carry ``{"seq": "<n>"}`` as custom metadata.  Only the segment
being written can end in a torn message (a crash mid-write, never
acknowledged); readers stop there, and a reopened spool never appends to an
old segment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

log = logging.getLogger("agent_sre.spool")

SUFFIX = ".arrows"
_SEQ_KEY = b"seq"


@dataclass(frozen=True)
class SpooledBatch:
    """Where one appended batch lies: the loader reads it back from there (memory-mapped),
    so a backlog costs disk, not memory."""

    seq: int
    path: Path
    offset: int
    rows: int
    schema: pa.Schema


def load(items: list[SpooledBatch]) -> list[pa.RecordBatch]:
    """The batches of ``items``, zero-copy from memory-mapped segments."""
    out: list[pa.RecordBatch] = []
    maps: dict[Path, pa.MemoryMappedFile] = {}
    for item in items:
        mm = maps.get(item.path)
        if mm is None:
            mm = maps[item.path] = pa.memory_map(str(item.path))
        mm.seek(item.offset)
        message = pa.ipc.read_message(mm)
        if message.type == "schema":  # the stream's schema is written just before its first batch
            message = pa.ipc.read_message(mm)
        out.append(pa.ipc.read_record_batch(message, item.schema))
    return out


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def segments(directory: Path) -> list[Path]:
    """Segment files in sequence order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX) and p.name[:-len(SUFFIX)].isdigit())


def read_segment(path: Path) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(seq, batch) for every complete batch of one segment; stops quietly at a torn tail."""
    try:
        with open(path, "rb") as f:
            reader = pa.ipc.open_stream(f)
            while True:
                try:
                    batch, meta = reader.read_next_batch_with_custom_metadata()
                except StopIteration:
                    return
                yield int(meta[_SEQ_KEY]), batch
    except (pa.ArrowInvalid, OSError, KeyError, ValueError) as exc:
        # A segment cut short by a crash (or empty: created, then killed before its first write).
        log.warning("spool segment %s ends early (%s); later data in it was never acknowledged", path.name, exc)


def read_after(directory: Path, applied_seq: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Every spooled batch with a sequence number above ``applied_seq``, in order."""
    for path in segments(directory):
        for seq, batch in read_segment(path):
            if seq > applied_seq:
                yield seq, batch


@dataclass
class _Segment:
    """The segment being written: its file, the Arrow stream on it and that stream's schema."""

    path: Path
    file: BinaryIO
    writer: pa.ipc.RecordBatchStreamWriter
    schema: pa.Schema


class Spool:
    """The writer.  Not thread-safe: the store calls it under its own lock."""

    def __init__(self, directory: str | os.PathLike, next_seq: int, segment_bytes: int = 64 << 20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.next_seq = next_seq
        self._segment: _Segment | None = None
        self._closed_segments: list[tuple[Path, int]] = []  # (path, last seq in it)
        self._current_last = 0

    def append(self, table: pa.Table) -> SpooledBatch:
        """Write ``table`` as one record batch and make it durable."""
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if batch is None:
            raise ValueError("cannot spool an empty batch")
        segment = self._segment
        if segment is None or not table.schema.equals(segment.schema) or segment.file.tell() >= self.segment_bytes:
            segment = self._rotate(table.schema)
        seq = self.next_seq
        offset = segment.file.tell()
        try:
            segment.writer.write_batch(batch, custom_metadata={_SEQ_KEY: str(seq).encode()})
            segment.file.flush()
            os.fdatasync(segment.file.fileno())
        except OSError:
            # Disk full or an I/O error: this batch is not acknowledged.  Cut it off the segment (best
            # effort; a torn message left behind is where readers stop) and never write after it: the
            # next append starts a new segment.  Its sequence number is not reused.
            self.next_seq += 1
            self._abandon_current(segment, truncate_at=offset)
            raise
        self.next_seq += 1
        self._current_last = seq
        return SpooledBatch(seq, segment.path, offset, batch.num_rows, segment.schema)

    def _rotate(self, schema: pa.Schema) -> _Segment:
        self._close_current()
        path = self.directory / _segment_name(self.next_seq)
        file = open(path, "wb")
        segment = self._segment = _Segment(path, file, pa.ipc.new_stream(file, schema), schema)
        file.flush()
        os.fdatasync(file.fileno())
        fsync_dir(self.directory)  # the new file's name is durable too
        return segment

    def _close_current(self) -> None:
        segment = self._segment
        if segment is not None:
            segment.writer.close()
            segment.file.close()
            self._closed_segments.append((segment.path, self._current_last))
        self._segment = None

    def _abandon_current(self, segment: _Segment, truncate_at: int) -> None:
        try:
            os.ftruncate(segment.file.fileno(), truncate_at)
            segment.file.close()
        except (OSError, ValueError):
            pass
        self._closed_segments.append((segment.path, self._current_last))
        self._segment = None

    def release(self, applied_seq: int) -> None:
        """Delete closed segments whose every batch is in the store."""
        keep = []
        for path, last in self._closed_segments:
            if last <= applied_seq:
                path.unlink(missing_ok=True)
            else:
                keep.append((path, last))
        self._closed_segments = keep

    def close(self) -> None:
        self._close_current()


def remove_segments(directory: Path) -> None:
    for path in segments(directory):
        path.unlink(missing_ok=True)
    if directory.is_dir():
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
