"""Circuit breakers on hand-made call sequences: closed -> open after N failures in the window,
half-open after the recovery timeout with limited probes, closed after M successes or open again."""

from __future__ import annotations

import numpy as np

from agent_sre.processors.incidents.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker

S = 10**9
SETTINGS = BreakerSettings(failure_threshold=3, window_s=10, recovery_timeout_s=30, half_open_max_calls=3,
                           success_threshold=2)


def calls(*spec: tuple[float, bool]):
    """(end time in s, failed) per call."""
    return np.array([int(t * S) for t, _ in spec], np.int64), np.array([f for _, f in spec])


def test_failures_spread_wider_than_the_window_keep_it_closed_and_three_within_it_open_it():
    b = CircuitBreaker(SETTINGS)
    assert b.record(*calls((0, True), (5, False), (11, True), (20, False)), now=100) == []  # 0 and 11: 11 s apart
    assert b.record(*calls((22, True)), now=100) == []  # 11, 22: two within 11 s, not three within 10
    (t,) = b.record(*calls((25, True), (26, True), (27, False)), now=100)  # 22, 25, 26: three within 4 s
    assert (t.old, t.new, t.at, t.reason) == (CLOSED, OPEN, 100, "3 failed calls within 10s")
    assert b.state == OPEN and b.open_until == 130 and b.blocks()
    assert b.record(*calls((28, True)), now=101) == []  # ignored while open


def test_after_the_recovery_timeout_probes_decide_two_successes_close_it():
    b = CircuitBreaker(SETTINGS)
    b.record(*calls((1, True), (2, True), (3, True)), now=100)
    assert b.tick(129) == [] and b.state == OPEN
    (t,) = b.tick(130)
    assert (t.new, b.state, b.probes_left(), b.blocks()) == (HALF_OPEN, HALF_OPEN, 3, False)
    assert b.record(*calls((125, True)), now=131) == []  # ended before half-open began: not a probe
    assert b.record(*calls((131, False)), now=131) == [] and b.probes_left() == 2
    (t,) = b.record(*calls((132, False), (133, True)), now=133)  # the 2nd success closes; the failure after counts
    assert (t.new, t.reason, b.state) == (CLOSED, "2 probe calls succeeded", CLOSED)
    assert list(b.failures) == [133 * S]


def test_a_failed_probe_opens_it_again_and_used_up_probes_block():
    b = CircuitBreaker(BreakerSettings(failure_threshold=1, window_s=10, recovery_timeout_s=30,
                                       half_open_max_calls=2, success_threshold=2))
    b.record(*calls((1, True)), now=10)  # one failure is enough at threshold 1
    b.tick(40)
    b.record(*calls((41, False)), now=41)
    b.record(*calls((42, False)), now=42)
    assert b.state == CLOSED  # two of two probes succeeded
    b.record(*calls((50, True)), now=50)
    b.tick(80)
    b.record(*calls((81, False)), now=81)
    assert (b.state, b.probes_left(), b.blocks()) == (HALF_OPEN, 1, False)
    (t,) = b.record(*calls((82, True)), now=82)
    assert (t.old, t.new, t.reason, b.open_until) == (HALF_OPEN, OPEN, "a probe call failed", 112)


def test_used_up_probes_block_until_their_results_arrive():
    b = CircuitBreaker(BreakerSettings(failure_threshold=1, window_s=10, recovery_timeout_s=30,
                                       half_open_max_calls=2, success_threshold=2))
    b.record(*calls((1, True)), now=10)
    b.tick(40)
    b.probes = 2  # two probe calls let through, no result seen yet
    assert (b.state, b.probes_left(), b.blocks()) == (HALF_OPEN, 0, True)


def test_failures_arriving_out_of_order_are_windowed_by_their_own_times():
    b = CircuitBreaker(SETTINGS)
    assert b.record(*calls((1000, True), (2000, True)), now=2000) == []
    assert b.record(*calls((100, True), (150, True)), now=2001) == []  # late, and far apart: no run of three
    assert b.state == CLOSED
    b = CircuitBreaker(SETTINGS)
    assert b.record(*calls((1000, True), (1005, True)), now=1005) == []
    (t,) = b.record(*calls((998, True)), now=1006)  # late but within the window: 998, 1000, 1005
    assert t.new == OPEN
