"""Tenants on the admin API: a caller whose key carries a tenant sees that tenant's spans, spend,
decisions, SLOs and incidents only, and its SQL reaches nothing else.  One real pipeline: two tenants'
keys on the otlp receiver and on the admin API, spans sent by the OpenTelemetry SDK over gRPC."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from agent_sre.pipeline.component.capabilities import Incidents
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml, start_on_free_ports

ACME_OTLP, GLOBEX_OTLP, GLOBEX_ANY_OTLP = "acme-otlp-0123456789abcdef", "globex-otlp-0123456789abcdef", \
    "globex-any-0123456789abcdef"
ACME, GLOBEX, OPS = "acme-admin-0123456789abcdef", "globex-admin-0123456789abcdef", "ops-admin-0123456789abcdef"
ACME_BOT, GLOBEX_BOT = "did:web:acme-bot", "did:web:globex-bot"

RECEIVER_AUTH = f"""    auth:
      keys:
        - {{name: acme, key: {ACME_OTLP}, tenant: acme, agents: ["{ACME_BOT}"]}}
        - {{name: globex, key: {GLOBEX_OTLP}, tenant: globex, agents: ["{GLOBEX_BOT}"]}}
        - {{name: globex-any, key: {GLOBEX_ANY_OTLP}, tenant: globex}}
"""
ADMIN_AUTH = f"""    auth:
      reads: true
      keys:
        - {{name: acme, key: {ACME}, tenant: acme}}
        - {{name: globex, key: {GLOBEX}, tenant: globex}}
        - {{name: ops, key: {OPS}}}
"""
PROCESSORS = """  cost:
    budgets:
      - {name: agent-daily, scope: agent_day, limit_usd: 100}
      - {name: tenants, scope: tenant_month, limit_usd: 100}
      - {name: org, scope: org_month, limit_usd: 1000}
  sli: {}
  slo:
    interval: 1h
    objectives:
      - {name: tools, sli: tool_call_accuracy, target: 0.99, window: 1d}
  incidents: {}
"""


def start(data: Path) -> RunningPipeline:
    def text(ports: Ports, _attempt: int) -> str:
        text = pipeline_yaml(ports, data, processors="memory_limiter, agent_semconv, cost, sli, slo, incidents, batch",
                             admin=ADMIN_AUTH)
        text = text.replace("    workers: 0\n", "    workers: 0\n" + RECEIVER_AUTH, 1)
        return text.replace("  batch:\n", PROCESSORS + "  batch:\n", 1)

    service, ports, _ = start_on_free_ports(text)
    return RunningPipeline(service, ports, data)


def send(p: RunningPipeline, key: str, agent: str, llm_usd: list[float], tools: int = 2) -> None:
    """One tenant's agent at work, through the SDK: LLM calls costing ``llm_usd``, tool calls (one
    failed), and a policy denial (an incident)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": agent.rpartition(":")[2]}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.tenants")
    for usd in llm_usd:
        with tracer.start_as_current_span("chat", attributes={
                "agent.did": agent, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.cost": usd}):
            pass
    for i in range(tools):
        with tracer.start_as_current_span("tool", attributes={"agent.did": agent,
                                                              "gen_ai.operation.name": "execute_tool"}) as span:
            if i == 0:
                span.set_status(Status(StatusCode.ERROR))
    with tracer.start_as_current_span("guard", attributes={
            "agent.did": agent, "agent.policy.name": "pii-guard", "agent.policy.decision": "deny"}):
        pass
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{p.ports.grpc}", insecure=True,
                                headers=(("authorization", f"Bearer {key}"),), timeout=10)
    assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
    p.store.sync()


def call(p: RunningPipeline, path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sql(p: RunningPipeline, key: str, statement: str) -> tuple[int, dict]:
    return call(p, "/v1/query", key, {"sql": statement})


def rows(p: RunningPipeline, key: str, statement: str) -> list[list]:
    status, body = sql(p, key, statement)
    assert status == 200, body
    return body["rows"]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """acme's agent: $0.50 + $0.25 + $0.75 of LLM calls; globex's: $0.20 + $0.20; an incident each."""
    p = start(tmp_path_factory.mktemp("tenants"))
    try:
        send(p, ACME_OTLP, ACME_BOT, [0.5, 0.25, 0.75])
        send(p, GLOBEX_OTLP, GLOBEX_BOT, [0.2, 0.2])
        (incidents,) = p.service.host.all(Incidents)
        assert eventually(lambda: len(incidents.list(False)) == 2, 15), "the policy denials opened no incidents"
        yield p
    finally:
        p.service.shutdown()


# --- the query API -----------------------------------------------------------------------------


def test_a_tenant_key_queries_only_its_own_tenants_spans_and_a_key_without_one_every_tenants(tenants):
    by_tenant = "SELECT resource_attributes['tenant.id'], agent_id, count(*) FROM spans GROUP BY ALL ORDER BY 1"
    assert rows(tenants, ACME, by_tenant) == [["acme", ACME_BOT, 6]]
    assert rows(tenants, GLOBEX, by_tenant) == [["globex", GLOBEX_BOT, 5]]
    assert rows(tenants, OPS, by_tenant) == [["acme", ACME_BOT, 6], ["globex", GLOBEX_BOT, 5]]
    assert rows(tenants, ACME, "SELECT count(*) FROM spans a JOIN spans b USING (trace_id)") == [[6]]


@pytest.mark.parametrize("statement", [
    "SELECT count(*) FROM span_rows",
    "SELECT count(*) FROM held_spans",
    'SELECT count(*) FROM "SPAN_ROWS"',
    "SELECT count(*) FROM main.spans",
    "SELECT count(*) FROM main.span_rows",
    "SELECT count(*) FROM spans.main.spans",  # the database is named after its file
    "SELECT count(*) FROM temp.spans",
    "SELECT (SELECT count(*) FROM span_rows)",
    "SELECT count(*) FROM spans WHERE trace_id IN (SELECT trace_id FROM held_spans)",
    "SELECT * FROM (WITH span_rows AS (SELECT 1) SELECT * FROM span_rows), span_rows",
    "WITH spans AS (SELECT * FROM main.spans) SELECT count(*) FROM spans",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_views()",
    "SELECT * FROM pragma_storage_info('span_rows')",
    "SELECT * FROM histogram('span_rows', name)",
    "SELECT * FROM sqlite_master",
    "SUMMARIZE span_rows",
    "DESCRIBE span_rows",
    "SHOW TABLES",
    "EXPLAIN ANALYZE SELECT * FROM spans",
    "SELECT * FROM sli_rollups",
    "SELECT * FROM _tenant_agents",
])
def test_a_tenant_key_cannot_reach_other_rows_through_any_name_or_function(tenants, statement):
    status, body = sql(tenants, ACME, statement)
    assert status == 403, body
    assert "tenant 'acme'" in body["error"]
    assert sql(tenants, OPS, "SELECT count(*) FROM span_rows")[0] == 200  # the same SQL is fine without a tenant


def test_a_tenant_refusal_is_counted_and_logged_with_the_extension(tenants, caplog):
    line = 'agent_sre_admin_refused_requests_total{extension="admin",reason="tenant_scope"}'

    def counted() -> float:
        found = [m for m in tenants.metrics().splitlines() if m.startswith(line)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    before = counted()
    with caplog.at_level(logging.WARNING):
        assert sql(tenants, ACME, "SELECT count(*) FROM span_rows")[0] == 403
    assert counted() == before + 1
    assert any("admin" in r.name and "tenant_scope" in r.getMessage() for r in caplog.records)


def test_a_tenant_key_reads_the_per_agent_and_per_tenant_tables_of_its_own_only(tenants):
    assert rows(tenants, ACME, "SELECT DISTINCT agent_id FROM agent_minutes") == [[ACME_BOT]]
    assert rows(tenants, ACME, "SELECT tenant, agent_id, sum(cost_usd) FROM cost_minutes GROUP BY ALL") == [
        ["acme", ACME_BOT, 1.5]]
    assert rows(tenants, ACME, "SELECT DISTINCT agent_id FROM sli_minutes") == [[ACME_BOT]]
    assert rows(tenants, ACME, "SELECT agent_id FROM incidents") == [[ACME_BOT]]
    assert rows(tenants, ACME, "SELECT count(*) FROM incident_log JOIN incidents ON incident_id = id "
                               f"WHERE agent_id <> '{ACME_BOT}'") == [[0]]
    assert rows(tenants, ACME, "SELECT DISTINCT labels['agent_id'] FROM events") == [[ACME_BOT]]
    assert rows(tenants, GLOBEX, "SELECT DISTINCT agent_id FROM agent_minutes") == [[GLOBEX_BOT]]
    assert rows(tenants, OPS, "SELECT count(DISTINCT agent_id) FROM agent_minutes") == [[2]]


# --- the other read routes -------------------------------------------------------------------------


def test_costs_show_a_tenant_its_agents_spend_and_its_own_budget_accounts_only(tenants):
    status, acme = call(tenants, "/v1/costs", ACME)
    assert status == 200
    assert [(r["agent_id"], r["cost_usd"]) for r in acme["summary"]] == [(ACME_BOT, 1.5)]
    assert sorted((b["budget"], b["subject"], b["spent_usd"]) for b in acme["budgets"]) == [
        ("agent-daily", ACME_BOT, 1.5), ("tenants", "acme", 1.5)]  # the org's account is every tenant's
    _, everyone = call(tenants, "/v1/costs", OPS)
    assert sorted((b["budget"], b["subject"], b["spent_usd"]) for b in everyone["budgets"]) == [
        ("agent-daily", ACME_BOT, 1.5), ("agent-daily", GLOBEX_BOT, 0.4), ("org", "org", 1.9),
        ("tenants", "acme", 1.5), ("tenants", "globex", 0.4)]


def test_decisions_show_a_tenant_its_agents_and_no_other(tenants):
    status, listed = call(tenants, "/v1/decisions", ACME)
    assert status == 200 and [d["agent_id"] for d in listed["decisions"]] == [ACME_BOT]
    status, mine = call(tenants, f"/v1/decisions/{ACME_BOT}", ACME)
    assert (status, mine["action"]) == (200, "freeze")  # one tool call of two failed: its SLO budget is gone
    status, body = call(tenants, f"/v1/decisions/{GLOBEX_BOT}", ACME)
    assert status == 404 and "acme" in body["error"]
    assert call(tenants, "/v1/decisions/did:web:nobody", ACME)[0] == 404  # the same answer as another tenant's
    assert call(tenants, f"/v1/decisions/{GLOBEX_BOT}", OPS)[0] == 200
    assert [d["agent_id"] for d in call(tenants, "/v1/decisions", OPS)[1]["decisions"]] == [ACME_BOT, GLOBEX_BOT]


def test_slos_show_a_tenant_its_agents_only(tenants):
    status, body = call(tenants, "/v1/slos", GLOBEX)
    assert status == 200 and {r["agent_id"] for r in body["slos"]} == {GLOBEX_BOT}
    assert {r["agent_id"] for r in call(tenants, "/v1/slos", OPS)[1]["slos"]} == {ACME_BOT, GLOBEX_BOT}


def test_another_tenants_incident_is_404_to_list_read_and_change(tenants):
    _, listed = call(tenants, "/v1/incidents", ACME)
    assert [i["agent_id"] for i in listed["incidents"]] == [ACME_BOT]
    (theirs,) = [i["id"] for i in call(tenants, "/v1/incidents", OPS)[1]["incidents"] if i["agent_id"] == GLOBEX_BOT]
    assert call(tenants, f"/v1/incidents/{theirs}", ACME)[0] == 404
    assert call(tenants, f"/v1/incidents/{theirs}/ack", ACME, {"by": "mallory"})[0] == 404
    assert call(tenants, f"/v1/incidents/{theirs}", OPS)[1]["state"] == "open"
    status, acked = call(tenants, f"/v1/incidents/{theirs}/ack", GLOBEX, {"by": "gina"})
    assert (status, acked["state"]) == (200, "acknowledged")


# --- the rule for agents ---------------------------------------------------------------------------


def test_an_agent_named_by_two_tenants_spans_is_in_neither_tenants_per_agent_rows(tmp_path):
    p = start(tmp_path)
    try:
        send(p, ACME_OTLP, ACME_BOT, [0.5])
        assert rows(p, ACME, "SELECT DISTINCT agent_id FROM agent_minutes") == [[ACME_BOT]]
        send(p, GLOBEX_ANY_OTLP, ACME_BOT, [0.1], tools=0)  # globex's unbound key names acme's agent
        for key in (ACME, GLOBEX):
            assert rows(p, key, "SELECT DISTINCT agent_id FROM agent_minutes") == []
            assert rows(p, key, "SELECT count(*) FROM events") == [[0]]
        assert rows(p, ACME, "SELECT count(*) FROM spans") == [[4]]  # its own spans stay its own
        assert rows(p, GLOBEX, "SELECT count(*) FROM spans") == [[2]]
    finally:
        p.service.shutdown()


def test_admin_keys_with_a_tenant_need_reads_true(tmp_path):
    text = pipeline_yaml(Ports.allocate(), tmp_path, admin=ADMIN_AUTH.replace("reads: true", "reads: false"))
    with pytest.raises(Exception, match=r"(?s)admin.*keys with a tenant \(acme, globex\) need reads: true"):
        parse_config(text, "test")
