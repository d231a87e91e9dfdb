"""The budget ledger: alerts at utilisation steps, throttle at 85 %, kill at 95 %, reset by the clock,
kept across a restart, and atomic under concurrent charges."""

from __future__ import annotations

import threading

import pytest

from agent_sre.processors.cost.budget import BudgetLedger, BudgetSpec, utc

DAY = BudgetSpec("agent-daily", "agent_day", limit_usd=10.0)
NOON = utc(2026, 11, 25, 12, 0)


def test_spend_crossing_steps_alerts_then_throttles_then_kills():
    ledger = BudgetLedger([DAY])
    seen = []
    for amount in (4.0, 1.5, 2.0, 1.0, 0.5, 0.6):  # cumulative 4, 5.5, 7.5, 8.5, 9.0, 9.6
        ok, events = ledger.try_charge("a1", amount, NOON)
        assert ok
        seen += [(e.kind, e.detail) for e in events]
        seen.append(("action", ledger.decision("a1", NOON)[0]))
    assert seen == [("action", "allow"),
                    ("alert", "0.5"), ("action", "allow"),
                    ("alert", "0.75"), ("action", "allow"),
                    ("decision", "throttle"), ("action", "throttle"),  # 8.5 = 85 %
                    ("alert", "0.9"), ("action", "throttle"),
                    ("decision", "kill"), ("action", "kill")]  # 9.6 >= 95 %
    action, reason, until = ledger.decision("a1", NOON)
    assert reason == "budget agent-daily (agent_day) at 96% of $10" and until == utc(2026, 11, 26)
    assert ledger.try_charge("a1", 0.01, NOON) == (False, [])  # refused once killed
    assert ledger.decision("a2", NOON)[0] == "allow"  # per agent


def test_the_next_utc_day_allows_again_and_other_time_zones_reset_at_their_midnight():
    ledger = BudgetLedger([DAY])
    ledger.try_charge("a1", 9.9, NOON)
    assert ledger.decision("a1", utc(2026, 11, 25, 23, 59, 59))[0] == "kill"
    assert ledger.decision("a1", utc(2026, 11, 26, 0, 0, 1))[0] == "allow"
    tokyo = BudgetLedger([BudgetSpec("d", "agent_day", 10.0, tz="Asia/Tokyo")])
    tokyo.try_charge("a1", 9.9, utc(2026, 11, 25, 14, 0))  # 23:00 in Tokyo
    assert tokyo.decision("a1", utc(2026, 11, 25, 15, 30))[0] == "allow"  # 00:30 the next day there


def test_a_restart_mid_day_keeps_the_spend():
    ledger = BudgetLedger([DAY, BudgetSpec("org", "org_month", 1000.0)])
    ledger.try_charge("a1", 8.6, NOON)
    restored = BudgetLedger.from_state([DAY, BudgetSpec("org", "org_month", 1000.0)], ledger.state())
    assert restored.decision("a1", NOON + 3600)[0] == "throttle"
    assert restored.spent("org", "org", NOON) == pytest.approx(8.6)
    ok, events = restored.try_charge("a1", 0.5, NOON + 3600)  # 9.1: the 0.9 step, not the earlier ones again
    assert ok and [(e.kind, e.detail) for e in events] == [("alert", "0.9")]


def test_concurrent_charges_never_overshoot_the_kill_point_by_more_than_one_charge():
    ledger = BudgetLedger([DAY])
    charge = 0.01

    def spend():
        while ledger.try_charge("a1", charge, NOON)[0]:
            pass

    threads = [threading.Thread(target=spend) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = ledger.spent("agent-daily", "a1", NOON)
    assert 9.5 <= spent <= 9.5 + charge + 1e-9


def test_task_budgets_are_per_task_and_bad_specs_are_refused():
    ledger = BudgetLedger([BudgetSpec("per-task", "task", 1.0)])
    ledger.try_charge("a1", 0.99, NOON, task="t1")
    assert ledger.decision("a1", NOON, task="t1")[0] == "kill"
    assert ledger.decision("a1", NOON, task="t2")[0] == "allow"
    with pytest.raises(ValueError, match="scope must be"):
        BudgetSpec("x", "agent_week", 1.0)
    with pytest.raises(ValueError, match="throttle_at <= kill_at"):
        BudgetSpec("x", "agent_day", 1.0, throttle_at=0.99, kill_at=0.9)
