"""The current schema (Map, LowCardinality, DateTime64, TTL, a bloom-filter skip index, dedup tokens,
SummingMergeTree rollups, spans kept once per span id) and the fleet questions, on the ClickHouse engine
in process: chdb 4.4.0 (ClickHouse 26.9, pinned in pyproject).  The network path is tested against a real 18.16 server in
test_clickhouse_server.py."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest
from chdb import session

from agent_sre.exporters.clickhouse.factory import batch_id
from agent_sre.exporters.clickhouse.schema import SPAN_COLUMNS, ddl, with_evaluations
from agent_sre.pipeline.cli.fleet import FLEET_QUESTIONS
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.fleet import spans_source


@pytest.fixture
def db(tmp_path):
    sess = session.Session(str(tmp_path / "chdb"))
    for statement in ddl("fleet", current=True, ttl_days=30):
        sess.query(statement)
    yield sess
    sess.close()


def spans(n: int, agent: str, start_ns: int, errors_every: int = 0) -> pa.Table:
    rows = [{"trace_id": f"{hash((agent, i // 4)) & (2**64 - 1):032x}", "span_id": f"{i:016x}", "agent_id": agent,
             "start_ns": start_ns + i, "duration_ns": 1_000_000 * (i % 7 + 1), "model": "gpt-4o", "span_role": "llm",
             "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.25,
             "status_code": "error" if errors_every and i % errors_every == 0 else "ok",
             "attributes": [("gen_ai.system", "openai"), ("tenant", agent)]} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)


def insert(db, batch: pa.Table) -> None:
    """What the exporter's insert does on current ClickHouse: the batch id as row column and dedup token."""
    bid = batch_id(batch, "traces")
    rows = with_evaluations(batch).select([c for c in SPAN_COLUMNS if c != "batch_id"])
    rows = rows.append_column("batch_id", pa.array([bid] * batch.num_rows))  # noqa: F841 - read by chdb
    db.query(f"INSERT INTO fleet.spans_raw ({', '.join(SPAN_COLUMNS)}) SETTINGS insert_deduplication_token = "
             f"'{bid}' SELECT * FROM Python(rows)")


def one(db, sql: str) -> list[list]:
    return json.loads(db.query(sql, "JSONCompact").data())["data"]


def test_the_schema_uses_what_current_clickhouse_offers(db):
    create = db.query("SHOW CREATE TABLE fleet.spans_raw", "TabSeparatedRaw").data()
    for feature in ("Map(LowCardinality(String), String)", "LowCardinality(Nullable(String))", "DateTime64(9, 'UTC')",
                    "TTL toDateTime(start_time) + toIntervalDay(30)", "TYPE bloom_filter(0.001)",
                    "ENGINE = ReplacingMergeTree", "PRIMARY KEY (agent_id, start_time)",
                    "ORDER BY (agent_id, start_time, trace_id, span_id)", "non_replicated_deduplication_window = 10000"):
        assert feature in create, feature
    assert "FROM fleet.spans_raw\nFINAL" in db.query("SHOW CREATE TABLE fleet.spans", "TabSeparatedRaw").data()
    assert "SummingMergeTree" in db.query("SHOW CREATE TABLE fleet.rollup_minute", "TabSeparatedRaw").data()
    version = one(db, "SELECT version()")[0][0]
    assert tuple(int(p) for p in version.split(".")[:2]) >= (22, 2), version  # the engine these tests cover


def test_a_retried_batch_is_counted_once_in_spans_and_rollups(db):
    now = time.time_ns()
    first, second = spans(100, "a1", now), spans(50, "a2", now)
    insert(db, first)
    insert(db, first)  # the retry of a batch whose answer was lost
    insert(db, second)
    assert one(db, "SELECT count() FROM fleet.spans_raw") == [[150]]  # the token dropped the retry
    assert one(db, "SELECT sum(spans), sum(input_tokens) FROM fleet.rollup_minute") == [[150, 1500]]


def test_a_request_sent_three_times_in_different_batches_is_one_row_per_span(db):
    """A client re-sends a request whose OK it lost: once alone, then inside other pipelines' batches
    (three batch ids: no token or batch check drops them).  Before any merge (merges stopped) the copies
    are in spans_raw, and ``spans``, FINAL and the fleet questions count each span once; merges then
    keep one row.  ``rollup_minute`` sums every copy: what the views no longer read."""
    now = time.time_ns()
    resent = spans(30, "a1", now)
    db.query("SYSTEM STOP MERGES fleet.spans_raw")
    insert(db, resent)  # pipeline p0
    insert(db, pa.concat_tables([spans(10, "a2", now + 100), resent]))  # p1, with another client's spans
    insert(db, pa.concat_tables([resent, spans(5, "a3", now + 200)]))  # p0 again, after its restart
    assert one(db, "SELECT count() FROM fleet.spans_raw") == [[105]]  # 3 copies of 30, stored
    assert one(db, "SELECT count(), uniqExact(agent_id, span_id), sum(cost_usd) FROM fleet.spans") == [[45, 45, 11.25]]
    assert one(db, f"SELECT count() FROM fleet.{spans_source({'spans': 'View'})}") == [[45]]
    cost = one(db, FLEET_QUESTIONS["cost_by_agent_model"].format(hours=1).replace("FROM spans", "FROM fleet.spans"))
    assert [(r[0], r[2], r[5]) for r in cost] == [("a1", 30, 7.5), ("a2", 10, 2.5), ("a3", 5, 1.25)]
    errors = one(db, FLEET_QUESTIONS["error_rate_by_agent"].format(hours=1).replace("FROM spans", "FROM fleet.spans"))
    assert [(r[0], r[1]) for r in errors] == [("a1", 30), ("a2", 10), ("a3", 5)]
    assert one(db, "SELECT sum(spans) FROM fleet.rollup_minute") == [[105]]  # what each insert brought
    db.query("SYSTEM START MERGES fleet.spans_raw")
    db.query("OPTIMIZE TABLE fleet.spans_raw FINAL")
    assert one(db, "SELECT count(), sum(cost_usd) FROM fleet.spans_raw") == [[45, 11.25]]  # merged: one row each


def test_fleet_questions_answer_over_spans(db):
    now = time.time_ns()
    insert(db, spans(40, "a1", now, errors_every=4))
    insert(db, spans(10, "a2", now))
    cost = one(db, FLEET_QUESTIONS["cost_by_agent_model"].format(hours=1).replace("FROM spans", "FROM fleet.spans"))
    assert [r[:5] for r in cost] == [["a1", "gpt-4o", 40, 400, 80], ["a2", "gpt-4o", 10, 100, 20]]
    assert [r[5] for r in cost] == [10, 2.5]
    errors = one(db, FLEET_QUESTIONS["error_rate_by_agent"].format(hours=1).replace("FROM spans", "FROM fleet.spans"))
    assert [(r[0], r[3]) for r in errors] == [("a1", 0.25), ("a2", 0)]
    slow = one(db, FLEET_QUESTIONS["slowest_llm_calls"].format(hours=1).replace("FROM spans", "FROM fleet.spans"))
    assert len(slow) == 20 and slow[0][4] == 7.0


def test_a_trace_lookup_is_pruned_by_the_skip_index(db):
    now = time.time_ns()
    for i in range(4):
        insert(db, spans(5000, f"agent{i}", now + i * 10_000))
    trace = spans(1, "agent2", now + 20_000).column("trace_id")[0].as_py()
    plan = db.query(f"EXPLAIN indexes = 1 SELECT * FROM fleet.spans_raw WHERE trace_id = '{trace}'",
                    "TabSeparatedRaw").data()
    skip = plan[plan.index("Name: trace_id_bloom"):].splitlines()
    kept, total = (int(x) for x in next(line for line in skip if "Parts:" in line).split(":")[1].split("/"))
    assert kept < total == 4, plan  # the parts whose bloom filter cannot hold the trace are not read
    assert one(db, f"SELECT count(), any(attributes['tenant']) FROM fleet.spans WHERE trace_id = '{trace}'") \
        == [[4, "agent2"]]


def test_a_current_table_made_before_evaluations_gets_the_column_where_a_new_table_has_it(tmp_path):
    from agent_sre.exporters.clickhouse.schema import missing_columns, spans_view

    sess = session.Session(str(tmp_path / "chdb"))
    try:
        for statement in ddl("fleet", current=True, ttl_days=30):
            sess.query(statement.replace(",\n  evaluations Map(LowCardinality(String), String)", ""))
        described = json.loads(sess.query("DESCRIBE TABLE fleet.spans_raw", "JSONCompact").data())["data"]
        present = {r[0] for r in described}
        assert "evaluations" not in present
        for statement in missing_columns("fleet", "spans_raw", True, present):
            sess.query(statement)
        assert missing_columns("fleet", "spans_raw", True, present | {"evaluations"}) == []
        sess.query("DROP TABLE fleet.spans")
        sess.query(spans_view("fleet"))
        for statement in ddl("fresh", current=True, ttl_days=30):  # one chdb session per process: another db
            sess.query(statement)
        fresh = json.loads(sess.query("DESCRIBE TABLE fresh.spans_raw", "JSONCompact").data())["data"]
        upgraded = json.loads(sess.query("DESCRIBE TABLE fleet.spans_raw", "JSONCompact").data())["data"]
        assert [r[:2] for r in upgraded] == [r[:2] for r in fresh]
        insert(sess, spans(3, "a", time.time_ns()))
        assert sess.query("SELECT count() FROM fleet.spans WHERE evaluations = map()", "CSV").data().strip() == "3"
    finally:
        sess.close()
