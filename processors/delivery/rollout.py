"""The ``Rollout`` document (GitOps: a YAML file kept with the agent's code) and its templates.

    apiVersion: agent-sre.io/v1
    kind: Rollout
    metadata: {name: support-bot-1-5}
    spec:
      agent: support-bot            # agent_id
      baseline: "1.4.0"             # agent_version serving now
      candidate: "1.5.0"            # agent_version being rolled out
      template: default_canary      # optional: start from a shipped template; keys below override it
      analysis: {min_samples: 20}   # dicts merge into the template's, lists (steps, rollback) replace

A canary's steps send ``weight`` % of sessions to the candidate for ``duration``; at the end of each
step its ``analysis`` is judged (analysis.py); reaching a step of weight 100, or passing the last
step, promotes.  A shadow's steps have weight 0: the candidate runs on copies of the baseline's
inputs, and passing the last step makes it ``passed``.  ``rollback`` conditions are checked on the
candidate at every analysis, from the first analysed minute.

Documents are validated like the pipeline config: every problem at once, each with its path
(``spec::steps[1]::weight: ...``), unknown keys named with the valid ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from agent_sre.pipeline.component.config import ConfigModel, Duration, pydantic_problems
from agent_sre.pipeline.component.errors import ConfigError, ConfigProblem

API_VERSION = "agent-sre.io/v1"
TEMPLATES = Path(__file__).parent / "templates"
# What conditions may name, per strategy (analysis.py computes them; "_s" are seconds).
CANARY_METRICS = ("success_rate", "error_rate", "hallucination_rate", "latency_p50_s", "latency_p95_s",
                  "latency_p99_s", "cost_per_task_usd")
SHADOW_METRICS = ("similarity", "latency_ratio", "cost_ratio", "success_rate", "error_rate")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$")


class Condition(ConfigModel):
    """``{metric: error_rate, gte: 0.05}``: exactly one of gte, gt, lte, lt."""

    metric: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        known = dict.fromkeys((*CANARY_METRICS, *SHADOW_METRICS))
        if v not in known:
            raise ValueError(f"unknown metric (valid values: [{', '.join(known)}])")
        return v

    @model_validator(mode="after")
    def _one(self) -> Condition:
        given = [op for op in ("gte", "gt", "lte", "lt") if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of gte, gt, lte, lt (got {given or 'none'})")
        return self

    @property
    def op(self) -> str:
        return next(op for op in ("gte", "gt", "lte", "lt") if getattr(self, op) is not None)

    @property
    def threshold(self) -> float:
        return getattr(self, self.op)

    def holds(self, value: float) -> bool:
        x = self.threshold
        return {"gte": value >= x, "gt": value > x, "lte": value <= x, "lt": value < x}[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {({'gte': '>=', 'gt': '>', 'lte': '<=', 'lt': '<'})[self.op]} {self.threshold:g}"


class StepAnalysis(ConfigModel):
    conditions: list[Condition] = []  # on the candidate; all must hold at the end of the step
    compare: bool = True  # canary: the candidate must also not be significantly worse than the baseline


class Step(ConfigModel):
    name: str = ""
    weight: float = Field(ge=0, le=100)  # % of sessions routed to the candidate
    duration: Duration = Field(default=0, ge=0)
    analysis: StepAnalysis | None = None  # None: the step passes when its duration is over
    manual_gate: bool = False  # after its analysis passes, wait for `agent-sre rollout promote`


class AnalysisSettings(ConfigModel):
    min_samples: int = Field(default=50, ge=1)  # per version (tasks; scored outputs; shadow pairs)
    alpha: float = Field(default=0.05, gt=0, lt=1)  # one-sided significance of "the candidate is worse"
    latency_quantile: float = Field(default=0.95, gt=0, lt=1)
    latency_tolerance: float = Field(default=0.10, ge=0)  # a latency regression must also exceed this share
    cost_tolerance: float = Field(default=0.10, ge=0)  # same for cost per task
    hallucination_sli: str = "hallucination_rate"  # the sli_minutes SLI hallucinations are counted from


class ShadowSettings(ConfigModel):
    match_attribute: str = "agent_sre.input.id"  # the shared input id on both versions' agent_task spans
    output_attributes: list[str] = ["output.value", "gen_ai.output.messages", "traceloop.entity.output"]
    share: float = Field(default=100, ge=0, le=100)  # % of inputs the agents also run on the candidate
    max_pairs: int = Field(default=5000, ge=1)  # the most recent pairs compared per analysis


class Spec(ConfigModel):
    agent: str = Field(min_length=1)
    baseline: str = Field(min_length=1)
    candidate: str = Field(min_length=1)
    strategy: Literal["canary", "shadow"] = "canary"
    steps: list[Step] = Field(min_length=1)
    rollback: list[Condition] = []
    analysis: AnalysisSettings = AnalysisSettings()
    shadow: ShadowSettings = ShadowSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        if self.baseline == self.candidate:
            raise ValueError(f"baseline and candidate are the same version ({self.baseline!r})")
        weights = [s.weight for s in self.steps]
        if self.strategy == "shadow" and any(weights):
            raise ValueError("a shadow rollout's steps have weight 0 (the candidate serves no one)")
        if self.strategy == "canary":
            if not all(weights):
                raise ValueError("a canary's steps have weights above 0 (weight 0 is a shadow)")
            if weights != sorted(weights):
                raise ValueError(f"step weights must not decrease (got {weights})")
        valid = CANARY_METRICS if self.strategy == "canary" else SHADOW_METRICS
        named = [c.metric for c in self.rollback] + [c.metric for s in self.steps if s.analysis
                                                     for c in s.analysis.conditions]
        wrong = sorted({m for m in named if m not in valid})
        if wrong:
            raise ValueError(f"metrics {wrong} are not measured in a {self.strategy} rollout "
                             f"(valid values: [{', '.join(valid)}])")
        return self


class Metadata(ConfigModel):
    name: str
    labels: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-63 lower-case letters, digits, '-', '.' or '_', starting and ending "
                             "with a letter or digit")
        return v


class Rollout(ConfigModel):
    apiVersion: Literal["agent-sre.io/v1"]  # noqa: N815 - the document's own key
    kind: Literal["Rollout"]
    metadata: Metadata
    spec: Spec

    @property
    def name(self) -> str:
        return self.metadata.name

    def document(self) -> dict:
        """The resolved document (template applied, defaults filled): what is stored and shown."""
        return self.model_dump(mode="json")


# --- loading ------------------------------------------------------------------------------------

def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def template(name: str) -> dict:
    """A shipped template's ``spec`` (a partial spec: no agent or versions)."""
    path = TEMPLATES / f"{name}.yaml"
    if name not in template_names():
        raise KeyError(f"unknown template {name!r} (valid values: [{', '.join(template_names())}])")
    doc = yaml.safe_load(path.read_text())
    return doc["spec"]


def parse_rollout(text: str, source: str = "rollout") -> Rollout:
    """A Rollout from YAML text; ``ConfigError`` with every problem and its path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"not YAML: {exc}")], source) from None
    return build_rollout(raw, source)


def load_rollout(path: str | Path) -> Rollout:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read: {exc.strerror or exc}")], str(p)) from None
    return parse_rollout(text, str(p))


def build_rollout(raw: Any, source: str = "rollout") -> Rollout:
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "must be a mapping (a Rollout document)")], source)
    spec = raw.get("spec")
    if isinstance(spec, dict) and "template" in spec:
        spec = dict(spec)
        name = spec.pop("template")
        try:
            spec = merge(template(str(name)), spec)
        except KeyError as exc:
            raise ConfigError([ConfigProblem("spec::template", str(exc.args[0]))], source) from None
        raw = {**raw, "spec": spec}
    try:
        return Rollout.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(problems(exc, Rollout), source) from None


def merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def problems(exc: ValidationError, model: type[ConfigModel]) -> list[ConfigProblem]:
    """Pydantic's errors as the pipeline config reports them: ``a::b[0]::c: message``."""
    return pydantic_problems(exc, "", model)
