"""The span store's write-ahead spool: a segment log (segmentlog.py) of Arrow batches on disk.

Why it exists: a DuckDB commit costs a few milliseconds however small it is,
and its per-row cost falls as batches grow, but the group commit in front of
the store can only gather what concurrent clients have in flight (a few
thousand spans).  So the store acknowledges a batch once it is in the spool
(written and ``fdatasync``-ed: one sequential write), and a loader inserts the
spool into DuckDB in large transactions behind it.  Each batch carries a
sequence number; the store records the last applied one in DuckDB in the same
transaction as the rows, so replay after a crash is exactly once.

On disk: ``DIR/<first seq, 20 digits>.spool``, checksummed records each holding one batch as an
Arrow IPC stream.  ``recover`` reads them back and says truthfully what could not be read (see
segmentlog.py); damaged segments are copied to ``DIR/quarantine/``, never deleted.  Spools of
older versions (``.arrows``: one IPC stream per segment, no checksums) are still read.
"""

from __future__ import annotations

import logging
import os
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

log = logging.getLogger("agent_sre.spool")

SUFFIX = ".spool"
LEGACY_SUFFIX = ".arrows"
_SEQ_KEY = b"seq"


@dataclass(frozen=True)
class SpooledBatch:
    """Where one appended batch lies: the loader reads it back from there (memory-mapped),
    so a backlog costs disk, not memory."""

    seq: int
    path: Path
    offset: int
    length: int
    rows: int
    schema: pa.Schema


def load(items: list[SpooledBatch]) -> list[pa.Table]:
    """The batches of ``items``, zero-copy from memory-mapped segments."""
    out: list[pa.Table] = []
    maps: dict[Path, pa.MemoryMappedFile] = {}
    for item in items:
        mm = maps.get(item.path)
        if mm is None:
            mm = maps[item.path] = pa.memory_map(str(item.path))
        out.append(decode_table(mm.read_at(item.length, item.offset)))
    return out


def segments(directory: Path) -> list[Path]:
    """Segment files (this version's and older ones) in sequence order."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.suffix in (SUFFIX, LEGACY_SUFFIX) and p.stem.isdigit()),
                  key=lambda p: int(p.stem))


@dataclass
class Recovery:
    """What a spool holds after the last run: batches not yet applied, the segments they lie in
    (path, last seq), and what could not be read (already logged and quarantined)."""

    batches: list[SpooledBatch] = field(default_factory=list)
    segments: list[tuple[Path, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last_seq: int = 0


def recover(directory: Path, applied_seq: int) -> Recovery:
    """Read the spool back: every intact batch above ``applied_seq``; damage is logged as what it is
    (acknowledged spans that cannot be read), and each damaged segment is copied to quarantine."""
    result = Recovery(last_seq=applied_seq)
    for s in scan_all(directory, SUFFIX):
        last = applied_seq
        for rec in s.records:
            last = max(last, rec.seq)
            if rec.seq <= applied_seq:
                continue
            try:
                table = decode_table(rec.read())
            except (pa.ArrowInvalid, OSError) as exc:  # a checksum that matches garbage: written so
                s.problems.append(f"record seq {rec.seq} passes its checksum but does not decode ({exc})")
                continue
            result.batches.append(SpooledBatch(rec.seq, rec.path, rec.offset, rec.length, table.num_rows,
                                               table.schema))
        result.segments.append((s.path, last))
        result.last_seq = max(result.last_seq, last)
        if s.problems:
            where = quarantine(s.path, s.problems)
            for problem in s.problems:
                log.error("spool segment %s: %s. Spans in it were acknowledged to clients and may be lost; "
                          "what is readable is loaded, and a copy of the segment is kept in %s",
                          s.path.name, problem, where)
            result.problems += [f"{s.path.name}: {p}" for p in s.problems]
        elif s.torn_tail is not None:
            log.info("spool segment %s ends in a record cut short by a crash before it was acknowledged "
                     "(nothing lost)", s.path.name)
    return result


def read_legacy(directory: Path, applied_seq: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(seq, batch) above ``applied_seq`` from an older version's ``.arrows`` segments."""
    for path in (p for p in segments(directory) if p.suffix == LEGACY_SUFFIX):
        try:
            with open(path, "rb") as f:
                reader = pa.ipc.open_stream(f)
                while True:
                    try:
                        batch, meta = reader.read_next_batch_with_custom_metadata()
                    except StopIteration:
                        break
                    if int(meta[_SEQ_KEY]) > applied_seq:
                        yield int(meta[_SEQ_KEY]), batch
        except (pa.ArrowInvalid, OSError, KeyError, ValueError) as exc:
            where = quarantine(path, [f"unreadable after its last whole batch: {exc}"])
            log.error("spool segment %s (older format, no checksums) cannot be read to its end (%s); a copy is "
                      "kept in %s", path.name, exc, where)


def read_after(directory: Path, applied_seq: int) -> Iterator[tuple[int, pa.Table]]:
    """Every spooled batch with a sequence number above ``applied_seq``, in order (read-only: for
    readers of a stopped pipeline's store; nothing is quarantined)."""
    for seq, batch in read_legacy(directory, applied_seq):
        yield seq, pa.Table.from_batches([batch])
    for s in scan_all(directory, SUFFIX):
        for rec in s.records:
            if rec.seq > applied_seq:
                try:
                    yield rec.seq, decode_table(rec.read())
                except (pa.ArrowInvalid, OSError):
                    continue


class Spool:
    """The writer.  Not thread-safe: the store calls it under its own lock."""

    def __init__(self, directory: str | os.PathLike, next_seq: int, segment_bytes: int = 64 << 20,
                 recovered: list[tuple[Path, int]] | None = None):
        self.directory = Path(directory)
        self._writer = SegmentWriter(self.directory, SUFFIX, segment_bytes)
        self.next_seq = next_seq
        # (path, last seq in it): segments no longer written to, deleted once applied.
        self._closed_segments: list[tuple[Path, int]] = list(recovered or [])
        self._current: Path | None = None
        self._current_last = 0

    def append(self, table: pa.Table) -> SpooledBatch:
        """Write ``table`` as one record and make it durable (an ``OSError``: not written, not taken)."""
        if not table.num_rows:
            raise ValueError("cannot spool an empty batch")
        try:
            rec = self._writer.append(self.next_seq, encode_table(table))
        except OSError:
            self._close_current()  # the writer abandoned it: the next append starts a new segment
            raise
        if rec.path != self._current:
            self._close_current()
            self._current = rec.path
        self.next_seq += 1
        self._current_last = rec.seq
        return SpooledBatch(rec.seq, rec.path, rec.offset, rec.length, table.num_rows, table.schema)

    def _close_current(self) -> None:
        if self._current is not None:
            self._closed_segments.append((self._current, self._current_last))
        self._current = None

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
        self._writer.close()
        self._close_current()


def remove_segments(directory: Path) -> None:
    """Delete every segment (everything in them is stored); the quarantine is never touched."""
    for path in segments(directory):
        path.unlink(missing_ok=True)
    if directory.is_dir():
        fsync_dir(directory)
