"""Look-ups by key left out of a batch that has no such key (rollups.lookups / present / without): the
rollups and charges of any batch are those of the full statements, and a held span released by a later
batch that lacks its keys is counted with them (the store asks the held spans in SQL)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.attribution import AttributionSettings
from agent_sre.pipeline.storage.rollups import (
    CHARGES_SPLIT_SQL,
    COST_ROLLUP_SQL,
    EVALUATION_EVENT,
    Lookup,
    held_presence_sql,
    lookups,
    present,
    rollup_sql,
    without,
)
from agent_sre.pipeline.storage.store import SpanStore, to_storage
from agent_sre.processors.sli.factory import SliConfig, builtin_slis

MINUTE = 60 * 10**9
SLIS = builtin_slis(SliConfig())
COST_SELECT = COST_ROLLUP_SQL.split("ON CONFLICT")[0].split("\n", 1)[1]
SLI_SELECT = rollup_sql([s for s in SLIS if s.scope == "span"])[0]
SLI_SELECT = SLI_SELECT[SLI_SELECT.index("SELECT"):SLI_SELECT.index(" ON CONFLICT")]
STATEMENTS = [SLI_SELECT, COST_SELECT, CHARGES_SPLIT_SQL]
WANTED = lookups(STATEMENTS)


def test_the_builtin_rollups_look_up_the_score_the_evaluation_and_the_tenant():
    assert WANTED == {Lookup("attributes", "eval.hallucination.score"), Lookup("events", EVALUATION_EVENT),
                      Lookup("resource_attributes", "tenant.id")}
    bare = [without(sql, WANTED) for sql in STATEMENTS]
    assert not any("list_filter" in sql for sql in bare)  # nothing per span is left of them
    assert lookups(bare) == frozenset()
    # a key that is there stays looked up; a quote in a key is a quote
    assert without(SLI_SELECT, frozenset({Lookup("resource_attributes", "tenant.id")})) == SLI_SELECT
    quoted = "list_filter(attributes, lambda e: e.key = 'it''s')[1].value = 'x'"
    assert lookups([quoted]) == {Lookup("attributes", "it's")}
    assert without(quoted, frozenset({Lookup("attributes", "it's")})) == "NULL::VARCHAR = 'x'"


def _span(i: int, score: str | None, tenant: str | None, evaluation: str | None, agent: str) -> dict:
    attributes = [{"key": "other", "value": "1"}] + ([{"key": "eval.hallucination.score", "value": score}]
                                                      if score is not None else [])
    events = ([{"time_ns": 1, "name": EVALUATION_EVENT, "attributes": [
        ("gen_ai.evaluation.name", "hallucination"), ("gen_ai.evaluation.score.value", evaluation)]}]
        if evaluation is not None else [])
    return {"trace_id": f"{i % 3:032x}", "span_id": f"{i:016x}", "name": "s", "kind": "internal",
            "start_ns": MINUTE, "end_ns": MINUTE + i * 10**9, "duration_ns": i * 10**9, "status_code": "unset",
            "span_role": "llm", "agent_id": agent, "model": "m", "cost_usd": 0.01 * (i + 1),
            "attributes": attributes, "events": events, "scope_attributes": [],
            "resource_attributes": [{"key": "service.name", "value": "svc"}]
            + ([{"key": "tenant.id", "value": tenant}] if tenant is not None else [])}


_spans = st.lists(st.tuples(st.sampled_from([None, "0.1", "0.9"]), st.sampled_from([None, "acme", "beta"]),
                            st.sampled_from([None, "0.2", "0.7"]), st.sampled_from(["a", "b"])), max_size=30)


@settings(max_examples=60, deadline=None)
@given(_spans)
def test_any_batch_rolls_up_as_the_full_statements_do(spans):
    rows = to_storage(pa.Table.from_pylist([_span(i, *s) for i, s in enumerate(spans)], schema=SPAN_SCHEMA))
    has = present(rows, WANTED)
    assert has == {w for w, yes in [(Lookup("attributes", "eval.hallucination.score"), any(s[0] for s in spans)),
                                    (Lookup("resource_attributes", "tenant.id"), any(s[1] for s in spans)),
                                    (Lookup("events", EVALUATION_EVENT), any(s[2] for s in spans))] if yes}
    con = duckdb.connect()
    con.register("_counted", rows)
    for sql in STATEMENTS:
        assert sorted(con.execute(without(sql, WANTED - has)).fetchall(), key=str) == \
            sorted(con.execute(sql).fetchall(), key=str)
    con.register("_held", rows)
    assert dict(zip(sorted(WANTED, key=repr), con.execute(held_presence_sql(sorted(WANTED, key=repr), "_held"))
                    .fetchall()[0], strict=True)) == {w: w in has for w in WANTED}


def test_a_held_span_keeps_its_keys_when_a_batch_without_them_releases_it(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb", attribution=AttributionSettings(wait=120.0))
    store.set_sli_rollups(SLIS)
    child = _span(1, "0.9", "acme", None, "x") | {"agent_id": None, "parent_span_id": f"{7:016x}",
                                                   "trace_id": "ab" * 16}
    store.append(pa.Table.from_pylist([child], schema=SPAN_SCHEMA))
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 1
    parent = _span(7, None, None, None, "root-agent") | {"trace_id": "ab" * 16, "span_role": "agent_task"}
    store.append(pa.Table.from_pylist([parent], schema=SPAN_SCHEMA))  # no score, no tenant in this batch
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 0
    assert store.read("SELECT agent_id, good, total FROM sli_minutes WHERE sli = 'hallucination_rate'") == \
        [("root-agent", 0, 1)]
    assert sorted(store.read("SELECT agent_id, tenant, spans FROM cost_minutes")) == \
        [("root-agent", "", 1), ("root-agent", "acme", 1)]
    # a batch with an agent and none of the keys: no score to count, no tenant
    store.append(pa.Table.from_pylist([_span(3, None, None, None, "other")], schema=SPAN_SCHEMA))
    assert store.read("SELECT count(*) FROM sli_minutes WHERE agent_id = 'other' AND sli = 'hallucination_rate'") \
        == [(0,)]
    assert store.read("SELECT tenant FROM cost_minutes WHERE agent_id = 'other'") == [("",)]
    store.close()
