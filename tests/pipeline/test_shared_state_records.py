"""Shared records (the fleet's chaos experiments and rollouts) on a real Redis (Debian's redis-server 7.0 on
loopback): a change computed from a version is applied once, however many pipelines race for it; a
reconcile writes back what Redis lost and lets a final record win over a running one, never the other
way; ids are never given twice, even after Redis restarted empty; final records are forgotten after
their retention."""

from __future__ import annotations

import threading
import time

import pytest

from agent_sre.pipeline.storage.shared_state import SharedRecord, SharedState
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(tmp_path):
    with running_redis(tmp_path) as server:
        yield server


def _records(url: str, instance: str, retention_s: float = 86400.0):
    return SharedState(url, instance).records("rollouts", retention_s)


def test_a_change_from_one_version_is_applied_once_among_racing_pipelines(redis_server):
    fleet = [_records(redis_server.url, f"p{k}") for k in range(8)]
    assert fleet[0].put("r", -1, {"step": 0}) == (True, SharedRecord(0, False, {"step": 0}))
    assert fleet[1].put("r", -1, {"step": 0}) == (False, SharedRecord(0, False, {"step": 0}))  # exists already
    won: list[int] = []
    barrier = threading.Barrier(len(fleet))

    def advance(k: int) -> None:
        barrier.wait()
        reply = fleet[k].put("r", 0, {"step": 1, "by": k})
        if reply is not None and reply[0]:
            won.append(k)

    threads = [threading.Thread(target=advance, args=(k,)) for k in range(len(fleet))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    assert fleet[3].all() == {"r": SharedRecord(1, False, {"step": 1, "by": won[0]})}
    written, held = fleet[5].put("r", 0, {"step": 2})  # computed from a stale version: refused, told the news
    assert not written and held.doc == {"step": 1, "by": won[0]}


def test_a_reconcile_lets_a_final_record_win_and_never_reopens_one(redis_server):
    a, b = _records(redis_server.url, "a"), _records(redis_server.url, "b")
    a.put("r", -1, {"state": "progressing"})
    assert a.merge("r", 0, {"state": "progressing", "reason": "mine"}, False) == (
        False, SharedRecord(0, False, {"state": "progressing"}))  # not newer: Redis's stays
    assert b.merge("r", 0, {"state": "rolled_back"}, True) == (True, SharedRecord(1, True, {"state": "rolled_back"}))
    assert a.merge("r", 7, {"state": "progressing"}, False)[1].doc == {"state": "rolled_back"}  # final stays
    assert a.merge("r", 1, {"state": "aborted"}, True)[0] is False  # the first final in Redis stays
    assert a.put("r", 1, {"state": "progressing", "run": 2}) == (True, SharedRecord(2, False, {"state": "progressing", "run": 2}))


def test_sync_adopts_what_changed_and_writes_back_what_a_restarted_redis_lost(redis_server):
    a, b = _records(redis_server.url, "a"), _records(redis_server.url, "b")
    assert a.sync({}, lambda r: 0.0, time.time()) == {} and b.sync({}, lambda r: 0.0, time.time()) == {}
    a.put("x", -1, {"n": 1})
    mine = {"x": SharedRecord(0, False, {"n": 1})}
    assert b.sync({}, lambda r: 0.0, time.time()) == mine
    assert b.sync(mine, lambda r: 0.0, time.time()) == {}  # the counter did not move: nothing read
    redis_server.kill()
    assert b.sync(mine, lambda r: 0.0, time.time()) is None and b.state.status()["view"] == "local"
    redis_server.start()  # empty
    gone = SharedRecord(3, True, {"n": 0})
    assert b.sync({**mine, "old": gone}, lambda r: time.time() - 90000, time.time()) == {}
    assert set(a.all() or {}) == {"x"}  # written back; a final record past its retention is not
    assert b.state.outages == 1 and b.state.status()["view"] == "fleet"


def test_ids_are_never_given_twice_even_after_redis_restarted_empty(redis_server):
    a, b = _records(redis_server.url, "a"), _records(redis_server.url, "b")
    assert [a.next_number(0, "CHX-%05d"), b.next_number(0, "CHX-%05d"), a.next_number(0, "CHX-%05d")] == [1, 2, 3]
    redis_server.kill()
    redis_server.start()
    a.put("CHX-00005", -1, {"written back": True})  # a reconcile wrote a running experiment back
    assert b.next_number(3, "CHX-%05d") == 4  # the caller's own highest number is the floor
    assert a.next_number(0, "CHX-%05d") == 6  # a number whose id is a record is skipped


def test_final_records_are_forgotten_after_their_retention(redis_server):
    records = _records(redis_server.url, "a", retention_s=1)
    records.put("old", -1, {"done": True}, final=True)
    records.put("live", -1, {"done": False})
    time.sleep(1.2)
    records.put("new", -1, {"done": True}, final=True)  # each write forgets what is past retention
    assert sorted(records.all() or {}) == ["live", "new"]
