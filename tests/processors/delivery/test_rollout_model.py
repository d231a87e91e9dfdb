"""The Rollout document: validated like the pipeline config (every problem, each with its path), the seed's
templates shipped and overridable."""

from __future__ import annotations

import pytest

from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.processors.delivery.rollout import (
    CANARY_METRICS,
    SHADOW_METRICS,
    load_rollout,
    parse_rollout,
    template,
    template_names,
)

HEAD = "apiVersion: agent-sre.io/v1\nkind: Rollout\nmetadata: {name: bot-2}\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_rollout(HEAD + text, "rollout.yaml")
    return [str(p) for p in exc.value.problems]


def test_the_default_canary_is_the_seeds_five_twenty_five_fifty_hundred():
    r = parse_rollout(HEAD + "spec: {agent: bot, baseline: '1', candidate: '2', template: default_canary}")
    steps = r.spec.steps
    assert [s.weight for s in steps] == [5, 25, 50, 100]
    assert [s.duration for s in steps] == [7200, 14400, 14400, 0]
    assert [str(c) for s in steps[:3] for c in s.analysis.conditions] == [
        "success_rate >= 0.99", "success_rate >= 0.995", "success_rate >= 0.995"]
    assert [str(c) for c in r.spec.rollback] == ["error_rate >= 0.05", "hallucination_rate >= 0.1"]
    assert (r.spec.strategy, r.spec.analysis.min_samples, r.spec.analysis.alpha) == ("canary", 50, 0.05)


def test_the_default_shadow_compares_similarity_latency_and_cost_for_a_day():
    r = parse_rollout(HEAD + "spec: {agent: bot, baseline: '1', candidate: '2', template: default_shadow}")
    (step,) = r.spec.steps
    assert (r.spec.strategy, step.weight, step.duration) == ("shadow", 0, 86400)
    assert [str(c) for c in step.analysis.conditions] == ["similarity >= 0.9", "latency_ratio <= 1.5",
                                                          "cost_ratio <= 1.5"]
    assert r.spec.shadow.match_attribute == "agent_sre.input.id"


def test_every_shipped_template_is_a_valid_rollout_once_named():
    assert template_names() == ["default_canary", "default_shadow"]
    for name in template_names():
        assert template(name)["strategy"] in ("canary", "shadow")
        parse_rollout(HEAD + f"spec: {{agent: a, baseline: x, candidate: y, template: {name}}}")


def test_keys_given_override_the_template_mappings_merge_lists_replace():
    r = parse_rollout(HEAD + """spec:
  agent: bot
  baseline: '1'
  candidate: '2'
  template: default_canary
  analysis: {min_samples: 7}
  steps: [{weight: 10, duration: 1m}, {weight: 100}]
""")
    assert r.spec.analysis.min_samples == 7 and r.spec.analysis.alpha == 0.05  # merged into the template's
    assert [(s.weight, s.duration, s.analysis) for s in r.spec.steps] == [(10, 60, None), (100, 0, None)]
    assert [str(c) for c in r.spec.rollback] == ["error_rate >= 0.05", "hallucination_rate >= 0.1"]  # kept


def test_every_problem_is_reported_at_once_with_its_path():
    found = problems("""spec:
  agent: bot
  baseline: '1'
  candidat: '2'
  steps:
    - {weight: 150, duraton: 1h}
    - {weight: 5, analysis: {conditions: [{metric: succes_rate, gte: 1}, {metric: error_rate}]}}
""")
    assert "spec::candidate: is required" in found
    assert "spec::steps[0]::weight: Input should be less than or equal to 100 (got 150)" in found
    assert any(p.startswith("spec::steps[1]::analysis::conditions[0]::metric: unknown metric (valid values: "
                            "[success_rate, ") and p.endswith("(got 'succes_rate')") for p in found)
    assert ("spec::steps[1]::analysis::conditions[1]: needs exactly one of gte, gt, lte, lt (got none)" in found)
    assert ("spec::steps[0]: 'steps[0]' has invalid keys: duraton (valid keys: name, weight, duration, analysis, "
            "manual_gate)") in found
    assert any(p.startswith("spec: 'spec' has invalid keys: candidat (valid keys: agent, baseline, candidate")
               for p in found)
    assert len(found) == 6


@pytest.mark.parametrize(("spec", "message"), [
    ("{agent: a, baseline: x, candidate: x, steps: [{weight: 5}]}", "baseline and candidate are the same version ('x')"),
    ("{agent: a, baseline: x, candidate: y, steps: [{weight: 50}, {weight: 5}]}",
     "step weights must not decrease (got [50.0, 5.0])"),
    ("{agent: a, baseline: x, candidate: y, strategy: shadow, steps: [{weight: 5}]}",
     "a shadow rollout's steps have weight 0 (the candidate serves no one)"),
    ("{agent: a, baseline: x, candidate: y, steps: [{weight: 0}]}", "a canary's steps have weights above 0"),
    ("{agent: a, baseline: x, candidate: y, steps: [{weight: 5}], rollback: [{metric: similarity, lt: 0.5}]}",
     "metrics ['similarity'] are not measured in a canary rollout"),
    ("{agent: a, baseline: x, candidate: y, template: default_canry}",
     "unknown template 'default_canry' (valid values: [default_canary, default_shadow])"),
])
def test_inconsistent_specs_are_refused_with_the_reason(spec, message):
    (found,) = problems(f"spec: {spec}")
    assert message in found and found.startswith("spec")


def test_the_name_is_a_dns_like_label():
    with pytest.raises(ConfigError, match=r"metadata::name: must be 1-63 lower-case"):
        parse_rollout(HEAD.replace("bot-2", "Bot_2") + "spec: {agent: a, baseline: x, candidate: y, "
                      "steps: [{weight: 5}]}")


def test_a_file_that_cannot_be_read_or_parsed_says_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_rollout(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match="not YAML"):
        load_rollout(bad)


def test_a_resolved_document_round_trips_through_its_stored_form():
    r = parse_rollout(HEAD + "spec: {agent: bot, baseline: '1', candidate: '2', template: default_canary}")
    again = type(r).model_validate(r.document())
    assert again == r and "template" not in again.document()["spec"]


def test_metric_lists_name_what_each_strategy_measures():
    assert set(CANARY_METRICS) >= {"success_rate", "error_rate", "hallucination_rate", "cost_per_task_usd"}
    assert set(SHADOW_METRICS) >= {"similarity", "latency_ratio", "cost_ratio"}
