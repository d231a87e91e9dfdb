"""The service: config loading, graph building and lifecycle, HTTP servers, the admin API."""

from agent_sre.pipeline.service.graph import Service

__all__ = ["Service"]
