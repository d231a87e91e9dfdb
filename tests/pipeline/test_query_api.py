"""The admin/query API: read-only SQL that touches no file, limited in rows, bytes, time and memory, in its
own bounded pool."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import duckdb
import psutil
import pytest

from agent_sre.pipeline.storage.sandbox import QueryError, QueryLimits, run_query
from agent_sre.pipeline.storage.store import open_read_only
from tests.conftest import eventually
from tests.otlp_builders import request


def post(p, payload: dict) -> tuple[int, dict, bytes]:
    """POST /v1/query: status, headers and the raw body."""
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}/v1/query", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def query(p, payload: dict) -> tuple[int, dict]:
    status, _, raw = post(p, payload)
    return status, json.loads(raw)


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
    assert status == 403
    assert "no SQL may read files" in body["error"]
    status, body = query(pipeline, {"sql": "SELECT * FROM read_text('/etc/passwd')"})
    assert status == 403


def test_time_limit_interrupts_long_queries(pipeline):
    status, body = query(pipeline, {"sql": "SELECT count(*) FROM range(1000000000000) a", "timeout": "200ms"})
    assert status == 408
    assert "time limit" in body["error"]


def test_under_ingest_ahead_of_the_store_a_query_answers_after_its_wait_with_what_was_pending(start_pipeline):
    """The store's loader behind (at max rate it is the limit): the answer comes after the request's "wait"
    (the admin's query_wait by default) over what is committed, with "pending_spans"; it was a 503 "span store
    did not catch up" at the time limit (bench/query10m.py under ingest, issue #12)."""
    p = start_pipeline(admin="    query_wait: 300ms\n")
    _load(p, 4)
    p.store.sync()
    release = threading.Event()
    insert = p.store._insert

    def slow_insert(tables, seq=None, roll=None):
        release.wait(30)
        insert(tables, seq, roll)

    p.store._insert = slow_insert
    try:
        _load(p, 3)
        for payload, waited in (({"sql": "SELECT count(*) FROM spans"}, 0.3),  # the admin's query_wait
                                ({"sql": "SELECT count(*) FROM spans", "wait": "1s"}, 1.0)):
            started = time.monotonic()
            status, body = query(p, payload)
            assert status == 200 and body["rows"] == [[4]] and body["pending_spans"] == 3, body
            assert waited <= time.monotonic() - started < waited + 3
        status, body = query(p, {"sql": "SELECT 1", "wait": "-1s"})
        assert status == 400 and '"wait"' in body["error"]
    finally:
        release.set()
    status, body = query(p, {"sql": "SELECT count(*) FROM spans", "wait": "10s"})
    assert status == 200 and body["rows"] == [[7]] and body["pending_spans"] == 0


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


def refused(p, reason: str) -> float:
    """The admin's refusal counter for ``reason`` (0 when never counted)."""
    prefix = f'agent_sre_admin_refused_requests_total{{extension="admin",reason="{reason}"}} '
    return next((float(line[len(prefix):]) for line in p.metrics().splitlines() if line.startswith(prefix)), 0.0)


def test_files_in_the_data_directory_cannot_be_read(pipeline):
    _load(pipeline, 1)
    planted = pipeline.data_dir / "planted.csv"
    planted.write_text("a\n1\n")
    spool = pipeline.data_dir / "spans.duckdb.spool"
    for sql in (f"SELECT * FROM read_csv('{planted}')", f"SELECT * FROM '{planted}'",
                f"SELECT * FROM read_blob('{pipeline.data_dir}/spans.duckdb')",
                f"SELECT * FROM read_blob('{pipeline.data_dir}/spans.duckdb.wal')",
                f"SELECT * FROM read_text('{spool}/*')", f"SELECT * FROM glob('{pipeline.data_dir}/*')",
                f"SELECT count(*) FROM spans WHERE name IN (SELECT content FROM read_text('{planted}'))",
                f"EXPLAIN ANALYZE SELECT * FROM read_csv('{planted}')",
                f"SELECT * FROM query('SELECT * FROM read_csv(''{planted}'')')"):
        status, body = query(pipeline, {"sql": sql})
        assert status == 403, sql
        assert "no SQL may read files" in body["error"], sql
    assert refused(pipeline, "file_access") == 9
    status, body = query(pipeline, {"sql": "SELECT count(*) FROM range(3), duckdb_tables() t "
                                           "WHERE t.table_name = 'span_rows'"})
    assert (status, body["rows"]) == (200, [[3]])  # generators and the catalog stay available


def test_the_store_database_itself_opens_no_file_in_the_data_directory(pipeline):
    (pipeline.data_dir / "planted.csv").write_text("a\n1\n")
    cursor = pipeline.store._cursor()
    try:
        with pytest.raises(duckdb.PermissionException):
            cursor.execute(f"SELECT * FROM read_csv('{pipeline.data_dir}/planted.csv')").fetchall()
    finally:
        cursor.close()


def test_a_stopped_store_opened_read_only_reads_no_file(start_pipeline):
    p = start_pipeline()
    _load(p, 2)
    p.service.shutdown()
    (p.data_dir / "planted.csv").write_text("a\n1\n")
    con = open_read_only(p.data_dir / "spans.duckdb")
    try:
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"SELECT * FROM read_csv('{p.data_dir}/planted.csv')").fetchall()
        with pytest.raises(QueryError, match="no SQL may read files") as refusal:
            run_query(con, f"SELECT * FROM read_blob('{p.data_dir}/spans.duckdb')", QueryLimits())
        assert refusal.value.status == 403
        assert run_query(con, "SELECT count(*) FROM spans", QueryLimits()).rows == [[2]]
    finally:
        con.close()


def test_max_rows_that_is_not_a_positive_integer_is_a_400_naming_it(pipeline):
    for value in (-1, 0, True, "10", 2.5):
        status, body = query(pipeline, {"sql": "SELECT 1", "max_rows": value})
        assert status == 400, value
        assert '"max_rows" must be a positive integer' in body["error"], value
    status, body = query(pipeline, {"sql": "SELECT 1", "timeout": "-1s"})
    assert status == 400 and '"timeout"' in body["error"]


def test_an_answer_over_max_result_bytes_is_cut_counted_and_says_so(start_pipeline):
    p = start_pipeline(admin="    max_result_bytes: 1048576\n")
    status, _, raw = post(p, {"sql": "SELECT i, repeat('x', 1000) AS s FROM range(100000) t(i)"})
    body = json.loads(raw)
    assert status == 200
    assert body["truncated"] is True and body["truncated_by"] == "max_result_bytes"
    assert 900 < body["row_count"] < 1100  # ~1 KB of Arrow per row
    assert len(raw) < 1.5 * 1048576
    assert refused(p, "result_bytes") == 1
    status, body = query(p, {"sql": "SELECT span_id FROM spans", "max_rows": 3})
    assert body["truncated_by"] is None


def test_a_query_building_gigabytes_is_stopped_and_ingest_goes_on(pipeline):
    """Issue #11 defect 3: this query took the pipeline from 174 MiB to 4.45 GiB, and kept 1.69 GiB."""
    process = psutil.Process()
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status, body = query(pipeline, {"sql": "SELECT repeat('x', 10000000) FROM range(100)"})
    finally:
        done.set()
        sampler.join()
    assert status == 422 and "max_query_memory" in body["error"]
    # DuckDB builds a vector (here all 100 rows: 1 GiB of strings) whole and does not count its strings
    # against memory_limit; the watchdog stops the query after it, before any Python copy of it.
    assert peak[0] - before < 1400 << 20, f"grew by {(peak[0] - before) >> 20} MiB"
    assert eventually(lambda: process.memory_info().rss - before < 150 << 20, timeout=10)
    assert refused(pipeline, "memory") == 1
    _load(pipeline, 5)  # the memory limiter never engaged: ingest is accepted at once
    assert pipeline.sql("SELECT count(*) FROM spans")[0][0] == 5


def test_a_query_interrupted_while_its_rows_stream_is_a_408(pipeline):
    status, body = query(pipeline, {"sql": "SELECT i FROM range(1000000000000) t(i) WHERE i % 1000000007 = 1",
                                    "timeout": "300ms"})
    assert status == 408 and "time limit" in body["error"]
    assert refused(pipeline, "time") == 1


def _slow_query(p, answers: list, timeout: str = "3s") -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(query(p, {
        "sql": "SELECT count(*) FROM range(1000000000000)", "timeout": timeout})))
    thread.start()
    return thread


def _query_threads() -> int:
    return sum(t.name.startswith("admin-query") for t in threading.enumerate())


def test_queries_beyond_the_running_and_waiting_bound_are_refused_at_once_with_retry_after(start_pipeline):
    p = start_pipeline(admin="    max_concurrent_queries: 1\n    max_queued_queries: 0\n")
    answers: list = []
    slow = _slow_query(p, answers)
    assert eventually(_query_threads, timeout=10)  # the slow query holds the only slot

    started = time.monotonic()
    status, headers, raw = post(p, {"sql": "SELECT 1"})
    assert status == 429 and time.monotonic() - started < 1
    assert headers["Retry-After"] == "1"
    assert "1 queries are running and 0 waiting" in json.loads(raw)["error"]
    assert refused(p, "query_busy") == 1
    slow.join()
    assert answers[0][0] == 408
    assert query(p, {"sql": "SELECT 1"})[0] == 200  # the slot is free again


def test_a_query_waiting_for_a_slot_is_answered_503_at_its_time_limit(start_pipeline):
    p = start_pipeline(admin="    max_concurrent_queries: 1\n    max_queued_queries: 1\n")
    answers: list = []
    slow = _slow_query(p, answers)
    assert eventually(_query_threads, timeout=10)

    started = time.monotonic()
    status, headers, raw = post(p, {"sql": "SELECT 1", "timeout": "500ms"})
    waited = time.monotonic() - started
    assert status == 503 and 0.4 < waited < 2, waited
    assert headers["Retry-After"] == "1" and "no query slot came free" in json.loads(raw)["error"]
    assert refused(p, "query_queue_timeout") == 1
    slow.join()


# --- GET /v1/traces/{id}: the replay extension's trace trees -------------------------------------

ACME_KEY, OPS_KEY = "acme-admin-0123456789abcdef", "ops-admin-0123456789abcdef"
TRACE_AUTH = f"""    auth:
      reads: true
      keys:
        - {{name: acme, key: {ACME_KEY}, tenant: acme}}
        - {{name: ops, key: {OPS_KEY}}}
"""


def _replay_pipeline(tmp_path, admin: str = "", loop: bool = False):
    """A pipeline with the replay extension; ``loop``: with the cost, sli and slo processors too."""
    from tests.conftest import RunningPipeline, pipeline_yaml, start_on_free_ports

    def text(ports, _attempt):
        yaml = pipeline_yaml(ports, tmp_path, admin=admin + "  replay: {}\n",
                             processors="memory_limiter, agent_semconv, batch" + (", cost, sli, slo" if loop else ""))
        if loop:
            yaml = yaml.replace("  agent_semconv: {}\n", "  agent_semconv: {}\n  cost: {}\n  sli: {}\n  slo:\n"
                                "    objectives: [{name: tool-accuracy, sli: tool_call_accuracy, target: 0.99}]\n")
        return yaml.replace("extensions: [health_check, admin]", "extensions: [health_check, admin, replay]")

    service, ports, _ = start_on_free_ports(text)
    return RunningPipeline(service, ports, tmp_path)


def _get(p, path: str, key: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _two_agents(p, tenants: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """Agent triage's trace (a root, an LLM call) and agent billing's, whose root links back to triage's
    LLM span; with ``tenants``, each service's resource carries its tenant.  Returns both trace ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.otlp_builders import kv

    t1, t2 = bytes.fromhex("a1" * 16), bytes.fromhex("b2" * 16)
    req = ExportTraceServiceRequest()
    for trace, agent, tenant, base in ((t1, "triage", tenants[0], 1), (t2, "billing", tenants[1], 10)):
        rs = req.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", agent))
        if tenant:
            rs.resource.attributes.append(kv("tenant.id", tenant))
        ss = rs.scope_spans.add()
        root, llm = ss.spans.add(), ss.spans.add()
        for i, sp in enumerate((root, llm)):
            sp.trace_id, sp.span_id = trace, (base + i).to_bytes(8, "big")
            sp.start_time_unix_nano, sp.end_time_unix_nano = 1_700_000_000_000_000_000 + i, 1_700_000_000_005_000_000
        root.name, llm.name, llm.parent_span_id = f"invoke_agent {agent}", "chat", root.span_id
        root.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.id", agent)])
        llm.attributes.extend([kv("gen_ai.operation.name", "chat"), kv("gen_ai.request.model", "gpt-4o"),
                               kv("gen_ai.usage.input_tokens", 100), kv("gen_ai.usage.output_tokens", 10)])
        if trace == t2:
            root.links.add(trace_id=t1, span_id=(2).to_bytes(8, "big"))
    p.service.receivers[0].ingest.export(req, "test")
    p.store.sync()  # in DuckDB, where the tenants' agents are read from (not only in the spool)
    return t1.hex(), t2.hex()


@pytest.mark.slow
def test_a_trace_is_served_as_its_delegation_tree_and_as_otlp_json(tmp_path):
    p = _replay_pipeline(tmp_path)
    try:
        t1, t2 = _two_agents(p)
        status, doc = _get(p, f"/v1/traces/{t2}")
        assert status == 200 and doc["trace_id"] == t2 and doc["traces"] == [t1, t2]
        (root,) = doc["roots"]
        assert (root["trace_id"], root["name"], root["agent"]) == (t1, "invoke_agent triage", "triage")
        billing = root["children"][0]["children"][0]  # under triage's LLM span, which it links back to
        assert (billing["trace_id"], billing["linked"]["via"], billing["agent"]) == (t2, "link", "billing")
        assert doc["totals"]["spans"] == 4 and doc["totals"]["tokens"] == 220
        status, doc = _get(p, f"/v1/traces/{t2.upper()}?links=false")
        assert status == 200 and doc["traces"] == [t2]
        status, doc = _get(p, f"/v1/traces/{t1}?format=otlp")
        spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
        assert status == 200 and sorted(s["name"] for s in spans) == ["chat", "invoke_agent triage"]
        assert _get(p, f"/v1/traces/{'cd' * 16}") == (404, {"error": f"no trace {'cd' * 16!r} in the store"})
        status, doc = _get(p, "/v1/traces/xyz")
        assert status == 400 and "32 hex digits" in doc["error"]
        status, doc = _get(p, f"/v1/traces/{t1}?format=svg")
        assert status == 400 and "tree or otlp" in doc["error"]
    finally:
        p.service.shutdown()


@pytest.mark.slow
def test_without_the_replay_extension_traces_are_a_404_that_says_so(pipeline):
    status, doc = _get(pipeline, f"/v1/traces/{'a1' * 16}")
    assert status == 404 and doc["error"].startswith("no replay extension configured")


@pytest.mark.slow
def test_a_tenant_sees_its_own_agents_traces_only(tmp_path):
    p = _replay_pipeline(tmp_path, admin=TRACE_AUTH)
    try:
        t1, t2 = _two_agents(p, tenants=("acme", "globex"))
        status, doc = _get(p, f"/v1/traces/{t1}", ACME_KEY)
        assert status == 200 and doc["traces"] == [t1]  # globex's linked trace is left out of the chain
        status, doc = _get(p, f"/v1/traces/{t2}", ACME_KEY)
        assert status == 404 and doc["error"] == f"trace {t2!r} is not one of tenant 'acme''s"
        assert _get(p, f"/v1/traces/{t2}?format=otlp", ACME_KEY)[0] == 404
        status, doc = _get(p, f"/v1/traces/{t2}", OPS_KEY)
        assert status == 200 and doc["traces"] == [t1, t2]
    finally:
        p.service.shutdown()


# --- POST /v1/diff, /v1/golden/check, /v1/what-if: the replay extension's questions --------------

def _post(p, path: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}{path}", data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _two_runs(p) -> tuple[str, str]:
    """Agent triage ran twice: (search, gpt-4o), then (search, web, gpt-4o-mini)."""
    import time as _time

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.otlp_builders import kv

    now = _time.time_ns() - 120 * 10**9
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "triage"))
    ss = rs.scope_spans.add()
    runs = ((bytes.fromhex("c1" * 16), [("tool", "search"), ("llm", "gpt-4o")]),
            (bytes.fromhex("d2" * 16), [("tool", "search"), ("tool", "web"), ("llm", "gpt-4o-mini")]))
    for n, (trace, steps) in enumerate(runs):
        root = ss.spans.add()
        root.trace_id, root.span_id, root.name = trace, (100 * n + 1).to_bytes(8, "big"), "invoke_agent triage"
        root.start_time_unix_nano, root.end_time_unix_nano = now, now + 10**9
        root.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.id", "triage")])
        for i, (role, name) in enumerate(steps):
            sp = ss.spans.add()
            sp.trace_id, sp.span_id, sp.parent_span_id = trace, (100 * n + 2 + i).to_bytes(8, "big"), root.span_id
            sp.start_time_unix_nano, sp.end_time_unix_nano = now + i * 10**8, now + (i + 1) * 10**8
            if role == "tool":
                sp.name = f"execute_tool {name}"
                sp.attributes.extend([kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", name)])
            else:
                sp.name = f"chat {name}"
                sp.attributes.extend([kv("gen_ai.operation.name", "chat"), kv("gen_ai.request.model", name),
                                      kv("gen_ai.provider.name", "openai"),
                                      kv("gen_ai.usage.input_tokens", 1000), kv("gen_ai.usage.output_tokens", 100)])
    p.service.receivers[0].ingest.export(req, "test")
    p.store.sync()
    return runs[0][0].hex(), runs[1][0].hex()


@pytest.mark.slow
def test_the_replay_questions_are_answered_as_the_engine_answers_them_over_the_store(tmp_path):
    from agent_sre.processors.replay.diff import diff_request

    p = _replay_pipeline(tmp_path, loop=True)
    try:
        a, b = _two_runs(p)
        status, doc = _post(p, "/v1/diff", {"trace_a": a, "trace_b": b})
        assert status == 200 and doc == json.loads(json.dumps(diff_request(p.store.read, {"trace_a": a, "trace_b": b})))
        assert [(o["op"], o["name_a"], o["name_b"]) for o in doc["tools"]["ops"]] == [
            ("equal", "search", "search"), ("inserted", None, "web")]
        assert doc["models"]["changed_steps"][0]["a"] == "gpt-4o" and doc["models"]["changed_steps"][0]["b"] == "gpt-4o-mini"
        assert _post(p, "/v1/diff", {"trace_a": a, "trace_b": "ee" * 16})[0] == 404
        assert _post(p, "/v1/diff", {"nonsense": 1})[0] == 400

        # What-if through the running pipeline: the processors' own configs; re-pricing gpt-4o as gpt-4o-mini
        # makes the first run cost what the second run's LLM call (same tokens) cost.
        ask = {"since_ns": p.store.read("SELECT min(start_ns) FROM spans", [])[0][0] - 60 * 10**9,
               "reprice": ["gpt-4o=gpt-4o-mini"]}
        status, doc = _post(p, "/v1/what-if", ask)
        assert status == 200, doc
        mini = p.store.read("SELECT cost_usd FROM spans WHERE model = 'gpt-4o-mini'", [])[0][0]
        full = p.store.read("SELECT cost_usd FROM spans WHERE model = 'gpt-4o'", [])[0][0]
        assert full > mini > 0
        assert doc["cost"]["actual_usd"] == pytest.approx(full + mini)
        assert doc["cost"]["what_if_usd"] == pytest.approx(2 * mini)
        status, doc = _post(p, "/v1/what-if", {**ask, "reprice": ["gpt-4o=no-such-model-xyz"]})
        assert status == 400 and "no-such-model-xyz" in doc["error"]
    finally:
        p.service.shutdown()
