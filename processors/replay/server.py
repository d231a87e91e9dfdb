"""The replay server: a recorded trace's LLM answers and tool results, served to the agent re-running it.

    POST /v1/chat/completions   OpenAI Chat Completions      (OPENAI_BASE_URL=http://HOST:PORT/v1)
    POST /v1/responses          OpenAI Responses
    POST /v1/messages           Anthropic Messages           (ANTHROPIC_BASE_URL=http://HOST:PORT)
    POST /v1/tools/{name}       {"arguments": ...} -> {"result": ...}   (agent_sre.replay.tools)
    GET  /v1/replay             what is recorded; GET /v1/replay/report: what was served, and divergences

Each API answers in its own response shape (text and tool calls) whichever instrumentation recorded
the trace (``contents.py`` reads them all into one message shape).  Streaming is not served: a
request with ``stream: true`` is answered 400 (``stream_unsupported``), unless ``--passthrough``
forwards it.

**Matching.**  The n-th LLM request, whatever its API, is answered with the trace's n-th recorded
LLM call if its messages equal the recorded request's, after this normalisation (``comparable``):
every API's messages are read into one shape (Anthropic ``system`` and Responses ``instructions``
become a leading system message, ``developer`` is ``system``, Anthropic ``tool_result`` blocks and
Responses ``function_call_output`` items are tool messages, Responses ``function_call`` items an
assistant message's tool calls); text parts are joined with a newline and stripped of leading and
trailing white space, empty text is no text; non-text parts (images, audio) are not compared; tool
call arguments, and tool results and texts that are JSON objects or arrays, are compared as parsed
JSON (key order and spacing do not matter); tool call ids and message ``name`` are not compared (the
server hands out the recorded ids again); the model, the tools offered and sampling parameters are
not compared.  The k-th call of tool T is answered with the trace's k-th recorded call of T if the
arguments are equal as JSON.

**Divergence.**  The first request that does not match (other messages, or more calls than
recorded) is answered 409 with ``{"error": {...}, "divergence": {"kind", "step", "expected",
"got", "first_difference"}}`` and ``x-should-retry: false`` (the OpenAI and Anthropic SDKs would
retry a 409 otherwise), and recorded for the report; the same request again gets the same answer
without a second entry.  With ``passthrough`` (a base URL such as ``https://api.openai.com``),
an unmatched LLM request is forwarded there with its headers instead (still reported), and an
unmatched tool call is answered 409 with ``run_locally: true`` so the helper runs the real tool.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from agent_sre.processors.replay.contents import (
    anthropic_messages,
    arguments,
    openai_messages,
    responses_messages,
)

_NO_RETRY = {"x-should-retry": "false"}
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "keep-alive"}
PASSTHROUGH_TIMEOUT_S = 600.0


# --- normalisation ---------------------------------------------------------------------------

def _canonical_text(text: str | None) -> Any:
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def comparable(message: dict) -> dict:
    """What is compared of a message (module docstring: the normalisation)."""
    return {"role": message["role"], "content": _canonical_text(message.get("content")),
            "tool_calls": [{"name": c["name"], "arguments": arguments(c["arguments"])}
                           for c in message.get("tool_calls") or []]}


def first_difference(expected: list[dict], got: list[dict]) -> dict | None:
    """The first message that differs after normalisation: its index, the field, both values."""
    for i in range(max(len(expected), len(got))):
        if i >= len(expected):
            return {"message": i, "field": "message", "expected": None, "got": got[i],
                    "why": f"the request has {len(got)} messages, the recording {len(expected)}"}
        if i >= len(got):
            return {"message": i, "field": "message", "expected": expected[i], "got": None,
                    "why": f"the request has {len(got)} messages, the recording {len(expected)}"}
        e, g = comparable(expected[i]), comparable(got[i])
        for field in ("role", "content", "tool_calls"):
            if e[field] != g[field]:
                return {"message": i, "field": field, "expected": expected[i].get(field),
                        "got": got[i].get(field), "why": f"message {i} differs in its {field}"}
    return None


# --- answers in each API's shape -------------------------------------------------------------

def _call_id(call: dict, step: int, j: int, prefix: str) -> str:
    return call.get("id") or f"{prefix}replay_{step}_{j}"


def _args_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def chat_completion(call: dict, model: str | None) -> dict:
    """A Chat Completions answer (``chat.completion``) of a recorded call."""
    response, step = call["response"], call["step"]
    message: dict[str, Any] = {"role": "assistant", "content": response["text"], "refusal": None}
    calls = response["tool_calls"]
    if calls:
        message["tool_calls"] = [{"id": _call_id(c, step, j, "call_"), "type": "function",
                                  "function": {"name": c["name"], "arguments": _args_text(c["arguments"])}}
                                 for j, c in enumerate(calls)]
    reason = "tool_calls" if calls else (response.get("finish_reason") or "stop")
    return {"id": f"chatcmpl-replay-{step}", "object": "chat.completion", "created": int(time.time()),
            "model": call.get("model") or model or "replay", "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
            "usage": _usage(call, "prompt_tokens", "completion_tokens")}


def responses_answer(call: dict, model: str | None) -> dict:
    """A Responses answer (``response``) of a recorded call."""
    response, step = call["response"], call["step"]
    output: list[dict] = []
    if response["text"] is not None:
        output.append({"type": "message", "id": f"msg_replay_{step}", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": response["text"], "annotations": []}]})
    for j, c in enumerate(response["tool_calls"]):
        output.append({"type": "function_call", "id": f"fc_replay_{step}_{j}", "call_id": _call_id(c, step, j, "call_"),
                       "name": c["name"], "arguments": _args_text(c["arguments"]), "status": "completed"})
    usage = _usage(call, "input_tokens", "output_tokens")
    usage.update(input_tokens_details={"cached_tokens": 0}, output_tokens_details={"reasoning_tokens": 0})
    return {"id": f"resp_replay_{step}", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": call.get("model") or model or "replay", "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None, "usage": usage}


def anthropic_answer(call: dict, model: str | None) -> dict:
    """An Anthropic Messages answer (``message``) of a recorded call."""
    response, step = call["response"], call["step"]
    content: list[dict] = []
    if response["text"] is not None:
        content.append({"type": "text", "text": response["text"]})
    for j, c in enumerate(response["tool_calls"]):
        args = c["arguments"] if isinstance(c["arguments"], dict) else {"input": c["arguments"]}
        content.append({"type": "tool_use", "id": _call_id(c, step, j, "toolu_"), "name": c["name"], "input": args})
    reason = "tool_use" if response["tool_calls"] else {"length": "max_tokens"}.get(
        response.get("finish_reason") or "", "end_turn")
    return {"id": f"msg_replay_{step}", "type": "message", "role": "assistant",
            "model": call.get("model") or model or "replay", "content": content, "stop_reason": reason,
            "stop_sequence": None, "usage": _usage(call, "input_tokens", "output_tokens", total=False)}


def _usage(call: dict, input_key: str, output_key: str, total: bool = True) -> dict:
    i, o = int(call.get("input_tokens") or 0), int(call.get("output_tokens") or 0)
    return {input_key: i, output_key: o, **({"total_tokens": i + o} if total else {})}


# (how the request's messages are read, how the answer is shaped) per API
APIS = {
    "openai.chat": (lambda b: openai_messages(b.get("messages")), chat_completion),
    "openai.responses": (lambda b: responses_messages(b.get("instructions"), b.get("input")), responses_answer),
    "anthropic.messages": (lambda b: anthropic_messages(b.get("system"), b.get("messages")), anthropic_answer),
}


def divergence_message(session: ReplaySession, divergence: dict) -> str:
    where = "LLM call" if divergence["kind"] == "llm" else "tool call"
    return (f"replay of trace {session.recording['trace_id']} diverged at {where} {divergence['step']}: "
            f"{divergence['why']}")


def _error(status: int, kind: str, message: str, **more: Any) -> web.Response:
    """An error both SDK families read: OpenAI's ``{"error": {message, type, code}}`` with Anthropic's ``type``."""
    body = {"type": "error", "error": {"type": kind, "code": kind, "message": message}, **more}
    return web.json_response(body, status=status, headers=_NO_RETRY)


# --- the session: what was served, what diverged ---------------------------------------------

class ReplaySession:
    """The state of one replay: the recording, the position reached, and every divergence."""

    def __init__(self, recording: dict, passthrough: str | None = None):
        self.recording = recording
        self.passthrough = passthrough.rstrip("/") if passthrough else None
        self.llm_requests = 0
        self.tool_requests: Counter[str] = Counter()
        self.served: list[dict] = []
        self.divergences: list[dict] = []
        self._last_diverged: tuple | None = None  # (kind, request) of the last divergence: a retry is not a new one
        self._tools_by_name: dict[str, list[dict]] = {}
        for t in recording["tool_calls"]:
            self._tools_by_name.setdefault(str(t["name"]), []).append(t)

    def match_llm(self, api: str, messages: list[dict]) -> tuple[dict | None, dict | None]:
        """(the recorded call to serve, None) or (None, the divergence) for the next LLM request."""
        key = ("llm", json.dumps([comparable(m) for m in messages], sort_keys=True, default=str))
        if self._last_diverged and self._last_diverged[0] == key:
            return None, self._last_diverged[1]
        self.llm_requests += 1
        step, calls = self.llm_requests, self.recording["llm_calls"]
        if step > len(calls):
            return None, self._diverged(key, {
                "kind": "llm", "step": step, "api": api, "expected": None, "got": messages,
                "first_difference": None, "why": f"not recorded (the trace has {len(calls)} LLM calls)"})
        call = calls[step - 1]
        diff = first_difference(call["request"], messages)
        if diff is None:
            self.served.append({"kind": "llm", "step": step, "api": api, "span_id": call["span_id"]})
            return call, None
        return None, self._diverged(key, {
            "kind": "llm", "step": step, "api": api, "expected": call["request"], "got": messages,
            "first_difference": diff, "why": diff["why"]})

    def match_tool(self, name: str, args: Any) -> tuple[dict | None, dict | None]:
        key = ("tool", json.dumps([name, arguments(args)], sort_keys=True, default=str))
        if self._last_diverged and self._last_diverged[0] == key:
            return None, self._last_diverged[1]
        self.tool_requests[name] += 1
        k, recorded = self.tool_requests[name], self._tools_by_name.get(name, [])
        if k > len(recorded):
            step = len(self.recording["tool_calls"]) + 1
            return None, self._diverged(key, {
                "kind": "tool", "step": step, "tool": name, "call": k, "expected": None, "got": {"arguments": args},
                "first_difference": None, "why": f"call {k} of tool {name} was not recorded (the trace has {len(recorded)})"})
        call = recorded[k - 1]
        if arguments(call["arguments"]) == arguments(args):
            self.served.append({"kind": "tool", "step": call["step"], "tool": name, "span_id": call["span_id"]})
            return call, None
        return None, self._diverged(key, {
            "kind": "tool", "step": call["step"], "tool": name, "call": k, "expected": {"arguments": call["arguments"]},
            "got": {"arguments": args}, "first_difference": None,
            "why": f"call {k} of tool {name} has other arguments than recorded"})

    def _diverged(self, key: tuple, divergence: dict) -> dict:
        divergence["passed_through"] = False
        self.divergences.append(divergence)
        self._last_diverged = (key, divergence)
        return divergence

    def report(self) -> dict:
        """What the re-run got: served steps, divergences (the first one first), and whether it
        made every recorded LLM call (a re-run that stops early diverged at the first call it did not make)."""
        rec = self.recording
        divergences = list(self.divergences)
        served_llm = sum(1 for s in self.served if s["kind"] == "llm")
        if not divergences and self.llm_requests < len(rec["llm_calls"]):
            step = self.llm_requests + 1
            divergences.append({"kind": "llm", "step": step, "expected": rec["llm_calls"][step - 1]["request"],
                                "got": None, "first_difference": None, "passed_through": False,
                                "why": f"the re-run made {self.llm_requests} of {len(rec['llm_calls'])} recorded LLM calls"})
        used_tools = sum(self.tool_requests.values())
        if not divergences and used_tools and used_tools < len(rec["tool_calls"]):
            divergences.append({"kind": "tool", "step": used_tools + 1, "expected": None, "got": None,
                                "first_difference": None, "passed_through": False,
                                "why": f"the re-run made {used_tools} of {len(rec['tool_calls'])} recorded tool calls"})
        return {"trace_id": rec["trace_id"],
                "llm": {"recorded": len(rec["llm_calls"]), "requests": self.llm_requests, "served": served_llm,
                        "passed_through": sum(1 for d in divergences if d["kind"] == "llm" and d["passed_through"])},
                "tools": {"recorded": len(rec["tool_calls"]), "requests": used_tools,
                          "served": sum(1 for s in self.served if s["kind"] == "tool")},
                "served": list(self.served), "divergences": divergences,
                "first_divergence": divergences[0] if divergences else None}


# --- HTTP -------------------------------------------------------------------------------------

SESSION = web.AppKey("session", ReplaySession)
UPSTREAM = web.AppKey("upstream", dict)  # {"client": the passthrough's ClientSession, made at its first use}


def build_app(session: ReplaySession) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[SESSION] = session
    app[UPSTREAM] = {}
    for path, api in (("/v1/chat/completions", "openai.chat"), ("/v1/responses", "openai.responses"),
                      ("/v1/messages", "anthropic.messages")):
        app.router.add_post(path, _llm_handler(api))
    app.router.add_post("/v1/tools/{name}", _tool)
    app.router.add_get("/v1/replay", _summary)
    app.router.add_get("/v1/replay/report", _report)
    app.on_cleanup.append(_close_client)
    return app


def _llm_handler(api: str):
    read_messages, shape = APIS[api]

    async def handle(request: web.Request) -> web.StreamResponse:
        session: ReplaySession = request.app[SESSION]
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            return _error(400, "invalid_request_error", f"replay server: {exc}")
        if body.get("stream") and not session.passthrough:
            return _error(400, "stream_unsupported", "the replay server does not stream answers: call without "
                          "stream=true (or give --passthrough URL to forward streaming calls there)")
        call, divergence = session.match_llm(api, read_messages(body))
        if call is not None and not body.get("stream"):
            return web.json_response(shape(call, body.get("model")))
        if session.passthrough:  # unrecorded, or recorded but asked for as a stream
            if divergence is not None:
                divergence["passed_through"] = True
            return await _forward(request, session.passthrough, raw)
        assert divergence is not None
        return _error(409, "replay_divergence", divergence_message(session, divergence), divergence=divergence)

    return handle


async def _tool(request: web.Request) -> web.Response:
    session: ReplaySession = request.app[SESSION]
    name = request.match_info["name"]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "invalid_request_error", "replay server: the body is not JSON")
    args = body.get("arguments") if isinstance(body, dict) else None
    call, divergence = session.match_tool(name, args)
    if call is not None:
        failed = str(call.get("status") or "").lower() == "error"
        return web.json_response({"tool": name, "step": call["step"], "call_id": call.get("call_id"),
                                  "result": call["result"], "error": (call.get("status_message") or "error") if failed else None})
    assert divergence is not None
    run_locally = session.passthrough is not None
    divergence["passed_through"] = run_locally
    return _error(409, "replay_divergence", divergence_message(session, divergence), divergence=divergence,
                  run_locally=run_locally)


async def _summary(request: web.Request) -> web.Response:
    rec = request.app[SESSION].recording
    return web.json_response({"trace_id": rec["trace_id"], "llm_calls": len(rec["llm_calls"]),
                              "tool_calls": [{"step": t["step"], "name": t["name"]} for t in rec["tool_calls"]]})


async def _report(request: web.Request) -> web.Response:
    return web.json_response(request.app[SESSION].report())


async def _forward(request: web.Request, base: str, raw: bytes) -> web.Response:
    """The request as it came, to ``base`` + its path (``base`` ending in /v1 is not doubled)."""
    path = request.path
    if base.endswith("/v1") and path.startswith("/v1/"):
        path = path[3:]
    upstream = request.app[UPSTREAM]
    if "client" not in upstream:
        upstream["client"] = ClientSession(timeout=ClientTimeout(total=PASSTHROUGH_TIMEOUT_S))
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    try:
        async with upstream["client"].post(base + path, data=raw, headers=headers) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() in ("content-type", "x-request-id", "request-id")}
            return web.Response(body=body, status=answer.status, headers=kept)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the agent's 502
        return _error(502, "passthrough_failed", f"replay server: forwarding to {base} failed: {exc}")


async def _close_client(app: web.Application) -> None:
    if "client" in app[UPSTREAM]:
        await app[UPSTREAM]["client"].close()


class ReplayServer:
    """The replay server on its own thread and event loop (the CLI's and tests' way to run it)."""

    def __init__(self, session: ReplaySession, host: str = "127.0.0.1", port: int = 8900):
        self.session, self.host, self.port = session, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ReplayServer:
        started: dict[str, Any] = {}
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner = web.AppRunner(build_app(self.session), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, self.port)
                loop.run_until_complete(site.start())
                self.port = self._runner.addresses[0][1]  # with port 0: the one the system chose
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                started["error"] = exc
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="replay-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if "error" in started:
            raise OSError(f"cannot serve the replay on {self.host}:{self.port}: {started['error']}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
