"""``agent-sre chaos``: templates without a pipeline, list and report from a stopped pipeline's file (the
same answers as the running processor), start and stop only through a running pipeline; and, once the
admin API serves /v1/chaos, the whole round trip through it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from agent_sre.pipeline.cli.chaos import _overrides
from agent_sre.pipeline.cli.main import build_parser, main
from tests.conftest import free_port
from tests.processors.chaos.helpers import Span, start


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def nobody() -> str:
    return f"127.0.0.1:{free_port()}"  # no pipeline answers there


def test_templates_are_listed_without_a_pipeline_with_the_configs_overrides(capsys, tmp_path):
    code, out, _ = run(capsys, "chaos", "templates", "--endpoint", nobody())
    assert code == 0 and out.splitlines()[-1] == "(10 rows)"
    assert any(line.startswith("tool-error-storm ") and "tool_error 0.3" in line for line in out.splitlines())
    config = tmp_path / "p.yaml"
    config.write_text("""
receivers: {otlp: {protocols: {http: {endpoint: 127.0.0.1:0}}}}
processors:
  chaos:
    templates:
      tool-error-storm: {faults: [{type: tool_error, rate: 0.6}]}
      flaky-search: {description: ours, faults: [{type: tool_error, rate: 0.1, tools: [search]}]}
exporters: {debug: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [chaos], exporters: [debug]}}}
""")
    code, out, _ = run(capsys, "chaos", "templates", "--config", str(config), "--endpoint", nobody(), "--format", "json")
    templates = {t["name"]: t for t in json.loads(out)["templates"]}
    assert code == 0 and len(templates) == 11
    assert templates["tool-error-storm"]["faults"] == [{"type": "tool_error", "rate": 0.6}]
    assert templates["flaky-search"]["description"] == "ours"


def test_start_and_stop_need_the_running_pipeline(capsys):
    code, _, err = run(capsys, "chaos", "start", "tool-error-storm", "--agent", "a", "--endpoint", nobody())
    assert code == 1 and "chaos start needs the running pipeline" in err
    code, _, err = run(capsys, "chaos", "stop", "CHX-00001", "--endpoint", nobody())
    assert code == 1 and "chaos stop needs the running pipeline" in err


def test_start_flags_become_template_overrides(tmp_path):
    override = tmp_path / "o.yaml"
    override.write_text("duration: 2m\nblast_radius: {sessions: 0.5}\n")
    args = build_parser().parse_args(["chaos", "start", "tool-error-storm", "--agent", "a", "--rate", "0.5", "--seed",
                                      "9", "--tool", "search", "--tool", "fetch", "--override", str(override)])
    assert _overrides(args) == {"duration": "2m", "blast_radius": {"sessions": 0.5, "tools": ["search", "fetch"]},
                                "rate": 0.5, "seed": 9}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chaos", "start", "t", "--agent", "a", "--rate", "1.5"])


def test_list_and_report_read_a_stopped_pipelines_file_as_the_processor_answers(capsys, tmp_path):
    t0 = float(int(time.time()) - 600)
    p = start(tmp_path)
    try:
        p.chaos.clock = lambda: t0 + 60
        ended = p.chaos.start_experiment("tool-error-storm", ["a"], "60s", {"abort": [], "seed": 11})
        p.send([Span("a", "tool", 10 + i) for i in range(10)]
               + [Span("a", "tool", 61 + i, error=i < 3, injected=ended["id"] if i < 3 else None) for i in range(10)]
               + [Span("a", "tool", 125 + i) for i in range(10)], int(t0 * 1e9))
        p.chaos.clock = lambda: t0 + 121
        p.chaos.check()
        p.chaos.clock = time.time
        p.chaos.check()  # the after window has passed: judged, the result kept with the experiment
        running = p.chaos.start_experiment("llm-latency-spike", ["a", "b"], "1h")
        live = p.chaos.report(ended["id"])
    finally:
        p.shutdown()
    db = str(tmp_path / "spans.duckdb")

    code, out, _ = run(capsys, "chaos", "list", "--db", db, "--format", "json")
    assert code == 0 and [e["id"] for e in json.loads(out)["experiments"]] == [running["id"]]
    code, out, _ = run(capsys, "chaos", "list", "--all", "--db", db)
    lines = out.splitlines()
    cells = [[c.strip() for c in line.split(" | ")] for line in lines[:1] + lines[2:4]]
    assert [row[:4] + row[-1:] for row in cells] == [
        ["id", "template", "agents", "state", "reason"],
        [running["id"], "llm-latency-spike", "a,b", "running", "-"],
        [ended["id"], "tool-error-storm", "a", "ended", "the schedule ended"]]
    assert cells[2][6] == f"{live['resilience_score']:g}" and lines[-1] == "(2 rows)"

    code, out, _ = run(capsys, "chaos", "report", ended["id"], "--db", db, "--format", "json")
    assert code == 0
    from_file = json.loads(out)
    assert from_file == json.loads(json.dumps(live))  # the same functions over the same spans
    assert from_file["calls"]["during"]["errors"] == 3 and from_file["injected"]["total"] == 3
    code, out, _ = run(capsys, "chaos", "report", ended["id"], "--db", db)
    assert "tool_call_accuracy" in out and "injected faults: 3 (tool_error 3)" in out
    assert f"resilience score: {live['resilience_score']:g}" in out
    code, _, err = run(capsys, "chaos", "report", "CHX-00042", "--db", db)
    assert code == 1 and "no chaos experiment 'CHX-00042'" in err


def test_the_cli_round_trip_through_a_running_pipelines_admin_api(capsys, tmp_path):
    p = start(tmp_path)
    try:
        endpoint = f"127.0.0.1:{p.ports.admin}"
        try:
            urllib.request.urlopen(f"http://{endpoint}/v1/chaos/templates", timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                pytest.skip("the admin API does not serve /v1/chaos yet (wired by the lead)")
            raise
        code, out, _ = run(capsys, "chaos", "start", "tool-error-storm", "--agent", "a", "--duration", "10m",
                           "--seed", "5", "--endpoint", endpoint, "--format", "json")
        exp = json.loads(out)
        assert code == 0 and (exp["state"], exp["seed"]) == ("running", 5)
        assert p.get("/v1/decisions/a")["chaos"][0]["id"] == exp["id"]
        code, out, _ = run(capsys, "chaos", "list", "--endpoint", endpoint, "--format", "json")
        assert [e["id"] for e in json.loads(out)["experiments"]] == [exp["id"]]
        code, out, _ = run(capsys, "chaos", "stop", exp["id"], "--why", "done", "--endpoint", endpoint)
        assert code == 0 and out.startswith(f"stopped {exp['id']}")
        code, out, _ = run(capsys, "chaos", "report", exp["id"], "--endpoint", endpoint, "--format", "json")
        assert json.loads(out)["experiment"]["state"] == "stopped"
        code, _, err = run(capsys, "chaos", "start", "nope", "--agent", "a", "--endpoint", endpoint)
        assert code == 1 and "unknown template 'nope'" in err
    finally:
        p.shutdown()
