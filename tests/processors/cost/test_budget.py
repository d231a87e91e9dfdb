"""The budget ledger: alerts at utilisation steps, throttle at 85 %, kill at 95 %, reset by the clock,
kept across a restart, and atomic under concurrent charges."""

from __future__ import annotations

import threading

import pytest

from agent_sre.processors.cost.budget import BudgetLedger, BudgetSpec, readable_rate, utc

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
                    ("alert", "0.85"), ("decision", "throttle"), ("action", "throttle"),  # 8.5 = 85 %
                    ("alert", "0.9"), ("action", "throttle"),
                    ("alert", "0.95"), ("decision", "kill"), ("action", "kill")]  # 9.6 >= 95 %: events there too
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
    assert 9.5 - 1e-6 <= spent <= 9.5 + charge + 1e-9


def test_task_budgets_are_per_task_and_bad_specs_are_refused():
    ledger = BudgetLedger([BudgetSpec("per-task", "task", 1.0)])
    ledger.try_charge("a1", 0.99, NOON, task="t1")
    assert ledger.decision("a1", NOON, task="t1")[0] == "kill"
    assert ledger.decision("a1", NOON, task="t2")[0] == "allow"
    with pytest.raises(ValueError, match="scope must be"):
        BudgetSpec("x", "agent_week", 1.0)
    with pytest.raises(ValueError, match="throttle_at <= kill_at"):
        BudgetSpec("x", "agent_day", 1.0, throttle_at=0.99, kill_at=0.9)


def test_a_throttle_suggests_the_rate_that_reaches_the_kill_point_at_the_reset():
    ledger = BudgetLedger([DAY])
    ledger.charge("a1", 8.6, NOON, calls=43)  # 86 %: throttled; 0.20 USD per call on average
    d = ledger.assess("a1", NOON)
    # 9.50 - 8.60 = 0.90 USD left before the kill point = 4.5 calls, over the 720 minutes to midnight:
    # 0.00625 a minute, given to two significant digits, and as a person reads it (one every 160 min)
    assert (d.action, d.budget, d.suggested_rate_per_min) == ("throttle", "agent-daily", 0.0063)
    assert readable_rate(4.5 / 720) == "1 call every 2.7 h"
    assert ledger.assess("a1", NOON).until == utc(2026, 11, 26)


def test_model_and_tenant_budgets_bind_the_agents_that_spent_from_them():
    ledger = BudgetLedger([BudgetSpec("gpt4o", "model_day", 5.0), BudgetSpec("acme", "tenant_month", 100.0)])
    ledger.charge("a1", 4.5, NOON, model="gpt-4o", tenant="acme")  # 90 % of the model's day
    ledger.charge("a2", 0.2, NOON, model="gpt-4o-mini", tenant="acme")
    assert ledger.decision("a1", NOON) == ("throttle", "budget gpt4o (model_day) for model gpt-4o at 90% of $5",
                                           utc(2026, 11, 26))
    assert ledger.decision("a2", NOON)[0] == "allow"  # a different model
    ledger.charge("a2", 0.5, NOON, model="gpt-4o")  # now a2 spends from gpt-4o too: 100 %
    assert ledger.decision("a2", NOON)[0] == "kill" and ledger.decision("a1", NOON)[0] == "kill"
    assert ledger.spent("acme", "acme", NOON) == pytest.approx(4.7)
    assert ledger.decision("a1", utc(2026, 11, 26, 0, 0, 1))[0] == "allow"  # the model's day reset


def test_expire_reports_the_periods_that_ended_after_alerting_and_forgets_them():
    ledger = BudgetLedger([DAY, BudgetSpec("t", "task", 1.0)])
    late = utc(2026, 11, 25, 23, 30)
    ledger.charge("a1", 6.0, late, task="t1")  # 60 % of the day: alerted at 50 %; 6x the task budget
    ledger.charge("a2", 1.0, late)  # 10 %: never alerted
    assert ledger.expire(late + 60) == []  # nothing ended yet
    ended = ledger.expire(utc(2026, 11, 26, 0, 0, 1))
    assert [(e.kind, e.budget, e.subject, e.detail) for e in ended] == [("reset", "agent-daily", "a1", "2026-11-25")]
    assert ledger.accounts(utc(2026, 11, 26, 0, 0, 1)) == [
        {"budget": "t", "scope": "task", "subject": "t1", "period": "task", "spent_usd": 6.0, "limit_usd": 1.0,
         "utilisation": 6.0, "calls": 1, "resets_at": None, "agent_id": "a1"}]  # outlives the day, until idle an hour
    assert [(e.budget, e.subject, e.agent) for e in ledger.expire(late + 3600)] == [("t", "t1", "a1")]
    assert ledger.accounts(late + 3600) == []


def test_beyond_max_task_accounts_the_least_recently_charged_tasks_are_forgotten_first():
    """Memory is bounded by running tasks, not by an hour of them: at 300 tasks a second an hour of task
    accounts was ~0.8 GB.  The oldest go first; a forgotten task that had alerted resets its alert."""
    ledger = BudgetLedger([BudgetSpec("t", "task", 1.0)])
    ledger.max_task_accounts = 3
    t0 = utc(2026, 12, 3, 4, 0)
    ledger.charge("a1", 0.6, t0, task="old-alerted")  # 60 %: alerted at 50 %
    for i in range(4):
        ledger.charge("a2", 0.1, t0 + 1 + i, task=f"t{i}")
    ledger.charge("a1", 0.1, t0 + 10, task="t0")  # charged again: now the most recent
    events = ledger.expire(t0 + 11)
    assert [(e.kind, e.subject) for e in events] == [("reset", "old-alerted")]
    assert sorted(a["subject"] for a in ledger.accounts(t0 + 11)) == ["t0", "t2", "t3"]  # t1 and the oldest gone
    assert ledger.evicted_tasks == 2
    assert ledger.expire(t0 + 12) == [] and ledger.evicted_tasks == 2  # at the bound: nothing more


def test_expire_looks_only_at_what_may_be_due_and_still_ends_a_period_opened_after_its_last_walk(monkeypatch):
    """The decisions board calls expire every second: it looks at task accounts from the least recently
    charged up to the first that stays, and walks the period accounts only once a period may have ended
    -- yet a day account opened after a walk (its end before anything the walk knew) still ends, and
    resets its alert, on time; and a task idle for an hour is forgotten."""
    ledger = BudgetLedger([DAY, BudgetSpec("t", "task", 1.0)])
    t = utc(2026, 12, 2, 22, 30)
    ledger.charge("a1", 0.1, t, task="t1")
    ledger.charge_tasks([("a1", f"t{i}", 0.01, 1) for i in range(2, 1000)], t + 600)
    assert ledger.expire(t + 601) == []  # a walk: the next due is a1's day (00:00)
    visited = []

    class Counting(dict):
        def items(self):
            for item in dict.items(self):
                visited.append(item[0])
                yield item

    monkeypatch.setattr(ledger, "_accounts", Counting(ledger._accounts))
    assert ledger.expire(t + 602) == [] and len(visited) <= 2  # a1's day account, then t1: it stays
    ledger.charge("a2", 6.0, t + 1800)  # a2's day account (ends at midnight), alerted at 50 %
    visited.clear()
    assert ledger.expire(t + 3599) == [] and len(visited) <= 2
    assert {a["subject"] for a in ledger.accounts(t + 3599)} >= {"t1", "t999"}
    midnight = utc(2026, 12, 3, 0, 0, 1)  # t1 idle for an hour and a half, the others for 80 minutes
    assert [(e.kind, e.subject) for e in ledger.expire(midnight)] == [("reset", "a2")]
    assert ledger.accounts(midnight) == [] and ledger.evicted_tasks == 0 and ledger.known_agents() == {"a1", "a2"}


def test_a_task_account_is_small():
    """~0.2 KiB of Python memory per running task (was ~0.8 KiB: an instance dict, a set, and this
    pipeline's own-spend entries a lone pipeline never reads), the task ids not counted."""
    import tracemalloc

    ledger = BudgetLedger([BudgetSpec("t", "task", 2.0)])
    charges = [(f"agent-{i % 10}", f"{i:032x}", 0.01, 1) for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        ledger.charge_tasks(charges, 1000.0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_task = sum(d.size_diff for d in after.compare_to(before, "filename")) / len(charges)
    assert per_task < 320, per_task


def test_asking_creates_no_accounts_and_spend_of_another_period_is_not_charged_to_this_one():
    ledger = BudgetLedger([DAY, BudgetSpec("t", "task", 1.0)])
    for i in range(100):
        assert ledger.decision(f"agent-{i}", NOON, task=f"task-{i}")[0] == "allow"
    assert ledger.accounts(NOON) == []  # decisions are read, never written
    yesterday = utc(2026, 11, 24, 23, 0)
    ledger.charge("a1", 9.9, NOON, at=yesterday)  # a late span from yesterday: not today's spend
    assert ledger.spent("agent-daily", "a1", NOON) == 0.0 and ledger.decision("a1", NOON)[0] == "allow"
    ledger.charge("a1", 9.9, NOON, task="t1", at=yesterday)  # a task has no calendar: charged
    assert ledger.spent("t", "t1", NOON) == pytest.approx(9.9)
    ledger.charge("a1", 1.0, NOON, at=NOON - 60)
    assert ledger.spent("agent-daily", "a1", NOON) == pytest.approx(1.0)


@pytest.mark.parametrize(("per_min", "text"), [
    (120.4, "120 calls/min"), (2.5, "2.5 calls/min"), (1.0, "1 call/min"), (0.5, "1 call every 2 min"),
    (1.5, "1.5 calls/min"), (6.1e-05, "1 call every 11 d"), (2.0 / 3, "1 call every 1.5 min"),
    (3.0, "3 calls/min"), (4.0 / 1, "4 calls/min"), (90.0, "90 calls/min"), (0.0, "no more calls this period")])
def test_a_suggested_rate_reads_as_calls_per_minute_or_one_call_every_interval(per_min, text):
    assert readable_rate(per_min) == text
