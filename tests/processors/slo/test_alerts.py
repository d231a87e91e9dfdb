"""Multiwindow burn-rate alerts: the Workbook defaults, and a replayed incident with an injected clock."""

from __future__ import annotations

import numpy as np
import pytest

from agent_sre.processors.slo.alerts import DEFAULT_RULES, AlertTracker, BurnRateRule, SloStatus, slo_status
from agent_sre.processors.slo.budget import MinuteSeries

TEN_AM = 10 * 60  # minutes since the start of the replayed day
TARGET = 0.999


def _incident(fail_from: int, fail_until: int, bad_fraction: float, minutes: int = 24 * 60,
              per_minute: int = 100) -> MinuteSeries:
    """per_minute tool calls every minute; from fail_from to fail_until a fraction of them fails."""
    total = np.full(minutes, per_minute, dtype=np.int64)
    bad = np.zeros(minutes, dtype=np.int64)
    bad[fail_from:fail_until] = round(per_minute * bad_fraction)
    return MinuteSeries(0, good=total - bad, total=total)


def test_default_rules_are_the_workbook_table():
    assert [(r.severity, r.factor, r.long_minutes, r.short_minutes) for r in DEFAULT_RULES] == [
        ("page", 14.4, 60, 5), ("page", 6.0, 360, 30), ("ticket", 3.0, 1440, 120), ("ticket", 1.0, 4320, 360)]
    assert DEFAULT_RULES[0].name == "page:14.4x:1h/5m"


def test_page_needs_both_windows():
    rule = BurnRateRule("page", 14.4, 60, 5)
    # 5% bad at 99.9% is burn 50.  After 2 bad minutes the 5m window burns 20 but the hour only 1.67.
    s = _incident(TEN_AM, TEN_AM + 2, 0.05)
    long, short = rule.burns(s, TEN_AM + 2, TARGET)
    assert short == pytest.approx(20.0) and long == pytest.approx(50 * 2 / 60)
    assert not rule.firing(s, TEN_AM + 2, TARGET)


def test_a_tool_failing_at_ten_pages_at_the_expected_minute_and_resolves_after_recovery():
    # 5% of calls fail from 10:00 to 11:00 (burn 50).  Hand-computed:
    #  - the 1h window reaches 14.4 once 18 bad minutes are in it (50 * 18/60 = 15 >= 14.4; 17 gives 14.17),
    #    the 5m window is already at 50: the page fires when evaluated at 10:18;
    #  - after 11:00 the 5m window holds 4, 3, 2, 1 bad minutes (burn 40, 30, 20, 10): it falls below
    #    14.4 at 11:04, and the page resolves then.
    s = _incident(TEN_AM, TEN_AM + 60, 0.05)
    page = DEFAULT_RULES[0]
    tracker = AlertTracker(TARGET, rules=(page,))
    events = [e for minute in range(TEN_AM, TEN_AM + 120) for e in tracker.evaluate(s, minute)]
    assert [(e.state, e.at_minute - TEN_AM) for e in events] == [("firing", 18), ("resolved", 64)]
    assert events[0].long_burn == pytest.approx(15.0) and events[0].short_burn == pytest.approx(50.0)


def test_status_follows_the_firing_rules_and_the_budget():
    month = 30 * 1440
    ten_am_day_30 = 29 * 1440 + TEN_AM  # 29 clean days of history before the incident
    quiet = _incident(0, 0, 0.0, minutes=month)
    assert slo_status(quiet, ten_am_day_30, TARGET, month) is SloStatus.HEALTHY
    burning = _incident(ten_am_day_30, ten_am_day_30 + 60, 0.05, minutes=month)
    assert slo_status(burning, ten_am_day_30 + 30, TARGET, month) is SloStatus.CRITICAL
    # a slow burn: 0.4% bad (burn 4) for the last day fires the tickets (3x over 1d & 2h; 1x over
    # 3d & 6h, where the 3d window burns 4/3) but neither page (6x, 14.4x)
    slow = _incident(month - 1440, month, 0.004, minutes=month, per_minute=1000)
    assert slo_status(slow, month, TARGET, month) is SloStatus.WARNING
    # over a 1-day SLO window that same day overspends its budget (burn 4 > 1)
    assert slo_status(slow, month, TARGET, 1440) is SloStatus.EXHAUSTED
    # and an incident on too little traffic exhausts a 30-day budget that has seen little traffic
    assert slo_status(_incident(TEN_AM, TEN_AM + 60, 0.05), TEN_AM + 30, TARGET, month) is SloStatus.EXHAUSTED


def test_rules_refuse_inverted_windows():
    with pytest.raises(ValueError, match="short window < long window"):
        BurnRateRule("page", 14.4, 5, 60)
