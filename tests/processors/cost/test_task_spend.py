"""Task budgets charged from each trace's spend so far (the store's ``trace_rollups``): an account only for
a task that reaches a budget's first step, and exactly the events, decisions and accounts (of those
tasks) of a ledger that charges every task from its first cent."""

from __future__ import annotations

from collections import defaultdict

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.storage.rollups import REPLAY_KEY, TRACE_ROLLUPS_DDL
from agent_sre.processors.cost.budget import BudgetLedger, reaches_first_step
from agent_sre.processors.cost.factory import BudgetConfig
from tests.pipeline.test_attribution import batch, open_store, span

SPECS = [BudgetConfig(name="per-task", scope="task", limit_usd=2).spec(),
         BudgetConfig(name="strict", scope="task", limit_usd=1, alert_steps=[0.8], throttle_at=0.9,
                      kill_at=1.0).spec(),
         BudgetConfig(name="agent-daily", scope="agent_day", limit_usd=10).spec()]

commit = st.lists(st.tuples(st.sampled_from(["a1", "a2"]), st.sampled_from(["t1", "t2", "t3", "t4"]),
                            st.floats(0.001, 0.9, allow_nan=False), st.integers(1, 4)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(commit, st.integers(0, 600)), max_size=25))
def test_task_spend_announces_what_charging_every_task_announces(commits):
    from_store, reference = BudgetLedger(SPECS), BudgetLedger(SPECS)
    spent: dict[str, list] = defaultdict(lambda: [0.0, 0])  # the store's trace_rollups: the trace's spend
    now = 1_796_200_000.0
    for rows, advance in commits:
        now += advance
        charges = []
        for agent, task, usd, calls in rows:
            so_far = spent[task]
            so_far[0] += usd
            so_far[1] += calls
            charges.append((agent, task, usd, calls, so_far[0], so_far[1]))
        assert from_store.charge_tasks(charges, now) == reference.charge_tasks([c[:4] for c in charges], now)
        for agent in ("a1", "a2"):
            for task in ("t1", "t2", "t3", "t4", None):
                assert from_store.assess(agent, now, task) == reference.assess(agent, now, task)
        assert from_store.limited_tasks(now) == reference.limited_tasks(now)
        specs = {s.name: s for s in SPECS}
        kept = [a for a in reference.accounts(now) if reaches_first_step(specs[a["budget"]], a["spent_usd"])]
        assert from_store.accounts(now) == kept


def test_a_task_under_the_first_step_has_no_account_and_opens_one_with_all_its_spend():
    ledger = BudgetLedger(SPECS[:1])  # $2, first step 50 %
    now = 1_796_200_000.0
    assert ledger.charge_tasks([("a1", "t1", 0.6, 1, 0.6, 1)], now) == []
    assert ledger.accounts(now) == [] and ledger.assess("a1", now, "t1").action == "allow"
    assert ledger.known_agents() == {"a1"}  # the agent is known while it spends
    (alert,) = ledger.charge_tasks([("a1", "t1", 0.5, 2, 1.1, 3)], now)  # 55 %: the 50 % step, with all 1.10
    assert (alert.kind, alert.subject, round(alert.utilisation, 6)) == ("alert", "t1", 0.55)
    (account,) = ledger.accounts(now)
    assert (account["spent_usd"], account["calls"], account["agent_id"]) == (1.1, 3, "a1")
    # From there on, what each commit adds (the trace's total may have restarted: the store forgets a
    # finished task's rollup a minute after its end).
    events = ledger.charge_tasks([("a1", "t1", 0.8, 1, 0.8, 1)], now)  # 1.90 = 95 %: throttle, then kill
    assert round(ledger.spent("per-task", "t1", now), 9) == 1.9
    assert [e.detail for e in events] == ["0.75", "0.85", "0.9", "0.95", "kill"]  # steps crossed, then the decision
    assert (events[-1].kind, events[-1].subject) == ("decision", "a1")
    assert ledger.assess("a1", now, "t1").action == "kill"


T1, T2, T3 = "0af7651916cd43dd8448eb211c80319c", "1bf7651916cd43dd8448eb211c80319d", "2cf7651916cd43dd8448eb211c80319e"


def test_the_store_hands_on_each_charged_traces_spend_so_far_across_inserts_and_a_restart(tmp_path):
    store = open_store(tmp_path)
    seen: list[list[tuple]] = []
    store.on_task_spend(seen.append)
    # A sub-agent's LLM call first: the task's agent is not known yet, so the trace's is that of its spend.
    store.append(batch(span("00000000000000b1", "00000000000000a1", "llm", trace=T1, agent_id="worker",
                            model="gpt-4o", cost_usd=0.5)))
    assert seen[-1] == [("worker", T1, 0.5, 1, 0.5, 1)]
    store.append(batch(
        span("00000000000000a1", None, "agent_task", trace=T1, agent_id="triage"),
        span("00000000000000b2", "00000000000000a1", "llm", trace=T1, agent_id="worker", model="gpt-4o",
             cost_usd=0.25),
        span("00000000000000b3", "00000000000000a1", "tool", trace=T1, agent_id="worker"),
        span("00000000000000c1", None, "agent_task", trace=T2, agent_id="triage"),  # nothing priced: not charged
        span("00000000000000d1", None, "llm", trace=T3, agent_id="triage", model="gpt-4o", cost_usd=9.0,
             attributes=[{"key": REPLAY_KEY, "value": T1}]),  # a replay's re-run: not counted
    ))
    assert seen[-1] == [("triage", T1, 0.25, 1, 0.75, 2)]  # the task's agent once its agent_task span is in
    store.close()

    store = open_store(tmp_path)
    store.on_task_spend(seen.append)
    store.append(batch(span("00000000000000b4", "00000000000000a1", "llm", trace=T1, agent_id="worker",
                            model="gpt-4o", cost_usd=0.125)))
    assert seen[-1] == [("triage", T1, 0.125, 1, 0.875, 3)]
    store.close()


def test_a_store_from_before_the_integer_key_keeps_its_traces_in_progress(tmp_path):
    store = open_store(tmp_path)
    seen: list[list[tuple]] = []
    store.on_task_spend(seen.append)
    store.append(batch(span("00000000000000b1", None, "llm", trace=T1, agent_id="worker", model="gpt-4o",
                            cost_usd=0.5)))
    store.close()
    # The rollup as stores before the integer key had it: the trace id as its hex string.
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    con.execute("CREATE TABLE old AS SELECT * REPLACE (lower(lpad(hex(trace_id), 32, '0')) AS trace_id) "
                "FROM trace_rollups")
    con.execute("DROP TABLE trace_rollups")
    con.execute(TRACE_ROLLUPS_DDL.replace("trace_id UHUGEINT", "trace_id VARCHAR"))
    con.execute("INSERT INTO trace_rollups SELECT * FROM old")
    con.execute("DROP TABLE old")
    assert con.execute("SELECT trace_id FROM trace_rollups").fetchall() == [(T1,)]
    con.close()

    store = open_store(tmp_path)
    store.on_task_spend(seen.append)
    store.append(batch(span("00000000000000b2", None, "llm", trace=T1, agent_id="worker", model="gpt-4o",
                            cost_usd=0.25)))
    assert seen[-1] == [("worker", T1, 0.25, 1, 0.75, 2)]  # the spend before the upgrade is still the trace's
    assert store.read("SELECT data_type FROM information_schema.columns WHERE table_name = 'trace_rollups' "
                      "AND column_name = 'trace_id'") == [("UHUGEINT",)]
    store.close()
