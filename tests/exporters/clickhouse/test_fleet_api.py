"""The admin API's ``store: fleet`` answers (``fleet_store`` in its config) over a real ClickHouse 18.16
(Debian's clickhouse-server, the compat schema), with the data of test_fleet_views.py: two sidecars wrote
to ClickHouse; the answers equal the command line's ``--store`` answers and the local pipeline's numbers."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

import pytest

from agent_sre.pipeline.cli.cost import cmd_cost_summary
from agent_sre.pipeline.cli.fleet import fleet_incidents, fleet_query
from agent_sre.pipeline.cli.slo import cmd_slo_status
from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import RunningPipeline, eventually, pipeline_yaml, start_on_free_ports
from tests.exporters.clickhouse.test_fleet_views import config as fleet_config
from tests.exporters.clickhouse.test_fleet_views import fleet  # noqa: F401 - the module's data, a fixture
from tests.pipeline.test_query_api import ACME_KEY as TENANT_KEY
from tests.pipeline.test_query_api import OPS_KEY
from tests.pipeline.test_query_api import TRACE_AUTH as AUTH  # a tenant's key (acme) and one for every tenant

pytestmark = pytest.mark.slow
FLEET_ROUTES = ("/v1/slos?store=fleet", "/v1/costs?store=fleet", "/v1/incidents?store=fleet")


def _pipeline(tmp_path_factory, admin: str) -> RunningPipeline:
    data = tmp_path_factory.mktemp("admin")
    service, ports, _ = start_on_free_ports(lambda p, _a: pipeline_yaml(p, data, admin=admin))
    return RunningPipeline(service, ports, data)


@pytest.fixture(scope="module")
def with_fleet(fleet, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """A pipeline with the objectives and budgets of test_fleet_views.py's (sli, slo, cost) and an admin
    API whose fleet_store is that module's ClickHouse."""
    data = tmp_path_factory.mktemp("admin")

    def text(ports, _attempt) -> str:
        admin = (f"extensions:\n  admin:\n    endpoint: 127.0.0.1:{ports.admin}\n    fleet_store: {fleet['reader']}\n"
                 + AUTH + "service:\n  extensions: [admin]\n")
        return fleet_config(ports, data, None).replace("service:\n", admin, 1)

    service, ports, _ = start_on_free_ports(text)
    p = RunningPipeline(service, ports, data)
    yield p
    p.service.shutdown()


def _cli(capsys, fn, **args) -> dict:
    capsys.readouterr()
    assert fn(argparse.Namespace(endpoint=None, db=None, format="json", **args)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def without_fleet(tmp_path_factory):
    p = _pipeline(tmp_path_factory, AUTH)
    yield p
    p.service.shutdown()


def _call(p: RunningPipeline, path: str, body: dict | None = None, key: str = OPS_KEY) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


SPANS_BY_AGENT = "SELECT agent_id, count() AS spans, sum(cost_usd) AS cost FROM spans GROUP BY agent_id ORDER BY agent_id"


def test_fleet_sql_answers_what_the_command_line_and_the_local_pipeline_count(with_fleet, fleet):  # noqa: F811
    status, body = _call(with_fleet, "/v1/query", {"sql": SPANS_BY_AGENT, "store": "fleet"})
    assert status == 200, body
    assert body["rows"] == fleet_query(fleet["reader"], SPANS_BY_AGENT, 100)["rows"]
    # Three spans a task; agent-a ran 4 tasks on sidecar a and 3 on b, agent-b 2 on b (test_fleet_views).
    assert [r[:2] for r in body["rows"]] == [["agent-a", 21], ["agent-b", 6]]
    assert [round(r[2], 6) for r in body["rows"]] == [5.125, 2.0]
    assert body["columns"] == ["agent_id", "spans", "cost"] and body["truncated"] is False


def test_fleet_sql_is_row_limited_and_read_only(with_fleet):
    status, body = _call(with_fleet, "/v1/query", {"sql": "SELECT span_id FROM spans", "store": "fleet", "max_rows": 4})
    assert (status, body["row_count"], body["truncated"], body["truncated_by"]) == (200, 4, True, "max_rows")
    for sql in ("DROP TABLE spans", "SET max_threads = 1"):
        status, body = _call(with_fleet, "/v1/query", {"sql": sql, "store": "fleet"})
        assert status == 400 and "read-only" in body["error"], body
    status, body = _call(with_fleet, "/v1/query", {"sql": "SELECT 1", "store": "elsewhere"})
    assert status == 400 and 'store is "local" or "fleet"' in body["error"]
    status, body = _call(with_fleet, "/v1/incidents?store=elsewhere")
    assert status == 400 and 'store is "local" or "fleet"' in body["error"]
    status, body = _call(with_fleet, "/v1/incidents/INC-00001?store=fleet")
    assert status == 400 and "read from the pipeline that opened it" in body["error"]


def test_fleet_incidents_are_the_command_lines(with_fleet, fleet):  # noqa: F811
    answers: list[tuple] = []

    def alike() -> bool:  # the sidecars' latest incident events may still be on their way
        status, body = _call(with_fleet, "/v1/incidents?store=fleet&all=true")
        answers.append((status, body, fleet_incidents(fleet["reader"], True)))
        return status == 200 and len(body["incidents"]) >= 2 and body["incidents"] == answers[-1][2]

    assert eventually(alike, timeout=30), answers[-1]
    ids = [i["id"] for i in answers[-1][1]["incidents"]]
    assert ids.count("INC-00001") == 2  # each sidecar's first, numbered alike: two rows
    assert answers[-1][1]["store"] == "fleet"


def test_fleet_slos_are_the_command_lines(with_fleet, fleet, capsys):  # noqa: F811
    status, body = _call(with_fleet, "/v1/slos?store=fleet")
    assert status == 200, body
    cli = _cli(capsys, cmd_slo_status, config=fleet["local"], store=fleet["reader"])["slos"]
    assert body["slos"] == cli and len(cli) == 6 and (body["store"], body["skipped"]) == ("fleet", {})
    by = {(r["slo"], r["agent_id"]): r for r in body["slos"]}
    assert (by["tool-accuracy", "agent-a"]["events"], by["tool-accuracy", "agent-a"]["bad_events"]) == (7, 2)
    assert by["tool-accuracy", "agent-a"]["sli_value"] == round(5 / 7, 6)


def test_fleet_costs_are_the_command_lines(with_fleet, fleet, capsys):  # noqa: F811
    status, body = _call(with_fleet, "/v1/costs?store=fleet&days=7")
    assert status == 200, body
    cli = _cli(capsys, cmd_cost_summary, config=fleet["local"], store=fleet["reader"], days=7)
    assert body["summary"] == cli["summary"] and body["summary"]
    assert [b for b in body["budgets"] if b["scope"] != "task"] == cli["budgets"]
    spend = {r["agent_id"]: (r["cost_usd"], r["llm_spans"]) for r in body["summary"]}
    assert spend == {"agent-a": (5.125, 7), "agent-b": (2.0, 2)}


def test_without_fleet_store_store_fleet_is_404_naming_the_setting(without_fleet):
    status, body = _call(without_fleet, "/v1/query", {"sql": "SELECT 1", "store": "fleet"})
    assert status == 404 and "fleet_store: clickhouse://" in body["error"], body
    for path in FLEET_ROUTES:
        status, body = _call(without_fleet, path)
        assert status == 404 and "no fleet store configured: set fleet_store" in body["error"], (path, body)
    status, body = _call(without_fleet, "/v1/query", {"sql": "SELECT count(*) AS n FROM spans"})
    assert (status, body["rows"]) == (200, [[0]])  # the local store still answers


def test_a_tenants_key_is_refused_the_fleet_store(with_fleet):
    status, body = _call(with_fleet, "/v1/query", {"sql": "SELECT count() FROM spans", "store": "fleet"}, TENANT_KEY)
    assert status == 403 and "not tenant-scoped" in body["error"], body
    for path in FLEET_ROUTES:
        status, body = _call(with_fleet, path, key=TENANT_KEY)
        assert status == 403 and "not tenant-scoped" in body["error"], (path, body)


def test_fleet_store_password_never_shows(with_fleet, fleet):  # noqa: F811
    text = pipeline_yaml(with_fleet.ports, with_fleet.data_dir,
                         admin="    fleet_store: postgres://reader:hunter2-secret@db/x\n")
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "test")
    assert "fleet_store" in str(refused.value) and "must be clickhouse://" in str(refused.value)
    assert "hunter2-secret" not in str(refused.value)
    shown = parse_config(pipeline_yaml(with_fleet.ports, with_fleet.data_dir,
                                       admin="    fleet_store: clickhouse://reader:hunter2-secret@db:9000/x\n"), "test")
    admin = shown.extensions["admin"].settings
    assert "hunter2-secret" not in repr(admin) and admin.fleet_store.get_secret_value().endswith("@db:9000/x")
    status, body = _call(with_fleet, "/v1/status")
    assert status == 200 and f"store=fleet: {fleet['reader']}" in json.dumps(body)
