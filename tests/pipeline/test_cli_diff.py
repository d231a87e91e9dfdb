"""``agent-sre diff`` and ``agent-sre golden`` on a stopped pipeline's store (``--db``), as a user runs them:
text and JSON, and the exit codes CI relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent_sre.pipeline.cli.main import main
from tests.processors.replay.test_diff import A, B, llm, make_store, tool, trace_rows
from tests.processors.replay.test_golden import GOLDEN, candidate, golden_trace

CLI = [sys.executable, "-m", "agent_sre.pipeline.cli"]


@pytest.fixture
def store(tmp_path):
    """Two runs of one task (B inserts a web search and answers with a smaller model), 10 traces of
    1.4.0 (all succeed) and 10 of 1.5.0 (6 succeed), a golden trace, its equal re-run and a regressed one."""
    runs = [trace_rows(A, [llm("gpt-4o", 100, 10, 0.001, 500, "ok"), tool("lookup_order")], output="Done.",
                       version="0.9.0"),
            trace_rows(B, [llm("gpt-4o-mini", 100, 10, 0.0001, 300, "ok"), tool("lookup_order"), tool("web_search")],
                       output="Done.", version="0.9.0")]
    sets = [trace_rows(f"{'c' if i < 10 else 'd'}{i:031x}", [tool("lookup_order")],
                       version="1.4.0" if i < 10 else "1.5.0", success=i < 16, start_ns=10**18 + i * 10**9)
            for i in range(20)]
    golden = [golden_trace(), candidate("e" * 32),
              candidate("f" * 32, [tool("web_search"), tool("lookup_order")], output="No idea.", start_s=90,
                        question="Customer asks for a refund of order 42", root_attrs={"agent.version": "1.6.0"})]
    con, _ = make_store(tmp_path / "s.duckdb", *runs, *sets, *golden)
    con.close()
    return str(tmp_path / "s.duckdb")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_diff_of_two_traces_prints_what_changed(store, capsys):
    code, out, _ = run(capsys, "diff", A, B, "--db", store)
    assert code == 0
    assert f"diff {A} → {B}" in out
    assert "+ web_search  inserted" in out
    assert "tool calls: edit distance 1 (1 inserted)" in out
    assert "model gpt-4o→gpt-4o-mini" in out
    assert "\x1b[" not in out  # not a terminal: no colour
    code, out, _ = run(capsys, "diff", A, B, "--db", store, "--format", "json")
    doc = json.loads(out)
    assert doc["tools"]["counts"] == {"inserted": 1}
    assert doc["models"]["changed_steps"][0] == {"step_a": 0, "step_b": 0, "a": "gpt-4o", "b": "gpt-4o-mini"}


def test_diff_of_two_sets_prints_the_tests_and_sample_sizes(store, capsys):
    code, out, _ = run(capsys, "diff", "--baseline", "agent_version='1.4.0'", "--candidate", "agent_version='1.5.0'",
                       "--task", "triage", "--db", store, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["baseline"]["traces"], doc["candidate"]["traces"]) == (10 + 1, 10 + 1)  # + the golden, + its re-run
    s = doc["tests"]["success_rate"]
    assert (doc["baseline"]["successes"], doc["candidate"]["successes"]) == (11, 7)
    # by hand: 11/11 vs 7/11, pooled 18/22; SE = sqrt(18/22 * 4/22 * 2/11) = 0.164461; z = -(4/11) / SE
    assert s["z"] == pytest.approx(-2.2111, abs=1e-4)
    code, text, _ = run(capsys, "diff", "--baseline", "agent_version='1.4.0'", "--candidate", "agent_version='1.5.0'",
                        "--task", "triage", "--db", store)
    assert "baseline:  agent_version='1.4.0'  (11 traces)" in text
    assert "two-proportion z" in text and "worse" in text


@pytest.mark.parametrize("argv, message", [
    (["diff", A], "give two trace ids"),
    (["diff", A, "xyz"], "not a trace id: 'xyz'"),
    (["diff", "--baseline", "true"], "needs both --baseline and --candidate"),
    (["diff", A, B, "--task", "triage"], "--task goes with --baseline"),
])
def test_diff_usage_errors_exit_2(store, capsys, argv, message):
    code, _, err = run(capsys, *argv, "--db", store)
    assert code == 2 and message in err


def test_diff_of_an_unknown_trace_or_a_bad_filter_exits_1(store, capsys):
    code, _, err = run(capsys, "diff", A, "0" * 32, "--db", store)
    assert code == 1 and f"no spans of trace '{'0' * 32}'" in err
    code, _, err = run(capsys, "diff", "--baseline", "nope = 1", "--candidate", "true", "--db", store)
    assert code == 1 and "the baseline filter 'nope = 1' is not a SQL predicate over spans" in err


def test_golden_add_check_and_list_through_the_cli(store, tmp_path, capsys):
    root = str(tmp_path / "golden")
    code, out, _ = run(capsys, "golden", "add", GOLDEN, "--suite", "triage", "--dir", root, "--db", store)
    assert code == 0 and "created suite triage" in out and "tools: lookup_order → search_kb" in out
    code, out, _ = run(capsys, "golden", "list", "--dir", root)
    assert code == 0 and GOLDEN in out and "task triage" in out
    # the equal re-run passes, exit 0
    code, out, _ = run(capsys, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                       "--candidate-trace", "e" * 32)
    assert code == 0 and "PASS" in out and "1 passed, 0 failed, 0 missing: ok" in out
    # the regressed one fails, exit 1, with its reasons
    code, out, _ = run(capsys, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                       "--candidate", "agent_version = '1.6.0'", "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["failed"] == 1 and not doc["ok"]
    assert doc["results"][0]["candidate"] == "f" * 32
    assert any(r.startswith("tool calls differ") for r in doc["results"][0]["reasons"])
    # no candidate of the task: missing is a regression unless allowed
    code, _, _ = run(capsys, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                     "--candidate", "agent_version = '9'")
    assert code == 1
    code, _, _ = run(capsys, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                     "--candidate", "agent_version = '9'", "--allow-missing")
    assert code == 0


def test_golden_check_of_a_missing_suite_exits_2(store, tmp_path, capsys):
    code, _, err = run(capsys, "golden", "check", "--suite", "none", "--dir", str(tmp_path), "--db", store, "--replays")
    assert code == 2 and "no golden suite at" in err


@pytest.mark.slow
def test_golden_check_exit_codes_as_ci_sees_them(store, tmp_path):
    """The real command in a subprocess: the exit status is what a CI job reads."""
    env = {**os.environ, "NO_COLOR": "1"}
    root = str(tmp_path / "golden")
    added = subprocess.run([*CLI, "golden", "add", GOLDEN, "--suite", "triage", "--dir", root, "--db", store],
                           capture_output=True, text=True, timeout=120, env=env)
    assert added.returncode == 0, added.stderr
    ok = subprocess.run([*CLI, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                         "--candidate-trace", "e" * 32], capture_output=True, text=True, timeout=120, env=env)
    bad = subprocess.run([*CLI, "golden", "check", "--suite", "triage", "--dir", root, "--db", store,
                          "--candidate-trace", "f" * 32], capture_output=True, text=True, timeout=120, env=env)
    assert (ok.returncode, bad.returncode) == (0, 1), (ok.stdout, ok.stderr, bad.stdout, bad.stderr)
    assert "REGRESSION" in bad.stdout


class _Admin:
    """A stand-in for a running pipeline's admin API: records what it is asked, answers ``answers[path]``."""

    def __init__(self, answers: dict[str, tuple[int, dict]]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append((method, self.path, body))
                status, doc = answers.get(self.path.split("?")[0], (404, {"error": "no such route"}))
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._answer("GET")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_diff_asks_a_running_pipeline_and_prints_its_answer(store, capsys):
    from agent_sre.pipeline.storage.store import open_read_only
    from agent_sre.processors.replay.diff import diff_request

    con = open_read_only(store)
    answer = diff_request(lambda sql, params: con.execute(sql, params).fetchall(), {"trace_a": A, "trace_b": B})
    con.close()
    admin = _Admin({"/v1/diff": (200, answer)})
    try:
        code, out, _ = run(capsys, "diff", A, B, "--endpoint", admin.endpoint, "--no-links")
        refused_admin = _Admin({"/v1/diff": (400, {"error": "the baseline filter 'x' is not a SQL predicate"})})
        try:
            bad, _, err = run(capsys, "diff", "--baseline", "x", "--candidate", "true", "--endpoint", refused_admin.endpoint)
        finally:
            refused_admin.close()
    finally:
        admin.close()
    assert admin.requests == [("POST", "/v1/diff", {"trace_a": A, "trace_b": B, "follow_links": False})]
    assert code == 0 and "+ web_search  inserted" in out
    assert bad == 1 and "diff failed (400): the baseline filter 'x' is not a SQL predicate" in err


@pytest.mark.slow
def test_golden_asks_a_running_pipeline_for_the_trace_and_the_check(store, tmp_path, capsys):
    from agent_sre.pipeline.storage.store import open_read_only
    from agent_sre.processors.replay.golden import check_request, load_suite, suite_dir
    from agent_sre.processors.replay.otlp_io import export_trace

    con = open_read_only(store)
    read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
    otlp = export_trace(read, GOLDEN, follow_links=True)
    admin = _Admin({f"/v1/traces/{GOLDEN}": (200, otlp)})
    root = str(tmp_path / "golden")
    try:
        code, out, _ = run(capsys, "golden", "add", GOLDEN, "--suite", "triage", "--dir", root,
                           "--endpoint", admin.endpoint)
    finally:
        admin.close()
    assert code == 0 and "created suite triage" in out
    assert admin.requests == [("GET", f"/v1/traces/{GOLDEN}?format=otlp&links=true", None)]
    suite = load_suite(suite_dir("triage", root))
    answer = check_request(read, {"suite": suite, "candidate_trace": "f" * 32})
    con.close()
    admin = _Admin({"/v1/golden/check": (200, answer)})
    try:
        code, out, _ = run(capsys, "golden", "check", "--suite", "triage", "--dir", root, "--endpoint", admin.endpoint,
                           "--candidate-trace", "f" * 32)
    finally:
        admin.close()
    (method, path, body), = admin.requests
    assert (method, path) == ("POST", "/v1/golden/check")
    assert body == json.loads(json.dumps({"suite": suite, "candidate": None, "candidate_trace": "f" * 32,
                                          "replays": False, "allow_missing": False}))
    assert code == 1 and "REGRESSION" in out


def test_with_no_pipeline_and_no_store_diff_says_so(tmp_path, capsys, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.chdir(tmp_path)  # the embedded config's store is ./agent-sre-data/spans.duckdb: not there
    code, _, err = run(capsys, "diff", A, B, "--endpoint", f"127.0.0.1:{free_port()}")
    assert code == 1 and "nothing to diff: no span store at" in err
