"""The console to a key with a tenant: every page shows that tenant's agents, spend, incidents, traces and
rows only, and another tenant's agent, incident or trace is 404; a key without a tenant sees everyone's.
One real pipeline: two tenants' keys on the otlp receiver (spans sent by the OpenTelemetry SDK over gRPC)
and the same keys on the admin API and the console (tests/pipeline/test_tenants.py's setup)."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from html import unescape

import pytest

from agent_sre.pipeline.component.capabilities import Incidents
from tests.conftest import Ports, RunningPipeline, eventually, pipeline_yaml, start_on_free_ports
from tests.pipeline.test_tenants import (
    ACME,
    ACME_BOT,
    ACME_OTLP,
    ADMIN_AUTH,
    GLOBEX,
    GLOBEX_BOT,
    GLOBEX_OTLP,
    OPS,
    PROCESSORS,
    RECEIVER_AUTH,
    send,
)

CONSOLE = "  replay: {}\n  console:\n    endpoint: 127.0.0.1:%d\n" + ADMIN_AUTH


def start(data) -> RunningPipeline:
    def text(ports: Ports, _attempt: int) -> str:
        text = pipeline_yaml(ports, data, processors="memory_limiter, agent_semconv, cost, sli, slo, incidents, batch",
                             admin=ADMIN_AUTH + CONSOLE % ports.admin)
        text = text.replace("    workers: 0\n", "    workers: 0\n" + RECEIVER_AUTH, 1)
        text = text.replace("  extensions: [health_check, admin]", "  extensions: [health_check, admin, replay, console]", 1)
        return text.replace("  batch:\n", PROCESSORS + "  batch:\n", 1)

    service, ports, _ = start_on_free_ports(text)
    return RunningPipeline(service, ports, data)


def page(p: RunningPipeline, path: str, key: str) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}{path}", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def text_of(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """acme's agent: $1.50 of LLM calls; globex's: $0.40; a policy denial (an incident) each."""
    p = start(tmp_path_factory.mktemp("console-tenants"))
    try:
        send(p, ACME_OTLP, ACME_BOT, [0.5, 0.25, 0.75])
        send(p, GLOBEX_OTLP, GLOBEX_BOT, [0.2, 0.2])
        (incidents,) = p.service.host.all(Incidents)
        assert eventually(lambda: len(incidents.list(False)) == 2, 15), "the policy denials opened no incidents"
        (slo,) = p.service.components_of("slo")
        slo.report()  # both agents' SLO rows, now
        yield p
    finally:
        p.service.shutdown()


def _trace_ids(p: RunningPipeline, agent: str) -> list[str]:
    return [t for (t,) in p.store.read("SELECT DISTINCT trace_id FROM span_rows WHERE agent_id = ?", [agent])]


@pytest.mark.slow
def test_the_fleet_slo_and_incident_pages_show_a_tenant_its_own_agents_only(tenants):
    for key, mine, theirs in ((ACME, ACME_BOT, GLOBEX_BOT), (GLOBEX, GLOBEX_BOT, ACME_BOT)):
        for path in ("/ui", "/ui/slo", "/ui/incidents"):
            status, html = page(tenants, path, key)
            assert status == 200 and mine in html and theirs not in html, (key, path)
    status, html = page(tenants, "/ui", OPS)  # a key without a tenant: every tenant's agents
    assert status == 200 and ACME_BOT in html and GLOBEX_BOT in html


@pytest.mark.slow
def test_another_tenants_agent_incident_and_trace_are_404_as_if_absent(tenants):
    (incidents,) = tenants.service.host.all(Incidents)
    globex_incident = next(i["id"] for i in incidents.list(False) if i["agent_id"] == GLOBEX_BOT)
    globex_trace = _trace_ids(tenants, GLOBEX_BOT)[0]
    quoted = urllib.parse.quote(GLOBEX_BOT)
    for path in (f"/ui/slo?agent={quoted}&slo=tools", f"/ui/incidents/{globex_incident}", f"/ui/traces/{globex_trace}"):
        status, html = page(tenants, path, ACME)
        assert status == 404 and "is not one of tenant 'acme'" in unescape(html), path
        assert page(tenants, path, GLOBEX)[0] == 200 and page(tenants, path, OPS)[0] == 200, path
    for absent in ("/ui/incidents/no-such-incident", "/ui/traces/" + "0" * 32):  # the same answer as another's
        status, html = page(tenants, absent, ACME)
        assert status == 404 and "is not one of tenant 'acme'" in unescape(html), absent


@pytest.mark.slow
def test_costs_show_a_tenant_its_agents_spend_and_its_own_line_per_tenant(tenants):
    status, html = page(tenants, "/ui/costs", ACME)
    shown = text_of(html)
    assert status == 200 and ACME_BOT in shown and GLOBEX_BOT not in shown
    assert "acme" in shown and "globex" not in shown  # spend per tenant: its own line only
    status, html = page(tenants, "/ui/costs", OPS)
    assert status == 200 and "globex" in text_of(html) and "acme" in text_of(html)


@pytest.mark.slow
def test_trace_search_and_the_sql_box_reach_a_tenants_own_spans_only(tenants):
    status, html = page(tenants, "/ui/traces?since=7d", ACME)
    assert status == 200
    assert all(t in html for t in _trace_ids(tenants, ACME_BOT)) and not any(
        t in html for t in _trace_ids(tenants, GLOBEX_BOT))
    statement = urllib.parse.quote("SELECT DISTINCT agent_id FROM spans ORDER BY 1")
    status, body = page(tenants, f"/ui/sql.csv?q={statement}", ACME)
    assert status == 200 and body.split() == ["agent_id", ACME_BOT]
    status, body = page(tenants, f"/ui/sql.csv?q={statement}", OPS)
    assert status == 200 and body.split() == ["agent_id", ACME_BOT, GLOBEX_BOT]
    status, body = page(tenants, "/ui/sql.csv?q=" + urllib.parse.quote("SELECT count(*) FROM span_rows"), ACME)
    assert status != 200  # the store's own tables are out of a tenant's reach
