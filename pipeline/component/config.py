"""The value types every component config is made of: a pydantic base that rejects unknown keys,
durations ('200ms', '5s', '1h', '7d') and host:port endpoints."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

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
