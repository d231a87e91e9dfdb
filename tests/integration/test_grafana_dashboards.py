"""deploy/grafana: the dashboards are well-formed Grafana JSON, and every PromQL expression in them returns
data from a real Prometheus (Debian's) that scraped a running pipeline with scripted traffic — the prometheus
exporter's endpoint and the pipeline's own metrics — and evaluated the rules `agent-sre slo rules` wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from agent_sre.pipeline.cli.main import main as cli
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, free_port, pipeline_yaml
from tests.otlp_builders import kv
from tests.prometheus_server import PrometheusApi, binary, prometheus

DASHBOARDS = sorted((Path(__file__).parents[2] / "deploy" / "grafana").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's unit ids used by dashboards like ours (packages/grafana-data/src/valueFormats/categories.ts), plus
# its custom-unit syntax ("suffix:x").
UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "reqps", "ops", "bytes", "decbytes",
         "bool_on_off", "bool", "currencyUSD", "locale", "dtdurations"}
CUSTOM_UNIT = re.compile(r"^(suffix|prefix|si|count|currency):.+$")
# Grafana's built-in interval variables, filled for a 1h view (a rate window of a minute holds ~60 scrapes here).
BUILTINS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(board: dict) -> Iterator[dict]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row keeps its panels inside


def expressions(board: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]


def test_the_four_dashboards_are_there():
    assert [p.stem for p in DASHBOARDS] == ["agent-sre-cost", "agent-sre-fleet", "agent-sre-pipeline",
                                            "agent-sre-slo-burn"]
    assert len({load(p)["uid"] for p in DASHBOARDS}) == 4


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_structurally_valid(path):
    board = load(path)
    assert board["uid"] == path.stem and board["title"].startswith("Agent-SRE / ")
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    all_panels = list(panels(board))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    boxes = []
    for p in all_panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0 and g["y"] >= 0, p["title"]
        boxes.append((p["title"], g))
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"] and all(t["datasource"] == DATASOURCE and t["expr"] for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        unit = p["fieldConfig"]["defaults"]["unit"]
        assert unit in UNITS or CUSTOM_UNIT.match(unit), f"{p['title']}: unknown unit {unit!r}"
        assert p["title"] and p.get("description"), f"panel {p['id']} needs a title and a description"
    for i, (a, ga) in enumerate(boxes):  # no two panels overlap
        for b, gb in boxes[i + 1:]:
            overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                       and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
            assert not overlap, f"{a!r} overlaps {b!r}"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE and re.fullmatch(r"label_values\(\w+, \w+\)", v["definition"])
    used = {m for _, e in expressions(board) for m in re.findall(r"\$(\w+)", e)} - {"__rate_interval", "__range"}
    assert used <= set(variables), f"undefined variables {used - set(variables)} in {path.name}"


# ---------------------------------------------------------------------------- the live check

SLO_YAML = """  sli: {}
  slo:
    interval: 1s
    objectives:
      - {name: tool-accuracy, sli: tool_call_accuracy, target: 0.99, window: 1d}
      - {name: task-success, sli: task_success_rate, target: 0.995, window: 1d}
"""


def config_text(tmp_path: Path, ports: Ports, metrics_port: int, dead_port: int) -> str:
    """The default shape plus the SLOs, the prometheus exporter, and an OTLP exporter whose backend is down
    (so exporter failures are real)."""
    down = (f"  otlp/down:\n    endpoint: 127.0.0.1:{dead_port}\n    tls: {{insecure: true}}\n    timeout: 1s\n"
            "    retry_on_failure: {enabled: false}\n    sending_queue: {drain_timeout: 0s}\n")
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, sli, slo, batch",
                         exporters="duckdb, prometheus, otlp/down",
                         extra=f"  prometheus:\n    endpoint: 127.0.0.1:{metrics_port}\n{down}")
    # budgets small enough that the traffic's tasks pass their throttle line (the task gauge has data)
    cost = ("  cost:\n    budgets:\n      - {name: agent-daily, scope: agent_day, limit_usd: 100}\n"
            "      - {name: per-task, scope: task, limit_usd: 0.0001}\n")
    return text.replace("  batch:\n", cost + SLO_YAML + "  batch:\n", 1)


def span(ss, attrs: dict, failed: bool, now: int, trace_id: bytes | None = None) -> None:
    sp = ss.spans.add()
    sp.trace_id, sp.span_id, sp.name = trace_id or os.urandom(16), os.urandom(8), attrs["gen_ai.operation.name"]
    sp.start_time_unix_nano, sp.end_time_unix_nano = now - 40_000_000, now
    sp.attributes.extend(kv(k, v) for k, v in attrs.items())
    if failed:
        sp.status.code = Status.STATUS_CODE_ERROR


def traffic(now: int) -> ExportTraceServiceRequest:
    """One round: a healthy agent and a failing one (half its tool calls and tasks fail), each a task, tool
    calls and LLM calls on two models; plus one span whose trace id is invalid (refused)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "fleet"))
    ss = rs.scope_spans.add()
    for agent, fail_every in (("checkout-agent", 0), ("support-agent", 2)):
        base = {"agent.did": agent, "agent.version": "1.0"}
        for i in range(4):
            failed = bool(fail_every) and i % fail_every == 0
            span(ss, {**base, "gen_ai.operation.name": "invoke_agent"}, failed, now)
            span(ss, {**base, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}, failed, now)
            model = ("gpt-4o", "claude-sonnet")[i % 2]
            span(ss, {**base, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                      "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 300 + i,
                      "gen_ai.usage.output_tokens": 40}, False, now)
    span(ss, {"gen_ai.operation.name": "chat"}, False, now, trace_id=os.urandom(15))
    return req


def post(port: int, req: ExportTraceServiceRequest) -> None:
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=req.SerializeToString(),
                               headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(r, timeout=10) as answer:
        assert answer.status == 200


def variable_values(prom: PrometheusApi, variable: dict) -> str:
    """What Grafana puts in place of a multi-value variable set to every value its query returns: regex-escaped
    values, backslashes doubled for PromQL's string literal."""
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()
    values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
    assert values, f"variable {variable['name']}: {variable['definition']} returned nothing"
    return "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in sorted(values)) + ")"


def substituted(expr: str, variables: dict[str, str]) -> str:
    for name, value in {**BUILTINS, **{f"${k}": v for k, v in variables.items()}}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_prometheus_scraping_a_live_pipeline(tmp_path):
    ports, metrics_port = Ports.allocate(), free_port()
    config = tmp_path / "pipeline.yaml"
    config.write_text(config_text(tmp_path, ports, metrics_port, dead_port=free_port()))
    rules = tmp_path / "slo-rules.yml"
    assert cli(["slo", "rules", "--config", str(config), "--out", str(rules)]) == 0
    subprocess.run([binary("promtool"), "check", "rules", str(rules)], check=True, capture_output=True)

    service = Service(parse_config(config.read_text(), str(config)))
    service.start()
    stop, errors = threading.Event(), []

    def send() -> None:  # a round every 0.5 s while Prometheus scrapes, so rates and increases are real
        rounds = 0
        while not stop.is_set():
            try:
                post(ports.http, traffic(time.time_ns()))
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost with the thread
                errors.append(f"round {rounds}: {exc!r}")
                return
            rounds += 1
            stop.wait(0.5)

    sender = threading.Thread(target=send, daemon=True)
    try:
        post(ports.http, traffic(time.time_ns()))
        sender.start()
        with prometheus(tmp_path, [ports.metrics, metrics_port], [rules]) as prom:
            missing = wait_for_every_query(prom, deadline=time.monotonic() + 45)
            assert not missing, "queries without data:\n" + "\n".join(missing)
            # and the numbers are the scenario's: half the failing agent's tool calls fail (burn 0.5 / 0.01)
            burn = 'agent_sre:slo_burn_rate:5m{slo="tool-accuracy", agent_id="%s"}'
            alerts = 'ALERTS{alertname="AgentSloBurnRate", alertstate="firing"}'
            # Every panel's query having data does not mean every agent's series and the alert are there yet:
            # each rule group is evaluated on its own interval (seen once in CI: the burn of one agent empty).
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and not (
                    query(prom, burn % "support-agent") and query(prom, burn % "checkout-agent")
                    and query(prom, alerts)):
                time.sleep(0.5)
            assert float(query(prom, burn % "support-agent")[0]["value"][1]) == pytest.approx(50)
            assert float(query(prom, burn % "checkout-agent")[0]["value"][1]) == 0
            firing = query(prom, alerts)
            assert {a["metric"]["agent_id"] for a in firing} == {"support-agent"}
        stop.set()
        sender.join(timeout=15)
        assert not errors, errors
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=15)
        service.shutdown()


def wait_for_every_query(prom: PrometheusApi, deadline: float) -> list[str]:
    """Each dashboard's queries, with its variables filled from their own queries, until all return data or
    the deadline passes; what still returns nothing."""
    pending = {}
    for path in DASHBOARDS:
        board = load(path)
        for title, expr in expressions(board):
            pending[(path.stem, title, expr)] = board
    values: dict[str, dict[str, str]] = {}
    while True:
        for key, board in list(pending.items()):
            stem, _, expr = key
            if stem not in values:
                try:
                    values[stem] = {v["name"]: variable_values(prom, v) for v in board["templating"]["list"]
                                    if v["type"] == "query"}
                except AssertionError:
                    continue  # a variable's metric is not scraped yet
            if query(prom, substituted(expr, values[stem])):
                del pending[key]
        if not pending or time.monotonic() > deadline:
            return [f"{stem} / {title}: {expr}" for stem, title, expr in pending]
        time.sleep(1)


def query(prom: PrometheusApi, expr: str) -> list[dict]:
    """An instant query's result; a query Prometheus refuses fails the test with its reason."""
    try:
        return prom.get("/api/v1/query", query=expr)["result"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus refused {expr}: {exc.read().decode()}") from None
