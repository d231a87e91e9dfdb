"""The agent-sre command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from agent_sre.pipeline.cli.admin_client import AdminClient, AdminError, AdminUnreachable
from agent_sre.pipeline.cli.cost import task_budgets
from tests.conftest import REPO, Ports, free_port, pipeline_yaml, spawn_pipeline, wait_http

DATA = Path(__file__).parent / "testdata"
CLI = [sys.executable, "-m", "agent_sre.pipeline.cli"]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _send_llm_spans(http_port: int, n: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "cli-test"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10)))
    tracer = provider.get_tracer("cli")
    for i in range(n):
        with tracer.start_as_current_span("chat", attributes={
                "agent.did": "did:web:cli", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10 + i}):
            pass
    provider.shutdown()


def _send_log_and_metric(http_port: int) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    logs = LoggerProvider()
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
        endpoint=f"http://127.0.0.1:{http_port}/v1/logs", timeout=10)))
    logs.get_logger("cli").emit(event_name="gen_ai.user.message", body="hello")
    logs.shutdown()
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/metrics",
                                                              timeout=10), export_interval_millis=3_600_000)
    meters = MeterProvider(metric_readers=[reader])
    meters.get_meter("cli").create_counter("calls").add(1)
    meters.shutdown()  # exports once, at shutdown


def test_validate_reports_every_error_with_its_path():
    res = cli("validate", "--config", str(DATA / "many_errors.yaml"))
    assert res.returncode == 2
    assert "(6 problems)" in res.stderr
    assert "processors::batch::timeout: must be a duration" in res.stderr
    assert "receivers::otlp::protocols::grpc::endpoint: must be host:port" in res.stderr


def test_validate_accepts_the_shipped_configs():
    for name in ("default.yaml", "sidecar.yaml"):
        res = cli("validate", "--config", str(Path(__file__).parents[2] / "config" / name))
        assert res.returncode == 0, res.stderr
        assert "valid" in res.stdout


def test_run_refuses_to_start_on_a_bad_config(tmp_path):
    res = cli("run", "--config", str(DATA / "unknown_type.yaml"), cwd=tmp_path)
    assert res.returncode == 2
    assert 'unknown type "otlpp"' in res.stderr
    assert not (tmp_path / "agent-sre-data").exists()


def test_components_lists_the_types():
    res = cli("components")
    assert res.returncode == 0
    for name in ("otlp", "memory_limiter", "batch", "agent_semconv", "duckdb", "debug", "health_check", "admin"):
        assert f"  {name} " in res.stdout


@pytest.mark.slow
def test_query_while_running_and_after_stopping(tmp_path, tmp_path_factory):
    ports = Ports.allocate()
    proc = spawn_pipeline(pipeline_yaml(ports, tmp_path), ports, tmp_path, tmp_path / "run.log")
    config = str(proc.config)
    sql = "SELECT agent_id, model, count(*), sum(input_tokens) FROM spans GROUP BY ALL"
    try:
        _send_llm_spans(ports.http, 3)
        live = cli("query", sql, "--config", config)
        assert live.returncode == 0, live.stderr
        assert live.stdout.splitlines()[0].split()[0] == "agent_id"
        assert "did:web:cli | gpt-4o | 3" in live.stdout and "| 33" in live.stdout
        refused = cli("query", "DELETE FROM spans", "--config", config)
        assert refused.returncode == 1 and "only read-only statements" in refused.stderr
        running = [cli(*args, "--config", config) for args in (("slo", "status"), ("cost", "summary"))]
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
    # No slo or cost processor in this pipeline: the same answer running and stopped (it was an empty
    # table running and exit 1 stopped; an error running and the file's rows stopped).
    stopped = [cli(*args, "--config", config) for args in (("slo", "status"), ("cost", "summary"))]
    for res, what in zip(running + stopped, ["no slo processor", "no cost processor"] * 2, strict=True):
        assert (res.returncode, res.stdout) == (2, ""), res
        assert what in res.stderr
    after = cli("query", sql, "--config", config, "--format", "csv")
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[1] == "did:web:cli,gpt-4o,3,33"
    out = tmp_path_factory.mktemp("parquet-elsewhere")  # outside the store's directory
    parquet = cli("export-parquet", "--config", config, "--out", str(out))
    assert parquet.returncode == 0, parquet.stderr
    files = list(out.rglob("*.parquet"))
    assert files and all("date=" in str(f) and "hour=" in str(f) for f in files)


@pytest.mark.slow
def test_run_on_the_embedded_default_prints_where_it_listens(tmp_path):
    ports = Ports.allocate()
    env = {"AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}",
           "AGENT_SRE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports.http}",
           "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
        _send_llm_spans(ports.http, 2)
        res = cli("query", "SELECT count(*) AS n FROM spans", "--endpoint", f"127.0.0.1:{ports.admin}", "--format",
                  "csv")
        assert res.stdout.splitlines() == ["n", "2"]
        _send_log_and_metric(ports.http)  # the embedded default takes all three signals
        res = cli("query", "SELECT (SELECT count(*) FROM logs) AS logs, (SELECT count(*) FROM metrics) AS points",
                  "--endpoint", f"127.0.0.1:{ports.admin}", "--format", "csv")
        assert res.stdout.splitlines() == ["logs,points", "1,1"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"OTLP/gRPC on 127.0.0.1:{ports.grpc}" in out
    assert f"OTLP/HTTP on http://127.0.0.1:{ports.http} (/v1/traces, /v1/metrics, /v1/logs" in out
    assert f"http://127.0.0.1:{ports.admin}" in out and f"http://127.0.0.1:{ports.metrics}/metrics" in out
    assert str(tmp_path / "agent-sre-data" / "spans.duckdb") in out
    assert (tmp_path / "agent-sre-data" / "spans.duckdb").exists()


@pytest.mark.slow
def test_run_stops_on_sigterm_even_when_signals_come_in_a_burst(tmp_path):
    """A signal handler that set a threading.Event while the main thread waited on it could deadlock
    (seen: `agent-sre run` hung for ever after a few SIGTERMs); the handler now only sets a flag."""
    ports = Ports.allocate()
    env = {"AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}", "AGENT_SRE_OTLP_HTTP_ENDPOINT":
           f"127.0.0.1:{ports.http}", "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
           "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}", "AGENT_SRE_RECEIVER_WORKERS": "0",
           "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}"}
    for _ in range(3):
        proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
            for _ in range(50):
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _default_env(ports: Ports, data: Path) -> dict:
    """The embedded default on free ports and a temporary store."""
    return {"AGENT_SRE_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.grpc}",
            "AGENT_SRE_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports.http}",
            "AGENT_SRE_ADMIN_ENDPOINT": f"127.0.0.1:{ports.admin}",
            "AGENT_SRE_METRICS_ADDRESS": f"127.0.0.1:{ports.metrics}",
            "AGENT_SRE_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports.prometheus}",
            "AGENT_SRE_DATA": str(data), "AGENT_SRE_RECEIVER_WORKERS": "0"}


def _run_agent_tasks(http_port: int, costs: list[float], failed_tools: int) -> None:
    """One task (trace) of agent triage-bot per cost: its LLM call reports the cost (gen_ai.usage.cost),
    then a tool call; the first ``failed_tools`` tool calls fail."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-service"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10)))
    tracer = provider.get_tracer("agent")
    for i, usd in enumerate(costs):
        with tracer.start_as_current_span("invoke_agent triage-bot", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "triage-bot"}):
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 100, "gen_ai.usage.cost": usd}):
                pass
            with tracer.start_as_current_span("execute_tool web_search", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search"}) as tool:
                if i < failed_tools:
                    tool.set_status(Status(StatusCode.ERROR, "upstream 503"))
    provider.shutdown()


def _early_in_a_minute(latest: float = 30.0) -> None:
    """Wait for a new minute unless this one is younger than ``latest`` seconds: what follows then reads
    the running and the stopped pipeline within the minute the spans arrived in."""
    into = time.time() % 60
    if into > latest:
        time.sleep(60 - into + 0.2)


def _table(stdout: str) -> list[list[str]]:
    """The first table of a command's output, its cells stripped (header first, no rule or count)."""
    lines = stdout.split("\n\n")[0].splitlines()
    return [[c.strip() for c in line.split(" | ")] for line in [lines[0], *lines[2:-1]]]


def _tables(stdout: str) -> list[list[list[str]]]:
    return [_table(block) for block in stdout.strip().split("\n\n")]


@pytest.mark.slow
def test_slo_status_and_cost_summary_answer_alike_running_and_stopped(tmp_path):
    """The embedded default, with and without --config: no data is said plainly (exit 0) whether the
    pipeline runs or never ran; with data, the stopped pipeline's file gives the running pipeline's
    tables (spans of the minute in progress included), and a task budget is one row, not one per trace."""
    ports = Ports.allocate()
    env = _default_env(ports, tmp_path / "data")
    default = str(REPO / "config" / "default.yaml")
    commands = [("slo", "status"), ("slo", "status", "--config", default), ("cost", "summary"),
                ("cost", "summary", "--config", default)]
    no_data = {"slo": "no SLO data yet", "cost": "no LLM spend"}

    for args in commands:  # no pipeline has run: no store yet
        res = cli(*args, cwd=tmp_path, env=env)
        assert (res.returncode, res.stdout) == (0, ""), res
        assert no_data[args[0]] in res.stderr and "no span store at" in res.stderr
    proc = subprocess.Popen([*CLI, "run"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "run.log", "ab"))
    try:
        wait_http(f"http://127.0.0.1:{ports.admin}/", timeout=60)
        for args in commands:  # running, nothing sent yet
            res = cli(*args, cwd=tmp_path, env=env)
            assert (res.returncode, res.stdout) == (0, ""), res
            assert no_data[args[0]] in res.stderr
        _early_in_a_minute()
        _run_agent_tasks(ports.http, [1.8, 2.0, 0.5], failed_tools=1)  # per-task limit $2: 90 %, 100 %, 25 %
        deadline = time.monotonic() + 30
        while not any(r["slo"] == "tool-accuracy" and r["events"] == 3 for r in json.loads(
                cli("slo", "status", "--format", "json", cwd=tmp_path, env=env).stdout)["slos"]):
            assert time.monotonic() < deadline, "the SLOs did not see the tool calls"
            time.sleep(0.2)
        running = {args: cli(*args, cwd=tmp_path, env=env) for args in commands}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    stopped = {args: cli(*args, cwd=tmp_path, env=env) for args in commands}

    for args in commands:
        assert running[args].returncode == 0, running[args].stderr
        assert stopped[args].returncode == 0, stopped[args].stderr
        assert stopped[args].stdout == running[args].stdout, args
    slos = {row[0]: row for row in _table(running["slo", "status"].stdout)[1:]}
    assert set(slos) == {"task-success", "tool-accuracy", "latency"}
    assert slos["tool-accuracy"][1:3] == ["triage-bot", "66.6667%"] and slos["tool-accuracy"][-1] == "exhausted"

    spend, budgets, tasks = _tables(running["cost", "summary"].stdout)
    assert [row[1:5] for row in spend[1:]] == [["triage-bot", "gpt-4o-mini", "4.300000", "3"]]
    assert [row[:5] for row in budgets[1:]] == [["agent-daily", "agent_day", "triage-bot", spend[1][0], "4.300000"],
                                                ["org-monthly", "org_month", "org", spend[1][0][:7], "4.300000"]]
    # The $0.50 task (25 % of $2) is under the budget's first step (50 %): no account, its spend in the others.
    assert tasks == [["task budget", "tasks past 1st step", "spent USD", "max task USD", "limit USD", "max used",
                      "throttled", "killed"],
                     ["per-task", "2", "3.800000", "2.000000", "2", "100.0%", "1", "1"]]

    as_json = json.loads(cli("cost", "summary", "--format", "json", cwd=tmp_path, env=env).stdout)
    (task,) = as_json["task_budgets"]
    assert (task["budget"], task["tasks"], task["throttled"], task["killed"]) == ("per-task", 2, 1, 1)
    assert {b["budget"] for b in as_json["budgets"]} == {"agent-daily", "org-monthly"}


def test_task_budgets_are_one_row_per_budget():
    from agent_sre.processors.cost.budget import BudgetSpec

    def account(budget: str, task: str, spent: float, limit: float = 1.0) -> dict:
        return {"budget": budget, "scope": "task", "subject": task, "period": "task", "spent_usd": spent,
                "limit_usd": limit, "utilisation": round(spent / limit, 6), "calls": 1, "resets_at": None}

    accounts = [{"budget": "daily", "scope": "agent_day", "subject": "a1", "period": "2026-01-01", "spent_usd": 5.0,
                 "limit_usd": 10.0, "utilisation": 0.5, "calls": 3, "resets_at": 0.0},
                account("task", "t1", 0.1), account("task", "t2", sum([0.085] * 10)), account("task", "t3", 0.9),
                account("task", "t4", sum([0.095] * 10)), account("task", "t5", 1.2),
                account("elsewhere", "t1", 0.5, 2.0)]
    rows = task_budgets(accounts, [BudgetSpec("task", "task", 1.0), BudgetSpec("daily", "agent_day", 10.0)])
    assert rows == [
        # a budget the config does not name: its throttle and kill points are not known
        {"budget": "elsewhere", "scope": "task", "tasks": 1, "spent_usd": 0.5, "max_spent_usd": 0.5,
         "limit_usd": 2.0, "max_utilisation": 0.25, "throttled": None, "killed": None},
        # throttle at 85 %, kill at 95 %, as the ledger counts: ten charges of 0.085 (0.8499999999999999)
        # reach the throttle point, ten of 0.095 the kill point
        {"budget": "task", "scope": "task", "tasks": 5, "spent_usd": 4.0, "max_spent_usd": 1.2, "limit_usd": 1.0,
         "max_utilisation": 1.2, "throttled": 2, "killed": 2}]
    assert task_budgets(accounts[:1], []) == []


def test_the_admin_client_tells_no_pipeline_from_an_error_answer(tmp_path):
    nobody = AdminClient(f"127.0.0.1:{free_port()}", timeout=5)
    assert nobody.base.startswith("http://127.0.0.1:")
    with pytest.raises(AdminUnreachable, match="no pipeline answers at 127.0.0.1:"):
        nobody.get_json("/v1/slos")
    assert AdminClient("https://example.test:8443/").url("/v1/costs", {"days": 7, "x": None}) == \
        "https://example.test:8443/v1/costs?days=7"
    ports = Ports.allocate()
    proc = spawn_pipeline(pipeline_yaml(ports, tmp_path), ports, tmp_path, tmp_path / "run.log")
    try:
        client = AdminClient(f"127.0.0.1:{ports.admin}", timeout=30)
        assert client.get_json("/v1/slos") == {"slos": [], "configured": False}
        with pytest.raises(AdminError) as refused:
            client.post_json("/v1/query", {"sql": "DELETE FROM spans"})
        assert refused.value.status == 403 and "only read-only statements" in str(refused.value)
        assert not isinstance(refused.value, AdminUnreachable)
        with pytest.raises(AdminError) as missing:
            client.get_json("/v1/costs")
        assert (missing.value.status, str(missing.value)) == (404, "no cost processor configured")
        assert client.post_json("/v1/query", {"sql": "SELECT 1 AS one"})["rows"] == [[1]]
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
