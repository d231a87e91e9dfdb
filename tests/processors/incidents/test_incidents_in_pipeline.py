"""incidents in the running pipeline: policy violations and budget kills open incidents; per-tool
breakers answer per tool; the API refuses what it must; incidents and breakers survive a restart."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, eventually, pipeline_yaml
from tests.otlp_builders import kv

INCIDENTS = """  incidents:
    breakers:
      per_tool: true
      roles: [tool]
      failure_threshold: 2
      recovery_timeout: 1h
  cost:
    budgets:
      - {name: daily, scope: agent_day, limit_usd: 1.0}
"""


def spans(specs: list[tuple[dict, bool]]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i, (attrs, failed) in enumerate(specs):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = os.urandom(16), os.urandom(8), "s"
        sp.start_time_unix_nano, sp.end_time_unix_nano = now + i, now + i + 1000
        sp.attributes.extend(kv(k, v) for k, v in attrs.items())
        if failed:
            sp.status.code = 2
    return req


def tool(agent: str, name: str) -> dict:
    return {"agent.did": agent, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}


class Api:
    def __init__(self, ports: Ports):
        self.base = f"http://127.0.0.1:{ports.admin}"

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def start(tmp_path, ports: Ports) -> Service:
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, cost, incidents, batch")
    service = Service(parse_config(text.replace("  batch:\n", INCIDENTS + "  batch:\n", 1), "test"))
    service.start()
    return service


def send(service: Service, specs) -> None:
    service.receivers[0].ingest.export(spans(specs), "test")
    service.exporters["duckdb"].store.sync()


def test_policy_violations_and_budget_kills_open_incidents_and_the_api_guards_the_lifecycle(tmp_path):
    ports = Ports.allocate()
    service = start(tmp_path, ports)
    api = Api(ports)
    try:
        check = {"agent.did": "a1", "agent.policy.name": "pii-guard", "agent.policy.decision": "deny"}
        send(service, [(check, False)] * 3 + [({**check, "agent.policy.decision": "allow"}, False)])
        (inc,) = api.get("/v1/incidents")["incidents"]
        assert (inc["agent_id"], inc["priority"], inc["title"]) == ("a1", "P3", "a1: 3 policy violations of pii-guard")
        send(service, [(check, False)])  # the same violation again within the dedup window: counted
        assert api.get(f"/v1/incidents/{inc['id']}")["duplicates"] == 1

        llm = {"agent.did": "a2", "gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.usage.cost": 0.5}
        send(service, [(llm, False)] * 2)  # 100 % of a2's day: killed
        a2 = [i for i in api.get("/v1/incidents")["incidents"] if i["agent_id"] == "a2"]
        assert len(a2) == 1 and a2[0]["priority"] == "P2"  # the budget at its kill point and the kill decision
        signals = {e["kind"] for e in api.get(f"/v1/incidents/{a2[0]['id']}")["log"] if e["entry"] == "signal"}
        assert signals == {"budget", "decision"}

        path = f"/v1/incidents/{inc['id']}"
        assert api.post(path + "/mitigate", {"by": "bob", "why": "policy tightened"})[0] == 200
        status, body = api.post(path + "/ack", {"by": "bob"})
        assert status == 409 and "is mitigated; it cannot become acknowledged" in body["error"]
        assert api.post(path + "/ack", {})[0] == 400  # who is required
        assert api.post(path + "/escalate", {"by": "bob"})[0] == 400
        assert api.post("/v1/incidents/INC-99999/ack", {"by": "bob"})[0] == 404
        assert api.post(path + "/resolve", {"by": "bob", "why": "done"})[0] == 200
        assert api.get(path)["state"] == "resolved" and api.get("/v1/incidents?all=true")["incidents"]
        (proc,) = service.components_of("incidents")
        postmortem = proc.postmortem(inc["id"])
        assert "| policy | policy pii-guard firing | 3 policy violations of pii-guard |" in postmortem
        assert "- [ ] Which inputs violated the policy" in postmortem
        assert [i["id"] for i in api.get("/v1/incidents")["incidents"]] == [a2[0]["id"]]
    finally:
        service.shutdown()


def test_per_tool_breakers_answer_per_tool_and_survive_a_restart_with_the_incident(tmp_path):
    ports = Ports.allocate()
    service = start(tmp_path, ports)
    api = Api(ports)
    heard: list[dict] = []
    service.host.events.subscribe(heard.extend, ["decision"])
    try:
        send(service, [(tool("a1", "search"), True)] * 2 + [(tool("a1", "calc"), False)] * 5)
        assert api.get("/v1/decisions/a1?tool=search")["action"] == "circuit_open"
        (ev,) = heard  # the tool's decision is announced, with its tool
        assert (ev["state"], ev["name"], ev["labels"]["agent_id"], ev["labels"]["tool"]) == (
            "firing", "circuit_open", "a1", "search")
        assert api.get("/v1/decisions/a1?tool=calc")["action"] == "allow"
        whole = api.get("/v1/decisions/a1")  # the agent as a whole: allowed, its open circuits listed
        assert whole["action"] == "allow" and [c["tool"] for c in whole["circuits"]] == ["search"]
        (inc,) = api.get("/v1/incidents")["incidents"]
    finally:
        service.shutdown()

    restarted = start(tmp_path, ports)
    try:
        assert api.get("/v1/decisions/a1?tool=search")["action"] == "circuit_open"  # restored from the store
        (proc,) = restarted.components_of("incidents")
        proc.clock = lambda: time.time() + 3601  # past the recovery timeout
        restarted.host.decisions.tick()
        assert api.get("/v1/decisions/a1?tool=search")["circuits"][0]["state"] == "half_open"
        now = time.time_ns() + 3601 * 10**9  # probes end after the half-open began (on its clock)
        req = spans([(tool("a1", "search"), False)] * 2)
        for sp in req.resource_spans[0].scope_spans[0].spans:
            sp.start_time_unix_nano, sp.end_time_unix_nano = now, now + 1000
        restarted.receivers[0].ingest.export(req, "test")
        restarted.exporters["duckdb"].store.sync()
        assert api.get("/v1/decisions/a1?tool=search") == {
            "agent_id": "a1", "action": "allow", "reason": "", "until": None, "sources": []}
        # the incident opened before the restart resolves with its circuit
        assert api.get(f"/v1/incidents/{inc['id']}")["state"] == "resolved"
    finally:
        restarted.shutdown()


def test_an_incidents_events_are_stamped_in_the_order_they_happen_even_when_a_signal_is_older(tmp_path):
    """A fleet store keeps an incident's latest event by time: a priority raised by a signal stamped
    earlier than the one that opened the incident (a breaker that opened a moment before an SLO alert
    was evaluated, announced after it) must still be its newest event, or the fleet lists it at P2."""
    from agent_sre.pipeline.component.events import event

    ports = Ports.allocate()
    service = start(tmp_path, ports)
    heard: list[dict] = []
    service.host.events.subscribe(heard.extend, ["incident"])
    try:
        t = time.time_ns()
        service.host.events.publish([event("alert", "firing", "page", "page:6x:6h/30m", {"agent_id": "a9"},
                                           "burns its budget", time_ns=t)])
        service.host.events.publish([event("budget", "firing", "page", "daily 100%", {"agent_id": "a9"},
                                           "daily at 100%", time_ns=t - 1000)])
        assert eventually(lambda: len(heard) == 2), heard
        opened, raised = heard
        assert (opened["labels"]["priority"], raised["labels"]["priority"]) == ("P2", "P1")
        assert opened["time_ns"] == t and raised["time_ns"] > opened["time_ns"]  # newest as well as latest
        assert opened["started_ns"] == raised["started_ns"] == t
        (inc,) = Api(ports).get("/v1/incidents")["incidents"]
        assert (inc["priority"], inc["updated_ns"]) == ("P1", raised["time_ns"])  # as the fleet store says
    finally:
        service.shutdown()


@pytest.mark.parametrize("bad", [
    {"open_at": "P5"}, {"priorities": {"slo_burn": "P1"}}, {"priorities": {"kill": "high"}},
    {"breakers": {"roles": ["tools"]}}, {"breakers": {"success_threshold": 4, "half_open_max_calls": 3}}])
def test_bad_settings_are_refused_with_their_path(bad):
    from agent_sre.pipeline.component.errors import ConfigError

    text = pipeline_yaml(Ports.allocate(), "/tmp", processors="incidents, batch")
    text = text.replace("  batch:\n", "  incidents: " + json.dumps(bad) + "\n  batch:\n", 1)
    with pytest.raises(ConfigError, match="processors::incidents"):
        parse_config(text, "test")
