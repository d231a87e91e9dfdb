"""Labelled counters and histograms accumulated column-wise from span batches.

``HistogramSet.observe`` takes label columns and a value column for a whole
batch: spans are bucketed with numpy, grouped by label set with Arrow, and only
the (bounded) groups are touched in Python.  Past ``max_series`` label sets new
ones are not created; their spans are counted in ``dropped`` instead of silently
vanishing (the cardinality limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import HistogramMetricFamily

# OpenTelemetry GenAI metric conventions: explicit bucket boundaries they recommend.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


@dataclass
class _Series:
    buckets: np.ndarray  # per bucket (not cumulative), last is +Inf
    total: float = 0.0


@dataclass
class HistogramSet:
    name: str
    documentation: str
    label_names: tuple[str, ...]
    bounds: tuple[float, ...]
    max_series: int
    series: dict[tuple[str, ...], _Series] = field(default_factory=dict)
    dropped: int = 0

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
        cols = {f"l{i}": pc.fill_null(a.cast(pa.string()), "") for i, a in enumerate(labels)}
        table = pa.table({**cols, "b": pa.array(bucket, pa.int32()), "v": pa.array(v)})
        grouped = table.group_by([*cols, "b"]).aggregate([("v", "count"), ("v", "sum")])
        keys = [grouped.column(f"l{i}").to_pylist() for i in range(len(labels))]
        buckets = grouped.column("b").to_pylist()
        counts = grouped.column("v_count").to_pylist()
        sums = grouped.column("v_sum").to_pylist()
        for i, b in enumerate(buckets):  # one iteration per (label set, bucket), not per span
            key = tuple(k[i] for k in keys)
            s = self.series.get(key)
            if s is None:
                if len(self.series) >= self.max_series:
                    self.dropped += counts[i]
                    continue
                s = self.series[key] = _Series(np.zeros(len(self.bounds) + 1, dtype=np.int64))
            s.buckets[b] += counts[i]
            s.total += sums[i]

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        for key, s in self.series.items():
            cum = np.cumsum(s.buckets)
            edges = [*self.bounds, float("inf")]
            fam.add_metric(list(key), [(_le(b), int(c)) for b, c in zip(edges, cum, strict=True)], s.total)
        return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
