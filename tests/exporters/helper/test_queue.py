"""Sending queues: bounded by their sizer; the persistent one survives a restart (what was not acked
comes back, oldest first, nothing acked comes back), skips and counts a corrupt record, and stops at
a torn one."""

from __future__ import annotations

import pyarrow as pa
import pytest

from agent_sre.exporters.helper.queue import MemoryQueue, PersistentQueue, QueueFull
from agent_sre.pipeline.pdata.ipc import encode_table
from agent_sre.pipeline.storage.segmentlog import MAGIC


def batch(n: int, tag: str = "x") -> pa.Table:
    return pa.table({"name": [f"{tag}{i}" for i in range(n)]})


@pytest.mark.parametrize("sizer", ["requests", "items", "bytes"])
def test_a_full_queue_refuses_by_its_sizer(sizer, tmp_path):
    one = {"requests": 1, "items": 10}
    memory = MemoryQueue(int(2.5 * one.get(sizer, batch(10).nbytes)), sizer)
    disk = PersistentQueue(tmp_path, int(2.5 * one.get(sizer, len(encode_table(batch(10))))), sizer)
    for q in (memory, disk):
        q.put(batch(10))
        q.put(batch(10))
        with pytest.raises(QueueFull, match="sending queue is full"):
            q.put(batch(10))  # two and a half batches of room: the third does not fit
        q.ack(q.get(0))
        q.put(batch(10))  # room again once one is acked
        q.close()
    # a batch larger than the whole capacity is taken into an empty queue rather than refused for ever
    big = MemoryQueue(5, "items")
    big.put(batch(10))
    assert big.size == 10


def test_the_persistent_queue_gives_back_what_was_not_acked_after_a_restart(tmp_path):
    q = PersistentQueue(tmp_path, 10**9, "bytes")
    for tag in "abcd":
        q.put(batch(3, tag))
    a = q.get(0)
    b = q.get(0)
    q.ack(a)  # a delivered; b taken but not acked when the process dies
    q.close()  # (no flush needed: every put and ack was fsync-ed)
    again = PersistentQueue(tmp_path, 10**9, "bytes")
    names = []
    while (item := again.get(0)) is not None:
        names.append(item.table.column("name")[0].as_py())
        again.ack(item)
    assert names == ["b0", "c0", "d0"] and b.table is not None
    again.close()
    assert PersistentQueue(tmp_path, 10**9, "bytes").get(0) is None  # all acked: nothing comes back
    assert not list(tmp_path.glob("*.q"))[1:]  # delivered segments are deleted (at most the open one stays)


def test_a_corrupt_record_is_skipped_and_counted_and_a_torn_tail_ends_the_segment(tmp_path):
    q = PersistentQueue(tmp_path, 10**9, "bytes")
    for tag in "abc":
        q.put(batch(2, tag))
    q.close()
    (segment,) = tmp_path.glob("*.q")
    data = bytearray(segment.read_bytes())
    second = data.find(MAGIC, 1)
    data[second + 40] ^= 0xFF  # flip a byte inside the second record's payload
    data += MAGIC + b"\x00" * 7  # and a torn record at the end
    segment.write_bytes(bytes(data))
    again = PersistentQueue(tmp_path, 10**9, "bytes")
    got = []
    while (item := again.get(0)) is not None:
        got.append(item.table.column("name")[0].as_py())
        again.ack(item)
    assert got == ["a0", "c0"] and again.corrupt == 1  # exported as agent_sre_exporter_queue_corrupt_records
    kept = sorted(p.name for p in (tmp_path / "quarantine").iterdir())  # the damaged segment is kept, with why
    assert len(kept) == 2 and kept[1].endswith(".why") and "checksum" in (tmp_path / "quarantine" / kept[1]).read_text()
