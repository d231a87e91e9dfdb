"""Timing helpers shared by the in-process micro-benchmarks (bench/decode.py, bench/encode.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def passes(fn: Callable[[], object], count: int, spans: int) -> tuple[list[float], list[float]]:
    """(CPU µs per span, wall µs per span) of each of ``count`` calls of ``fn`` over ``spans`` spans."""
    cpu, wall = [], []
    for _ in range(count):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - c0) / spans * 1e6)
        wall.append((time.perf_counter() - w0) / spans * 1e6)
    return cpu, wall


def in_threads(fn: Callable[[], object], threads: int) -> Callable[[], None]:
    """``fn`` run by ``threads`` threads at once, as one call."""
    def run() -> None:
        workers = [threading.Thread(target=fn) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return run
