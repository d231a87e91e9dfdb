"""``agent-sre trace show|export|import`` (pipeline/cli/trace.py): on a stopped pipeline's file (``--db``, or
the config's store when its admin API does not answer), and once through a running pipeline."""

from __future__ import annotations

import json
import re
import sys

import pytest

from agent_sre.pipeline.cli.main import main
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.replay.traces import load_trace, render_trace
from tests.conftest import free_port, pipeline_yaml, start_on_free_ports
from tests.processors.replay.test_otlp_io import OTHER, TRACE, agent_request, rows, stored
from tests.processors.replay.test_traces import T1, T2, billing_trace, sid, store_with, triage_trace

ANSI = re.compile(r"\033\[[0-9;]*m")


@pytest.fixture
def chain_db(tmp_path):
    """A store holding the triage trace and the billing trace that links back to its delegating span."""
    store = store_with(tmp_path, *triage_trace(), *billing_trace(links=[{"trace_id": T1, "span_id": sid(4)}]))
    store.close()
    return tmp_path / "s.duckdb"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_draws_the_chain_from_the_file(chain_db, capsys):
    code, out, _ = run(capsys, "trace", "show", T1, "--db", str(chain_db))
    assert code == 0
    store = SpanStore(chain_db)
    assert out == render_trace(load_trace(store.read, T1), color=False)
    store.close()
    assert f"⇢ trace {T2} (span link)" in out and not ANSI.search(out)  # not a terminal: no colour


def test_show_as_json_and_without_links(chain_db, capsys):
    code, out, _ = run(capsys, "trace", "show", T2.upper(), "--db", str(chain_db), "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["trace_id"] == T2 and doc["traces"] == [T1, T2]
    assert doc["totals"]["spans"] == 6 and doc["totals"]["cost_usd"] == 0.0135
    code, out, _ = run(capsys, "trace", "show", T2, "--db", str(chain_db), "--format", "json", "--no-links")
    assert json.loads(out)["traces"] == [T2]


def test_colour_only_on_a_terminal_and_never_with_no_color(chain_db, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    _, out, _ = run(capsys, "trace", "show", T1, "--db", str(chain_db))
    assert "\033[31m✗ timeout" in out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    _, out, _ = run(capsys, "trace", "show", T1, "--db", str(chain_db))
    assert not ANSI.search(out)


def test_an_unknown_trace_and_a_malformed_id_are_told_apart(chain_db, capsys):
    code, _, err = run(capsys, "trace", "show", "ab" * 16, "--db", str(chain_db))
    assert code == 1 and f"no trace {'ab' * 16} in {chain_db}" in err
    code, _, err = run(capsys, "trace", "show", "not-a-trace", "--db", str(chain_db))
    assert code == 2 and "a trace id is 32 hex digits" in err
    code, _, err = run(capsys, "trace", "export", "ab" * 16, "--db", str(chain_db))
    assert code == 1 and "no trace" in err


def test_export_to_a_file_and_import_into_a_fresh_store_round_trips(tmp_path, capsys):
    before = rows(stored(tmp_path, cost_of_llm=None), TRACE.hex())
    out = tmp_path / "t.json"
    code, said, _ = run(capsys, "trace", "export", TRACE.hex(), "--db", str(tmp_path / "source.duckdb"),
                        "--out", str(out))
    assert code == 0 and said == f"wrote trace {TRACE.hex()} (5 spans, OTLP/JSON) to {out}\n"
    code, said, _ = run(capsys, "trace", "import", str(out), "--db", str(tmp_path / "fresh.duckdb"))
    assert code == 0
    assert said == f"imported 5 spans of trace {TRACE.hex()} into {tmp_path / 'fresh.duckdb'}\n"
    assert rows(tmp_path / "fresh.duckdb", TRACE.hex()) == before


def _config(tmp_path) -> tuple[str, int, int]:
    """A config whose pipeline is not running: its admin API and OTLP receiver ports are free."""
    admin, otlp = free_port(), free_port()
    path = tmp_path / "p.yaml"
    path.write_text(f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  duckdb:
    path: {tmp_path}/spans.duckdb
extensions:
  admin:
    endpoint: 127.0.0.1:{admin}
service:
  extensions: [admin]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [duckdb]
""")
    return str(path), admin, otlp


def test_with_no_pipeline_running_the_configs_store_is_read_and_written(tmp_path, capsys):
    config, _, otlp = _config(tmp_path)
    body = tmp_path / "t.json"
    from agent_sre.pipeline.pdata.otlp_json import encode_trace_request

    body.write_bytes(encode_trace_request(agent_request()))
    code, said, err = run(capsys, "trace", "import", str(body), "--config", config)
    assert code == 0 and f"no OTLP/HTTP receiver at http://127.0.0.1:{otlp}/v1/traces" in err
    assert "importing into the store file" in err
    assert said.startswith("imported 6 spans of traces ")  # both traces of the request
    code, out, _ = run(capsys, "trace", "show", TRACE.hex(), "--config", config, "--format", "json")
    doc = json.loads(out)  # the LLM span links the request's other trace: it hangs under it
    assert code == 0 and doc["per_trace"][TRACE.hex()]["spans"] == 5 and doc["totals"]["spans"] == 6


def test_an_explicit_endpoint_that_does_not_answer_is_an_error_not_a_fallback(tmp_path, capsys):
    config, _, _ = _config(tmp_path)
    body = tmp_path / "t.json"
    body.write_text("{}")
    port = free_port()
    code, _, err = run(capsys, "trace", "import", str(body), "--config", config, "--endpoint", f"127.0.0.1:{port}")
    assert code == 1 and f"no OTLP/HTTP receiver at http://127.0.0.1:{port}/v1/traces" in err
    assert not (tmp_path / "spans.duckdb").exists()


@pytest.mark.slow
def test_show_export_and_import_through_a_running_pipeline(tmp_path, capsys):
    def text(ports, _attempt):
        return pipeline_yaml(ports, tmp_path, admin="  replay: {}\n").replace(
            "extensions: [health_check, admin]", "extensions: [health_check, admin, replay]")

    service, ports, _ = start_on_free_ports(text)
    try:
        body = tmp_path / "in.json"
        from agent_sre.pipeline.pdata.otlp_json import encode_trace_request

        body.write_bytes(encode_trace_request(agent_request()))
        code, said, _ = run(capsys, "trace", "import", str(body), "--endpoint", f"127.0.0.1:{ports.http}")
        assert code == 0
        assert said == f"imported 6 spans of traces {OTHER.hex()}, {TRACE.hex()} into http://127.0.0.1:{ports.http}/v1/traces\n"
        admin = f"127.0.0.1:{ports.admin}"
        code, out, _ = run(capsys, "trace", "show", TRACE.hex(), "--endpoint", admin, "--format", "json")
        doc = json.loads(out)
        assert code == 0 and doc["per_trace"][TRACE.hex()]["agents"] == ["billing", "triage"]
        assert doc["per_trace"][TRACE.hex()]["spans"] == 5 and doc["totals"]["agents"] == ["billing", "other", "triage"]
        code, out, _ = run(capsys, "trace", "export", TRACE.hex(), "--endpoint", admin)
        spans = [s for rs in json.loads(out)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
        assert code == 0 and len(spans) == 5
        code, _, err = run(capsys, "trace", "show", "ab" * 16, "--endpoint", admin)
        assert code == 1 and f"no trace {'ab' * 16} in the pipeline at {admin}" in err
    finally:
        service.shutdown()
