"""The nine faults: which calls each applies to, the errors they raise, and how they change an answer.

    fault               calls                   what the wrapped call does
    tool_timeout        tool                    waits ``delay`` (default 5 s), then raises ``ChaosTimeout`` (a TimeoutError)
    tool_error          tool                    raises ``ChaosToolError`` (HTTP: answers ``status``, default 500)
    tool_wrong_schema   tool                    runs, then returns the answer in a drifted shape (``mode``)
    llm_latency         llm                     waits ``delay`` (± ``jitter``), then runs
    llm_degraded        llm                     runs, then returns a degraded answer (``mode``)
    delegation_reject   delegation              raises ``ChaosDelegationRejected`` (HTTP: 403)
    credential_expire   tool, llm, delegation   raises ``ChaosCredentialExpired`` (a PermissionError; HTTP: 401)
    network_partition   tool, llm, delegation   raises ``ChaosNetworkPartition`` (a ConnectionError)
    cost_spike          llm                     runs, then multiplies the answer's token counts (and the
                                                span's ``gen_ai.usage.*``) by ``multiplier`` (default 10)

Every raised error is an ``InjectedFault`` too (``experiment_id``, ``fault_type``), so a test or an
agent can tell an injected failure from a real one, and is also the standard exception a real failure
of that kind would raise (a retry loop written for ``TimeoutError`` handles an injected timeout).

This module is the one table of fault types: the pipeline validates templates against it.
Standard library only.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["FAULT_TYPES", "CALL_KINDS", "InjectedFault", "ChaosTimeout", "ChaosToolError", "ChaosDelegationRejected",
           "ChaosCredentialExpired", "ChaosNetworkPartition", "drift", "degrade", "multiply_usage",
           "DRIFT_MODES", "DEGRADE_MODES", "DEFAULTS"]

CALL_KINDS = ("tool", "llm", "delegation")
ANY_CALL = CALL_KINDS
FAULT_TYPES: dict[str, tuple[str, ...]] = {
    "tool_timeout": ("tool",),
    "tool_error": ("tool",),
    "tool_wrong_schema": ("tool",),
    "llm_latency": ("llm",),
    "llm_degraded": ("llm",),
    "delegation_reject": ("delegation",),
    "credential_expire": ANY_CALL,
    "network_partition": ANY_CALL,
    "cost_spike": ("llm",),
}
# Faults that change the answer of a call that ran (the others act before the call, or instead of it).
AFTER_CALL = frozenset({"tool_wrong_schema", "llm_degraded", "cost_spike"})
DRIFT_MODES = ("rename", "nest", "stringify")
DEGRADE_MODES = ("truncate", "empty", "canned")
# Each fault's parameters and their defaults (seconds for delays); the pipeline fills them in.
DEFAULTS: dict[str, dict[str, Any]] = {
    "tool_timeout": {"delay": 5.0},
    "tool_error": {"message": "injected tool error", "status": 500},
    "tool_wrong_schema": {"mode": "rename"},
    "llm_latency": {"delay": 2.0, "jitter": 0.0},
    "llm_degraded": {"mode": "truncate", "keep": 0.25, "text": "I am not able to answer that."},
    "delegation_reject": {"message": "delegation rejected"},
    "credential_expire": {"message": "credentials expired"},
    "network_partition": {"message": "network unreachable"},
    "cost_spike": {"multiplier": 10.0},
}


class InjectedFault(Exception):
    """Raised by an injected fault; ``experiment_id`` and ``fault_type`` say which."""

    experiment_id: str = ""
    fault_type: str = ""

    def __init__(self, message: str, experiment_id: str = "", fault_type: str = ""):
        super().__init__(message)
        self.experiment_id = experiment_id
        self.fault_type = fault_type


class ChaosTimeout(InjectedFault, TimeoutError):
    """tool_timeout: the call did not answer within its time."""


class ChaosToolError(InjectedFault, RuntimeError):
    """tool_error: the tool failed."""


class ChaosDelegationRejected(InjectedFault, RuntimeError):
    """delegation_reject: the delegate refused the task."""


class ChaosCredentialExpired(InjectedFault, PermissionError):
    """credential_expire: the call's credentials are no longer accepted."""


class ChaosNetworkPartition(InjectedFault, ConnectionError):
    """network_partition: the callee cannot be reached."""


ERRORS: dict[str, type[InjectedFault]] = {
    "tool_timeout": ChaosTimeout,
    "tool_error": ChaosToolError,
    "delegation_reject": ChaosDelegationRejected,
    "credential_expire": ChaosCredentialExpired,
    "network_partition": ChaosNetworkPartition,
}

_USAGE_INTS = ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")
_USAGE_FLOATS = ("cost", "cost_usd")


# --- tool_wrong_schema ----------------------------------------------------------------------------

def drift(value: Any, mode: str = "rename") -> Any:
    """The answer in the shape a changed upstream would send:

        rename      every key of an object gets the suffix ``_v2`` (a reader of ``answer["city"]`` fails)
        nest        the answer moves under ``{"data": ..., "schema_version": 2}``
        stringify   every number and boolean becomes a string

    A JSON text is drifted as JSON and dumped back; a pydantic-like object becomes its drifted dict.
    """
    if isinstance(value, (str, bytes)):
        try:
            parsed = json.loads(value)
        except ValueError:
            return json.dumps({"data": value if isinstance(value, str) else value.decode("utf-8", "replace"),
                               "schema_version": 2})
        text = json.dumps(drift(parsed, mode))
        return text if isinstance(value, str) else text.encode()
    if hasattr(value, "model_dump"):
        return drift(value.model_dump(), mode)
    if mode == "nest":
        return {"data": value, "schema_version": 2}
    if mode == "stringify":
        return _stringify(value)
    if isinstance(value, dict):
        return {f"{k}_v2": v for k, v in value.items()}
    if isinstance(value, list):
        return [drift(v, mode) if isinstance(v, dict) else v for v in value]
    return {"data": value, "schema_version": 2}


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    if isinstance(value, (bool, int, float)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


# --- llm_degraded ---------------------------------------------------------------------------------

def degrade(value: Any, mode: str = "truncate", keep: float = 0.25, text: str = DEFAULTS["llm_degraded"]["text"]) -> Any:
    """The answer, degraded: ``truncate`` keeps the first ``keep`` of its text, ``empty`` leaves none,
    ``canned`` replaces it with ``text``.  Finds the text of an OpenAI chat completion (object or
    dict: ``choices[].message.content``), a Responses API answer (``output[].content[].text``), an
    Anthropic message (``content[].text``), a plain string, or a dict's ``text``/``content``/``answer``."""
    if isinstance(value, str):
        if mode == "empty":
            return ""
        if mode == "canned":
            return text
        return value[:max(1, int(len(value) * keep))] if value else value
    if isinstance(value, dict):
        out = dict(value)
        if isinstance(out.get("choices"), list):
            out["choices"] = [_degrade_choice(c, mode, keep, text) for c in out["choices"]]
        elif isinstance(out.get("output"), list):
            out["output"] = [{**o, "content": [{**p, "text": degrade(p["text"], mode, keep, text)}
                                               if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                                               for p in o.get("content") or []]}
                             if isinstance(o, dict) else o for o in out["output"]]
        elif isinstance(out.get("content"), list):
            out["content"] = [{**p, "text": degrade(p["text"], mode, keep, text)}
                              if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in out["content"]]
        else:
            for key in ("text", "content", "answer"):
                if isinstance(out.get(key), str):
                    out[key] = degrade(out[key], mode, keep, text)
        return out
    choices = getattr(value, "choices", None)
    if isinstance(choices, list):  # an SDK object (openai's ChatCompletion): changed in place
        for choice in choices:
            message = getattr(choice, "message", None)
            if message is not None and isinstance(getattr(message, "content", None), str):
                message.content = degrade(message.content, mode, keep, text)
    return value


def _degrade_choice(choice: Any, mode: str, keep: float, text: str) -> Any:
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return choice
    message = choice["message"]
    if isinstance(message.get("content"), str):
        message = {**message, "content": degrade(message["content"], mode, keep, text)}
    return {**choice, "message": message}


# --- cost_spike -----------------------------------------------------------------------------------

def multiply_usage(value: Any, multiplier: float) -> Any:
    """The answer with its token counts (and any cost) multiplied: a dict's or an object's ``usage``
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``input_tokens``, ``output_tokens``)."""
    if isinstance(value, dict):
        usage = value.get("usage")
        if isinstance(usage, dict):
            return {**value, "usage": _multiplied(usage, multiplier)}
        return value
    usage = getattr(value, "usage", None)
    if usage is not None:
        for key in _USAGE_INTS + _USAGE_FLOATS:
            current = getattr(usage, key, None)
            if isinstance(current, (int, float)) and not isinstance(current, bool):
                setattr(usage, key, round(current * multiplier) if key in _USAGE_INTS else current * multiplier)
    return value


def _multiplied(usage: dict, multiplier: float) -> dict:
    out = dict(usage)
    for key, current in usage.items():
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            continue
        if key in _USAGE_INTS:
            out[key] = round(current * multiplier)
        elif key in _USAGE_FLOATS:
            out[key] = current * multiplier
    return out
