"""Rollouts as Prometheus metrics, collected from memory at every scrape of the pipeline's own metrics
(``service::telemetry::metrics::address``, :8888 by default): the delivery processor registers this
collector in the service's registry (``Settings.telemetry.registry``) when it starts.

    agent_sre_rollout_weight{rollout, agent_id, baseline, candidate, strategy}   % of sessions to the candidate
    agent_sre_rollout_state{rollout, agent_id, state}                             1 for the current state
    agent_sre_rollout_step{rollout, agent_id}                                     the current step (0-based)
    agent_sre_rollout_decisions_total{rollout, agent_id, decision}                decisions since the pipeline
                                                                                  started (start, advance, ...)
    agent_sre_rollout_analysis_value{rollout, agent_id, version, role, metric}    the last analysis: each side's
                                                                                  success_rate, error_rate,
                                                                                  latency_p95_s, cost_per_task_usd,
                                                                                  hallucination_rate (canary),
                                                                                  the shadow's figures (role candidate)
    agent_sre_rollout_analysis_p_value{rollout, agent_id, test}                   one-sided p of each comparison
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent_sre.processors.delivery.machine import STATES, RolloutRun

_SIDE_FIGURES = (("success_rate", ("success_rate",)), ("error_rate", ("error_rate",)),
                 ("latency_p95_s", ("latency_s", "p95")), ("cost_per_task_usd", ("cost_per_task_usd",)),
                 ("hallucination_rate", ("hallucination", "rate")))


class RolloutCollector:
    """prometheus_client's Collector protocol: ``collect`` only (no ``describe``, so the registry does
    not call it at registration)."""

    def __init__(self, runs: Callable[[], Iterable[RolloutRun]], decisions: Callable[[], dict]):
        self._runs = runs
        self._decisions = decisions

    def collect(self):
        weight = GaugeMetricFamily("agent_sre_rollout_weight", "Percent of the agent's sessions routed to the "
                                   "rollout's candidate version.",
                                   labels=["rollout", "agent_id", "baseline", "candidate", "strategy"])
        state = GaugeMetricFamily("agent_sre_rollout_state", "1 for the rollout's current state.",
                                  labels=["rollout", "agent_id", "state"])
        step = GaugeMetricFamily("agent_sre_rollout_step", "The rollout's current step (0-based).",
                                 labels=["rollout", "agent_id"])
        value = GaugeMetricFamily("agent_sre_rollout_analysis_value", "The rollout's last analysis, per side.",
                                  labels=["rollout", "agent_id", "version", "role", "metric"])
        p_value = GaugeMetricFamily("agent_sre_rollout_analysis_p_value", "One-sided p-value of the last "
                                    "analysis' comparison (small: the candidate is worse).",
                                    labels=["rollout", "agent_id", "test"])
        for run in self._runs():
            spec = run.spec
            weight.add_metric([run.name, spec.agent, spec.baseline, spec.candidate, spec.strategy], run.weight)
            for s in STATES:
                state.add_metric([run.name, spec.agent, s], 1.0 if s == run.state else 0.0)
            step.add_metric([run.name, spec.agent], run.step)
            for labels, v in _analysis_values(run):
                value.add_metric(labels, v)
            for test, body in ((run.analysis or {}).get("tests") or {}).items():
                p_value.add_metric([run.name, spec.agent, test], body["p_value"])
        decisions = CounterMetricFamily("agent_sre_rollout_decisions", "Rollout decisions since the pipeline "
                                        "started, by decision.", labels=["rollout", "agent_id", "decision"])
        for (name, agent, decision), count in sorted(self._decisions().items()):
            decisions.add_metric([name, agent, decision], count)
        return [weight, state, step, value, p_value, decisions]


def _analysis_values(run: RolloutRun) -> list[tuple[list[str], float]]:
    found = run.analysis
    if not found:
        return []
    out = []
    if found.get("strategy") == "shadow":
        for metric, v in (found.get("figures") or {}).items():
            if v is not None:
                out.append(([run.name, run.spec.agent, run.spec.candidate, "candidate", metric], float(v)))
        return out
    for role in ("baseline", "candidate"):
        side = found.get(role) or {}
        for metric, path in _SIDE_FIGURES:
            v = side
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                out.append(([run.name, run.spec.agent, side.get("version", ""), role, metric], float(v)))
    return out
