"""Abort monitoring on hand-made batches: tags found column-wise, tallies per second and agent, windows,
minimum events, and SLI predicates that read attributes."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import to_storage
from agent_sre.processors.chaos.monitor import Monitor, SpanSli, experiment_tags, tally_input, tally_sql
from agent_sre.processors.chaos.spec import AbortCondition

S = 1_000_000_000


def batch(rows: list[dict]) -> pa.Table:
    """Spans in the storage layout, as the store hands them to on_commit."""
    full = [{"trace_id": "t", "span_id": str(i), "attributes": [], **r} for i, r in enumerate(rows)]
    return to_storage(pa.Table.from_pylist(full, schema=SPAN_SCHEMA))


def tally(rows: pa.Table, slis: list[SpanSli]) -> list[tuple]:
    con = duckdb.connect()
    table, source = tally_input(rows, slis)
    con.register("_batch", table)
    return sorted(con.execute(tally_sql(slis, source, tag="tag")).fetchall(), key=lambda r: (r[0], r[1], r[2] or ""))


tags = st.lists(st.lists(st.sampled_from(["chaos.experiment.id", "k", "chaos.fault.type", "x"]), unique=True,
                         max_size=4), max_size=30)


@settings(max_examples=60)
@given(tags, st.integers(0, 30))
def test_tags_are_found_column_wise_in_any_chunking(keys_per_row, cut):
    rows = [{"attributes": [(k, f"{k}-{i}") for k in keys]} for i, keys in enumerate(keys_per_row)]
    table = batch(rows)
    cut = min(cut, table.num_rows)
    chunked = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    expected = [f"chaos.experiment.id-{i}" if "chaos.experiment.id" in keys else None
                for i, keys in enumerate(keys_per_row)]
    assert experiment_tags(chunked).to_pylist() == expected


def test_the_tally_counts_calls_errors_cost_and_injected_spans_per_second_and_agent():
    rows = batch([
        {"agent_id": "a", "span_role": "tool", "status_code": "error", "end_ns": 10 * S + 1,
         "attributes": [("chaos.experiment.id", "X"), ("chaos.fault.type", "tool_error")]},
        {"agent_id": "a", "span_role": "tool", "status_code": "ok", "end_ns": 10 * S + 2},
        {"agent_id": "a", "span_role": "llm", "status_code": "unset", "end_ns": 10 * S + 3, "cost_usd": 0.5},
        {"agent_id": "a", "span_role": "agent_task", "status_code": "error", "end_ns": 11 * S},
        {"agent_id": "b", "span_role": "tool", "status_code": "error", "end_ns": 10 * S},
    ])
    sli = SpanSli("tool_call_accuracy", "span_role = 'tool'", "status_code <> 'error'")
    assert tally(rows, [sli]) == [
        (10, "a", None, 2, 0, 0.5, 2, 1, 1),  # second, agent, tag, calls, errors, cost, spans, total, good
        (10, "a", "X", 1, 1, 0.0, 1, 1, 0),
        (10, "b", None, 1, 1, 0.0, 1, 1, 0),
        (11, "a", None, 0, 0, 0.0, 1, 0, 0),
    ]


def test_an_sli_reading_attributes_gets_them_as_a_map():
    rows = batch([{"agent_id": "a", "span_role": "llm", "end_ns": S, "attributes": [("eval.score", "0.9")]},
                  {"agent_id": "a", "span_role": "llm", "end_ns": S, "attributes": [("eval.score", "0.2")]},
                  {"agent_id": "a", "span_role": "llm", "end_ns": S}])
    sli = SpanSli("quality", "attributes['eval.score'] IS NOT NULL", "TRY_CAST(attributes['eval.score'] AS DOUBLE) > 0.5")
    assert tally(rows, [sli]) == [(1, "a", None, 3, 0, 0.0, 3, 2, 1)]


def test_a_monitor_judges_its_conditions_over_its_windows_from_its_start():
    conditions = [AbortCondition(metric="error_rate", above=0.5, window=10, min_events=4),
                  AbortCondition(metric="cost_usd", above=1.0)]
    m = Monitor("X", ["a"], start=100.5, conditions=conditions)
    # second, agent, tag, calls, errors, cost, spans
    m.add_rows([(99, "a", None, 50, 50, 0.0, 50),  # before the start: not counted
                (100, "b", None, 9, 9, 0.0, 9),  # another agent
                (100, "a", "X", 3, 3, 0.25, 3)], [])
    assert m.breached(101) is None  # 3 of 3 failed, but fewer than 4 calls
    m.add_rows([(105, "a", None, 3, 0, 0.25, 3)], [])
    assert m.breached(106) is None  # 3 of 6
    m.add_rows([(106, "a", None, 1, 1, 0.0, 1)], [])
    condition, value = m.breached(107)
    assert (condition.metric, value) == ("error_rate", 4 / 7)
    assert m.breached(117) is None  # the failures of second 100 left the 10 s window: 1 of 4
    assert (m.total.calls, m.total.errors, m.total.injected, m.total.cost_usd) == (7, 4, 3, 0.5)
    m.add_rows([(117, "a", None, 0, 0, 0.75, 0)], [])
    condition, value = m.breached(118)
    assert (condition.metric, value) == ("cost_usd", 1.25)  # spend since the start: no window
    assert min(m.seconds) >= 118 - m.keep - 1  # old tallies are let go


def test_an_sli_condition_uses_its_own_events():
    m = Monitor("X", ["a"], 0, [AbortCondition(metric="sli:task_success_rate", below=0.9, min_events=2)])
    m.add_rows([(1, "a", None, 9, 0, 0.0, 10, 1, 0)], ["task_success_rate"])  # good 0 of 1 task
    assert m.breached(2) is None  # one event: fewer than min_events
    m.add_rows([(1, "a", None, 0, 0, 0.0, 1, 1, 1)], ["task_success_rate"])
    assert m.breached(2)[1] == 0.5
