"""slo: objectives evaluated per agent from the rollups, served at /v1/slos and by `agent-sre slo status`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.processors.sli.test_sli import MINUTE, T0, TOOL, spans

SLO_YAML = """  sli: {}
  slo:
    interval: 1h
    objectives:
      - name: tools
        sli: tool_call_accuracy
        target: 0.99
        window: 1d
        rules:
          - {severity: page, factor: 2, long_window: 5m, short_window: 2m}
"""


def _yaml(tmp_path, ports: Ports) -> str:
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch")
    return text.replace("  batch:\n", SLO_YAML + "  batch:\n", 1)


def _slos(ports: Ports) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/v1/slos", timeout=30) as r:
        return json.loads(r.read())["slos"]


def test_budget_burn_and_alerts_match_hand_computed_values(tmp_path):
    ports = Ports.allocate()
    service = Service(parse_config(_yaml(tmp_path, ports), "test"))
    service.start()
    try:
        (slo,) = service.components_of("slo")
        ingest = service.receivers[0].ingest
        # minute 0: 100 tool calls, 1 failed; minute 1: 100, none failed
        ingest.export(spans([(TOOL, False, 0)] * 99 + [(TOOL, True, 0)] + [(TOOL, False, 1)] * 100), "test")
        slo.clock = lambda: (T0 + 2 * MINUTE) / 1e9  # evaluated at the start of minute 2
        (row,) = _slos(ports)
        # 200 events, 1 bad at 99%: SLI 0.995, allowed bad 2, budget left 0.5, burn 0.5 in both windows
        assert (row["slo"], row["agent_id"], row["events"], row["bad_events"]) == ("tools", "a1", 200, 1)
        assert row["sli_value"] == pytest.approx(0.995) and row["budget_remaining"] == pytest.approx(0.5)
        assert row["burn_rates"] == {"2m": pytest.approx(0.5), "5m": pytest.approx(0.5)}
        assert (row["firing"], row["status"]) == ([], "healthy")

        # minute 2: 100 calls, 10 failed.  At minute 3: 5m -> 11/300 = 3.67% -> burn 3.67; 2m -> 10/200 = 5%
        # -> burn 5: the 2x page fires.  Over the day 11 bad of an allowed 3: the budget is exhausted.
        ingest.export(spans([(TOOL, False, 2)] * 90 + [(TOOL, True, 2)] * 10), "test")
        slo.clock = lambda: (T0 + 3 * MINUTE) / 1e9
        (row,) = _slos(ports)
        assert row["burn_rates"] == {"2m": pytest.approx(5.0), "5m": pytest.approx(11 / 3)}
        assert row["firing"] == ["page:2x:5m/2m"]
        assert (row["budget_remaining"], row["status"]) == (0.0, "exhausted")
        # An exhausted error budget is a decision: releases freeze, calls go on.
        decision = service.host.decisions.decide("a1")
        assert (decision["action"], decision["exhausted_slos"]) == ("freeze", ["tools"])
        assert "releases are frozen" in decision["reason"]

        # minutes 3 and 4 clean: at minute 5 the 2m window burns 0 and the page resolves
        ingest.export(spans([(TOOL, False, 3)] * 100 + [(TOOL, False, 4)] * 100), "test")
        slo.clock = lambda: (T0 + 5 * MINUTE) / 1e9
        (row,) = _slos(ports)
        assert row["burn_rates"]["2m"] == 0.0 and row["firing"] == []
    finally:
        service.shutdown()


@pytest.mark.slow
def test_slo_status_from_the_file_after_the_pipeline_stopped(tmp_path):
    ports = Ports.allocate()
    config = tmp_path / "pipeline.yaml"
    config.write_text(_yaml(tmp_path, ports))
    service = Service(parse_config(config.read_text(), "test"))
    service.start()
    now_minute = int(__import__("time").time() // 60)
    try:
        req = spans([(TOOL, False, 0)] * 9 + [(TOOL, True, 0)])
        for sp in req.resource_spans[0].scope_spans[0].spans:  # in the minute before now
            sp.start_time_unix_nano = (now_minute - 1) * MINUTE + 1000
            sp.end_time_unix_nano = sp.start_time_unix_nano + 1_000_000
        service.receivers[0].ingest.export(req, "test")
    finally:
        service.shutdown()
    out = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "slo", "status", "--config", str(config),
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["slos"]
    assert (row["slo"], row["agent_id"], row["events"], row["bad_events"]) == ("tools", "a1", 10, 1)
    assert row["status"] == "exhausted"  # 1 bad of an allowed 0.1
    table = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "slo", "status", "--config",
                            str(config)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0]
    assert [c.strip() for c in header.split(" | ")] == ["SLO", "agent", "SLI value", "target", "budget left",
                                                        "burn rates", "firing", "status"]
    assert "tools | a1" in table.stdout and "90.0000%" in table.stdout


def test_per_version_objectives_tell_a_bad_release_from_a_good_one(tmp_path):
    ports = Ports.allocate()
    text = _yaml(tmp_path, ports).replace("        window: 1d\n", "        window: 1d\n        per_version: true\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        (slo,) = service.components_of("slo")
        alerts = []
        slo.subscribe(alerts.extend)
        new = {**TOOL, "agent.version": "1.3"}
        service.receivers[0].ingest.export(spans([(TOOL, False, 0)] * 100 + [(new, False, 0)] * 80
                                                 + [(new, True, 0)] * 20), "test")
        slo.clock = lambda: (T0 + MINUTE) / 1e9
        rows = {(r["agent_id"], r["agent_version"]): r for r in _slos(ports)}
        assert set(rows) == {("a1", "1.2"), ("a1", "1.3")}
        assert rows["a1", "1.2"]["sli_value"] == 1.0 and rows["a1", "1.2"]["firing"] == []
        assert rows["a1", "1.3"]["sli_value"] == pytest.approx(0.8) and rows["a1", "1.3"]["firing"] == ["page:2x:5m/2m"]
        (alert,) = alerts
        assert alert["labels"]["agent_version"] == "1.3" and "version 1.3" in alert["summary"]
    finally:
        service.shutdown()


def test_alert_history_is_kept_and_a_restart_neither_renotifies_nor_forgets_to_resolve(tmp_path):
    text = _yaml(tmp_path, Ports.allocate())
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        (slo,) = service.components_of("slo")
        ingest = service.receivers[0].ingest
        ingest.export(spans([(TOOL, False, m) for m in range(2) for _ in range(100)]
                            + [(TOOL, False, 2)] * 90 + [(TOOL, True, 2)] * 10), "test")
        slo.clock = lambda: (T0 + 3 * MINUTE) / 1e9
        slo.report()  # the page fires
        store = service.exporters["duckdb"].store
        assert store.read("SELECT state, name, labels['agent_id'] FROM alerts") == [("firing", "page:2x:5m/2m", "a1")]
    finally:
        service.shutdown()

    restarted = Service(parse_config(text, "test"))  # same ports and store: the first one is stopped
    restarted.start()
    try:
        (slo,) = restarted.components_of("slo")
        heard = []
        slo.subscribe(heard.extend)
        slo.clock = lambda: (T0 + 3 * MINUTE) / 1e9
        (row,) = slo.report()
        assert row["firing"] == ["page:2x:5m/2m"] and heard == []  # still firing: not notified again
        restarted.receivers[0].ingest.export(spans([(TOOL, False, m) for m in (3, 4) for _ in range(100)]), "test")
        slo.clock = lambda: (T0 + 5 * MINUTE) / 1e9
        slo.report()
        (resolved,) = heard
        assert resolved["state"] == "resolved" and resolved["started_ns"] == int(T0 + 3 * MINUTE)
        store = restarted.exporters["duckdb"].store
        assert [r[0] for r in store.read("SELECT state FROM alerts ORDER BY time_ns")] == ["firing", "resolved"]
    finally:
        restarted.shutdown()


def test_the_worker_evaluates_what_is_committed_without_waiting_for_the_spool(tmp_path):
    """The evaluation after a commit reads what is committed; waiting for every acknowledged span made the
    loader commit what was pending twice a second under load.  Only an evaluation asked for waits."""
    ports = Ports.allocate()
    service = Service(parse_config(_yaml(tmp_path, ports), "test"))
    service.start()
    try:
        (slo,) = service.components_of("slo")
        store = slo._store
        waits: list[str] = []
        sync = store.sync

        def counted_sync(*args, **kwargs):
            waits.append(threading.current_thread().name)
            return sync(*args, **kwargs)

        store.sync = counted_sync
        store.finalize_tasks = lambda *a, **k: None  # its own wait every 5 s is not what this is about
        slo.clock = lambda: (T0 + 2 * MINUTE) / 1e9
        service.receivers[0].ingest.export(spans([(TOOL, False, 0)] * 9 + [(TOOL, True, 0)]), "test")
        deadline = time.monotonic() + 30
        while not slo.last_report and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["events"] for r in slo.last_report] == [10]  # the worker evaluated after the commit ...
        assert waits == []  # ... without waiting for the spool
        (row,) = _slos(ports)  # asked for: waits for everything acknowledged
        assert row["events"] == 10 and waits
    finally:
        service.shutdown()
