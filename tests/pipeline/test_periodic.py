"""The one periodic worker every timer-driven component uses (pipeline/component/periodic.py)."""

from __future__ import annotations

import logging
import threading
import time

from agent_sre.pipeline.component.periodic import PeriodicWorker

LOG = logging.getLogger("test.periodic")


def test_a_tick_that_raises_is_logged_and_the_next_tick_runs(caplog):
    calls: list[float] = []

    def tick() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("boom")

    worker = PeriodicWorker("flaky", 0.02, tick, LOG)
    with caplog.at_level(logging.ERROR, logger="test.periodic"):
        worker.start()
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop()
    assert len(calls) >= 3
    assert any("flaky: tick failed" in r.getMessage() for r in caplog.records)


def test_wake_runs_the_next_tick_at_once_but_not_sooner_than_min_interval():
    ticks: list[float] = []
    worker = PeriodicWorker("woken", 3600, lambda: ticks.append(time.monotonic()), LOG, min_interval=0.2,
                            run_first=True)
    worker.start()
    deadline = time.monotonic() + 5
    while not ticks and time.monotonic() < deadline:
        time.sleep(0.005)
    woken = time.monotonic()
    worker.wake()
    while len(ticks) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.stop()
    assert len(ticks) == 2  # the first (run_first) and the woken one; the hour-long interval never ran
    assert ticks[1] - ticks[0] >= 0.2  # min_interval after the previous tick
    assert ticks[1] - woken < 1.0  # and at once, not after the interval


def test_start_and_stop_are_idempotent_and_stop_joins():
    ran = threading.Event()
    worker = PeriodicWorker("idem", 0.01, ran.set, LOG)
    worker.stop()  # before start: nothing to do
    worker.start()
    worker.start()
    assert ran.wait(5)
    worker.stop()
    worker.stop()
    assert not worker.running
