"""The clickhouse exporter's config errors, batch ids and Arrow-to-driver columns (no server needed)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from agent_sre.exporters.clickhouse.config import ClickHouseConfig
from agent_sre.exporters.clickhouse.factory import batch_id, insert_columns
from agent_sre.exporters.clickhouse.schema import SPAN_COLUMNS, with_evaluations
from agent_sre.pipeline.cli.common import CliError
from agent_sre.pipeline.cli.fleet import cli_errors
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.fleet import parse_store


def spans(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "start_ns": i, "agent_id": None,
                                  "task_success": i % 2 == 0,
                                  "attributes": [("k", str(i)), ("j", "x")] if i % 3 else None} for i in range(n)],
                                schema=SPAN_SCHEMA)


def test_endpoint_user_password_and_database_come_from_the_url():
    cfg = ClickHouseConfig(endpoint="clickhouse://writer:s%40cret@ch.example:9440/fleet")
    kwargs = cfg.client_kwargs()
    assert (kwargs["host"], kwargs["port"], kwargs["user"], kwargs["password"]) == ("ch.example", 9440, "writer", "s@cret")
    assert cfg.database == "fleet"
    assert ClickHouseConfig(endpoint="clickhouse://ch/").database == "default"


@pytest.mark.parametrize(("endpoint", "message"), [
    ("http://ch:8123/fleet", "endpoint must be clickhouse://host"),
    ("clickhouse:///fleet", "endpoint must be clickhouse://host"),
    ("clickhouse://ch/fleet;drop", "the database name must be an identifier"),
])
def test_a_bad_endpoint_is_refused_with_the_reason(endpoint, message):
    with pytest.raises(ValidationError, match=message):
        ClickHouseConfig(endpoint=endpoint)


def test_unknown_settings_and_schema_versions_are_refused():
    with pytest.raises(ValidationError, match="create_shema"):
        ClickHouseConfig(endpoint="clickhouse://ch/db", create_shema=True)
    with pytest.raises(ValidationError, match="'auto', 'current' or 'compat'"):
        ClickHouseConfig(endpoint="clickhouse://ch/db", schema_version="latest")


def test_a_batch_has_one_id_however_its_rows_are_laid_out():
    table = spans(10)
    part = table.slice(2, 5)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, part.schema) as writer:  # as the persistent queue stores it
        writer.write_table(part)
    reread = pa.ipc.open_stream(sink.getvalue()).read_all()
    rechunked = pa.concat_tables([table.slice(2, 2), table.slice(4, 3)])
    assert batch_id(part, "traces") == batch_id(reread, "traces") == batch_id(rechunked, "traces")
    assert batch_id(part, "traces") != batch_id(table.slice(2, 4), "traces") != batch_id(table.slice(3, 5), "traces")


def test_columns_for_current_use_map_dicts_and_for_compat_nested_arrays():
    table = with_evaluations(spans(4).slice(1, 3))
    current = insert_columns(table, SPAN_COLUMNS, "b1", current=True)
    assert list(current)[:3] == ["trace_id", "span_id", "agent_id"]
    assert current["agent_id"] == ["", "", ""]  # a sort key: '' for unknown
    assert current["attributes"] == [{"k": "1", "j": "x"}, {"k": "2", "j": "x"}, {}]
    assert current["task_success"] == [0, 1, 0] and current["batch_id"] == ["b1"] * 3
    compat = insert_columns(table, SPAN_COLUMNS, "b1", current=False)
    assert compat["attributes.key"] == [["k", "j"], ["k", "j"], []]
    assert compat["attributes.value"] == [["1", "x"], ["2", "x"], []]
    assert "attributes" not in compat


def test_a_bad_store_url_is_refused():
    with pytest.raises(CliError, match="--store must be clickhouse://"):
        cli_errors(lambda: parse_store("duckdb:///tmp/x"))
    assert parse_store("clickhouse://reader@ch:9000/fleet")["user"] == "reader"
