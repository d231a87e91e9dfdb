"""sli: which spans are SLI events, and which of those are good.

Each SLI is a pair of SQL predicates over the canonical span columns (``total``:
the span is an event of this SLI; ``good``: the event is good), so built-in and
user SLIs are the same thing.  The processor hands the definitions to the
duckdb exporter's store, which rolls them up per minute, agent and agent_version
into the table ``sli_minutes`` in the same transaction as the spans: exactly
once, also when the spool is replayed after a crash, and every window of any
length is a sum of minutes.  Batches pass through unchanged.
"""

from __future__ import annotations

import re
from typing import Literal

import duckdb
from pydantic import Field, field_validator, model_validator

from agent_sre.pipeline.component import Factory, Kind, Stage
from agent_sre.pipeline.component.capabilities import SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.storage.rollups import evaluation_score
from agent_sre.pipeline.storage.store import SliRollup

# Decisions of a policy check that count as a violation (compared lower-case).
VIOLATIONS = ("deny", "denied", "block", "blocked", "violation", "violated", "reject", "rejected")
BUILTIN = ("task_success_rate", "tool_call_accuracy", "response_latency", "policy_compliance", "hallucination_rate",
           "cost_per_task", "delegation_chain_depth")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class CustomSli(ConfigModel):
    name: str
    total: str  # SQL predicate: the span (or task) is an event of this SLI
    good: str  # SQL predicate: the event is good
    scope: Literal["span", "task"] = "span"  # task: over cost_usd, delegations, agent_id, agent_version

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be lower_snake_case (letters, digits, _)")
        return v

    @field_validator("total", "good")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            duckdb.extract_statements(f"SELECT 1 WHERE ({v})")
        except duckdb.Error as exc:
            raise ValueError(f"not a SQL predicate: {exc}") from exc
        return v


class SliConfig(ConfigModel):
    builtin: list[str] = list(BUILTIN)
    # response_latency: a task or LLM span is good when it took at most this long.
    latency_threshold: Duration = Field(default="30s", gt=0)
    # hallucination_rate: spans carrying an evaluator's hallucination score are events; good below the
    # threshold.  The score is read from this span attribute, else from a GenAI evaluation event
    # (gen_ai.evaluation.result with gen_ai.evaluation.name = hallucination_evaluation).
    hallucination_attribute: str = "eval.hallucination.score"
    hallucination_evaluation: str = "hallucination"
    hallucination_threshold: float = 0.5
    # cost_per_task: a task (agent_task span and its trace) is good when its summed cost_usd is at most this.
    cost_per_task_usd: float = Field(default=1.0, ge=0)
    # delegation_chain_depth: a task is good when its trace has at most this many delegation spans.
    max_delegation_depth: int = Field(default=3, ge=0)
    custom: list[CustomSli] = []
    # Which duckdb exporter keeps the rollups; empty: the only one.
    storage: str = ""

    @field_validator("builtin")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [x for x in v if x not in BUILTIN]
        if unknown:
            raise ValueError(f"unknown SLI {unknown[0]!r} (valid values: [{', '.join(BUILTIN)}])")
        return v

    @model_validator(mode="after")
    def _unique(self) -> SliConfig:
        names = [*self.builtin, *(c.name for c in self.custom)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"SLI names must be unique; repeated: {dupes}")
        return self


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def builtin_slis(cfg: SliConfig) -> list[SliRollup]:
    violations = ", ".join(_q(v) for v in VIOLATIONS)
    event = evaluation_score(_q(cfg.hallucination_evaluation))
    score = f"coalesce(TRY_CAST(attributes[{_q(cfg.hallucination_attribute)}] AS DOUBLE), TRY_CAST({event} AS DOUBLE))"
    table = {
        "task_success_rate": SliRollup(
            "task_success_rate", "span_role = 'agent_task'", "coalesce(task_success, status_code <> 'error')"),
        "tool_call_accuracy": SliRollup("tool_call_accuracy", "span_role = 'tool'", "status_code <> 'error'"),
        "response_latency": SliRollup(
            "response_latency", "span_role IN ('agent_task', 'llm')",
            f"duration_ns <= {int(cfg.latency_threshold * 1e9)}"),
        "policy_compliance": SliRollup(
            "policy_compliance", "span_role = 'policy_check'",
            f"coalesce(lower(policy_decision) NOT IN ({violations}), status_code <> 'error')"),
        "hallucination_rate": SliRollup(
            "hallucination_rate", f"{score} IS NOT NULL", f"{score} < {float(cfg.hallucination_threshold)!r}"),
        "cost_per_task": SliRollup("cost_per_task", "true", f"cost_usd <= {float(cfg.cost_per_task_usd)!r}", "task"),
        "delegation_chain_depth": SliRollup("delegation_chain_depth", "true",
                                            f"delegations <= {int(cfg.max_delegation_depth)}", "task"),
    }
    return [table[name] for name in cfg.builtin]


class SliProcessor(Stage):
    config: SliConfig

    def __init__(self, settings, config: SliConfig):
        super().__init__(settings, config)
        self.slis = builtin_slis(config) + [SliRollup(c.name, c.total, c.good, c.scope) for c in config.custom]

    def _start(self, host) -> None:
        host.get(SpanStore, self.config.storage, str(self.id)).set_sli_rollups(self.slis)


    def describe(self) -> list[str]:
        return [f"SLIs rolled up per minute into sli_minutes: {', '.join(s.name for s in self.slis)}"]


factory = Factory(
    type="sli",
    kind=Kind.PROCESSOR,
    config_model=SliConfig,
    create=SliProcessor,
    description="SLI events (built-in and user SQL predicates) rolled up per minute, agent and version in DuckDB.",
)
