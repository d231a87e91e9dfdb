"""replay contents: every convention's recorded messages read into one shape, from a real span store.

The attribute and event shapes are those the real instrumentations emit (captured from
opentelemetry-instrumentation-openai-v2 and openinference-instrumentation-openai against a local
server; the slow test at the end runs them again and checks they still read the same)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_signals import logs_request_to_table
from agent_sre.pipeline.storage.store import SpanStore
from agent_sre.processors.replay.contents import (
    ContentsMissing,
    ContentsRedacted,
    TraceNotFound,
    load_recording,
    read_recording,
    reproduction,
    span_output,
)
from tests.conftest import REPO
from tests.otlp_builders import any_value, kv
from tests.processors.redaction.helpers import processor as redaction_processor

TRACE = "5b8efff798038103d269b633813fc60c"
T0 = 1_700_000_000_000_000_000

# The two-call weather conversation every convention below records.
SYSTEM = {"role": "system", "content": "You are helpful.", "tool_calls": [], "tool_call_id": None}
USER = {"role": "user", "content": "Weather in Paris?", "tool_calls": [], "tool_call_id": None}
CALL = {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
ASSISTANT = {"role": "assistant", "content": None, "tool_calls": [CALL], "tool_call_id": None}
TOOL = {"role": "tool", "content": "sunny", "tool_calls": [], "tool_call_id": "call_1"}
REQUESTS = [[SYSTEM, USER], [SYSTEM, USER, ASSISTANT, TOOL]]
RESPONSES = [{"text": None, "tool_calls": [CALL], "finish_reason": "tool_calls"},
             {"text": "It is sunny.", "tool_calls": [], "finish_reason": "stop"}]


# --- a real store holding hand-built spans ------------------------------------------------------

def span(span_id: str, name: str, attrs: dict, *, events: tuple = (), scope: str = "test", start: int = 0,
         error: str | None = None, parent: str | None = None) -> dict:
    return {"span_id": span_id, "name": name, "attrs": attrs, "events": events, "scope": scope, "start": start,
            "error": error, "parent": parent}


def store_of(tmp_path, spans: list[dict], logs: tuple = (), transform=None) -> SpanStore:
    """A SpanStore holding the spans (and GenAI log records (span_id, event_name, body, attrs)), converted
    and normalised as the pipeline does; ``transform``: a processor's ``process`` applied first."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "weather-agent"))
    for s in spans:
        ss = rs.scope_spans.add()
        ss.scope.name = s["scope"]
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = bytes.fromhex(TRACE), bytes.fromhex(s["span_id"]), s["name"]
        if s["parent"]:
            sp.parent_span_id = bytes.fromhex(s["parent"])
        sp.start_time_unix_nano = T0 + s["start"] * 1000
        sp.end_time_unix_nano = sp.start_time_unix_nano + 500
        sp.attributes.extend(kv(k, v) for k, v in s["attrs"].items())
        for ev_name, ev_attrs in s["events"]:
            ev = sp.events.add()
            ev.name, ev.time_unix_nano = ev_name, sp.start_time_unix_nano + 1
            ev.attributes.extend(kv(k, v) for k, v in ev_attrs.items())
        if s["error"]:
            sp.status.code, sp.status.message = 2, s["error"]
    table = normalize(request_to_table(req).table, load_conventions())
    if transform is not None:
        table = transform(table)
    store = SpanStore(tmp_path / "spans.duckdb")
    store.append(table)
    if logs:
        lreq = ExportLogsServiceRequest()
        sl = lreq.resource_logs.add().scope_logs.add()
        for i, (span_id, event_name, body, attrs) in enumerate(logs):
            rec = sl.log_records.add()
            rec.time_unix_nano = T0 + i
            rec.event_name = event_name
            rec.trace_id, rec.span_id = bytes.fromhex(TRACE), bytes.fromhex(span_id)
            if body is not None:
                rec.body.CopyFrom(any_value(body))
            rec.attributes.extend(kv(k, v) for k, v in attrs.items())
        store.append_signal("logs", logs_request_to_table(lreq).table)
    return store


LLM1, LLM2, TOOL1 = "00000000000000a1", "00000000000000a2", "00000000000000b1"
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 3}
V2 = "opentelemetry.instrumentation.openai_v2"
WEATHER_TOOL = span(TOOL1, "execute_tool get_weather", {
    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.call.id": "call_1",
    "gen_ai.tool.call.arguments": '{"city": "Paris"}', "gen_ai.tool.call.result": "sunny"}, start=2)


def assert_weather_conversation(rec: dict) -> None:
    assert [c["request"] for c in rec["llm_calls"]] == REQUESTS
    assert [{k: c["response"][k] for k in ("text", "tool_calls", "finish_reason")} for c in rec["llm_calls"]] == RESPONSES
    assert [c["step"] for c in rec["llm_calls"]] == [1, 2]
    assert rec["missing"] == [] and rec["redacted"] == []


# --- each convention ----------------------------------------------------------------------------

def test_genai_input_and_output_messages_on_the_span_are_read(tmp_path):
    # openai-v2 with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, CAPTURE_MESSAGE_CONTENT=span_only
    sys_user = [{"role": "system", "parts": [{"content": "You are helpful.", "type": "text"}]},
                {"role": "user", "parts": [{"content": "Weather in Paris?", "type": "text"}]}]
    call = {"arguments": {"city": "Paris"}, "name": "get_weather", "id": "call_1", "type": "tool_call"}
    store = store_of(tmp_path, [
        span(LLM1, "chat gpt-4o-mini", {**CHAT, "gen_ai.input.messages": json.dumps(sys_user),
                                        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [call],
                                                                               "finish_reason": "tool_calls"}])},
             scope=V2, start=1),
        WEATHER_TOOL,
        span(LLM2, "chat gpt-4o-mini", {**CHAT, "gen_ai.input.messages": json.dumps(sys_user + [
            {"role": "assistant", "parts": [call]},
            {"role": "tool", "parts": [{"response": "sunny", "id": "call_1", "type": "tool_call_response"}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"content": "It is sunny.", "type": "text"}], "finish_reason": "stop"}])}, scope=V2, start=3)])
    rec = load_recording(store.read, TRACE)
    assert_weather_conversation(rec)
    assert {c["source"] for c in rec["llm_calls"]} == {"gen_ai.input.messages"}
    assert [(c["input_tokens"], c["output_tokens"], c["model"]) for c in rec["llm_calls"]] == [(5, 3, "gpt-4o-mini")] * 2
    assert rec["tool_calls"] == [{"step": 1, "span_id": TOOL1, "name": "get_weather", "call_id": "call_1",
                                  "arguments": {"city": "Paris"}, "result": "sunny", "status": "unset",
                                  "status_message": "", "source": "gen_ai.tool.call"}]


def test_system_instructions_become_the_leading_system_message(tmp_path):
    store = store_of(tmp_path, [span(LLM1, "chat", {
        **CHAT, "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You are helpful."}]),
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}]}])})])
    rec = load_recording(store.read, TRACE)
    assert rec["llm_calls"][0]["request"] == [SYSTEM, USER]
    assert rec["llm_calls"][0]["response"]["text"] == "Sunny."


def test_genai_log_events_of_the_v1_30_conventions_are_read_from_the_logs_table(tmp_path):
    # openai-v2 with CAPTURE_MESSAGE_CONTENT=true and no opt-in: the contents are log records only
    openai_call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    logs = (
        (LLM1, "gen_ai.system.message", {"content": "You are helpful."}, {"gen_ai.system": "openai"}),
        (LLM1, "gen_ai.user.message", {"content": "Weather in Paris?"}, {"gen_ai.system": "openai"}),
        (LLM1, "gen_ai.choice", {"index": 0, "finish_reason": "tool_calls",
                                 "message": {"role": "assistant", "tool_calls": [openai_call]}}, {}),
        (LLM2, "gen_ai.system.message", {"content": "You are helpful."}, {}),
        (LLM2, "gen_ai.user.message", {"content": "Weather in Paris?"}, {}),
        (LLM2, "gen_ai.assistant.message", {"tool_calls": [openai_call]}, {}),
        (LLM2, "gen_ai.tool.message", {"content": "sunny", "id": "call_1"}, {}),
        (LLM2, "gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "It is sunny."}}, {}),
    )
    store = store_of(tmp_path, [span(LLM1, "chat gpt-4o-mini", CHAT, scope=V2, start=1), WEATHER_TOOL,
                                span(LLM2, "chat gpt-4o-mini", CHAT, scope=V2, start=3)], logs)
    rec = load_recording(store.read, TRACE)
    assert_weather_conversation(rec)
    assert {c["source"] for c in rec["llm_calls"]} == {"gen_ai events"}


def test_the_inference_details_event_is_read_from_a_log_record(tmp_path):
    # openai-v2 with CAPTURE_MESSAGE_CONTENT=event_only: one log record per call, messages as attributes
    details = "gen_ai.client.inference.operation.details"
    logs = ((LLM1, details, None, {"gen_ai.input.messages": [
        {"role": "system", "parts": [{"content": "You are helpful.", "type": "text"}]},
        {"role": "user", "parts": [{"content": "Weather in Paris?", "type": "text"}]}],
        "gen_ai.output.messages": [{"role": "assistant", "finish_reason": "tool_calls", "parts": [
            {"arguments": {"city": "Paris"}, "name": "get_weather", "id": "call_1", "type": "tool_call"}]}]}),)
    store = store_of(tmp_path, [span(LLM1, "chat", CHAT, scope=V2)], logs)
    call = load_recording(store.read, TRACE)["llm_calls"][0]
    assert (call["request"], call["response"]) == (REQUESTS[0], RESPONSES[0])


def test_genai_span_events_are_read(tmp_path):
    events = (("gen_ai.system.message", {"content": "You are helpful."}),
              ("gen_ai.user.message", {"gen_ai.event.content": json.dumps({"content": "Weather in Paris?"})}),
              ("gen_ai.assistant.message", {"tool_calls": json.dumps([
                  {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}])}),
              ("gen_ai.tool.message", {"content": "sunny", "id": "call_1"}),
              ("gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                 "message": json.dumps({"role": "assistant", "content": "It is sunny."})}))
    store = store_of(tmp_path, [span(LLM2, "chat", CHAT, events=events)])
    call = load_recording(store.read, TRACE)["llm_calls"][0]
    assert (call["request"], call["response"]) == (REQUESTS[1], RESPONSES[1])


def test_the_2024_prompt_and_completion_span_events_are_read(tmp_path):
    events = (("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "system", "content": "You are helpful."},
                                                                      {"role": "user", "content": "Weather in Paris?"}])}),
              ("gen_ai.content.completion", {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "Sunny."}])}))
    store = store_of(tmp_path, [span(LLM1, "chat", CHAT, events=events)])
    call = load_recording(store.read, TRACE)["llm_calls"][0]
    assert call["request"] == [SYSTEM, USER] and call["response"]["text"] == "Sunny."


OI_LLM = {"openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o-mini",
          "llm.token_count.prompt": 5, "llm.token_count.completion": 3}


def test_openinference_flattened_messages_are_read(tmp_path):
    first = {"llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": "You are helpful.",
             "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": "Weather in Paris?"}
    call_keys = {"tool_calls.0.tool_call.id": "call_1", "tool_calls.0.tool_call.function.name": "get_weather",
                 "tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}'}
    store = store_of(tmp_path, [
        span(LLM1, "ChatCompletion", {**OI_LLM, **first, "llm.output_messages.0.message.role": "assistant",
                                      **{f"llm.output_messages.0.message.{k}": v for k, v in call_keys.items()},
                                      "llm.finish_reason": "tool_calls"}, scope="openinference.instrumentation.openai"),
        span(TOOL1, "get_weather", {"openinference.span.kind": "TOOL", "tool.name": "get_weather",
                                    "input.value": '{"city": "Paris"}', "output.value": "sunny"}, start=2),
        span(LLM2, "ChatCompletion", {
            **OI_LLM, **first, "llm.input_messages.2.message.role": "assistant",
            **{f"llm.input_messages.2.message.{k}": v for k, v in call_keys.items()},
            "llm.input_messages.3.message.role": "tool", "llm.input_messages.3.message.tool_call_id": "call_1",
            "llm.input_messages.3.message.content": "sunny", "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "It is sunny.", "llm.finish_reason": "stop"},
            scope="openinference.instrumentation.openai", start=3)])
    rec = load_recording(store.read, TRACE)
    assert_weather_conversation(rec)
    assert [(t["name"], t["arguments"], t["result"], t["source"]) for t in rec["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}, "sunny", "openinference")]


def test_openinference_input_and_output_values_of_an_anthropic_call_are_read(tmp_path):
    request = {"model": "claude", "system": "You are helpful.", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}]}
    response = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "It is sunny."}],
                "stop_reason": "end_turn"}
    store = store_of(tmp_path, [span(LLM2, "Messages", {**OI_LLM, "input.value": json.dumps(request),
                                                         "output.value": json.dumps(response)})])
    call = load_recording(store.read, TRACE)["llm_calls"][0]
    assert call["request"] == REQUESTS[1]
    assert call["response"] == {"text": "It is sunny.", "tool_calls": [], "finish_reason": "end_turn"}


def test_openllmetry_indexed_prompt_and_completion_attributes_are_read(tmp_path):
    store = store_of(tmp_path, [
        span(LLM1, "openai.chat", {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                                   "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "You are helpful.",
                                   "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Weather in Paris?",
                                   "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": "tool_calls",
                                   "gen_ai.completion.0.tool_calls.0.id": "call_1",
                                   "gen_ai.completion.0.tool_calls.0.name": "get_weather",
                                   "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Paris"}'},
             scope="opentelemetry.instrumentation.openai.v1"),
        span(TOOL1, "get_weather.tool", {"traceloop.span.kind": "tool", "traceloop.entity.name": "get_weather",
                                         "traceloop.entity.input": '{"city": "Paris"}',
                                         "traceloop.entity.output": "sunny"}, start=2)])
    rec = load_recording(store.read, TRACE)
    assert rec["llm_calls"][0]["request"] == REQUESTS[0]
    assert rec["llm_calls"][0]["response"] == RESPONSES[0]
    assert [(t["arguments"], t["result"], t["source"]) for t in rec["tool_calls"]] == [({"city": "Paris"}, "sunny", "traceloop")]


def test_span_output_is_the_answer_text_else_its_tool_calls_else_the_tool_result():
    answer = {"gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "Hi"}]}])}
    calls = {"llm.output_messages.0.message.role": "assistant",
             "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
             "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city":"Paris","days":2}'}
    assert span_output(answer) == "Hi"
    assert span_output(calls) == 'get_weather({"city": "Paris", "days": 2})'
    assert span_output({"gen_ai.tool.call.result": "sunny", "gen_ai.tool.call.arguments": "{}"}) == "sunny"
    assert span_output({"output.value": "42"}) == "42"
    assert span_output({"gen_ai.request.model": "gpt-4o"}) is None
    assert span_output({}, [{"name": "gen_ai.choice", "attributes": {"message": '{"content": "from an event"}'}}]) \
        == "from an event"


# --- refusals -------------------------------------------------------------------------------------

def test_a_trace_without_contents_names_the_setting_that_records_them(tmp_path):
    store = store_of(tmp_path, [span(LLM1, "chat gpt-4o-mini", CHAT, scope=V2), WEATHER_TOOL])
    with pytest.raises(ContentsMissing) as err:
        load_recording(store.read, TRACE)
    message = str(err.value)
    assert f"trace {TRACE}: LLM call(s) 1 (chat gpt-4o-mini, scope {V2}) have no recorded" in message
    assert message.index("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true") \
        < message.index("OPENINFERENCE_HIDE_INPUTS") < message.index("TRACELOOP_TRACE_CONTENT=true")


def test_openinference_hidden_inputs_name_its_settings_first(tmp_path):
    store = store_of(tmp_path, [span(LLM1, "ChatCompletion", {**OI_LLM, "input.value": "__REDACTED__",
                                                               "output.value": "__REDACTED__"},
                                     scope="openinference.instrumentation.openai")])
    with pytest.raises(ContentsMissing) as err:
        load_recording(store.read, TRACE)
    message = str(err.value)
    assert "OpenInference hid them: '__REDACTED__'" in message
    assert message.index("OPENINFERENCE_HIDE_INPUTS") < message.index("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")


def test_contents_masked_by_the_redaction_processor_are_refused_naming_the_rule(tmp_path):
    asked = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Mail bob@example.com the forecast"}]}])
    store = store_of(tmp_path, [span(LLM1, "chat", {**CHAT, "gen_ai.input.messages": asked,
                                                     "gen_ai.output.messages": "[]"})],
                     transform=redaction_processor(presets=["pii"]).process)
    stored = store.read("SELECT attributes['gen_ai.input.messages'] FROM spans")[0][0]
    assert "[REDACTED:email]" in stored  # the real processor's mask, as stored
    with pytest.raises(ContentsRedacted) as err:
        load_recording(store.read, TRACE)
    assert "redacted by the redaction processor" in str(err.value) and "llm step 1 (email)" in str(err.value)


def test_contents_dropped_by_the_genai_content_preset_are_refused_as_redacted(tmp_path):
    store = store_of(tmp_path, [span(LLM1, "chat", {**CHAT, "gen_ai.input.messages": "[]", "gen_ai.output.messages": "[]"})],
                     transform=redaction_processor(presets=["genai-content"]).process)
    with pytest.raises(ContentsRedacted) as err:
        load_recording(store.read, TRACE)
    assert "genai-content" in str(err.value) and "gen_ai.input.messages.length" in str(err.value)


def test_an_unknown_trace_and_a_trace_without_llm_or_tool_spans_are_refused(tmp_path):
    store = store_of(tmp_path, [span(LLM1, "plain work", {"x": 1})])
    with pytest.raises(TraceNotFound, match="no spans of trace 0+ in the store"):
        load_recording(store.read, "0" * 32)
    with pytest.raises(ContentsMissing, match="has no LLM or tool spans"):
        load_recording(store.read, TRACE)


def test_reproduction_compares_tool_sequence_answers_and_results_step_by_step(tmp_path):
    store = store_of(tmp_path, [span(LLM2, "chat", CHAT, events=(
        ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": "q"}])}),
        ("gen_ai.content.completion", {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "A"}])}))),
        WEATHER_TOOL])
    original = read_recording(store.read, TRACE)
    same = reproduction(original, original)
    assert same["same"] and same["tool_sequence"]["original"] == [["get_weather", {"city": "Paris"}]]
    changed = json.loads(json.dumps(original))
    changed["tool_calls"][0]["result"] = "rain"
    changed["llm_calls"][0]["response"]["text"] = "B"
    rep = reproduction(original, changed)
    assert not rep["same"] and rep["tool_sequence"]["same"]
    assert rep["llm_outputs"] == [{"step": 1, "original": "A", "rerun": "B", "same": False}]
    assert rep["tool_results"][0] == {"step": 1, "tool": "get_weather", "original": "sunny", "rerun": "rain", "same": False}


# --- the real instrumentations --------------------------------------------------------------------

def _record_with_real_instrumentation(mode: str, out: str) -> None:
    """Run by the slow test in a child process: the real instrumentation (``mode``) of the openai
    client against a local scripted server, its spans and log records written as OTLP protobuf."""
    import threading

    from aiohttp import web

    if mode.startswith("v2:"):
        setting = mode[3:]
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = setting
        if setting != "true":
            os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    import asyncio

    import openai
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    answers = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "assistant", "content": "It is sunny."}]

    async def chat(request):  # a scripted stand-in for OpenAI
        n = len([m for m in (await request.json())["messages"] if m["role"] == "tool"])
        return web.json_response({"id": f"c{n}", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "message": answers[n],
                                               "finish_reason": "tool_calls" if n == 0 else "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    threading.Thread(target=loop.run_forever, daemon=True).start()

    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    if mode == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test")
    messages: list = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Weather in Paris?"}]
    with tracer_provider.get_tracer("agent").start_as_current_span("invoke_agent weather"):  # one trace
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages).choices[0].message
        messages += [first.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    with open(out, "wb") as f:
        for blob in (encode_spans(spans.get_finished_spans()).SerializeToString(),
                     encode_logs(logs.get_finished_logs()).SerializeToString()):
            f.write(len(blob).to_bytes(8, "big") + blob)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["v2:span_only", "v2:true", "v2:event_only", "openinference"])
def test_what_the_real_instrumentations_record_reads_as_the_same_conversation(tmp_path, mode):
    out = tmp_path / "otlp.bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENINFERENCE_"))}
    subprocess.run([sys.executable, "-m", "tests.processors.replay.test_contents", mode, str(out)], cwd=REPO,
                   env=env, check=True, timeout=120)
    data = out.read_bytes()
    n = int.from_bytes(data[:8], "big")
    traces = ExportTraceServiceRequest.FromString(data[8:8 + n])
    logs = ExportLogsServiceRequest.FromString(data[16 + n:])
    store = SpanStore(tmp_path / "spans.duckdb")
    store.append(normalize(request_to_table(traces).table, load_conventions()))
    store.append_signal("logs", logs_request_to_table(logs).table)
    trace_id = store.read("SELECT any_value(trace_id) FROM spans")[0][0]
    rec = load_recording(store.read, trace_id)
    assert [c["request"] for c in rec["llm_calls"]] == REQUESTS
    assert [(c["response"]["text"], c["response"]["tool_calls"]) for c in rec["llm_calls"]] == \
        [(None, [CALL]), ("It is sunny.", [])]


if __name__ == "__main__":
    _record_with_real_instrumentation(sys.argv[1], sys.argv[2])
