"""Labelled histograms accumulated column-wise from span batches.

``HistogramSet.observe`` takes label columns and a value column for a whole
batch: spans are bucketed with numpy, grouped by (label set, bucket) with Arrow,
each group is given its series' row by the cardinality limit (an Arrow join,
``cardinality.py``) and added in with ``np.add.at``: no Python loop over spans
or groups.  Past ``max_series`` label sets, new ones are folded into the
metric's overflow series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import HistogramMetricFamily

from agent_sre.exporters.prometheus.cardinality import OnOverflow, SeriesLimit, label_table

# OpenTelemetry GenAI metric conventions: explicit bucket boundaries they recommend.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class _Cells:
    """Per series (row): observations per bucket (not cumulative; the last is +Inf) and their sum."""

    def __init__(self, buckets: int):
        self.counts = np.zeros((0, buckets), dtype=np.int64)
        self.sums = np.zeros(0, dtype=np.float64)

    def add(self, rows: np.ndarray, buckets: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> None:
        if rows.size == 0:
            return
        need = int(rows.max()) + 1
        if need > len(self.sums):
            grow = max(need, 2 * len(self.sums)) - len(self.sums)
            self.counts = np.vstack([self.counts, np.zeros((grow, self.counts.shape[1]), dtype=np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros(grow)])
        np.add.at(self.counts, (rows, buckets), counts)
        np.add.at(self.sums, rows, sums)


class HistogramSet:
    def __init__(self, name: str, documentation: str, label_names: Sequence[str], bounds: Sequence[float],
                 max_series: int, kept: Sequence[str] = (), on_overflow: OnOverflow | None = None):
        """``kept``: labels of bounded values that the overflow series keeps (the others read __overflow__)."""
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self.bounds = tuple(bounds)
        self.limit = SeriesLimit(name, label_names, max_series, kept)
        self.on_overflow = on_overflow
        self._own = _Cells(len(self.bounds) + 1)
        self._overflow = _Cells(len(self.bounds) + 1)

    def observe(self, labels: list[pa.Array], values: pa.Array) -> None:
        """One observation per row; rows whose value is null are skipped."""
        valid = pc.is_valid(values)
        if not pc.any(valid).as_py():
            return
        if not pc.all(valid).as_py():
            labels = [pc.filter(a, valid) for a in labels]
            values = pc.filter(values, valid)
        v = values.to_numpy(zero_copy_only=False).astype(np.float64)
        bucket = np.searchsorted(np.asarray(self.bounds, dtype=np.float64), v, side="left")
        table = label_table(self.label_names, labels)
        table = table.append_column("__b", pa.array(bucket, pa.int64())).append_column("__v", pa.array(v))
        # one thread: groups in order of first appearance, so the first label sets seen are the ones kept
        grouped = (table.group_by([*self.label_names, "__b"], use_threads=False)
                   .aggregate([("__v", "count"), ("__v", "sum")]))
        own, over = self.limit.assign(grouped)
        b = grouped.column("__b").to_numpy()
        counts = grouped.column("__v_count").to_numpy()
        sums = grouped.column("__v_sum").to_numpy()
        mine = own >= 0
        self._own.add(own[mine], b[mine], counts[mine], sums[mine])
        if not mine.all():
            self._overflow.add(over[~mine], b[~mine], counts[~mine], sums[~mine])
            if self.on_overflow is not None:
                self.on_overflow(self.name, int(counts[~mine].sum()))

    @property
    def series(self) -> int:
        """Series with their own label set (the overflow series not included)."""
        return len(self.limit.own)

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        edges = [_le(b) for b in (*self.bounds, float("inf"))]
        for labels, cum, total in _rows(self.limit.own.rows(), self._own):
            fam.add_metric([labels[n] for n in self.label_names], list(zip(edges, cum, strict=True)), total)
        for labels, cum, total in _rows(self.limit.overflow_labels(), self._overflow):
            # prometheus_client's add_metric takes the family's label names only; the overflow marker is one more
            for le, c in zip(edges, cum, strict=True):
                fam.add_sample(f"{self.name}_bucket", {**labels, "le": le}, c)
            fam.add_sample(f"{self.name}_count", labels, cum[-1])
            fam.add_sample(f"{self.name}_sum", labels, total)
        return fam


def _rows(labels: list[dict[str, str]], cells: _Cells):
    cum = np.cumsum(cells.counts[:len(labels)], axis=1).tolist()
    return zip(labels, cum, cells.sums[:len(labels)].tolist(), strict=True)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
