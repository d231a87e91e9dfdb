"""Budgets per tenant: each tenant has its own account (and, if listed, its own limit), and its budget
throttles and kills that tenant's agents only: every agent of the tenant, also one that has not spent
yet this period.  Hand-computed figures; the pipeline test sends spans with two tenants' keys through
the OpenTelemetry SDK and reads the decisions with the tenants' admin keys."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from agent_sre.processors.cost.budget import BudgetLedger, BudgetSpec, utc
from agent_sre.processors.cost.factory import CostConfig
from tests.conftest import Ports, eventually, pipeline_yaml

NOON = utc(2026, 11, 25, 12, 0)
YESTERDAY = utc(2026, 11, 24, 12, 0)


def test_a_tenant_with_a_limit_of_its_own_is_held_to_it_and_the_others_to_limit_usd():
    ledger = BudgetLedger([BudgetSpec("tenants", "tenant_month", 10.0, tenant_limits=(("acme", 40.0),))])
    ledger.charge("a1", 34.0, NOON, tenant="acme")  # 34 of acme's 40: 85 %
    ledger.charge("g1", 9.5, NOON, tenant="globex")  # 9.5 of the default 10: 95 %
    assert ledger.decision("a1", NOON)[:2] == ("throttle", "budget tenants (tenant_month) for tenant acme at 85% of $40")
    assert ledger.decision("g1", NOON)[:2] == ("kill", "budget tenants (tenant_month) for tenant globex at 95% of $10")
    ledger.charge("a1", 4.0, NOON, tenant="acme")  # 38 of 40: 95 %
    assert ledger.assess("a1", NOON).action == "kill" and ledger.assess("a1", NOON).tenant == "acme"
    assert [(a["subject"], a["limit_usd"], a["utilisation"]) for a in ledger.accounts(NOON)] == [
        ("acme", 40.0, 0.95), ("globex", 10.0, 0.95)]


def test_a_tenant_budget_kills_every_agent_of_the_tenant_and_no_other_tenants():
    ledger = BudgetLedger([BudgetSpec("tenant-daily", "tenant_day", 10.0)])
    ledger.charge("a2", 0.1, YESTERDAY, tenant="acme")  # a2 is acme's; it has not spent today
    ledger.charge("g1", 0.1, YESTERDAY, tenant="globex")
    ledger.charge("a1", 9.6, NOON, tenant="acme")  # acme's day: 96 %
    ledger.charge("g1", 1.0, NOON, tenant="globex")  # globex's day: 10 %
    assert ledger.decision("a1", NOON)[0] == "kill"
    assert ledger.decision("a2", NOON)[:2] == ("kill", "budget tenant-daily (tenant_day) for tenant acme at 96% of $10")
    assert ledger.decision("g1", NOON)[0] == "allow"
    assert ledger.decision("a2", utc(2026, 11, 26, 0, 0, 1))[0] == "allow"  # acme's next day


def test_a_task_budget_account_names_the_agent_whose_task_it_is():
    ledger = BudgetLedger([BudgetSpec("per-task", "task", 1.0)])
    ledger.charge("a1", 0.25, NOON, task="t1")
    assert [(a["subject"], a["agent_id"]) for a in ledger.accounts(NOON)] == [("t1", "a1")]


def test_tenant_limits_need_a_tenant_scope_and_positive_amounts():
    with pytest.raises(ValidationError, match="tenant limits need a tenant scope"):
        CostConfig.model_validate({"budgets": [{"name": "d", "scope": "agent_day", "limit_usd": 5,
                                                "tenant_limits_usd": {"acme": 10}}]})
    with pytest.raises(ValidationError, match=r"tenant_limits_usd\.acme"):
        CostConfig.model_validate({"budgets": [{"name": "t", "scope": "tenant_month", "limit_usd": 5,
                                                "tenant_limits_usd": {"acme": 0}}]})


# --- in the running pipeline ---------------------------------------------------------------------

ACME_OTLP, GLOBEX_OTLP = "acme-otlp-0123456789abcdef", "globex-otlp-0123456789abcdef"
ACME, GLOBEX = "acme-admin-0123456789abcdef", "globex-admin-0123456789abcdef"
ACME_BOT, ACME_HELPER, GLOBEX_BOT = "did:web:acme-bot", "did:web:acme-helper", "did:web:globex-bot"
RECEIVER_AUTH = f"""    auth:
      keys:
        - {{name: acme, key: {ACME_OTLP}, tenant: acme, agents: ["{ACME_BOT}", "{ACME_HELPER}"]}}
        - {{name: globex, key: {GLOBEX_OTLP}, tenant: globex, agents: ["{GLOBEX_BOT}"]}}
"""
ADMIN_AUTH = f"""    auth:
      reads: true
      keys:
        - {{name: acme, key: {ACME}, tenant: acme}}
        - {{name: globex, key: {GLOBEX}, tenant: globex}}
"""
COST = """  cost:
    budgets:
      - {name: tenants, scope: tenant_month, limit_usd: 10, tenant_limits_usd: {acme: 2}}
"""


def spend(ports: Ports, service: Service, key: str, agent: str, usd: list[float]) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": agent.rpartition(":")[2]}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for each in usd:
        with provider.get_tracer("tests.tenant_budgets").start_as_current_span("chat", attributes={
                "agent.did": agent, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.cost": each}):
            pass
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{ports.grpc}", insecure=True,
                                headers=(("authorization", f"Bearer {key}"),), timeout=10)
    assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
    service.exporters["duckdb"].store.sync()  # charged once committed


def get(ports: Ports, path: str, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{ports.admin}{path}", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def decision(ports: Ports, agent: str, key: str) -> tuple[str, str, str | None]:
    status, d = get(ports, f"/v1/decisions/{agent}", key)
    assert status == 200, d
    return d["action"], d["reason"], d.get("tenant")


def test_a_tenant_budget_throttles_then_kills_only_that_tenants_agents_and_survives_a_restart(tmp_path):
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, batch", admin=ADMIN_AUTH)
    text = text.replace("    workers: 0\n", "    workers: 0\n" + RECEIVER_AUTH, 1).replace("  batch:\n", COST + "  batch:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        spend(ports, service, ACME_OTLP, ACME_BOT, [0.6, 0.6, 0.6])  # $1.80 of acme's own $2: 90 %
        spend(ports, service, GLOBEX_OTLP, GLOBEX_BOT, [0.6, 0.6, 0.6])  # $1.80 of the default $10: 18 %
        assert decision(ports, ACME_BOT, ACME) == (
            "throttle", "budget tenants (tenant_month) for tenant acme at 90% of $2", "acme")
        assert decision(ports, GLOBEX_BOT, GLOBEX) == ("allow", "", None)
        spend(ports, service, ACME_OTLP, ACME_HELPER, [0.12])  # $1.92 of $2: 96 %
        kill = ("kill", "budget tenants (tenant_month) for tenant acme at 96% of $2", "acme")
        assert decision(ports, ACME_BOT, ACME) == kill
        # acme-helper's first spans show it to acme within a second (admin_tenants.MISS_REFRESH_S)
        assert eventually(lambda: get(ports, f"/v1/decisions/{ACME_HELPER}", ACME)[0] == 200, 10)
        assert decision(ports, ACME_HELPER, ACME) == kill
        assert decision(ports, GLOBEX_BOT, GLOBEX) == ("allow", "", None)
        assert get(ports, f"/v1/decisions/{ACME_BOT}", GLOBEX)[0] == 404  # another tenant's agent
        status, costs = get(ports, "/v1/costs", ACME)
        assert status == 200 and [(b["subject"], b["limit_usd"], b["utilisation"]) for b in costs["budgets"]] == [
            ("acme", 2.0, 0.96)]
        labels = service.exporters["duckdb"].store.read(
            "SELECT arg_max(labels, time_ns) FROM events WHERE kind = 'budget' AND labels['subject'] = 'acme'")[0][0]
        assert (labels["tenant"], labels["limit_usd"], labels["step"]) == ("acme", "2", "0.95")
    finally:
        service.shutdown()
    restarted = Service(parse_config(text, "test"))  # the month's spend is rebuilt from cost_minutes
    restarted.start()
    try:
        assert decision(ports, ACME_BOT, ACME) == kill
        assert decision(ports, GLOBEX_BOT, GLOBEX) == ("allow", "", None)
    finally:
        restarted.shutdown()
