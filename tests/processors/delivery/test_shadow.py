"""Shadow rollouts: the candidate runs on copies of the baseline's inputs; pairs of tasks with the same input id
are compared on output similarity, latency and cost, and the rollout passes or fails on its thresholds."""

from __future__ import annotations

import pytest

from agent_sre.delivery import Router
from tests.processors.delivery.helpers import (
    AGENT,
    BASE,
    CAND,
    HOUR_NS,
    MINUTE_NS,
    T0,
    BoardClient,
    rig,
    shadow,
    task,
)

ANSWER = "Your refund of $20 was issued today and reaches your card within 5 business days."


def pairs(box, degraded: int, total: int = 12) -> None:
    """``total`` inputs answered by both versions (1 s, $0.01 each); the first ``degraded`` answered badly."""
    for i in range(total):
        at = T0 + (i + 1) * MINUTE_NS
        bad = i < degraded
        box.add(task(BASE, at, cost=.01, input_id=f"in-{i}", output=ANSWER),
                task(CAND, at + 1, cost=.01, input_id=f"in-{i}", output="Sorry, I cannot help." if bad else ANSWER))


def test_a_shadow_rollout_with_a_degraded_candidate_fails(tmp_path):
    box = rig(tmp_path)
    mono = [0.0]
    router = Router(AGENT, client=BoardClient(box.host, lambda: mono[0]))
    started = box.start(shadow())
    assert (started["strategy"], started["weight"]) == ("shadow", 0.0)
    assert {router.route(f"s{i}") for i in range(200)} == {BASE}  # a shadow serves no one from the candidate
    assert {router.mirror(f"s{i}") for i in range(200)} == {CAND}  # every input is also run on it (share 100 %)
    pairs(box, degraded=6)
    assert box.evaluate(T0 + 12 * HOUR_NS) == []  # judged when its day is over
    (change,) = box.evaluate(T0 + 24 * HOUR_NS)
    # half the outputs are the answer (1.0); half share one token, the final ".", with its 17: 2 * 1 / (17 + 6);
    # the mean is (6 * 1 + 6 * 2 / 23) / 12 = 0.5435
    assert change.decision == "fail"
    assert change.reason == "analysis failed: similarity >= 0.9 does not hold (candidate: 0.5435)"
    assert box.proc.rollout("bot-shadow")["analysis"]["figures"]["similarity"] == pytest.approx((6 + 6 * 2 / 23) / 12, abs=1e-6)
    shown = box.proc.rollout("bot-shadow")
    assert (shown["state"], shown["weight"]) == ("failed", 0.0)
    analysis = shown["analysis"]
    assert analysis["pairs"] == 12 and analysis["figures"]["latency_ratio"] == 1.0
    assert analysis["figures"]["cost_ratio"] == 1.0
    assert [p["input_id"] for p in analysis["least_similar"]] == ["in-0", "in-1", "in-2", "in-3", "in-4"]
    mono[0] += 1.0
    assert {router.mirror(f"s{i}") for i in range(200)} == {None}  # the agents stop shadowing at the refresh
    assert [e["name"] for e in box.events] == ["start", "fail"]
    box.shutdown()


def test_a_shadow_rollout_whose_candidate_answers_alike_passes(tmp_path):
    box = rig(tmp_path)
    box.start(shadow())
    pairs(box, degraded=0)
    (change,) = box.evaluate(T0 + 24 * HOUR_NS)
    assert change.decision == "pass"
    assert change.reason == ("analysis passed: similarity >= 0.9 holds (candidate: 1); latency_ratio <= 1.5 holds "
                             "(candidate: 1); cost_ratio <= 1.5 holds (candidate: 1)")
    assert box.proc.rollout("bot-shadow")["state"] == "passed"
    box.shutdown()


def test_too_few_pairs_wait(tmp_path):
    box = rig(tmp_path)
    box.start(shadow())
    pairs(box, degraded=0, total=4)
    assert box.evaluate(T0 + 24 * HOUR_NS) == []
    assert box.proc.rollout("bot-shadow")["reason"].startswith("similarity: 4 of the 10 samples needed")
    box.shutdown()
