"""``agent_sre.instrument`` (pipeline/client/instrument): the agent's resource, the task and tool spans and
their outcomes, the missing-package errors naming the ``pip install``; and two agents as a user writes
them, the plain ``openai`` client and the ``anthropic`` client each instrumented by ``instrument()``,
exporting into a real ``agent-sre run`` (the embedded default): every span is the agent's, the task
spans carry their success, the LLM spans their model, tokens and price, the tools their names and the
injected tool failure.

The model APIs are local stand-ins (OpenAI's chat completions and Anthropic's messages, tool calls
included), scripted here: neither service can be reached from the tests.  The agents are this module
run as a program (``python -m tests.pipeline.test_instrument openai|anthropic ...``), so each gets a
fresh process, as an agent has, and the pytest process keeps no instrumentation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import agent_sre.instrument as sre
from tests.conftest import REPO, Ports, eventually

# --- in-process: the spans and the errors -----------------------------------------------------------


@pytest.fixture
def spans():
    """A set-up agent whose spans land in memory; shut down after the test."""
    exporter = InMemorySpanExporter()
    sre.setup(agent_id="triage-bot", agent_version="1.4.0", agent_name="Triage", span_exporter=exporter,
              set_global=False)

    def finished() -> list:
        sre.force_flush()
        return list(exporter.get_finished_spans())

    yield finished
    sre.shutdown()


def test_setup_puts_the_agent_id_and_version_on_the_resource_every_span_carries(spans):
    with sre.task("triage"):
        pass
    (span,) = spans()
    resource = dict(span.resource.attributes)
    assert {k: resource[k] for k in ("service.name", "agent.id", "gen_ai.agent.id", "agent.version",
                                     "gen_ai.agent.version", "service.version", "agent.name")} == {
        "service.name": "triage-bot", "agent.id": "triage-bot", "gen_ai.agent.id": "triage-bot",
        "agent.version": "1.4.0", "gen_ai.agent.version": "1.4.0", "service.version": "1.4.0", "agent.name": "Triage"}


def test_a_task_span_is_an_invoke_agent_span_that_succeeds_on_a_normal_exit(spans):
    with sre.task("triage", session_id="conv-7") as t:
        with sre.tool("web_search", "call-1", arguments='{"q": "x"}'):
            pass
    tool, task = spans()
    assert task.name == "invoke_agent Triage" and task.status.status_code == StatusCode.OK
    assert dict(task.attributes) == {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "triage-bot",
                                     "gen_ai.agent.name": "Triage", "gen_ai.agent.version": "1.4.0",
                                     "agent.task.name": "triage", "gen_ai.conversation.id": "conv-7",
                                     "agent.task.success": True}
    assert tool.parent.span_id == task.context.span_id and t.trace_id == format(task.context.trace_id, "032x")
    assert dict(tool.attributes) == {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "web_search",
                                     "gen_ai.tool.call.id": "call-1", "gen_ai.tool.call.arguments": '{"q": "x"}'}


def test_an_exception_fails_the_task_and_its_tool_and_is_raised_on(spans):
    with pytest.raises(TimeoutError, match="upstream"):
        with sre.task("triage"):
            with sre.tool("web_search"):
                raise TimeoutError("upstream took 30s")
    tool, task = spans()
    for span in (tool, task):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "TimeoutError: upstream took 30s"
        assert span.attributes["error.type"] == "TimeoutError"
        assert [e.name for e in span.events] == ["exception"]
    assert task.attributes["agent.task.success"] is False


def test_the_yielded_task_overrides_the_outcome_either_way(spans):
    with sre.task("answer") as t:
        t.fail("the answer cited no source")  # no exception, still a failed task
    with pytest.raises(KeyError):
        with sre.task("answer") as t:
            t.succeed()  # the task did its job; the caller handles what escapes
            raise KeyError("cache miss")
    failed, recovered = spans()
    assert (failed.attributes["agent.task.success"], failed.status.status_code,
            failed.status.description) == (False, StatusCode.ERROR, "the answer cited no source")
    assert recovered.attributes["agent.task.success"] is True and recovered.status.status_code == StatusCode.OK
    assert recovered.attributes["error.type"] == "KeyError"  # what happened is still recorded


def test_a_missing_instrumentation_names_the_pip_install(spans):
    with pytest.raises(sre.MissingPackage) as missing:
        sre.instrument("crewai")
    assert missing.value.pip == "pip install openinference-instrumentation-crewai"
    assert "(or one of: opentelemetry-instrumentation-crewai)" in str(missing.value)
    assert isinstance(missing.value, ImportError)
    with pytest.raises(sre.MissingPackage) as missing:  # a named one that is not installed
        sre.instrument("openai", package="opentelemetry-instrumentation-openai")
    assert missing.value.pip == "pip install opentelemetry-instrumentation-openai"
    with pytest.raises(sre.MissingPackage) as missing:  # a framework's own support: the framework itself
        sre.instrument("semantic-kernel")
    assert missing.value.pip == "pip install semantic-kernel"


def test_an_instrumented_library_at_no_supported_version_is_an_error_not_silence():
    from agent_sre.instrument._frameworks import FRAMEWORKS, _check_dependencies

    class Instrumentor:  # what BaseInstrumentor would only log, instrumenting nothing
        def instrumentation_dependencies(self):
            return ("no-such-llm-client >= 2.0",)

    fw = FRAMEWORKS["openai"]
    with pytest.raises(sre.MissingPackage) as missing:
        _check_dependencies(fw, fw.instrumentations[0], Instrumentor())
    assert missing.value.pip == "pip install 'no-such-llm-client >= 2.0'"


def test_unknown_names_misuse_and_order_of_calls_are_told_plainly(spans):
    with pytest.raises(ValueError, match=r"unknown framework 'langchain' \(valid values: openai, anthropic, "
                                         r"langgraph, openai-agents, crewai, autogen, semantic-kernel, llama-index"):
        sre.instrument("langchain")
    with pytest.raises(ValueError, match="is not an instrumentation of 'anthropic'"):
        sre.instrument("anthropic", package="opentelemetry-instrumentation-openai-v2")
    with pytest.raises(sre.InstrumentError, match="already set up for agent 'triage-bot': call shutdown"):
        sre.setup(agent_id="other")
    sre.shutdown()
    sre.shutdown()  # safe twice
    with pytest.raises(sre.InstrumentError, match=r"call agent_sre.instrument.setup\(agent_id=...\) first"):
        sre.instrument("openai")
    with pytest.raises(sre.InstrumentError, match="setup"):
        with sre.task("x"):
            pass
    with pytest.raises(ValueError, match="protocol must be one of grpc, http"):
        sre.setup(agent_id="a", protocol="thrift")
    with pytest.raises(ValueError, match="endpoint must be http://host:port"):
        sre.setup(agent_id="a", endpoint="127.0.0.1:4317")
    with pytest.raises(ValueError, match="agent_id"):
        sre.setup(agent_id=" ")


def test_instrument_prefers_the_official_openai_instrumentation_and_is_idempotent(spans):
    assert sre.instrument("openai") == "opentelemetry-instrumentation-openai-v2"
    assert sre.instrument("OpenAI") == "opentelemetry-instrumentation-openai-v2"
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    assert OpenAIInstrumentor().is_instrumented_by_opentelemetry
    sre.shutdown()  # uninstruments what it instrumented
    assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry


def test_a_client_with_its_own_tracing_gets_no_second_instrumentation(spans, monkeypatch):
    """The anthropic SDK traces its calls itself (anthropic._tracing): that is used, and when another
    instrumentation is asked for, the SDK's own spans are switched off, so no call is counted twice."""
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    assert sre.instrument("anthropic") == "anthropic"
    assert "ANTHROPIC_OPEN_TELEMETRY" not in os.environ
    sre.shutdown()
    sre.setup(agent_id="desk-agent", span_exporter=InMemorySpanExporter(), set_global=False)
    assert sre.instrument("anthropic", package="openinference-instrumentation-anthropic") == \
        "openinference-instrumentation-anthropic"
    assert os.environ["ANTHROPIC_OPEN_TELEMETRY"] == "false"


# --- the stand-in model APIs ----------------------------------------------------------------------------

TEMPERATURES = {"Paris": 18}  # any other city: the tool fails (the injected tool failure)
OPENAI_USAGE = [(120, 18), (160, 9)]  # (input, output) tokens of the first and second model call of a task
ANTHROPIC_USAGE = [(200, 30), (260, 12)]


def _city(question: str) -> str:
    return question.rstrip("?").rsplit(" ", 1)[-1]


def openai_answer(body: dict) -> dict:
    """A tool call for the weather of the asked city, then (after the tool's result) the answer."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    step = len(results)
    if not results:
        city = _city(body["messages"][0]["content"])
        message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": city})}}]}
    else:
        message = {"role": "assistant", "content": f"It is {results[0]} degrees."}
    prompt, completion = OPENAI_USAGE[step]
    return {"id": f"chatcmpl-{step}", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if step == 0 else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def anthropic_answer(body: dict) -> dict:
    results = [block for m in body["messages"] if isinstance(m["content"], list)
               for block in m["content"] if block.get("type") == "tool_result"]
    step = len(results)
    if not results:
        content = [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                    "input": {"city": _city(body["messages"][0]["content"])}}]
    else:
        content = [{"type": "text", "text": f"It is {results[0]['content']} degrees."}]
    prompt, completion = ANTHROPIC_USAGE[step]
    return {"id": f"msg_{step}", "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": "tool_use" if step == 0 else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion}}


@pytest.fixture(scope="module")
def stand_in_models():
    """OpenAI's /v1/chat/completions and Anthropic's /v1/messages, scripted, on a free local port."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(openai_answer(await request.json()))

    async def messages(request: web.Request) -> web.Response:
        return web.json_response(anthropic_answer(await request.json()))

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.run_until_complete(runner.cleanup())


# --- the agents (run as programs) -------------------------------------------------------------------------

CITIES = ("Paris", "Atlantis")
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "The temperature in a city, in Celsius.", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def get_weather(city: str) -> str:
    if city not in TEMPERATURES:
        raise LookupError(f"no weather station in {city}")
    return str(TEMPERATURES[city])


def openai_agent(endpoint: str, model_url: str, agent: str, package: str | None) -> dict:
    """Two tasks of a weather agent on the plain openai client: Paris answers, Atlantis's tool fails."""
    import openai

    sre.setup(agent_id=agent, agent_version="2.1.0", endpoint=endpoint)  # OTLP/gRPC
    used = sre.instrument("openai", package=package)
    client = openai.OpenAI(api_key="stand-in", base_url=f"{model_url}/v1")
    traces = {}
    for city in CITIES:
        try:
            with sre.task("weather-question", session_id="session-1") as t:
                traces[city] = t.trace_id
                messages: list = [{"role": "user", "content": f"What is the weather in {city}?"}]
                while True:
                    message = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                             tools=OPENAI_TOOLS).choices[0].message
                    if not message.tool_calls:
                        break
                    messages.append(message.model_dump(exclude_none=True))
                    for call in message.tool_calls:
                        with sre.tool(call.function.name, call.id, arguments=call.function.arguments):
                            output = get_weather(**json.loads(call.function.arguments))
                        messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        except LookupError:
            pass  # the task span recorded it
    sre.shutdown()
    return {"package": used, "traces": traces}


def anthropic_agent(endpoint: str, model_url: str, agent: str, package: str) -> dict:
    """The same two tasks on the anthropic client, exporting over OTLP/HTTP under its own service name."""
    import anthropic

    sre.setup(agent_id=agent, agent_version="0.3.0", endpoint=endpoint, protocol="http", service_name="support-desk")
    used = sre.instrument("anthropic", package=package)
    client = anthropic.Anthropic(api_key="stand-in", base_url=model_url)
    traces = {}
    for city in CITIES:
        try:
            with sre.task("weather-question", session_id="session-2") as t:
                traces[city] = t.trace_id
                messages: list = [{"role": "user", "content": f"What is the weather in {city}?"}]
                while True:
                    reply = client.messages.create(model="claude-haiku-4-5", max_tokens=256, messages=messages,
                                                   tools=ANTHROPIC_TOOLS)
                    uses = [block for block in reply.content if block.type == "tool_use"]
                    if not uses:
                        break
                    messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
                    results = []
                    for use in uses:
                        with sre.tool(use.name, use.id, arguments=json.dumps(use.input)):
                            results.append({"type": "tool_result", "tool_use_id": use.id,
                                            "content": get_weather(**use.input)})
                    messages.append({"role": "user", "content": results})
        except LookupError:
            pass
    sre.shutdown()
    return {"package": used, "traces": traces}


AGENTS = {"openai": openai_agent, "anthropic": anthropic_agent}


# --- into a running pipeline ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_pipeline(tmp_path_factory):
    """`agent-sre run` with the embedded default (the whole SRE loop), on free ports."""
    from tests.integration.test_default_loop import run_default

    tmp = tmp_path_factory.mktemp("pipeline")
    ports = Ports.allocate()
    proc = run_default(tmp, ports)
    yield ports
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


def run_agent(kind: str, endpoint: str, model_url: str, tmp_path, agent: str, package: str | None = None) -> dict:
    out = tmp_path / f"{agent}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_", "ANTHROPIC_"))}
    res = subprocess.run([sys.executable, "-m", "tests.pipeline.test_instrument", kind, endpoint, model_url, str(out),
                          agent, package or ""],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


COLUMNS = ("trace_id, span_role, agent_id, agent_version, service_name, session_id, task_name, task_success, "
           "tool_name, status_code, model, input_tokens, output_tokens, cost_usd")


def stored(ports: Ports, traces: dict, expected_spans: int) -> list[dict]:
    from tests.integration.test_default_loop import query

    ids = ", ".join(f"'{t}'" for t in traces.values())
    sql = f"SELECT {COLUMNS} FROM spans WHERE trace_id IN ({ids}) ORDER BY start_ns"
    rows = eventually(lambda: (r := query(ports, sql)) and len(r) == expected_spans and r)
    assert rows and len(rows) == expected_spans, [(r[1], r[8], r[9], r[10]) for r in query(ports, sql)]
    names = [c.strip() for c in COLUMNS.split(",")]
    return [dict(zip(names, row, strict=True)) for row in rows]


def check_agent_rows(rows: list[dict], traces: dict, agent: str, version: str, service: str, session: str,
                     model: str, usage: list[tuple[int, int]], price: tuple[float, float]) -> None:
    """Every span the agent's; Paris: task, LLM, tool, LLM, all fine; Atlantis: task, LLM, tool, failed."""
    assert {(r["agent_id"], r["agent_version"], r["service_name"]) for r in rows} == {(agent, version, service)}
    paris = [r for r in rows if r["trace_id"] == traces["Paris"]]
    atlantis = [r for r in rows if r["trace_id"] == traces["Atlantis"]]
    assert [r["span_role"] for r in paris] == ["agent_task", "llm", "tool", "llm"]
    assert [r["span_role"] for r in atlantis] == ["agent_task", "llm", "tool"]
    for task, success in ((paris[0], True), (atlantis[0], False)):
        assert (task["task_name"], task["task_success"], task["session_id"]) == ("weather-question", success, session)
    assert (paris[2]["tool_name"], paris[2]["status_code"]) == ("get_weather", "unset")
    assert (atlantis[2]["tool_name"], atlantis[2]["status_code"]) == ("get_weather", "error")
    for row, (tokens_in, tokens_out) in zip([paris[1], paris[3], atlantis[1]], [usage[0], usage[1], usage[0]],
                                            strict=True):
        assert (row["model"], row["input_tokens"], row["output_tokens"]) == (model, tokens_in, tokens_out)
        # the price list's $ per million tokens, by hand
        assert row["cost_usd"] == pytest.approx((tokens_in * price[0] + tokens_out * price[1]) / 1e6, rel=1e-9)


@pytest.mark.slow
def test_the_plain_openai_client_lands_every_span_under_its_agent_with_task_success_and_cost(
        default_pipeline, stand_in_models, tmp_path):
    from tests.integration.test_default_loop import get

    ports = default_pipeline
    result = run_agent("openai", f"http://127.0.0.1:{ports.grpc}", stand_in_models, tmp_path, "weather-agent")
    assert result["package"] == "opentelemetry-instrumentation-openai-v2"
    rows = stored(ports, result["traces"], 7)
    check_agent_rows(rows, result["traces"], "weather-agent", "2.1.0", "weather-agent", "session-1",
                     "gpt-4o-mini", OPENAI_USAGE, (0.15, 0.60))
    # The SRE loop saw it: two tasks, one failed; two tool calls, one failed; the spend priced and charged.
    slos = eventually(lambda: {r["slo"]: r for r in get(ports, "/v1/slos")["slos"]
                               if r["agent_id"] == "weather-agent" and r["events"]} or None)
    assert (slos["task-success"]["events"], slos["task-success"]["bad_events"]) == (2, 1)
    assert (slos["tool-accuracy"]["events"], slos["tool-accuracy"]["bad_events"]) == (2, 1)
    (spend,) = [r for r in get(ports, "/v1/costs")["summary"] if r["agent_id"] == "weather-agent"]
    assert spend["cost_usd"] == pytest.approx((2 * 120 + 160) * 0.15e-6 + (2 * 18 + 9) * 0.6e-6, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("package", ["anthropic", "openinference-instrumentation-anthropic"])
def test_the_anthropic_client_lands_every_span_under_its_agent_with_task_success_and_cost(
        default_pipeline, stand_in_models, tmp_path, package):
    """With the SDK's own tracing (the default) and with OpenInference's instead: one LLM span per call."""
    ports = default_pipeline
    agent = f"desk-agent-{package.split('-')[0]}"
    result = run_agent("anthropic", f"http://127.0.0.1:{ports.http}", stand_in_models, tmp_path, agent, package)
    assert result["package"] == package
    rows = stored(ports, result["traces"], 7)
    check_agent_rows(rows, result["traces"], agent, "0.3.0", "support-desk", "session-2",
                     "claude-haiku-4-5", ANTHROPIC_USAGE, (1.0, 5.0))


if __name__ == "__main__":  # an agent: KIND OTLP_ENDPOINT MODEL_URL RESULT_FILE AGENT_ID PACKAGE
    kind, otlp, model, result_file, agent_id, package_name = sys.argv[1:7]
    with open(result_file, "w") as f:
        json.dump(AGENTS[kind](otlp, model, agent_id, package_name or None), f)
