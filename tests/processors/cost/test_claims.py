"""Priced spans claimed in the fleet's Redis (processors/cost/claims.py): the charges computed from a
commit's rows are the store's charge SQL's, and a span's claim goes to the first pipeline to ask."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.storage.rollups import CHARGES_BY_TASK_SQL, CHARGES_SPLIT_SQL, CHARGES_SQL
from agent_sre.processors.cost.claims import charges, priced_spans
from tests.redis_server import running_redis

ENTRY = pa.struct([("key", pa.string()), ("value", pa.string())])
span = st.fixed_dictionaries({
    "agent_id": st.sampled_from([None, "", "a", "b"]),
    "trace": st.integers(0, 3),
    "model": st.sampled_from([None, "gpt-4o-mini", "m2"]),
    "resource": st.sampled_from([[], [("tenant.id", "acme")], [("service.name", "s"), ("tenant.id", "globex")],
                                 [("service.name", "s")]]),
    "cost_usd": st.sampled_from([None, 0.0, 0.25, 1.5, -1.0]),
    "minute": st.integers(28_000_000, 28_000_002),
})


def _rows(spans: list[dict]) -> pa.Table:
    return pa.table({
        "agent_id": pa.array([s["agent_id"] for s in spans], pa.string()),
        "trace_id": pa.array([f"{s['trace']:032x}" for s in spans], pa.string()),
        "span_id": pa.array([f"{i + 1:016x}" for i in range(len(spans))], pa.string()),
        "model": pa.array([s["model"] for s in spans], pa.string()),
        "resource_attributes": pa.array([[{"key": k, "value": v} for k, v in s["resource"]] for s in spans],
                                        pa.list_(ENTRY)),
        "cost_usd": pa.array([s["cost_usd"] for s in spans], pa.float64()),
        "end_ns": pa.array([s["minute"] * 60_000_000_000 + 5 for s in spans], pa.int64()),
    })


def _sorted(rows) -> list[tuple]:
    return sorted((tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows), key=repr)


@settings(max_examples=80, deadline=None)
@given(st.lists(span, max_size=30), st.booleans())
def test_charges_from_a_commits_rows_are_the_stores_charges(spans, by_task):
    rows = _rows(spans)
    con = duckdb.connect()
    con.register("_counted", rows)
    expected = con.execute(CHARGES_SPLIT_SQL if by_task else CHARGES_SQL).fetchall()
    assert _sorted(charges(priced_spans(rows), by_task)) == _sorted(expected)


@settings(max_examples=80, deadline=None)
@given(st.lists(span, max_size=30))
def test_the_split_charges_are_the_period_charges_and_the_per_task_charges_summed_per_trace(spans):
    con = duckdb.connect()
    con.register("_counted", _rows(spans))
    split = con.execute(CHARGES_SPLIT_SQL).fetchall()
    assert _sorted(r for r in split if r[6] is not None) == _sorted(con.execute(CHARGES_SQL).fetchall())
    per_task: dict[tuple, list] = {}
    for agent, trace, _model, _tenant, usd, calls, _minute in con.execute(CHARGES_BY_TASK_SQL).fetchall():
        acc = per_task.setdefault((agent, trace), [0.0, 0])
        acc[0] += usd
        acc[1] += calls
    assert _sorted((a, t, None, None, usd, calls, None) for (a, t), (usd, calls) in per_task.items()) == _sorted(
        r for r in split if r[6] is None)


def test_a_span_is_the_first_claimants_and_stays_theirs(tmp_path):
    from agent_sre.pipeline.storage.shared_state import SharedState

    with running_redis(tmp_path) as server:
        p0, p1 = SharedState(server.url, "p0"), SharedState(server.url, "p1")
        try:
            keys = np.array([1, 2, 3, 2**64 - 1], dtype=np.uint64)
            assert p0.claim_spans(keys[:3], 60).tolist() == [False, False, False]
            assert p1.claim_spans(keys[1:], 60).tolist() == [True, True, False]  # 2 and 3 are p0's
            assert p0.claim_spans(keys, 60).tolist() == [False, False, False, True]  # again: its own; 2**64-1 p1's
            assert p1.claim_spans(keys[3:], 60).tolist() == [False]
            assert 0 < p0._redis.ttl("agent_sre:claim:0000000000000001") <= 60
            many = np.arange(10_000, 20_000, dtype=np.uint64)  # more than one script call
            assert not p0.claim_spans(many, 60).any() and p1.claim_spans(many, 60).all()
        finally:
            p0.close()
            p1.close()
    down = SharedState("redis://127.0.0.1:1/0", "p0")
    try:
        assert down.claim_spans(np.array([1], dtype=np.uint64), 60) is None  # unreachable: charged locally
    finally:
        down.close()


@pytest.mark.parametrize("by_task", [True, False])
def test_no_priced_span_no_charge(by_task):
    assert charges(priced_spans(_rows([{"agent_id": "a", "trace": 1, "model": None, "resource": [],
                                        "cost_usd": 0.0, "minute": 28_000_000}])), by_task) == []
