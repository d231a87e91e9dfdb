"""Errors of the pipeline.

    AgentSreError
    ├── ConfigError          the pipeline YAML is invalid; carries every problem with its YAML path
    ├── TransitionError      an incident lifecycle change that is not allowed (``status``: 404, 409, 400)
    ├── QuestionError        a question a component cannot answer as asked (``status``: 400, 403, 404, 503)
    └── ConsumeError         a batch could not be taken
        ├── RefusedError     retryable: memory limit, queue full, store busy (OTLP: 503 / UNAVAILABLE)
        └── PermanentError   the data can never be taken (OTLP: 400 / INVALID_ARGUMENT)

Errors from lower layers (duckdb, grpc, aiohttp) are mapped once, where they are
caught, to the most specific class here, with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentSreError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    path: str  # YAML path with '::' separators, e.g. "processors::batch::timeout"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(AgentSreError):
    def __init__(self, problems: list[ConfigProblem], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid configuration {source} ({count}):\n{lines}")


class TransitionError(AgentSreError, ValueError):
    """An incident state change that is not allowed: ``status`` 404 (no such open incident), 409 (not
    from its current state) or 400 (an unknown action or state)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class QuestionError(AgentSreError, ValueError):
    """A question to a component (a diff, a what-if, a golden check) that it cannot answer as asked: the
    admin API answers ``status`` with the message (400 a bad question, 403 not for this caller, 404 what
    it asks about is not stored, 503 too big for the store's memory now)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ConsumeError(AgentSreError):
    """A batch was not taken."""


class RefusedError(ConsumeError):
    """Retryable refusal; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ConsumeError):
    """The data can never be taken; retrying will not help."""
