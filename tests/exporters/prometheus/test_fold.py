"""prometheus exporter, the fold of pending spans into the histograms: once started it runs on the
metrics' own thread, not on the thread that exports (which holds every export acknowledged with the
batch); pending spans stay bounded when that thread falls behind; a scrape sees every span either way."""

from __future__ import annotations

import threading

import pyarrow as pa

from agent_sre.exporters.prometheus import metrics
from agent_sre.exporters.prometheus.metrics import FOLD_ROWS, MAX_PENDING_ROWS, AgentMetrics
from tests.conftest import eventually

ATTRS = pa.map_(pa.string(), pa.string())


def batch(n: int, role: str = "tool") -> pa.Table:
    llm = role == "llm"
    return pa.table({
        "agent_id": pa.array(["a1"] * n), "span_role": pa.array([role] * n), "model": pa.array(["m"] * n),
        "tool_name": pa.array([None if llm else "search"] * n, pa.string()), "status_code": pa.array(["ok"] * n),
        "duration_ns": pa.array([5 * 10**7] * n, pa.int64()),
        "attributes": pa.array([[("gen_ai.operation.name", "chat")] if llm else []] * n, ATTRS),
        "provider": pa.array(["openai" if llm else None] * n, pa.string()),
        "input_tokens": pa.array([10 if llm else None] * n, pa.int64()),
        "output_tokens": pa.array([2 if llm else None] * n, pa.int64())})


def fold_threads(m: AgentMetrics) -> list[str]:
    """Names of the threads each fold of ``m`` ran on, from now on."""
    seen: list[str] = []
    observe = m.calls.observe

    def spy(labels, values):
        seen.append(threading.current_thread().name)
        observe(labels, values)
    m.calls.observe = spy
    return seen


def calls_count(m: AgentMetrics) -> float:
    return sum(s.value for f in m.families(None) if f.name == "agent_sre_span_duration_seconds"
               for s in f.samples if s.name.endswith("_count"))


def test_once_started_the_fold_runs_on_the_folder_thread_and_every_span_is_counted():
    m = AgentMetrics(name="prom")
    seen = fold_threads(m)
    m.start()
    try:
        for _ in range(FOLD_ROWS // 4096):
            m.observe(batch(4096))
        m.observe(batch(512, "llm"))
        assert eventually(lambda: seen, timeout=10)
        assert seen == ["prom-fold"]  # not the exporting (this) thread
        assert calls_count(m) == FOLD_ROWS + 512  # the scrape folds what is still pending
        tokens = {s.labels["gen_ai_token_type"]: s.value for f in m.families(None)
                  if f.name == "gen_ai_client_token_usage" for s in f.samples if s.name.endswith("_sum")}
        assert tokens == {"input": 512 * 10, "output": 512 * 2}
    finally:
        m.stop()


def test_pending_spans_stay_bounded_when_the_folder_is_behind():
    m = AgentMetrics(name="prom")
    seen = fold_threads(m)
    m.start()
    m._folder.wake = lambda: None  # the folder never gets to it
    try:
        while not seen:
            m.observe(batch(4096))
            assert m._pending_rows < MAX_PENDING_ROWS
        assert seen == [threading.current_thread().name]  # the exporting thread folded, at the bound
        assert calls_count(m) == MAX_PENDING_ROWS
    finally:
        m.stop()


def test_not_started_it_folds_on_the_exporting_thread_at_fold_rows(monkeypatch):
    monkeypatch.setattr(metrics, "FOLD_ROWS", 8192)
    m = AgentMetrics()
    seen = fold_threads(m)
    m.observe(batch(4096))
    assert seen == []
    m.observe(batch(4096))
    assert seen == [threading.current_thread().name] and m._pending_rows == 0
