"""The clickhouse exporter against a real ClickHouse 18.16 (Debian's clickhouse-server; the compat schema):
the network path, batching through the exporter helper, merged inserts, retries across an outage,
exactly-once per batch (also when a restart merges the pending batches differently), and fleet SQL over
two pipelines."""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
import pytest

from agent_sre.pipeline.cli.common import CliError
from tests.conftest import RunningPipeline, eventually, pipeline_yaml, start_on_free_ports
from tests.otlp_builders import kv, request

pytestmark = pytest.mark.slow


def exporter_yaml(server, db: str, **extra: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in {"create_schema": "true", **extra}.items())
    return (f"  clickhouse:\n    endpoint: {server.url(db)}\n"
            "    retry_on_failure: {initial_interval: 100ms, max_interval: 500ms}\n" + lines)


@pytest.fixture
def pipelines(tmp_path):
    started: list[RunningPipeline] = []

    def start(server, db: str, name: str, **extra: str) -> RunningPipeline:
        data = tmp_path / name
        data.mkdir()
        service, ports, _ = start_on_free_ports(lambda p, _a: pipeline_yaml(
            p, data, exporters="duckdb, clickhouse", extra=exporter_yaml(server, db, **extra)))
        started.append(RunningPipeline(service, ports, data))
        return started[-1]

    yield start
    for p in started:
        p.service.shutdown()


def send(p: RunningPipeline, n: int, agent: str) -> None:
    p.service.receivers[0].ingest.export(request(n, attrs={"agent.did": agent, "gen_ai.request.model": "m1",
                                                          "gen_ai.usage.input_tokens": 3}), "test")


def count(server, db: str, sql: str = "SELECT count() FROM {db}.spans") -> int:
    """The answer, or -1 while the exporter has not created the schema yet."""
    from clickhouse_driver.errors import ServerException

    try:
        return server.client().execute(sql.format(db=db))[0][0]
    except ServerException as exc:
        if exc.code in (60, 81):  # UNKNOWN_TABLE, UNKNOWN_DATABASE
            return -1
        raise


def test_two_pipelines_are_counted_once_each_in_fleet_sql(clickhouse, pipelines, capsys):
    a, b = pipelines(clickhouse, "fleet2", "a"), pipelines(clickhouse, "fleet2", "b")
    for _ in range(5):
        send(a, 200, "agent-a")
        send(b, 300, "agent-b")
    assert eventually(lambda: count(clickhouse, "fleet2") == 2500, timeout=30), count(clickhouse, "fleet2")
    rows = clickhouse.client().execute("SELECT agent_id, count(), sum(input_tokens) FROM fleet2.spans "
                                       "GROUP BY agent_id ORDER BY agent_id")
    assert rows == [("agent-a", 1000, 3000), ("agent-b", 1500, 4500)]
    expected = [("agent-a", 1000, 3000), ("agent-b", 1500, 4500)]
    rollup = eventually(lambda: clickhouse.client().execute(  # the view's part lands just after the spans' part
        "SELECT agent_id, sum(spans), sum(input_tokens) FROM fleet2.rollup_minute GROUP BY agent_id "
        "ORDER BY agent_id") == expected, timeout=10)
    assert rollup
    from agent_sre.pipeline.cli.fleet import FLEET_QUESTIONS, fleet_query, run_fleet_sql

    args = argparse.Namespace(store=clickhouse.url("fleet2"), max_rows=1000, format="json")
    assert run_fleet_sql(args, "SELECT agent_id, count() AS n FROM spans GROUP BY agent_id ORDER BY agent_id") == 0
    out = capsys.readouterr().out
    assert '"agent-a",\n      1000' in out and '"agent-b",\n      1500' in out
    since_2023 = 30 * 24 * 365  # hours: the test spans start in 2023
    cost = fleet_query(clickhouse.url("fleet2"), FLEET_QUESTIONS["cost_by_agent_model"].format(hours=since_2023), 100)
    assert [r[:4] for r in cost["rows"]] == [["agent-a", "m1", 1000, 3000], ["agent-b", "m1", 1500, 4500]]
    errors = fleet_query(clickhouse.url("fleet2"), FLEET_QUESTIONS["error_rate_by_agent"].format(hours=since_2023), 100)
    assert [(r[0], r[1], r[3]) for r in errors["rows"]] == [("agent-a", 1000, 0.0), ("agent-b", 1500, 0.0)]
    slow = fleet_query(clickhouse.url("fleet2"), FLEET_QUESTIONS["slowest_llm_calls"].format(hours=since_2023), 100)
    assert slow["columns"] == ["agent_id", "model", "trace_id", "span_id", "duration_ms"]


def test_a_retried_batch_is_stored_once(clickhouse, pipelines):
    p = pipelines(clickhouse, "retry", "a")
    exporter = p.service.exporters["clickhouse"]
    sent: list[pa.Table] = []
    real_send = exporter.send
    exporter.send = lambda batch: (sent.append(batch), real_send(batch))[1]
    send(p, 50, "agent-r")
    assert eventually(lambda: count(clickhouse, "retry") == 50)
    assert exporter.deduplicated == 0 and sum(t.num_rows for t in sent) == 50
    # The same batches again, as a retry after a lost answer or a restart from the persistent queue sends them:
    queued = sum(len(set(t.column("batch_id").to_pylist())) for t in sent)  # each send: merged queued batches
    for batch in list(sent):
        assert real_send(batch).ok
    assert exporter.deduplicated == queued >= 1
    assert count(clickhouse, "retry") == 50
    assert eventually(lambda: count(clickhouse, "retry", "SELECT sum(spans) FROM {db}.rollup_minute") == 50)
    time.sleep(0.5)
    assert count(clickhouse, "retry", "SELECT sum(spans) FROM {db}.rollup_minute") == 50


def test_spans_sent_during_an_outage_arrive_once_after_it_in_merged_inserts(clickhouse, pipelines):
    p = pipelines(clickhouse, "outage", "a", sending_queue="{num_consumers: 1}")
    send(p, 10, "agent-o")
    assert eventually(lambda: count(clickhouse, "outage") == 10)
    clickhouse.stop()
    try:
        for _ in range(6):
            send(p, 50, "agent-o")  # acknowledged by the pipeline (duckdb), queued for ClickHouse
            time.sleep(0.05)  # past the batch processor's 5 ms timeout: a queued batch each
        time.sleep(1.0)  # a few failed attempts, retried
    finally:
        clickhouse.start_again()
    assert eventually(lambda: count(clickhouse, "outage") == 310, timeout=30), count(clickhouse, "outage")
    assert count(clickhouse, "outage", "SELECT uniqExact(span_id) FROM {db}.spans") == 310
    # The consumer took the first queued batch (and what came within merge_timeout) and retried it; the
    # rest waited and went out as one insert after the outage: at most 3 inserts for 7 queued batches.
    exporter = p.service.exporters["clickhouse"]
    assert exporter.inserts <= 3 < count(clickhouse, "outage", "SELECT uniqExact(batch_id) FROM {db}.spans")
    retries = [line for line in p.metrics().splitlines()
               if line.startswith('agent_sre_exporter_retries_total{exporter="clickhouse"}')]
    assert retries and float(retries[0].split()[-1]) >= 1  # the outage was met and retried, not skipped


def test_fleet_sql_is_read_only_and_row_limited(clickhouse, pipelines, capsys):
    from agent_sre.pipeline.cli.fleet import run_fleet_sql

    p = pipelines(clickhouse, "ro", "a")
    send(p, 30, "agent-x")
    assert eventually(lambda: count(clickhouse, "ro") == 30)
    args = argparse.Namespace(store=clickhouse.url("ro"), max_rows=5, format="json")
    assert run_fleet_sql(args, "SELECT span_id FROM spans") == 0
    out = capsys.readouterr().out
    assert '"row_count": 5' in out and '"truncated": true' in out
    for sql in ("DROP TABLE spans", "INSERT INTO spans (trace_id) VALUES ('x')", "SET max_threads = 1"):
        with pytest.raises(CliError, match="read-only|readonly"):
            run_fleet_sql(args, sql)
    assert count(clickhouse, "ro") == 30



def test_a_persistent_queue_delivers_after_a_restart_once(clickhouse, pipelines, tmp_path):
    queue = tmp_path / "queue"
    p = pipelines(clickhouse, "restart", "a", sending_queue=f"{{storage: {{directory: {queue}}}, drain_timeout: 0s}}")
    send(p, 20, "agent-p")
    assert eventually(lambda: count(clickhouse, "restart") == 20)
    clickhouse.stop()
    try:
        send(p, 70, "agent-p")  # acknowledged, on disk in the exporter's queue, not in ClickHouse
        p.service.shutdown()
    finally:
        clickhouse.start_again()
    assert count(clickhouse, "restart") == 20
    pipelines(clickhouse, "restart", "b", sending_queue=f"{{storage: {{directory: {queue}}}}}")
    assert eventually(lambda: count(clickhouse, "restart") == 90, timeout=30), count(clickhouse, "restart")
    time.sleep(0.5)
    assert count(clickhouse, "restart", "SELECT uniqExact(span_id) FROM {db}.spans") == 90 == count(clickhouse, "restart")


def test_a_restart_that_merges_the_pending_batches_differently_stores_each_batch_once(clickhouse, pipelines):
    """Batches a, b went out in one insert whose answer was lost; after a restart the queue holds a, b, c and
    merges b with c: only c is new.  Each row carries its own batch's id, so the check finds a and b."""
    from agent_sre.exporters.clickhouse.factory import with_batch_ids

    p = pipelines(clickhouse, "regroup", "a")
    exporter = p.service.exporters["clickhouse"]
    first = [spans_table(n, f"agent-{k}", 1_700_000_000_000_000_000 + k * 10**9) for k, n in enumerate((30, 40, 50))]
    a, b, c = first
    assert exporter.send(with_batch_ids([a, b], "traces")).ok
    assert count(clickhouse, "regroup") == 70
    assert exporter.send(with_batch_ids([b, c], "traces")).ok
    assert exporter.deduplicated == 1 and count(clickhouse, "regroup") == 120
    assert exporter.send(with_batch_ids([c, a, b], "traces")).ok and exporter.send(b).ok
    assert exporter.deduplicated == 5 and count(clickhouse, "regroup") == 120
    assert count(clickhouse, "regroup", "SELECT uniqExact(agent_id, span_id) FROM {db}.spans") == 120
    assert eventually(lambda: count(clickhouse, "regroup", "SELECT sum(spans) FROM {db}.rollup_minute") == 120)


def spans_table(n: int, agent: str, start_ns: int) -> pa.Table:
    from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA

    return pa.Table.from_pylist([{"trace_id": f"{hash(agent) & 0xFFFF:028x}{i // 4:04x}", "span_id": f"{i:016x}",
                                  "agent_id": agent, "start_ns": start_ns + i, "attributes": [("k", str(i))]}
                                 for i in range(n)], schema=SPAN_SCHEMA)


def test_a_request_sent_three_times_by_two_pipelines_is_counted_once_on_18_16(clickhouse, pipelines):
    """A client's request re-sent after lost OKs, to p0 alone, to p1 inside another client's batch, to p0
    again with others: three batch ids, so the batch check inserts every copy into spans_raw.  Fleet SQL
    over ``spans``, the SLO view's SLI minutes and the cost view's minutes and running-task spans count
    each span once (FINAL), before and after 18.16 merges the copies away."""
    from agent_sre.exporters.clickhouse.factory import with_batch_ids
    from agent_sre.pipeline.cli.fleet import fleet_cost_tables, fleet_query, fleet_sli_minutes
    from agent_sre.processors.sli.factory import SliConfig, builtin_slis
    from agent_sre.processors.slo.factory import Objective, evaluate, window_end
    from tests.exporters.clickhouse import resent

    p0, p1 = pipelines(clickhouse, "copies", "p0"), pipelines(clickhouse, "copies", "p1")
    end = (int(time.time()) // 60 - 3) * 60 * 10**9
    for p, rows in zip((p0, p1, p0), resent.three_batches(end), strict=True):
        assert p.service.exporters["clickhouse"].send(with_batch_ids([resent.table(rows)], "traces")).ok
    assert sum(p.service.exporters["clickhouse"].deduplicated for p in (p0, p1)) == 0  # no batch was repeated
    url, unique = clickhouse.url("copies"), resent.SPANS + resent.OTHER_SPANS
    for merged in (False, True):
        raw = count(clickhouse, "copies", "SELECT count() FROM {db}.spans_raw")
        assert raw == (unique if merged else 3 * resent.SPANS + resent.OTHER_SPANS)
        answer = fleet_query(url, "SELECT count(), uniqExact(span_id), sum(cost_usd) FROM spans", 10)
        assert answer["rows"] == [[unique, unique, resent.COST + resent.OTHER_COST]]
        now_minute = window_end(time.time())
        con, _ = fleet_sli_minutes(url, builtin_slis(SliConfig()), {"tool_call_accuracy": 60}, now_minute)
        (row,) = evaluate(lambda sql, params, con=con: con.execute(sql, params).fetchall(),
                          [Objective(name="tools", sli="tool_call_accuracy", target=0.9)], now_minute)
        assert (row["events"], row["bad_events"]) == (11, 2)
        con = fleet_cost_tables(url, int(time.time() // 60) - 60, time.time_ns() - 3600 * 10**9)
        assert con.execute("SELECT sum(cost_usd), sum(spans) FROM cost_minutes").fetchall() == [(7.0, 24)]
        assert con.execute("SELECT count(*), sum(cost_usd) FROM span_rows").fetchall() == [(24, 7.0)]
        clickhouse.client().execute("OPTIMIZE TABLE copies.spans_raw FINAL")
    # rollup_minute sums what each insert brought: the copies too (the views no longer read it)
    assert count(clickhouse, "copies", "SELECT sum(spans) FROM {db}.rollup_minute WHERE span_role = 'llm'") == 64


def legacy_ddl(db: str) -> list[str]:
    """The compat schema as an older version created it: ``spans`` a MergeTree, the rollup view reading it."""
    from agent_sre.exporters.clickhouse.schema import RAW_SPANS, SPANS_KEY, ddl

    return [s.replace("ReplacingMergeTree", "MergeTree").replace(SPANS_KEY, "ORDER BY (agent_id, start_time)")
            .replace(f"{db}.{RAW_SPANS}", f"{db}.spans") for s in ddl(db, False, 30) if "CREATE VIEW" not in s]


def test_an_older_versions_spans_table_is_written_read_as_it_is_and_moved_as_the_readme_says(
        clickhouse, pipelines, caplog):
    """``spans`` created by an older version (a MergeTree: ClickHouse cannot change its engine): the exporter
    says so and goes on inserting into it, creates no second table, and fleet SQL and the views read it
    without FINAL (every copy counted, as before).  Then the README's move: every row once in spans_raw,
    read through the view, the rollups rebuilt, new spans into spans_raw."""
    from agent_sre.pipeline.cli.fleet import fleet_cost_tables, fleet_query

    client = clickhouse.client()
    for statement in legacy_ddl("old"):
        client.execute(statement)
    with caplog.at_level("WARNING"):
        a = pipelines(clickhouse, "old", "a")
        send(a, 40, "agent-l")
        assert eventually(lambda: count(clickhouse, "old") == 40)
    assert "old.spans is a MergeTree table created by an older agent-sre" in caplog.text
    assert [t for (t,) in client.execute("SHOW TABLES FROM old")] == ["events", "logs", "metrics", "rollup_minute",
                                                                       "rollup_minute_mv", "spans"]
    assert fleet_query(clickhouse.url("old"), "SELECT count() FROM spans", 10)["rows"] == [[40]]
    con = fleet_cost_tables(clickhouse.url("old"), int(time.time() // 60) - 60, None)
    assert con.execute("SELECT count(*) FROM cost_minutes").fetchall() == [(0,)]  # read: no FINAL error
    a.service.shutdown()
    for sql in ("RENAME TABLE old.spans TO old.spans_v1", "DROP TABLE old.rollup_minute_mv",
                "TRUNCATE TABLE old.rollup_minute"):
        client.execute(sql)
    b = pipelines(clickhouse, "old", "b")
    send(b, 10, "agent-m")
    assert eventually(lambda: count(clickhouse, "old", "SELECT count() FROM {db}.spans_raw") == 10)
    client.execute("INSERT INTO old.spans_raw SELECT * FROM old.spans_v1")
    client.execute("DROP TABLE old.spans_v1")
    assert fleet_query(clickhouse.url("old"), "SELECT agent_id, count() FROM spans GROUP BY agent_id ORDER BY agent_id",
                       10)["rows"] == [["agent-l", 40], ["agent-m", 10]]
    assert eventually(lambda: count(clickhouse, "old", "SELECT sum(spans) FROM {db}.rollup_minute") == 50)


def _scored_request(n: int, agent: str):
    """``n`` spans, each with a hallucination evaluator's result event (score 0.1)."""
    req = request(n, attrs={"agent.did": agent})
    for sp in req.resource_spans[0].scope_spans[0].spans:
        ev = sp.events.add(name="gen_ai.evaluation.result", time_unix_nano=sp.end_time_unix_nano)
        ev.attributes.extend([kv("gen_ai.evaluation.name", "hallucination"), kv("gen_ai.evaluation.score.value", 0.1)])
    return req


def _before_evaluations(client, db: str) -> None:
    """The compat schema as the version before ``evaluations`` created it."""
    from agent_sre.exporters.clickhouse.schema import ddl

    for statement in ddl(db, False, 30):
        client.execute(statement.replace(",\n  evaluations Nested(key String, value String)", ""))
    assert not any("evaluations" in name for (name,) in client.execute(
        f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'spans_raw'"))


def test_a_spans_table_made_before_evaluations_gets_the_column_at_start_and_the_view_shows_it(
        clickhouse, pipelines, caplog):
    client = clickhouse.client()
    _before_evaluations(client, "pre")
    with caplog.at_level("INFO"):
        a = pipelines(clickhouse, "pre", "a")
        a.service.receivers[0].ingest.export(_scored_request(30, "agent-e"), "test")
        assert eventually(lambda: count(clickhouse, "pre") == 30)
    assert "pre.spans_raw: added evaluations" in caplog.text
    from agent_sre.exporters.clickhouse.schema import ddl

    for statement in ddl("fresh", False, 30):
        client.execute(statement)
    # where a new table has it: README's move (INSERT ... SELECT *) lines the columns up
    assert ([r[:2] for r in client.execute("DESCRIBE TABLE pre.spans_raw")]
            == [r[:2] for r in client.execute("DESCRIBE TABLE fresh.spans_raw")])
    assert client.execute("SELECT evaluations.key, evaluations.value FROM pre.spans LIMIT 1") == [
        (["hallucination"], ["0.1"])]


def test_without_create_schema_a_table_made_before_evaluations_gets_spans_without_them(
        clickhouse, pipelines, caplog):
    client = clickhouse.client()
    _before_evaluations(client, "kept")
    with caplog.at_level("INFO"):
        a = pipelines(clickhouse, "kept", "a", create_schema="false")
        a.service.receivers[0].ingest.export(_scored_request(20, "agent-k"), "test")
        assert eventually(lambda: count(clickhouse, "kept") == 20)
    assert "kept.spans_raw has no evaluations column (create_schema is off)" in caplog.text
    assert not any("evaluations" in name for (name,) in client.execute(
        "SELECT name FROM system.columns WHERE database = 'kept' AND table = 'spans_raw'"))


SIGNALS = """    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [duckdb, clickhouse]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [duckdb, clickhouse]
"""


def test_metrics_and_logs_from_the_sdk_are_stored_once_each_on_18_16(clickhouse, tmp_path):
    """The OpenTelemetry SDK's OTLP metric and log exporters -> a pipeline -> ClickHouse 18.16 (compat schema):
    every point and record is in ``metrics`` / ``logs`` as DuckDB has it, a histogram's buckets and a GenAI
    event's span ids included; the same batches sent again (a retry after a lost answer) are not stored again."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    service, ports, _ = start_on_free_ports(lambda p, _a: pipeline_yaml(
        p, tmp_path, exporters="duckdb, clickhouse", extra=exporter_yaml(clickhouse, "signals")).replace(
        "  telemetry:\n", SIGNALS + "  telemetry:\n", 1))
    try:
        exporter = service.exporters["clickhouse"]
        sent: list[pa.Table] = []
        real_send = exporter.send
        exporter.send = lambda batch: (sent.append(batch), real_send(batch))[1]
        resource = Resource.create({"service.name": "planner"})
        target = f"127.0.0.1:{ports.grpc}"
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=target, insecure=True),
                                               export_interval_millis=3_600_000)
        meters = MeterProvider(resource=resource, metric_readers=[reader])
        loggers = LoggerProvider(resource=resource)
        loggers.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=target, insecure=True)))
        try:
            tokens = meters.get_meter("gen_ai").create_histogram("gen_ai.client.token.usage", unit="{token}")
            tokens.record(1200, {"gen_ai.token.type": "input"})
            tokens.record(80, {"gen_ai.token.type": "output"})
            meters.get_meter("gen_ai").create_counter("agent.calls").add(3, {"agent.id": "planner"})
            log = loggers.get_logger("planner")
            for i in range(5):
                log.emit(body=f"step {i}", severity_text="INFO", attributes={"step": i})
            assert reader.force_flush(10_000)
        finally:
            meters.shutdown()  # exports the cumulative points once more
            loggers.shutdown()
        store = service.exporters["duckdb"].store
        store.sync()
        points = store.read("SELECT count(*) FROM metrics")[0][0]
        assert points >= 3
        assert eventually(lambda: count(clickhouse, "signals", "SELECT count() FROM {db}.metrics") == points
                          and count(clickhouse, "signals", "SELECT count() FROM {db}.logs") == 5, timeout=30)
        client = clickhouse.client()
        histogram = client.execute("SELECT metric_type, count, sum, bucket_counts, explicit_bounds, unit, "
                                   "attributes.value FROM signals.metrics WHERE metric_name = "
                                   "'gen_ai.client.token.usage' ORDER BY time_ns DESC, sum LIMIT 2")
        assert sorted((r[1], r[2], sum(r[3]), r[5], r[6]) for r in histogram) == [
            (1, 80.0, 1, "{token}", ["output"]), (1, 1200.0, 1, "{token}", ["input"])]
        assert all(len(r[3]) == len(r[4]) + 1 for r in histogram)
        counter = client.execute("SELECT metric_type, value, is_monotonic, service_name FROM signals.metrics "
                                 "WHERE metric_name = 'agent.calls' LIMIT 1")
        assert counter == [("sum", 3.0, 1, "planner")]
        logs = client.execute("SELECT body, severity_text, service_name, attributes.key FROM signals.logs ORDER BY body")
        assert logs == [(f"step {i}", "INFO", "planner", ["step"]) for i in range(5)]
        from agent_sre.pipeline.cli.fleet import fleet_query  # fleet SQL reads them as it reads spans

        assert fleet_query(clickhouse.url("signals"), "SELECT count() FROM logs WHERE service_name = 'planner'",
                           10)["rows"] == [[5]]
        # A retry of every batch sent (its answer lost): found stored, nothing inserted twice.
        before = exporter.deduplicated
        for batch in [b for b in sent if b.num_rows]:
            assert real_send(batch).ok
        assert exporter.deduplicated > before
        assert count(clickhouse, "signals", "SELECT count() FROM {db}.metrics") == points
        assert count(clickhouse, "signals", "SELECT count() FROM {db}.logs") == 5
    finally:
        service.shutdown()
