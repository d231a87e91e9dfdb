"""Anomaly detectors over one series (per agent: cost per task, tokens per LLM call, latency or
error rate per minute), vectorised with numpy; clock-free.  The ``anomaly`` processor runs them.

Each point is judged against what came before it (a trailing window, never itself):

- ``zscore``: outside mean ± sensitivity × standard deviation of the last ``window`` points;
- ``iqr``: outside [Q1 − sensitivity × IQR, Q3 + sensitivity × IQR] of the last ``window`` points
  (robust to earlier outliers);
- ``ewma``: outside the exponentially weighted mean ± sensitivity × weighted standard deviation of
  the points before it (``alpha``: the weight of the newest), so it follows slow level changes.

No point is judged before ``min_samples`` points precede it, and none is flagged that lies less
than ``min_delta`` (absolute) or ``min_relative_delta`` (a fraction of the centre) from the expected
centre: a series that was flat (every minute 0 % errors, or the same cost per task) has no spread,
and would otherwise flag its first 1 % change as critical.  An anomaly carries the value, the
expected range, the method, a score (how many allowed spreads away) and a severity
(``warning``; ``critical`` at twice the sensitivity).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

METHODS = ("zscore", "iqr", "ewma")


@dataclass(frozen=True)
class Anomaly:
    index: int
    value: float
    expected_low: float
    expected_high: float
    method: str
    score: float
    severity: str


def _flags(values: np.ndarray, center: np.ndarray, spread: np.ndarray, low: np.ndarray, high: np.ndarray,
           judged: np.ndarray, method: str, sensitivity: float, min_delta: float = 0.0,
           min_relative_delta: float = 0.0) -> list[Anomaly]:
    deviation = np.abs(values - center)
    floor = np.maximum(min_delta, min_relative_delta * np.abs(center))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = deviation / np.where(spread > 0, spread, np.nan) * sensitivity
        outside = judged & ((values < low) | (values > high)) & (deviation >= floor)
    out = []
    for i in np.flatnonzero(outside):  # anomalies are few: one object each
        s = float(score[i]) if np.isfinite(score[i]) else float("inf")
        # Critical: twice the allowed spread, and twice the floor (a flat history has no spread at all).
        critical = s >= 2 * sensitivity and deviation[i] >= 2 * floor[i]
        out.append(Anomaly(int(i), float(values[i]), float(low[i]), float(high[i]), method, s,
                           "critical" if critical else "warning"))
    return out


def _trailing(values: np.ndarray, window: int) -> np.ndarray:
    """Row i: the ``window`` points before i (rows for i < window are padded with NaN)."""
    padded = np.concatenate([np.full(window, np.nan), values])
    return sliding_window_view(padded, window)[:-1]


def zscore(values, window: int = 60, min_samples: int = 20, sensitivity: float = 3.0,
        min_delta: float = 0.0,
        min_relative_delta: float = 0.0) -> list[Anomaly]:
    x = np.asarray(values, dtype=np.float64)
    prev = _trailing(x, window)
    with warnings.catch_warnings():  # the first rows have no history yet (NaN, and not judged)
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(prev, axis=1) if len(x) else np.zeros(0)
        std = np.nanstd(prev, axis=1) if len(x) else np.zeros(0)
    judged = np.arange(len(x)) >= min_samples
    return _flags(x, mean, std * sensitivity, mean - sensitivity * std, mean + sensitivity * std, judged,
                  "zscore", sensitivity, min_delta, min_relative_delta)


def iqr(values, window: int = 60, min_samples: int = 20, sensitivity: float = 2.0,
        min_delta: float = 0.0,
        min_relative_delta: float = 0.0) -> list[Anomaly]:
    x = np.asarray(values, dtype=np.float64)
    prev = _trailing(x, window)
    judged = np.arange(len(x)) >= min_samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q1, q3 = (np.nanpercentile(prev, q, axis=1) if len(x) else np.zeros(0) for q in (25, 75))
    spread = q3 - q1
    low, high = q1 - sensitivity * spread, q3 + sensitivity * spread
    return _flags(x, (q1 + q3) / 2, spread * sensitivity, low, high, judged, "iqr", sensitivity, min_delta,
                  min_relative_delta)


def ewma(values, alpha: float = 0.1, min_samples: int = 20, sensitivity: float = 3.5,
        min_delta: float = 0.0,
        min_relative_delta: float = 0.0) -> list[Anomaly]:
    """Exponentially weighted mean and variance of the points before each point, by convolution with
    the (truncated at machine precision) weights alpha*(1-alpha)^k."""
    x = np.asarray(values, dtype=np.float64)
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    n = len(x)
    k = min(n, int(np.ceil(np.log(1e-16) / np.log(1 - alpha))) + 1)
    weights = alpha * (1 - alpha) ** np.arange(k)
    # mean_before[i] = sum_{j<i} w_{i-1-j} x_j / sum of those weights (renormalised near the start)
    num = np.convolve(x, weights)[:n]
    num2 = np.convolve(x * x, weights)[:n]
    norm = np.convolve(np.ones(n), weights)[:n]
    mean = np.concatenate([[np.nan], num[:-1] / norm[:-1]]) if n else np.zeros(0)
    mean_sq = np.concatenate([[np.nan], num2[:-1] / norm[:-1]]) if n else np.zeros(0)
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0))
    judged = np.arange(n) >= min_samples
    return _flags(x, mean, std * sensitivity, mean - sensitivity * std, mean + sensitivity * std, judged,
                  "ewma", sensitivity, min_delta, min_relative_delta)


DETECTORS = {"zscore": zscore, "iqr": iqr, "ewma": ewma}
