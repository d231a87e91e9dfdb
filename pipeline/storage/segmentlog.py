"""The segment log: checksummed records in append-only segment files, for the span store's spool
and the exporters' persistent queue (the two durable logs of the pipeline).

On disk, in one directory: ``<first seq, 20 digits><suffix>`` files, each a run of records

    MAGIC "ASR1" | seq u64 | length u32 | crc32 u32 | payload (length bytes)

where the CRC-32 covers the seq, the length and the payload, so a flipped bit anywhere in a record
is found.  Records are appended and ``fdatasync``-ed before ``append`` returns (the caller
acknowledges after that); a failed write is cut off again and the segment is never written after
it, so its sequence number is used again by the next record, in a new segment.

Reading back (``scan``) tells the three cases apart, because they mean different things:

- a record cut short at the end of the *last* segment: written by a crash before ``append``
  returned, so never acknowledged (``torn_tail``; nothing lost);
- a record cut short in an earlier segment whose successor starts with the same seq: a write
  that failed (disk full) and was not acknowledged either;
- anything else — a checksum that does not match, bytes that are not a record, a cut in an earlier
  segment, a gap in the sequence — is damage to data that *was* acknowledged: ``problems`` says
  where, readable records after it are still returned (reading resumes at the next record marker),
  and the owner copies the segment to ``quarantine/`` with a note, where it is never deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

try:
    from isal import isal_zlib as _crc32  # the same CRC-32 as zlib's, ~10x faster (see _crc)
except ImportError:  # a platform without isal's wheel: zlib's
    import zlib as _crc32  # type: ignore[no-redef]

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("agent_sre.segmentlog")

MAGIC = b"ASR1"
_HEADER = struct.Struct("<4sQII")  # magic, seq, payload length, crc32
_CHECKED = struct.Struct("<QI")  # the header fields the checksum covers
QUARANTINE = "quarantine"


def _crc(seq: int, payload: bytes | memoryview | pa.Buffer) -> int:
    """The record's CRC-32 (zlib's polynomial) by ISA-L: the same value at ~1/10 of zlib's CPU (0.36 -> 0.03
    ms per 2 MB here: a flush's record, on the flusher, and every record read back at recovery)."""
    return _crc32.crc32(payload, _crc32.crc32(_CHECKED.pack(seq, len(payload))))


@dataclass(frozen=True)
class Record:
    """Where one record's payload lies."""

    seq: int
    path: Path
    offset: int  # of the payload
    length: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)


@dataclass
class Scan:
    """What one segment holds: its readable records, and what could not be read."""

    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage to acknowledged data
    torn_tail: int | None = None  # offset of a record cut short at the end (seq in torn_seq)
    torn_seq: int | None = None


def segments(directory: Path, suffix: str) -> list[Path]:
    """Segment files in sequence order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix) and p.name[:-len(suffix)].isdigit())


def scan(path: Path) -> Scan:
    """Every record of one segment whose checksum matches; damage is listed in ``problems``."""
    result = Scan(path)
    raw = path.read_bytes()
    data = memoryview(raw)
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            result.torn_tail = pos
            break
        magic, seq, length, crc = _HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            nxt = raw.find(MAGIC, pos + 1)
            result.problems.append(f"{(nxt if nxt >= 0 else len(data)) - pos} bytes at offset {pos} are not a record")
            if nxt < 0:
                break
            pos = nxt
            continue
        start = pos + _HEADER.size
        if start + length > len(data):
            if _crc(seq, data[start:start + length]) != crc and raw.find(MAGIC, pos + 1) >= 0:
                # A bad length in an otherwise whole segment: damage, not a torn end.
                result.problems.append(f"record at offset {pos} has a length ({length}) past the segment's end")
                pos = raw.find(MAGIC, pos + 1)
                continue
            result.torn_tail, result.torn_seq = pos, seq
            break
        if _crc(seq, data[start:start + length]) != crc:
            result.problems.append(f"record seq {seq} at offset {pos} ({length} bytes) fails its checksum")
            nxt = raw.find(MAGIC, pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        result.records.append(Record(seq, path, start, length))
        pos = start + length
    return result


def scan_all(directory: Path, suffix: str, contiguous: bool = True) -> list[Scan]:
    """Every segment, with a torn end of any but the last one judged: benign only when the next
    segment starts with the same seq (a failed write, cut off and written again).  ``contiguous``:
    the owner deletes segments oldest first only, so a gap in the sequence is lost records."""
    scans = [scan(p) for p in segments(directory, suffix)]
    previous_seq: int | None = None
    for i, s in enumerate(scans):
        if s.torn_tail is not None and i + 1 < len(scans):
            following = scans[i + 1].records
            if not (s.torn_seq is not None and following and following[0].seq == s.torn_seq):
                s.problems.append(f"cut short at offset {s.torn_tail} (seq {s.torn_seq}), and it is not the last "
                                  "segment: its end was lost after it was written")
        explained = bool(s.problems) or (i > 0 and bool(scans[i - 1].problems))  # damage already reported
        for rec in s.records:
            if contiguous and not explained and previous_seq is not None and rec.seq > previous_seq + 1:
                s.problems.append(f"records seq {previous_seq + 1}..{rec.seq - 1} are missing before offset "
                                  f"{rec.offset - _HEADER.size}")
            previous_seq = rec.seq if previous_seq is None else max(previous_seq, rec.seq)
    return scans


def quarantine(path: Path, why: Iterable[str]) -> Path:
    """Copy a damaged segment to ``quarantine/`` with a note saying why: it is never deleted there.
    (A copy: the owner still loads the readable records from the original, which it deletes as
    usual once they are stored.)"""
    target_dir = path.parent / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    shutil.copy2(path, target)
    target.with_name(target.name + ".why").write_text("\n".join(why) + "\n")
    fsync_dir(target_dir)
    return target


class SegmentWriter:
    """Appends records to the newest segment; a new segment after ``segment_bytes`` or a failed write.
    Not thread-safe: each owner calls it under its own lock."""

    def __init__(self, directory: str | os.PathLike, suffix: str, segment_bytes: int = 64 << 20,
                 fsync: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.suffix, self.segment_bytes, self.fsync = suffix, segment_bytes, fsync
        self.path: Path | None = None  # the segment being written
        self._file: BinaryIO | None = None

    def append(self, seq: int, payload: bytes | pa.Buffer) -> Record:
        """Write one record and make it durable; on an error nothing of it stays and it raises."""
        if self._file is None or self._file.tell() >= self.segment_bytes:
            self._rotate(seq)
        assert self._file is not None and self.path is not None
        offset = self._file.tell()
        try:
            self._file.write(_HEADER.pack(MAGIC, seq, len(payload), _crc(seq, payload)))
            self._file.write(payload)
            self._file.flush()
            if self.fsync:
                os.fdatasync(self._file.fileno())
        except OSError:
            self._abandon(offset)
            raise
        return Record(seq, self.path, offset + _HEADER.size, len(payload))

    def _rotate(self, first_seq: int) -> None:
        self.close()
        self.path = self.directory / f"{first_seq:020d}{self.suffix}"
        self._file = open(self.path, "ab")
        if self.fsync:
            fsync_dir(self.directory)  # the new file's name is durable too

    def _abandon(self, offset: int) -> None:
        # Disk full or an I/O error: cut the record off (best effort: a torn end left behind is told
        # apart at reading by the same seq starting the next segment) and never write after it.
        try:
            assert self._file is not None
            os.ftruncate(self._file.fileno(), offset)
            self._file.close()
        except (OSError, ValueError):
            pass
        self._file = None
        self.path = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self.path = None


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
