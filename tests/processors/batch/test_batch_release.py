"""What the pipeline hands on is not kept once it is done with: an idle batch processor or commit
dispatcher holds no batch (measured after a burst: ~6 MiB each, held until the next batch came)."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pyarrow as pa

from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings
from agent_sre.processors.batch.factory import BatchConfig, BatchProcessor, factory


def _spans(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}", "name": "s",
                                  "kind": "internal", "start_ns": 1, "end_ns": 2, "agent_id": "a",
                                  "attributes": [], "resource_attributes": [], "scope_attributes": []}
                                 for i in range(n)], schema=SPAN_SCHEMA)


def _released(ref: weakref.ref, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.02)
    return False


class _Counting:
    def __init__(self):
        self.rows = 0

    def consume(self, batch: pa.Table) -> None:
        self.rows += batch.num_rows


def test_an_idle_batch_processor_keeps_no_batch():
    p = factory.create(Settings(ComponentID("batch"), Kind.PROCESSOR, Telemetry()),
                       BatchConfig.model_validate({"timeout": "0s"}))
    assert isinstance(p, BatchProcessor)
    sink = _Counting()
    p.bind(sink)
    p.start(None)
    try:
        table = _spans(100)
        ref = weakref.ref(table)
        sender = threading.Thread(target=p.consume, args=(table,))
        del table
        sender.start()
        sender.join(10)
        assert sink.rows == 100
        del sender  # its target's arguments
        assert _released(ref), "the flusher still holds the last batch while it waits for the next"
    finally:
        p.shutdown()


def test_an_idle_commit_dispatcher_keeps_no_batch(tmp_path):
    store = SpanStore(tmp_path / "s.duckdb", spool=SpoolSettings(str(tmp_path / "spool"), flush_interval=0.02))
    refs: list[weakref.ref] = []
    store.on_commit(lambda rows: refs.append(weakref.ref(rows)))
    store.append(_spans(100))
    store.sync()
    assert len(refs) == 1
    assert _released(refs[0]), "the dispatcher still holds the last committed batch while it waits for the next"
    store.close()
