"""The tests a rollout step is judged by, all one-sided ("is the candidate worse?"), and the shadow's
output similarity.  Plain functions over counts and sums (the SQL in analysis.py computes those).

    success rate, hallucination rate   pooled two-proportion z-test
    latency                            Mann-Whitney U (normal approximation, tie and continuity corrected)
    cost per task                      Welch's z (unequal variances; normal approximation, so it wants
                                       the sample sizes ``min_samples`` asks for: 30 or more)

Each returns ``{"test", "statistic", "p_value"}`` where p is the one-sided p-value of the candidate
being worse; p = 1.0 when the samples cannot differ (no variance).  The normal tail is
``erfc(z / sqrt 2) / 2``: no scipy needed.

Similarity (shadow) is difflib's ratio over word tokens: 2*M / T, T the tokens of both texts, M the
tokens in the matching blocks ``SequenceMatcher`` finds (no junk heuristic); tokens are runs of word
characters and single punctuation marks, whitespace ignored.  1.0 identical, 0.0 nothing in common.
It is the measure ``agent-sre diff`` reports (processors/replay/diff.py), rewritten here because one
component may not import another's code.
"""

from __future__ import annotations

import difflib
import math
import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def proportion_higher(hits_b: int, n_b: int, hits_c: int, n_c: int) -> dict:
    """Pooled two-proportion z-test of H1: the candidate's rate (hits_c / n_c) is above the baseline's."""
    p_b, p_c = hits_b / n_b, hits_c / n_c
    pooled = (hits_b + hits_c) / (n_b + n_c)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_b + 1 / n_c))
    z = (p_c - p_b) / se if se else 0.0
    return {"test": "two-proportion z (one-sided)", "statistic": round(z, 6),
            "p_value": upper_tail(z) if se else 1.0}


def proportion_lower(hits_b: int, n_b: int, hits_c: int, n_c: int) -> dict:
    """H1: the candidate's rate is below the baseline's (a success rate that dropped)."""
    return proportion_higher(n_b - hits_b, n_b, n_c - hits_c, n_c)  # fewer hits = more misses


def mann_whitney_greater(rank_sum_c: float, n_b: int, n_c: int, ties: float) -> dict:
    """Mann-Whitney U of H1: the candidate's values tend to be larger.  ``rank_sum_c``: the candidate's
    rank sum in the pooled sample (average ranks for ties); ``ties``: sum of t^3 - t over groups of
    tied values.  U_c = R_c - n_c (n_c + 1) / 2; mean n_b n_c / 2; variance n_b n_c / 12 * ((n + 1) -
    ties / (n (n - 1))); z = (U_c - mean - 0.5) / sd."""
    n = n_b + n_c
    u_c = rank_sum_c - n_c * (n_c + 1) / 2
    mean = n_b * n_c / 2
    var = n_b * n_c / 12 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0))
    if var <= 0:
        return {"test": "Mann-Whitney U (one-sided)", "statistic": 0.0, "p_value": 1.0, "u": u_c}
    z = (u_c - mean - 0.5) / math.sqrt(var)
    return {"test": "Mann-Whitney U (one-sided)", "statistic": round(z, 6), "p_value": upper_tail(z),
            "u": u_c}


def welch_greater(mean_b: float, var_b: float, n_b: int, mean_c: float, var_c: float, n_c: int) -> dict:
    """Welch's z of H1: the candidate's mean is larger.  z = (m_c - m_b) / sqrt(v_b / n_b + v_c / n_c)
    (sample variances).  Without variance the means decide: p = 0 if the candidate's is larger, else 1
    (statistic None)."""
    se = math.sqrt(var_b / n_b + var_c / n_c)
    if se == 0:  # no statistic to show (it would be infinite)
        return {"test": "Welch z (one-sided)", "statistic": None, "p_value": 0.0 if mean_c > mean_b else 1.0}
    z = (mean_c - mean_b) / se
    return {"test": "Welch z (one-sided)", "statistic": round(z, 6), "p_value": upper_tail(z)}


def similarity(a: str | None, b: str | None) -> float:
    """The module docstring's measure; two missing outputs are alike (1.0), one missing is 0.0."""
    if a == b:
        return 1.0
    if a is None or b is None:
        return 0.0
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    if not ta and not tb:
        return 1.0
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()
