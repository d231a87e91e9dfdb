"""The chaos processor in a running pipeline (in this process, a real store and the real decisions API):
experiments announced to their agents, kept across a restart, ended on schedule, aborted from committed
spans, announced as events; the report's numbers against hand-computed ones; injected faults kept out
of circuit breakers unless asked."""

from __future__ import annotations

import time

import pytest

from tests.processors.chaos.helpers import Span, start

INCIDENTS = """  incidents:
    breakers: {roles: [tool], failure_threshold: 3, recovery_timeout: 1h}
"""


@pytest.fixture
def clock():
    """A controllable clock, starting at a whole second ten minutes ago (the spans' time origin)."""
    return [float(int(time.time()) - 600)]


def test_an_experiment_is_announced_to_its_agents_only_and_survives_a_restart(tmp_path, clock):
    p = start(tmp_path)
    try:
        p.chaos.clock = lambda: clock[0]
        rec = p.chaos.start_experiment("tool-error-storm", ["a2", "a1"], "1h", {"seed": 7}, by="alice")
        assert (rec["id"], rec["state"], rec["agents"], rec["created_by"], rec["seed"]) == (
            "CHX-00001", "running", ["a1", "a2"], "alice", 7)
        (told,) = p.get("/v1/decisions/a1")["chaos"]
        assert told == {"id": "CHX-00001", "template": "tool-error-storm", "seed": 7, "start": clock[0],
                        "until": clock[0] + 3600, "schedule": {"period": None, "active": None},
                        "blast_radius": {"agents": ["a1", "a2"], "tools": [], "models": [], "sessions": 1.0},
                        "faults": [{"type": "tool_error", "rate": 0.3, "after": 0.0, "tools": [], "models": [],
                                    "params": {"message": "injected tool error", "status": 500}}]}
        assert p.get("/v1/decisions/a2")["chaos"] == [told]
        assert "chaos" not in p.get("/v1/decisions/b")  # not in the blast radius
        p.send([Span("a1", "tool", 1, error=True, injected="CHX-00001")] * 3 + [Span("a1", "tool", 2)], int(clock[0] * 1e9))
        before = p.chaos._running["CHX-00001"].monitor.total
        assert (before.calls, before.errors, before.injected) == (4, 3, 3)
    finally:
        p.shutdown()
    p = start(tmp_path)  # the same store
    try:
        p.chaos.clock = lambda: clock[0]
        assert p.get("/v1/decisions/a1")["chaos"] == [told]
        assert [e["id"] for e in p.chaos.experiments()] == ["CHX-00001"]
        after = p.chaos._running["CHX-00001"].monitor.total  # the tallies are rebuilt from the stored spans
        assert (after.calls, after.errors, after.injected) == (4, 3, 3)
        assert p.chaos.start_experiment("tool-timeout", "a3")["id"] == "CHX-00002"  # numbering goes on
    finally:
        p.shutdown()


def test_the_schedule_ends_an_experiment_and_its_events_tell_the_story(tmp_path, clock):
    p = start(tmp_path)
    heard: list[dict] = []
    p.service.host.events.subscribe(heard.extend, ["chaos"])
    try:
        p.chaos.clock = lambda: clock[0]
        rec = p.chaos.start_experiment("tool-timeout", ["a"], "30s")
        clock[0] += 29
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["state"] == "running"
        clock[0] += 2
        p.chaos.check()
        ended = p.chaos.experiment(rec["id"])
        assert (ended["state"], ended["reason"], ended["ended_ns"]) == ("ended", "the schedule ended", rec["until_ns"])
        assert "chaos" not in p.get("/v1/decisions/a") and p.chaos.experiments() == []
        clock[0] += 30  # the after window (as long as the experiment) has passed: judged
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["result"] is not None
        assert [(e["name"], e["state"], e["severity"]) for e in heard] == [
            ("started", "firing", "info"), ("ended", "firing", "info"), ("result", "resolved", "info")]
        assert len({e["fingerprint"] for e in heard}) == 1  # one experiment, one identity from start to result
        assert heard[0]["labels"] == {"experiment_id": rec["id"], "template": "tool-timeout", "agent_id": "a"}
        stored = p.store.read("SELECT name FROM events WHERE kind = 'chaos' ORDER BY time_ns")
        assert [r[0] for r in stored] == ["started", "ended", "result"]
    finally:
        p.shutdown()


def test_an_abort_condition_on_committed_spans_stops_the_experiment(tmp_path, clock):
    p = start(tmp_path)
    heard: list[dict] = []
    p.service.host.events.subscribe(heard.extend, ["chaos"])
    try:
        p.chaos.clock = lambda: clock[0]
        rec = p.chaos.start_experiment("tool-error-storm", ["a"], "10m")  # abort: error_rate > 0.8 over 1m, >= 20 calls
        origin = int(clock[0] * 1e9)
        p.send([Span("a", "tool", 1, error=i < 10) for i in range(25)], origin)  # 40 %
        p.send([Span("b", "tool", 1, error=True) for _ in range(50)], origin)  # another agent's errors: not counted
        clock[0] += 2
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["state"] == "running"
        p.send([Span("a", "tool", 2, error=True) for _ in range(40)], origin)  # 50 of 65 calls: 77 %
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["state"] == "running"
        p.send([Span("a", "tool", 2, error=True) for _ in range(20)], origin)  # 70 of 85: 82 %
        p.chaos.check()
        aborted = p.chaos.experiment(rec["id"])
        assert aborted["state"] == "aborted"
        assert aborted["reason"] == "abort condition error_rate above 0.8 over 60s held (0.8235)"
        assert "chaos" not in p.get("/v1/decisions/a")  # agents stop at their next refresh
        assert (heard[-1]["name"], heard[-1]["severity"], heard[-1]["labels"]["reason"]) == (
            "aborted", "ticket", aborted["reason"])
    finally:
        p.shutdown()


def test_an_sli_abort_waits_for_its_minimum_events_and_bad_requests_are_refused(tmp_path, clock):
    p = start(tmp_path)
    try:
        p.chaos.clock = lambda: clock[0]
        rec = p.chaos.start_experiment("tool-schema-drift", "a", "5m", {"abort": [
            {"metric": "sli:tool_call_accuracy", "below": 0.5, "window": "30s", "min_events": 4}]})
        origin = int(clock[0] * 1e9)
        p.send([Span("a", "tool", 1, error=True)] * 3, origin)
        clock[0] += 2
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["state"] == "running"  # 0 of 3: below, but fewer than 4 events
        p.send([Span("a", "tool", 1)] * 2, origin)  # 2 of 5 good
        p.chaos.check()
        assert p.chaos.experiment(rec["id"])["reason"] == \
            "abort condition sli:tool_call_accuracy below 0.5 over 30s held (0.4)"

        with pytest.raises(ValueError, match=r"not span SLIs of this pipeline: \['nope'\] \(defined: \[task_success_rate"):
            p.chaos.start_experiment("tool-error-storm", "a", overrides={"abort": [{"metric": "sli:nope", "below": 1}]})
        with pytest.raises(ValueError, match=r"unknown template 'tool-eror-storm' \(valid values: \[cascading-failure"):
            p.chaos.start_experiment("tool-eror-storm", "a")
        with pytest.raises(ValueError, match=r"at most max_duration \(86400s\); got 90000s"):
            p.chaos.start_experiment("tool-error-storm", "a", "25h")
        with pytest.raises(ValueError, match="at least one agent"):
            p.chaos.start_experiment("tool-error-storm", [])
        with pytest.raises(LookupError, match="no chaos experiment 'CHX-09999'"):
            p.chaos.stop_experiment("CHX-09999")
        assert p.chaos.stop_experiment(rec["id"], "bob") == p.chaos.experiment(rec["id"])  # ended: as it is
        running = p.chaos.start_experiment("llm-latency-spike", "a")
        stopped = p.chaos.stop_experiment(running["id"], "bob", "enough")
        assert (stopped["state"], stopped["reason"]) == ("stopped", "enough")
        assert [e["id"] for e in p.chaos.experiments(include_ended=True)] == [running["id"], rec["id"]]
    finally:
        p.shutdown()


def test_the_report_matches_the_numbers_computed_by_hand(tmp_path, clock):
    """Baseline [0, 60 s), during [60, 120), after [120, 180): spans built so every number is countable."""
    p = start(tmp_path)
    origin = int(clock[0] * 1e9)  # t = 0
    heard: list[dict] = []
    p.service.host.events.subscribe(heard.extend, ["chaos"])
    try:
        p.chaos.clock = lambda: clock[0] + 60
        rec = p.chaos.start_experiment("tool-error-storm", ["a"], "60s", {"abort": []})
        exp = rec["id"]
        ta, tb, tc, te = (bytes([i]) * 16 for i in (1, 2, 3, 4))
        baseline = ([Span("a", "tool", 10 + i, error=i == 0) for i in range(10)]  # tool accuracy 9/10
                    + [Span("a", "task", 20, success=True), Span("a", "task", 21, success=True)]
                    + [Span("a", "llm", 30, cost=0.01), Span("a", "llm", 31, cost=0.01)])
        during = ([Span("a", "tool", 61, error=True, injected=exp, trace=ta),
                   Span("a", "tool", 62, error=True, injected=exp, trace=ta),
                   Span("a", "tool", 63, error=True, injected=exp, trace=tb),
                   Span("a", "tool", 64, error=True, injected=exp, trace=tc),
                   Span("a", "tool", 65, error=True)]  # a real error, not injected
                  + [Span("a", "tool", 66 + i) for i in range(5)]  # tool accuracy 5/10
                  + [Span("a", "task", 71, success=True, trace=ta), Span("a", "task", 72, success=False, trace=tb),
                     Span("a", "task", 73, success=True, trace=tc), Span("a", "task", 74, success=True, trace=te)]
                  + [Span("a", "llm", 80, cost=0.05), Span("a", "llm", 81, cost=0.05)])
        after = ([Span("a", "tool", 121, error=True), Span("a", "tool", 122, error=True)]  # bucket 0 [120, 123): bad
                 + [Span("a", "tool", t) for t in (124, 125, 130, 131, 140, 151)]  # healthy from bucket 1 on
                 + [Span("a", "task", 160, success=True), Span("a", "llm", 170, cost=0.01),
                    Span("a", "llm", 172, cost=0.01)])
        noise = [Span("b", "tool", 70, error=True, injected=exp)]  # another agent: outside the report
        p.send(baseline + during + after + noise, origin)
        p.chaos.clock = lambda: clock[0] + 121
        p.chaos.check()  # ends on schedule at t = 120
        p.chaos.clock = lambda: clock[0] + 200
        doc = p.chaos.report(exp)
    finally:
        p.shutdown()

    slis = {r["name"]: r for r in doc["slis"]}
    assert set(slis) == {"call_success_rate", "task_success_rate", "tool_call_accuracy", "response_latency"}
    cells = {name: tuple((r[ph]["good"], r[ph]["total"]) for ph in ("baseline", "during", "after"))
             for name, r in slis.items()}
    assert cells == {"call_success_rate": ((11, 12), (7, 12), (8, 10)),  # tools and LLM calls not in error
                     "task_success_rate": ((2, 2), (3, 4), (1, 1)),
                     "tool_call_accuracy": ((9, 10), (5, 10), (6, 8)),
                     "response_latency": ((4, 4), (6, 6), (3, 3))}
    relative = {"call_success_rate": (11 / 12 - 7 / 12) / (11 / 12), "task_success_rate": 0.25,
                "tool_call_accuracy": 0.4 / 0.9, "response_latency": 0.0}
    for name, value in relative.items():
        assert slis[name]["relative_degradation"] == pytest.approx(value)
    g = sum(relative.values()) / 4
    assert doc["degradation"] == pytest.approx(g)
    assert doc["calls"]["during"] == {"calls": 12, "errors": 5, "error_rate": 5 / 12, "p50_ms": 1.0, "p95_ms": 1.0}
    assert doc["injected"] == {"total": 4, "by_fault": {"tool_error": 4}}
    assert doc["fault_tolerance"] == {"tasks_hit": 3, "tasks_succeeded": 2, "value": 2 / 3}  # traces a, b, c
    assert doc["recovery"]["recovered"] is True and doc["complete"] is True
    assert doc["recovery"]["bucket_seconds"] == pytest.approx(3.0) and doc["recovery"]["seconds"] == pytest.approx(3.0)
    assert doc["recovery"]["factor"] == pytest.approx(1 - 3 / 60)
    cost = doc["cost"]
    assert (cost["baseline_usd"], cost["during_usd"], cost["after_usd"]) == pytest.approx((0.02, 0.10, 0.02))
    assert cost["impact"] == pytest.approx(5.0) and cost["extra_usd"] == pytest.approx(0.08)
    expected = round(100 * (0.4 * (2 / 3) + 0.4 * (1 - g) + 0.2 * (1 - 3 / 60)), 1)
    assert doc["resilience_score"] == expected == 75.1
    assert doc["experiment"]["state"] == "ended"


def test_injected_faults_open_no_breaker_unless_the_chaos_config_asks(tmp_path, clock):
    procs = "memory_limiter, agent_semconv, sli, chaos, incidents, batch"
    p = start(tmp_path / "default", processors=procs, more=INCIDENTS)
    try:
        origin = time.time_ns()
        p.send([Span("a", "tool", 0, error=True, injected="CHX-00001") for _ in range(5)], origin)
        assert p.get("/v1/decisions/a")["action"] == "allow"  # five injected failures: the breaker stays closed
        p.send([Span("a", "tool", 0, error=True) for _ in range(3)], origin)
        assert p.get("/v1/decisions/a")["action"] == "circuit_open"  # three real ones open it
    finally:
        p.shutdown()
    feeding = "  sli: {}\n  chaos: {check_interval: 1h, feed_incidents: true}\n"
    p = start(tmp_path / "feeding", chaos=feeding, processors=procs, more=INCIDENTS)
    try:
        p.chaos.start_experiment("tool-error-storm", "a")
        p.send([Span("a", "tool", 0, error=True, injected="CHX-00001") for _ in range(3)], time.time_ns())
        answer = p.get("/v1/decisions/a")
        assert answer["action"] == "circuit_open" and answer["chaos"][0]["id"] == "CHX-00001"  # both sources say
    finally:
        p.shutdown()
