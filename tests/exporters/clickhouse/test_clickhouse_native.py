"""The exporter's own Native-format encoding (native.py) stores exactly what clickhouse-driver's value-by-value
encoding stores: on a real ClickHouse 18.16 (Debian's server, compat schema: Nested maps, Nullable columns)
over the native protocol, and on ClickHouse 26.9 in process (chdb reading the same column bytes as a Native
file: the current schema's LowCardinality and Map columns)."""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa
import pytest

from agent_sre.exporters.clickhouse import native
from agent_sre.exporters.clickhouse.factory import (
    _insert_names,
    arrow_columns,
    insert_columns,
    with_batch_ids,
)
from agent_sre.exporters.clickhouse.schema import EVENT_COLUMNS, SPAN_COLUMNS, ddl, with_evaluations
from agent_sre.pipeline.pdata.schema import EVENT_SCHEMA, SPAN_SCHEMA

LONG = [0, 1, 127, 128, 16_383, 16_384, 2**21]  # every varint length width up to 4 bytes
NOW = time.time_ns()  # the current schema drops spans older than its TTL


def tricky_spans(null_value: str | None = None) -> pa.Table:
    rows = []
    for i, n in enumerate(LONG * 3):
        rows.append({"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "agent_id": None if i % 5 == 0 else f"a{i % 3}",
                     "name": "é" * n if i < len(LONG) else None, "model": ["gpt-4o", None, "claude", ""][i % 4],
                     "start_ns": None if i == 3 else NOW + i, "input_tokens": i or None,
                     "cost_usd": 0.5 * i if i % 2 else None, "task_success": [True, False, None][i % 3],
                     "status_message": "x" * n, "attributes": None if i % 4 == 1 else
                     [("k", "v" * (n % 300)), ("ключ", null_value), ("", "")][: i % 4],
                     "resource_attributes": [("service.name", "svc")],
                     # evaluation results (kept in ``evaluations``), one without a score, other events
                     "events": [[{"time_ns": 1, "name": "gen_ai.evaluation.result", "attributes": [
                         ("gen_ai.evaluation.name", "hallucination"), ("gen_ai.evaluation.score.value", f"0.{i}")]},
                                 {"time_ns": 2, "name": "retry", "attributes": []}],
                                [{"time_ns": 1, "name": "gen_ai.evaluation.result", "attributes": [
                                    ("gen_ai.evaluation.name", "relevance")]}], None][i % 3]})
    return with_evaluations(pa.Table.from_pylist(rows, schema=SPAN_SCHEMA).slice(1))  # a slice: offsets not at 0


def tricky_events() -> pa.Table:
    return pa.Table.from_pylist([{"time_ns": i, "kind": "alert", "state": ["firing", "resolved"][i % 2],
                                  "fingerprint": f"f{i}", "severity": None if i % 2 else "page",
                                  "labels": [("slo", "x"), ("agent_id", f"a{i}")] if i % 3 else []}
                                 for i in range(10)], schema=EVENT_SCHEMA)


def test_strings_are_length_prefixed_with_leb128_varints():
    values = ["a" * n for n in LONG] + ["ж"]
    expected = io.BytesIO()
    for v in values:
        data, n = v.encode(), len(v.encode())
        while True:
            expected.write(bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)]))
            n >>= 7
            if not n:
                break
        expected.write(data)
    assert native.strings(pa.array(values)) == expected.getvalue()
    assert native.strings(pa.array(["x", None, "yz"]).slice(1)) == b"\x00\x02yz"


def test_a_type_it_does_not_write_is_refused_by_name():
    with pytest.raises(native.UnsupportedType, match="Decimal"):
        native.encode_column(pa.array([1]), "Decimal(9, 2)")
    with pytest.raises(native.UnsupportedType, match="LowCardinality\\(UInt32\\)"):
        native.encode_column(pa.array([1]), "LowCardinality(UInt32)")


@pytest.mark.slow
@pytest.mark.parametrize(("table", "columns", "make"), [("spans_raw", SPAN_COLUMNS, tricky_spans),
                                                        ("events", EVENT_COLUMNS, tricky_events)])
def test_native_blocks_store_what_the_driver_stores_on_18_16(clickhouse, table, columns, make):
    client = clickhouse.client()
    for db in ("by_native", "by_driver"):
        for statement in ddl(db, current=False, ttl_days=30):
            client.execute(statement)
    signal = "traces" if table == "spans_raw" else "events"
    batch = with_batch_ids([make()], signal)
    names = ", ".join(_insert_names(columns, current=False))
    assert native.insert(client, f"INSERT INTO by_native.{table} ({names}) VALUES",
                         arrow_columns(batch, columns, current=False)) == batch.num_rows
    data = insert_columns(batch, columns, batch.column("batch_id").to_pylist(), current=False)
    client.execute(f"INSERT INTO by_driver.{table} ({names}) VALUES", list(data.values()), columnar=True)
    order = "span_id" if table == "spans_raw" else "fingerprint"
    stored = [client.execute(f"SELECT * FROM {db}.{table} ORDER BY {order}") for db in ("by_native", "by_driver")]
    assert stored[0] == stored[1] and len(stored[0]) == batch.num_rows
    assert client.execute("SELECT count() FROM by_native.rollup_minute_mv")[0][0] > 0 or table == "events"


def test_native_column_bytes_read_back_on_current_clickhouse_as_the_arrow_rows(tmp_path):
    from chdb import session
    from clickhouse_driver.varint import write_varint
    from clickhouse_driver.writer import write_binary_str

    db = session.Session(str(tmp_path / "chdb"))
    try:
        for statement in ddl("fleet", current=True, ttl_days=30):
            db.query(statement)
        db.query("CREATE TABLE fleet.by_arrow AS fleet.spans_raw")
        types = dict(json.loads(db.query("SELECT name, type FROM system.columns WHERE database = 'fleet' AND "
                                         "table = 'spans_raw'", "JSONCompact").data())["data"])
        batch = with_batch_ids([tricky_spans()], "traces")
        columns = arrow_columns(batch, SPAN_COLUMNS, current=True)
        assert types["attributes"] == "Map(LowCardinality(String), String)"
        assert types["model"] == "LowCardinality(Nullable(String))"
        block = io.BytesIO()  # a Native file: the protocol's Data block without its block info
        write_varint(len(columns), block)
        write_varint(batch.num_rows, block)
        for name, arr in columns.items():
            write_binary_str(name, block)
            write_binary_str(types[name], block)
            block.write(native.encode_column(arr, types[name]))
        (tmp_path / "block.native").write_bytes(block.getvalue())
        names = ", ".join(columns)
        db.query(f"INSERT INTO fleet.spans_raw ({names}) SELECT * FROM file('{tmp_path}/block.native', 'Native')")
        # the reference: the same rows from Arrow, NULL map values written as '' (what the exporter stores)
        rows = with_batch_ids([tricky_spans(null_value="")], "traces").select(list(columns))  # noqa: F841
        db.query(f"INSERT INTO fleet.by_arrow ({names}) SELECT * FROM Python(rows)")
        query = "SELECT * FROM fleet.{} ORDER BY span_id FORMAT JSONCompact"
        native_rows, arrow_rows = (json.loads(db.query(query.format(t)).data())["data"] for t in ("spans_raw", "by_arrow"))
        assert native_rows == arrow_rows
        assert len(native_rows) == batch.num_rows - 1  # the span without start_ns is at 1970: past the TTL
        assert any(r for r in native_rows if r[SPAN_COLUMNS.index("model")] is None)
    finally:
        db.close()


@pytest.mark.slow
def test_native_blocks_go_through_lz4_compression_on_18_16(clickhouse):
    pytest.importorskip("lz4", reason="compression: lz4 needs pip install lz4 clickhouse-cityhash")
    pytest.importorskip("clickhouse_cityhash", reason="compression: lz4 needs pip install lz4 clickhouse-cityhash")
    from clickhouse_driver import Client

    client = Client("127.0.0.1", port=clickhouse.tcp, compression="lz4")
    for statement in ddl("lz4", current=False, ttl_days=30):
        client.execute(statement)
    batch = with_batch_ids([tricky_spans()], "traces")
    names = ", ".join(_insert_names(SPAN_COLUMNS, current=False))
    native.insert(client, f"INSERT INTO lz4.spans_raw ({names}) VALUES", arrow_columns(batch, SPAN_COLUMNS, current=False))
    stored = client.execute("SELECT span_id, name, length(status_message), attributes.value FROM lz4.spans "
                            "ORDER BY span_id")
    assert len(stored) == batch.num_rows
    assert [r[2] for r in stored[:6]] == LONG[1:]  # the long strings came through whole
    assert stored[0][1] == "é" and stored[0][3] == []  # a NULL map: no entries
    assert stored[1][3] == ["v" * 127, ""]  # a NULL map value: ''


class ChdbClient:
    """chdb behind clickhouse-driver's ``execute(sql, params)`` (the driver's own parameter escaping)."""

    def __init__(self, session):
        self.session = session

    def execute(self, sql: str, params: dict | None = None) -> list[list]:
        from clickhouse_driver.util.escape import escape_params

        query = sql % escape_params(params, None) if params else sql
        return json.loads(self.session.query(query, "JSONCompact").data() or '{"data": []}')["data"]


def test_the_stored_check_finds_merged_batches_per_day_partition_on_current_clickhouse(tmp_path):
    """Batches a, b went out as one insert; b crosses midnight, so it is two parts (one per day).  A later
    insert of b, c (a restart merging differently) finds both of b's (batch, day) keys and none of c's —
    the keys the server builds in SQL are the ones the exporter builds in Arrow."""
    from chdb import session

    from agent_sre.exporters.clickhouse.factory import NS_PER_DAY, ClickHouseExporter, _part_keys

    db = session.Session(str(tmp_path / "chdb"))
    try:
        for statement in ddl("fleet", current=True, ttl_days=30):
            db.query(statement)
        midnight = time.time_ns() // NS_PER_DAY * NS_PER_DAY
        a, b, c = (pa.Table.from_pylist([{"trace_id": f"{k:032x}", "span_id": f"{k:08x}{i:08x}", "agent_id": "a1",
                                          "start_ns": start + i * 10**9} for i in range(10)], schema=SPAN_SCHEMA)
                   for k, start in ((1, midnight - 3600 * 10**9), (2, midnight - 5 * 10**9), (3, midnight)))
        rows = with_evaluations(with_batch_ids([a, b], "traces")).select(list(SPAN_COLUMNS))  # noqa: F841
        db.query(f"INSERT INTO fleet.spans_raw ({', '.join(SPAN_COLUMNS)}) SELECT * FROM Python(rows)")
        later = with_batch_ids([b, c], "traces")
        stored = ClickHouseExporter._stored(ChdbClient(db), "fleet.spans_raw", later, "traces", by_day=True)
        keys = _part_keys(later, by_day=True).to_pylist()
        assert stored == set(keys[:10]) and len(stored) == 2  # b's two days
        assert not stored & set(keys[10:])  # c is new
    finally:
        db.close()
