"""``slo status``, ``cost summary`` and ``incidents list`` with ``--store clickhouse://…``: two pipelines
send to a real ClickHouse 18.16 (Debian's clickhouse-server, the compat schema) and a third, local
pipeline gets every span of both; the fleet answers equal a hand computation and the local pipeline's."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from agent_sre.pipeline.cli.common import CliError
from agent_sre.pipeline.cli.cost import cmd_cost_summary
from agent_sre.pipeline.cli.incidents import cmd_incidents
from agent_sre.pipeline.cli.slo import cmd_slo_status
from tests.conftest import RunningPipeline, eventually, start_on_free_ports
from tests.otlp_builders import kv

pytestmark = pytest.mark.slow
DB = "fleetviews"

PROCESSORS = """processors:
  agent_semconv: {{}}
  batch: {{send_batch_size: 8192, timeout: 5ms}}
  cost:
    budgets:
      - {{name: per-task, scope: task, limit_usd: 2}}
      - {{name: agent-daily, scope: agent_day, limit_usd: 10}}
      - {{name: org-monthly, scope: org_month, limit_usd: 100}}
      - {{name: tenant-daily, scope: tenant_day, limit_usd: 20}}
  sli: {{}}
  slo:
    objectives:
      - {{name: task-success, sli: task_success_rate, target: 0.995, window: 30d}}
      - {{name: tool-accuracy, sli: tool_call_accuracy, target: 0.99, window: 30d}}
      - {{name: latency, sli: response_latency, target: 0.99, window: 30d}}
{more_processors}"""


def config(ports, data, clickhouse_url: str | None) -> str:
    """A sidecar (duckdb, clickhouse, incidents whose breakers open at the first failed tool call, its
    incident events to ClickHouse), or with ``clickhouse_url`` None the one local pipeline."""
    incidents = ("  incidents: {breakers: {roles: [tool], failure_threshold: 1, window: 1h, recovery_timeout: 1h}}\n"
                 if clickhouse_url else "")
    exporters = f"  duckdb: {{path: {data}/spans.duckdb}}\n"
    names, pipelines = "duckdb", ""
    if clickhouse_url:
        exporters += (f"  clickhouse:\n    endpoint: {clickhouse_url}\n    create_schema: true\n"
                      "    retry_on_failure: {initial_interval: 100ms, max_interval: 500ms}\n")
        names = "duckdb, clickhouse"
        pipelines = "    events: {receivers: [alerts], exporters: [clickhouse]}\n"
    return (f"receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: 127.0.0.1:{ports.grpc}}}\n"
            f"      http: {{endpoint: 127.0.0.1:{ports.http}}}\n"
            + ("  alerts: {}\n" if clickhouse_url else "")
            + PROCESSORS.format(more_processors=incidents) + f"exporters:\n{exporters}"
            + "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n"
            + f"      processors: [agent_semconv, batch, cost, sli, slo{', incidents' if incidents else ''}]\n"
            + f"      exporters: [{names}]\n{pipelines}"
            + f"  telemetry:\n    metrics:\n      address: 127.0.0.1:{ports.metrics}\n")


TENANTS = {"agent-a": "acme", "agent-b": "globex"}  # the resource's tenant.id of each agent's spans


def tasks_request(agent: str, tasks: list[dict], start_s: int):
    """One trace per task: invoke_agent (agent_task), a chat (llm) reporting its cost, a tool call.
    ``task``: cost, chat_s (the chat's seconds; the task lasts it plus 5), tool_failed, task_failed."""
    import os

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "support"))
    rs.resource.attributes.append(kv("tenant.id", TENANTS[agent]))
    ss = rs.scope_spans.add()
    for i, task in enumerate(tasks):
        trace, root = os.urandom(16), os.urandom(8)
        start = (start_s + i) * 10**9
        spans = [("invoke_agent", root, b"", task["chat_s"] + 5, task.get("task_failed", False),
                  {"gen_ai.operation.name": "invoke_agent"}),
                 ("chat gpt-4o-mini", os.urandom(8), root, task["chat_s"], False,
                  {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model":
                   "gpt-4o-mini", "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cost": task["cost"]}),
                 ("execute_tool web_search", os.urandom(8), root, 1, task.get("tool_failed", False),
                  {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search"})]
        if "scored_attr" in task:  # an evaluator's hallucination score on the chat span itself
            spans[1][5]["eval.hallucination.score"] = task["scored_attr"]
        for name, span_id, parent, seconds, failed, attrs in spans:
            sp = ss.spans.add()
            sp.trace_id, sp.span_id, sp.parent_span_id, sp.name = trace, span_id, parent, name
            sp.start_time_unix_nano, sp.end_time_unix_nano = start, start + seconds * 10**9
            sp.status.code = 2 if failed else 1
            for k, v in {**attrs, "gen_ai.agent.id": agent}.items():
                sp.attributes.append(kv(k, v))
            if name.startswith("chat") and "scored_event" in task:  # or as a GenAI evaluation result event
                ev = sp.events.add(name="gen_ai.evaluation.result", time_unix_nano=sp.end_time_unix_nano)
                ev.attributes.extend([kv("gen_ai.evaluation.name", "hallucination"),
                                      kv("gen_ai.evaluation.score.value", task["scored_event"])])
    return req


SIDECAR_A = {"agent-a": [{"cost": 0.5, "chat_s": 2, "tool_failed": True, "scored_event": 0.1},
                         {"cost": 0.25, "chat_s": 40, "scored_attr": 0.8},
                         {"cost": 0.125, "chat_s": 3}, {"cost": 1.0, "chat_s": 2}]}
SIDECAR_B = {"agent-a": [{"cost": 0.75, "chat_s": 2, "tool_failed": True, "task_failed": True, "scored_event": 0.9},
                         {"cost": 0.5, "chat_s": 2}, {"cost": 2.0, "chat_s": 2}],
             "agent-b": [{"cost": 1.5, "chat_s": 2}, {"cost": 0.5, "chat_s": 2, "tool_failed": True}]}
SPANS = 3 * sum(len(t) for side in (SIDECAR_A, SIDECAR_B) for t in side.values())


def _start_in_todays_budget_periods() -> int:
    """Ten minutes ago (every window but 5m holds the spans) -- but inside the UTC day the tests will ask
    about: the agent-day and tenant-day budgets count today's spend only.  Close to midnight this waits
    for the new day (at most 8 minutes, in 1 run of ~100 near midnight) and starts the spans at it."""
    day = 86400
    now = time.time()
    if now % day > day - 300:  # the tests would ask after midnight about spans sent before it
        time.sleep(day - now % day + 1)
        now = time.time()
    if now % day < 180:  # the spans' traces must have ended and gone quiet before the tests ask
        time.sleep(180 - now % day)
        now = time.time()
    midnight = int(now) // day * day
    return max((int(now) // 60 - 10) * 60 + 1, midnight + 1)


@pytest.fixture(scope="module")
def fleet(clickhouse, tmp_path_factory):
    """Spans of two sidecars in the fleet store; the local pipeline that got all of them, stopped (its
    file answers as it did running)."""
    start_s = _start_in_todays_budget_periods()
    started: list[RunningPipeline] = []
    try:
        for name, url in (("a", clickhouse.url(DB)), ("b", clickhouse.url(DB)), ("local", None)):
            data = tmp_path_factory.mktemp(name)
            service, ports, text = start_on_free_ports(lambda p, _a, d=data, u=url: config(p, d, u))
            (data / "config.yaml").write_text(text)
            started.append(RunningPipeline(service, ports, data))
        a, b, local = started
        for sidecar, side in ((a, SIDECAR_A), (b, SIDECAR_B)):
            for offset, (agent, tasks) in enumerate(side.items()):
                req = tasks_request(agent, tasks, start_s + 10 * offset)
                sidecar.service.receivers[0].ingest.export(req, "test")
                local.service.receivers[0].ingest.export(req, "test")
        client = clickhouse.client()

        def stored() -> int:
            try:
                return client.execute(f"SELECT count() FROM {DB}.spans")[0][0]
            except Exception:  # noqa: BLE001 - the schema is created by the first export
                return -1

        assert eventually(lambda: stored() == SPANS, timeout=30), stored()
        assert local.sql("SELECT count(*) FROM spans") == [(SPANS,)]
        assert eventually(lambda: _incident_events(client) >= 2, timeout=30), "no incident events reached ClickHouse"
        local.service.shutdown()
        yield {"url": clickhouse.url(DB), "reader": clickhouse.url(DB, user="reader"), "a": a, "b": b,
               "local": str(local.data_dir / "config.yaml")}
    finally:
        for p in started:
            p.service.shutdown()


def _incident_events(client) -> int:
    try:
        return client.execute(f"SELECT count() FROM {DB}.events WHERE kind = 'incident'")[0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return -1


def _json(capsys, fn, **args) -> dict:
    """The command's JSON answer; what it said on standard error under ``"stderr"``."""
    capsys.readouterr()
    assert fn(argparse.Namespace(endpoint=None, db=None, format="json", **args)) == 0
    out = capsys.readouterr()
    return {**json.loads(out.out), "stderr": out.err}


def test_slo_status_over_the_fleet_store_counts_every_pipeline_like_one_local_pipeline(fleet, capsys):
    fleet_rows = _json(capsys, cmd_slo_status, config=fleet["local"], store=fleet["reader"])["slos"]
    local_rows = _json(capsys, cmd_slo_status, config=fleet["local"], store=None)["slos"]
    assert fleet_rows == local_rows and fleet_rows
    by = {(r["slo"], r["agent_id"]): r for r in fleet_rows}
    # By hand: agent-a ran 4 tasks on sidecar a and 3 on b; one tool call failed on each, one task failed
    # on b, one chat on a took 40 s (its task 45 s: two slow events of 14, over the 30 s threshold).
    assert (by["tool-accuracy", "agent-a"]["events"], by["tool-accuracy", "agent-a"]["bad_events"]) == (7, 2)
    assert by["tool-accuracy", "agent-a"]["sli_value"] == round(5 / 7, 6)
    assert (by["task-success", "agent-a"]["events"], by["task-success", "agent-a"]["bad_events"]) == (7, 1)
    assert (by["latency", "agent-a"]["events"], by["latency", "agent-a"]["bad_events"]) == (14, 2)
    assert (by["tool-accuracy", "agent-b"]["events"], by["tool-accuracy", "agent-b"]["bad_events"]) == (2, 1)
    assert by["tool-accuracy", "agent-a"]["burn_rates"]["1h"] == round((2 / 7) / 0.01, 6)
    assert by["tool-accuracy", "agent-a"]["status"] == "exhausted"


def test_slo_status_over_the_fleet_store_prints_the_local_table(fleet, capsys):
    capsys.readouterr()
    assert cmd_slo_status(argparse.Namespace(config=fleet["local"], store=fleet["reader"], endpoint=None,
                                             format="table")) == 0
    fleet_table = capsys.readouterr().out
    assert cmd_slo_status(argparse.Namespace(config=fleet["local"], store=None, endpoint=None, format="table")) == 0
    assert capsys.readouterr().out == fleet_table
    assert "tool-accuracy | agent-a | 71.4286%" in fleet_table


def test_cost_summary_over_the_fleet_store_equals_one_pipeline_given_all_spans(fleet, capsys):
    fleet_body = _json(capsys, cmd_cost_summary, config=fleet["local"], store=fleet["reader"], days=7)
    local_body = _json(capsys, cmd_cost_summary, config=fleet["local"], store=None, days=7)
    assert {**fleet_body, "stderr": ""} == {**local_body, "stderr": ""}
    spend = {r["agent_id"]: (r["cost_usd"], r["llm_spans"]) for r in fleet_body["summary"]}
    assert spend == {"agent-a": (5.125, 7), "agent-b": (2.0, 2)}  # 1.875 on a + 3.25 on b; 2.0 on b
    budgets = {(b["budget"], b["subject"]): b["spent_usd"] for b in fleet_body["budgets"]}
    assert budgets[("agent-daily", "agent-a")] == 5.125 and budgets[("org-monthly", "org")] == 7.125
    # tenant budgets from the fleet's spend per tenant (the resource's tenant.id), as the local store has them
    assert (budgets[("tenant-daily", "acme")], budgets[("tenant-daily", "globex")]) == (5.125, 2.0)
    (task,) = fleet_body["task_budgets"]
    # per task budget ($2): the tasks that reached its first step ($1): 1.0 on a, 2.0 on b, agent-b's 1.5
    assert (task["tasks"], task["max_spent_usd"], task["killed"]) == (3, 2.0, 1)


def test_incidents_list_over_the_fleet_store_has_each_pipelines_incident(fleet, capsys):
    """Both sidecars open INC-00001 (their first failed tool call opens a breaker): two incidents, each as
    its pipeline lists it (once its latest incident event has reached ClickHouse), told apart by the time
    they opened."""
    from agent_sre.processors.incidents.factory import incident_list

    keys = ("id", "agent_id", "priority", "state", "opened_ns", "title")
    answers: list[dict] = []

    def alike() -> bool:
        answers.append(_json(capsys, cmd_incidents, config=fleet["local"], store=fleet["reader"],
                             incidents_command="list", all=True))
        own = [i for sidecar in (fleet["a"], fleet["b"]) for i in incident_list(sidecar.sql, True)]
        mine = sorted(tuple(i[k] for k in keys) for i in answers[-1]["incidents"])
        return len(mine) >= 2 and mine == sorted(tuple(i[k] for k in keys) for i in own)

    assert eventually(alike, timeout=30), answers[-1]
    for row in answers[-1]["incidents"]:
        assert row["title"] and row["signals"] is None  # the count changes with every signal: not an event label
    assert "numbered by more than one pipeline: INC-00001" in answers[-1]["stderr"]


def test_incident_show_needs_the_pipeline_that_opened_it(fleet):
    with pytest.raises(CliError, match="keeps incident events, not an incident's log"):
        cmd_incidents(argparse.Namespace(config=fleet["local"], store=fleet["url"], incidents_command="show",
                                         id="INC-00001", endpoint=None, db=None, format="table", all=False))


def test_task_slis_and_hallucination_rate_are_answered_over_the_fleet_store(fleet, tmp_path, capsys):
    cfg = tmp_path / "slos.yaml"
    text = open(fleet["local"]).read().replace(
        "      - {name: latency, sli: response_latency, target: 0.99, window: 30d}",
        "      - {name: latency, sli: response_latency, target: 0.99, window: 30d}\n"
        "      - {name: cheap-tasks, sli: cost_per_task, target: 0.9, window: 1d}\n"
        "      - {name: truthful, sli: hallucination_rate, target: 0.9, window: 1d}")
    cfg.write_text(text)
    answer = _json(capsys, cmd_slo_status, config=str(cfg), store=fleet["url"])
    assert {r["slo"] for r in answer["slos"]} == {"task-success", "tool-accuracy", "latency", "cheap-tasks",
                                                  "truthful"}, answer["stderr"]
    assert "not answered" not in answer["stderr"]
    # hallucination_rate from the evaluation results the sidecars' exporters kept of the chat spans' events
    # (sidecar a: 0.1 as an event, 0.8 as the span's attribute; b: 0.9 as an event; good below 0.5), as the
    # local pipeline that got every span counts it
    (truthful,) = [r for r in answer["slos"] if r["slo"] == "truthful"]
    assert (truthful["agent_id"], truthful["events"], truthful["bad_events"]) == ("agent-a", 3, 2)
    local = _json(capsys, cmd_slo_status, config=str(cfg), store=None)
    assert [r for r in local["slos"] if r["slo"] == "truthful"] == [truthful]
    # A task SLI over the fleet, by hand (cost_per_task: a task costing at most $1.00 is good): agent-a's
    # tasks cost 0.5, 0.25, 0.125, 1.0 on sidecar a and 0.75, 0.5, 2.0 on b; agent-b's 1.5 and 0.5.
    by = {r["agent_id"]: r for r in answer["slos"] if r["slo"] == "cheap-tasks"}
    assert (by["agent-a"]["events"], by["agent-a"]["bad_events"]) == (7, 1)
    assert (by["agent-b"]["events"], by["agent-b"]["bad_events"]) == (2, 1)


def test_a_fleet_store_without_the_exporters_tables_says_so(clickhouse):
    with pytest.raises(CliError, match=r"ClickHouse error 81.*create_schema: true"):
        cmd_slo_status(argparse.Namespace(config=None, store=clickhouse.url("nothing_here"), endpoint=None,
                                          format="json"))


def test_a_store_that_is_not_clickhouse_is_refused():
    with pytest.raises(CliError, match=r"--store must be clickhouse://"):
        cmd_slo_status(argparse.Namespace(config=None, store="postgres://x/y", endpoint=None, format="json"))
