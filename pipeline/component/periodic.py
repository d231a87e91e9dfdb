"""One periodic worker for every component that does something on a timer (evaluate SLOs, detect
anomalies, tick decisions, check memory, push metrics, notify channels, flush, housekeeping).

``tick()`` runs on its own daemon thread every ``interval`` seconds (a number, or a function read
before each wait); ``wake()`` runs the next tick at once, though never sooner than ``min_interval``
after the previous one.  A tick that raises is logged with the worker's name and the next one runs
on time: a timer never dies of one bad tick.  ``start`` and ``stop`` are idempotent; ``stop`` sets
the flag, wakes the thread and joins it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class PeriodicWorker:
    def __init__(self, name: str, interval: float | Callable[[], float], tick: Callable[[], object],
                 logger: logging.Logger, min_interval: float = 0.0, run_first: bool = False):
        self.name = name
        self._interval = interval if callable(interval) else (lambda: interval)
        self._tick = tick
        self._logger = logger
        self._min_interval = min_interval
        self._run_first = run_first
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)

    def _run(self) -> None:
        if self._run_first:
            self._once()
        while True:
            started = time.monotonic()
            self._wake.wait(max(self._interval(), 0.0))
            if self._stop.is_set():
                return
            rest = self._min_interval - (time.monotonic() - started)
            if rest > 0 and self._stop.wait(rest):
                return
            self._wake.clear()
            self._once()

    def _once(self) -> None:
        try:
            self._tick()
        except Exception:  # noqa: BLE001 - logged; the next tick runs on time
            self._logger.exception("%s: tick failed", self.name)
