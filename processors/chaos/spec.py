"""Chaos templates: the YAML of an experiment (faults, blast radius, schedule, abort conditions),
validated with the path of every problem, and the experiment a start request makes of one.

    name: tool-error-storm
    description: A third of tool calls fail.
    duration: 5m                       # default length (``--duration`` overrides)
    seed: null                         # null: drawn at start and recorded, so a run can be repeated
    blast_radius: {tools: [], models: [], sessions: 1.0}     # empty lists: every tool / model
    schedule: {delay: 0s, period: null, active: null}        # e.g. period 1m, active 20s: bursts
    faults:
      - {type: tool_error, rate: 0.3, message: "injected tool error", status: 500}
    abort:
      - {metric: error_rate, above: 0.9, window: 1m, min_events: 20}

A fault's own parameters sit beside ``type`` and ``rate`` (``agent_sre.chaos.faults`` lists them,
with their defaults); ``after`` delays one fault within the experiment (a cascade), ``tools`` and
``models`` narrow it further.  Abort metrics (over ``window``, else since the start):

    error_rate   failed calls (tool, llm, delegation spans with status error) / calls
    errors       failed calls
    calls        calls
    injected     spans tagged with this experiment
    cost_usd     spend of the experiment's agents (a budget)
    sli:NAME     a span SLI of the ``sli`` processor (good / total), e.g. ``sli:tool_call_accuracy below 0.5``

The templates shipped are ``templates/*.yaml`` (one per file, named by the file); a processor's
``templates_dir`` adds or replaces files, and its ``templates`` (name -> fields) are laid over them
(mappings merged, lists replaced): loadable and overridable.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from agent_sre.chaos.faults import DEFAULTS, DEGRADE_MODES, DRIFT_MODES, FAULT_TYPES
from agent_sre.pipeline.component.config import ConfigModel, Duration

SHIPPED = Path(__file__).parent / "templates"
METRICS = ("error_rate", "errors", "calls", "injected", "cost_usd")
_PARAMS = ("delay", "jitter", "message", "status", "mode", "keep", "text", "multiplier")


class TemplateError(ValueError):
    """Templates that do not validate: every problem, each with its template and path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class FaultSpec(ConfigModel):
    type: str
    rate: float = Field(default=1.0, ge=0, le=1)
    after: Duration = Field(default=0.0, ge=0)
    tools: list[str] = []
    models: list[str] = []
    delay: Duration | None = Field(default=None, ge=0)
    jitter: Duration | None = Field(default=None, ge=0)
    message: str | None = None
    status: int | None = Field(default=None, ge=400, le=599)
    mode: str | None = None
    keep: float | None = Field(default=None, gt=0, le=1)
    text: str | None = None
    multiplier: float | None = Field(default=None, gt=0)

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FAULT_TYPES:
            raise ValueError(f"unknown fault {v!r} (valid values: [{', '.join(FAULT_TYPES)}])")
        return v

    @model_validator(mode="after")
    def _params_of_the_type(self) -> FaultSpec:
        allowed = DEFAULTS[self.type]
        extra = [p for p in _PARAMS if getattr(self, p) is not None and p not in allowed]
        if extra:
            raise ValueError(f"{self.type} takes no {', '.join(extra)} (its parameters: {', '.join(allowed)})")
        modes = DRIFT_MODES if self.type == "tool_wrong_schema" else DEGRADE_MODES
        if self.mode is not None and self.mode not in modes:
            raise ValueError(f"mode of {self.type} must be one of [{', '.join(modes)}] (got {self.mode!r})")
        return self

    def announced(self) -> dict:
        """The fault as agents read it (every parameter filled in)."""
        params = {p: getattr(self, p) if getattr(self, p) is not None else default
                  for p, default in DEFAULTS[self.type].items()}
        return {"type": self.type, "rate": self.rate, "after": self.after, "tools": self.tools,
                "models": self.models, "params": params}


class BlastRadius(ConfigModel):
    agents: list[str] = []  # set by the start request (``--agent``)
    tools: list[str] = []
    models: list[str] = []
    sessions: float = Field(default=1.0, gt=0, le=1)  # the share of sessions, chosen by hash


class Schedule(ConfigModel):
    delay: Duration = Field(default=0.0, ge=0)  # injection starts this long after the start request
    period: Duration | None = Field(default=None, gt=0)  # on for ``active`` of every ``period``
    active: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _both(self) -> Schedule:
        if (self.period is None) != (self.active is None):
            raise ValueError("period and active go together (on for `active` of every `period`)")
        if self.period is not None and self.active is not None and self.active > self.period:
            raise ValueError(f"active ({self.active:g}s) must not be longer than period ({self.period:g}s)")
        return self


class AbortCondition(ConfigModel):
    metric: str
    above: float | None = None
    below: float | None = None
    window: Duration | None = Field(default=None, gt=0)  # None: since the experiment started
    min_events: int = Field(default=1, ge=1)  # calls (or SLI events) needed in the window before a rate is judged

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS and not (v.startswith("sli:") and len(v) > 4):
            raise ValueError(f"unknown metric {v!r} (valid values: [{', '.join(METRICS)}, sli:<name>])")
        return v

    @model_validator(mode="after")
    def _one_threshold(self) -> AbortCondition:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above or below")
        return self

    def describe(self) -> str:
        side = f"above {self.above:g}" if self.above is not None else f"below {self.below:g}"
        window = f" over {self.window:g}s" if self.window else " since the start"
        return f"{self.metric} {side}{window}"


class Template(ConfigModel):
    name: str
    description: str = ""
    duration: Duration = Field(default=300.0, gt=0)
    seed: int | None = None
    blast_radius: BlastRadius = BlastRadius()
    schedule: Schedule = Schedule()
    faults: list[FaultSpec] = Field(min_length=1)
    abort: list[AbortCondition] = []

    def summary(self) -> dict:
        return {"name": self.name, "description": self.description, "duration": self.duration,
                "faults": [{"type": f.type, "rate": f.rate, **({"after": f.after} if f.after else {})}
                           for f in self.faults],
                "abort": [a.describe() for a in self.abort]}


# --- loading ---------------------------------------------------------------------------------------

def merge(base: Any, over: Any) -> Any:
    """``over`` laid on ``base``: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def raw_templates(directory: str | Path | None = None) -> tuple[dict[str, dict], list[str]]:
    """(name -> raw YAML mapping, problems) from the shipped templates and then ``directory``."""
    raw: dict[str, dict] = {}
    problems: list[str] = []
    folders = [SHIPPED] + ([Path(directory)] if directory else [])
    for folder in folders:
        if not folder.is_dir():
            problems.append(f"templates_dir: {folder} is not a directory")
            continue
        for path in sorted(folder.glob("*.yaml")):
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                problems.append(f"{path}: cannot be read: {exc}")
                continue
            if not isinstance(doc, dict):
                problems.append(f"{path}: must be a mapping")
                continue
            name = doc.setdefault("name", path.stem)
            if name != path.stem:
                problems.append(f"{path}: name {name!r} differs from the file's name {path.stem!r}")
                continue
            raw[name] = doc
    return raw, problems


def load_templates(directory: str | Path | None = None, overrides: dict[str, dict] | None = None) -> dict[str, Template]:
    """Every template: shipped, then ``directory``'s, then ``overrides`` laid over them (or new ones);
    ``TemplateError`` with every problem."""
    raw, problems = raw_templates(directory)
    for name, fields in (overrides or {}).items():
        if not isinstance(fields, dict):
            problems.append(f"templates::{name}: must be a mapping")
            continue
        raw[name] = merge(raw.get(name, {}), {**fields, "name": name})
    out: dict[str, Template] = {}
    for name, doc in raw.items():
        try:
            out[name] = Template.model_validate(doc)
        except ValidationError as exc:
            problems += [f"template {name}: {p}" for p in problem_paths(exc)]
    if problems:
        raise TemplateError(problems)
    return out


def problem_paths(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``faults[0]::rate: message`` lines."""
    out = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}::{part}" if path else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a setting here"
        out.append(f"{path}: {msg}" if path else msg)
    return out


def apply_overrides(template: Template, overrides: dict | None) -> Template:
    """``template`` with ``overrides`` (fields of a template; ``rate``: every fault's rate) laid over it,
    validated."""
    if not overrides:
        return template
    if not isinstance(overrides, dict):
        raise TemplateError(["overrides: must be a mapping of template fields"])
    overrides = dict(overrides)
    rate = overrides.pop("rate", None)
    doc = merge(template.model_dump(), {**overrides, "name": template.name})
    if rate is not None and isinstance(doc.get("faults"), list):
        doc["faults"] = [{**f, "rate": rate} if isinstance(f, dict) else f for f in doc["faults"]]
    try:
        return Template.model_validate(doc)
    except ValidationError as exc:
        raise TemplateError([f"overrides: {p}" for p in problem_paths(exc)]) from None


def experiment_spec(template: Template, experiment_id: str, agents: list[str], start: float, duration: float,
                    extra_abort: list[AbortCondition] | None = None) -> dict:
    """What an experiment is: the template made concrete for these agents, from ``start`` (Unix s, the
    schedule's delay added) for ``duration`` s, with ``extra_abort`` conditions besides the template's:
    the stored spec and, less ``abort`` (``announced``), what agents are told."""
    if not agents or not all(isinstance(a, str) and a for a in agents):
        raise TemplateError(["an experiment needs at least one agent (--agent)"])
    seed = template.seed if template.seed is not None else random.SystemRandom().randrange(2**31)
    start = start + template.schedule.delay
    schedule = {"period": template.schedule.period, "active": template.schedule.active}
    radius = template.blast_radius.model_dump()
    radius["agents"] = sorted(set(agents))
    return {"id": experiment_id, "template": template.name, "description": template.description, "seed": seed,
            "start": start, "until": start + duration, "schedule": schedule, "blast_radius": radius,
            "faults": [f.announced() for f in template.faults],
            "abort": [a.model_dump() for a in [*template.abort, *(extra_abort or [])]]}


def announced(spec: dict) -> dict:
    """The part of a stored spec agents are told (the abort conditions are the pipeline's business)."""
    return {k: spec[k] for k in ("id", "template", "seed", "start", "until", "schedule", "blast_radius", "faults")}
