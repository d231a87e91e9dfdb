"""A queued exporter's send may deliver part of a batch and hand the rest back for later (``ExportResult.later``,
what the loadbalancing exporter does with the rows of a trace whose gateway is restarting): the helper queues
the rest again -- on disk with a persistent queue -- before it acks the batch, goes on with what is queued
behind it, and counts every row sent once."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from agent_sre.exporters.helper.sender import HelperConfig, QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ComponentID, ExportResult, ExportStatus, Kind, Settings
from agent_sre.pipeline.component.host import Host
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA


class Deferring(QueuedExporter):
    """Sends rows whose span_id does not start with 'w' at once; the 'w' rows only once ``open`` is set."""

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self.open = threading.Event()
        self.sent: list[str] = []
        self.lock = threading.Lock()

    def send(self, batch: pa.Table) -> ExportResult:
        ids = batch.column("span_id").to_pylist()
        ready = [i for i, s in enumerate(ids) if not s.startswith("w") or self.open.is_set()]
        with self.lock:
            self.sent += [ids[i] for i in ready]
        if len(ready) == len(ids):
            return SUCCESS
        waiting = [i for i in range(len(ids)) if i not in ready]
        time.sleep(0.01)
        return ExportResult(ExportStatus.SUCCESS, "waiting", later=batch.take(waiting))


def _spans(ids: list[str]) -> pa.Table:
    return pa.Table.from_pylist([{"trace_id": "0" * 32, "span_id": s} for s in ids], schema=SPAN_SCHEMA)


@pytest.mark.parametrize("persistent", [False, True])
def test_rows_handed_back_are_sent_later_once_without_holding_up_the_queue(tmp_path, persistent):
    queue = {"num_consumers": 1, **({"storage": {"directory": str(tmp_path / "q")}} if persistent else {})}
    telemetry = Telemetry()
    exporter = Deferring(Settings(ComponentID("deferring"), Kind.EXPORTER, telemetry),
                         HelperConfig.model_validate({"sending_queue": queue}))
    exporter.start(Host(telemetry=telemetry))
    try:
        assert exporter.export(_spans(["a1", "w1", "a2"])).ok
        assert exporter.export(_spans(["b1", "b2"])).ok  # behind the first batch in the one consumer's queue
        deadline = time.monotonic() + 10
        while {"a1", "a2", "b1", "b2"} - set(exporter.sent) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {"a1", "a2", "b1", "b2"} <= set(exporter.sent) and "w1" not in exporter.sent  # not held up
        exporter.open.set()
        while "w1" not in exporter.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        assert sorted(exporter.sent) == ["a1", "a2", "b1", "b2", "w1"]  # each once
        sent = telemetry.registry.get_sample_value("agent_sre_exporter_sent_spans_total", {"exporter": "deferring"})
        assert sent == 5
    finally:
        exporter.shutdown()
