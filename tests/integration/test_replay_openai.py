"""Replay that really re-runs: a real agent loop recorded through a real `agent-sre run` pipeline is re-run
by `agent-sre replay` against the recording, and reproduces the trace exactly; a changed agent is
reported diverging at the step it changed.

The agent is the `openai` package instrumented by opentelemetry-instrumentation-openai-v2 (content
capture on: span_only with the latest GenAI conventions), exporting with the real OTel SDK's OTLP
exporter.  It loops: call the model, run the tools the model asks for, call the model again until it
answers.  For the recording, the model is a local scripted server standing in for OpenAI (which
cannot be reached here); for the replay that server is gone and the agent's `openai` client is
pointed at the replay server, its tools go through `agent_sre.replay.tools`.  The tools are not
deterministic (a random temperature, a clock reading), so identical outputs in the re-run can only
come from the recording.

The agent is this module run as a program (``python -m tests.integration.test_replay_openai``)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import REPO, Ports, eventually, free_port, pipeline_yaml, spawn_pipeline

CLI = [sys.executable, "-m", "agent_sre.pipeline.cli"]
AGENT = [sys.executable, "-m", "tests.integration.test_replay_openai"]
QUESTION = "What is the weather in Paris, in Fahrenheit?"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "to_fahrenheit", "parameters": {
             "type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}}}]


# --- the agent (run as a program) -----------------------------------------------------------------

def run_agent(result_path: str, changed: bool) -> None:
    """The agent loop; ``changed``: a new version whose second model call carries another prompt."""
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "span_only"
    import openai
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from agent_sre.replay.tools import replayable

    @replayable
    def get_weather(city: str) -> str:
        return json.dumps({"city": city, "celsius": random.randint(-10, 35), "observed_ns": time.time_ns()})

    @replayable
    def to_fahrenheit(celsius: float) -> str:
        return f"{celsius * 9 / 5 + 32:.1f}"

    impl = {"get_weather": get_weather, "to_fahrenheit": to_fahrenheit}
    provider = TracerProvider(resource=Resource.create({"service.name": "weather-agent"}))  # + OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("weather-agent")
    client = openai.OpenAI(api_key="test")  # OPENAI_BASE_URL
    result: dict = {"tools": []}
    try:
        with tracer.start_as_current_span("invoke_agent weather-agent", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "weather-agent"}) as root:
            result["trace_id"] = format(root.get_span_context().trace_id, "032x")
            messages: list = [{"role": "system", "content": "You answer weather questions with the tools."},
                              {"role": "user", "content": QUESTION}]
            for step in range(1, 6):
                if changed and step == 2:
                    messages.append({"role": "user", "content": "Round to whole degrees."})
                message = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                         tools=TOOLS).choices[0].message
                if not message.tool_calls:
                    result["answer"] = message.content
                    break
                messages.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls:
                    name, arguments = call.function.name, call.function.arguments
                    with tracer.start_as_current_span(f"execute_tool {name}", attributes={
                            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                            "gen_ai.tool.call.id": call.id, "gen_ai.tool.call.arguments": arguments}) as span:
                        output = impl[name](**json.loads(arguments))
                        span.set_attribute("gen_ai.tool.call.result", output)
                    result["tools"].append([name, json.loads(arguments), output])
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
    finally:
        provider.shutdown()  # exports what is left and waits for the pipeline's answer
        with open(result_path, "w") as f:
            json.dump(result, f)


# --- the scripted model standing in for OpenAI --------------------------------------------------------

def scripted_answer(body: dict) -> dict:
    """First: get_weather(Paris); after the weather: to_fahrenheit(its celsius); after that: the answer."""
    tool_results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not tool_results:
        message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_w1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]}
    elif len(tool_results) == 1:
        celsius = json.loads(tool_results[0])["celsius"]
        message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_f1", "type": "function", "function": {
            "name": "to_fahrenheit", "arguments": json.dumps({"celsius": celsius})}}]}
    else:
        weather = json.loads(tool_results[0])
        message = {"role": "assistant", "content": f"It is {tool_results[1]}F in Paris "
                                                   f"(observed at {weather['observed_ns']})."}
    return {"id": f"chatcmpl-{len(tool_results)}", "object": "chat.completion", "created": int(time.time()),
            "model": "gpt-4o-mini", "choices": [{"index": 0, "message": message, "logprobs": None,
                                                 "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": 40 + 10 * len(tool_results), "completion_tokens": 12, "total_tokens": 0}}


@pytest.fixture
def scripted_model():
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(scripted_answer(await request.json()))

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state = {"url": f"http://127.0.0.1:{runner.addresses[0][1]}/v1"}

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.run_until_complete(runner.cleanup())

    state["stop"] = stop
    yield state
    stop()


# --- the test -------------------------------------------------------------------------------------------

def query(ports: Ports, sql: str) -> list[list]:
    req = urllib.request.Request(f"http://127.0.0.1:{ports.admin}/v1/query", data=json.dumps({"sql": sql}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["rows"]


def agent_env(ports: Ports, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_", "AGENT_SRE_REPLAY"))}
    return {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{ports.http}/v1/traces", **extra}


def replay(ports: Ports, trace_id: str, result: str, *more: str, changed: bool = False) -> subprocess.CompletedProcess:
    command = [*CLI, "replay", trace_id, "--serve", f"127.0.0.1:{free_port()}", "--endpoint",
               f"127.0.0.1:{ports.admin}", "--format", "json", *more, "--", *AGENT, result,
               *(["--changed"] if changed else [])]
    return subprocess.run(command, cwd=REPO, env=agent_env(ports, {}), capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_a_recorded_openai_agent_loop_is_reproduced_exactly_and_a_changed_one_diverges_at_step_2(
        tmp_path, scripted_model):
    ports = Ports.allocate()
    pipeline = spawn_pipeline(pipeline_yaml(ports, tmp_path), ports, tmp_path, tmp_path / "pipeline.log")
    try:
        # 1. Record: the agent against the scripted model, into the running pipeline.
        recorded_path = tmp_path / "recorded.json"
        subprocess.run([*AGENT, str(recorded_path)], cwd=REPO, check=True, timeout=120,
                       env=agent_env(ports, {"OPENAI_BASE_URL": scripted_model["url"]}))
        recorded = json.loads(recorded_path.read_text())
        trace_id = recorded["trace_id"]
        assert [t[0] for t in recorded["tools"]] == ["get_weather", "to_fahrenheit"]
        assert eventually(lambda: query(ports, f"SELECT count(*) FROM spans WHERE trace_id = '{trace_id}'") == [[6]])
        scripted_model["stop"]()  # from here on, no model answers but the replay server

        # 2. Replay: the same agent re-run against the recording.
        rerun_path = tmp_path / "rerun.json"
        res = replay(ports, trace_id, str(rerun_path))
        assert res.returncode == 0, res.stdout + res.stderr
        out = json.loads(res.stdout)
        rerun = json.loads(rerun_path.read_text())
        assert rerun["tools"] == recorded["tools"]  # same tools, same arguments, same (random) results
        assert rerun["answer"] == recorded["answer"] and "observed at" in rerun["answer"]
        assert out["report"]["first_divergence"] is None
        assert (out["report"]["llm"]["served"], out["report"]["tools"]["served"]) == (3, 2)
        # the re-run came back into the pipeline as a new trace marked as a replay of the original
        assert out["replay_trace_id"] == rerun["trace_id"] != trace_id
        marks = query(ports, "SELECT DISTINCT resource_attributes['agent_sre.replay.of'] FROM spans "
                             f"WHERE trace_id = '{rerun['trace_id']}'")
        assert marks == [[trace_id]]
        rep = out["reproduction"]
        assert rep["same"] is True
        assert rep["tool_sequence"]["original"] == rep["tool_sequence"]["rerun"] == [
            [name, args] for name, args, _ in recorded["tools"]]
        assert [r["rerun"] for r in rep["tool_results"]] == [r for _, _, r in recorded["tools"]]
        assert rep["llm_outputs"][-1]["rerun"] == recorded["answer"]
        diff = out["diff"]  # the replay result is the diff (processors/replay/diff.py)
        assert diff["a"]["trace_id"] == trace_id and diff["b"]["trace_id"] == rerun["trace_id"]
        assert diff["tools"]["equal"] and diff["tools"]["distance"] == 0
        assert diff["tools"]["a"] == ["get_weather", "to_fahrenheit"]
        assert diff["output"]["changed"] is False

        # 3. A changed agent (another prompt at its second model call) diverges at step 2.
        res = replay(ports, trace_id, str(tmp_path / "changed.json"), changed=True)
        assert res.returncode == 1, res.stdout + res.stderr
        first = json.loads(res.stdout)["report"]["first_divergence"]
        assert (first["kind"], first["step"]) == ("llm", 2)
        assert first["first_difference"]["message"] == 4 and first["first_difference"]["expected"] is None
        assert first["first_difference"]["got"]["content"] == "Round to whole degrees."
        assert first["why"] == "the request has 5 messages, the recording 4"

        # 4. The table output a person reads.
        res = subprocess.run([*CLI, "replay", trace_id, "--serve", f"127.0.0.1:{free_port()}", "--endpoint",
                              f"127.0.0.1:{ports.admin}", "--", *AGENT, str(tmp_path / "again.json")],
                             cwd=REPO, env=agent_env(ports, {}), capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"export OTEL_RESOURCE_ATTRIBUTES=agent_sre.replay.of={trace_id}" in res.stdout
        assert "no divergence" in res.stdout and "tool sequence: same (get_weather -> to_fahrenheit)" in res.stdout
        (tmp_path / "replay_output.txt").write_text(res.stdout)
    finally:
        pipeline.proc.send_signal(signal.SIGINT)
        pipeline.proc.wait(timeout=60)

    # 5. The pipeline stopped: the recording is read from the file, the re-run still reproduces it.
    res = subprocess.run([*CLI, "replay", trace_id, "--serve", f"127.0.0.1:{free_port()}", "--db",
                          str(tmp_path / "spans.duckdb"), "--format", "json", "--", *AGENT,
                          str(tmp_path / "offline.json")],
                         cwd=REPO, env=agent_env(ports, {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}), capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((tmp_path / "offline.json").read_text())["answer"] == recorded["answer"]
    assert "no running pipeline: the re-run's spans are not collected" in res.stderr


if __name__ == "__main__":
    run_agent(sys.argv[1], changed="--changed" in sys.argv[2:])
