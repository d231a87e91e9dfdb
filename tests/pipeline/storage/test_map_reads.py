"""Ad hoc lookups of one attribute (``attributes['k']``) are read from the stored lists
(pipeline/storage/map_reads.py): the same rows and column names as through the ``spans`` view's
MAPs, and any query the rewrite cannot take as meant runs as written."""

from __future__ import annotations

import time

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.storage.map_reads import stored_reads
from agent_sre.pipeline.storage.sandbox import file_query_limits, run_query
from agent_sre.pipeline.storage.store import _view_sql

KEYS = ["k0", "k1", "gen_ai.request.model", "it's", "missing", ""]


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    con.execute("""CREATE TABLE span_rows AS SELECT i, 'a' || (i % 3) AS agent_id,
      [{'key': 'k0', 'value': 'v' || (i % 4)}, {'key': 'k1', 'value': CASE WHEN i % 5 = 0 THEN NULL ELSE 'w' || (i % 2) END},
       {'key': 'gen_ai.request.model', 'value': 'gpt-' || (i % 3)}, {'key': 'it''s', 'value': 'q' || (i % 2)}] AS attributes,
      [{'key': 'service.name', 'value': 's' || (i % 2)}] AS resource_attributes,
      []::STRUCT(key VARCHAR, value VARCHAR)[] AS scope_attributes FROM range(200) r(i)""")
    con.execute("CREATE TABLE held_spans AS SELECT * FROM span_rows WHERE i < 7")
    con.execute(_view_sql("(SELECT * FROM span_rows UNION ALL BY NAME SELECT * FROM held_spans)"))
    con.execute("CREATE TABLE logs AS SELECT i, MAP {'k0': 'v1'} AS attributes FROM range(3) r(i)")
    yield con
    con.close()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _answers(con, sql):
    result = run_query(con, sql, file_query_limits(10_000))
    direct = con.sql(sql)
    return (result.columns, [[str(v) for v in r] for r in result.rows]), (
        direct.columns, [[str(v) for v in r] for r in direct.fetchall()])


lookup = st.tuples(st.sampled_from(["attributes", "resource_attributes", "s.attributes", "spans.attributes"]),
                   st.sampled_from(KEYS + ["service.name"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(lookup, min_size=1, max_size=3), st.sampled_from(KEYS), st.booleans(), st.booleans(), st.booleans())
def test_lookups_answer_as_through_the_view(con, lookups, where_key, aliased, filtered, in_cte):
    def ref(column):
        head, _, name = column.rpartition(".")
        return f"{('s' if aliased else 'spans') + '.' if head else ''}{name}"

    exprs = [f"{ref(c)}[{_quote(k)}]" + (f" AS c{i}" if i % 2 else "") for i, (c, k) in enumerate(lookups)]
    where = f" WHERE {ref('s.attributes')}[{_quote(where_key)}] IS NOT NULL" if filtered else ""
    table = "spans s" if aliased else "spans"
    sql = f"SELECT {', '.join(exprs)}, count(*) AS n FROM {table}{where} GROUP BY ALL ORDER BY ALL"
    if in_cte:
        sql = f"WITH x AS ({sql}) SELECT sum(n) AS spans, count(*) AS groups FROM x"
    assert stored_reads(con, sql) is not None
    rewritten, as_written = _answers(con, sql)
    assert rewritten == as_written


@pytest.mark.parametrize("sql", [
    "SELECT * FROM spans ORDER BY i LIMIT 3",
    "SELECT map_keys(attributes) FROM spans ORDER BY i LIMIT 3",
    "SELECT attributes['k0'], attributes FROM spans ORDER BY i LIMIT 3",
    "SELECT s.attributes['k0'], l.attributes['k0'] FROM spans s JOIN logs l ON s.i = l.i ORDER BY s.i",
    "WITH spans AS (SELECT * FROM logs) SELECT attributes['k0'] FROM spans",
    "SELECT attributes['k0'] FROM (SELECT map_from_entries([{'key': 'k0', 'value': 'x'}]) AS attributes)",
    "SELECT attributes[key] FROM spans, (SELECT 'k0' AS key) ORDER BY i LIMIT 2",
    "SELECT main.spans.attributes['k0'] FROM main.spans ORDER BY i LIMIT 2",
    "SELECT list_transform([1], lambda attributes: attributes + 1), attributes['k0'] FROM spans ORDER BY i LIMIT 2",
    "SELECT attributes['k0'] FROM spans, range(2) ORDER BY i LIMIT 2",
])
def test_queries_the_rewrite_cannot_take_as_meant_run_as_written(con, sql):
    assert stored_reads(con, sql) is None
    assert len(run_query(con, sql, file_query_limits(10_000)).rows) == len(con.sql(sql).fetchall())


def test_a_store_of_an_older_version_without_the_stored_view_answers_through_the_view():
    con = duckdb.connect()
    con.execute("CREATE TABLE span_rows AS SELECT [{'key': 'k', 'value': 'v'}] AS attributes")
    con.execute("CREATE VIEW spans AS SELECT * REPLACE (map_from_entries(attributes) AS attributes) FROM span_rows")
    sql = "SELECT attributes['k'] AS v FROM spans"
    assert stored_reads(con, sql) is None
    assert run_query(con, sql, file_query_limits(10)).rows == [["v"]]


def test_an_attribute_group_by_over_many_spans_does_not_build_the_maps():
    """What the rewrite is for: measured side by side (bench/query10m.py has the 10M-span figures)."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE span_rows AS SELECT [{'key': 'k' || j, 'value': 'v' || ((i * 7 + j) % 13)}
                   FOR j IN range(12)] AS attributes, [] :: STRUCT(key VARCHAR, value VARCHAR)[] AS resource_attributes,
                   [] :: STRUCT(key VARCHAR, value VARCHAR)[] AS scope_attributes FROM range(300000) r(i)""")
    con.execute("CREATE TABLE held_spans AS SELECT * FROM span_rows LIMIT 0")
    con.execute(_view_sql("(SELECT * FROM span_rows UNION ALL BY NAME SELECT * FROM held_spans)"))
    sql = "SELECT attributes['k3'] AS v, count(*) FROM spans GROUP BY 1 ORDER BY 1"
    started = time.perf_counter()
    rewritten = run_query(con, sql, file_query_limits(100)).rows
    fast = time.perf_counter() - started
    started = time.perf_counter()
    as_written = [list(r) for r in con.sql(sql).fetchall()]
    slow = time.perf_counter() - started
    assert rewritten == as_written and len(rewritten) == 13
    assert fast < slow / 2, (fast, slow)  # ~10x measured; half leaves room for a busy machine


def test_a_file_of_an_older_version_opened_read_only_gets_the_stored_view(tmp_path):
    from agent_sre.pipeline.storage.store import open_read_only

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE span_rows AS SELECT [{'key': 'k', 'value': 'v'}] AS attributes")
    con.execute("CREATE VIEW spans AS SELECT * REPLACE (map_from_entries(attributes) AS attributes) FROM span_rows")
    con.close()
    con = open_read_only(path)
    try:
        sql = "SELECT attributes['k'] AS v FROM spans"
        assert "spans_stored" in stored_reads(con, sql)
        assert run_query(con, sql, file_query_limits(10)).rows == [["v"]]
    finally:
        con.close()
