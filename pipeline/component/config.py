"""The value types every component config is made of: a pydantic base that rejects unknown keys,
durations ('200ms', '5s', '1h', '7d') and host:port endpoints."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from agent_sre.pipeline.component.errors import ConfigProblem

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
                   "d": 86400.0, None: 1.0}



def parse_duration(value: Any) -> float:
    """'200ms', '5s', '1h', '7d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 200ms, 5s, 1h")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"must be a duration such as 200ms, 5s, 1h (got {value!r})")


def _check_endpoint(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"must be host:port (got {value!r})")
    port = value.rpartition(":")[2]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port from 0 to 65535 (got {value!r})")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
HostPort = Annotated[str, BeforeValidator(_check_endpoint)]


class ConfigModel(BaseModel):
    """Base of every component config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def pydantic_problems(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[ConfigProblem]:
    """Pydantic's errors as the pipeline reports config problems: ``prefix::a::b[0]::c: message`` (a
    union's or a validator's branch is not a key), unknown keys grouped per mapping with the valid ones.
    Shared by the pipeline YAML (pipeline/service/config.py) and documents components read (rollouts)."""
    problems: list[ConfigProblem] = []
    extra: dict[tuple, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            extra.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif "input" in err and "(got " not in msg and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(ConfigProblem(_loc_path(prefix, loc), msg))
    for loc, keys in extra.items():
        valid = _valid_keys(model, loc)
        parent = _loc_path(prefix, loc).rpartition("::")[2] or "document"
        hint = f" (valid keys: {', '.join(valid)})" if valid else ""
        problems.append(ConfigProblem(_loc_path(prefix, loc), f"'{parent}' has invalid keys: {', '.join(keys)}{hint}"))
    return problems


def _loc_path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):  # pydantic's union and validator branches
            path = f"{path}::{part}" if path else str(part)
    return path


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = _model_in(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None

