"""redaction settings: presets, key globs, extra value patterns, and what a redacted value becomes."""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from agent_sre.pipeline.component.config import ConfigModel


class PatternConfig(ConfigModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # what the mask says: [REDACTED:<name>]
    regex: str  # RE2 and Python syntax both (no look-around, no back-references)

    @field_validator("regex")
    @classmethod
    def _compiles_in_both_engines(cls, value: str) -> str:
        try:
            re.compile(value)
            pc.match_substring_regex(pa.array([""]), value)
        except (re.error, pa.ArrowInvalid) as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from None
        return value


class RedactionConfig(ConfigModel):
    presets: list[Literal["secrets", "pii", "genai-content"]] = ["secrets", "pii"]
    allow_keys: list[str] = []  # globs; when given, attributes whose key matches none are dropped
    block_keys: list[str] = []  # globs; the whole value is redacted (added to the presets' keys)
    ignore_keys: list[str] = []  # globs; values no pattern is applied to (ids, canonical keys)
    patterns: list[PatternConfig] = []  # extra value patterns, applied after the presets'
    action: Literal["mask", "hash"] = "mask"
    hash_key: str | None = Field(default=None, min_length=16)  # the HMAC key, from ${env:...} or ${file:...}
    hash_length: int = Field(default=16, ge=8, le=64)  # hex characters of the HMAC-SHA256 kept

    @model_validator(mode="after")
    def _hash_needs_a_key(self) -> RedactionConfig:
        if self.action == "hash" and not self.hash_key:
            raise ValueError("action: hash needs hash_key (at least 16 characters, e.g. ${env:REDACTION_KEY})")
        names = [p.name for p in self.patterns]
        if len(set(names)) != len(names):
            raise ValueError(f"patterns: names must be unique (got {names})")
        return self
