"""Objectives from OpenSLO v1 files: what is supported maps onto objectives; the rest is refused by name."""

from __future__ import annotations

import textwrap

import pytest

from agent_sre.processors.slo.factory import SloConfig

SLO = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: tools-succeed, displayName: Tool calls succeed}
spec:
  service: support-agent
  budgetingMethod: Occurrences
  timeWindow: [{duration: 28d, isRolling: true}]
  indicator:
    metadata: {name: tool-accuracy}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: agent-sre, spec: {sli: tool_call_accuracy}}}
        total: {metricSource: {type: agent-sre, spec: {sli: tool_call_accuracy}}}
  objectives:
    - {displayName: strict, target: 0.999}
    - {displayName: lenient, targetPercent: 99}
---
apiVersion: openslo/v1
kind: Service
metadata: {name: support-agent}
spec: {}
"""


def write(tmp_path, text: str):
    path = tmp_path / "slo.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_an_openslo_slo_becomes_one_objective_per_target(tmp_path):
    cfg = SloConfig(openslo=[write(tmp_path, SLO)], objectives=[{"name": "x", "sli": "response_latency",
                                                                  "target": 0.95}])
    got = [(o.name, o.sli, o.target, o.window) for o in cfg.objectives]
    assert got == [("x", "response_latency", 0.95, 30 * 86400.0),
                   ("tools-succeed/strict", "tool_call_accuracy", 0.999, 28 * 86400.0),
                   ("tools-succeed/lenient", "tool_call_accuracy", 0.99, 28 * 86400.0)]


@pytest.mark.parametrize("change,message", [
    (("budgetingMethod: Occurrences", "budgetingMethod: Timeslices"),
     "budgetingMethod 'Timeslices' is not supported (only Occurrences)"),
    (("isRolling: true", "isRolling: false"), "calendar-aligned windows are not supported"),
    (("type: agent-sre, spec: {sli: tool_call_accuracy}}}\n        total",
      "type: Prometheus, spec: {query: up}}}\n        total"),
     "ratioMetric.good.metricSource.type must be agent-sre, got 'Prometheus'"),
    (("total: {metricSource: {type: agent-sre, spec: {sli: tool_call_accuracy}}}",
      "total: {metricSource: {type: agent-sre, spec: {sli: task_success_rate}}}"),
     "good and total must name the same SLI"),
    (("apiVersion: openslo/v1\nkind: SLO", "apiVersion: openslo/v2alpha\nkind: SLO"),
     "apiVersion must be openslo/v1, got 'openslo/v2alpha'"),
])
def test_unsupported_openslo_is_refused_with_the_reason(tmp_path, change, message):
    old, new = change
    assert old in SLO
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SloConfig(openslo=[write(tmp_path, SLO.replace(old, new, 1))])


def test_a_missing_file_and_no_objectives_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read OpenSLO file"):
        SloConfig(openslo=[str(tmp_path / "nope.yaml")])
    with pytest.raises(ValueError, match="needs at least one objective"):
        SloConfig()
