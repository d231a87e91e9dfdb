"""The fleet views' SQL (fleet.py) on the current schema (Map, LowCardinality, DateTime64), on the
ClickHouse engine in process: chdb 4.4.0 (ClickHouse 26.9, pinned in pyproject).  The same views over the network, against
18.16 and the compat schema, are in test_fleet_views.py."""

from __future__ import annotations

import re
import time

import pyarrow as pa
import pytest
from chdb import session
from chdb._exceptions import ChdbError

from agent_sre.exporters.clickhouse.factory import batch_id
from agent_sre.exporters.clickhouse.schema import SPAN_COLUMNS, ddl, with_evaluations
from agent_sre.pipeline.cli.fleet import FleetSqlError, fleet_cost_tables, fleet_incidents, fleet_sli_minutes
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.fleet import SPAN_TABLES_SQL, fleet_query, spans_source
from agent_sre.pipeline.storage.sandbox import QueryLimits
from agent_sre.processors.sli.factory import SliConfig, builtin_slis
from agent_sre.processors.slo.factory import Objective, evaluate, window_end
from tests.exporters.clickhouse import resent
from tests.exporters.clickhouse.resent import tool_call


class ChdbStore:
    """FleetStore's reading methods over a chdb session (parameters substituted as clickhouse-driver does)."""

    def __init__(self, sess):
        self.sess = sess

    def execute(self, sql: str, params: dict | None = None, columnar: bool = False, with_column_types: bool = False,
                **_kw):
        from clickhouse_driver.util.escape import escape_params

        text = sql % escape_params(params, None) if params else sql
        try:
            table = self.sess.query(text, "ArrowTable")
        except ChdbError as exc:  # as FleetStore maps the server's error
            code = re.search(r"Code: (\d+)", str(exc))
            raise FleetSqlError(str(exc), int(code.group(1)) if code else 0) from None
        columns = [c.to_pylist() for c in table.columns]
        out = columns if columnar else list(zip(*columns, strict=True))
        return (out, [(f.name, str(f.type)) for f in table.schema]) if with_column_types else out

    def spans_source(self) -> str:
        return spans_source(dict(self.execute(SPAN_TABLES_SQL)))

    def arrow(self, sql: str, params: dict, names: list[str]) -> pa.Table:
        return pa.table(dict(zip(names, self.execute(sql, params, columnar=True), strict=True)))

    def has_column(self, table: str, column: str) -> bool:
        return bool(self.execute("SELECT count() FROM system.columns WHERE database = 'fleet' AND table = %(t)s "
                                 "AND name = %(c)s", {"t": table, "c": column})[0][0])


@pytest.fixture
def store(tmp_path):
    sess = session.Session(str(tmp_path / "chdb"))
    for statement in ddl("fleet", current=True, ttl_days=30):
        sess.query(statement)
    sess.query("USE fleet")
    yield ChdbStore(sess)
    sess.close()


def insert(store: ChdbStore, rows: list[dict]) -> None:
    batch = pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)
    bid = batch_id(batch, "traces")
    data = with_evaluations(batch).select([c for c in SPAN_COLUMNS if c != "batch_id"])
    data = data.append_column("batch_id", pa.array([bid] * batch.num_rows))  # noqa: F841 - read by chdb
    store.sess.query(f"INSERT INTO fleet.spans_raw ({', '.join(SPAN_COLUMNS)}) SELECT * FROM Python(data)")


def test_slo_rows_on_current_clickhouse_count_every_pipeline_and_skip_replays(store):
    end = (int(time.time()) // 60 - 10) * 60 * 10**9
    insert(store, [tool_call("a", i, end + i, failed=i < 1) for i in range(4)])  # one pipeline's batch
    insert(store, [tool_call("a", 10 + i, end + i, failed=i < 2) for i in range(6)])  # another's
    insert(store, [tool_call("a", 20, end, failed=True, replay=True)])  # a replay's re-run: not an SLI event
    now_minute = window_end(time.time())
    con, skipped = fleet_sli_minutes(store, builtin_slis(SliConfig()), {"tool_call_accuracy": 43200,
                                                                        "hallucination_rate": 60}, now_minute)
    assert skipped == {}  # hallucination_rate too: no spans scored here, so no events of it
    (row,) = evaluate(lambda sql, params: con.execute(sql, params).fetchall(),
                      [Objective(name="tools", sli="tool_call_accuracy", target=0.9)], now_minute)
    assert (row["agent_id"], row["events"], row["bad_events"], row["sli_value"]) == ("a", 10, 3, 0.7)


def _evaluation(name: str, score: str | None) -> dict:
    """A gen_ai.evaluation.result span event of evaluator ``name`` (its score left out when None)."""
    return {"time_ns": 1, "name": "gen_ai.evaluation.result", "attributes": [("gen_ai.evaluation.name", name)] + (
        [("gen_ai.evaluation.score.value", score)] if score is not None else [])}


def test_hallucination_rate_on_current_clickhouse_reads_scores_from_attributes_and_evaluation_events(store):
    """As one pipeline's store counts it: a span's score is its ``eval.hallucination.score`` attribute, else
    the score of its hallucination evaluator's result event (kept in ``evaluations``); good below 0.5."""
    import duckdb

    from agent_sre.pipeline.storage.rollups import _span_select
    from agent_sre.pipeline.storage.store import to_storage

    end = (int(time.time()) // 60 - 10) * 60 * 10**9

    def span(i: int, attrs: list | None = None, events: list | None = None) -> dict:
        return {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "agent_id": "a", "span_role": "llm",
                "start_ns": end - 10**9, "end_ns": end + i, "duration_ns": 10**9, "attributes": attrs or [],
                "events": events}

    score = "eval.hallucination.score"
    rows = [span(0, [(score, "0.2")]),  # good
            span(1, [(score, "0.9")]),  # bad
            span(2, events=[_evaluation("relevance", "0.9"), _evaluation("hallucination", "0.1")]),  # good
            span(3, events=[_evaluation("relevance", "0.1")]),  # not scored for hallucination: no event
            span(4, [(score, "n/a")]),  # not a number: no event
            span(5, [(score, "0.7")], [_evaluation("hallucination", "0.1")]),  # the attribute first: bad
            span(6, events=[_evaluation("hallucination", None)]),  # no score: no event
            span(7)]
    insert(store, rows)
    con, skipped = fleet_sli_minutes(store, builtin_slis(SliConfig()), {"hallucination_rate": 60},
                                     window_end(time.time()))
    assert skipped == {}
    assert con.execute("SELECT agent_id, sum(good), sum(total) FROM sli_minutes GROUP BY ALL").fetchall() == [("a", 2, 4)]
    (hallucination,) = [x for x in builtin_slis(SliConfig()) if x.name == "hallucination_rate"]
    local = duckdb.connect()
    local.register("_counted", to_storage(pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)))
    assert local.execute(f"SELECT agent_id, good, total FROM ({_span_select([hallucination])})").fetchall() == [
        ("a", 2, 4)]


def _task(agent: str, trace: int, end_ns: int, cost: float, delegations: int = 0) -> list[dict]:
    """One task: its agent_task root, a priced LLM call and ``delegations`` delegation spans."""
    t = f"{trace:032x}"
    rows = [{"trace_id": t, "span_id": f"{trace:012x}0000", "agent_id": agent, "agent_version": "1.0",
             "span_role": "agent_task", "start_ns": end_ns - 5 * 10**9, "end_ns": end_ns, "duration_ns": 5 * 10**9},
            {"trace_id": t, "span_id": f"{trace:012x}0001", "agent_id": agent, "span_role": "llm",
             "start_ns": end_ns - 4 * 10**9, "end_ns": end_ns - 10**9, "cost_usd": cost}]
    rows += [{"trace_id": t, "span_id": f"{trace:012x}{2 + d:04x}", "agent_id": agent, "span_role": "delegation",
              "start_ns": end_ns - 3 * 10**9, "end_ns": end_ns - 2 * 10**9} for d in range(delegations)]
    return rows


def test_task_slis_on_current_clickhouse_come_from_a_per_trace_rollup_of_the_spans(store):
    end = (int(time.time()) // 60 - 10) * 60 * 10**9
    a = _task("a", 1, end, 0.5) + _task("a", 2, end, 1.5, delegations=4) + _task("a", 3, end + 60 * 10**9, 0.25)
    insert(store, a)
    insert(store, _task("a", 2, end, 1.5, delegations=4))  # a client's re-send: one task, once
    insert(store, _task("b", 4, end, 3.0))
    just_ended = int(time.time() * 1e9) - 10**9  # its trace is not quiet yet: counted a minute later
    insert(store, _task("b", 5, just_ended, 0.1))
    now_minute = window_end(time.time())
    con, skipped = fleet_sli_minutes(store, builtin_slis(SliConfig()), {"cost_per_task": 120,
                                                                        "delegation_chain_depth": 120}, now_minute)
    assert not skipped
    rows = con.execute("SELECT sli, agent_id, agent_version, sum(good), sum(total) FROM sli_minutes "
                       "GROUP BY ALL ORDER BY ALL").fetchall()
    # By hand: cost_per_task good at <= $1.00 (a: 0.5, 1.5, 0.25; b: 3.0), delegation depth good at <= 3.
    assert rows == [("cost_per_task", "a", "1.0", 2, 3), ("cost_per_task", "b", "1.0", 0, 1),
                    ("delegation_chain_depth", "a", "1.0", 2, 3), ("delegation_chain_depth", "b", "1.0", 1, 1)]


def test_cost_minutes_on_current_clickhouse_come_from_the_spans(store):
    end = (int(time.time()) // 60 - 5) * 60 * 10**9
    tenants = [[("tenant.id", "acme")], [("service.name", "s"), ("tenant.id", "globex")], []]
    insert(store, [{"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "agent_id": "a", "span_role": "llm",
                    "model": "m", "start_ns": end - 10**9, "end_ns": end, "cost_usd": 0.25,
                    "resource_attributes": tenants[i]} for i in range(3)])
    con = fleet_cost_tables(store, int(time.time() // 60) - 60, time.time_ns() - 3600 * 10**9)
    assert con.execute("SELECT agent_id, model, tenant, sum(cost_usd), sum(spans) FROM cost_minutes GROUP BY ALL "
                       "ORDER BY tenant").fetchall() == [("a", "m", "", 0.25, 1), ("a", "m", "acme", 0.25, 1),
                                                         ("a", "m", "globex", 0.25, 1)]
    assert con.execute("SELECT count(*), sum(cost_usd) FROM span_rows").fetchall() == [(3, 0.75)]


def test_a_request_sent_three_times_is_counted_once_by_fleet_sql_and_every_span_view(store):
    """One client's request (20 priced LLM spans, 10 tool calls) re-sent after lost OKs: stored by p0,
    then inside p1's batch with other spans, then by p0 again with others -- three batch ids, three
    copies before merges (merges stopped).  Ad-hoc fleet SQL, the SLO view's SLI minutes, and the cost
    view's minutes and running-task spans count each span once."""
    end = (int(time.time()) // 60 - 3) * 60 * 10**9
    store.sess.query("SYSTEM STOP MERGES fleet.spans_raw")
    for rows in resent.three_batches(end):
        insert(store, rows)
    assert store.execute("SELECT count() FROM spans_raw") == [(3 * resent.SPANS + resent.OTHER_SPANS,)]  # stored

    limits = QueryLimits(max_rows=100, timeout_s=10, max_result_bytes=1 << 20, max_memory_bytes=1 << 30)
    answer = fleet_query(store, "SELECT count(), uniqExact(span_id), sum(cost_usd) FROM spans", limits)
    assert answer.rows == [[35, 35, resent.COST + resent.OTHER_COST]]

    now_minute = window_end(time.time())
    con, _ = fleet_sli_minutes(store, builtin_slis(SliConfig()), {"tool_call_accuracy": 60}, now_minute)
    (row,) = evaluate(lambda sql, params: con.execute(sql, params).fetchall(),
                      [Objective(name="tools", sli="tool_call_accuracy", target=0.9)], now_minute)
    assert (row["events"], row["bad_events"]) == (11, 2)

    con = fleet_cost_tables(store, int(time.time() // 60) - 60, time.time_ns() - 3600 * 10**9)
    assert con.execute("SELECT sum(cost_usd), sum(spans) FROM cost_minutes").fetchall() == [(7.0, 24)]
    assert con.execute("SELECT count(*), sum(cost_usd) FROM span_rows").fetchall() == [(24, 7.0)]
    assert store.execute("SELECT sum(spans) FROM rollup_minute WHERE span_role = 'llm'") == [(64,)]  # copies


def test_incidents_on_current_clickhouse_are_one_row_per_pipelines_incident(store):
    def ev(t: int, state: str, inc_state: str, opened: int, agent: str) -> str:
        return (f"({t}, 'incident', '{state}', 'page', 'INC-00001 P2', 'fp1', 'incident INC-00001 (P2) {inc_state}: "
                f"x', map('agent_id', '{agent}', 'incident_id', 'INC-00001', 'priority', 'P2', 'incident_state', "
                f"'{inc_state}'), {opened}, 'b{t}')")

    t0 = time.time_ns() - 60 * 10**9  # recent: the events table's TTL drops old rows
    store.sess.query("INSERT INTO fleet.events VALUES " + ", ".join([
        ev(t0, "firing", "open", t0, "a"), ev(t0 + 2, "resolved", "resolved", t0, "a"),  # pipeline 1's INC-00001
        ev(t0 + 1, "firing", "open", t0 + 1, "b")]))  # pipeline 2's INC-00001
    assert [(i["agent_id"], i["state"], i["opened_ns"], i["resolved_ns"]) for i in fleet_incidents(store, True)] == [
        ("b", "open", t0 + 1, None), ("a", "resolved", t0, t0 + 2)]
    assert [i["agent_id"] for i in fleet_incidents(store, False)] == ["b"]
