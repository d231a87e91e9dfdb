"""The span store's write-ahead spool: acknowledged batches survive a crash and are replayed exactly once."""

from __future__ import annotations

import os
import time
import zlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.storage import segmentlog
from agent_sre.pipeline.storage.spool import Spool, load, read_after, segments
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings, StoreBehind, open_read_only
from tests.otlp_builders import request


def _table(n: int, prefix: str) -> pa.Table:
    req = request(n, attrs={"agent.did": f"did:web:{prefix}"})
    for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
        span.name = f"{prefix}-{i}"
    return request_to_table(req).table


def _crash(store: SpanStore) -> None:
    """What kill -9 leaves: the DuckDB file and the spool, with no drain and no checkpoint."""
    store._stop_verifier()  # its connection would keep the database instance open in this process
    store._con.close()


def _lazy(tmp_path, **kw) -> SpoolSettings:
    # A loader that never inserts on its own: everything appended stays in the spool until sync.
    return SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10**9, flush_interval=3600, **kw)


def test_spool_reads_back_every_batch_with_its_sequence_number(tmp_path):
    spool = Spool(tmp_path, next_seq=7)
    written = [spool.append(_table(3, "a")), spool.append(_table(2, "b"))]
    assert [(w.seq, w.rows) for w in written] == [(7, 3), (8, 2)]
    # The loader reads batches back where they lie, while the segment is still being written ...
    assert [b.column("name")[1].as_py() for b in load(written[::-1])] == ["b-1", "a-1"]
    spool.close()
    # ... and recovery reads segments front to back.
    got = [(seq, batch.num_rows, batch.column("name")[0].as_py()) for seq, batch in read_after(tmp_path, 0)]
    assert got == [(7, 3, "a-0"), (8, 2, "b-0")]
    assert [seq for seq, _ in read_after(tmp_path, 7)] == [8]


def test_a_torn_tail_is_skipped_and_earlier_batches_are_kept(tmp_path):
    spool = Spool(tmp_path, next_seq=1)
    spool.append(_table(4, "kept"))
    spool.append(_table(4, "torn"))
    spool.close()
    (path,) = segments(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # the second batch was cut short by a crash
    assert [(seq, b.num_rows) for seq, b in read_after(tmp_path, 0)] == [(1, 4)]


def test_closed_segments_are_deleted_once_applied(tmp_path):
    spool = Spool(tmp_path, next_seq=1, segment_bytes=1)  # every append starts a new segment
    for k in range(3):
        spool.append(_table(1, f"s{k}"))
    assert len(segments(tmp_path)) == 3
    spool.release(2)
    assert [p.name for p in segments(tmp_path)] == ["00000000000000000003.spool"]


def test_acknowledged_spans_are_replayed_exactly_once_after_a_crash(tmp_path):
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, spool=_lazy(tmp_path))
    store.append(_table(5, "a"))
    store.append(_table(3, "b"))
    assert store.pending_spans == 8
    _crash(store)

    reopened = SpanStore(db, spool=_lazy(tmp_path))  # replays the spool into DuckDB
    assert reopened.count() == 8
    reopened.append(_table(2, "c"))
    _crash(reopened)

    again = SpanStore(db, spool=_lazy(tmp_path))
    assert again.count() == 10  # a and b not twice
    names = {r[0] for r in again._con.execute("SELECT name FROM spans").fetchall()}
    assert {"a-4", "b-2", "c-1"} <= names
    again.close()


def test_read_only_open_after_a_crash_shows_spooled_spans(tmp_path):
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, spool=_lazy(tmp_path))
    store.append(_table(2, "early"))
    store.sync()
    store.append(_table(3, "late"))  # acknowledged, only in the spool
    _crash(store)
    con = open_read_only(db, spool_dir=tmp_path / "spool")
    try:
        rows = con.execute("SELECT name, attributes['agent.did'] FROM spans ORDER BY name").fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == ["early-0", "early-1", "late-0", "late-1", "late-2"]


def test_loader_inserts_on_its_own_after_the_flush_interval(tmp_path):
    settings = SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10**9, flush_interval=0.05)
    store = SpanStore(tmp_path / "spans.duckdb", spool=settings)
    store.append(_table(4, "x"))
    deadline = time.monotonic() + 10
    while store.pending_spans and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.pending_spans == 0
    with store._lock:
        assert store._con.execute("SELECT count(*) FROM span_rows").fetchall() == [(4,)]
    store.close()
    assert segments(tmp_path / "spool") == []  # a clean close leaves no spool behind


def test_append_refuses_when_the_loader_is_behind(tmp_path):
    store = SpanStore(tmp_path / "spans.duckdb", spool=_lazy(tmp_path, max_pending_spans=6))
    store.append(_table(4, "a"))
    with pytest.raises(StoreBehind, match="span store is behind: 4 spans waiting"):
        store.append(_table(4, "b"))
    store.sync()
    store.append(_table(4, "c"))  # room again once the loader caught up
    assert store.count() == 8
    store.close()


def test_a_failed_write_never_has_later_batches_written_after_it(tmp_path, monkeypatch):
    spool = Spool(tmp_path, next_seq=1)
    spool.append(_table(2, "before"))
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        spool.append(_table(2, "failed"))  # never acknowledged
    monkeypatch.setattr(os, "fdatasync", real)
    spool.append(_table(2, "after"))
    spool.close()
    assert len(segments(tmp_path)) == 2  # the failed segment was left, not appended to
    got = [(seq, b.column("name")[0].as_py()) for seq, b in read_after(tmp_path, 0)]
    # The unacknowledged batch is gone and its number is used again (so a gap in the numbers is loss).
    assert got == [(1, "before-0"), (2, "after-0")]


def _three_segments(tmp_path) -> list:
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, spool=_lazy(tmp_path, segment_bytes=1))  # one batch per segment
    for tag in ("a", "b", "c"):
        store.append(_table(4, tag))
    _crash(store)
    return segments(tmp_path / "spool")


def _names(store: SpanStore) -> list[str]:
    store.sync()
    return [r[0] for r in store.read("SELECT name FROM spans ORDER BY name")]


def test_a_flipped_byte_is_found_by_its_checksum_and_the_segment_is_quarantined(tmp_path, caplog):
    first, second, third = _three_segments(tmp_path)
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the second batch
    second.write_bytes(bytes(data))

    store = SpanStore(tmp_path / "spans.duckdb", spool=_lazy(tmp_path))  # starts: what is readable is loaded
    assert _names(store) == [f"{t}-{i}" for t in "ac" for i in range(4)]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("fails its checksum" in m and "acknowledged to clients and may be lost" in m for m in errors)
    kept = sorted((tmp_path / "spool" / "quarantine").iterdir())
    assert [p.name.split(".")[0] for p in kept] == [second.name.split(".")[0]] * 2
    assert kept[0].read_bytes() == bytes(data)  # the damaged segment as it was, never deleted
    store.close()
    assert (tmp_path / "spool" / "quarantine").is_dir() and len(list((tmp_path / "spool" / "quarantine").iterdir())) == 2


def test_a_segment_cut_in_half_is_reported_as_loss_of_acknowledged_spans_not_as_never_acknowledged(tmp_path, caplog):
    first, second, third = _three_segments(tmp_path)
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])

    store = SpanStore(tmp_path / "spans.duckdb", spool=_lazy(tmp_path))
    assert _names(store) == [f"{t}-{i}" for t in "ac" for i in range(4)]  # the segments around it are kept
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "never acknowledged" not in messages
    assert "not the last segment" in messages and "may be lost" in messages
    assert len(list((tmp_path / "spool" / "quarantine").glob("*.why"))) == 1
    store.close()


def test_a_torn_end_of_the_last_segment_is_a_crash_mid_write_and_nothing_is_quarantined(tmp_path, caplog):
    *_, third = _three_segments(tmp_path)
    data = third.read_bytes()
    third.write_bytes(data[: len(data) - 50])

    store = SpanStore(tmp_path / "spans.duckdb", spool=_lazy(tmp_path))
    assert _names(store) == [f"{t}-{i}" for t in "ab" for i in range(4)]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert not (tmp_path / "spool" / "quarantine").exists()
    store.close()


def test_a_missing_segment_is_reported_as_a_gap_in_the_sequence(tmp_path, caplog):
    first, second, third = _three_segments(tmp_path)
    second.unlink()

    store = SpanStore(tmp_path / "spans.duckdb", spool=_lazy(tmp_path))
    assert _names(store) == [f"{t}-{i}" for t in "ac" for i in range(4)]
    assert any("records seq 2..2 are missing" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    store.close()


def test_a_store_named_like_duckdbs_own_catalogs_opens_and_reads(tmp_path):
    """The store is attached to an in-memory instance under its file's stem: a file called memory.duckdb
    (the in-memory database's own name) must still open, take spans and answer reads."""
    from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA

    for stem in ("memory", "system", "temp", "main"):
        store = SpanStore(tmp_path / f"{stem}.duckdb")
        store.append(pa.Table.from_pylist([{"trace_id": "1" * 32, "span_id": "2" * 16, "name": "x",
                                            "start_ns": 1, "end_ns": 2}], schema=SPAN_SCHEMA))
        assert store.read("SELECT count(*) FROM spans") == [(1,)]
        store.close()


def test_a_checkpoint_does_not_rewrite_the_row_groups_transactions_left_partly_filled(tmp_path):
    # Under the soak's overload the loader committed transactions of 12,288 rows (two spooled batches), each
    # leaving a half-filled row group; DuckDB's checkpoint merged them — read back, compressed again and
    # spilled past the pool — and stalled every commit for 4-7 s at a 256 MiB pipeline (bench/checkpoint.py).
    store = SpanStore(tmp_path / "spans.duckdb", memory_limit="32MiB",
                      spool=SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=12_288, flush_interval=3600))
    for i in range(6):
        store.append(_table(12_288, f"t{i}"))
        store.sync()  # one transaction of 12,288 rows: a full row group of 8,192 and one of 4,096
    store.checkpoint()
    groups = store._con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('span_rows')").fetchall()
    assert groups == [(12,)]  # as the transactions wrote them: not merged into 9 by the checkpoint
    assert store.count() == 6 * 12_288
    store.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 2**64 - 1))
def test_a_records_checksum_is_zlibs_crc32_as_spools_of_earlier_versions_were_written(payload, seq):
    """The checksum is computed by ISA-L now; a spool written with zlib's must still read back."""
    expected = zlib.crc32(payload, zlib.crc32(segmentlog._CHECKED.pack(seq, len(payload))))
    assert segmentlog._crc(seq, payload) == expected
    assert segmentlog._crc(seq, memoryview(payload)) == expected
