"""SLI predicates (DuckDB SQL over the store's spans) translated for the fleet store (fleet.py's
``_predicate``): on random spans, each translated predicate gives on ClickHouse (chdb: ClickHouse 26.9 here, the current
schema's Map columns) what the original gives on DuckDB -- map look-ups NULL for a missing key,
TRY_CAST, and the hallucination evaluator's score read from ``evaluations`` instead of span events."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.exporters.clickhouse.schema import evaluations
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.fleet import _predicate
from agent_sre.processors.sli.factory import SliConfig, builtin_slis

chdb = pytest.importorskip("chdb")

(HALLUCINATION,) = [x for x in builtin_slis(SliConfig()) if x.name == "hallucination_rate"]
PREDICATES = [HALLUCINATION.total, HALLUCINATION.good, "attributes['x'] = 'n/a'", "attributes['x'] IS NULL",
              "coalesce(TRY_CAST(attributes['x'] AS DOUBLE) > 0.5, false)", "resource_attributes['tenant.id'] = 'acme'"]
VALUES = st.sampled_from(["0.1", "0.9", "n/a", ""])
EVENT = st.fixed_dictionaries({"time_ns": st.just(1), "name": st.sampled_from(["gen_ai.evaluation.result", "retry"]),
                               "attributes": st.dictionaries(st.sampled_from(["gen_ai.evaluation.name",
                                                                              "gen_ai.evaluation.score.value"]),
                                                             st.sampled_from(["hallucination", "relevance", "0.2",
                                                                              "0.8"])).map(lambda d: list(d.items()))})
SPAN = st.fixed_dictionaries({
    "attributes": st.dictionaries(st.sampled_from(["eval.hallucination.score", "x"]), VALUES).map(lambda d: list(d.items())),
    "resource_attributes": st.sampled_from([[], [("tenant.id", "acme")], [("tenant.id", "globex")]]),
    "events": st.one_of(st.none(), st.lists(EVENT, max_size=3)),
})


def test_a_predicate_translates_to_clickhouse_functions():
    assert _predicate("attributes['k'] = 'v'", "key") == (
        "if(has(attributes.key, 'k'), attributes.value[indexOf(attributes.key, 'k')], NULL) = 'v'")
    assert _predicate("TRY_CAST(attributes['k'] AS DOUBLE) < 1 AND true") == (
        "toFloat64OrNull(if(has(attributes.keys, 'k'), attributes.values[indexOf(attributes.keys, 'k')], NULL)) "
        "< 1 AND 1")
    assert _predicate("TRY_CAST(x AS BIGINT) > 1") == "TRY_CAST(x AS BIGINT) > 1"  # left to the server
    assert "evaluations.keys, 'hallucination'" in _predicate(HALLUCINATION.total)
    assert "events" not in _predicate(HALLUCINATION.total)


@settings(max_examples=40, deadline=None)
@given(st.lists(SPAN, min_size=1, max_size=12))
def test_translated_predicates_agree_with_duckdb(spans):
    rows = [{"trace_id": f"{i:032x}", "span_id": f"{i:016x}", **s} for i, s in enumerate(spans)]
    batch = pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)
    local = duckdb.connect()
    local.register("t", batch)
    fleet = pa.table({"i": pa.array(range(len(rows))), "attributes": batch.column("attributes"),  # noqa: F841
                      "resource_attributes": batch.column("resource_attributes"), "evaluations": evaluations(batch)})
    for predicate in PREDICATES:
        expected = [None if v is None else bool(v) for (v,) in local.execute(f"SELECT ({predicate}) FROM t").fetchall()]
        got = chdb.query(f"SELECT ({_predicate(predicate)}) AS v FROM Python(fleet) ORDER BY i", "ArrowTable")
        assert [None if v is None else bool(v) for v in got.column("v").to_pylist()] == expected, predicate
