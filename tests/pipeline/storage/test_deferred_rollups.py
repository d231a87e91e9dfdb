"""The rollups after the durable point: the loader's inserts store spans and leave their rollups to the
rollup thread, which rolls up everything stored since the last rollup in a transaction of its own
(rollups.stored_after), with its position; the rollup tables, the charges and the task spend are those of
a rollup in every insert — exactly once, through the loader and the rollup thread, after a failed rollup,
and across a crash that left spans stored but not rolled up; and ingest does not wait for the rollups."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage import store as store_module
from agent_sre.pipeline.storage.rollups import EVALUATION_EVENT, REPLAY_KEY
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings
from agent_sre.processors.sli.factory import SliConfig, builtin_slis

MINUTE = 60 * 10**9
TABLES = {  # every rollup table, the doubles rounded (sums in another order)
    "sli_minutes": "SELECT minute, sli, agent_id, agent_version, good, total FROM sli_minutes ORDER BY ALL",
    "agent_minutes": "SELECT minute, agent_id, spans, errors, llm_calls, tokens, tasks, task_duration_ns FROM agent_minutes "
                     "ORDER BY ALL",
    "cost_minutes": "SELECT minute, agent_id, model, tenant, spans, round(cost_usd, 9) FROM cost_minutes ORDER BY ALL",
    "trace_rollups": "SELECT trace_id, agent_id, agent_version, delegations, task_end_ns, task_calls, round(cost_usd, 9), "
                     "round(task_usd, 9) FROM trace_rollups ORDER BY ALL",
}

# (role, status, score, tenant, evaluation, replay)
_spec = st.tuples(st.sampled_from(["llm", "tool", "agent_task", "delegation"]), st.sampled_from(["ok", "error"]),
                  st.sampled_from([None, "0.1", "0.9"]), st.sampled_from([None, "acme"]),
                  st.sampled_from([None, "0.7"]), st.booleans())
_batches = st.lists(st.lists(_spec, min_size=1, max_size=12), min_size=2, max_size=6)


def _batch(specs: list[tuple], first: int) -> pa.Table:
    rows = []
    for k, (role, status, score, tenant, evaluation, replay) in enumerate(specs):
        i = first + k
        trace = i % 5  # traces span batches; one agent per trace
        attributes = [("other", "1")] + ([("eval.hallucination.score", score)] if score is not None else [])
        resource = [("service.name", "svc")] + ([("tenant.id", tenant)] if tenant is not None else []) \
            + ([(REPLAY_KEY, "orig")] if replay else [])
        events = ([{"time_ns": 1, "name": EVALUATION_EVENT, "attributes": [
            ("gen_ai.evaluation.name", "hallucination"), ("gen_ai.evaluation.score.value", evaluation)]}]
            if evaluation is not None else [])
        rows.append({
            "trace_id": f"{trace:032x}", "span_id": f"{i + 1:016x}", "name": role, "kind": "internal",
            "start_ns": MINUTE * (1 + i % 3) + i, "end_ns": MINUTE * (1 + i % 3) + i + 10**9, "duration_ns": 10**9,
            "status_code": status, "span_role": role, "agent_id": "agent-" + "ab"[trace % 2], "agent_version": "v1",
            "model": "m" if role == "llm" else None, "cost_usd": 0.01 * (k + 1) if role == "llm" else None,
            "input_tokens": 10 if role == "llm" else None, "output_tokens": 5 if role == "llm" else None,
            "attributes": attributes, "events": events, "scope_attributes": [], "resource_attributes": resource})
    return pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)


class _Seen:
    """What the store hands its callbacks: charges summed per agent, model, tenant and minute, task spend
    per trace (what was added, and the spend so far as last reported), spans committed."""

    def __init__(self, store: SpanStore):
        self.charges: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
        self.added: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self.spend: dict[str, tuple] = {}
        self.committed = 0
        self.rollups: list[str] = []  # the thread of each on_rollup call
        store.on_rollup(lambda: self.rollups.append(threading.current_thread().name))
        store.on_charges(self._charged)
        store.on_task_spend(self._task_spend)
        store.on_commit(self._commit)

    def _charged(self, rows):
        for agent, _trace, model, tenant, usd, spans, minute in rows:
            self.charges[(agent, model, tenant, minute)][0] += usd
            self.charges[(agent, model, tenant, minute)][1] += spans

    def _task_spend(self, rows):
        for _agent, trace, usd, calls, trace_usd, trace_calls in rows:
            self.added[trace][0] += usd
            self.added[trace][1] += calls
            self.spend[trace] = (round(trace_usd, 9), trace_calls)

    def _commit(self, rows):
        self.committed += rows.num_rows

    def summary(self) -> tuple:
        return ({k: (round(v[0], 9), v[1]) for k, v in self.charges.items()},
                {k: (round(v[0], 9), v[1]) for k, v in self.added.items()}, self.spend, self.committed)


def _open(path, spool: SpoolSettings | None = None) -> tuple[SpanStore, _Seen]:
    store = SpanStore(path, spool=spool)
    store.set_sli_rollups(builtin_slis(SliConfig()))
    return store, _Seen(store)


def _tables(store: SpanStore) -> dict[str, list[tuple]]:
    store.sync()
    return {name: store.read(sql) for name, sql in TABLES.items()}


def _reference(tmp_path, batches: list[pa.Table]) -> tuple[dict, tuple]:
    """Every insert rolls up its own batch (no spool: each append is an insert)."""
    store, seen = _open(tmp_path / "reference.duckdb")
    for batch in batches:
        store.append(batch)
    tables = _tables(store)
    store.close()
    return tables, seen.summary()


@settings(max_examples=25, deadline=None)
@given(_batches, st.booleans())
def test_inserts_that_leave_their_rollups_to_a_later_one_end_with_the_rollups_of_every_insert(tmp_path_factory, specs,
                                                                                              by_rollup):
    tmp_path = tmp_path_factory.mktemp("deferred")
    batches, first = [], 0
    for s in specs:
        batches.append(_batch(s, first))
        first += len(s)
    expected = _reference(tmp_path, batches)

    store, seen = _open(tmp_path / "deferred.duckdb")
    for batch in batches[:-1]:
        store._insert([batch], None, roll=False)  # as the loader inserts: the rollups left
    assert store.read("SELECT count(*) FROM sli_minutes")[0][0] == 0  # nothing rolled up yet
    assert store.unrolled_spans == sum(b.num_rows for b in batches[:-1])  # a self-metric
    # the commit callbacks do not wait for the rollups (replays' spans are not handed to them)
    assert seen.committed == sum(not x[-1] for batch in specs[:-1] for x in batch) and not seen.rollups
    if by_rollup:  # the rollup thread's transaction
        store._insert([batches[-1]], None, roll=False)
        store._roll_stored()
    else:  # an insert that rolls up (without a spool; the spool's replay at start)
        store._insert([batches[-1]], None, roll=True)
    assert (_tables(store), seen.summary()) == expected and store.unrolled_spans == 0
    assert len(seen.rollups) == 1  # what reads the rollups (the SLO evaluation) hears of it once
    store.close()


def test_a_crash_with_spans_left_to_a_rollup_rolls_them_up_once_when_the_store_opens(tmp_path):
    batches = [_batch([("llm", "ok", None, None, None, False), ("agent_task", "error", None, None, None, False),
                       ("tool", "error", "0.1", "acme", None, False)] * 3, 9 * k) for k in range(3)]
    expected_tables, (charges, *_rest) = _reference(tmp_path, batches)

    store, seen = _open(tmp_path / "s.duckdb")
    store._insert([batches[0]], None, roll=True)
    for batch in batches[1:]:
        store._insert([batch], None, roll=False)
    store._stop_verifier()
    store._con.close()  # kill -9: the spans of two inserts are stored, their rollups are not

    spool = SpoolSettings(directory=str(tmp_path / "spool"))
    again, seen_again = _open(tmp_path / "s.duckdb", spool)
    assert _tables(again) == expected_tables
    # the first run charged the first insert; the second charges what the crash left, rolled up at open
    # (before any callback is registered: the budgets rebuild it from cost_minutes, as after any restart)
    assert seen.summary()[0] != charges and seen_again.summary()[0] == {}
    again.close()
    third, _ = _open(tmp_path / "s.duckdb", spool)
    assert _tables(third) == expected_tables  # rolled up once, not at every start
    third.close()


def _counting(store: SpanStore) -> tuple[list[bool], list[str]]:
    """Whether each insert rolled up, and the thread of each rollup."""
    insert, roll_up, inserts, rolled = store._insert, store._roll_up, [], []

    def counted_insert(tables, seq=None, roll=True):
        inserts.append(roll)
        insert(tables, seq, roll)

    def counted_roll_up(*args):
        rolled.append(threading.current_thread().name)
        return roll_up(*args)

    store._insert, store._roll_up = counted_insert, counted_roll_up  # type: ignore[method-assign]
    return inserts, rolled


def _six_pending(store: SpanStore, batches: list[pa.Table]) -> None:
    with store._cond:  # the loader takes nothing before all six batches are spooled
        for batch in batches:
            store.append(batch)


def test_the_loader_behind_leaves_the_rollups_to_the_rollup_thread_and_ends_with_the_same_rollups(tmp_path):
    batches = [_batch([("llm", "ok", None, None, None, False), ("tool", "error", None, None, None, False)] * 5,
                      10 * k) for k in range(6)]
    expected = _reference(tmp_path, batches)

    spool = SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10, flush_interval=0.02,
                          rollup_interval=3600)
    store, seen = _open(tmp_path / "s.duckdb", spool)
    inserts, rolled = _counting(store)
    _six_pending(store, batches)
    store.sync()
    # one 10-span batch per insert; while a whole one waits after it, an insert leaves its rollups; the last
    # rolls up what is left, in its transaction (the rollup thread may have taken some: 4 x flush_spans)
    assert inserts == [False] * 5 + [True]
    assert rolled[-1] == "span-store-loader" and set(rolled) <= {"span-store-loader", "span-store-rollup"}
    assert len(rolled) < 6 and len(seen.rollups) == len(rolled)
    # every rollup's charges on the callback thread, in commit order (a task's spend so far must not go back)
    assert set(seen.rollups) == {"span-store-callbacks"}
    assert (_tables(store), seen.summary()) == expected
    store.close()


def test_a_failed_rollup_is_taken_again_by_the_next_exactly_once(tmp_path):
    batches = [_batch([("llm", "ok", None, None, None, False), ("agent_task", "error", "0.1", "acme", None, False)] * 3,
                      6 * k) for k in range(3)]
    expected = _reference(tmp_path, batches)
    store, seen = _open(tmp_path / "s.duckdb")
    for batch in batches[:2]:
        store._insert([batch], None, roll=False)
    roll_up, failed = store._roll_up, []

    def failing_once(sql, rollups, now_ns):
        out = roll_up(sql, rollups, now_ns)  # the statements ran: the transaction is rolled back after them
        if not failed:
            failed.append(1)
            raise duckdb.IOException("disk full (the test)")
        return out

    store._roll_up = failing_once  # type: ignore[method-assign]
    try:
        store._roll_stored()
    except duckdb.IOException:
        pass
    assert failed and store.read("SELECT count(*) FROM sli_minutes")[0][0] == 0 and store.unrolled_spans == 12
    store._insert([batches[2]], None, roll=False)
    store._roll_stored()
    assert (_tables(store), seen.summary()) == expected and store.unrolled_spans == 0
    store.close()


def test_a_failed_rollup_of_the_rollup_thread_loses_and_doubles_nothing(tmp_path, caplog):
    batches = [_batch([("llm", "ok", None, None, None, False)] * 10, 10 * k) for k in range(6)]
    expected = _reference(tmp_path, batches)
    spool = SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10, flush_interval=0.02, rollup_interval=0)
    store, seen = _open(tmp_path / "s.duckdb", spool)
    roll_up, insert, failed = store._roll_up, store._insert, threading.Event()

    def failing_once(*args):
        if threading.current_thread().name == "span-store-rollup" and not failed.is_set():
            failed.set()
            raise duckdb.IOException("disk full (the test)")
        return roll_up(*args)

    def after_the_failure(tables, seq=None, roll=True):
        insert(tables, seq, roll)
        failed.wait(10)  # the rollup thread tries what the first insert left before the loader goes on

    store._roll_up, store._insert = failing_once, after_the_failure  # type: ignore[method-assign]
    _six_pending(store, batches)
    store.sync()
    assert failed.is_set() and "rolling up what was stored failed (attempt 1" in caplog.text
    assert "rolling up works again after 1 failed attempts" in caplog.text
    assert (_tables(store), seen.summary()) == expected
    store.close()


def test_the_loader_behind_does_not_wait_for_a_rollup(tmp_path):
    # DESIGN: a stage after the durable point that falls behind catches up without slowing ingest.
    batches = [_batch([("llm", "ok", None, None, None, False)] * 10, 10 * k) for k in range(6)]
    expected = _reference(tmp_path, batches)
    spool = SpoolSettings(directory=str(tmp_path / "spool"), flush_spans=10, flush_interval=0.02, rollup_interval=0)
    store, seen = _open(tmp_path / "s.duckdb", spool)
    release, roll_up, stuck = threading.Event(), store._roll_up, threading.Event()

    def slow(*args):
        if threading.current_thread().name == "span-store-rollup":
            stuck.set()
            release.wait(30)  # a rollup that takes its time
        return roll_up(*args)

    store._roll_up = slow  # type: ignore[method-assign]
    _six_pending(store, batches)
    assert stuck.wait(10)
    deadline = time.monotonic() + 10
    while store.pending_spans > 10 and time.monotonic() < deadline:  # the last one rolls up: it waits
        time.sleep(0.01)
    assert store.pending_spans == 10 and store.read("SELECT count(*) FROM span_rows")[0][0] == 50
    release.set()
    assert (_tables(store), seen.summary()) == expected
    store.close()


def test_the_periodic_task_count_reads_what_is_committed_without_waiting_for_the_loader(tmp_path):
    # The SLO stage asks for it every evaluation: waiting for every acknowledged span there, under load,
    # held the evaluation (and its alerts) up and made the loader insert and roll up in small steps.
    spool = SpoolSettings(directory=str(tmp_path / "spool"), flush_interval=0.02)
    store, _ = _open(tmp_path / "s.duckdb", spool)
    store.append(_batch([("agent_task", "ok", None, None, None, False)], 0))
    store.sync()
    release = threading.Event()
    insert = store._insert

    def slow_insert(tables, seq=None, roll=None):
        release.wait(30)  # the loader, busy
        insert(tables, seq, roll)

    store._insert = slow_insert  # type: ignore[method-assign]
    store.append(_batch([("agent_task", "ok", None, None, None, False)], 1))
    store._finalized_at -= 3600  # due
    started = time.monotonic()
    store.finalize_tasks()
    assert time.monotonic() - started < 5 and store.pending_spans == 1
    release.set()
    store.sync()
    assert store.read("SELECT count(*) FROM span_rows")[0][0] == 2
    store.close()


def test_a_store_from_before_the_rollups_position_is_not_rolled_up_again(tmp_path):
    batches = [_batch([("llm", "ok", None, None, None, False), ("tool", "error", None, None, None, False)] * 3,
                      6 * k) for k in range(3)]
    expected = _reference(tmp_path, batches)[0]
    store, _ = _open(tmp_path / "s.duckdb")
    store.append(batches[0])
    store.close()
    con = duckdb.connect(str(tmp_path / "s.duckdb"))  # as an older version left it: no position
    con.execute("DROP TABLE rollup_state")
    for column in ("stored_ns", "rolled_ns"):
        con.execute(f"ALTER TABLE spool_state DROP COLUMN {column}")
    con.close()
    store, _ = _open(tmp_path / "s.duckdb")
    store.append(batches[1])
    store.close()
    con = duckdb.connect(str(tmp_path / "s.duckdb"))  # as the version before the rollup thread left it
    con.execute("UPDATE spool_state SET rolled_ns = (SELECT rolled_ns FROM rollup_state)")
    con.execute("DROP TABLE rollup_state")
    con.close()
    store, _ = _open(tmp_path / "s.duckdb", SpoolSettings(directory=str(tmp_path / "spool")))
    store.append(batches[2])
    assert _tables(store) == expected  # each batch counted once
    store.close()


def test_inserts_keep_their_order_when_the_wall_clock_goes_back(tmp_path, monkeypatch):
    batches = [_batch([("llm", "ok", None, None, None, False)] * 4, 4 * k) for k in range(3)]
    expected = _reference(tmp_path, batches)[0]
    store, _ = _open(tmp_path / "s.duckdb")
    store._insert([batches[0]], None, roll=True)
    monkeypatch.setattr(store_module.time, "time_ns", lambda: 10**18)  # decades back
    for batch in batches[1:]:
        store._insert([batch], None, roll=False)
    store._roll_stored()
    received = [r[0] for r in store.read("SELECT DISTINCT received_ns FROM span_rows ORDER BY 1")]
    assert len(received) == 3 and received[1:] == [received[0] + 1, received[0] + 2]
    monkeypatch.undo()
    assert _tables(store) == expected
    store.close()


def test_the_spans_left_to_a_rollup_are_a_self_metric(pipeline):
    import urllib.request

    def metric() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{pipeline.ports.metrics}/metrics", timeout=10) as r:
            return next((line for line in r.read().decode().splitlines()
                         if line.startswith('agent_sre_store_unrolled_spans{exporter="duckdb"}')), "")

    pipeline.store._unrolled_rows = 7  # what the gauge reads (set by the inserts above)
    assert metric().endswith(" 7.0")
    pipeline.store._unrolled_rows = 0
