"""Chaos templates: the ten ship and load, are overridable (a folder, inline fields, start overrides), and
every problem is reported with its template and path."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent_sre.chaos.faults import DEFAULTS, FAULT_TYPES
from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service.config import parse_config
from agent_sre.processors.chaos.spec import (
    SHIPPED,
    Template,
    TemplateError,
    apply_overrides,
    experiment_spec,
    load_templates,
    merge,
)
from tests.conftest import Ports, pipeline_yaml
from tests.processors.chaos import helpers  # noqa: F401 - registers the chaos processor

TEN = ["cascading-failure", "cost-explosion", "credential-expiry", "delegation-rejection", "llm-latency-spike",
       "llm-quality-degradation", "network-partition", "tool-error-storm", "tool-schema-drift", "tool-timeout"]


def test_the_ten_templates_ship_as_yaml_and_cover_the_nine_faults():
    assert sorted(p.stem for p in SHIPPED.glob("*.yaml")) == TEN
    templates = load_templates()
    assert sorted(templates) == TEN
    assert {f.type for t in templates.values() for f in t.faults} == set(FAULT_TYPES)
    storm = templates["tool-error-storm"]
    assert [(f.type, f.rate) for f in storm.faults] == [("tool_error", 0.3)]
    assert [a.describe() for a in storm.abort] == ["error_rate above 0.8 over 60s"]
    cascade = templates["cascading-failure"]
    assert [(f.type, f.after) for f in cascade.faults] == [("network_partition", 0.0), ("tool_timeout", 30.0),
                                                          ("llm_latency", 60.0)]
    assert (templates["network-partition"].schedule.period, templates["network-partition"].schedule.active) == (60, 20)


def test_a_folder_replaces_a_template_and_inline_fields_are_laid_over_it(tmp_path):
    (tmp_path / "tool-error-storm.yaml").write_text(yaml.safe_dump(
        {"description": "ours", "duration": "2m", "faults": [{"type": "tool_error", "rate": 0.9}]}))
    (tmp_path / "flaky-search.yaml").write_text("faults: [{type: tool_error, rate: 0.1, tools: [search]}]\n")
    found = load_templates(tmp_path, {"tool-error-storm": {"blast_radius": {"sessions": 0.5}},
                                      "slow-model": {"faults": [{"type": "llm_latency", "delay": "10s"}]}})
    assert len(found) == 12
    storm = found["tool-error-storm"]
    assert (storm.description, storm.duration, storm.faults[0].rate, storm.blast_radius.sessions) == ("ours", 120, 0.9, 0.5)
    assert storm.abort == []  # the folder's file replaces the shipped one whole
    assert found["flaky-search"].faults[0].tools == ["search"]
    assert found["slow-model"].faults[0].announced()["params"] == {"delay": 10.0, "jitter": 0.0}


def test_every_problem_is_reported_with_its_template_and_path(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"faults": [
        {"type": "tool_error", "rate": 1.5}, {"type": "quantum_flux"}, {"type": "tool_error", "delay": "1s"},
        {"type": "llm_degraded", "mode": "sideways"}],
        "schedule": {"period": "1m"}, "abort": [{"metric": "vibes", "above": 1}, {"metric": "errors"}],
        "colour": "red"}))
    (tmp_path / "misnamed.yaml").write_text("name: other\nfaults: [{type: tool_error}]\n")
    with pytest.raises(TemplateError) as info:
        load_templates(tmp_path, {"tool-timeout": {"faults": []}})
    problems = info.value.problems
    for expected in ("template bad: faults[0]::rate: Input should be less than or equal to 1",
                     "template bad: faults[1]::type: unknown fault 'quantum_flux' (valid values: [tool_timeout,",
                     "template bad: faults[2]: tool_error takes no delay (its parameters: message, status)",
                     "template bad: faults[3]: mode of llm_degraded must be one of [truncate, empty, canned]",
                     "template bad: schedule: period and active go together",
                     "template bad: abort[0]::metric: unknown metric 'vibes'",
                     "template bad: abort[1]: give exactly one of above or below",
                     "template bad: colour: is not a setting here",
                     "template tool-timeout: faults: List should have at least 1 item",
                     "misnamed.yaml: name 'other' differs from the file's name 'misnamed'"):
        assert any(p.startswith(expected) or expected in p for p in problems), (expected, problems)


def test_the_pipeline_config_refuses_a_bad_template_with_its_yaml_path(tmp_path):
    text = pipeline_yaml(Ports(1, 2, 3, 4), tmp_path, processors="memory_limiter, chaos, batch").replace(
        "  batch:\n", "  chaos:\n    templates:\n      tool-error-storm: {faults: [{type: tool_error, rate: 2}]}\n"
                      "  batch:\n", 1)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test")
    assert "processors::chaos: template tool-error-storm: faults[0]::rate: Input should be less than or equal to 1" \
        in str(info.value)


def test_start_overrides_and_the_experiment_agents_are_told():
    storm = load_templates()["tool-error-storm"]
    tuned = apply_overrides(storm, {"rate": 0.5, "seed": 3, "blast_radius": {"tools": ["search"]}})
    assert (tuned.faults[0].rate, tuned.seed, tuned.blast_radius.tools, tuned.faults[0].message) == (
        0.5, 3, ["search"], "injected tool error")
    with pytest.raises(TemplateError, match=r"overrides: faults\[0\]::rate"):
        apply_overrides(storm, {"rate": 7})
    spec = experiment_spec(tuned, "CHX-00009", ["b", "a", "a"], 1000.0, 60.0)
    assert spec == {"id": "CHX-00009", "template": "tool-error-storm", "description": storm.description, "seed": 3,
                    "start": 1000.0, "until": 1060.0, "schedule": {"period": None, "active": None},
                    "blast_radius": {"agents": ["a", "b"], "tools": ["search"], "models": [], "sessions": 1.0},
                    "faults": [{"type": "tool_error", "rate": 0.5, "after": 0.0, "tools": [], "models": [],
                                "params": {"message": "injected tool error", "status": 500}}],
                    "abort": [{"metric": "error_rate", "above": 0.8, "below": None, "window": 60.0, "min_events": 20}]}
    with pytest.raises(TemplateError, match="at least one agent"):
        experiment_spec(tuned, "CHX-00010", [], 1000.0, 60.0)
    delayed = apply_overrides(storm, {"schedule": {"delay": "30s"}})
    assert experiment_spec(delayed, "X", ["a"], 1000.0, 60.0)["start"] == 1030.0
    assert experiment_spec(storm, "X", ["a"], 0, 1)["seed"] is not None  # drawn, and recorded in the spec


def test_every_fault_announces_all_its_parameters_with_defaults():
    for fault, defaults in DEFAULTS.items():
        announced = Template.model_validate({"name": "t", "faults": [{"type": fault}]}).faults[0].announced()
        assert announced["params"] == defaults and announced["rate"] == 1.0


scalars = st.one_of(st.integers(), st.text(max_size=3), st.booleans())
docs = st.recursive(scalars, lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=4) | st.lists(inner,
                                                                                                       max_size=3),
                    max_leaves=12)


@given(docs, docs)
def test_merge_lays_mappings_key_by_key_and_replaces_everything_else(base, over):
    merged = merge(base, over)
    if isinstance(base, dict) and isinstance(over, dict):
        assert set(merged) == set(base) | set(over)
        for k in base.keys() - over.keys():
            assert merged[k] == base[k]
        for k in over:
            assert merged[k] == (merge(base[k], over[k]) if k in base else over[k])
    else:
        assert merged == over
