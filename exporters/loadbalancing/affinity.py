"""Where each routing key went lately, so a trace in progress keeps its gateway while the ring changes.

Consistent hashing moves ~1/N of the keys whenever a backend leaves or returns; a trace in progress at
that moment would be split between two gateways (its trace-level attribution, task SLIs and tail
decisions then computed on halves).  The exporter remembers each key's backend from the key's first
send for at least ``window`` seconds (at most two: two generations of ``window`` each, the older
dropped whole), and routes a remembered key to its backend rather than to the ring's owner:

- a backend that returns gets the new keys of its arcs back, but the traces that started elsewhere
  while it was away stay where they are;
- a backend that goes down holds its traces in progress (the exporter keeps their rows queued for up
  to ``hold``) so that a restart shorter than that splits nothing; after ``hold`` they go to the
  ring's next node, and are remembered there.  A backend that fails again less than ``hold`` after it
  came back continues its outage (``outage_began``): a flapping backend's traces wait ``hold`` in all.

Keys are the ring's 32-bit hashes (a collision only makes two keys share a backend).  Memory: 8 bytes
per key remembered, new keys per second x one to two windows (plus the arrays being merged).  Lookups
and merges are numpy (``searchsorted``, ``unique``), once per batch, never per span.
"""

from __future__ import annotations

import threading

import numpy as np

NONE = -1  # no backend remembered for the key (or not one of the endpoints asked about)


class _Generation:
    """Keys recorded in one window: appended chunks, merged (latest assignment wins) when looked up."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.keys = np.empty(0, np.uint32)
        self.values = np.empty(0, np.int32)

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted keys and their backends.  The chunks since the last call are sorted alone (a batch's
        few new keys) and merged into the sorted arrays by position: O(n) copies, no sort of all n."""
        if self.chunks:
            keys = np.concatenate([k for k, _ in self.chunks])[::-1]  # newest first
            values = np.concatenate([v for _, v in self.chunks])[::-1]
            keys, first = np.unique(keys, return_index=True)  # the first of each key: its newest
            values = values[first]
            self.chunks = []
            if len(self.keys):
                pos = np.searchsorted(self.keys, keys)
                hit = self.keys[np.minimum(pos, len(self.keys) - 1)] == keys
                self.values[pos[hit]] = values[hit]  # a key sent again: its newest backend
                self.keys = np.insert(self.keys, pos[~hit], keys[~hit])
                self.values = np.insert(self.values, pos[~hit], values[~hit])
            else:
                self.keys, self.values = keys, values
        return self.keys, self.values

    def __len__(self) -> int:
        return len(self.keys) + sum(len(k) for k, _ in self.chunks)


class Affinity:
    """Routing-key hash -> the backend it was first sent to, for ``window`` to ``2 * window`` seconds."""

    def __init__(self, window_s: float):
        self.window = window_s
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._current, self._previous = _Generation(), _Generation()
        self._since: float | None = None
        self._lock = threading.Lock()

    def _roll(self, now: float) -> None:
        if self._since is None:
            self._since = now
        elif now - self._since >= 2 * self.window:
            self._current, self._previous, self._since = _Generation(), _Generation(), now
        elif now - self._since >= self.window:
            self._current, self._previous, self._since = _Generation(), self._current, now

    def lookup(self, hashes: np.ndarray, now: float, endpoints: list[str]) -> np.ndarray:
        """Each hash's remembered backend as an index into ``endpoints`` (``NONE``: none, or not there)."""
        found = np.full(len(hashes), NONE, np.int32)
        with self._lock:
            self._roll(now)
            for generation in (self._current, self._previous):
                keys, values = generation.merged()
                if not len(keys):
                    continue
                pos = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
                hit = (keys[pos] == hashes) & (found == NONE)
                found[hit] = values[pos[hit]]
            to_endpoint = np.array([endpoints.index(n) if n in endpoints else NONE for n in self._names] or [NONE],
                                   np.int32)
        out = np.full(len(hashes), NONE, np.int32)
        known = found != NONE
        out[known] = to_endpoint[found[known]]
        return out

    def record(self, hashes: np.ndarray, endpoint: str, now: float) -> None:
        """Remember ``endpoint`` for these hashes (callers pass only keys with no backend remembered, or
        whose remembered backend they just left: the age of an affinity is that of its assignment)."""
        if not len(hashes):
            return
        with self._lock:
            self._roll(now)
            if endpoint not in self._index:
                self._index[endpoint] = len(self._names)
                self._names.append(endpoint)
            keys = np.unique(hashes.astype(np.uint32, copy=False))
            self._current.chunks.append((keys, np.full(len(keys), self._index[endpoint], np.int32)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._current) + len(self._previous)


def outage_began(now: float, last: tuple[float, float] | None, hold: float) -> float:
    """When the outage of a backend marked down ``now`` began: now, or, when it came back less than ``hold``
    ago (``last``: when its previous outage began and when it came back), when that outage began -- so the
    traces held for a flapping backend wait ``hold`` in all, not ``hold`` again at every flap."""
    if last is not None and now - last[1] < hold:
        return last[0]
    return now
