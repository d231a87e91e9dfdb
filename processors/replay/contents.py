"""The recorded contents of a trace: what each LLM call was asked and answered, what each tool got and gave.

Replay serves these back to a re-running agent (``server.py``) and diff compares them
(``span_output``).  Instrumentations record contents in different places; every one below is read,
and whichever a span has is used (first match wins, in this order):

LLM spans (``span_role = 'llm'``)
  1. OTel GenAI, current: span attributes ``gen_ai.input.messages`` / ``gen_ai.output.messages``
     (JSON lists of ``{role, parts: [{type: text|tool_call|tool_call_response, ...}], finish_reason}``)
     and ``gen_ai.system_instructions`` (JSON list of parts).  opentelemetry-instrumentation-openai-v2
     writes them with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` and
     ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=span_only``.
  2. The same keys on a ``gen_ai.client.inference.operation.details`` event (a span event, or a log
     record in the store's ``logs`` table with the span's trace and span id): ``event_only``.
  3. OTel GenAI v1.30 events (``CAPTURE_MESSAGE_CONTENT=true`` without the opt-in): log records
     or span events ``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.assistant.message``,
     ``gen_ai.tool.message`` (body ``{content, tool_calls, id}``) and ``gen_ai.choice`` (body
     ``{index, finish_reason, message: {content, tool_calls}}``); on a span event the body is the
     attribute ``gen_ai.event.content`` (JSON), else the attributes ``content``/``tool_calls``/``id``.
  4. The 2024 span events ``gen_ai.content.prompt`` (attribute ``gen_ai.prompt``) and
     ``gen_ai.content.completion`` (``gen_ai.completion``), JSON lists of OpenAI-style messages.
  5. OpenInference: ``llm.input_messages.N.message.{role,content,name,tool_call_id}``,
     ``...message.contents.K.message_content.text``,
     ``...message.tool_calls.J.tool_call.{id,function.name,function.arguments}``, and the same under
     ``llm.output_messages.N``; without them ``input.value`` (an OpenAI request: ``messages``,
     ``input``/``instructions``, ``system``) and ``output.value`` (an OpenAI, Responses or
     Anthropic response).
  6. OpenLLMetry (and the deprecated GenAI attributes): ``gen_ai.prompt.N.{role,content,tool_call_id}``,
     ``gen_ai.prompt.N.tool_calls.J.{id,name,arguments}``, ``gen_ai.completion.N.{role,content,
     finish_reason}``, ``gen_ai.completion.N.tool_calls.J.{id,name,arguments}``.

Tool spans (``span_role = 'tool'``): the tool's name from the ``tool_name`` column; its arguments
and result from ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result`` (GenAI),
``input.value`` / ``output.value`` (OpenInference), or ``traceloop.entity.input`` /
``traceloop.entity.output`` (OpenLLMetry); its call id from ``gen_ai.tool.call.id``.

Every source is turned into one message shape, so a request in any API's format can be compared
with a recording made through any instrumentation::

    {"role": "system|user|assistant|tool", "content": str | None,
     "tool_calls": [{"id": str | None, "name": str, "arguments": <parsed JSON, or the text>}],
     "tool_call_id": str | None}

A trace whose LLM spans hold none of these raises ``ContentsMissing`` naming the setting that
records them; one whose contents carry the redaction processor's ``[REDACTED:<rule>]`` mask raises
``ContentsRedacted``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from agent_sre.processors.replay.traces import trace_spans

Read = Callable[[str, list], list[tuple]]
Message = dict[str, Any]

# The redaction processor's mask (processors/redaction/redact.py): [REDACTED:<rule>] or [REDACTED:<rule>:<hmac>].
REDACTION_MARK = re.compile(r"\[REDACTED:([a-z][a-z0-9_]*)(?::[0-9a-f]+)?\]")
# The genai-content preset of the redaction processor (processors/redaction/rules.py) renames a content
# attribute to <key>.length (its value: the content's length).
CONTENT_LENGTH_SUFFIX = ".length"
_CONTENT_KEY = re.compile(r"^(gen_ai\.(input|output)\.messages|gen_ai\.system_instructions|gen_ai\.(prompt|completion)"
                          r"(\..*)?|llm\.(input|output)_messages\..*|input\.value|output\.value|"
                          r"gen_ai\.tool\.call\.(arguments|result)|traceloop\.entity\.(input|output))$")
# What OpenInference writes instead of a value it was told to hide (openinference.instrumentation.config).
OPENINFERENCE_HIDDEN = "__REDACTED__"

CAPTURE_SETTINGS = (
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true for the OpenTelemetry GenAI instrumentations "
    "(span_only, with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, puts them on the span)",
    "OPENINFERENCE_HIDE_INPUTS / OPENINFERENCE_HIDE_OUTPUTS (and *_INPUT_MESSAGES / *_OUTPUT_MESSAGES) "
    "unset for OpenInference",
    "TRACELOOP_TRACE_CONTENT=true for OpenLLMetry",
)

_EVENT_ROLES = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_LLM_OPERATIONS = {"chat", "text_completion", "generate_content"}


class ContentsError(Exception):
    """The trace cannot be replayed from its recorded contents (the message says why and what to do)."""


class TraceNotFound(ContentsError):
    pass


class ContentsMissing(ContentsError):
    """LLM spans without any recorded messages: the instrumentation was not asked to record them."""


class ContentsRedacted(ContentsError):
    """Recorded contents carry the redaction processor's mask: serving them would not reproduce the run."""


# --- small parsers --------------------------------------------------------------------------

def _json(value: Any) -> Any:
    """A stored attribute value parsed as JSON when it is JSON text (arrays and maps are stored so)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{\"" and text not in ("null", "true", "false") and not _is_number(text):
        return value
    try:
        return json.loads(text)
    except ValueError:
        return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str | None:
    """A content value as text: strings as they are, lists of parts joined, anything else as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [t for t in (_part_text(p) for p in value) if t is not None]
        return "\n".join(texts) if texts else None
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return None
    if part.get("type") in (None, "text", "input_text", "output_text"):
        for key in ("text", "content"):
            if isinstance(part.get(key), str):
                return part[key]
    return None  # images, audio, reasoning: not compared (see server.py's normalisation)


def arguments(value: Any) -> Any:
    """Tool-call arguments as a value: JSON text parsed, so key order and spacing do not matter."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _call(id_: Any, name: Any, args: Any) -> dict:
    return {"id": id_ if isinstance(id_, str) and id_ else None, "name": str(name or ""), "arguments": arguments(args)}


def _message(role: str, content: Any = None, tool_calls: list | None = None, tool_call_id: Any = None) -> Message:
    return {"role": "system" if role == "developer" else role, "content": _text(content),
            "tool_calls": tool_calls or [], "tool_call_id": tool_call_id if isinstance(tool_call_id, str) else None}


def _indexed(attributes: dict, prefix: str) -> dict[int, dict[str, Any]]:
    """``prefix.N.rest`` keys grouped by N: {N: {rest: value}}, N ascending."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith(prefix):
            n, _, rest = key[len(prefix):].partition(".")
            if n.isdigit() and rest:
                groups.setdefault(int(n), {})[rest] = value
    return dict(sorted(groups.items()))


# --- OpenAI-, Responses- and Anthropic-shaped messages (also what server.py receives) --------

def openai_messages(messages: Iterable[Any]) -> list[Message]:
    """Chat Completions messages (``role``, ``content``, ``tool_calls``, ``tool_call_id``)."""
    out = []
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        calls = [_call(c.get("id"), (c.get("function") or {}).get("name", c.get("name")),
                       (c.get("function") or {}).get("arguments", c.get("arguments")))
                 for c in m.get("tool_calls") or [] if isinstance(c, dict)]
        if m.get("function_call"):  # the pre-tools API
            fc = m["function_call"]
            calls.append(_call(None, fc.get("name"), fc.get("arguments")))
        out.append(_message(str(m.get("role") or "user"), m.get("content"), calls, m.get("tool_call_id")))
    return out


def responses_messages(instructions: Any, items: Any) -> list[Message]:
    """A Responses API ``instructions`` and ``input`` (a string, or a list of items)."""
    out = [_message("system", instructions)] if instructions else []
    if isinstance(items, str):
        return out + [_message("user", items)]
    for item in items or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" or "role" in item and kind not in ("function_call", "function_call_output"):
            out.append(_message(str(item.get("role") or "user"), item.get("content")))
        elif kind == "function_call":
            call = _call(item.get("call_id") or item.get("id"), item.get("name"), item.get("arguments"))
            if out and out[-1]["role"] == "assistant" and (out[-1]["tool_calls"] or out[-1]["content"] is None):
                out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append(_message("assistant", None, [call]))
        elif kind == "function_call_output":
            out.append(_message("tool", item.get("output"), tool_call_id=item.get("call_id")))
    return out


def anthropic_messages(system: Any, messages: Any) -> list[Message]:
    """An Anthropic Messages request: ``system`` and ``messages`` of text/tool_use/tool_result blocks."""
    out = [_message("system", system)] if system else []
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        role, content = str(m.get("role") or "user"), m.get("content")
        if isinstance(content, str):
            out.append(_message(role, content))
            continue
        blocks = [b for b in content or [] if isinstance(b, dict)]
        for b in blocks:  # tool results become tool messages, as in the other APIs
            if b.get("type") == "tool_result":
                out.append(_message("tool", b.get("content"), tool_call_id=b.get("tool_use_id")))
        rest = [b for b in blocks if b.get("type") != "tool_result"]
        calls = [_call(b.get("id"), b.get("name"), b.get("input")) for b in rest if b.get("type") == "tool_use"]
        text = [b for b in rest if b.get("type") == "text"]
        if text or calls:
            out.append(_message(role, text or None, calls))
    return out


def _request_messages(request: Any) -> list[Message] | None:
    """Messages of a recorded request body (OpenInference ``input.value``), whichever API it was."""
    if not isinstance(request, dict):
        return None
    if isinstance(request.get("messages"), list):
        if request.get("system") is not None or any(
                isinstance(m, dict) and isinstance(m.get("content"), list)
                and any(isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result") for b in m["content"])
                for m in request["messages"]):
            return anthropic_messages(request.get("system"), request["messages"])
        return openai_messages(request["messages"])
    if "input" in request:
        return responses_messages(request.get("instructions"), request["input"])
    return None


def response_of(body: Any) -> dict | None:
    """``{text, tool_calls, finish_reason}`` of a recorded response body (Chat, Responses or Anthropic)."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("choices"), list) and body["choices"]:
        choice = body["choices"][0]
        m = openai_messages([{"role": "assistant", **(choice.get("message") or {})}])[0]
        return {"text": m["content"], "tool_calls": m["tool_calls"], "finish_reason": choice.get("finish_reason")}
    if isinstance(body.get("output"), list):
        texts, calls = [], []
        for item in body["output"]:
            if isinstance(item, dict) and item.get("type") == "message":
                texts.append(_text(item.get("content")) or "")
            elif isinstance(item, dict) and item.get("type") == "function_call":
                calls.append(_call(item.get("call_id"), item.get("name"), item.get("arguments")))
        return {"text": "\n".join(texts) if texts else None, "tool_calls": calls,
                "finish_reason": "tool_calls" if calls else "stop"}
    if isinstance(body.get("content"), list) and body.get("type") == "message":
        said = anthropic_messages(None, [{"role": "assistant", "content": body["content"]}])
        m0 = said[0] if said else _message("assistant")
        return {"text": m0["content"], "tool_calls": m0["tool_calls"], "finish_reason": body.get("stop_reason")}
    return None


# --- the GenAI "parts" shape ------------------------------------------------------------------

def genai_messages(value: Any) -> list[Message]:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages``: messages of typed parts."""
    out = []
    for m in _json(value) or []:
        if not isinstance(m, dict):
            continue
        role, parts = str(m.get("role") or "user"), m.get("parts") or []
        responses = [p for p in parts if isinstance(p, dict) and p.get("type") == "tool_call_response"]
        for p in responses:  # one tool message per result, as the OpenAI API sends them
            out.append(_message("tool", _text(p.get("response")), tool_call_id=p.get("id")))
        calls = [_call(p.get("id"), p.get("name"), p.get("arguments"))
                 for p in parts if isinstance(p, dict) and p.get("type") == "tool_call"]
        texts = [p for p in parts if isinstance(p, dict) and p.get("type") == "text"]
        if texts or calls or not responses:
            msg = _message(role, texts or None, calls)
            if m.get("finish_reason"):
                msg["finish_reason"] = m["finish_reason"]
            out.append(msg)
    return out


def _system_instructions(value: Any) -> list[Message]:
    parts = _json(value)
    if isinstance(parts, list):
        text = _text([p for p in parts if isinstance(p, dict) and p.get("type", "text") == "text"])
    else:
        text = _text(parts)
    return [_message("system", text)] if text else []


def _response_from(messages: list[Message], finish_reason: Any = None) -> dict:
    texts = [m["content"] for m in messages if m["content"] is not None]
    calls = [c for m in messages for c in m["tool_calls"]]
    reason = finish_reason or next((m.get("finish_reason") for m in messages if m.get("finish_reason")), None)
    if isinstance(reason, list):
        reason = reason[0] if reason else None
    return {"text": "\n".join(texts) if texts else None, "tool_calls": calls, "finish_reason": reason}


# --- one LLM span ---------------------------------------------------------------------------

def _from_genai(attributes: dict) -> tuple[list[Message], dict] | None:
    if "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes:
        return None
    request = _system_instructions(attributes.get("gen_ai.system_instructions"))
    request += genai_messages(attributes.get("gen_ai.input.messages"))
    return request, _response_from(genai_messages(attributes.get("gen_ai.output.messages")),
                                   _json(attributes.get("gen_ai.response.finish_reasons")))


def _event_body(event: dict) -> dict:
    """A GenAI event's body: the log record's body, or a span event's ``gen_ai.event.content`` or attributes."""
    if event.get("body") is not None:
        body = _json(event["body"])
        return body if isinstance(body, dict) else {"content": body}
    attrs = event.get("attributes") or {}
    if "gen_ai.event.content" in attrs:
        body = _json(attrs["gen_ai.event.content"])
        return body if isinstance(body, dict) else {"content": body}
    return {k: _json(v) if k in ("tool_calls", "message") else v for k, v in attrs.items()}


def _from_events(events: list[dict]) -> tuple[list[Message], dict] | None:
    """The GenAI events of one span (span events and log records alike), in time order."""
    for e in events:
        if e.get("name") == _DETAILS_EVENT:
            found = _from_genai(e.get("attributes") or {})
            if found:
                return found
    request: list[Message] = []
    choices: list[Message] = []
    reason = None
    for e in events:
        name = e.get("name")
        if name in _EVENT_ROLES:
            body = _event_body(e)
            request += openai_messages([{"role": body.get("role") or _EVENT_ROLES[name], "content": body.get("content"),
                                         "tool_calls": _json(body.get("tool_calls")),
                                         "tool_call_id": body.get("id") or body.get("tool_call_id")}])
        elif name == "gen_ai.choice":
            body = _event_body(e)
            if int(body.get("index") or 0) == 0:
                choices += openai_messages([{"role": "assistant", **(_json(body.get("message")) or {})}])
                reason = body.get("finish_reason")
        elif name == "gen_ai.content.prompt":
            request += openai_messages(_json((e.get("attributes") or {}).get("gen_ai.prompt")) or [])
        elif name == "gen_ai.content.completion":
            choices += openai_messages(_json((e.get("attributes") or {}).get("gen_ai.completion")) or [])
    if not request and not choices:
        return None
    return request, _response_from(choices, reason)


def _indexed_messages(attributes: dict, prefix: str, inner: str, call_prefix: str,
                      call_keys: tuple[str, str, str]) -> list[Message]:
    """Messages flattened into ``prefix.N.<inner>field`` keys (OpenInference and OpenLLMetry)."""
    out = []
    for fields in _indexed(attributes, prefix).values():
        def get(key: str, fields: dict = fields) -> Any:
            return fields.get(inner + key)

        content = get("content")
        if content is None:
            parts = _indexed(fields, inner + "contents.")
            content = [{"type": "text", "text": p.get("message_content.text")} for p in parts.values()
                       if p.get("message_content.type", "text") == "text"] or None
        elif isinstance(content, str) and content[:1] == "[":
            parsed = _json(content)  # OpenLLMetry writes multi-part contents as JSON
            content = parsed if isinstance(parsed, list) else content
        calls = [_call(c.get(call_keys[0]), c.get(call_keys[1]), c.get(call_keys[2]))
                 for c in _indexed(fields, inner + call_prefix).values()]
        msg = _message(str(get("role") or "user"), content, calls, get("tool_call_id"))
        if get("finish_reason"):
            msg["finish_reason"] = get("finish_reason")
        out.append(msg)
    return out


def _from_openinference(attributes: dict) -> tuple[list[Message], dict] | None:
    keys = ("tool_call.id", "tool_call.function.name", "tool_call.function.arguments")
    request = _indexed_messages(attributes, "llm.input_messages.", "message.", "tool_calls.", keys)
    output = _indexed_messages(attributes, "llm.output_messages.", "message.", "tool_calls.", keys)
    if not request:
        request = _request_messages(_json(attributes.get("input.value"))) or []
    response = _response_from(output, attributes.get("llm.finish_reason")) if output else None
    if response is None:
        response = response_of(_json(attributes.get("output.value")))
        if response is None and isinstance(attributes.get("output.value"), str) and request:
            response = {"text": attributes["output.value"], "tool_calls": [], "finish_reason": None}
    if not request and response is None:
        return None
    return request, response or {"text": None, "tool_calls": [], "finish_reason": None}


def _from_openllmetry(attributes: dict) -> tuple[list[Message], dict] | None:
    keys = ("id", "name", "arguments")
    request = _indexed_messages(attributes, "gen_ai.prompt.", "", "tool_calls.", keys)
    output = _indexed_messages(attributes, "gen_ai.completion.", "", "tool_calls.", keys)
    for n, fields in _indexed(attributes, "gen_ai.completion.").items():  # the pre-tools API
        if fields.get("function_call.name") and n < len(output):
            output[n]["tool_calls"].append(_call(None, fields["function_call.name"], fields.get("function_call.arguments")))
    if not request and not output:
        return None
    return request, _response_from(output[:1])


_SOURCES: tuple[tuple[str, Callable[[dict], tuple[list[Message], dict] | None]], ...] = (
    ("gen_ai.input.messages", _from_genai),
    ("openinference", _from_openinference),
    ("gen_ai.prompt", _from_openllmetry),
)


def llm_contents(attributes: dict, events: list[dict] | None = None) -> tuple[str, list[Message], dict] | None:
    """(source, request messages, response) of one LLM span, from whichever convention it has."""
    found = _from_genai(attributes)
    if found:
        return ("gen_ai.input.messages", *found)
    found = _from_events(events or [])
    if found:
        return ("gen_ai events", *found)
    for source, parse in _SOURCES[1:]:
        found = parse(attributes)
        if found:
            return (source, *found)
    return None


def tool_contents(attributes: dict) -> tuple[str, Any, str | None] | None:
    """(source, arguments, result) of one tool span."""
    for source, arg_key, result_key in (("gen_ai.tool.call", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"),
                                        ("openinference", "input.value", "output.value"),
                                        ("traceloop", "traceloop.entity.input", "traceloop.entity.output")):
        if arg_key in attributes or result_key in attributes:
            result = attributes.get(result_key)
            return source, arguments(attributes.get(arg_key)), None if result is None else str(result)
    return None


def render_calls(calls: list[dict]) -> str:
    """Tool calls as ``name(arguments JSON)`` lines: an LLM answer that is only tool calls, as text."""
    return "\n".join(f"{c['name']}({json.dumps(c['arguments'], sort_keys=True, ensure_ascii=False)})" for c in calls)


def span_output(attributes: dict, events: list[dict] | None = None) -> str | None:
    """The output of one span as text: an LLM span's answer (its text, else its tool calls as
    ``name(arguments)`` lines), a tool span's result, or OpenInference's ``output.value``; None when
    nothing was recorded."""
    if attributes.get("gen_ai.tool.call.result") is not None:
        return str(attributes["gen_ai.tool.call.result"])
    llm = llm_contents(attributes, events)
    if llm is not None:
        response = llm[2]
        if response["text"] is not None or response["tool_calls"]:
            return response["text"] if response["text"] is not None else render_calls(response["tool_calls"])
    for key in ("output.value", "traceloop.entity.output"):
        if attributes.get(key) is not None:
            return str(attributes[key])
    return None


# --- one trace --------------------------------------------------------------------------------

_LOGS_SQL = """
SELECT span_id, event_name, body, attributes, time_ns FROM logs
WHERE trace_id = ? AND event_name LIKE 'gen_ai.%' ORDER BY time_ns"""


def _as_dict(value: Any) -> dict:
    """A MAP value as DuckDB hands it over (a dict; older versions: {'key': [...], 'value': [...]})."""
    if value is None:
        return {}
    if isinstance(value, dict) and set(value) == {"key", "value"} and isinstance(value["key"], list):
        return dict(zip(value["key"], value["value"], strict=False))
    return dict(value)


def read_spans(read: Read, trace_id: str) -> list[dict]:
    """Every span of the trace itself (not the traces linked to it: a replay re-runs one agent's
    run), as dicts with attributes as dicts, by start time."""
    return trace_spans(read, trace_id, follow_links=False)


def _log_events(read: Read, trace_id: str) -> dict[str, list[dict]]:
    """The GenAI log records of the trace, by span id (the ``logs`` table; absent in old stores)."""
    try:
        rows = read(_LOGS_SQL, [trace_id])
    except Exception:  # noqa: BLE001 - a store without a logs table: no events there
        return {}
    out: dict[str, list[dict]] = {}
    for span_id, name, body, attrs, time_ns in rows:
        out.setdefault(span_id or "", []).append(
            {"name": name, "body": body, "attributes": _as_dict(attrs), "time_ns": time_ns})
    return out


def _role(span: dict) -> str | None:
    """The span's role: the canonical column, else the attributes (spans stored without normalisation)."""
    if span.get("span_role") in ("llm", "tool"):
        return span["span_role"]
    a = span.get("attributes") or {}
    op = str(a.get("gen_ai.operation.name", "")).lower()
    kind = str(a.get("openinference.span.kind", "")).upper()
    if op == "execute_tool" or kind == "TOOL" or a.get("traceloop.span.kind") == "tool":
        return "tool"
    if op in _LLM_OPERATIONS or kind == "LLM" or a.get("llm.request.type") in ("chat", "completion"):
        return "llm"
    return None


def recording(spans: list[dict], log_events: dict[str, list[dict]] | None = None, trace_id: str = "") -> dict:
    """The recorded LLM exchanges and tool calls of a trace's spans, in start order::

        {"trace_id", "llm_calls": [{"step", "span_id", "name", "model", "source", "request": [messages],
                                    "response": {"text", "tool_calls", "finish_reason"},
                                    "input_tokens", "output_tokens"}],
         "tool_calls": [{"step", "span_id", "name", "call_id", "arguments", "result", "status",
                         "status_message", "source"}],
         "missing": [LLM steps without contents], "redacted": [{"step", "kind", "rules"}]}
    """
    llm_calls: list[dict] = []
    tool_calls: list[dict] = []
    missing: list[dict] = []
    for span in spans:
        role, attrs = _role(span), span.get("attributes") or {}
        if role == "llm" and attrs.get("gen_ai.operation.name") != "embeddings":
            events = list(span.get("events") or []) + (log_events or {}).get(span["span_id"], [])
            found = llm_contents(attrs, events)
            step = len(llm_calls) + len(missing) + 1
            hidden = _hidden(found) if found is not None else OPENINFERENCE_HIDDEN in attrs.values()
            if found is None or hidden:
                missing.append({"step": step, "span_id": span["span_id"], "name": span.get("name"),
                                "scope": span.get("scope_name"), "hidden": hidden,
                                "dropped": _dropped_contents(attrs)})
                continue
            source, request, response = found
            llm_calls.append({"step": step, "span_id": span["span_id"], "name": span.get("name"),
                              "model": span.get("model") or attrs.get("gen_ai.request.model"), "source": source,
                              "request": request, "response": response,
                              "input_tokens": _int(span.get("input_tokens"), attrs.get("gen_ai.usage.input_tokens")),
                              "output_tokens": _int(span.get("output_tokens"), attrs.get("gen_ai.usage.output_tokens"))})
        elif role == "tool":
            tool = tool_contents(attrs)
            name = span.get("tool_name") or attrs.get("gen_ai.tool.name") or attrs.get("tool.name") or span.get("name")
            tool_calls.append({"step": len(tool_calls) + 1, "span_id": span["span_id"], "name": name,
                               "call_id": attrs.get("gen_ai.tool.call.id"),
                               "arguments": tool[1] if tool else None, "result": tool[2] if tool else None,
                               "status": span.get("status_code"), "status_message": span.get("status_message"),
                               "source": tool[0] if tool else None})
    return {"trace_id": trace_id, "llm_calls": llm_calls, "tool_calls": tool_calls, "missing": missing,
            "redacted": _redactions(llm_calls, tool_calls)}


def _dropped_contents(attributes: dict) -> list[str]:
    """Content keys the redaction processor's ``genai-content`` preset replaced by ``<key>.length``."""
    return sorted(k for k in attributes if k.endswith(CONTENT_LENGTH_SUFFIX) and _CONTENT_KEY.match(k[:-7]))


def _int(*values: Any) -> int | None:
    for v in values:
        if v is None:
            continue
        try:
            return int(v)
        except (TypeError, ValueError):
            continue
    return None


def _hidden(found: tuple[str, list[Message], dict]) -> bool:
    """OpenInference told to hide inputs/outputs writes ``__REDACTED__``: nothing to serve."""
    _, request, response = found
    texts = [m["content"] for m in request] + [response["text"]]
    return any(t == OPENINFERENCE_HIDDEN for t in texts)


def _redactions(llm_calls: list[dict], tool_calls: list[dict]) -> list[dict]:
    out = []
    for kind, items in (("llm", llm_calls), ("tool", tool_calls)):
        for item in items:
            payload = json.dumps({k: item.get(k) for k in ("request", "response", "arguments", "result")},
                                 ensure_ascii=False)
            rules = sorted(set(REDACTION_MARK.findall(payload)))
            if rules:
                out.append({"kind": kind, "step": item["step"], "rules": rules})
    return out


def read_recording(read: Read, trace_id: str) -> dict:
    """The trace's recording (``recording``) as stored, whether or not it can be replayed."""
    spans = read_spans(read, trace_id)
    if not spans:
        raise TraceNotFound(f"no spans of trace {trace_id} in the store")
    return recording(spans, _log_events(read, trace_id), trace_id)


def load_recording(read: Read, trace_id: str) -> dict:
    """The trace's recording, refused with ``ContentsError`` when it cannot be replayed."""
    rec = read_recording(read, trace_id)
    check(rec)
    return rec


def reproduction(original: dict, rerun: dict) -> dict:
    """Whether a re-run reproduced the original: the tool-call sequence (names and arguments), each
    LLM answer (``span_output``'s text) and each tool result, step by step, exactly."""
    def calls(rec: dict) -> list[list]:
        return [[t["name"], t["arguments"]] for t in rec["tool_calls"]]

    def answer(call: dict | None) -> str | None:
        if call is None:
            return None
        r = call["response"]
        return r["text"] if r["text"] is not None else render_calls(r["tool_calls"])

    llm = [{"step": i + 1, "original": answer(a), "rerun": answer(b), "same": answer(a) == answer(b)}
           for i, (a, b) in enumerate(_pad(original["llm_calls"], rerun["llm_calls"]))]
    tools = [{"step": i + 1, "tool": (a or b or {}).get("name"), "original": a and a["result"],
              "rerun": b and b["result"], "same": a is not None and b is not None and a["result"] == b["result"]}
             for i, (a, b) in enumerate(_pad(original["tool_calls"], rerun["tool_calls"]))]
    sequence = {"original": calls(original), "rerun": calls(rerun), "same": calls(original) == calls(rerun)}
    return {"original": original["trace_id"], "rerun": rerun["trace_id"], "tool_sequence": sequence,
            "llm_outputs": llm, "tool_results": tools,
            "same": sequence["same"] and all(x["same"] for x in llm + tools) and not rerun["missing"]}


def _pad(a: list, b: list) -> list[tuple]:
    return [(a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(max(len(a), len(b)))]


def check(rec: dict) -> None:
    """Raise ``ContentsMissing`` / ``ContentsRedacted`` when the recording cannot be served."""
    trace_id = rec["trace_id"]
    dropped = [m for m in rec["missing"] if m["dropped"]]
    if dropped:
        where = "; ".join(f"LLM step {m['step']} ({', '.join(m['dropped'])})" for m in dropped)
        raise ContentsRedacted(
            f"trace {trace_id}: the message contents were removed by the redaction processor's genai-content "
            f"preset (only their lengths are stored: {where}); the run cannot be replayed from it "
            "(leave genai-content out of the redaction presets to make traces replayable)")
    if rec["missing"]:
        steps = ", ".join(f"{m['step']} ({m['name']}{', scope ' + m['scope'] if m['scope'] else ''})"
                          for m in rec["missing"])
        hidden = any(m["hidden"] for m in rec["missing"])
        raise ContentsMissing(
            f"trace {trace_id}: LLM call(s) {steps} have no recorded "
            + ("contents (OpenInference hid them: '__REDACTED__')" if hidden else "request/response contents")
            + "; replay needs the messages, which instrumentations record only when asked: "
            + _settings_hint(rec["missing"]))
    if not rec["llm_calls"] and not rec["tool_calls"]:
        raise ContentsMissing(f"trace {trace_id} has no LLM or tool spans to replay")
    if rec["redacted"]:
        where = "; ".join(f"{r['kind']} step {r['step']} ({', '.join(r['rules'])})" for r in rec["redacted"])
        raise ContentsRedacted(
            f"trace {trace_id}: recorded contents were redacted by the redaction processor ([REDACTED:<rule>] "
            f"in {where}); the original text is not stored, so the run cannot be replayed from it "
            "(exclude these attributes from the redaction rules to make traces replayable)")


def _settings_hint(missing: list[dict]) -> str:
    """The setting of the instrumentation the spans came from first (by scope name), then the others."""
    scopes = " ".join(str(m.get("scope") or "") for m in missing).lower()
    first = 1 if "openinference" in scopes else 2 if "traceloop" in scopes or "openllmetry" in scopes else 0
    ordered = [CAPTURE_SETTINGS[first]] + [s for i, s in enumerate(CAPTURE_SETTINGS) if i != first]
    return "; or ".join(ordered)
