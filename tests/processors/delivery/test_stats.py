"""The one-sided tests a step is judged by, and the shadow's similarity, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.processors.delivery.stats import (
    mann_whitney_greater,
    proportion_higher,
    proportion_lower,
    similarity,
    upper_tail,
    welch_greater,
)


def test_a_success_rate_that_dropped_from_98_to_90_percent_is_significant_at_5_percent():
    # baseline 98/100 succeed, candidate 45/50: failures 2/100 and 5/50, pooled 7/150
    pooled = 7 / 150
    se = math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 50))  # 0.0365331
    z = (5 / 50 - 2 / 100) / se  # 2.18979
    test = proportion_lower(98, 100, 45, 50)
    assert test["statistic"] == pytest.approx(z, abs=1e-6) == pytest.approx(2.18979, abs=1e-5)
    assert test["p_value"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2))) == pytest.approx(0.01427, abs=1e-5)


def test_equal_rates_are_not_worse_and_identical_perfect_samples_cannot_differ():
    assert proportion_lower(90, 100, 45, 50)["p_value"] == pytest.approx(0.5)
    assert proportion_lower(100, 100, 50, 50)["p_value"] == 1.0  # no variance at all
    assert proportion_higher(0, 100, 0, 50)["p_value"] == 1.0


@settings(derandomize=True, max_examples=200)
@given(st.integers(1, 500), st.integers(1, 500), st.data())
def test_the_two_one_sided_p_values_add_up_to_one(n_b, n_c, data):
    hits_b, hits_c = data.draw(st.integers(0, n_b)), data.draw(st.integers(0, n_c))
    up, down = proportion_higher(hits_b, n_b, hits_c, n_c), proportion_higher(hits_c, n_c, hits_b, n_b)
    if up["p_value"] == 1.0 and down["p_value"] == 1.0:  # pooled rate 0 or 1: nothing to test
        assert hits_b / n_b == hits_c / n_c
    else:
        assert up["p_value"] + down["p_value"] == pytest.approx(1.0)
        assert (up["p_value"] < 0.5) == (hits_c / n_c > hits_b / n_b)


def test_mann_whitney_of_a_candidate_slower_than_every_baseline_value():
    # baseline 1, 2, 3 s; candidate 4, 5 s: ranks 1..5, candidate's sum 9, U = 9 - 3 = 6 (the maximum)
    test = mann_whitney_greater(9, 3, 2, 0)
    z = (6 - 3 - 0.5) / math.sqrt(3 * 2 / 12 * 6)  # variance n_b n_c / 12 * (n + 1) = 3
    assert (test["u"], test["statistic"]) == (6, pytest.approx(z, abs=1e-6))
    assert test["p_value"] == pytest.approx(upper_tail(z)) == pytest.approx(0.07446, abs=1e-5)


def test_mann_whitney_corrects_for_ties():
    # baseline 1, 2, 2; candidate 2, 3: the three 2s share rank 3, so the candidate's sum is 3 + 5 = 8, U = 5;
    # one tie group of 3: 27 - 3 = 24; variance 3 * 2 / 12 * (6 - 24 / (5 * 4)) = 2.4
    test = mann_whitney_greater(8, 3, 2, 24)
    assert test["statistic"] == pytest.approx((5 - 3 - 0.5) / math.sqrt(2.4), abs=1e-6)
    assert mann_whitney_greater(3, 1, 1, 6)["p_value"] == 1.0  # all values tied: no variance


def test_welch_z_on_cost_per_task():
    # means 1.0 and 1.5, sample variances 0.5, ten tasks each: se = sqrt(0.05 + 0.05)
    test = welch_greater(1.0, 0.5, 10, 1.5, 0.5, 10)
    assert test["statistic"] == pytest.approx(0.5 / math.sqrt(0.1), abs=1e-6)
    assert test["p_value"] == pytest.approx(0.05692, abs=1e-5)
    assert welch_greater(0.01, 0.0, 5, 0.02, 0.0, 5)["p_value"] == 0.0  # constant costs: the means decide
    assert welch_greater(0.02, 0.0, 5, 0.02, 0.0, 5)["p_value"] == 1.0


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("the refund takes 5 days", "the refund takes 5 days", 1.0),
    ("the refund takes 5 days", "the refund takes 7 days", 0.8),  # 4 of 5 tokens match each way: 8 / 10
    ("Hello, world", "hello world", 0.4),  # tokens Hello , world | hello world: "world" matches: 2 / 5
    ("ok", "I cannot help", 0.0),
    (None, None, 1.0),
    ("answer", None, 0.0),
    ("  ", "\n", 1.0),  # whitespace only: no tokens either side
])
def test_similarity_is_difflibs_ratio_over_word_tokens(a, b, expected):
    assert similarity(a, b) == pytest.approx(expected)
