"""The store commits whatever the receivers accept, and mends itself: large values, a full disk,
a WAL that does not fit the buffer pool.  While it cannot write it refuses (retryably) and reports
unhealthy; it never strands what it acknowledged."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa

from agent_sre.pipeline.component.capabilities import Health
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings, recovery_pools
from tests.otlp_builders import request

REPO = Path(__file__).resolve().parents[2]


def _big_span(i: int, mib: float) -> pa.Table:
    return request_to_table(request(1, attrs={"gen_ai.prompt": "x" * int(mib * (1 << 20)), "i": str(i)})).table


def test_values_too_large_for_the_buffer_pool_together_are_stored_and_the_store_reopens(tmp_path):
    # With the default 48MB pool, eight acknowledged 15 MiB values used to fail every insert
    # ("failed to pin block") and then every start (the WAL did not replay within the pool).
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, spool=SpoolSettings(directory=str(tmp_path / "spool")))
    for i in range(8):
        store.append(_big_span(i, 15))
    store.sync(120)
    assert store.count() == 8 and store.health() is None
    store._stop_verifier()
    store._con.close()  # a crash: no checkpoint, the WAL holds the large values

    again = SpanStore(db, spool=SpoolSettings(directory=str(tmp_path / "spool")))
    assert again.count() == 8
    again.close()


_DISK_FULL = textwrap.dedent("""
    import json, resource, signal, sys, time
    from pathlib import Path
    from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
    from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings, StoreBehind
    from tests.otlp_builders import request

    d = Path(sys.argv[1])
    # Writes past RLIMIT_FSIZE fail with EFBIG, as writes to a full disk fail with ENOSPC (a real full
    # disk needs a mount this test cannot make); in a subprocess, so only the store sees the limit.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = SpanStore(d / "s.duckdb", spool=SpoolSettings(directory=str(d / "spool"), flush_interval=0.05))
    def batch():  # new span ids each time: the store keeps one copy of spans sent again
        return request_to_table(request(200)).table
    acked = 0
    for _ in range(5):
        store.append(batch()); acked += 200
    store.sync()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    largest = max(p.stat().st_size for p in d.rglob("*") if p.is_file())
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 4096, hard))  # the disk is full
    deadline = time.time() + 30
    while time.time() < deadline and store.health() is None:
        try:
            store.append(batch()); acked += 200
        except (StoreBehind, OSError):
            pass
        time.sleep(0.05)
    unhealthy = store.health()
    try:
        store.append(batch()); acked += 200; refused = False
    except StoreBehind:
        refused = True
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
    deadline = time.time() + 30
    while time.time() < deadline and store.health() is not None:
        time.sleep(0.1)
    healthy_again = store.health() is None
    for _ in range(5):
        store.append(batch()); acked += 200
    store.sync(30)
    print(json.dumps({"unhealthy": unhealthy, "refused": refused, "healthy_again": healthy_again,
                      "acked": acked, "stored": store.count()}))
    store.close()
""")


def test_after_the_disk_was_full_the_store_recovers_by_itself_and_keeps_everything_it_acknowledged(tmp_path):
    out = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["unhealthy"] and "File too large" in got["unhealthy"]  # reported while it could not write
    assert got["refused"]  # and new data refused (StoreBehind: 503 / UNAVAILABLE to clients)
    assert got["healthy_again"]  # no restart needed
    assert got["stored"] == got["acked"] > 2000


class _Failing:
    def health(self) -> str | None:
        return "cannot insert into spans.duckdb: disk full"


def test_the_health_check_answers_503_with_the_problem_while_a_component_reports_one(pipeline):
    url = f"http://127.0.0.1:{pipeline.ports.admin}/"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
    pipeline.service.host.provide(Health, "duckdb/other", _Failing())
    try:
        urllib.request.urlopen(url, timeout=5)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        assert json.loads(exc.read())["problems"] == {"duckdb/other": "cannot insert into spans.duckdb: disk full"}
    pipeline.service.host.withdraw(Health, "duckdb/other")
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200


def _store_with_spans(tmp_path, n: int = 50_000) -> Path:
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db)
    store.append(request_to_table(request(n)).table)
    store.checkpoint()
    store.close()
    return db


def test_a_deleted_store_is_refused_at_start_rather_than_silently_started_empty(tmp_path, caplog):
    db = _store_with_spans(tmp_path, 10)
    db.unlink()
    try:
        SpanStore(db)
        raise AssertionError("expected a refusal")
    except OSError as exc:
        assert "is missing" in str(exc) and "on_damaged_store: start_new" in str(exc)
    fresh = SpanStore(db, on_damaged="start_new")  # told to: starts empty, and says so loudly
    assert fresh.count() == 0
    assert any("is missing" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    fresh.close()
    assert SpanStore(db).count() == 0  # the new store is the store from now on


def test_a_store_whose_header_is_corrupt_is_refused_and_kept_aside_when_told_to_start_new(tmp_path):
    db = _store_with_spans(tmp_path, 10)
    with open(db, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    try:
        SpanStore(db)
        raise AssertionError("expected a refusal")
    except OSError as exc:
        assert "is corrupt" in str(exc) and "Refusing to start" in str(exc)
    fresh = SpanStore(db, on_damaged="start_new")
    assert fresh.count() == 0
    fresh.close()
    (kept,) = tmp_path.glob("spans.duckdb.corrupt-*")  # never deleted
    assert kept.stat().st_size > 0


def test_a_corrupt_data_block_makes_the_store_report_unhealthy_soon_after_it_opens(tmp_path):
    db = _store_with_spans(tmp_path)
    size = db.stat().st_size
    with open(db, "r+b") as f:  # a byte in the middle of the data, where only a full scan reads
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    store = SpanStore(db)  # the header is intact: it opens ...
    try:
        from tests.conftest import eventually
        eventually(lambda: store.health() is not None, timeout=30)  # ... and its background scan finds it
        assert "is corrupt" in store.health() and "checksum" in store.health()
    finally:
        store.close()


def test_a_failure_while_handling_a_failed_insert_does_not_end_the_loader(tmp_path):
    """Seen with an ad hoc query over 10M spans during ingest: the insert ran out of the shared buffer pool,
    the reopen that followed failed ("Unique file handle conflict": the query's cursor held the file) with a
    duckdb.Error nothing caught, and the loader thread ended: nothing was inserted again until a restart."""
    import duckdb

    store = SpanStore(tmp_path / "s.duckdb", spool=SpoolSettings(directory=str(tmp_path / "spool"),
                                                                 flush_interval=0.05))
    real_insert, real_reconnect = store._insert, store._reconnect
    calls = {"insert": 0}

    def failing_insert(*args, **kwargs):
        calls["insert"] += 1
        if calls["insert"] <= 2:
            raise duckdb.OutOfMemoryException("could not allocate block of size 256.0 KiB")
        return real_insert(*args, **kwargs)

    def failing_reconnect(*args, **kwargs):
        raise duckdb.IOException("Unique file handle conflict: the file is already attached")

    store._insert, store._reconnect = failing_insert, failing_reconnect
    store.append(request_to_table(request(30)).table)
    try:
        store.sync(30)  # the third try inserts: the loader lived through both failures
        assert store._loader is not None and store._loader.is_alive()
        assert store.count() == 30
    finally:
        store._reconnect = real_reconnect
        store.close()


def test_a_wal_too_large_for_the_buffer_pool_is_checkpointed_with_the_smallest_pool_that_is_enough(tmp_path, caplog):
    """The rescue tries 4 and 16 times the configured pool before 2GB: a store sized for a 256 MiB pipeline
    (32 MiB) that lacked 3 MiB at a checkpoint went to 1.25 GiB of RSS with the 2GB pool straight away."""
    assert recovery_pools("32768KiB") == [f"{4 * 32 << 20}B", f"{16 * 32 << 20}B", "2GB"]
    assert recovery_pools("1GB") == ["2GB"] and recovery_pools("lots") == ["2GB"]
    db = tmp_path / "spans.duckdb"
    store = SpanStore(db, memory_limit="16MB", spool=SpoolSettings(directory=str(tmp_path / "spool")))
    for i in range(4):
        store.append(_big_span(i, 6))
    store.sync(120)
    assert store.count() == 4
    store._stop_verifier()
    store._con.close()  # a crash: no checkpoint, the WAL holds 24 MiB of values

    caplog.set_level("WARNING", logger="agent_sre.store")
    again = SpanStore(db, memory_limit="16MB", spool=SpoolSettings(directory=str(tmp_path / "spool")))
    assert again.count() == 4
    again.close()
    pools = re.findall(r"with a (\S+) buffer pool once", caplog.text)
    assert pools and pools[-1] != "2GB", pools  # 64 or 256 MB was enough
