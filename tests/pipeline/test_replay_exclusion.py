"""Spans of a replay's re-run (`agent_sre.replay.of` on the resource or on the span) are stored and
queryable like any other, but SLIs, budgets, anomaly series and the commit callbacks (breakers,
incidents, metrics) do not count them — unless the store counts replays."""

from __future__ import annotations

import pyarrow as pa
import pytest

from agent_sre.pipeline.storage.rollups import REPLAY_KEY
from agent_sre.pipeline.storage.store import SpanStore, replay_mask, to_storage
from agent_sre.processors.sli.factory import SliConfig, builtin_slis
from tests.pipeline.test_attribution import batch, open_store, span

ORIGINAL = "0af7651916cd43dd8448eb211c80319c"
RERUN = "1bf7651916cd43dd8448eb211c80319d"
MARK = {"key": REPLAY_KEY, "value": ORIGINAL}


def traffic(on: str) -> pa.Table:
    """A real task (failing tool, $0.50 LLM call) and its re-run (failing tool, $0.25), the re-run marked on ``on``."""
    mark = {"resource_attributes": [MARK]} if on == "resource" else {"attributes": [MARK]}
    return batch(
        span("00000000000000a1", None, "agent_task", agent_id="triage"),
        span("00000000000000b1", "00000000000000a1", "llm", agent_id="triage", model="gpt-4o", cost_usd=0.5),
        span("00000000000000b2", "00000000000000a1", "tool", agent_id="triage", status_code="error"),
        span("00000000000000c1", None, "agent_task", trace=RERUN, agent_id="triage", **mark),
        span("00000000000000d1", "00000000000000c1", "llm", trace=RERUN, agent_id="triage", model="gpt-4o",
             cost_usd=0.25, **mark),
        span("00000000000000d2", "00000000000000c1", "tool", trace=RERUN, agent_id="triage", status_code="error",
             **mark),
    )


def watched(store: SpanStore) -> tuple[list, list]:
    store.set_sli_rollups(builtin_slis(SliConfig()))
    charged, committed = [], []
    store.on_charges(charged.append)
    store.on_commit(committed.append)
    return charged, committed


@pytest.mark.parametrize("on", ["resource", "span"])
def test_a_rerun_is_stored_but_not_counted(tmp_path, on):
    store = open_store(tmp_path)
    charged, committed = watched(store)
    store.append(traffic(on))
    assert store.read("SELECT count(*) FROM spans")[0][0] == 6  # stored, all of them
    assert store.read("SELECT count(*) FROM spans WHERE trace_id = ?", [RERUN])[0][0] == 3
    # Counted: only the real task — one tool call (failed), $0.50, three spans.
    assert store.read("SELECT good, total FROM sli_minutes WHERE sli = 'tool_call_accuracy'") == [(0, 1)]
    assert store.read("SELECT sum(total) FROM sli_minutes WHERE sli = 'task_success_rate'")[0][0] == 1
    assert store.read("SELECT agent_id, cost_usd, spans FROM cost_minutes") == [("triage", 0.5, 1)]
    assert store.read("SELECT spans, errors, llm_calls FROM agent_minutes") == [(3, 1, 1)]
    assert [c[4] for batch_ in charged for c in batch_] == [0.5]  # budgets charged the real spend only
    assert sum(t.num_rows for t in committed) == 3 and set(committed[0].column("trace_id").to_pylist()) == {ORIGINAL}


def test_a_held_rerun_child_released_later_is_not_counted_either(tmp_path):
    """The attribution path: the re-run's child arrives before its root and is released through it."""
    store = open_store(tmp_path)
    charged, committed = watched(store)
    child = span("00000000000000d1", "00000000000000c1", "llm", trace=RERUN, model="gpt-4o", cost_usd=0.25,
                 resource_attributes=[MARK])
    store.append(batch(child))
    store.append(batch(span("00000000000000c1", None, "agent_task", trace=RERUN, agent_id="triage",
                            resource_attributes=[MARK])))
    assert store.read("SELECT agent_id FROM spans WHERE span_id = '00000000000000d1'") == [("triage",)]
    assert store.read("SELECT count(*) FROM cost_minutes")[0][0] == 0
    assert store.read("SELECT count(*) FROM sli_minutes")[0][0] == 0
    assert charged == [] or all(not c for c in charged)
    assert sum(t.num_rows for t in committed) == 0


def test_counted_when_the_store_counts_replays(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb", count_replays=True)
    charged, committed = watched(store)
    store.append(traffic("resource"))
    assert store.read("SELECT good, total FROM sli_minutes WHERE sli = 'tool_call_accuracy'") == [(0, 2)]
    assert store.read("SELECT sum(cost_usd) FROM cost_minutes")[0][0] == 0.75
    assert sum(t.num_rows for t in committed) == 6


def test_replay_mask_marks_exactly_the_marked_rows():
    rows = to_storage(traffic("span"))
    assert replay_mask(rows).to_pylist() == [False, False, False, True, True, True]
    assert replay_mask(to_storage(batch(span("00000000000000a1", None)))) is None
