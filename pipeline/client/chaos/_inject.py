"""``Chaos``: the experiments of one agent, and the wrappers that inject their faults into its calls."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from agent_sre.pipeline.client.decisions import DecisionClient

from ._experiments import Experiment, Fault, parse
from .faults import AFTER_CALL, ERRORS, degrade, drift, multiply_usage

F = TypeVar("F", bound=Callable[..., Any])
_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("agent_sre_chaos_session", default=None)
_NONE: list[Experiment] = []


class Chaos:
    """The chaos experiments the pipeline declares for ``agent``, injected into the calls it wraps.

    ``endpoint``: the pipeline's decisions API; its answer is asked again every ``refresh`` seconds
    (through ``decisions``, a ``DecisionClient``, when given: one cache for both).  With
    ``experiments`` (dicts as the pipeline announces them) nothing is asked: local experiments.
    When the pipeline cannot be asked, no fault is injected.  ``replica``: mixed into the random
    streams, for replicas of one agent that should not fail in lockstep."""

    def __init__(self, agent: str, endpoint: str = "http://127.0.0.1:13133", *, refresh: float = 1.0,
                 decisions: DecisionClient | None = None, experiments: list[dict] | None = None,
                 replica: str = "", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        if refresh < 0:
            raise ValueError("refresh must be >= 0 seconds")
        self.agent = agent
        self.replica = replica
        self.clock = clock
        self.sleep = sleep
        self._static = experiments
        self._decisions = None if experiments is not None else (
            decisions or DecisionClient(endpoint, cache_ttl=refresh, fail_open=True))
        self._answer: Any = object()  # the decision answer the parsed experiments come from
        self._experiments: list[Experiment] = _NONE
        self._lock = threading.Lock()
        self.injected = 0  # faults injected by this helper (a counter for tests and logs)
        if experiments is not None:
            self._experiments = parse(experiments, agent, replica)

    # --- which experiments, which fault --------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        """The experiments in force for this agent (asked of the pipeline at most every ``refresh`` s)."""
        if self._decisions is None:
            return self._experiments
        answer = self._decisions.decision(self.agent)
        if answer is self._answer:  # the cached answer: parsed already
            return self._experiments
        with self._lock:
            if answer is not self._answer:
                entries = answer.get("chaos") if isinstance(answer, dict) else None
                known = {e.id: e for e in self._experiments}
                self._experiments = parse(entries, self.agent, self.replica, known) if entries else _NONE
                self._answer = answer
        return self._experiments

    def pick(self, kind: str, name: str | None = None, session: str | None = None) -> Fault | None:
        """The fault a call of ``kind`` (tool, llm, delegation) named ``name`` (the tool, model or
        delegate) gets now, or None.  ``session``: else the ``session()`` context's, else the trace's."""
        experiments = self.experiments()
        if not experiments:
            return None
        now = self.clock()
        for exp in experiments:
            if session is None and exp.sessions < 1.0:  # only a partial blast radius needs the session
                session = _session.get() or _trace_id()
            fault = exp.pick(kind, name, session, now)
            if fault is not None:
                self.injected += 1
                return fault
        return None

    @staticmethod
    @contextmanager
    def session(session_id: str) -> Iterator[None]:
        """Calls inside are of this session (for a blast radius of a share of sessions)."""
        token = _session.set(session_id)
        try:
            yield
        finally:
            _session.reset(token)

    # --- decorators -----------------------------------------------------------------------------

    def tool(self, name: str | Callable | None = None) -> Any:
        """``@chaos.tool`` or ``@chaos.tool("search")``: tool faults for the decorated function."""
        return self._decorator("tool", name)

    def llm(self, model: str | Callable | None = None) -> Any:
        """``@chaos.llm("gpt-4o")``: LLM faults (latency, degraded answers, cost spikes, ...)."""
        return self._decorator("llm", model)

    def delegation(self, delegate: str | Callable | None = None) -> Any:
        """``@chaos.delegation("billing-agent")``: a delegation to another agent (rejections, ...)."""
        return self._decorator("delegation", delegate)

    def _decorator(self, kind: str, name: str | Callable | None) -> Any:
        if callable(name):  # used bare: @chaos.tool
            return self._wrap(kind, getattr(name, "__name__", None), name)
        return lambda fn: self._wrap(kind, name or getattr(fn, "__name__", None), fn)

    def _wrap(self, kind: str, name: str | None, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                fault = self.pick(kind, name)
                if fault is None:
                    return await fn(*args, **kwargs)
                await self._before_async(fault, kind, name)
                return self._after(fault, await fn(*args, **kwargs))

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fault = self.pick(kind, name)
            if fault is None:
                return fn(*args, **kwargs)
            self._before(fault, kind, name)
            return self._after(fault, fn(*args, **kwargs))

        return wrapper  # type: ignore[return-value]

    # --- context manager ------------------------------------------------------------------------

    def call(self, kind: str, name: str | None = None, session: str | None = None) -> Call:
        """``with chaos.call("tool", "search") as c: answer = c.result(search(q))``: faults that act
        before the call raise or wait on entering; ``c.result(answer)`` applies the ones that change
        the answer (``c.fault``: the fault, or None)."""
        return Call(self, kind, name, session)

    # --- HTTP ------------------------------------------------------------------------------------

    def transport(self, inner: Any, kind: str | None = None, name: str | None = None) -> Any:
        """``inner`` (an httpx transport, sync or async, or a requests adapter) with chaos: see
        ``agent_sre.chaos._transport``.  ``kind``/``name``: every request is this call (else from its URL)."""
        from ._transport import wrap

        return wrap(self, inner, kind, name)

    # --- the faults -------------------------------------------------------------------------------

    def _before(self, fault: Fault, kind: str, name: str | None) -> None:
        """Wait and/or raise, as the fault does before (or instead of) the call; tag the span."""
        delay = _delay(fault)
        if delay:
            self.sleep(delay)
        self._raise_or_tag(fault, kind, name, delay)

    async def _before_async(self, fault: Fault, kind: str, name: str | None) -> None:
        delay = _delay(fault)
        if delay:
            await asyncio.sleep(delay)
        self._raise_or_tag(fault, kind, name, delay)

    @staticmethod
    def _raise_or_tag(fault: Fault, kind: str, name: str | None, delay: float) -> None:
        error = ERRORS.get(fault.type)
        if error is None:
            if fault.type not in AFTER_CALL:
                tag_span(fault)  # llm_latency: the call goes on, late
            return
        message = describe(fault, kind, name, delay)
        tag_span(fault, message)
        raise error(message, fault.experiment_id, fault.type)

    @staticmethod
    def _after(fault: Fault, result: Any) -> Any:
        if fault.type not in AFTER_CALL:
            return result
        tag_span(fault)
        return change_answer(fault, result)


class Call:
    """One wrapped call (``Chaos.call``): a context manager whose entry draws the fault and does what it
    does before the call; ``fault`` and ``result(answer)`` inside.  A class, not a generator: entering
    costs a fraction (bench/chaos.py)."""

    __slots__ = ("_chaos", "_kind", "_name", "_session", "fault")

    def __init__(self, chaos: Chaos, kind: str, name: str | None, session: str | None):
        self._chaos = chaos
        self._kind = kind
        self._name = name
        self._session = session
        self.fault: Fault | None = None

    def __enter__(self) -> Call:
        self.fault = fault = self._chaos.pick(self._kind, self._name, self._session)
        if fault is not None:
            self._chaos._before(fault, self._kind, self._name)
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def result(self, answer: Any) -> Any:
        """The answer as the fault changes it (unchanged without one)."""
        return answer if self.fault is None else Chaos._after(self.fault, answer)


def _delay(fault: Fault) -> float:
    if fault.type == "tool_timeout":
        return float(fault.param("delay"))
    if fault.type == "llm_latency":
        jitter = float(fault.param("jitter") or 0.0)
        return max(0.0, float(fault.param("delay")) + (fault.rng.uniform(-jitter, jitter) if jitter else 0.0))
    return 0.0


def describe(fault: Fault, kind: str, name: str | None, delay: float = 0.0) -> str:
    what = f"{kind} {name}" if name else kind
    if fault.type == "tool_timeout":
        return f"chaos {fault.experiment_id}: {what} timed out after {delay:g}s"
    return f"chaos {fault.experiment_id}: {what}: {fault.param('message')}"


def change_answer(fault: Fault, result: Any) -> Any:
    """The answer as an after-call fault changes it (span attributes included for cost_spike)."""
    if fault.type == "tool_wrong_schema":
        return drift(result, fault.param("mode"))
    if fault.type == "llm_degraded":
        return degrade(result, fault.param("mode"), float(fault.param("keep")), fault.param("text"))
    multiplier = float(fault.param("multiplier"))
    _multiply_span_usage(multiplier)
    return multiply_usage(result, multiplier)


# --- the current OpenTelemetry span -----------------------------------------------------------------
# Only through sys.modules: a span can be current only in a process that loaded the OTel API, and this
# package imports nothing outside the standard library (the agent pays no import for it).

def _current_span() -> Any:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def tag_span(fault: Fault, error: str | None = None) -> None:
    """``chaos.experiment.id`` and ``chaos.fault.type`` on the current span; an error status when the
    fault failed the call."""
    span = _current_span()
    if span is None:
        return
    span.set_attribute("chaos.experiment.id", fault.experiment_id)
    span.set_attribute("chaos.fault.type", fault.type)
    if error is not None:
        trace = sys.modules["opentelemetry.trace"]
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))


def _multiply_span_usage(multiplier: float) -> None:
    """cost_spike on a span that already carries token counts (the SDK's spans expose ``attributes``)."""
    span = _current_span()
    if span is None:
        return
    span.set_attribute("chaos.cost.multiplier", multiplier)
    attributes = getattr(span, "attributes", None) or {}
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cost"):
        value = attributes.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            span.set_attribute(key, round(value * multiplier) if isinstance(value, int) else value * multiplier)


def _trace_id() -> str | None:
    """The current trace, as the session of a call made outside any ``session()`` context."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else None
