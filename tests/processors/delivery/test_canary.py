"""Canary rollouts driven through the real processor, a real store and real spans on a test clock: rolled back
at the first analysed step, promoted through every step, frozen by an exhausted error budget, resumed after a
restart; the router in the agent follows at its next refresh."""

from __future__ import annotations

import pytest

from agent_sre.delivery import Router, share_tolerance
from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.errors import ConfigError, TransitionError
from agent_sre.processors.slo.factory import Objective, SloConfig, SloProcessor
from tests.processors.delivery.helpers import (
    AGENT,
    BASE,
    CAND,
    HOUR_NS,
    MINUTE_NS,
    T0,
    BoardClient,
    canary,
    delivery,
    host_with,
    rig,
    share,
    task,
)

SECOND_NS = 10**9


def router_for(box):
    mono = [0.0]
    return Router(AGENT, client=BoardClient(box.host, lambda: mono[0], refresh=1.0)), mono


def good_step(box, start_ns: int, baseline: int, candidate: int, spacing_ns: int = 10 * SECOND_NS) -> None:
    box.add(*[task(BASE, start_ns + 1 + i * spacing_ns) for i in range(baseline)],
            *[task(CAND, start_ns + 2 + i * spacing_ns) for i in range(candidate)])


def test_a_canary_with_a_worse_error_rate_is_rolled_back_at_the_first_analysed_step(tmp_path):
    box = rig(tmp_path)
    router, mono = router_for(box)
    started = box.start(canary())
    assert (started["state"], started["weight"], started["step_name"]) == ("progressing", 5.0, "canary-5")
    assert abs(share(router) - 0.05) <= share_tolerance(5, 4000)
    # the first half hour: the baseline fails 2 of 380 tasks, the candidate 2 of 20 (10 % >= the 5 % rollback)
    box.add(*[task(BASE, T0 + i * 4 * SECOND_NS, ok=i not in (7, 300)) for i in range(380)],
            *[task(CAND, T0 + (i + 1) * MINUTE_NS, ok=i not in (3, 11)) for i in range(20)])
    (change,) = box.evaluate(T0 + 30 * MINUTE_NS)
    assert (change.decision, change.reason) == ("rollback", "rollback condition error_rate >= 0.05 holds "
                                                            "(candidate: 0.1)")
    shown = box.proc.rollout("bot-1-5")
    assert (shown["state"], shown["step"], shown["weight"]) == ("rolled_back", 0, 0.0)
    assert shown["analysis"]["candidate"]["tasks"] == 20 and shown["analysis"]["baseline"]["tasks"] == 380
    # the agent keeps its answer until the refresh; then no session goes to the candidate
    assert abs(share(router) - 0.05) <= share_tolerance(5, 4000)
    mono[0] += 1.0
    assert share(router) == 0.0
    assert [(e["name"], e["state"], e["severity"], e["labels"]["weight"]) for e in box.events] == [
        ("start", "firing", "info", "5"), ("rollback", "resolved", "ticket", "0")]
    assert [h["decision"] for h in shown["history"]] == ["start", "rollback"]
    metrics = box.host.telemetry.exposition().decode()
    assert ('agent_sre_rollout_weight{agent_id="support-bot",baseline="1.4.0",candidate="1.5.0",rollout="bot-1-5",'
            'strategy="canary"} 0.0') in metrics
    assert 'agent_sre_rollout_state{agent_id="support-bot",rollout="bot-1-5",state="rolled_back"} 1.0' in metrics
    assert ('agent_sre_rollout_decisions_total{agent_id="support-bot",decision="rollback",rollout="bot-1-5"} 1.0'
            in metrics)
    box.shutdown()


def test_a_good_canary_is_promoted_through_every_step(tmp_path):
    box = rig(tmp_path)
    router, mono = router_for(box)
    box.start(canary())
    good_step(box, T0, baseline=380, candidate=20, spacing_ns=15 * SECOND_NS)  # all within the first 2 h
    assert box.evaluate(T0 + HOUR_NS) == []  # the step's 2 h are not over
    (change,) = box.evaluate(T0 + 2 * HOUR_NS)
    assert change.decision == "advance"
    assert change.reason.startswith("analysis passed: success_rate >= 0.99 holds (candidate: 1); not significantly "
                                    "worse than the baseline on success rate, latency, cost per task")
    good_step(box, T0 + 2 * HOUR_NS, baseline=60, candidate=20, spacing_ns=10 * MINUTE_NS)
    assert [c.decision for c in box.evaluate(T0 + 6 * HOUR_NS)] == ["advance"]
    good_step(box, T0 + 6 * HOUR_NS, baseline=20, candidate=20, spacing_ns=10 * MINUTE_NS)
    assert [c.decision for c in box.evaluate(T0 + 10 * HOUR_NS)] == ["promote"]
    shown = box.proc.rollout("bot-1-5")
    assert (shown["state"], shown["weight"], shown["step_name"]) == ("promoted", 100.0, "full")
    assert [(h["decision"], h["weight"]) for h in shown["history"]] == [
        ("start", 5), ("advance", 25), ("advance", 50), ("promote", 100)]
    # each step's window started with the step: the 25 % step saw its own 60 + 20 tasks
    assert [e["labels"]["step"] for e in box.events] == ["0", "1", "2", "3"]
    mono[0] += 1.0
    assert share(router) == 1.0
    assert box.evaluate(T0 + 11 * HOUR_NS) == []  # finished: nothing more to decide
    box.shutdown()


def test_a_step_without_enough_samples_waits_for_them(tmp_path):
    box = rig(tmp_path)
    box.start(canary())
    good_step(box, T0, baseline=100, candidate=5)
    assert box.evaluate(T0 + 2 * HOUR_NS) == []
    shown = box.proc.rollout("bot-1-5")
    assert (shown["state"], shown["step"]) == ("progressing", 0)
    assert shown["reason"] == ("success_rate: 5 of the 20 samples needed; comparison: 100 baseline and 5 candidate "
                               "tasks of the 20 each needed")
    good_step(box, T0 + 2 * HOUR_NS, baseline=0, candidate=15)  # the window runs from the step's start
    assert [c.decision for c in box.evaluate(T0 + 3 * HOUR_NS)] == ["advance"]
    box.shutdown()


def _slo(box) -> SloProcessor:
    slo = SloProcessor(Settings(ComponentID("slo"), Kind.PROCESSOR, box.host.telemetry), SloConfig(
        objectives=[Objective(name="task-success", sli="task_success_rate", target=0.99, window="1h")],
        interval="1h"))
    slo.clock = lambda: box.now_ns / 1e9
    slo.start(box.host)
    return slo


FROZEN = ("releases of agent support-bot are frozen by slo: error budget exhausted: SLO task-success; releases "
          "are frozen")


def test_an_exhausted_error_budget_freezes_the_rollout_and_refuses_a_promote_with_the_reason(tmp_path):
    box = rig(tmp_path)
    slo = _slo(box)
    box.start(canary())
    # the second hour: 10 of 400 tasks fail (all the baseline's): 2.5 % > the 1 % the SLO allows
    box.add(*[task(BASE, T0 + HOUR_NS + i * 5 * SECOND_NS, ok=i % 38 != 5) for i in range(380)],
            *[task(CAND, T0 + HOUR_NS + (i + 1) * MINUTE_NS) for i in range(20)])
    box.at(T0 + 2 * HOUR_NS)
    (row,) = slo.report()
    assert (row["events"], row["bad_events"], row["status"]) == (400, 10, "exhausted")
    (change,) = box.evaluate()
    assert change.decision == "pause"
    assert change.reason.endswith(f"; advance refused: {FROZEN}")
    assert box.proc.rollout("bot-1-5")["weight"] == 5.0  # held where it was
    with pytest.raises(TransitionError) as refused:
        box.proc.act("bot-1-5", "promote", "alice")
    assert refused.value.status == 409
    assert str(refused.value) == f"promote of rollout bot-1-5 refused: {FROZEN}"
    # an hour without failures: the budget over the last hour is back, the freeze lifts, the rollout goes on
    box.add(*[task(BASE, T0 + 3 * HOUR_NS + i * 30 * SECOND_NS) for i in range(100)])
    box.at(T0 + 4 * HOUR_NS)
    assert slo.report()[0]["status"] != "exhausted"
    (change,) = box.evaluate()
    assert change.decision == "advance" and change.reason.startswith("the freeze on releases is lifted")
    assert box.proc.rollout("bot-1-5")["weight"] == 25.0
    slo.shutdown()
    box.shutdown()


def test_a_rollout_does_not_start_while_its_agent_is_frozen(tmp_path):
    box = rig(tmp_path)
    slo = _slo(box)
    box.add(*[task(BASE, T0 + i * SECOND_NS, ok=i % 10 != 0) for i in range(100)])
    box.at(T0 + 10 * MINUTE_NS)
    assert slo.report()[0]["status"] == "exhausted"
    with pytest.raises(TransitionError, match=f"rollout bot-1-5 refused: {FROZEN}"):
        box.start(canary())
    assert box.proc.rollouts() == [] and box.events == []
    slo.shutdown()
    box.shutdown()


def test_a_restarted_pipeline_resumes_each_rollout_where_it_was(tmp_path):
    box = rig(tmp_path)
    box.start(canary())
    good_step(box, T0, baseline=100, candidate=20)
    box.evaluate(T0 + 2 * HOUR_NS)
    box.shutdown()

    host = host_with(box.store)
    again = delivery(host, lambda: box.now_ns / 1e9)
    again.start(host)
    (resumed,) = again.rollouts()
    assert (resumed["state"], resumed["step"], resumed["weight"]) == ("progressing", 1, 25.0)
    assert resumed["step_started_ns"] == T0 + 2 * HOUR_NS
    assert host.decisions.decide(AGENT)["rollout"]["weight"] == 25.0  # routed as before, from the first answer
    good_step(box, T0 + 2 * HOUR_NS, baseline=60, candidate=20, spacing_ns=MINUTE_NS)
    box.at(T0 + 6 * HOUR_NS)
    assert [c.decision for c in again.evaluate()] == ["advance"]
    assert [h["decision"] for h in again.rollout("bot-1-5")["history"]] == ["start", "advance", "advance"]
    again.shutdown()


GATED = f"""
apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: gated}}
spec:
  agent: {AGENT}
  baseline: "{BASE}"
  candidate: "{CAND}"
  steps:
    - {{weight: 10, duration: 10m, manual_gate: true, analysis: {{compare: false}}}}
    - {{weight: 30, duration: 10m}}
    - {{weight: 100}}
"""


def test_a_manual_gate_waits_for_a_person_to_promote(tmp_path):
    box = rig(tmp_path)
    box.start(GATED)
    (change,) = box.evaluate(T0 + 10 * MINUTE_NS)
    assert change.decision == "pause" and change.reason.endswith("waiting at the manual gate (promote to go on)")
    assert box.evaluate(T0 + 20 * MINUTE_NS) == []  # a gate does not open by itself
    with pytest.raises(TransitionError, match="not paused by a person"):
        box.proc.act("gated", "resume", "alice")
    shown = box.proc.act("gated", "promote", "alice", "looked at the traces")
    assert (shown["state"], shown["weight"]) == ("progressing", 30.0)
    assert shown["history"][-1]["by"] == "alice"
    assert box.events[-1]["summary"].endswith("promoted by alice (looked at the traces); step 1: 30% to 1.5.0")
    box.shutdown()


def test_a_person_can_pause_resume_promote_fully_and_abort(tmp_path):
    box = rig(tmp_path)
    box.start(GATED)
    assert box.proc.act("gated", "pause", "bob")["state"] == "paused"
    with pytest.raises(TransitionError, match="already paused") as again:
        box.proc.act("gated", "pause", "bob")
    assert again.value.status == 409
    assert box.evaluate(T0 + HOUR_NS) == []  # paused: the step's end does not advance it
    assert box.proc.act("gated", "resume", "bob")["state"] == "progressing"
    full = box.proc.act("gated", "promote", "bob", full=True)
    assert (full["state"], full["weight"]) == ("promoted", 100.0)
    with pytest.raises(TransitionError, match="rollout gated is promoted; nothing to abort"):
        box.proc.act("gated", "abort", "bob")
    box.start(canary())
    aborted = box.proc.act("bot-1-5", "abort", "bob", "wrong build")
    assert (aborted["state"], aborted["weight"], aborted["reason"]) == ("aborted", 0.0, "aborted by bob (wrong build)")
    for name, action, status in (("nope", "abort", 404), ("bot-1-5", "explode", 400)):
        with pytest.raises(TransitionError) as err:
            box.proc.act(name, action, "bob")
        assert err.value.status == status
    box.shutdown()


def test_one_rollout_at_a_time_per_agent_and_per_name(tmp_path):
    box = rig(tmp_path)
    with pytest.raises(TransitionError, match="agent 'support-bot' is not one of the caller's") as other:
        box.proc.start_rollout(canary(), "mallory", agents=frozenset({"their-bot"}))  # a tenant's key
    assert other.value.status == 404 and box.proc.rollouts() == []
    box.start(canary())
    with pytest.raises(TransitionError, match="rollout bot-1-5 is already progressing"):
        box.start(canary())
    with pytest.raises(TransitionError, match="agent support-bot already has rollout bot-1-5 progressing"):
        box.start(canary(name="bot-1-6"))
    with pytest.raises(ConfigError, match="spec::analysis::min_samples"):
        box.start(canary(name="bot-1-7", min_samples=0))
    box.proc.act("bot-1-5", "abort", "bob")
    box.at(T0 + MINUTE_NS)
    assert box.start(canary(name="bot-1-6"))["state"] == "progressing"
    assert [r["name"] for r in box.proc.rollouts()] == ["bot-1-6", "bot-1-5"]
    assert box.host.decisions.decide(AGENT)["rollout"]["name"] == "bot-1-6"  # the active one routes
    box.shutdown()


def test_declared_rollout_files_start_with_the_pipeline_and_resume_by_name(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(canary())
    box = rig(tmp_path, rollouts=[str(path)])
    assert box.proc.rollouts() == []  # started by the first analysis, as the freeze allows
    (change,) = box.evaluate(T0)
    assert (change.decision, change.who) == ("start", "config")
    box.proc.act("bot-1-5", "abort", "bob")
    box.shutdown()
    host = host_with(box.store)
    again = delivery(host, lambda: box.now_ns / 1e9, rollouts=[str(path)])
    again.start(host)
    assert again.evaluate() == [] and again.rollouts()[0]["state"] == "aborted"  # known by name: not restarted
    again.shutdown()


def test_an_invalid_declared_file_is_a_config_error_with_its_path(tmp_path):
    from agent_sre.processors.delivery.factory import DeliveryConfig

    path = tmp_path / "bad.yaml"
    path.write_text(canary().replace("1.5.0", "1.4.0"))
    with pytest.raises(ValueError, match=r"bad.yaml \(1 problem\):\n  spec: baseline and candidate are the same"):
        DeliveryConfig(rollouts=[str(path)])
