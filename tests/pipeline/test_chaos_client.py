"""``agent_sre.chaos`` inside an agent: each of the nine faults really happens (the call waits, times
out, raises the standard error, returns the drifted shape, the degraded answer or the multiplied
tokens), at the seeded rate, within the blast radius and the schedule; experiments come from the
decisions API and stop at the next refresh; HTTP transports (httpx, requests, the openai client) fail
as real failures do; injected faults are tagged on the current span."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agent_sre.chaos import (
    Chaos,
    ChaosCredentialExpired,
    ChaosDelegationRejected,
    ChaosNetworkPartition,
    ChaosTimeout,
    ChaosToolError,
    InjectedFault,
)
from agent_sre.chaos.faults import degrade, drift, multiply_usage

NOW = 1_800_000_000.0


def experiment(*faults: dict, exp_id: str = "CHX-00001", seed: int = 7, start: float = NOW - 10,
               until: float = NOW + 3600, **radius) -> dict:
    return {"id": exp_id, "template": "t", "seed": seed, "start": start, "until": until,
            "schedule": radius.pop("schedule", {}), "blast_radius": {"agents": ["a"], **radius},
            "faults": [{"rate": 1.0, "after": 0.0, "tools": [], "models": [], "params": {}, **f} for f in faults]}


def chaos(*experiments: dict, clock=lambda: NOW, **kw) -> Chaos:
    return Chaos("a", experiments=list(experiments), clock=clock, **kw)


# --- rates, seeds, blast radius, schedules -------------------------------------------------------------

def test_without_experiments_the_call_runs_untouched():
    c = chaos()
    calls = []

    @c.tool("search")
    def search(q):
        calls.append(q)
        return {"q": q}

    assert [search(i) for i in range(3)] == [{"q": 0}, {"q": 1}, {"q": 2}] and calls == [0, 1, 2]
    assert search.__name__ == "search"


def test_tool_errors_hit_the_seeded_draws_exactly_and_the_rate_within_3_sigma():
    n, rate, seed = 2000, 0.3, 42
    c = chaos(experiment({"type": "tool_error", "rate": rate}, seed=seed))

    @c.tool("search")
    def search():
        return "ok"

    failed = []
    for _ in range(n):
        try:
            search()
            failed.append(False)
        except ChaosToolError as exc:
            assert (exc.experiment_id, exc.fault_type) == ("CHX-00001", "tool_error")
            failed.append(True)
    # by hand: the fault's own stream, seeded with (seed, experiment, agent, replica, fault index)
    stream = random.Random(f"{seed}\x1fCHX-00001\x1fa\x1f\x1f0")
    assert failed == [stream.random() < rate for _ in range(n)]
    assert abs(sum(failed) / n - rate) < 3 * (rate * (1 - rate) / n) ** 0.5  # 0.3 +- 0.031
    assert c.injected == sum(failed)


def test_another_replica_draws_another_stream_and_the_same_seed_repeats_a_run():
    exp = experiment({"type": "tool_error", "rate": 0.5})

    def run(**kw):
        c = chaos(exp, **kw)
        out = []
        for _ in range(64):
            try:
                with c.call("tool", "x"):
                    out.append(0)
            except ChaosToolError:
                out.append(1)
        return out

    assert run() == run()
    assert run(replica="pod-2") != run()


def test_blast_radius_limits_tools_models_and_agents():
    c = chaos(experiment({"type": "tool_error"}, {"type": "llm_degraded"}, tools=["search"], models=["gpt-4o"]))
    assert c.pick("tool", "search").type == "tool_error"
    assert c.pick("tool", "calculator") is None
    assert c.pick("llm", "gpt-4o").type == "llm_degraded"
    assert c.pick("llm", "gpt-4o-mini") is None
    assert c.pick("delegation", "b") is None  # neither fault applies to a delegation
    other = Chaos("b", experiments=[experiment({"type": "tool_error"})], clock=lambda: NOW)
    assert other.pick("tool", "search") is None  # agent b is not in the blast radius


def test_a_share_of_sessions_is_chosen_by_hash_the_same_in_every_process():
    exp = experiment({"type": "tool_error"}, sessions=0.25)
    first, second = chaos(exp), chaos(exp)
    sessions = [f"s-{i}" for i in range(4000)]
    hit = [first.pick("tool", "x", session=s) is not None for s in sessions]
    assert hit == [second.pick("tool", "x", session=s) is not None for s in sessions]
    assert abs(sum(hit) / len(hit) - 0.25) < 0.03  # 3 sigma of 4000 draws: 0.021
    with first.session("s-1"), second.session("s-1"):  # the session() context is the call's session
        assert (first.pick("tool", "x") is None) == (second.pick("tool", "x") is None) == (not hit[1])
    assert first.pick("tool", "x") is None  # no session known: not in a partial blast radius


def test_schedule_start_until_bursts_and_a_cascade_offset():
    now = [NOW]
    c = chaos(experiment({"type": "tool_error"}, {"type": "llm_latency", "after": 30.0, "params": {"delay": 0.0}},
                         start=NOW, until=NOW + 100, schedule={"period": 10.0, "active": 3.0}),
              clock=lambda: now[0])
    at = {}
    for offset in (-1, 0, 2.9, 3, 9.9, 10, 12, 29, 31, 100, 101):
        now[0] = NOW + offset
        at[offset] = (c.pick("tool", "t") is not None, c.pick("llm", "m") is not None)
    assert at == {-1: (False, False), 0: (True, False), 2.9: (True, False), 3: (False, False), 9.9: (False, False),
                  10: (True, False), 12: (True, False), 29: (False, False), 31: (True, True), 100: (False, False),
                  101: (False, False)}


def test_a_call_gets_at_most_one_fault_drawn_in_order():
    c = chaos(experiment({"type": "network_partition", "rate": 0.5}, {"type": "tool_error", "rate": 1.0}))
    kinds = [c.pick("tool", "t").type for _ in range(200)]
    assert set(kinds) == {"network_partition", "tool_error"}
    stream = random.Random("7\x1fCHX-00001\x1fa\x1f\x1f0")
    assert kinds == ["network_partition" if stream.random() < 0.5 else "tool_error" for _ in range(200)]


# --- each fault, for real ----------------------------------------------------------------------------

def test_tool_timeout_waits_its_delay_then_raises_a_timeout_error_without_calling():
    c = chaos(experiment({"type": "tool_timeout", "params": {"delay": 0.2}}))
    called = []
    slow = c.tool("fetch")(lambda: called.append(1))
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        slow()
    assert time.monotonic() - started >= 0.2
    assert isinstance(info.value, ChaosTimeout) and isinstance(info.value, InjectedFault)
    assert "tool fetch timed out after 0.2s" in str(info.value) and called == []


def test_llm_latency_delays_the_call_then_runs_it():
    c = chaos(experiment({"type": "llm_latency", "params": {"delay": 0.15, "jitter": 0.0}}))
    started = time.monotonic()
    assert c.llm("gpt-4o")(lambda: "answer")() == "answer"
    assert time.monotonic() - started >= 0.15


def test_failing_faults_raise_the_errors_real_failures_raise():
    expected = {"credential_expire": (ChaosCredentialExpired, PermissionError),
                "network_partition": (ChaosNetworkPartition, ConnectionError),
                "delegation_reject": (ChaosDelegationRejected, RuntimeError)}
    for fault, (chaos_error, std_error) in expected.items():
        c = chaos(experiment({"type": fault, "params": {"message": "nope"}}))
        with pytest.raises(std_error) as info, c.call("delegation", "billing-agent"):
            pytest.fail("the call must not run")
        assert type(info.value) is chaos_error and str(info.value) == "chaos CHX-00001: delegation billing-agent: nope"


def test_wrong_schema_returns_the_drifted_shape():
    c = chaos(experiment({"type": "tool_wrong_schema", "params": {"mode": "rename"}}))
    weather = c.tool("weather")(lambda city: {"city": city, "celsius": 21})
    assert weather("Paris") == {"city_v2": "Paris", "celsius_v2": 21}
    as_json = c.tool("weather")(lambda: '{"celsius": 21}')
    assert json.loads(as_json()) == {"celsius_v2": 21}
    assert drift({"a": 1}, "nest") == {"data": {"a": 1}, "schema_version": 2}
    assert drift({"a": 1, "b": [True, 2.5]}, "stringify") == {"a": "1", "b": ["true", "2.5"]}
    assert json.loads(drift("plain text")) == {"data": "plain text", "schema_version": 2}


def test_degraded_answers_keep_a_quarter_of_their_text():
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "abcdefghijklmnop"}}]}
    c = chaos(experiment({"type": "llm_degraded", "params": {"mode": "truncate", "keep": 0.25}}))
    answer = c.llm("gpt-4o")(lambda: completion)()
    assert answer["choices"][0]["message"]["content"] == "abcd" and completion["choices"][0]["message"]["content"] \
        == "abcdefghijklmnop"  # the original is not changed
    assert degrade("hello", "empty") == "" and degrade("hello", "canned", text="no") == "no"
    assert degrade({"content": [{"type": "text", "text": "abcdefgh"}]}, keep=0.5) == {
        "content": [{"type": "text", "text": "abcd"}]}


def test_cost_spike_multiplies_the_answers_usage_and_the_current_spans_tokens():
    provider, memory = _tracing()
    c = chaos(experiment({"type": "cost_spike", "params": {"multiplier": 10.0}}))
    ask = c.llm("gpt-4o")(lambda: {"usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
    with provider.get_tracer("t").start_as_current_span("chat", attributes={"gen_ai.usage.input_tokens": 100}):
        answer = ask()
    assert answer["usage"] == {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    (span,) = memory.get_finished_spans()
    assert span.attributes["gen_ai.usage.input_tokens"] == 1000
    assert (span.attributes["chaos.fault.type"], span.attributes["chaos.cost.multiplier"]) == ("cost_spike", 10.0)
    assert multiply_usage({"no": "usage"}, 10) == {"no": "usage"}


def test_injected_faults_are_tagged_on_the_current_span_with_an_error_status():
    provider, memory = _tracing()
    tracer = provider.get_tracer("t")
    c = chaos(experiment({"type": "tool_error", "rate": 0.5}))
    search = c.tool("search")(lambda: "ok")
    for _ in range(40):
        with tracer.start_as_current_span("execute_tool search"):
            try:
                search()
            except ChaosToolError:
                pass  # the agent recovers; the span still says what happened
    spans = memory.get_finished_spans()
    tagged = [s for s in spans if "chaos.fault.type" in s.attributes]
    assert len(tagged) == c.injected and 0 < len(tagged) < 40
    for s in tagged:
        assert s.attributes["chaos.experiment.id"] == "CHX-00001" and s.status.status_code is StatusCode.ERROR
    assert all(s.status.status_code is StatusCode.UNSET for s in spans if s not in tagged)


def test_async_calls_wait_with_asyncio_and_raise_the_same_errors():
    c = chaos(experiment({"type": "tool_timeout", "params": {"delay": 0.1}}))

    @c.tool
    async def fetch():
        return "never"

    async def main():
        started = time.monotonic()
        ticks = asyncio.create_task(asyncio.sleep(0.05))  # the loop is not blocked while the fault waits
        with pytest.raises(ChaosTimeout):
            await fetch()
        assert ticks.done() and time.monotonic() - started >= 0.1

    asyncio.run(main())


# --- experiments from the decisions API ---------------------------------------------------------------

class DecisionsStub:
    """GET /v1/decisions/{agent}: a test double of the pipeline's decisions API (the real one is tested in
    tests/processors/chaos); counts the requests."""

    def __init__(self):
        self.answer: dict = {"action": "allow", "chaos": []}
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                stub.requests += 1
                body = json.dumps({"agent_id": self.path.rsplit("/", 1)[1], **stub.answer}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def decisions():
    stub = DecisionsStub()
    yield stub
    stub.close()


def test_experiments_come_from_the_decisions_api_and_stop_at_the_next_refresh(decisions):
    decisions.answer["chaos"] = [experiment({"type": "tool_error"}, start=time.time() - 1, until=time.time() + 60)]
    c = Chaos("a", decisions.endpoint, refresh=0.3)
    search = c.tool("search")(lambda: "ok")
    with pytest.raises(ChaosToolError):
        search()
    for _ in range(100):  # within the refresh interval: answered from the cache
        with pytest.raises(ChaosToolError):
            search()
    assert decisions.requests == 1
    decisions.answer["chaos"] = []  # the pipeline ended the experiment
    with pytest.raises(ChaosToolError):
        search()  # still cached
    time.sleep(0.35)
    assert search() == "ok" and decisions.requests == 2


def test_a_refreshed_announcement_continues_the_random_stream(decisions):
    exp = experiment({"type": "tool_error", "rate": 0.5}, start=time.time() - 1, until=time.time() + 60)
    decisions.answer["chaos"] = [exp]
    c = Chaos("a", decisions.endpoint, refresh=0.0)  # asks before every call
    hits = [c.pick("tool", "x") is not None for _ in range(50)]
    assert decisions.requests == 50
    stream = random.Random("7\x1fCHX-00001\x1fa\x1f\x1f0")
    assert hits == [stream.random() < 0.5 for _ in range(50)]


def test_nothing_is_injected_when_the_pipeline_cannot_be_asked():
    from tests.conftest import free_port

    c = Chaos("a", f"127.0.0.1:{free_port()}", refresh=1.0)
    assert c.tool("x")(lambda: "ok")() == "ok" and c.experiments() == []


def test_unknown_faults_and_malformed_entries_are_skipped():
    c = chaos(experiment({"type": "quantum_flux"}, {"type": "tool_error"}), {"id": "CHX-9"}, "junk")
    (exp,) = c.experiments()
    assert [f.type for f in exp.faults] == ["tool_error"]


# --- HTTP transports ------------------------------------------------------------------------------------

def completion(content: str = "The weather in Paris is sunny and 21 degrees.") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}}


def openai_client(c: Chaos, sent: list) -> openai.OpenAI:
    """The openai client on a stand-in model (httpx.MockTransport: no network) through chaos."""
    def model(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=completion())

    http = httpx.Client(transport=c.transport(httpx.MockTransport(model)))
    return openai.OpenAI(api_key="test", base_url="http://model.test/v1", http_client=http, max_retries=0)


def ask(client: openai.OpenAI, model: str = "gpt-4o-mini"):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather?"}])


def test_openai_through_the_transport_gets_degraded_answers_and_multiplied_tokens():
    sent: list = []
    degraded = openai_client(chaos(experiment({"type": "llm_degraded", "params": {"keep": 0.25}})), sent)
    assert ask(degraded).choices[0].message.content == "The weather"  # 11 of 46 characters
    spiked = openai_client(chaos(experiment({"type": "cost_spike", "params": {"multiplier": 10.0}})), sent)
    usage = ask(spiked).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (400, 120, 520)
    assert len(sent) == 2  # both calls reached the model


def test_openai_through_the_transport_fails_as_real_failures_do():
    sent: list = []
    expired = openai_client(chaos(experiment({"type": "credential_expire"})), sent)
    with pytest.raises(openai.AuthenticationError) as info:
        ask(expired)
    assert info.value.status_code == 401 and "credentials expired" in str(info.value)
    partitioned = openai_client(chaos(experiment({"type": "network_partition"})), sent)
    with pytest.raises(openai.APIConnectionError):
        ask(partitioned)
    assert sent == []  # nothing reached the model
    slow = openai_client(chaos(experiment({"type": "llm_latency", "params": {"delay": 0.2}})), sent)
    started = time.monotonic()
    assert ask(slow).choices[0].message.content.startswith("The weather")
    assert time.monotonic() - started >= 0.2 and len(sent) == 1


def test_a_model_filter_reads_the_model_of_the_request():
    sent: list = []
    client = openai_client(chaos(experiment({"type": "llm_degraded", "params": {"mode": "empty"}}, models=["gpt-4o"])),
                           sent)
    assert ask(client, "gpt-4o").choices[0].message.content == ""
    assert ask(client, "gpt-4o-mini").choices[0].message.content.startswith("The weather")


def test_httpx_tool_calls_get_500s_timeouts_and_drifted_json():
    def tool(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"city": "Paris", "celsius": 21})

    errors = httpx.Client(transport=chaos(experiment({"type": "tool_error", "params": {"status": 503}})).transport(
        httpx.MockTransport(tool)))
    answer = errors.get("http://weather.test/now")
    assert answer.status_code == 503 and answer.json()["error"]["chaos_experiment_id"] == "CHX-00001"
    drifted = httpx.Client(transport=chaos(experiment({"type": "tool_wrong_schema"})).transport(
        httpx.MockTransport(tool)))
    assert drifted.get("http://weather.test/now").json() == {"city_v2": "Paris", "celsius_v2": 21}
    hanging = httpx.Client(transport=chaos(experiment({"type": "tool_timeout", "params": {"delay": 0.1}}))
                           .transport(httpx.MockTransport(tool)))
    with pytest.raises(httpx.ReadTimeout):
        hanging.get("http://weather.test/now")
    only_other = httpx.Client(transport=chaos(experiment({"type": "tool_error"}, tools=["api.other.test"]))
                              .transport(httpx.MockTransport(tool)))
    assert only_other.get("http://weather.test/now").status_code == 200  # a tool is named by its host


def test_the_async_httpx_transport_fails_too():
    async def tool(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    async def main():
        async with httpx.AsyncClient(transport=chaos(experiment({"type": "network_partition"})).transport(
                httpx.MockTransport(tool))) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://weather.test/now")

    asyncio.run(main())


class CannedAdapter(requests.adapters.BaseAdapter):
    """A requests adapter answering {"city": "Paris"} without a network (the inner transport)."""

    def send(self, request, **kwargs):
        response = requests.models.Response()
        response.status_code = 200
        response._content = b'{"city": "Paris"}'
        response.headers["Content-Type"] = "application/json"
        response.url, response.request = request.url, request
        return response

    def close(self):
        pass


def test_a_requests_session_with_the_adapter_fails_as_requests_does():
    def session(fault: dict) -> requests.Session:
        s = requests.Session()
        s.mount("http://", chaos(experiment(fault)).transport(CannedAdapter()))
        return s

    with pytest.raises(requests.exceptions.ConnectionError):
        session({"type": "network_partition"}).get("http://weather.test/now")
    with pytest.raises(requests.exceptions.ReadTimeout):
        session({"type": "tool_timeout", "params": {"delay": 0.05}}).get("http://weather.test/now")
    refused = session({"type": "tool_error"}).get("http://weather.test/now")
    assert refused.status_code == 500 and refused.json()["error"]["code"] == "tool_error"
    with pytest.raises(requests.exceptions.HTTPError):
        refused.raise_for_status()
    assert session({"type": "tool_wrong_schema", "params": {"mode": "nest"}}).get("http://weather.test/now").json() \
        == {"data": {"city": "Paris"}, "schema_version": 2}
    assert session({"type": "llm_latency"}).get("http://weather.test/now").json() == {"city": "Paris"}  # not a tool fault


def test_wrapping_something_that_is_not_a_transport_says_what_it_expects():
    with pytest.raises(TypeError, match="expected an httpx transport"):
        chaos().transport(object())


def test_importing_the_helper_loads_no_third_party_module():
    probe = ("import sys, agent_sre.chaos; print(sorted(m for m in ('httpx', 'requests', 'opentelemetry', 'pyarrow', "
             "'duckdb', 'pydantic', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory
