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


class Spool:
    """The writer.  Not thread-safe: the store calls it under its own lock."""

    def __init__(self, directory: str | os.PathLike, next_seq: int, segment_bytes: int = 64 << 20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.next_seq = next_seq
        self._file = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None
        self._closed_segments: list[tuple[Path, int]] = []  # (path, last seq in it)
        self._current: Path | None = None
        self._current_last = 0

    def append(self, table: pa.Table) -> SpooledBatch:
        """Write ``table`` as one record batch and make it durable."""
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if batch is None:
            raise ValueError("cannot spool an empty batch")
        if self._writer is None or not table.schema.equals(self._schema) or self._file.tell() >= self.segment_bytes:
            self._rotate(table.schema)
        seq = self.next_seq
        offset = self._file.tell()
        try:
            self._writer.write_batch(batch, custom_metadata={_SEQ_KEY: str(seq).encode()})
            self._file.flush()
            os.fdatasync(self._file.fileno())
        except OSError:
            # Disk full or an I/O error: this batch is not acknowledged.  Cut it off the segment (best
            # effort; a torn message left behind is where readers stop) and never write after it: the
            # next append starts a new segment.  Its sequence number is not reused.
            self.next_seq += 1
            self._abandon_current(truncate_at=offset)
            raise
        self.next_seq += 1
        self._current_last = seq
        return SpooledBatch(seq, self._current, offset, batch.num_rows, self._schema)

    def _rotate(self, schema: pa.Schema) -> None:
        self._close_current()
        self._current = self.directory / _segment_name(self.next_seq)
        self._file = open(self._current, "wb")
        self._writer = pa.ipc.new_stream(self._file, schema)
        self._schema = schema
        self._file.flush()
        os.fdatasync(self._file.fileno())
        _fsync_dir(self.directory)  # the new file's name is durable too

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._closed_segments.append((self._current, self._current_last))
        self._writer = self._file = self._current = None

    def _abandon_current(self, truncate_at: int) -> None:
        try:
            os.ftruncate(self._file.fileno(), truncate_at)
            self._file.close()
        except (OSError, ValueError):
            pass
        self._closed_segments.append((self._current, self._current_last))
        self._writer = self._file = self._current = None

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
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
