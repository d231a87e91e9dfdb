"""What the framework tests share: a stand-in for the OpenAI API that scripts tool calls, a real
`agent-sre run` pipeline, and running a framework's agent.py in its own virtualenv.

The OpenAI API cannot be reached here, so every framework's agent talks to ``StandInLLM``: a local
OpenAI-compatible server (``POST /v1/chat/completions``, plain and streamed, tool calls included)
whose answers follow a ``Script``: call the scripted tools the request offers, in order, each once
(again while its result reads as an error, up to ``retries``), then answer with text.  Every answer
reports the same token usage, so a test can compute tokens and cost by hand from the number of calls.

The agents run with ``.servers/fw-NAME/bin/python tests/frameworks/NAME/agent.py`` (the Makefile's
`make test-deps` builds each virtualenv from tests/frameworks/NAME/requirements.txt), with
OPENAI_BASE_URL at the stand-in and OTEL_EXPORTER_OTLP_ENDPOINT at the pipeline's gRPC port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Ports
from tests.integration.test_default_loop import get, query, run_default

FRAMEWORKS = Path(__file__).resolve().parent
SERVERS = Path(os.environ.get("AGENT_SRE_SERVERS", REPO / ".servers"))

# What every stand-in answer reports as usage (gpt-4o-mini prices: $0.15 / $0.60 per million).
PROMPT_TOKENS = 300
COMPLETION_TOKENS = 40


# --- the stand-in LLM ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolStep:
    """Call tool ``name`` with ``arguments`` when a request offers it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Script:
    """How the stand-in answers: the tool steps in order, then ``final`` as the text answer.

    A step is taken when the request offers its tool and the conversation has not called it yet;
    a tool whose last result reads as an error (``error`` in its text) is called again, up to
    ``retries`` more times, as a model retrying a flaky tool does.  ``final`` may name the agent
    answering with ``{agent}`` (the first words of its system prompt)."""

    steps: list[ToolStep] = field(default_factory=list)
    final: str = "All done."
    retries: int = 0
    model: str | None = None  # the model answered as; default: the one asked for

    def next_call(self, body: dict) -> ToolStep | None:
        offered = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        calls, results = _history(body.get("messages") or [])
        for step in self.steps:
            if step.name not in offered:
                continue
            made = [c for c in calls if c[1] == step.name]
            if not made:
                return step
            last = results.get(made[-1][0], "")
            if "error" in last.lower() and len(made) <= self.retries:
                return step
        return None


def _history(messages: list[dict]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(tool call id, tool name) of every call the conversation made, and each call's result text."""
    calls, results = [], {}
    for m in messages:
        for call in m.get("tool_calls") or []:
            calls.append((call.get("id", ""), call.get("function", {}).get("name", "")))
        if m.get("role") == "tool":
            content = m.get("content")
            if isinstance(content, list):  # content parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            results[m.get("tool_call_id", "")] = str(content or "")
    return calls, results


class StandInLLM:
    """A local OpenAI-compatible chat completions server answering by a ``Script``.

    ``requests`` keeps every request body, in order, for assertions (how many model calls were made)."""

    def __init__(self, script: Script):
        self.script = script
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StandInLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict) -> dict:
        """The chat.completion the script gives for ``body``."""
        with self._lock:
            self.requests.append(body)
        step = self.script.next_call(body)
        if step is not None:
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": step.name, "arguments": json.dumps(step.arguments)}}]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": self.script.final.format(
                agent=_agent_words(body))}, "stop"
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": self.script.model or body.get("model", "gpt-4o-mini"),
                "system_fingerprint": "fp_standin",
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                          "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}}


def _agent_words(body: dict) -> str:
    for m in body.get("messages") or []:
        if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str):
            return " ".join(m["content"].split()[:3])
    return "assistant"


def _stream_chunks(completion: dict, include_usage: bool) -> list[dict]:
    """The same answer as server-sent chunks: role, content or tool calls, finish, then usage."""
    choice = completion["choices"][0]
    message = choice["message"]
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    if message.get("tool_calls"):
        deltas += [{"tool_calls": [{"index": i, **call}]} for i, call in enumerate(message["tool_calls"])]
    else:
        deltas.append({"content": message["content"]})
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def _handler(llm: StandInLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/").endswith("/models"):
                self._json(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model",
                                                             "created": 0, "owned_by": "stand-in"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._json(404, {"error": {"message": f"the stand-in answers /v1/chat/completions, not {self.path}"}})
                return
            completion = llm.answer(body)
            if not body.get("stream"):
                self._json(200, completion)
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in _stream_chunks(completion, include_usage))
            data += b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


# --- the pipeline: `agent-sre run` with the embedded default ---------------------------------------


@dataclass
class DefaultPipeline:
    """`agent-sre run` with no config (the whole SRE loop) on free ports and a temporary store."""

    proc: subprocess.Popen
    ports: Ports
    log: Path

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.grpc}"

    def query(self, sql: str) -> list[list]:
        return query(self.ports, sql)

    def get(self, path: str) -> dict:
        return get(self.ports, path)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_default_pipeline(tmp_path: Path) -> DefaultPipeline:
    ports = Ports.allocate()
    return DefaultPipeline(run_default(tmp_path, ports), ports, tmp_path / "pipeline.log")


# --- the agents --------------------------------------------------------------------------------------


def framework_python(name: str) -> Path:
    """The interpreter of framework ``name``'s virtualenv; fails the test naming `make test-deps`."""
    python = SERVERS / f"fw-{name}" / "bin" / "python"
    if not (SERVERS / f"fw-{name}" / ".installed").exists() or not python.exists():
        pytest.fail(f"{python} is missing: `make test-deps` installs {name} (tests/frameworks/{name}/requirements.txt) "
                    f"in its own virtual environment, .servers/fw-{name}")
    return python


def run_agent(name: str, llm: StandInLLM, pipeline: DefaultPipeline, *args: str, env: dict[str, str] | None = None,
              timeout: float = 90) -> subprocess.CompletedProcess:
    """Run tests/frameworks/NAME/agent.py in its virtualenv against the stand-in and the pipeline.

    The agent's own output comes back for the assertion message; a non-zero exit fails the test."""
    python = framework_python(name)
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")}  # none of ours (VIRTUAL_ENV, PYTHONPATH)
    full_env = {**keep, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-stand-in",
                "OTEL_EXPORTER_OTLP_ENDPOINT": pipeline.otlp_endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([str(python), str(FRAMEWORKS / name / "agent.py"), *args], env=full_env,
                            cwd=pipeline.log.parent, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{name}/agent.py exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result
