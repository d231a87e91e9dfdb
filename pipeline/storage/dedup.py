"""Spans the store has already taken: a client's re-send is stored (and counted) once.

OTLP is at-least-once: a client that did not get its OK (the pipeline was killed after the spool
held the request, or the answer was lost) sends the same spans again, with the same trace and span
ids.  The store keeps the identities of the spans it took recently and drops a span it already has
before anything of the insert transaction sees it (rows, rollups, budgets, breakers), so a re-send
to the same pipeline - a sidecar's agent always re-sends to it - is stored and charged once.

What "recently" means is bounded twice, and both are settings: by time (``window``: a re-send later
than that is stored again) and by count (``max_spans``: at a high rate the oldest identities are
forgotten first, so the window is shorter; ``window_s`` in ``stats()`` says how far back it reaches
now).  The identities live in memory as sorted 64-bit keys, in generations of ``window / 4``; after
a restart they are read back from the stored rows received within the window.  The key of a span is
a 64-bit mix of its trace and span ids (a collision - two distinct spans with one key within the
window - drops the second: ~1 in 10^7 with 2M spans remembered); spans without valid ids are never
dropped.  Exporters before the store (in the pipeline's YAML) still see each copy: the ClickHouse
fleet store collapses them itself.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_DIGITS = b"0123456789abcdefABCDEF"
_PAIR = np.full(1 << 16, 0xFFFF, dtype=np.uint16)  # two hex characters (as a little-endian uint16) -> their byte
for _hi in _DIGITS:
    for _lo in _DIGITS:
        _PAIR[_hi | _lo << 8] = int(bytes([_hi, _lo]), 16)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection on 64-bit words
_GENERATIONS = 4


@dataclass(frozen=True)
class DedupSettings:
    """How long (seconds) and how many span identities the store remembers; window 0 turns it off."""

    window: float = 300.0
    max_spans: int = 2_000_000


def _words(col: pa.ChunkedArray | pa.Array, chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Hex ids of ``chars`` characters -> (their bytes as ``chars // 16`` big-endian uint64 words per row,
    which rows had a valid id of that length)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=width)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    valid = np.diff(offsets) == chars
    if arr.null_count:
        valid &= arr.is_valid().to_numpy(zero_copy_only=False)
    if valid.all() and offsets[-1] - offsets[0] == n * chars:
        text = data[offsets[0]:offsets[-1]]  # the usual case: every id valid, back to back
    else:
        text = np.full((n, chars), ord("0"), dtype=np.uint8)
        rows = np.flatnonzero(valid)
        text[rows] = data[offsets[rows][:, None] + np.arange(chars)]
    pairs = _PAIR[np.ascontiguousarray(text).view(np.uint16).reshape(n, chars // 2)]
    valid &= (pairs != 0xFFFF).all(axis=1)
    raw = np.ascontiguousarray(pairs.astype(np.uint8))
    return raw.view(">u8").astype(np.uint64).reshape(n, chars // 16), valid


def span_keys(trace_ids: pa.ChunkedArray | pa.Array, span_ids: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(a 64-bit key per span, whether it has one: valid 32-hex trace and 16-hex span ids)."""
    trace, trace_ok = _words(trace_ids, 32)
    span, span_ok = _words(span_ids, 16)
    with np.errstate(over="ignore"):
        key = ((trace[:, 0] * _MIX) ^ trace[:, 1]) * _MIX ^ span[:, 0]
    return key, trace_ok & span_ok


class RecentSpans:
    """The identities of the spans stored within the window (see the module docstring)."""

    def __init__(self, settings: DedupSettings):
        self.settings = settings
        self._generations: deque[tuple[float, np.ndarray]] = deque()  # (started at, sorted keys), oldest first
        self._lock = threading.Lock()
        self.dropped = 0  # spans dropped as copies of ones already stored, since start

    @property
    def enabled(self) -> bool:
        return self.settings.window > 0 and self.settings.max_spans > 0

    def drop_copies(self, rows: pa.Table) -> tuple[pa.Table, np.ndarray | None]:
        """``rows`` without the spans already taken (and without repeats within them), and the kept rows'
        keys, sorted and distinct, for ``add_sorted`` once they are committed; nothing is computed when
        dedup is off."""
        if not self.enabled:
            return rows, None
        keys, has_key = span_keys(rows.column("trace_id"), rows.column("span_id"))
        keep, remember = self._fresh(keys, has_key)
        if keep.all():
            return rows, remember
        self.dropped += len(keep) - int(keep.sum())
        return rows.filter(pa.array(keep)), remember

    def fresh(self, keys: np.ndarray, has_key: np.ndarray) -> np.ndarray:
        """Which rows to keep: not remembered, and the first of their key within ``keys``."""
        return self._fresh(keys, has_key)[0]

    def _fresh(self, keys: np.ndarray, has_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``fresh``, the keys of the kept rows that have one, sorted and distinct: the batch's sort reused,
        where ``add`` sorted them again: 0.20 -> 0.10 µs per span on the loader, bench/dedup.py)."""
        keep = np.ones(len(keys), dtype=bool)
        if not self.enabled or not len(keys):
            return keep, keys[:0]
        order = np.argsort(keys, kind="stable")  # sorted needles: the searches below walk memory in order
        ordered = keys[order]
        seen = np.zeros(len(keys), dtype=bool)
        seen[1:] = ordered[1:] == ordered[:-1]  # a copy within the batch: the first one (stable sort) stays
        with self._lock:
            for _, known in self._generations:
                if len(known):
                    at = np.searchsorted(known, ordered)
                    seen |= (at < len(known)) & (known[np.minimum(at, len(known) - 1)] == ordered)
        keep[order] = ~seen
        return keep | ~has_key, ordered[~seen & has_key[order]]

    def add(self, keys: np.ndarray, has_key: np.ndarray, now: float) -> None:
        """Remember the keys (those with ``has_key``) of spans just committed."""
        self.add_sorted(np.unique(keys[has_key]), now)

    def add_sorted(self, keys: np.ndarray, now: float) -> None:
        """Remember ``keys`` (sorted, distinct) of spans just committed: merged into the current generation
        (a new one starts every window / 4, or once the current holds a quarter of ``max_spans``)."""
        if not self.enabled:
            return
        if not len(keys):
            return
        span = self.settings.window / _GENERATIONS
        with self._lock:
            if (not self._generations or now - self._generations[-1][0] >= span
                    or len(self._generations[-1][1]) >= self.settings.max_spans // _GENERATIONS):
                self._generations.append((now, keys))
            else:
                started, current = self._generations[-1]
                at = np.searchsorted(current, keys)
                new = ~((at < len(current)) & (current[np.minimum(at, len(current) - 1)] == keys))
                self._generations[-1] = (started, np.insert(current, at[new], keys[new]))  # one copy: O(size)
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Generations older than the window go, then the oldest while over ``max_spans``."""
        while len(self._generations) > 1 and now - self._generations[1][0] >= self.settings.window:
            self._generations.popleft()  # the next one started more than a window ago: all of this one did
        while len(self._generations) > 1 and sum(len(k) for _, k in self._generations) > self.settings.max_spans:
            self._generations.popleft()

    def stats(self, now: float) -> dict:
        with self._lock:
            remembered = sum(len(k) for _, k in self._generations)
            reach = now - self._generations[0][0] if self._generations else 0.0
        return {"remembered_spans": remembered, "window_s": min(reach, self.settings.window),
                "dropped_copies": self.dropped}
