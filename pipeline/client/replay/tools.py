"""Tool results from a replay: inside an agent re-run by ``agent-sre replay``, a tool returns what it
returned in the recorded trace instead of running (standard library only).

    from agent_sre.replay.tools import replayable

    @replayable                      # or @replayable(name="get_weather", decode=json.loads)
    def get_weather(city: str) -> str:
        ...                          # runs normally; under a replay, the recorded result is returned

    recorded("get_weather", {"city": "Paris"})   # the same, called directly -> the recorded result (text)

Under a replay ``AGENT_SRE_REPLAY_URL`` is set (``agent-sre replay`` prints it and sets it for the
command it runs); without it ``replayable`` runs the tool and ``recorded`` raises ``ReplayNotActive``.
The k-th call of a tool is answered with the k-th recorded call of that tool if the arguments are
equal as JSON (``POST {AGENT_SRE_REPLAY_URL}/v1/tools/{name}``).  A call the recording does not hold
raises ``ReplayDiverged`` (the server records it for the report), unless the replay was started with
``--passthrough``: then ``replayable`` runs the real tool.  A tool whose recorded span ended in error
raises ``RecordedToolError`` with the recorded message.

Recorded results are text (span attributes are): ``decode`` turns them back into the tool's return
type.  The arguments sent are the call's bound arguments by parameter name (defaults not filled in),
which is what an agent records when it passes a model's tool-call arguments as keyword arguments.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar, overload

__all__ = ["REPLAY_URL_ENV", "RecordedToolError", "ReplayDiverged", "ReplayNotActive", "recorded", "replayable"]

REPLAY_URL_ENV = "AGENT_SRE_REPLAY_URL"
TIMEOUT_S = 30.0

F = TypeVar("F", bound=Callable[..., Any])


class ReplayNotActive(RuntimeError):
    """``recorded`` was called without a replay (``AGENT_SRE_REPLAY_URL`` is not set)."""


class ReplayDiverged(RuntimeError):
    """The recording holds no such call: the re-run has diverged from the recorded trace."""

    def __init__(self, message: str, divergence: dict | None = None, run_locally: bool = False):
        super().__init__(message)
        self.divergence = divergence or {}
        self.run_locally = run_locally


class RecordedToolError(RuntimeError):
    """The tool failed in the recorded run; replayed, it fails again with the recorded message."""


def replay_url() -> str | None:
    url = os.environ.get(REPLAY_URL_ENV, "").strip()
    return url.rstrip("/") or None


def recorded(tool_name: str, arguments: Any = None, *, url: str | None = None) -> str | None:
    """The recorded result (text; None if none was recorded) of calling ``tool_name`` with ``arguments``."""
    base = url or replay_url()
    if not base:
        raise ReplayNotActive(f"no replay is running: {REPLAY_URL_ENV} is not set")
    request = urllib.request.Request(
        f"{base}/v1/tools/{urllib.parse.quote(tool_name, safe='')}",
        data=json.dumps({"arguments": arguments}, default=str).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise _failure(tool_name, exc) from None
    except urllib.error.URLError as exc:
        raise ReplayDiverged(f"the replay server at {base} does not answer: {exc.reason}") from None
    if body.get("error") is not None:
        raise RecordedToolError(str(body["error"]))
    return body.get("result")


def _failure(tool_name: str, exc: urllib.error.HTTPError) -> ReplayDiverged:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    message = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
    return ReplayDiverged(message or f"replay server answered {exc.code} to tool {tool_name}",
                          body.get("divergence"), bool(body.get("run_locally")))


@overload
def replayable(fn: F) -> F: ...
@overload
def replayable(fn: None = None, *, name: str | None = None,
               decode: Callable[[str], Any] | None = None) -> Callable[[F], F]: ...


def replayable(fn: Callable[..., Any] | None = None, *, name: str | None = None,
               decode: Callable[[str], Any] | None = None) -> Any:
    """Decorate a tool so that, under a replay, it returns its recorded result instead of running."""

    def wrap(tool: F) -> F:
        tool_name = name or tool.__name__
        signature = inspect.signature(tool)

        @functools.wraps(tool)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not replay_url():
                return tool(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            try:
                result = recorded(tool_name, dict(bound.arguments))
            except ReplayDiverged as exc:
                if exc.run_locally:
                    return tool(*args, **kwargs)
                raise
            return decode(result) if decode is not None and result is not None else result

        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
