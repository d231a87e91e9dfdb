"""The SRE math against hand-computed cases, and its properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.processors.slo.budget import EventWindows, MinuteSeries, WindowCounts, burn_rate, error_budget

# (target, total, bad) -> (allowed bad, burn rate, budget remaining as reported, exhausted)
HAND_COMPUTED = [
    (0.999, 1000, 1, 1.0, 1.0, 0.0, True),  # the example: 0.1% bad at 99.9% is burn 1.0
    (0.999, 10_000, 5, 10.0, 0.5, 0.5, False),
    (0.999, 10_000, 0, 10.0, 0.0, 1.0, False),
    (0.99, 200, 1, 2.0, 0.5, 0.5, False),
    (0.99, 200, 4, 2.0, 2.0, 0.0, True),  # overspent: 1 - 4/2 = -1, reported as 0
    (0.95, 100, 5, 5.0, 1.0, 0.0, True),
    (0.9, 50, 1, 5.0, 0.2, 0.8, False),
    (0.999, 0, 0, 0.0, 0.0, 1.0, False),  # no events: nothing burnt
]


@pytest.mark.parametrize("target,total,bad,allowed,burn,remaining,exhausted", HAND_COMPUTED)
def test_budget_and_burn_match_hand_computed_values(target, total, bad, allowed, burn, remaining, exhausted):
    b = error_budget(total - bad, total, target)
    assert b.allowed_bad == pytest.approx(allowed)
    assert b.burn_rate == pytest.approx(burn)
    assert b.remaining == pytest.approx(remaining)
    assert b.exhausted is exhausted


def test_windows_sum_whole_minutes_before_the_evaluation_minute():
    # minute:        0   1   2   3   4   5
    # total:        10  10  10  10  10  10
    # bad:           0   1   0   2   0   9   (minute 5 is still open at t=5)
    s = MinuteSeries(0, good=[10, 9, 10, 8, 10, 1], total=[10] * 6)
    assert [int(x) for x in s.window(5, 5)] == [47, 50]  # minutes 0..4: 3 bad of 50
    assert [int(x) for x in s.window(5, 2)] == [18, 20]  # minutes 3..4
    assert [int(x) for x in s.window(2, 60)] == [19, 20]  # a window reaching before the data
    # burn at 99%: minutes 0..4 -> 3/50 = 6% bad -> 6.0; minutes 3..4 -> 10% -> 10.0
    assert float(s.burn_rates(5, 5, 0.99)) == pytest.approx(6.0)
    assert s.burn_rates(np.array([4, 5, 6]), 2, 0.99).tolist() == pytest.approx([10.0, 10.0, 45.0])
    b = s.budget(5, 5, 0.99)
    assert (b.total, b.bad, b.allowed_bad) == (50, 3, pytest.approx(0.5))
    assert b.remaining == 0.0 and b.exhausted


def test_sparse_rollup_rows_become_a_series():
    s = MinuteSeries.from_minutes([100, 103, 103], good=[5, 1, 2], total=[5, 4, 2])
    assert s.start_minute == 100
    assert s.total.tolist() == [5, 0, 0, 6] and s.good.tolist() == [5, 0, 0, 3]


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="target must be between 0 and 1"):
        burn_rate(1, 10, 1.0)
    with pytest.raises(ValueError, match="good <= total"):
        error_budget(11, 10, 0.99)
    with pytest.raises(ValueError, match="0 <= good <= total in every minute"):
        MinuteSeries(0, good=[2], total=[1])


TARGETS = st.sampled_from([0.9, 0.95, 0.99, 0.995, 0.999, 0.9999])


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 10**9), frac=st.floats(0, 1), k=st.integers(1, 50), target=TARGETS)
def test_burn_rate_scales_linearly_with_the_bad_fraction(total, frac, k, target):
    bad = frac * total / k
    assert burn_rate(k * bad, total, target) == pytest.approx(k * burn_rate(bad, total, target), rel=1e-9)
    assert burn_rate(bad, total, target) == pytest.approx((bad / total) / (1 - target), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 10**7), data=st.data(), target=TARGETS)
def test_reported_budget_is_never_negative_nor_above_one(total, data, target):
    good = data.draw(st.integers(0, total))
    b = error_budget(good, total, target)
    assert 0.0 <= b.remaining <= 1.0
    assert b.exhausted == (total > 0 and b.remaining_raw <= 1e-9)
    if b.allowed_bad > 0:
        assert b.remaining_raw == pytest.approx(1 - b.bad / b.allowed_bad)


minute_counts = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(
    lambda gt: (min(gt), max(gt))), min_size=1, max_size=400)


@settings(max_examples=100, deadline=None)
@given(rows=minute_counts, at=st.integers(0, 450))
def test_windows_nest_and_add_up(rows, at):
    s = MinuteSeries(0, good=[g for g, _ in rows], total=[t for _, t in rows])
    sums = {m: s.window(at, m) for m in (5, 30, 60, 360)}
    for short, long in ((5, 30), (30, 60), (60, 360)):
        assert sums[short][0] <= sums[long][0] and sums[short][1] <= sums[long][1]
    # a window is the plain sum of its minutes
    lo, hi = max(0, at - 30), min(len(rows), at)
    assert int(sums[30][1]) == sum(t for _, t in rows[lo:hi])
    assert int(sums[30][0]) == sum(g for g, _ in rows[lo:hi])
    assert not math.isnan(float(s.burn_rates(at, 60, 0.99)))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.sampled_from([0.9, 0.99, 0.995, 0.999, 0.9999]))
def test_a_window_counts_scalar_burn_rate_is_the_vectorised_one(good, extra_bad, target):
    counts = WindowCounts(100, {60: (good, good + extra_bad), 5: (0, 0)})
    for minutes in (60, 5):
        scalar = counts.burn_rates(100, minutes, target)
        assert isinstance(scalar, float)
        assert scalar == float(EventWindows.burn_rates(counts, 100, minutes, target))
    assert counts.burn_rates(100, 5, target) == 0.0  # no events: nothing burnt
    with pytest.raises(ValueError, match="ending at minute 100"):
        counts.burn_rates(101, 60, target)


def test_a_window_counts_burn_rate_by_hand():
    # 99.9 %: 1 bad in 500 is 0.2 % bad, twice the allowed 0.1 %.
    assert WindowCounts(7, {60: (499, 500)}).burn_rates(7, 60, 0.999) == pytest.approx(2.0, abs=1e-12)
