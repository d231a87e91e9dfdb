"""The admin/query API: read-only SQL with row and time limits, no file access outside the store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.otlp_builders import request


def query(p, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}/v1/query", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _load(p, n: int) -> None:
    p.service.receivers[0].ingest.export(request(n, attrs={"gen_ai.request.model": "m1", "agent.did": "a1",
                                                          "gen_ai.usage.input_tokens": 5}), "test")


def test_select_returns_columns_and_rows(pipeline):
    _load(pipeline, 4)
    status, body = query(pipeline, {"sql": "SELECT agent_id, model, count(*) AS n, sum(input_tokens) AS t "
                                           "FROM spans GROUP BY ALL"})
    assert status == 200
    assert body["columns"] == ["agent_id", "model", "n", "t"]
    assert body["rows"] == [["a1", "m1", 4, 20]]
    assert body["truncated"] is False


def test_row_limit_truncates(pipeline):
    _load(pipeline, 10)
    status, body = query(pipeline, {"sql": "SELECT span_id FROM spans", "max_rows": 3})
    assert status == 200
    assert body["row_count"] == 3 and body["truncated"] is True


def test_writes_are_refused(pipeline):
    _load(pipeline, 1)
    for sql in ("DELETE FROM spans", "DROP TABLE spans", "CREATE TABLE x AS SELECT 1", "INSERT INTO spans "
                "SELECT * FROM spans", "ATTACH 'other.db'", "SET threads = 1", "SELECT 1; DELETE FROM spans"):
        status, body = query(pipeline, {"sql": sql})
        assert status == 403, sql
        assert "only read-only statements" in body["error"]
    assert pipeline.sql("SELECT count(*) FROM spans")[0][0] == 1


def test_explain_analyze_cannot_run_a_write(pipeline):
    _load(pipeline, 1)
    for sql in ("EXPLAIN ANALYZE DELETE FROM span_rows", "EXPLAIN (ANALYZE) DROP VIEW spans",
                "explain analyse INSERT INTO span_rows SELECT * FROM span_rows",
                f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{pipeline.data_dir}/x.csv'"):
        status, body = query(pipeline, {"sql": sql})
        assert status == 403, sql
        assert body["error"] == "EXPLAIN is allowed only of a SELECT statement"
    assert not (pipeline.data_dir / "x.csv").exists()
    status, body = query(pipeline, {"sql": "EXPLAIN ANALYZE SELECT count(*) FROM spans"})
    assert status == 200
    status, body = query(pipeline, {"sql": "SELECT count(*) FROM spans"})
    assert body["rows"] == [[1]]


def test_files_outside_the_store_cannot_be_read(pipeline, tmp_path):
    secret = tmp_path.parent / "secret.csv"
    secret.write_text("a\n1\n")
    status, body = query(pipeline, {"sql": f"SELECT * FROM read_csv('{secret}')"})
    assert status == 400
    assert "file system operations are disabled" in body["error"] or "Permission" in body["error"]
    status, body = query(pipeline, {"sql": "SELECT * FROM read_text('/etc/passwd')"})
    assert status == 400


def test_time_limit_interrupts_long_queries(pipeline):
    status, body = query(pipeline, {"sql": "SELECT count(*) FROM range(1000000000000) a", "timeout": "200ms"})
    assert status == 408
    assert "time limit" in body["error"]


def test_bad_sql_is_400(pipeline):
    status, body = query(pipeline, {"sql": "SELEC nonsense"})
    assert status == 400
    assert "error" in body


def test_health_and_metrics(pipeline):
    with urllib.request.urlopen(f"http://127.0.0.1:{pipeline.ports.admin}/", timeout=5) as r:
        assert json.loads(r.read())["status"] == "Server available"
    _load(pipeline, 2)
    text = pipeline.metrics()
    assert 'agent_sre_receiver_accepted_spans_total{receiver="otlp",transport="test"} 2.0' in text
    assert 'agent_sre_exporter_sent_spans_total{exporter="duckdb"} 2.0' in text
    assert "agent_sre_processor_batch_latency_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
