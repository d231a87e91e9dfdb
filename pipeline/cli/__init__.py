"""`agent-sre`: the command line."""

from agent_sre.pipeline.cli.main import main

__all__ = ["main"]
