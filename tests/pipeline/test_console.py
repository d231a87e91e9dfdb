"""The console (/ui) on a real running pipeline fed a scripted scenario: a failing agent (breaker open, SLOs
exhausted, an incident), an agent near its daily budget (throttled), and a delegation across two traces.
Each page's numbers are checked against the /v1/* answers of the same pipeline."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html import unescape

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.service.console.search import SearchError, TraceSearch
from tests.conftest import Ports, eventually, start_on_free_ports
from tests.otlp_builders import kv


def scenario_yaml(ports: Ports, data_dir, extensions: str = "health_check, admin, replay, console",
                  processors: str = "memory_limiter, agent_semconv, batch, cost, sli, slo, anomaly, incidents",
                  console: str = "{endpoint: 127.0.0.1:%(admin)s}") -> str:
    return f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{ports.grpc}}}
      http: {{endpoint: 127.0.0.1:{ports.http}}}
processors:
  memory_limiter: {{check_interval: 1s, limit_mib: 2048, spike_limit_mib: 256}}
  agent_semconv: {{}}
  batch: {{timeout: 5ms}}
  cost:
    budgets:
      - {{name: agent-daily, scope: agent_day, limit_usd: 1}}
  sli: {{}}
  slo:
    objectives:
      - {{name: task-success, sli: task_success_rate, target: 0.995, window: 30d}}
      - {{name: tool-accuracy, sli: tool_call_accuracy, target: 0.99, window: 30d}}
  anomaly: {{}}
  incidents:
    breakers: {{roles: [tool, llm], failure_threshold: 5, window: 60s, recovery_timeout: 1h}}
exporters:
  duckdb: {{path: {data_dir}/spans.duckdb}}
extensions:
  health_check: {{endpoint: 127.0.0.1:{ports.admin}}}
  admin: {{endpoint: 127.0.0.1:{ports.admin}}}
  replay: {{}}
  console: {console % {"admin": ports.admin}}
service:
  extensions: [{extensions}]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{processors}]
      exporters: [duckdb]
  telemetry: {{metrics: {{address: 127.0.0.1:{ports.metrics}}}}}
"""


@dataclass
class Scenario:
    service: object
    ports: Ports
    traces: dict[str, str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports.admin}{path}"

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str, dict]:
        req = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def api(self, path: str) -> dict:
        status, body, _ = self.get(path)
        assert status == 200, (path, body)
        return json.loads(body)


def _trace(ingest, now_ns: int, service: str, spans: list, links: tuple[str, str] | None = None) -> tuple[str, list[str]]:
    """One trace: spans are (name, parent index, attributes, error message, start offset ms, duration ms)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    ss = rs.scope_spans.add()
    trace_id, ids = os.urandom(16), [os.urandom(8) for _ in spans]
    for i, (name, parent, attrs, error, offset_ms, duration_ms) in enumerate(spans):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = trace_id, ids[i], name
        if parent is not None:
            sp.parent_span_id = ids[parent]
        elif links is not None:
            link = sp.links.add()
            link.trace_id, link.span_id = bytes.fromhex(links[0]), bytes.fromhex(links[1])
        sp.start_time_unix_nano = now_ns - 90_000_000_000 + offset_ms * 1_000_000
        sp.end_time_unix_nano = sp.start_time_unix_nano + duration_ms * 1_000_000
        if error:
            sp.status.code, sp.status.message = 2, error
        for k, v in attrs.items():
            sp.attributes.append(kv(k, v))
    ingest.export(req, "test")
    return trace_id.hex(), [i.hex() for i in ids]


def _root(agent: str, task: str) -> dict:
    return {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": agent, "agent.task.name": task}


def _llm(model: str, tokens_in: int, tokens_out: int) -> dict:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": tokens_in, "gen_ai.usage.output_tokens": tokens_out}


def feed(service) -> dict[str, str]:
    """The scripted scenario; the trace ids by what they show."""
    ingest, now = service.receivers[0].ingest, time.time_ns()
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
    failing, _ = _trace(ingest, now, "support", [("invoke_agent support-bot", None, _root("support-bot", "triage"),
                                                   "gave up", 0, 900)]
                        + [("execute_tool search", 0, tool, "upstream 503", 10 + i * 50, 40) for i in range(6)])
    pricey, _ = _trace(ingest, now, "billing", [("invoke_agent billing-bot", None, _root("billing-bot", "refund"), None, 0, 2000),
                                                ("chat gpt-4o", 0, _llm("gpt-4o", 300_000, 15_000), None, 10, 1500)])
    asked = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "where is my refund?"}]}])
    planner, ids = _trace(ingest, now, "planner", [
        ("invoke_agent planner", None, _root("planner", "route"), None, 0, 1000),
        ("chat gpt-4o-mini", 0, {**_llm("gpt-4o-mini", 1000, 100), "gen_ai.input.messages": asked}, None, 10, 200),
        ("delegate billing", 0, {"agent.delegation.to": "billing-bot"}, None, 300, 500)])
    delegated, _ = _trace(ingest, now, "billing", [
        ("invoke_agent billing-bot", None, _root("billing-bot", "refund"), None, 320, 400),
        ("chat gpt-4o-mini", 0, _llm("gpt-4o-mini", 500, 50), None, 330, 200)], links=(planner, ids[2]))
    return {"failing": failing, "pricey": pricey, "planner": planner, "delegated": delegated}


def start_scenario(tmp_path, **yaml_args) -> Scenario:
    service, ports, _ = start_on_free_ports(lambda p, _a: scenario_yaml(p, tmp_path, **yaml_args))
    scenario = Scenario(service, ports, feed(service))
    settled = eventually(lambda: scenario.api("/v1/incidents")["incidents"]
                         and any(d["action"] == "throttle" for d in scenario.api("/v1/decisions")["decisions"])
                         and len(scenario.api("/v1/slos")["slos"]) >= 4)
    assert settled, "the scenario did not settle"
    return scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    s = start_scenario(tmp_path_factory.mktemp("console"))
    yield s
    s.service.shutdown()


def cells(html: str, row_attr: str, css: str) -> str:
    """The text of the cell with class ``css`` in the row carrying ``row_attr``."""
    row = re.search(rf'<tr {row_attr}>(.*?)</tr>', html, re.S)
    assert row, row_attr
    cell = re.search(rf'<td class="[^"]*\b{css}\b[^"]*">(.*?)</td>', row.group(1), re.S)
    assert cell, css
    return unescape(re.sub(r"<[^>]+>", "", cell.group(1))).strip()


# --- pages against /v1/* ------------------------------------------------------------------------

@pytest.mark.slow
def test_the_overview_shows_each_agents_decision_spend_and_incidents_as_the_api_does(scenario):
    status, html, headers = scenario.get("/ui")
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    decisions = {d["agent_id"]: d["action"] for d in scenario.api("/v1/decisions")["decisions"]}
    spend: dict[str, float] = {}
    for r in scenario.api("/v1/costs?days=1")["summary"]:
        spend[r["agent_id"]] = spend.get(r["agent_id"], 0) + r["cost_usd"]
    incidents = [i["agent_id"] for i in scenario.api("/v1/incidents")["incidents"]]
    assert decisions["support-bot"] == "circuit_open" and decisions["billing-bot"] == "throttle"
    for agent, action in decisions.items():
        assert cells(html, f'data-agent="{agent}"', "decision") == action
        assert cells(html, f'data-agent="{agent}"', "incidents") == str(incidents.count(agent))
    assert cells(html, 'data-agent="billing-bot"', "spend") == f"${spend['billing-bot']:,.4f}"
    assert '<svg class="bar bar-throttle"' in html  # billing-bot at 90 %: past its throttle mark
    assert '<meta http-equiv="refresh" content="10">' in html


@pytest.mark.slow
def test_the_overview_sorts_and_filters_and_refuses_an_unknown_sort(scenario):
    _, html, _ = scenario.get("/ui?sort=agent")
    order = re.findall(r'<tr data-agent="([^"]+)"', html)
    assert order == sorted(order) and {"billing-bot", "planner", "support-bot"} <= set(order)
    _, html, _ = scenario.get("/ui?sort=status")
    assert re.findall(r'<tr data-agent="([^"]+)"', html)[0] == "support-bot"  # exhausted first
    _, html, _ = scenario.get("/ui?q=billing")
    assert re.findall(r'<tr data-agent="([^"]+)"', html) == ["billing-bot"]
    status, html, _ = scenario.get("/ui?sort=nonsense")
    assert status == 400 and "sort must be one of agent, status" in html


@pytest.mark.slow
def test_the_slo_page_shows_the_sli_budget_and_burn_rates_of_v1_slos(scenario):
    slo = next(r for r in scenario.api("/v1/slos")["slos"] if r["agent_id"] == "support-bot" and r["slo"] == "tool-accuracy")
    status, html, _ = scenario.get("/ui/slo?agent=support-bot&slo=tool-accuracy")
    assert status == 200
    assert re.search(r'<b class="sli">(.*?)</b>', html).group(1) == f"{slo['sli_value']:.3%}"
    assert re.search(r'<b class="budget">(.*?)</b>', html).group(1) == f"{slo['budget_remaining']:.1%}"
    for window, burn in slo["burn_rates"].items():
        assert f"<title>{window}: {burn:g}x</title>" in html
    assert "<title>1h threshold 14.4x</title>" in html  # the Workbook's page rule
    assert "page:14.4x:1h/5m" in html  # its firing history, from the events table
    # Per hour from sli_minutes: every call failed, so each hour with calls burns what /v1/slos says for 1h.
    assert f"<title>peak: {slo['burn_rates']['1h']:g}x</title>" in html and "<title>threshold 14.4x</title>" in html
    assert "/ui/traces?agent=support-bot&amp;status=error&amp;since=24h" in html
    status, _, _ = scenario.get("/ui/slo?agent=support-bot&slo=nope")
    assert status == 404


@pytest.mark.slow
def test_the_cost_page_shows_budgets_and_spend_of_v1_costs(scenario):
    costs = scenario.api("/v1/costs?days=7")
    status, html, _ = scenario.get("/ui/costs?days=7")
    assert status == 200
    for b in costs["budgets"]:
        assert f"<td>{b['subject']}</td><td>{b['period']}</td><td class=\"num\">${b['spent_usd']:,.4f}</td>" in html \
            or f"<td>{b['subject']}</td><td>{b['period']}</td><td class=\"num\">${b['spent_usd']:,.2f}</td>" in html
    total = sum(r["cost_usd"] for r in costs["summary"])
    assert f"${total:.4f}</title>" in html  # today's bar
    assert scenario.get("/ui/costs?days=0")[0] == 400


@pytest.mark.slow
def test_the_incident_page_shows_the_log_the_cli_commands_and_the_postmortem(scenario):
    listed = scenario.api("/v1/incidents")["incidents"]
    ident = listed[0]["id"]
    _, html, _ = scenario.get("/ui/incidents")
    assert f'href="/ui/incidents/{ident}"' in html
    found = scenario.api(f"/v1/incidents/{ident}")
    status, html, _ = scenario.get(f"/ui/incidents/{ident}")
    assert status == 200
    assert f"agent-sre incidents ack {ident} --why" in html and "<form" not in html.split("<main>")[1]
    assert html.count("<tr><td>20") >= len(found["log"])  # one timeline row per log entry
    assert '<div class="card postmortem"><h2>' in html
    assert scenario.get("/ui/incidents/INC-99999")[0] == 404


@pytest.mark.slow
def test_trace_search_finds_by_agent_status_and_text_and_draws_the_delegation_as_one_tree(scenario):
    t = scenario.traces
    _, html, _ = scenario.get("/ui/traces?agent=support-bot&status=error")
    assert re.findall(r'class="trace" href="/ui/traces/([0-9a-f]{32})"', html) == [t["failing"]]
    _, html, _ = scenario.get("/ui/traces?text=my+refund&since=1h")
    assert re.findall(r'class="trace" href="/ui/traces/([0-9a-f]{32})"', html) == [t["planner"]]
    _, html, _ = scenario.get("/ui/traces?min_cost=0.5")
    assert re.findall(r'class="trace" href="/ui/traces/([0-9a-f]{32})"', html) == [t["pricey"]]
    tree = scenario.api(f"/v1/traces/{t['planner']}")
    status, html, _ = scenario.get(f"/ui/traces/{t['planner']}")
    assert status == 200 and set(tree["traces"]) == {t["planner"], t["delegated"]}
    assert html.count("data-span=") == tree["totals"]["spans"] == 5
    assert f"{tree['totals']['spans']} spans · 0 errors" in html and "traces 2" in html
    assert scenario.get("/ui/traces?min_cost=lots")[0] == 400
    assert scenario.get("/ui/traces/" + "0" * 32)[0] == 404


@pytest.mark.slow
def test_the_sql_box_answers_as_v1_query_and_downloads_csv(scenario):
    sql = "SELECT agent_id, count(*) AS n FROM spans GROUP BY ALL ORDER BY agent_id"
    req = urllib.request.Request(scenario.url("/v1/query"), data=json.dumps({"sql": sql}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        expected = json.loads(r.read())["rows"]
    status, body, headers = scenario.get("/ui/sql.csv?" + urllib.parse.urlencode({"q": sql}))
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == ["agent_id", "n"] and [[a, int(n)] for a, n in rows[1:]] == expected
    _, html, _ = scenario.get("/ui/sql?" + urllib.parse.urlencode({"q": sql}))
    assert f"{len(expected)} rows" in html and "download CSV" in html
    status, html, _ = scenario.get("/ui/sql?" + urllib.parse.urlencode({"q": "DELETE FROM spans"}))
    assert status == 403 and "only read-only statements" in html


@pytest.mark.slow
def test_a_foreign_host_is_refused_as_by_the_admin_api(scenario):
    status, body, _ = scenario.get("/ui", headers={"Host": "evil.example:80"})
    assert status == 403 and "is not one of this admin API's names" in body


@pytest.mark.slow
def test_pages_say_what_to_turn_on_when_a_processor_is_not_configured(tmp_path):
    service, ports, _ = start_on_free_ports(lambda p, _a: scenario_yaml(
        p, tmp_path, extensions="health_check, admin, console", processors="memory_limiter, agent_semconv, batch"))
    s = Scenario(service, ports, {})
    try:
        for path, says in (("/ui", "add the <code>slo</code> processor"), ("/ui/slo", "add the <code>slo</code>"),
                           ("/ui/costs", "add the <code>cost</code> processor"),
                           ("/ui/incidents", "add the <code>incidents</code> processor"),
                           ("/ui/traces/" + "a" * 32, "add the <code>replay</code> extension")):
            status, html, _ = s.get(path)
            assert status == 200 and says in html, path
        assert s.get("/ui/traces")[0] == 200
    finally:
        service.shutdown()


@pytest.mark.slow
def test_with_auth_reads_every_page_needs_the_admin_key(tmp_path):
    console = "{endpoint: 127.0.0.1:%(admin)s, auth: {keys: [{key: s3cret-key-0123456789}], reads: true}}"
    service, ports, _ = start_on_free_ports(lambda p, _a: scenario_yaml(
        p, tmp_path, extensions="health_check, admin, console", processors="memory_limiter, batch", console=console))
    s = Scenario(service, ports, {})
    try:
        assert s.get("/ui")[0] == 401 and s.get("/ui/static/console.css")[0] == 401
        assert s.get("/ui", headers={"Authorization": "Bearer s3cret-key-0123456789"})[0] == 200
    finally:
        service.shutdown()


# --- the search form, without a pipeline ---------------------------------------------------------

def test_a_search_reads_days_durations_and_refuses_bad_fields_by_name():
    day = TraceSearch.parse({"day": "2026-01-02"}, now_s=1.8e9)
    assert (day.start_ns, day.end_ns) == (1767312000 * 10**9, 1767398400 * 10**9)
    assert TraceSearch.parse({"since": "2h"}, now_s=1e9).start_ns == int((1e9 - 7200) * 1e9)
    for form, says in (({"since": "yesterday"}, "since is a duration"), ({"min_ms": "-1"}, "min_ms must not be negative"),
                       ({"status": "broken"}, "status is ok or error")):
        with pytest.raises(SearchError, match=says):
            TraceSearch.parse(form, now_s=1e9)


def test_a_budget_bar_marks_throttle_and_kill_and_turns_red_past_kill():
    from agent_sre.pipeline.service.console.svg import budget_bar

    bar = budget_bar(0.9, 0.85, 0.95, width=100)
    assert 'class="bar bar-throttle"' in bar and 'width="90.0"' in bar
    assert 'class="mark-throttle" x1="85.0"' in bar and 'class="mark-kill" x1="95.0"' in bar
    assert 'class="bar bar-kill"' in budget_bar(1.7, 0.85, 0.95) and 'width="160.0"' in budget_bar(1.7, 0.85, 0.95)


def test_the_postmortem_markdown_becomes_headings_tables_and_escaped_text():
    from agent_sre.pipeline.service.console.pages import markdown

    html = markdown("# Postmortem\n\n| a | b |\n|---|---|\n| 1 | <x> |\n- item\n```\ncode & more\n```")
    assert html == ("<h2>Postmortem</h2><table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td>"
                    "<td>&lt;x&gt;</td></tr></tbody></table><li>item</li><pre>code &amp; more</pre>")
