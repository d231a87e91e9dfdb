"""replay server: recorded answers in each API's shape, matching by position and content, divergence,
passthrough to a second local server, and the agent-side tools helper.

The recording is read from a real span store (a GenAI-instrumented three-call weather conversation);
the HTTP tests drive the server with the real ``openai`` client where the API is OpenAI's."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest
from aiohttp import web

from agent_sre.processors.replay.contents import load_recording
from agent_sre.processors.replay.server import (
    ReplayServer,
    ReplaySession,
    anthropic_answer,
    chat_completion,
    first_difference,
    responses_answer,
)
from agent_sre.replay import tools
from tests.processors.replay.test_contents import CHAT, TRACE, span, store_of

SYSTEM = "You are a weather bot."
QUESTION = "Weather in Paris, in Fahrenheit?"
CALL1 = {"id": "call_w", "type": "tool_call", "name": "get_weather", "arguments": {"city": "Paris"}}
CALL2 = {"id": "call_c", "type": "tool_call", "name": "to_fahrenheit", "arguments": {"celsius": 21}}


def _parts(role: str, *parts: dict) -> dict:
    return {"role": role, "parts": list(parts)}


def _text(t: str) -> dict:
    return {"type": "text", "content": t}


def _result(id_: str, r: str) -> dict:
    return {"type": "tool_call_response", "id": id_, "response": r}


TURN1 = [_parts("user", _text(QUESTION))]
TURN2 = TURN1 + [_parts("assistant", CALL1), _parts("tool", _result("call_w", "21C, sunny"))]
TURN3 = TURN2 + [_parts("assistant", CALL2), _parts("tool", _result("call_c", "69.8"))]


def _llm(span_id: str, start: int, asked: list, answer: dict) -> dict:
    return span(span_id, "chat gpt-4o", {
        **CHAT, "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10 * start,
        "gen_ai.usage.output_tokens": start,
        "gen_ai.system_instructions": json.dumps([_text(SYSTEM)]), "gen_ai.input.messages": json.dumps(asked),
        "gen_ai.output.messages": json.dumps([answer])}, start=start)


def _tool(span_id: str, start: int, name: str, args: str, result: str, error: str | None = None) -> dict:
    return span(span_id, f"execute_tool {name}", {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.call.arguments": args,
        "gen_ai.tool.call.result": result}, start=start, error=error)


@pytest.fixture
def recording(tmp_path) -> dict:
    store = store_of(tmp_path, [
        _llm("00000000000000a1", 1, TURN1, _parts("assistant", CALL1) | {"finish_reason": "tool_calls"}),
        _tool("00000000000000b1", 2, "get_weather", '{"city": "Paris"}', "21C, sunny"),
        _llm("00000000000000a2", 3, TURN2, _parts("assistant", CALL2) | {"finish_reason": "tool_calls"}),
        _tool("00000000000000b2", 4, "to_fahrenheit", '{"celsius": 21}', "69.8"),
        _llm("00000000000000a3", 5, TURN3, _parts("assistant", _text("69.8F and sunny.")) | {"finish_reason": "stop"}),
        _tool("00000000000000b3", 6, "get_weather", '{"city": "Oslo"}', "", error="upstream 503"),
    ])
    rec = load_recording(store.read, TRACE)
    store.close()
    return rec


# What an OpenAI Chat agent sends at each step (ids as the server handed them out).
def chat_messages(step: int) -> list[dict]:
    msgs: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    if step >= 2:
        msgs += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_w", "content": "21C, sunny"}]
    if step >= 3:
        msgs += [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "to_fahrenheit", "arguments": '{"celsius": 21}'}}]},
            {"role": "tool", "tool_call_id": "call_c", "content": "69.8"}]
    return msgs


# --- matching and normalisation (no HTTP) -------------------------------------------------------

def test_requests_match_by_position_and_normalised_content(recording):
    session = ReplaySession(recording)
    call, div = session.match_llm("openai.chat", recording["llm_calls"][0]["request"])
    assert div is None and call["step"] == 1
    # key order and spacing of arguments, white space around texts, ids and empty content do not matter
    from agent_sre.processors.replay.contents import openai_messages
    msgs = chat_messages(2)
    msgs[1]["content"] = f"  {QUESTION}\n"
    msgs[2]["tool_calls"][0]["id"] = "another-id"
    call, div = session.match_llm("openai.chat", openai_messages(msgs))
    assert div is None and call["step"] == 2


def test_first_difference_names_the_message_and_field():
    a = [{"role": "user", "content": "a", "tool_calls": []}, {"role": "tool", "content": "x", "tool_calls": []}]
    assert first_difference(a, a) is None
    assert first_difference(a, [a[0], {**a[1], "content": "y"}])["why"] == "message 1 differs in its content"
    assert first_difference(a, a[:1])["why"] == "the request has 1 messages, the recording 2"
    json_a = [{"role": "tool", "content": '{"b": 1, "a": [1, 2]}', "tool_calls": []}]
    assert first_difference(json_a, [{"role": "tool", "content": '{"a":[1,2],"b":1}', "tool_calls": []}]) is None


def test_each_api_answer_has_its_shape_with_the_recorded_tool_calls(recording):
    call = recording["llm_calls"][0]
    chat = chat_completion(call, "gpt-4o")
    assert chat["object"] == "chat.completion" and chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert chat["usage"] == {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    resp = responses_answer(call, "gpt-4o")
    assert resp["object"] == "response" and resp["status"] == "completed"
    assert [(o["type"], o["call_id"], o["name"], o["arguments"]) for o in resp["output"]] == [
        ("function_call", "call_w", "get_weather", '{"city": "Paris"}')]
    claude = anthropic_answer(call, "claude")
    assert (claude["type"], claude["role"], claude["stop_reason"]) == ("message", "assistant", "tool_use")
    assert claude["content"] == [{"type": "tool_use", "id": "call_w", "name": "get_weather", "input": {"city": "Paris"}}]
    assert claude["usage"] == {"input_tokens": 10, "output_tokens": 1}
    last = anthropic_answer(recording["llm_calls"][2], None)
    assert last["content"] == [{"type": "text", "text": "69.8F and sunny."}] and last["stop_reason"] == "end_turn"


# --- over HTTP ------------------------------------------------------------------------------------

@pytest.fixture
def serve(recording):
    started: list[ReplayServer] = []

    def start(passthrough: str | None = None) -> ReplayServer:
        server = ReplayServer(ReplaySession(recording, passthrough), "127.0.0.1", 0).start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.mark.slow
def test_the_openai_client_gets_the_recorded_run_back(serve):
    server = serve()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="replay")
    first = client.chat.completions.create(model="gpt-4o", messages=chat_messages(1)).choices[0]
    assert first.finish_reason == "tool_calls"
    assert [(t.id, t.function.name, json.loads(t.function.arguments)) for t in first.message.tool_calls] == [
        ("call_w", "get_weather", {"city": "Paris"})]
    assert client.chat.completions.create(model="gpt-4o", messages=chat_messages(2)).choices[0] \
        .message.tool_calls[0].function.name == "to_fahrenheit"
    last = client.chat.completions.create(model="gpt-4o", messages=chat_messages(3))
    assert last.choices[0].message.content == "69.8F and sunny." and last.usage.prompt_tokens == 50
    report = server.session.report()
    assert (report["llm"]["served"], report["first_divergence"]) == (3, None)


@pytest.mark.slow
def test_the_responses_api_is_matched_and_answered_in_its_shape(serve):
    server = serve()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="replay")
    r1 = client.responses.create(model="gpt-4o", instructions=SYSTEM, input=QUESTION)
    call = r1.output[0]
    assert (call.type, call.name, json.loads(call.arguments), call.call_id) == (
        "function_call", "get_weather", {"city": "Paris"}, "call_w")
    r2 = client.responses.create(model="gpt-4o", instructions=SYSTEM, input=[
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "21C, sunny"}])
    assert r2.output[0].name == "to_fahrenheit"


@pytest.mark.slow
def test_an_anthropic_request_is_matched_across_apis_and_answered_as_a_message(serve):
    server = serve()
    status, body, _ = post(server.url + "/v1/messages", {
        "model": "claude", "max_tokens": 100, "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}]})
    assert status == 200 and body["stop_reason"] == "tool_use"
    tool_use = body["content"][0]
    status, body, _ = post(server.url + "/v1/messages", {
        "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": SYSTEM}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "21C, sunny"}]}]})
    assert status == 200 and body["content"][0]["name"] == "to_fahrenheit"


@pytest.mark.slow
def test_a_changed_prompt_diverges_at_its_step_with_what_was_expected(serve):
    server = serve()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="replay")  # default retries: a 409 is not retried
    client.chat.completions.create(model="gpt-4o", messages=chat_messages(1))
    changed = chat_messages(2)
    changed[1]["content"] = "Weather in Paris, in Celsius?"
    with pytest.raises(openai.ConflictError) as err:
        client.chat.completions.create(model="gpt-4o", messages=changed)
    assert "diverged at LLM call 2: message 1 differs in its content" in str(err.value)
    report = server.session.report()
    assert len(report["divergences"]) == 1  # not retried, not counted twice
    first = report["first_divergence"]
    assert (first["kind"], first["step"], first["first_difference"]["message"]) == ("llm", 2, 1)
    assert (first["first_difference"]["expected"], first["first_difference"]["got"]) == (
        QUESTION, "Weather in Paris, in Celsius?")
    status, body, headers = post(server.url + "/v1/chat/completions", {"model": "gpt-4o", "messages": changed})
    assert status == 409 and headers["x-should-retry"] == "false" and body["divergence"]["step"] == 2
    assert len(server.session.report()["divergences"]) == 1  # the same request again is the same divergence


@pytest.mark.slow
def test_a_call_beyond_the_recording_diverges_and_an_early_stop_is_reported(serve):
    server = serve()
    for step in (1, 2, 3):
        assert post(server.url + "/v1/chat/completions", {"messages": chat_messages(step)})[0] == 200
    status, body, _ = post(server.url + "/v1/chat/completions", {"messages": chat_messages(3) + [
        {"role": "user", "content": "and tomorrow?"}]})
    assert status == 409 and body["error"]["message"].endswith("diverged at LLM call 4: not recorded (the trace has 3 LLM calls)")
    early = serve()
    post(early.url + "/v1/chat/completions", {"messages": chat_messages(1)})
    first = early.session.report()["first_divergence"]
    assert (first["step"], first["why"]) == (2, "the re-run made 1 of 3 recorded LLM calls")


@pytest.mark.slow
def test_streaming_is_refused_clearly(serve):
    status, body, _ = post(serve().url + "/v1/chat/completions", {"messages": chat_messages(1), "stream": True})
    assert status == 400 and body["error"]["code"] == "stream_unsupported"


@pytest.fixture
def upstream():
    """A second local server standing in for the real endpoint: it echoes what it received."""
    seen: list[dict] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "auth": request.headers.get("Authorization"), "body": await request.json()})
        return web.json_response({"id": "real", "object": "chat.completion", "created": 1, "model": "real-model",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "from upstream"}}]})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.slow
def test_passthrough_forwards_unrecorded_calls_to_the_real_endpoint(serve, upstream):
    base, seen = upstream
    server = serve(passthrough=base + "/v1")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-real")
    assert client.chat.completions.create(model="gpt-4o", messages=chat_messages(1)).choices[0].message.tool_calls
    assert seen == []  # recorded: answered from the recording
    other = [{"role": "user", "content": "something else"}]
    answer = client.chat.completions.create(model="gpt-4o", messages=other)
    assert answer.choices[0].message.content == "from upstream" and answer.model == "real-model"
    assert seen[0]["path"] == "/v1/chat/completions" and seen[0]["auth"] == "Bearer sk-real"
    assert seen[0]["body"]["messages"] == other
    first = server.session.report()["first_divergence"]
    assert (first["step"], first["passed_through"]) == (2, True)


# --- the agent-side tools helper --------------------------------------------------------------------

@pytest.mark.slow
def test_tools_return_the_recorded_results_in_order_per_tool(serve, monkeypatch):
    server = serve()
    monkeypatch.setenv(tools.REPLAY_URL_ENV, server.url)
    ran: list = []

    @tools.replayable
    def get_weather(city: str) -> str:
        ran.append(city)
        return "live"

    @tools.replayable(name="to_fahrenheit", decode=float)
    def convert(celsius: float) -> float:
        ran.append(celsius)
        return 0.0

    assert get_weather("Paris") == "21C, sunny"
    assert convert(celsius=21) == 69.8
    with pytest.raises(tools.RecordedToolError, match="upstream 503"):
        get_weather(city="Oslo")  # the recorded call failed: so does the replayed one
    assert ran == []  # nothing ran for real
    with pytest.raises(tools.ReplayDiverged, match="call 2 of tool to_fahrenheit was not recorded") as err:
        convert(30)
    assert err.value.divergence["tool"] == "to_fahrenheit" and not err.value.run_locally


@pytest.mark.slow
def test_a_tool_called_with_other_arguments_diverges_or_runs_for_real_with_passthrough(serve, upstream, monkeypatch):
    monkeypatch.setenv(tools.REPLAY_URL_ENV, serve().url)
    with pytest.raises(tools.ReplayDiverged, match="call 1 of tool get_weather has other arguments") as err:
        tools.recorded("get_weather", {"city": "Lyon"})
    assert err.value.divergence["step"] == 1 and err.value.divergence["expected"] == {"arguments": {"city": "Paris"}}

    monkeypatch.setenv(tools.REPLAY_URL_ENV, serve(passthrough=upstream[0]).url)

    @tools.replayable
    def get_weather(city: str) -> str:
        return f"live weather in {city}"

    assert get_weather("Lyon") == "live weather in Lyon"


def test_tools_run_normally_without_a_replay(monkeypatch):
    monkeypatch.delenv(tools.REPLAY_URL_ENV, raising=False)

    @tools.replayable
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(2) == 3
    with pytest.raises(tools.ReplayNotActive, match="AGENT_SRE_REPLAY_URL is not set"):
        tools.recorded("add", {"a": 2})


# --- the command line -------------------------------------------------------------------------------

def test_the_cli_inlines_parameters_and_reads_maps_from_the_query_api():
    from agent_sre.pipeline.cli.replay import _maps, inline

    assert inline("SELECT '?' , ? FROM t WHERE a = ? AND b = ?::VARCHAR[]", ["it's", 3, ["x", "y"]]) == \
        "SELECT '?' , 'it''s' FROM t WHERE a = 3 AND b = ['x', 'y']::VARCHAR[]"
    # /v1/query answers a MAP as [[key, value], ...]: the readers want dicts, inside event structs too
    assert _maps([["gen_ai.tool.name", "x"], ["n", "1"]]) == {"gen_ai.tool.name": "x", "n": "1"}
    assert _maps([{"name": "e", "attributes": [["k", "v"]]}]) == [{"name": "e", "attributes": {"k": "v"}}]
    assert _maps(["a", "b"]) == ["a", "b"]


def test_the_cli_takes_options_after_the_trace_id_and_the_command_after_two_dashes():
    from agent_sre.pipeline.cli.main import build_parser
    from agent_sre.pipeline.cli.replay import _split

    args = build_parser().parse_args(["replay", TRACE, "--serve", "127.0.0.1:9", "--format", "json", "--",
                                      "python", "agent.py", "--serve", "x"])
    assert _split(args) == ["python", "agent.py", "--serve", "x"]
    assert (args.serve, args.format, args.passthrough) == ("127.0.0.1:9", "json", None)
    args = build_parser().parse_args(["replay", "--passthrough", "http://up", TRACE, "--", "agent"])
    assert _split(args) == ["agent"] and args.passthrough == "http://up" and args.serve == "127.0.0.1:8900"


@pytest.mark.slow
def test_replay_serves_a_stopped_pipelines_file_until_interrupted_and_reports(tmp_path, recording):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent_sre.pipeline.cli", "replay", TRACE, "--db",
                             str(tmp_path / "spans.duckdb"), "--serve", f"127.0.0.1:{port}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"})
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
        assert lines[0].startswith(f"replaying trace {TRACE}: 3 LLM calls (recorded as gen_ai.input.messages), "
                                   "3 tool calls (get_weather, to_fahrenheit)")
        assert lines[2:] == [f"  export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1\n",
                             f"  export ANTHROPIC_BASE_URL=http://127.0.0.1:{port}\n",
                             f"  export AGENT_SRE_REPLAY_URL=http://127.0.0.1:{port}\n",
                             f"  export OTEL_RESOURCE_ATTRIBUTES=deployment.environment=ci,agent_sre.replay.of={TRACE}\n"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="replay")
        assert client.chat.completions.create(model="gpt-4o", messages=chat_messages(1)).choices[0].message.tool_calls
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "served 1 of 3 recorded LLM calls and 0 of 3 tool calls" in out
    assert "DIVERGED at LLM call 2: the re-run made 1 of 3 recorded LLM calls" in out
