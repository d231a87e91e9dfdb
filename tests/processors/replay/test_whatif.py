"""What-if over stored spans: every expected figure is computed by hand here, from the price table's
per-token prices, the error-budget formula and the budgets' throttle (85 %) and kill (95 %) points."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore, open_read_only
from agent_sre.processors.cost.budget import BudgetSpec
from agent_sre.processors.cost.factory import PriceOverride
from agent_sre.processors.incidents.breaker import BreakerSettings
from agent_sre.processors.replay.whatif import (
    Changes,
    SlowTool,
    WhatIfConfig,
    _slo_report,
    parse_request,
    render_what_if,
    what_if,
)
from agent_sre.processors.sli.factory import SliConfig, builtin_slis
from agent_sre.processors.slo.alerts import AlertTracker
from agent_sre.processors.slo.budget import MinuteSeries
from agent_sre.processors.slo.factory import Objective

S = 10**9
MIN = 60 * S
T0 = 1_736_935_200 * S  # 2025-01-15 10:00:00 UTC, a minute boundary
HOUR = (T0, T0 + 60 * MIN)
SLIS = tuple(builtin_slis(SliConfig()))  # response_latency: good at <= 30 s

# genai-prices, USD per million tokens (input / cached input / output):
#   gpt-4o       2.50 / 1.25  / 10.00
#   gpt-4o-mini  0.15 / 0.075 /  0.60
GPT4O = dict(model="gpt-4o", provider="openai")


def span(trace: str, span_id: str, parent: str | None = None, role: str = "other", start: int = 0,
         dur: int = S, **cols) -> dict:
    row = {"trace_id": trace, "span_id": span_id, "parent_span_id": parent or "", "name": span_id,
           "kind": "internal", "start_ns": T0 + start, "end_ns": T0 + start + dur, "duration_ns": dur,
           "status_code": "unset", "span_role": role, "agent_id": "a1", "service_name": "svc",
           "attributes": [], "resource_attributes": [], "scope_attributes": []}
    row.update(cols)
    return row


@pytest.fixture
def stored(tmp_path):
    """``stored(*rows) -> read``: the rows in a real span store, read back through a read-only connection."""
    opened = []

    def make(*rows: dict):
        path = tmp_path / f"s{len(opened)}.duckdb"
        store = SpanStore(path)
        store.set_sli_rollups(list(SLIS))
        store.append(pa.Table.from_pylist(list(rows), schema=SPAN_SCHEMA))
        store.close()
        con = open_read_only(path)
        opened.append(con)
        return lambda sql, params: con.execute(sql, params).fetchall()

    yield make
    for con in opened:
        con.close()


def config(**kw) -> WhatIfConfig:
    return WhatIfConfig(slis=SLIS, **kw)


# --- re-pricing ---------------------------------------------------------------------------------

LLM_SPANS = [
    span("t1", "root", role="agent_task", dur=20 * S),
    span("t1", "c1", "root", "llm", 1 * S, input_tokens=1000, output_tokens=200, cached_tokens=0,
         cost_usd=0.0045, **GPT4O),
    span("t1", "c2", "root", "llm", 3 * S, input_tokens=2000, output_tokens=400, cached_tokens=500,
         cost_usd=0.008375, **GPT4O),
    span("t2", "root", role="agent_task", start=60 * S, dur=20 * S),
    span("t2", "c3", "root", "llm", 61 * S, input_tokens=10_000, output_tokens=1000, cost_usd=0.035, **GPT4O),
    span("t2", "c4", "root", "llm", 63 * S, input_tokens=100, output_tokens=100, cost_usd=0.01,
         model="claude-3-5-sonnet-latest", provider="anthropic"),
]


def test_repricing_gpt4o_as_gpt4o_mini_costs_the_same_tokens_at_the_mini_price(stored):
    read = stored(*LLM_SPANS)
    doc = what_if(read, *HOUR, Changes(reprice={"gpt-4o": "gpt-4o-mini"}), config())
    # By hand, at gpt-4o-mini's $0.15 (input), $0.075 (cached input), $0.60 (output) per million tokens:
    c1 = 1000 * 0.15e-6 + 200 * 0.60e-6  # = 0.00015 + 0.00012 = 0.00027
    c2 = (2000 - 500) * 0.15e-6 + 500 * 0.075e-6 + 400 * 0.60e-6  # = 0.000225 + 0.0000375 + 0.00024 = 0.0005025
    c3 = 10_000 * 0.15e-6 + 1000 * 0.60e-6  # = 0.0015 + 0.0006 = 0.0021
    assert (c1, c2, c3) == pytest.approx((0.00027, 0.0005025, 0.0021), abs=1e-15)
    recorded_gpt4o = 0.0045 + 0.008375 + 0.035  # what was stored: gpt-4o's prices
    cost = doc["cost"]
    assert cost["actual_usd"] == pytest.approx(recorded_gpt4o + 0.01, abs=1e-12)
    assert cost["what_if_usd"] == pytest.approx(c1 + c2 + c3 + 0.01, abs=1e-12)  # the claude span is untouched
    assert cost["delta_usd"] == pytest.approx(c1 + c2 + c3 - recorded_gpt4o, abs=1e-12)
    assert cost["repriced"] == [{"model": "gpt-4o", "priced_as": "gpt-4o-mini", "spans": 3, "input_tokens": 13_000,
                                 "output_tokens": 1600, "cached_tokens": 500,
                                 "actual_usd": pytest.approx(recorded_gpt4o, abs=1e-12),
                                 "what_if_usd": pytest.approx(c1 + c2 + c3, abs=1e-12)}]
    # The spans count as gpt-4o-mini's now (model budgets charge it).
    by_model = {m["model"]: (m["actual_usd"], m["what_if_usd"]) for m in cost["by_model"]}
    assert by_model["gpt-4o"] == (pytest.approx(recorded_gpt4o, abs=1e-12), 0.0)
    assert by_model["gpt-4o-mini"] == (0.0, pytest.approx(c1 + c2 + c3, abs=1e-12))
    assert by_model["claude-3-5-sonnet-latest"] == (0.01, 0.01)
    # Per task: t1 holds c1 and c2, t2 holds c3 and the claude call.
    tasks = {t["trace_id"]: t for t in doc["tasks"]["most_changed"]}
    assert tasks["t1"]["delta_usd"] == pytest.approx(c1 + c2 - 0.0045 - 0.008375, abs=1e-12)
    assert tasks["t2"]["what_if_usd"] == pytest.approx(c3 + 0.01, abs=1e-12)
    assert tasks["t1"]["delta_latency_ms"] == 0.0  # same tokens, same latency


def test_a_price_table_overrides_the_package_for_its_models(stored):
    read = stored(*LLM_SPANS)
    table = {"gpt-4o": PriceOverride(input_per_mtok=1.0, output_per_mtok=2.0, cached_input_per_mtok=0.5)}
    doc = what_if(read, *HOUR, Changes(prices=table), config())
    # $1 per Mtok input, $0.50 cached, $2 output:
    c1 = 1000 * 1e-6 + 200 * 2e-6  # 0.0014
    c2 = 1500 * 1e-6 + 500 * 0.5e-6 + 400 * 2e-6  # 0.0015 + 0.00025 + 0.0008 = 0.00255
    c3 = 10_000 * 1e-6 + 1000 * 2e-6  # 0.012
    assert doc["cost"]["what_if_usd"] == pytest.approx(c1 + c2 + c3 + 0.01, abs=1e-12)
    assert doc["cost"]["repriced"][0]["priced_as"] == "gpt-4o"


def test_repricing_to_a_model_without_a_price_is_refused_with_its_name(stored):
    read = stored(*LLM_SPANS)
    with pytest.raises(ValueError, match="no price for model no-such-model"):
        what_if(read, *HOUR, Changes(reprice={"gpt-4o": "no-such-model"}), config())


# --- SLO targets ----------------------------------------------------------------------------------

def _tool_calls(n: int, failed: int, tool: str = "web_search", minute: int = 0) -> list[dict]:
    return [span(f"tr{minute}-{i}", f"s{i}", role="tool", start=minute * MIN + i * 10**6, dur=10**6,
                 tool_name=tool, status_code="error" if i < failed else "ok") for i in range(n)]


@pytest.mark.parametrize("name", ["tool-accuracy", "tool_call_accuracy"])  # by objective, or by its SLI
def test_a_stricter_slo_target_turns_a_healthy_objective_exhausted(stored, name):
    read = stored(*_tool_calls(200, failed=1))
    objective = Objective(name="tool-accuracy", sli="tool_call_accuracy", target=0.99, window="30d")
    doc = what_if(read, *HOUR, Changes(slo_targets={name: 0.999}), config(objectives=(objective,)))
    (row,) = doc["slos"]
    # 200 events, 1 bad.  At 99 %:   allowed bad = 0.01 x 200 = 2,    remaining = 1 - 1/2   = 0.5.
    #                      At 99.9 %: allowed bad = 0.001 x 200 = 0.2, remaining = 1 - 1/0.2 = -4: exhausted.
    assert (row["actual"]["events"], row["actual"]["bad_events"]) == (200, 1)
    assert row["actual"]["budget_remaining"] == 0.5 and row["actual"]["status"] == "healthy"
    assert row["what_if"]["budget_remaining"] == 0.0 and row["what_if"]["status"] == "exhausted"
    assert row["what_if"]["sli_value"] == row["actual"]["sli_value"] == 0.995
    # Burn rate = (1/200) / (1 - target): 0.5 at 99 % (no rule), 5 at 99.9 %: the ticket rules (3x over
    # 1d and 2h, 1x over 3d and 6h) fire; the pages (14.4x, 6x) do not.
    assert row["what_if"]["burn_rates"]["1h"] == 5.0 and row["actual"]["burn_rates"]["1h"] == 0.5
    changes = {c["rule"]: c["change"] for c in doc["alerts"]["compared"]}
    assert changes == {"ticket:3x:1d/2h": "new", "ticket:1x:3d/6h": "new"}
    assert doc["alerts"]["actual_total"] == 0
    fired = {(a["rule"], a["state"], a["at_ns"]) for a in doc["alerts"]["what_if"]}
    assert ("ticket:3x:1d/2h", "firing", T0 + MIN) in fired  # at the end of the minute the calls ended in


def test_an_unknown_objective_or_budget_is_named_with_the_valid_ones(stored):
    read = stored(*_tool_calls(3, failed=0))
    objective = Objective(name="tool-accuracy", sli="tool_call_accuracy", target=0.99)
    cfg = config(objectives=(objective,), budgets=(BudgetSpec("agent-daily", "agent_day", 10.0),))
    with pytest.raises(ValueError, match=r"no SLO objective or SLI named 'tasks' \(objectives: tool-accuracy"):
        what_if(read, *HOUR, Changes(slo_targets={"tasks": 0.999}), cfg)
    with pytest.raises(ValueError, match=r"no budget named 'daily' \(budgets: agent-daily\)"):
        what_if(read, *HOUR, Changes(budgets={"daily": 5}), cfg)


def test_the_alerts_replayed_per_minute_are_the_slo_processors_own_transitions():
    """The vectorised replay against the slo processor's AlertTracker, evaluated minute by minute."""
    rng = np.random.default_rng(7)
    minutes = 600
    total = rng.integers(0, 40, minutes)
    bad = np.minimum(rng.binomial(total, np.where(np.arange(minutes) % 200 < 40, 0.3, 0.002)), total)
    start = T0 // MIN
    rows = [(start + m, "tool_call_accuracy", "a1", "", int(total[m] - bad[m]), int(total[m]))
            for m in range(minutes) if total[m]]
    objective = Objective(name="tools", sli="tool_call_accuracy", target=0.99)
    _, transitions = _slo_report(rows, [objective], start, start + minutes)
    series = MinuteSeries.from_minutes([r[0] for r in rows], [r[4] for r in rows], [r[5] for r in rows])
    tracker = AlertTracker(0.99, objective.burn_rules)
    expected = [(e.rule.name, e.state, e.at_minute * MIN) for m in range(start, start + minutes + 1)
                for e in tracker.evaluate(series, m)]
    got = [(t["rule"], t["state"], t["at_ns"]) for t in transitions]
    assert sorted(got) == sorted(expected) and len(expected) > 4


# --- removing and slowing tools ------------------------------------------------------------------

TASK_WITH_TOOLS = [
    span("t1", "root", role="agent_task", dur=10 * S),
    span("t1", "plan", "root", "llm", 0, 2 * S, input_tokens=1000, output_tokens=100, cost_usd=0.0035, **GPT4O),
    span("t1", "web", "root", "tool", 2 * S, 3 * S, tool_name="web_search"),
    # the search tool summarises with its own LLM call: under the tool, so it goes with it
    span("t1", "sum", "web", "llm", 3 * S, 1 * S, input_tokens=400, output_tokens=50, cost_usd=0.0015, **GPT4O),
    span("t1", "calc", "root", "tool", 6 * S, 1 * S, tool_name="calculator"),
    span("t2", "root", role="agent_task", start=120 * S, dur=4 * S),
    span("t2", "calc", "root", "tool", 121 * S, 1 * S, tool_name="calculator"),
]


def test_removing_a_tool_takes_exactly_its_cost_and_time_off_the_task(stored):
    read = stored(*TASK_WITH_TOOLS)
    objective = Objective(name="tools", sli="tool_call_accuracy", target=0.9)
    doc = what_if(read, *HOUR, Changes(remove_tools=("web_search",)), config(objectives=(objective,)))
    assert doc["cost"]["removed_spans"] == 2  # the call and the LLM span under it
    (t1,) = doc["tasks"]["most_changed"]  # t2 does not call it: unchanged
    assert t1["trace_id"] == "t1"
    assert t1["delta_usd"] == pytest.approx(-0.0015, abs=1e-15)  # the summarising call's cost
    assert t1["delta_latency_ms"] == -3000.0  # the search call's 3 s
    assert (t1["actual_latency_ms"], t1["what_if_latency_ms"]) == (10_000.0, 7000.0)
    assert doc["cost"]["delta_usd"] == pytest.approx(-0.0015, abs=1e-15)
    (row,) = doc["slos"]
    assert (row["actual"]["events"], row["what_if"]["events"]) == (3, 2)  # one tool call fewer


def test_removing_a_tool_leaves_the_tasks_outcome_as_recorded(stored):
    failed_task = [dict(r, status_code="error") if r["span_id"] == "root" and r["trace_id"] == "t1" else r
                   for r in TASK_WITH_TOOLS]
    read = stored(*failed_task)
    objective = Objective(name="tasks", sli="task_success_rate", target=0.9)
    doc = what_if(read, *HOUR, Changes(remove_tools=("web_search",)), config(objectives=(objective,)))
    (row,) = doc["slos"]
    assert row["actual"]["bad_events"] == row["what_if"]["bad_events"] == 1
    assert any("outcome is unchanged" in a for a in doc["assumptions"])


def test_slowing_a_tool_delays_every_ancestor_and_can_break_the_latency_slo(stored):
    nested = [
        span("t1", "root", role="agent_task", dur=20 * S),
        span("t1", "step", "root", "other", 1 * S, 15 * S),
        span("t1", "web1", "step", "tool", 2 * S, 3 * S, tool_name="web_search"),
        span("t1", "web2", "step", "tool", 6 * S, 3 * S, tool_name="web_search"),
    ]
    read = stored(*nested)
    objective = Objective(name="latency", sli="response_latency", target=0.9)
    cfg = config(objectives=(objective,))
    doc = what_if(read, *HOUR, Changes(slow_tools=(SlowTool.parse("web_search", "2s"),)), cfg)
    (t1,) = doc["tasks"]["most_changed"]
    assert t1["delta_latency_ms"] == 4000.0  # two calls, 2 s each, through "step" to the task
    (row,) = doc["slos"]
    assert row["actual"]["bad_events"] == row["what_if"]["bad_events"] == 0  # 24 s <= 30 s
    doc = what_if(read, *HOUR, Changes(slow_tools=(SlowTool.parse("web_search", "x3"),)), cfg)
    (t1,) = doc["tasks"]["most_changed"]
    assert t1["delta_latency_ms"] == 12_000.0  # each 3 s call takes 9 s: +6 s twice
    (row,) = doc["slos"]
    assert (row["actual"]["bad_events"], row["what_if"]["bad_events"]) == (0, 1)  # 32 s > 30 s
    assert doc["cost"]["slowed_spans"] == 2


# --- budgets ------------------------------------------------------------------------------------

def _spend_per_minute(n: int, usd: float, first_minute: int = 0) -> list[dict]:
    """One LLM span costing ``usd`` ending in each of ``n`` minutes."""
    return [span(f"b{first_minute + k}", "llm", role="llm", start=(first_minute + k) * MIN, dur=S, cost_usd=usd,
                 **GPT4O) for k in range(n)]


def _decisions(doc: dict) -> dict[tuple[str, str], tuple]:
    return {(c["action"], c["budget"]): (c["change"], c["actual_first_ns"], c["what_if_first_ns"])
            for c in doc["budgets"]["decisions"]["compared"]}


def test_a_lower_budget_makes_a_kill_that_did_not_happen(stored):
    read = stored(*_spend_per_minute(10, 0.098))
    daily = BudgetSpec("agent-daily", "agent_day", 1.0)
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 0.5}), config(budgets=(daily,)))
    # $0.098 a minute.  At $1: after 9 minutes 0.882 >= 0.85 throttles, after 10, 0.98 >= 0.95 kills.
    # At $0.50: after 4 minutes 0.392 / 0.5 = 0.784 allows; after 5, 0.49 / 0.5 = 0.98 kills at once.
    assert _decisions(doc) == {("throttle", "agent-daily"): ("gone", T0 + 8 * MIN, None),
                               ("kill", "agent-daily"): ("changed", T0 + 9 * MIN, T0 + 4 * MIN)}
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 2.0}), config(budgets=(daily,)))
    # At $2: 0.98 / 2 = 0.49 at most: neither the throttle nor the kill happens.
    assert _decisions(doc) == {("throttle", "agent-daily"): ("gone", T0 + 8 * MIN, None),
                               ("kill", "agent-daily"): ("gone", T0 + 9 * MIN, None)}
    (account,) = doc["budgets"]["accounts_at_end"]
    assert account["actual_utilisation"] == pytest.approx(0.98) and account["what_if_utilisation"] == 0.49


def test_a_higher_budget_only_in_the_what_if_and_a_kill_only_in_it(stored):
    read = stored(*_spend_per_minute(5, 0.1))
    daily = BudgetSpec("agent-daily", "agent_day", 10.0)
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 0.5}), config(budgets=(daily,)))
    # $0.50 in all against $10: 5 %.  Against $0.50: 0.4 / 0.5 = 0.8 after 4 minutes, 1.0 after 5: a kill.
    assert _decisions(doc) == {("kill", "agent-daily"): ("new", None, T0 + 4 * MIN)}
    (kill,) = doc["budgets"]["decisions"]["what_if"]
    assert kill["utilisation"] == pytest.approx(1.0) and kill["until_ns"] == (T0 // (86400 * S) + 1) * 86400 * S


def test_spend_before_the_range_counts_toward_the_days_budget(stored):
    before = span("early", "llm", role="llm", start=-30 * MIN, dur=S, cost_usd=0.5, **GPT4O)
    read = stored(before, *_spend_per_minute(5, 0.098))
    daily = BudgetSpec("agent-daily", "agent_day", 1.0)
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 2.0}), config(budgets=(daily,)))
    # $0.50 earlier today, then $0.098 a minute: 0.5 + 0.098 x 4 = 0.892 throttles, x 5 = 0.99 kills.
    assert _decisions(doc) == {("throttle", "agent-daily"): ("gone", T0 + 3 * MIN, None),
                               ("kill", "agent-daily"): ("gone", T0 + 4 * MIN, None)}
    assert doc["cost"]["actual_usd"] == pytest.approx(0.49)  # the range's own spend only


def test_task_budgets_kill_the_task_not_the_agent(stored):
    spans = [span("big", "root", role="agent_task", dur=5 * S),
             *[span("big", f"l{i}", "root", "llm", i * S, S, cost_usd=0.6, **GPT4O) for i in range(4)]]
    read = stored(*spans)
    per_task = BudgetSpec("per-task", "task", 2.0)
    doc = what_if(read, *HOUR, Changes(budgets={"per-task": 5.0}), config(budgets=(per_task,)))
    (kill,) = doc["budgets"]["decisions"]["actual"]  # $2.40 of $2: 120 %
    assert (kill["action"], kill["task"], kill["budget"]) == ("kill", "big", "per-task")
    assert doc["budgets"]["decisions"]["what_if"] == []  # $2.40 of $5: 48 %


# --- breakers, replays, no change -----------------------------------------------------------------

def test_removing_a_failing_tool_avoids_the_breaker_it_opened(stored):
    read = stored(*_tool_calls(3, failed=3, tool="flaky"), *_tool_calls(2, failed=0, tool="calc", minute=1))
    cfg = config(breakers=BreakerSettings(failure_threshold=3, window_s=60))
    doc = what_if(read, *HOUR, Changes(remove_tools=("flaky",)), cfg)
    (opened,) = doc["breakers"]["compared"]
    assert (opened["change"], opened["actual_first_ns"]) == ("gone", T0 + 2 * 10**6 + 10**6)  # the third failure
    doc = what_if(read, *HOUR, Changes(slow_tools=(SlowTool("calc", 10**9),)), cfg)
    assert [c["change"] for c in doc["breakers"]["compared"]] == ["same"]


def test_a_replays_rerun_counts_in_neither_column(stored):
    rerun = span("re", "llm", role="llm", cost_usd=5.0, resource_attributes=[("agent_sre.replay.of", "t1")],
                 **GPT4O)
    read = stored(rerun, *_spend_per_minute(1, 0.25))
    doc = what_if(read, *HOUR, Changes(), config())
    assert doc["range"]["spans"] == 1 and doc["cost"]["actual_usd"] == 0.25


def test_without_changes_both_columns_are_the_same(stored):
    read = stored(*TASK_WITH_TOOLS, *_tool_calls(50, failed=5), *_spend_per_minute(3, 0.2))
    objectives = (Objective(name="tools", sli="tool_call_accuracy", target=0.99),
                  Objective(name="latency", sli="response_latency", target=0.99))
    cfg = config(objectives=objectives, budgets=(BudgetSpec("d", "agent_day", 0.5),),
                 breakers=BreakerSettings(failure_threshold=3))
    doc = what_if(read, *HOUR, Changes(), cfg)
    assert doc["cost"]["delta_usd"] == 0 and doc["tasks"]["changed"] == 0
    assert not any(r["changed"] for r in doc["slos"])
    for part in (doc["alerts"], doc["budgets"]["decisions"], doc["breakers"]):
        assert part["compared"] and {c["change"] for c in part["compared"]} == {"same"}


# --- parsing and rendering ------------------------------------------------------------------------

def test_a_request_body_becomes_the_range_and_the_changes():
    since, until, changes = parse_request(
        {"since_ns": 5, "reprice": ["gpt-4o=gpt-4o-mini"], "slow_tools": {"web": "x2", "db": "+250ms"},
         "remove_tools": ["search"], "slo": {"tasks": "0.999"}, "budgets": ["agent-daily=$50"],
         "prices": {"m": {"input_per_mtok": 1, "output_per_mtok": 2}}}, now_ns=99)
    assert (since, until) == (5, 99)
    assert changes.reprice == {"gpt-4o": "gpt-4o-mini"} and changes.remove_tools == ("search",)
    assert changes.slow_tools == (SlowTool("web", 0, 2.0), SlowTool("db", 250_000_000, 1.0))
    assert changes.slo_targets == {"tasks": 0.999} and changes.budgets == {"agent-daily": 50.0}
    assert changes.prices["m"].linear().cached == 1e-6  # cached input defaults to the input price


@pytest.mark.parametrize(("body", "message"), [
    ({"since_ns": 1, "remove_tool": ["x"]}, "unknown change 'remove_tool'"),
    ({"since_ns": 1, "slow_tools": ["web=fast"]}, "slow tool web: 'fast' is neither a duration"),
    ({"since_ns": 1, "slo": {"tasks": 1.5}}, "SLO tasks: target must be between 0 and 1"),
    ({"since_ns": 1, "budgets": {"daily": 0}}, "budget daily: the limit must be a positive amount"),
    ({"since_ns": 1, "reprice": ["gpt-4o"]}, "reprice: expected NAME=VALUE"),
    ({"since_ns": 1, "remove_tools": ["x"], "slow_tools": {"x": "2s"}}, "tool x is both removed and slowed"),
    ({"until_ns": 1}, "since_ns is required"),
])
def test_a_bad_request_says_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message):
        parse_request(body, now_ns=10)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), st.floats(min_value=0, max_value=100, allow_nan=False))
def test_slow_tool_specs_read_as_written(ms, factor):
    assert SlowTool.parse("t", f"{ms}ms") == SlowTool("t", ms * 10**6, 1.0)
    assert SlowTool.parse("t", f"x{factor!r}") == SlowTool("t", 0, factor)


def test_the_text_shows_each_side_and_colours_only_when_asked(stored):
    read = stored(*_spend_per_minute(10, 0.098))
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 2.0}, reprice={"gpt-4o": "gpt-4o-mini"}),
                  config(budgets=(BudgetSpec("agent-daily", "agent_day", 1.0),)))
    text = render_what_if(doc, color=False)
    assert "What-if over 2025-01-15 10:00 → 2025-01-15 11:00 UTC: 10 spans, 0 tasks" in text
    assert "re-price gpt-4o as gpt-4o-mini; budget agent-daily $2" in text
    assert "- kill agent a1 (agent-daily): 01-15 10:09 → -  (actual only)" in text
    assert "\x1b[" not in text
    assert "\x1b[32m" in render_what_if(doc, color=True)  # what got better is green


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="the range is empty"):
        what_if(lambda sql, p: [], T0, T0, Changes(), config())


def test_a_changed_config_keeps_the_actual_column_as_configured(stored):
    read = stored(*_spend_per_minute(2, 0.3))
    daily = BudgetSpec("agent-daily", "agent_day", 1.0)
    doc = what_if(read, *HOUR, Changes(budgets={"agent-daily": 0.5}), config(budgets=(daily,)))
    (account,) = doc["budgets"]["accounts_at_end"]
    assert (account["actual_limit_usd"], account["what_if_limit_usd"]) == (1.0, 0.5)
    assert dataclasses.replace(daily) == daily  # the config's spec is not modified


def test_a_range_ending_at_midnight_shows_the_budgets_of_the_day_it_covers(stored):
    midnight = T0 // (86400 * S) * 86400 * S
    read = stored(*_spend_per_minute(3, 0.1))
    daily = BudgetSpec("agent-daily", "agent_day", 1.0)
    doc = what_if(read, midnight, midnight + 86400 * S, Changes(budgets={"agent-daily": 0.5}), config(budgets=(daily,)))
    (account,) = doc["budgets"]["accounts_at_end"]
    assert (account["period"], account["actual_spent_usd"]) == ("2025-01-15", pytest.approx(0.3))
    assert account["what_if_utilisation"] == pytest.approx(0.6)


def test_the_running_pipelines_store_answers_through_its_own_read(tmp_path):
    """The admin route passes ``store.read`` (the writer's store, its 48MB pool and one thread)."""
    store = SpanStore(tmp_path / "live.duckdb")
    try:
        store.set_sli_rollups(list(SLIS))
        store.append(pa.Table.from_pylist(LLM_SPANS, schema=SPAN_SCHEMA))
        doc = what_if(store.read, *HOUR, Changes(reprice={"gpt-4o": "gpt-4o-mini"}, remove_tools=("x",)), config())
    finally:
        store.close()
    assert doc["range"]["spans"] == 6 and doc["cost"]["repriced"][0]["spans"] == 3
