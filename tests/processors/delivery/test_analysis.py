"""What a step is judged on, read from real stored spans over one window, against figures worked out by hand."""

from __future__ import annotations

import math

import pytest

from agent_sre.processors.delivery.analysis import analyse, judge
from agent_sre.processors.delivery.rollout import parse_rollout
from agent_sre.processors.delivery.stats import upper_tail
from tests.processors.delivery.helpers import AGENT, BASE, CAND, MINUTE_NS, T0, rig, task

DOC = f"""apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: r}}
spec:
  agent: {AGENT}
  baseline: "{BASE}"
  candidate: "{CAND}"
  analysis: {{min_samples: 3}}
  steps:
    - {{weight: 10, duration: 10m, analysis: {{conditions: [{{metric: success_rate, gte: 0.5}}]}}}}
    - {{weight: 100}}
"""


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    box = rig(tmp_path_factory.mktemp("window"))
    at = T0 + MINUTE_NS
    box.add(  # baseline: 1, 2, 3, 4 s; $0.01, 0.01, 0.02, 0.02; hallucination scores .1 .2 .9 .1 (1 at >= .5)
        *[task(BASE, at + i, seconds=s, cost=c, hallucination=h)
          for i, (s, c, h) in enumerate([(1, .01, .1), (2, .01, .2), (3, .02, .9), (4, .02, .1)])],
        # candidate: 2, 4, 6 s, $0.03 each, one failed; scores .9 .8 .1 (2 of 3)
        *[task(CAND, at + 10 + i, ok=ok, seconds=s, cost=.03, hallucination=h)
          for i, (s, ok, h) in enumerate([(2, True, .9), (4, False, .8), (6, True, .1)])],
        task(CAND, T0 + 10 * MINUTE_NS, ok=False),  # ends when the window does: outside
        task(CAND, T0 - 1, ok=False),  # before it
        task(CAND, at, ok=False, agent="another-agent"),  # another agent's
        task("0.9", at, ok=False),  # another version
    )
    yield box, parse_rollout(DOC)
    box.shutdown()


def test_tasks_latency_cost_and_hallucinations_per_version(window):
    box, rollout = window
    got = analyse(box.store.read, rollout.spec, T0, T0 + 10 * MINUTE_NS)
    b, c = got["baseline"], got["candidate"]
    assert (b["tasks"], b["successes"], c["tasks"], c["successes"]) == (4, 4, 3, 2)
    assert (c["success_rate"], c["error_rate"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    # quantile_cont: position (n - 1) q, interpolated: baseline 1..4 -> p50 2.5, p95 3.85; candidate 2, 4, 6 -> 4, 5.8
    assert b["latency_s"] == pytest.approx({"p50": 2.5, "p95": 3.85, "p99": 3.97, "quantile": 3.85})
    assert c["latency_s"] == pytest.approx({"p50": 4.0, "p95": 5.8, "p99": 5.96, "quantile": 5.8})
    assert (b["cost_per_task_usd"], c["cost_per_task_usd"]) == (pytest.approx(0.015), pytest.approx(0.03))
    assert b["cost_variance"] == pytest.approx(4 * 0.005**2 / 3)  # sample variance of .01 .01 .02 .02
    assert b["hallucination"] == {"scored": 4, "hallucinated": 1, "rate": 0.25}
    assert c["hallucination"] == {"scored": 3, "hallucinated": 2, "rate": pytest.approx(2 / 3)}
    assert got["metrics"] == pytest.approx({
        "success_rate": 2 / 3, "error_rate": 1 / 3, "latency_p50_s": 4.0, "latency_p95_s": 5.8,
        "latency_p99_s": 5.96, "cost_per_task_usd": 0.03, "hallucination_rate": 2 / 3})


def test_the_comparisons_are_the_hand_computed_one_sided_tests(window):
    box, rollout = window
    tests = analyse(box.store.read, rollout.spec, T0, T0 + 10 * MINUTE_NS)["tests"]
    # success: failures 0/4 vs 1/3, pooled 1/7
    z = (1 / 3) / math.sqrt(1 / 7 * 6 / 7 * (1 / 4 + 1 / 3))
    assert tests["success_rate"]["statistic"] == pytest.approx(z, abs=1e-6)
    assert tests["success_rate"]["p_value"] == pytest.approx(upper_tail(z)) and not tests["success_rate"]["worse"]
    # latency, pooled 1 2 2 3 4 4 6 (b b c b b c c): candidate ranks 2.5 + 5.5 + 7 = 15, U = 9; two ties of 2
    z = (9 - 6 - 0.5) / math.sqrt(4 * 3 / 12 * (8 - 12 / 42))
    assert tests["latency"]["u"] == 9 and tests["latency"]["statistic"] == pytest.approx(z, abs=1e-6)
    assert tests["latency"]["p_value"] == pytest.approx(upper_tail(z)) and not tests["latency"]["worse"]
    # cost: Welch z = (0.03 - 0.015) / sqrt(var_b / 4 + 0 / 3) = 5.196: worse, and above +10 %
    z = 0.015 / math.sqrt(4 * 0.005**2 / 3 / 4)
    assert tests["cost_per_task"]["statistic"] == pytest.approx(z, rel=1e-6) and tests["cost_per_task"]["worse"]
    # hallucinations: 1/4 vs 2/3, pooled 3/7
    z = (2 / 3 - 1 / 4) / math.sqrt(3 / 7 * 4 / 7 * (1 / 4 + 1 / 3))
    assert tests["hallucination_rate"]["statistic"] == pytest.approx(z, abs=1e-6)
    assert not tests["hallucination_rate"]["worse"]  # p = 0.13


def test_the_step_fails_on_the_one_comparison_that_is_worse(window):
    box, rollout = window
    result = analyse(box.store.read, rollout.spec, T0, T0 + 10 * MINUTE_NS)
    step = rollout.spec.steps[0]
    assert judge(result, rollout.spec, step, step_over=False).outcome == "running"
    verdict = judge(result, rollout.spec, step, step_over=True)
    assert verdict.outcome == "fail"
    (reason,) = verdict.reasons
    assert reason.startswith("cost per task $0.03 vs baseline $0.015 (tolerance +10%): significantly costlier")


def test_figures_wait_for_their_minimum_samples(window):
    box, rollout = window
    result = analyse(box.store.read, rollout.spec.model_copy(update={"analysis": rollout.spec.analysis.model_copy(
        update={"min_samples": 4})}), T0, T0 + 10 * MINUTE_NS)
    assert result["metrics"]["success_rate"] is None and result["samples"]["success_rate"] == 3
    assert result["tests"] == {}  # 3 candidate tasks: nothing is compared
    verdict = judge(result, rollout.spec, rollout.spec.steps[0], step_over=True)
    assert verdict.outcome == "wait"
    assert verdict.reasons == ["success_rate: 3 of the 4 samples needed",
                               "comparison: 4 baseline and 3 candidate tasks of the 4 each needed"]


def test_shadow_pairs_are_matched_by_input_id_and_compared(tmp_path):
    box = rig(tmp_path)
    at = T0 + MINUTE_NS
    outputs = [("q1", "same answer", "same answer"), ("q2", "same answer", "same answer"),
               ("q3", "the refund takes 5 days", "the refund takes 7 days"), ("q4", "ok", "I cannot help")]
    for i, (q, b, c) in enumerate(outputs):  # baseline 1 s and $0.01 each; candidate 2, 1, 1, 2 s and $0.02
        box.add(task(BASE, at + i, seconds=1, cost=.01, input_id=q, output=b),
                task(CAND, at + 100 + i, seconds=(2, 1, 1, 2)[i], cost=.02, input_id=q, output=c, ok=i != 3))
    box.add(task(BASE, at - 5, input_id="q4", output="an older answer to q4"),  # the latest per input id counts
            task(BASE, at + 50, input_id="q9", output="unpaired"))
    spec = parse_rollout(f"""apiVersion: agent-sre.io/v1
kind: Rollout
metadata: {{name: s}}
spec: {{agent: {AGENT}, baseline: "{BASE}", candidate: "{CAND}", template: default_shadow, analysis: {{min_samples: 4}}}}
""").spec
    got = analyse(box.store.read, spec, T0, T0 + 10 * MINUTE_NS)
    assert (got["pairs"], got["baseline"]["tasks"], got["candidate"]["tasks"]) == (4, 5, 4)
    # similarity (1 + 1 + 0.8 + 0) / 4; latency 6 s / 4 s; cost $0.08 / $0.04; 3 of 4 candidate tasks succeed
    assert got["metrics"] == pytest.approx({"similarity": 0.7, "latency_ratio": 1.5, "cost_ratio": 2.0,
                                            "success_rate": 0.75, "error_rate": 0.25})
    assert [p["input_id"] for p in got["least_similar"][:2]] == ["q4", "q3"]
    verdict = judge(got, spec, spec.steps[0], step_over=True)
    assert verdict.outcome == "fail"
    assert verdict.reasons == ["similarity >= 0.9 does not hold (candidate: 0.7)",
                               "cost_ratio <= 1.5 does not hold (candidate: 2)"]
    box.shutdown()
