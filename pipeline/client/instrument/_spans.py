"""``task`` and ``tool``: the spans agent-sre's SLOs and budgets count, for code that has none.

A task span is a GenAI ``invoke_agent`` span carrying ``agent.task.name`` and ``agent.task.success``
(pipeline/pdata/conventions.yaml maps it to span_role ``agent_task``, ``task_name`` and
``task_success``; the task-success SLI counts it, the per-task budget charges its trace).  It is
the root of what the agent does inside it, so the LLM and tool spans made there share its trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._provider import Agent, current

SCOPE = "agent_sre.instrument"


class Task:
    """What ``task`` yields: the span, and the task's outcome.

    The outcome is success on a normal exit and failure on an exception, unless set here first:
    ``fail(reason)`` (an answer that is not good enough is a failed task without any exception),
    ``succeed()`` (an exception the agent recovered from), or ``success = True | False``."""

    def __init__(self, span: Any, name: str):
        self.span = span
        self.name = name
        self.success: bool | None = None
        self.reason = ""

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def fail(self, reason: str = "") -> None:
        self.success, self.reason = False, reason

    def succeed(self) -> None:
        self.success, self.reason = True, ""

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)


def _tracer(agent: Agent) -> Any:
    return agent.provider.get_tracer(SCOPE)


@contextmanager
def task(name: str, session_id: str | None = None, *, attributes: dict[str, Any] | None = None) -> Iterator[Task]:
    """The task span (``invoke_agent {agent}``) around one task of the agent; see ``Task`` for its outcome."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if not name:
        raise ValueError("a task needs a name")
    agent = current()
    attrs: dict[str, Any] = {**(attributes or {}), "gen_ai.operation.name": "invoke_agent",
                             "gen_ai.agent.id": agent.agent_id, "agent.task.name": name}
    if agent.agent_name:
        attrs["gen_ai.agent.name"] = agent.agent_name
    if agent.agent_version:
        attrs["gen_ai.agent.version"] = agent.agent_version
    if session_id is not None:
        attrs["gen_ai.conversation.id"] = session_id
    with _tracer(agent).start_as_current_span(f"invoke_agent {agent.agent_name or agent.agent_id}",
                                               kind=SpanKind.INTERNAL, attributes=attrs, record_exception=False,
                                               set_status_on_exception=False) as span:
        t = Task(span, name)
        failure: BaseException | None = None
        try:
            yield t
        except BaseException as exc:  # KeyboardInterrupt and cancellation end the task too, unfinished
            failure = exc
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            success = t.success if t.success is not None else failure is None
            span.set_attribute("agent.task.success", success)
            if success:
                span.set_status(Status(StatusCode.OK))
            else:
                reason = t.reason or (f"{type(failure).__qualname__}: {failure}" if failure is not None else "")
                span.set_status(Status(StatusCode.ERROR, reason or None))


@contextmanager
def tool(name: str, call_id: str | None = None, *, arguments: str | None = None,
         attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """An ``execute_tool {name}`` span around one tool call (yields the span); an exception marks it
    failed (status error, ``error.type``), which the tool-accuracy SLI and the breakers count."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if not name:
        raise ValueError("a tool needs a name")
    attrs: dict[str, Any] = {**(attributes or {}), "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
    if call_id is not None:
        attrs["gen_ai.tool.call.id"] = call_id
    if arguments is not None:
        attrs["gen_ai.tool.call.arguments"] = arguments
    with _tracer(current()).start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attrs,
                                                  record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
            raise
