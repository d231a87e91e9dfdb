"""agent_semconv: fill the canonical agent columns from the conventions agents emit.

The mapping is data (``conventions.yaml`` next to this file); ``rules`` in the
pipeline YAML adds rows in the same shape, ahead of the shipped ones, for
in-house attribute names.  Normalisation is columnar (see normalize.py).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import field_validator

from agent_sre.pipeline.component import Factory, Kind, Processor
from agent_sre.pipeline.component.config import ConfigModel
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize


class AgentSemconvConfig(ConfigModel):
    # Extra normalisation rows, same shape as conventions.yaml; they take precedence.
    rules: dict[str, Any] = {}

    @field_validator("rules")
    @classmethod
    def _rules_load(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            load_conventions(extra=value)  # raises ValueError naming the bad row
        return value


class AgentSemconvProcessor(Processor):
    config: AgentSemconvConfig

    def __init__(self, settings, config: AgentSemconvConfig):
        super().__init__(settings, config)
        self.conventions = load_conventions(extra=config.rules or None)

    def process(self, batch: pa.Table) -> pa.Table:
        return normalize(batch, self.conventions)


factory = Factory(
    type="agent_semconv",
    kind=Kind.PROCESSOR,
    config_model=AgentSemconvConfig,
    create=AgentSemconvProcessor,
    description="Fills canonical agent columns (agent, model, tokens, tool, role...) from agent.*, gen_ai.*, "
                "OpenInference and OpenLLMetry attributes, by a precedence table kept as data.",
)
