"""The service: config loading, graph building and lifecycle, HTTP servers, the admin API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_sre.pipeline.service.graph import Service

__all__ = ["Service"]


def __getattr__(name: str) -> Any:
    # Loaded when asked for: the CLI reads configs through this package without starting a pipeline.
    if name == "Service":
        from agent_sre.pipeline.service.graph import Service

        return Service
    raise AttributeError(name)
