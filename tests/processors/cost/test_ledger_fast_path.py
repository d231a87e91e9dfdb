"""The ledger skips assessing an agent around a charge that cannot change its decision (no throttle or
kill line crossed, no new model or tenant budget bound): the events and decisions must be exactly those
of a ledger that always assesses, whatever the sequence of charges, clocks and expiries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.processors.cost.budget import BudgetLedger
from agent_sre.processors.cost.factory import BudgetConfig

SPECS = [BudgetConfig(name="per-task", scope="task", limit_usd=2).spec(),
         BudgetConfig(name="agent-daily", scope="agent_day", limit_usd=10).spec(),
         BudgetConfig(name="org-monthly", scope="org_month", limit_usd=40).spec(),
         BudgetConfig(name="model-day", scope="model_day", limit_usd=6).spec(),
         BudgetConfig(name="tenant-day", scope="tenant_day", limit_usd=8).spec()]


class AlwaysAssessing(BudgetLedger):
    """The reference: every charge is assessed before and after."""

    def _crosses(self, spec, subject, amount, now):
        return True


charge = st.tuples(
    st.sampled_from(["task", "period", "both"]),
    st.sampled_from(["a1", "a2", "a3"]), st.sampled_from(["t1", "t2", "t3", "t4"]),
    st.sampled_from([None, "gpt-4o", "gpt-4o-mini"]), st.sampled_from([None, "acme", "globex"]),
    st.floats(0, 3, allow_nan=False), st.integers(0, 30 * 3600), st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.lists(charge, max_size=60))
def test_the_fast_path_announces_exactly_what_assessing_every_charge_announces(charges):
    fast, reference = BudgetLedger(SPECS), AlwaysAssessing(SPECS)
    now = 1_796_200_000.0
    for only, agent, task, model, tenant, usd, advance, late, expire in charges:
        now += advance
        at = now - 86_400 if late else now
        kw = dict(task=task if only != "period" else None, model=model, tenant=tenant, calls=1, at=at,
                  only=None if only == "both" else only)
        assert fast.charge(agent, usd, now, **kw) == reference.charge(agent, usd, now, **kw)
        for a in ("a1", "a2", "a3"):
            assert fast.assess(a, now, task) == reference.assess(a, now, task)
        if expire:
            assert fast.expire(now) == reference.expire(now)
        _as_walked(fast, now)


task_batch = st.lists(st.tuples(st.sampled_from(["a1", "a2", "a3"]), st.sampled_from(["t1", "t2", "t3", "t4", ""]),
                                st.floats(0, 1.5, allow_nan=False), st.integers(0, 5)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(task_batch, st.sampled_from([None, "gpt-4o"]), st.floats(0, 3, allow_nan=False),
                          st.integers(0, 2 * 3600), st.booleans(), st.booleans()), max_size=20))
def test_a_commits_task_charges_in_one_call_are_those_charged_one_by_one(commits):
    """charge_tasks (the cost processor's path for a commit's thousand tasks) against charge(only="task")."""
    bulk, one_by_one = BudgetLedger(SPECS), AlwaysAssessing(SPECS)
    bulk.max_task_accounts = one_by_one.max_task_accounts = 3  # evictions too
    now = 1_796_200_000.0
    for tasks, model, usd, advance, fleet, expire in commits:
        now += advance
        bulk.fleet_alerts = one_by_one.fleet_alerts = fleet
        # the period budgets of the same commit first, as the cost processor charges them
        assert bulk.charge("a1", usd, now, model=model, only="period") == one_by_one.charge(
            "a1", usd, now, model=model, only="period")
        expected = []
        for agent, task, amount, calls in tasks:
            expected += one_by_one.charge(agent, amount, now, task=task or None, calls=calls, only="task")
        assert bulk.charge_tasks(tasks, now) == expected
        for agent in ("a1", "a2", "a3"):
            for task in ("t1", "t2", None):
                assert bulk.assess(agent, now, task) == one_by_one.assess(agent, now, task)
        assert bulk.accounts(now) == one_by_one.accounts(now)
        assert bulk.contributions(now) == one_by_one.contributions(now)
        assert bulk.known_agents() == one_by_one.known_agents()
        assert bulk.limited_tasks(now) == one_by_one.limited_tasks(now)
        if expire:
            assert bulk.expire(now) == one_by_one.expire(now)
        _as_walked(bulk, now)
        _as_walked(one_by_one, now)


def _as_walked(ledger: BudgetLedger, now: float) -> None:
    """What the ledger keeps aside (limited tasks, agents of running tasks, accounts per task budget, the
    order expire reads) is what a walk of every account finds."""
    specs = {s.name: s for s in ledger.specs}
    tasks = [(k, a) for k, a in ledger._accounts.items() if specs[k[0]].scope == "task"]
    assert sorted(ledger.limited_tasks(now)) == sorted(
        (ledger._task_agents.get(t, ""), t) for (n, t), a in tasks
        if a.spent / specs[n].limit_usd + 1e-9 >= specs[n].throttle_at)
    assert ledger.known_agents() == set(ledger._uses) | set(ledger._task_agents.values())
    assert ledger._task_counts == {n: sum(k[0] == n for k, _ in tasks) for n in ledger._task_counts}
    assert all(ledger._task_counts.get(k[0]) for k, _ in tasks)
    last = [a.last_charge for _, a in tasks]
    assert last == sorted(last)  # least recently charged first
