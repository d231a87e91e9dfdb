"""``agent-sre what-if``: on a stopped pipeline's file (``--db`` and ``--config``), and through the admin
API of a running one (``POST /v1/what-if``) with the file as the fallback when none answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from agent_sre.pipeline.cli.common import CliError
from agent_sre.pipeline.cli.main import main
from agent_sre.pipeline.cli.whatif import parse_instant
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.sli.factory import SliConfig, builtin_slis
from tests.conftest import free_port

S = 10**9
MIN = 60 * S
T0 = 1_736_935_200 * S  # 2025-01-15 10:00:00 UTC
RANGE = ["--since", "2025-01-15T10:00:00Z", "--until", "2025-01-15T11:00:00Z"]

CONFIG = """
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:4318
processors:
  cost:
    budgets:
      - {{name: per-task, scope: task, limit_usd: 2}}
      - {{name: agent-daily, scope: agent_day, limit_usd: 1}}
  sli: {{}}
  slo:
    objectives:
      - {{name: tool-accuracy, sli: tool_call_accuracy, target: 0.99, window: 30d}}
  incidents:
    breakers: {{failure_threshold: 3, window: 60s}}
  batch: {{}}
exporters:
  duckdb:
    path: {store}
extensions:
  admin:
    endpoint: 127.0.0.1:{admin}
service:
  extensions: [admin]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [cost, sli, slo, incidents, batch]
      exporters: [duckdb]
"""


def span(trace: str, span_id: str, role: str, start: int, dur: int = S, **cols) -> dict:
    row = {"trace_id": trace, "span_id": span_id, "parent_span_id": "", "name": span_id, "kind": "internal",
           "start_ns": T0 + start, "end_ns": T0 + start + dur, "duration_ns": dur, "status_code": "unset",
           "span_role": role, "agent_id": "a1", "service_name": "svc", "attributes": [],
           "resource_attributes": [], "scope_attributes": []}
    row.update(cols)
    return row


# Ten gpt-4o calls, one a minute, 1,000 input and 100 output tokens each: at gpt-4o's $2.50 / $10 per
# million tokens, 0.0025 + 0.001 = $0.0035 each (stored so); 200 tool calls, one of them failed.
SPANS = [span(f"t{k}", "llm", "llm", k * MIN, model="gpt-4o", provider="openai", input_tokens=1000,
              output_tokens=100, cost_usd=0.0035) for k in range(10)]
SPANS += [span(f"u{i}", "tool", "tool", 30 * MIN + i * 10**6, 10**6, tool_name="web_search",
               status_code="error" if i == 0 else "ok") for i in range(200)]


@pytest.fixture
def stopped(tmp_path) -> tuple[Path, Path]:
    """(a stopped pipeline's store, its config)."""
    store = tmp_path / "spans.duckdb"
    s = SpanStore(store)
    s.set_sli_rollups(builtin_slis(SliConfig()))
    s.append(pa.Table.from_pylist(SPANS, schema=SPAN_SCHEMA))
    s.close()
    config = tmp_path / "pipeline.yaml"
    config.write_text(CONFIG.format(store=store, admin=free_port()))
    return store, config


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["what-if", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_repricing_from_the_file_matches_the_hand_computation(stopped, capsys):
    store, config = stopped
    code, out, _ = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--reprice", "gpt-4o=gpt-4o-mini",
                       "--format", "json")
    assert code == 0
    doc = json.loads(out)
    # gpt-4o-mini: $0.15 input, $0.60 output per million tokens: 1000 x 0.15e-6 + 100 x 0.60e-6 = $0.00021 a call.
    assert doc["cost"]["actual_usd"] == pytest.approx(10 * 0.0035, abs=1e-12)
    assert doc["cost"]["what_if_usd"] == pytest.approx(10 * 0.00021, abs=1e-12)
    assert doc["range"] == {"since_ns": T0, "until_ns": T0 + 60 * MIN, "spans": 210, "tasks": 0}


def test_a_budget_and_an_slo_target_change_show_the_kill_and_the_exhausted_budget(stopped, capsys):
    store, config = stopped
    code, out, _ = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--budget", "agent-daily=0.03",
                       "--slo", "tool-accuracy=0.999")
    assert code == 0
    # $0.0035 a minute against $0.03: the 8th call (10:07) makes 0.028 / 0.03 = 93 % (throttle), the 9th
    # (10:08) 0.0315 / 0.03 = 105 % (kill).
    assert "+ throttle agent a1 (agent-daily): - → 01-15 10:07  (what-if only)" in out
    assert "+ kill agent a1 (agent-daily): - → 01-15 10:08  (what-if only)" in out
    # 1 bad in 200 tool calls: at 99 % half the budget is left, at 99.9 % it is spent five times over.
    lines = [" ".join(line.split()) for line in out.splitlines()]  # columns are padded
    assert "tool-accuracy a1 99% → 99.9% 99.50% = 99.50% 50.0% → 0.0% healthy → exhausted" in lines


def test_an_unknown_objective_is_a_usage_error_naming_the_valid_ones(stopped, capsys):
    store, config = stopped
    code, _, err = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--slo", "tasks=0.999")
    assert code == 2
    assert "no SLO objective or SLI named 'tasks' (objectives: tool-accuracy; SLIs: tool_call_accuracy)" in err


def test_a_price_table_file_prices_the_model(stopped, capsys, tmp_path):
    store, config = stopped
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o: {input_per_mtok: 1.0, output_per_mtok: 4.0}\n")
    code, out, _ = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--prices", str(prices),
                       "--format", "json")
    assert code == 0
    # 1000 x $1/M + 100 x $4/M = $0.0014 a call.
    assert json.loads(out)["cost"]["what_if_usd"] == pytest.approx(10 * 0.0014, abs=1e-12)
    prices.write_text("gpt-4o: 3\n")
    code, _, err = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--prices", str(prices))
    assert code == 2 and "must map each model to {input_per_mtok" in err


def test_removing_the_failing_tool_avoids_its_breaker_and_alerts(stopped, capsys):
    store, config = stopped
    code, out, _ = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--remove-tool", "web_search",
                       "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["cost"]["removed_spans"] == 200
    (row,) = doc["slos"]
    assert row["actual"]["events"] == 200 and row["what_if"] is None  # no tool calls left for that SLO


def test_with_no_pipeline_answering_the_configs_store_is_read(stopped, capsys):
    _, config = stopped  # the config's store is the file; its admin port has nobody listening
    code, out, _ = run(capsys, *RANGE, "--config", str(config), "--endpoint", f"127.0.0.1:{free_port()}",
                       "--format", "json")
    assert code == 0 and json.loads(out)["range"]["spans"] == 210


class _FakeAdmin(BaseHTTPRequestHandler):
    """Answers POST /v1/what-if with a fixed document and keeps the body it was sent."""

    seen: list[tuple[str, dict]] = []
    answer: dict = {}

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeAdmin.seen.append((self.path, body))
        data = json.dumps(_FakeAdmin.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_a_running_pipeline_is_asked_through_post_v1_what_if(stopped, capsys):
    store, config = stopped
    code, out, _ = run(capsys, *RANGE, "--db", str(store), "--config", str(config), "--format", "json")
    _FakeAdmin.answer = dict(json.loads(out), took_ms=0.0)
    _FakeAdmin.seen = []
    server = HTTPServer(("127.0.0.1", 0), _FakeAdmin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, out, _ = run(capsys, *RANGE, "--config", str(config), "--endpoint", f"127.0.0.1:{server.server_port}",
                           "--reprice", "gpt-4o=gpt-4o-mini", "--slow-tool", "web_search=x2", "--budget", "agent-daily=5")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    ((path, body),) = _FakeAdmin.seen
    assert path == "/v1/what-if"
    assert body == {"since_ns": T0, "until_ns": T0 + 60 * MIN, "reprice": ["gpt-4o=gpt-4o-mini"], "remove_tools": [],
                    "slow_tools": ["web_search=x2"], "slo": [], "budgets": ["agent-daily=5"]}
    assert out.startswith("What-if over 2025-01-15 10:00 → 2025-01-15 11:00 UTC: 210 spans, 0 tasks")


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", 10**12 - 90 * MIN), ("2025-01-15T10:00:00Z", T0), ("2025-01-15 10:00", T0),
    ("2025-01-15T11:00:00+01:00", T0), ("1736935200000000000", T0),
])
def test_range_bounds_read_as_durations_ago_times_or_nanoseconds(text, expected):
    assert parse_instant(text, now_ns=10**12) == expected


def test_a_bound_that_is_neither_is_refused():
    with pytest.raises(CliError, match="--since: 'yesterday' is neither a duration ago"):
        parse_instant("yesterday", now_ns=10**12)


def test_the_command_runs_as_users_run_it(stopped):
    store, config = stopped
    res = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "what-if", *RANGE, "--db", str(store),
                          "--config", str(config), "--remove-tool", "web_search"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stderr
    assert "changes: remove tool web_search" in res.stdout
    assert "spans removed: 200; calls slowed: 0" in res.stdout
