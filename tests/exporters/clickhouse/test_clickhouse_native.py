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
    NOT_NULL,
    _insert_names,
    arrow_columns,
    insert_columns,
    with_batch_ids,
)
from agent_sre.exporters.clickhouse.schema import (
    EVENT_COLUMNS,
    LOG_COLUMNS,
    METRIC_COLUMNS,
    SPAN_COLUMNS,
    ddl,
    with_evaluations,
)
from agent_sre.pipeline.pdata.schema import EVENT_SCHEMA, LOG_SCHEMA, METRIC_SCHEMA, SPAN_SCHEMA

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


def tricky_metrics() -> pa.Table:
    """Every metric type's columns, NULLs in every nullable one, empty and NULL lists, a slice."""
    rows = []
    for i in range(13):
        kind = ["gauge", "sum", "histogram", "exponential_histogram", "summary"][i % 5]
        rows.append({"time_ns": None if i == 4 else NOW + i, "start_time_ns": NOW if i % 2 else None,
                     "metric_name": None if i == 7 else f"m{i % 3}", "description": "é" * (i % 4) or None,
                     "unit": ["s", None, "{token}"][i % 3], "metric_type": kind,
                     "temporality": "cumulative" if kind in ("sum", "histogram") else None,
                     "is_monotonic": [True, False, None][i % 3], "value": 0.5 * i if kind in ("gauge", "sum") else None,
                     "int_value": i if kind == "sum" else None, "count": i if kind != "gauge" else None,
                     "sum": 1.5 * i if kind != "gauge" else None, "min": -1.0 if i % 2 else None, "max": None,
                     "bucket_counts": [i, 0, 2**40] if kind == "histogram" else [] if i % 2 else None,
                     "explicit_bounds": [0.1, 1.0] if kind == "histogram" else None,
                     "scale": 3 if kind == "exponential_histogram" else None,
                     "positive_bucket_counts": [1, 2] if kind == "exponential_histogram" else None,
                     "quantiles": [{"quantile": 0.5, "value": float(i)}, {"quantile": 0.99, "value": None}]
                     if kind == "summary" else [] if i % 2 else None,
                     "flags": i % 2, "exemplars": '[{"value": 1}]' if i == 2 else None,
                     "attributes": [("k", "v" * i), ("ключ", None)][: i % 3] if i % 4 else None,
                     "metric_metadata": [("m", "1")] if i == 1 else [],
                     "service_name": None if i == 9 else "planner", "resource_attributes": [("service.name", "planner")],
                     "scope_name": "gen_ai" if i % 2 else None})
    return pa.Table.from_pylist(rows, schema=METRIC_SCHEMA).slice(1)  # a slice: offsets not at 0


def tricky_logs() -> pa.Table:
    return pa.Table.from_pylist([{"time_ns": None if i == 2 else NOW + i, "observed_time_ns": NOW,
                                  "severity_number": [9, None, 17][i % 3], "severity_text": ["INFO", None][i % 2],
                                  "event_name": "gen_ai.user.message" if i % 2 else None,
                                  "body": "x" * LONG[i % 5] if i % 3 else None, "body_type": "string",
                                  "trace_id": f"{i:032x}" if i % 4 else None, "span_id": f"{i:016x}",
                                  "attributes": [("gen_ai.system", "openai")] if i % 2 else None,
                                  "service_name": "planner" if i % 5 else None,
                                  "resource_attributes": [], "scope_attributes": [("s", None)]}
                                 for i in range(11)], schema=LOG_SCHEMA).slice(1)


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
                                                        ("events", EVENT_COLUMNS, tricky_events),
                                                        ("metrics", METRIC_COLUMNS, tricky_metrics),
                                                        ("logs", LOG_COLUMNS, tricky_logs)])
def test_native_blocks_store_what_the_driver_stores_on_18_16(clickhouse, table, columns, make):
    client = clickhouse.client()
    for db in ("by_native", "by_driver"):
        for statement in ddl(db, current=False, ttl_days=30):
            client.execute(statement)
    signal = {"spans_raw": "traces"}.get(table, table)
    batch = with_batch_ids([make()], signal)
    names = ", ".join(_insert_names(columns, current=False))
    assert native.insert(client, f"INSERT INTO by_native.{table} ({names}) VALUES",
                         arrow_columns(batch, columns, current=False)) == batch.num_rows
    data = insert_columns(batch, columns, batch.column("batch_id").to_pylist(), current=False,
                          not_null=NOT_NULL[signal])
    client.execute(f"INSERT INTO by_driver.{table} ({names}) VALUES", list(data.values()), columnar=True)
    order = {"spans_raw": "span_id", "events": "fingerprint", "metrics": "time_ns, metric_name",
             "logs": "time_ns, span_id"}[table]
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
        keys = _part_keys(later, "start_ns").to_pylist()
        assert stored == set(keys[:10]) and len(stored) == 2  # b's two days
        assert not stored & set(keys[10:])  # c is new
    finally:
        db.close()


def _native_file(db, table: str, columns: dict[str, pa.Array], rows: int, path) -> None:
    """Insert the exporter's column bytes into ``table`` through a Native file (chdb has no native protocol)."""
    from clickhouse_driver.varint import write_varint
    from clickhouse_driver.writer import write_binary_str

    types = dict(json.loads(db.query(f"SELECT name, type FROM system.columns WHERE database = 'fleet' AND table = "
                                     f"'{table}'", "JSONCompact").data())["data"])
    block = io.BytesIO()
    write_varint(len(columns), block)
    write_varint(rows, block)
    for name, arr in columns.items():
        write_binary_str(name, block)
        write_binary_str(types[name], block)
        block.write(native.encode_column(arr, types[name]))
    path.write_bytes(block.getvalue())
    db.query(f"INSERT INTO fleet.{table} ({', '.join(columns)}) SELECT * FROM file('{path}', 'Native')")


@pytest.mark.parametrize(("table", "columns", "make"), [("metrics", METRIC_COLUMNS, tricky_metrics),
                                                        ("logs", LOG_COLUMNS, tricky_logs)])
def test_metrics_and_logs_read_back_on_current_clickhouse_as_the_arrow_rows(tmp_path, table, columns, make):
    """On ClickHouse 26.9 (chdb 4.4.0): the exporter's bytes for every metric and log column (LowCardinality, Map,
    Nested quantiles, arrays, NULLs) read back as the Arrow rows, and the exporter's stored-batch look-up finds
    the (batch, day) keys it builds."""
    from chdb import session

    from agent_sre.exporters.clickhouse.factory import ClickHouseExporter, _part_keys

    db = session.Session(str(tmp_path / "chdb"))
    try:
        for statement in ddl("fleet", current=True, ttl_days=30):
            db.query(statement)
        create = db.query(f"SHOW CREATE TABLE fleet.{table}", "TabSeparatedRaw").data()
        for feature in ("PARTITION BY toDate(time)", "TTL toDateTime(time) + toIntervalDay(30)",
                        "`service_name` LowCardinality(String)", "`attributes` Map(LowCardinality(String), String)"):
            assert feature in create, feature
        assert ("TYPE bloom_filter" in create) == (table == "logs")
        source = make()
        batch = with_batch_ids([source], table)
        _native_file(db, table, arrow_columns(batch, columns, current=True), batch.num_rows, tmp_path / "b.native")
        names = [c for c in columns if c != "batch_id" and c != "quantiles"]
        # The row without a time is stored at 0 (1970, past the TTL: dropped once its part is merged or at once).
        got = json.loads(db.query(f"SELECT {', '.join(names)} FROM fleet.{table} WHERE time_ns > 0 ORDER BY time_ns, "
                                  "span_id" if table == "logs" else
                                  f"SELECT {', '.join(names)}, quantiles.quantile, quantiles.value FROM fleet.{table} "
                                  "WHERE time_ns > 0 ORDER BY time_ns", "JSONCompact").data())["data"]
        expected_rows = [r for r in source.to_pylist() if r["time_ns"] is not None]
        expected_rows.sort(key=lambda r: (r["time_ns"], r.get("span_id") or ""))
        assert len(got) == len(expected_rows) == batch.num_rows - 1

        def stored(value, name):  # what ClickHouse keeps: NULL keys as ''/0, maps as {k: v or ''}, lists as []
            if name in ("attributes", "metric_metadata", "resource_attributes", "scope_attributes"):
                return {k: v or "" for k, v in value or []}
            if name in ("bucket_counts", "explicit_bounds", "positive_bucket_counts", "negative_bucket_counts"):
                return value or []
            if name in ("metric_name", "service_name", "trace_id", "span_id") and value is None:
                return ""
            if name == "is_monotonic" and value is not None:
                return int(value)
            return value

        for row, want in zip(got, expected_rows, strict=True):
            assert row[:len(names)] == [stored(want[n], n) for n in names], want
            if table == "metrics":
                q = want["quantiles"] or []
                assert row[len(names):] == [[e["quantile"] for e in q], [e["value"] or 0 for e in q]]
        later = with_batch_ids([source.slice(0, 3), source.slice(3)], table)  # another merge of the same rows
        keys = _part_keys(batch, "time_ns").to_pylist()
        epoch = {keys[i] for i, r in enumerate(source.to_pylist()) if r["time_ns"] is None}  # there or dropped (TTL)
        found = ClickHouseExporter._stored(ChdbClient(db), f"fleet.{table}", batch, table, by_day=True)
        assert found - epoch == set(keys) - epoch and len(set(keys) - epoch) == 1  # one batch, one day
        assert not ClickHouseExporter._stored(ChdbClient(db), f"fleet.{table}", later, table, by_day=True)
    finally:
        db.close()
