"""Over its soft limit the pipeline goes on serving one request at a time instead of refusing for good;
near its limit it refuses everything; and at every level the requests in flight may take only what the
limiter saw left under its refusing line (issue #11's soak: after the first burst the held floor stayed
over the soft limit and the pipeline refused every request until the end)."""

from __future__ import annotations

import threading
import time
import types

import pyarrow as pa
import pytest

from agent_sre.pipeline.component import Kind
from agent_sre.pipeline.component.admission import ACCEPT, ONE_AT_A_TIME, REFUSE, Admission, InflightBytes
from agent_sre.pipeline.component.base import ComponentID, Settings
from agent_sre.pipeline.component.errors import RefusedError
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.processors.memory_limiter.factory import MemoryLimiter, MemoryLimiterConfig

_MIB = 1 << 20


class _Host:
    def __init__(self) -> None:
        self.admission = Admission()


def _limiter(monkeypatch, held: dict) -> tuple[MemoryLimiter, Admission]:
    import agent_sre.processors.memory_limiter.factory as factory

    # limit 100 MiB, spike 20: soft limit 80, refusing line 90, free again under 75
    limiter = MemoryLimiter(Settings(ComponentID.parse("memory_limiter"), Kind.PROCESSOR, Telemetry()),
                            MemoryLimiterConfig(limit_mib=100, spike_limit_mib=20))
    monkeypatch.setattr(factory, "release_freed_memory", lambda: None)
    monkeypatch.setattr(factory._HELD, "children", 0)  # no receiver workers: the room is this process's
    monkeypatch.setattr(limiter, "rss", lambda max_age_s=None: held["mib"] * _MIB)
    host = _Host()
    limiter._admission = host.admission
    return limiter, host.admission


def test_the_lines_of_the_limiter_are_where_the_config_says():
    config = MemoryLimiterConfig(limit_mib=256)  # spike: 20 % = 51 MiB
    assert config.soft_limit_bytes == 205 * _MIB
    assert config.refuse_line_bytes == 256 * _MIB - (51 * _MIB) // 2
    assert config.resume_bytes == 205 * _MIB - (51 * _MIB) // 4


def test_levels_from_accepting_to_one_at_a_time_to_refusing_and_back(monkeypatch):
    held = {"mib": 70}
    limiter, admission = _limiter(monkeypatch, held)
    batch = pa.table({"x": [1]})
    steps = [  # held MiB -> level: the crossing refuses once (what is in flight drains), then one at a time
        (70, ACCEPT), (85, REFUSE), (85, ONE_AT_A_TIME), (78, ONE_AT_A_TIME), (92, REFUSE), (85, ONE_AT_A_TIME),
        (76, ONE_AT_A_TIME), (74, ACCEPT), (79, ACCEPT), (81, REFUSE), (95, REFUSE), (89, ONE_AT_A_TIME),
    ]
    for mib, level in steps:
        held["mib"] = mib
        limiter.check()
        assert (limiter.level, admission.level) == (level, level), (mib, limiter.level, admission.level)
        if level == REFUSE:
            with pytest.raises(RefusedError):
                admission.check()
            with pytest.raises(RefusedError):
                limiter.process(batch)
        else:  # one at a time or not, batches pass: the request they belong to was admitted
            room, alone = admission.check()
            assert room == (90 - mib) * _MIB and alone == (level == ONE_AT_A_TIME)
            assert limiter.process(batch) is batch


def test_one_request_at_a_time_and_only_within_the_room():
    inflight = InflightBytes(64 * _MIB)
    room = 10 * _MIB
    with inflight.admit(0) as first:
        first.grow(4 * _MIB, room, alone=True)  # alone and within the room
        with inflight.admit(0) as second, pytest.raises(RefusedError, match="one request at a time"):
            second.grow(1, room, alone=True)
    with inflight.admit(0) as big, pytest.raises(RefusedError, match="left under the limit"):
        big.grow(11 * _MIB, room, alone=True)  # alone, but it does not fit
    assert inflight.used == 0 and inflight.requests == 0


def test_accepting_the_requests_in_flight_share_the_room_and_one_alone_always_passes():
    inflight = InflightBytes(None)
    room = 10 * _MIB
    with inflight.admit(0) as a:
        a.grow(30 * _MIB, room)  # alone: taken even past the room (below the soft limit nothing may wedge)
    with inflight.admit(0) as a:
        a.grow(6 * _MIB, room)
        with inflight.admit(0) as b, pytest.raises(RefusedError, match="left under the limit"):
            b.grow(5 * _MIB, room)
        with inflight.admit(0) as c:
            c.grow(4 * _MIB, room)  # 10 MiB together: fits
            assert inflight.used == 10 * _MIB and inflight.requests == 2
    assert inflight.used == 0 and inflight.requests == 0


def test_one_at_a_time_holds_under_concurrent_requests():
    """Many threads at once: never two requests in flight together at ONE_AT_A_TIME."""
    inflight = InflightBytes(None)
    together, most, lock = [0], [0], threading.Lock()
    barrier = threading.Barrier(16)

    def send() -> None:
        barrier.wait()
        for _ in range(200):
            try:
                with inflight.admit(0) as t:
                    t.grow(1 * _MIB, 8 * _MIB, alone=True)
                    with lock:
                        together[0] += 1
                        most[0] = max(most[0], together[0])
                    time.sleep(0.0002)  # held a moment: without the rule, others get in meanwhile
                    with lock:
                        together[0] -= 1
            except RefusedError:
                pass

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and inflight.used == 0 and inflight.requests == 0


def test_admission_takes_the_highest_level_and_the_least_room_of_its_limiters():
    admission = Admission()
    assert admission.check() == (None, False)  # no limiter: no bound
    admission.set_level(ACCEPT, source="traces", room=50 * _MIB)
    admission.set_level(ONE_AT_A_TIME, source="logs", room=20 * _MIB)
    assert admission.check() == (20 * _MIB, True)
    admission.set_level(REFUSE, source="metrics", room=0)
    with pytest.raises(RefusedError):
        admission.check()
    admission.refuse(False, source="metrics")  # a limiter shut down
    admission.refuse(False, source="logs")
    assert admission.check() == (50 * _MIB, False)
    admission.refuse(False, source="traces")
    assert admission.check() == (None, False)


def test_the_room_is_shared_among_the_receiver_processes(monkeypatch):
    import agent_sre.processors.memory_limiter.factory as factory

    held = {"mib": 70}
    limiter, admission = _limiter(monkeypatch, held)
    monkeypatch.setattr(factory._HELD, "children", 3)  # three receiver workers and the pipeline process
    limiter.check()
    assert admission.check() == ((90 - 70) * _MIB / 4, False)


def test_a_crossing_is_logged_once_for_the_process_and_the_flips_near_the_line_at_debug(monkeypatch, caplog):
    """Each pipeline (traces, metrics, logs) has its limiter; a crossing was logged three times, and at the
    refusing line the level goes back and forth every few seconds."""
    import logging

    import agent_sre.processors.memory_limiter.factory as factory

    monkeypatch.setattr(factory._HELD, "_logged", ACCEPT)
    held = {"mib": 85}
    limiters = [_limiter(monkeypatch, held)[0] for _ in range(3)]
    with caplog.at_level(logging.DEBUG, logger="agent_sre"):
        for mib in (85, 85, 92, 85, 70):  # refuse on crossing, one at a time, refuse, one at a time, accept
            held["mib"] = mib
            for limiter in limiters:
                limiter.check()
    lines = [(r.levelname, r.getMessage().rsplit(": ", 1)[1]) for r in caplog.records if "memory usage" in r.getMessage()]
    assert lines == [("WARNING", "refusing data"), ("DEBUG", "taking one request at a time that fits under the limit"),
                     ("DEBUG", "refusing data"), ("DEBUG", "taking one request at a time that fits under the limit"),
                     ("WARNING", "accepting data")]


def test_when_refusing_frees_nothing_one_request_at_a_time_is_taken_under_the_floor_line(monkeypatch, caplog):
    """The soak's recovery probe: after a minute of overload the held floor sat over the refusing line with
    nothing in flight, and the pipeline refused every request until restarted.  Refusing that frees nothing
    for FLOOR_CHECKS checks gives way to one request at a time within what is left under the floor line
    (limit_mib - spike / 4)."""
    import logging

    import agent_sre.processors.memory_limiter.factory as factory

    monkeypatch.setattr(factory._HELD, "_logged", ACCEPT)
    held = {"mib": 70.0}
    limiter, admission = _limiter(monkeypatch, held)
    n = factory.FLOOR_CHECKS

    def levels(*mibs: float) -> list[tuple[int, float | None]]:
        seen = []
        for mib in mibs:
            held["mib"] = mib
            limiter.check()
            assert admission.level == limiter.level
            seen.append((limiter.level, None if limiter.level == REFUSE else admission.check()[0] / _MIB))
        return seen

    with caplog.at_level(logging.WARNING, logger="agent_sre"):  # the floor line: 100 - 20 / 4 = 95 MiB
        assert levels(70, 93) == [(ACCEPT, 20), (REFUSE, None)]  # crossing, straight to the refusing line
        # still falling by a MiB or more: refusing is working, the count starts again
        assert levels(*[93] * (n - 1), 91.5, *[92] * (n - 1)) == [(REFUSE, None)] * (2 * n - 1)
        assert levels(92) == [(ONE_AT_A_TIME, 3)]  # n checks without a new low: the floor, under the floor line
        assert levels(94, 90.5) == [(ONE_AT_A_TIME, 1), (ONE_AT_A_TIME, 4.5)]  # at the floor a new low does not
        # send it back to refusing
        assert levels(95) == [(REFUSE, None)]  # at the floor line: refused, and the count starts again
        assert levels(*[94] * n) == [(REFUSE, None)] * n
        assert levels(94, 89) == [(ONE_AT_A_TIME, 1), (ONE_AT_A_TIME, 1)]  # under the refusing line: the usual room
        assert levels(74) == [(ACCEPT, 16)]
    floor = [r.getMessage() for r in caplog.records if "has not fallen" in r.getMessage()]
    assert len(floor) == 2 and "fits under 95 MiB (limit 100 MiB)" in floor[0]
    assert "raise limit_mib to at least 112 MiB" in floor[0]  # 92 + the 20 MiB spike


def test_over_the_soft_limit_it_checks_four_times_as_often_with_fresh_measurements(monkeypatch):
    """At 256 MiB the soak's pipeline passed its limit in one 100-ms sample of ~6,000 between two checks a
    second apart: over the soft limit the level and the room are renewed every quarter of the interval
    (the trim still once per interval: at every check it cost the overloaded pipeline 6 % of its rate)."""
    import agent_sre.processors.memory_limiter.factory as factory

    held, ages, trims, clock = {"mib": 70.0}, [], [], [1000.0]
    limiter, _ = _limiter(monkeypatch, held)
    monkeypatch.setattr(limiter, "rss", lambda max_age_s=None: ages.append(max_age_s) or held["mib"] * _MIB)
    monkeypatch.setattr(factory, "release_freed_memory", lambda: trims.append(clock[0]))
    monkeypatch.setattr(factory, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    limiter.check()
    assert limiter._interval() == 1.0 and ages[-1] == 0.5  # the default interval, a measurement up to half old
    held["mib"] = 85
    limiter.check()
    assert limiter.level != ACCEPT and limiter._interval() == 1.0 / factory.PRESSURE_CHECKS == 0.25
    assert ages[-2:] == [0.5, 0]  # over: measured again after the trim
    clock[0] += 0.25
    limiter.check()
    assert ages[-1] == 0.125  # a measurement up to half the quicker interval old; the trim waits for its interval
    for _ in range(4):
        clock[0] += 0.25
        limiter.check()
    assert trims == [1000.0, 1001.0]  # on crossing, then once per check_interval
    held["mib"] = 70
    limiter.check()
    assert limiter.level == ACCEPT and limiter._interval() == 1.0
