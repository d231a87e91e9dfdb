"""A real Alertmanager (Debian's prometheus-alertmanager) receives our alert, lists it, delivers it to a
webhook and sees it resolved; and the whole path: spans -> SLO alert -> events pipeline -> channel."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import replace

import pytest

from agent_sre.exporters.alerting.notifier import Notification
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, eventually, free_port, pipeline_yaml, wait_http
from tests.exporters.alerting.test_channels import FIRING, Recorder, channel, server  # noqa: F401 - fixture
from tests.processors.sli.test_sli import MINUTE, T0, TOOL, spans
from tests.processors.slo.test_slo_processor import SLO_YAML


def _alertmanager_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        pytest.fail("prometheus-alertmanager is not installed: `make test-deps` installs Debian's package")
    return path


@pytest.mark.slow
def test_a_real_alertmanager_lists_delivers_and_resolves_our_alert(server, tmp_path):  # noqa: F811
    hook, rec = server
    port = free_port()
    (tmp_path / "am.yml").write_text(f"""
route:
  receiver: hook
  group_by: [slo, agent_id]
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}/am
        send_resolved: true
""")
    with open(tmp_path / "am.log", "wb") as log:
        am = subprocess.Popen([_alertmanager_binary(), f"--config.file={tmp_path / 'am.yml'}",
                               f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                               "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
        exporter = channel("alertmanager", url=f"http://127.0.0.1:{port}")
        firing = replace(FIRING, started_ns=time.time_ns())
        exporter.deliver(Notification("g", {"slo": "tools", "agent_id": "a1"}, [firing]))

        def listed():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=10) as r:
                return [a for a in json.loads(r.read()) if a["labels"].get("slo") == "tools"]

        (alert,) = eventually(listed)
        assert alert["status"]["state"] == "active" and alert["labels"]["rule"] == "page:14.4x:1h/5m"
        got = eventually(lambda: [r["json"] for r in rec.requests if r["path"] == "/am"])
        assert got and got[0]["status"] == "firing" and got[0]["alerts"][0]["labels"]["agent_id"] == "a1"

        resolved = replace(firing, state="resolved", ended_ns=time.time_ns())
        exporter.deliver(Notification("g", {"slo": "tools", "agent_id": "a1"}, [resolved]))
        done = eventually(lambda: [r["json"] for r in rec.requests if r["path"] == "/am" and r["json"]["status"] == "resolved"])
        assert done and done[0]["alerts"][0]["status"] == "resolved"
        assert eventually(lambda: not listed())
    finally:
        am.terminate()
        am.wait(timeout=30)




def test_an_slo_alert_travels_the_events_pipeline_to_a_channel(server, tmp_path):  # noqa: F811
    hook, rec = server
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch")
    text = text.replace("  batch:\n", SLO_YAML + "  batch:\n", 1)
    text = text.replace("  debug:\n", f"  webhook:\n    url: {hook}/events\n    group_wait: 0s\n"
                                      f"    group_interval: 0s\n  debug:\n", 1)
    text = text.replace("receivers:\n  otlp:", "receivers:\n  alerts: {}\n  otlp:", 1)
    text = text.replace("  telemetry:", "    events:\n      receivers: [alerts]\n      exporters: [webhook]\n  telemetry:", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    try:
        (slo,) = service.components_of("slo")
        ingest = next(r.ingest for r in service.receivers if getattr(r, "ingest", None) is not None)
        ingest.export(spans([(TOOL, False, m) for m in range(2) for _ in range(100)]
                            + [(TOOL, False, 2)] * 90 + [(TOOL, True, 2)] * 10), "test")
        slo.clock = lambda: (T0 + 3 * MINUTE) / 1e9  # burn 5 over 2m, 3.67 over 5m: the 2x page fires
        slo.report()
        got = eventually(lambda: [r["json"] for r in rec.requests if r["path"] == "/events"])
        assert got and got[0]["status"] == "firing"
        (alert,) = got[0]["alerts"]
        assert alert["labels"] == {"alertname": "AgentSloBurnRate", "slo": "tools", "sli": "tool_call_accuracy",
                                   "agent_id": "a1", "severity": "page", "rule": "page:2x:5m/2m"}
        assert "5.0x over 2m" in alert["annotations"]["summary"]
        ingest.export(spans([(TOOL, False, m) for m in (3, 4) for _ in range(100)]), "test")
        slo.clock = lambda: (T0 + 5 * MINUTE) / 1e9
        slo.report()
        done = eventually(lambda: [r["json"] for r in rec.requests if r["path"] == "/events"
                               and r["json"]["status"] == "resolved"])
        assert done and done[0]["alerts"][0]["fingerprint"] == alert["fingerprint"]
    finally:
        service.shutdown()
