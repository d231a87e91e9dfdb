"""duckdb exporter housekeeping: retention by the time spans were received, hourly Parquet that a restart neither
repeats nor skips, into a directory outside the store."""

from __future__ import annotations

import time

import pyarrow.parquet as pq

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request

HOUR = 3600 * 10**9
T0 = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % HOUR  # the start of an hour


def _service(tmp_path, out, retention: str = "0") -> Service:
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path / "data").replace(
        f"path: {tmp_path / 'data'}/spans.duckdb",
        f"path: {tmp_path / 'data'}/spans.duckdb\n    retention: {retention}\n    parquet:\n      directory: {out}")
    service = Service(parse_config(text, "test"))
    service.start()
    return service


def _send(service: Service, n: int, start_ns: int) -> None:
    service.receivers[0].ingest.export(request(n, start_ns=start_ns), "test")


def _rows_per_hour(out) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in out.rglob("*.parquet"):
        hour = f"{f.parent.parent.name}/{f.parent.name}"
        counts[hour] = counts.get(hour, 0) + pq.read_metadata(f).num_rows
    return counts


def test_completed_hours_are_exported_once_across_restarts(tmp_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet-elsewhere")  # not under the store's directory
    service = _service(tmp_path, out)
    try:
        _send(service, 3, T0)  # hour 0
        _send(service, 2, T0 + HOUR)  # hour 1
        _send(service, 4, T0 + 2 * HOUR)  # hour 2, still running at "now"
        exporter = service.exporters["duckdb"]
        exporter.run_housekeeping(now_ns=T0 + 2 * HOUR + 10)
        first = _rows_per_hour(out)
        assert sorted(first.values()) == [2, 3]  # hours 0 and 1; the current hour waits
        exporter.run_housekeeping(now_ns=T0 + 2 * HOUR + 20)
        assert _rows_per_hour(out) == first  # nothing again within the same hour
    finally:
        service.shutdown()

    restarted = _service(tmp_path, out)
    try:
        restarted.exporters["duckdb"].run_housekeeping(now_ns=T0 + 2 * HOUR + 30)
        assert _rows_per_hour(out) == first  # a restart within the hour repeats nothing
        restarted.exporters["duckdb"].run_housekeeping(now_ns=T0 + 3 * HOUR + 5)
    finally:
        restarted.shutdown()
    after = _rows_per_hour(out)
    assert sum(after.values()) == 9  # hour 2 added; hours 0 and 1 not written twice
    assert len(after) == 3


def test_retention_deletes_by_the_time_spans_were_received_not_by_the_clients_clock(tmp_path, tmp_path_factory):
    service = _service(tmp_path, tmp_path_factory.mktemp("pq"), retention="1d")
    try:
        now = time.time_ns()
        _send(service, 3, now - 8 * 24 * HOUR)  # a client whose clock is 8 days behind
        _send(service, 2, now)
        exporter = service.exporters["duckdb"]
        exporter.run_housekeeping(now_ns=now + HOUR)
        store = exporter.store
        assert store.query("SELECT count(*) FROM spans").rows == [[5]]  # just received: kept
        exporter.run_housekeeping(now_ns=now + 25 * HOUR)  # a day after they arrived
        assert store.query("SELECT count(*) FROM spans").rows == [[0]]
    finally:
        service.shutdown()


def test_a_larger_flush_spans_raises_the_insert_byte_budget_with_it(tmp_path):
    """Each insert transaction is bounded by flush_spans and by a byte budget: raising flush_spans (the
    README's tuning for throughput) must not leave transactions cut at the default budget's ~16k spans."""
    from agent_sre.pipeline.component import ComponentID, Kind, Settings
    from agent_sre.pipeline.component.registry import registry
    from agent_sre.pipeline.component.telemetry import Telemetry

    factory = registry.get(Kind.EXPORTER, "duckdb")
    budgets = {}
    for spans in (4096, 16384, 65536):
        config = factory.config_model(path=str(tmp_path / f"{spans}.duckdb"), spool={"flush_spans": spans})
        exporter = factory.create(Settings(ComponentID.parse("duckdb"), Kind.EXPORTER, Telemetry()), config)
        settings = exporter._spool_settings()
        assert settings is not None and settings.flush_spans == spans
        budgets[spans] = settings.max_insert_bytes
    assert budgets == {4096: 16 << 20, 16384: 16 << 20, 65536: 64 << 20}
