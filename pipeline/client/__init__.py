"""What runs inside an agent: standard library only at import (no pipeline dependency)."""

from agent_sre.pipeline.client.decisions import DecisionClient, should_proceed

__all__ = ["DecisionClient", "should_proceed"]
