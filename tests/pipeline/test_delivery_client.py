"""agent_sre.delivery inside an agent: the version is picked by a hash of the session id, follows the weight the
pipeline publishes within the stated tolerance, and changes at the next refresh; a real HTTP server stands in
for the pipeline's GET /v1/decisions/{agent}."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent_sre.delivery as delivery
from agent_sre.delivery import Router, bucket, share_tolerance, to_candidate
from agent_sre.pipeline.client.decisions import DecisionClient


def rollout(weight: float, shadow_share: float = 0.0, name: str = "bot-1-5") -> dict:
    return {"agent_id": "bot", "action": "allow", "rollout": {
        "name": name, "strategy": "shadow" if shadow_share else "canary", "baseline": "1.4", "candidate": "1.5",
        "weight": weight, "state": "progressing", "step": 0, "steps": 4, "shadow_share": shadow_share}}


class FakePipeline:
    """GET /v1/decisions/{agent} answering ``self.answer`` (None: 404), counting requests."""

    def __init__(self):
        self.answer: dict | None = None
        self.requests = 0
        pipeline = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                pipeline.requests += 1
                body = json.dumps(pipeline.answer).encode() if pipeline.answer is not None else b"{}"
                self.send_response(200 if pipeline.answer is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def pipeline():
    p = FakePipeline()
    yield p
    p.stop()


def candidates(weight: float, sessions: list[str], name: str = "bot-1-5") -> set[str]:
    return {s for s in sessions if to_candidate(weight, name, s)}


def test_the_bucket_is_blake2b_of_the_rollout_name_and_the_session_id():
    expected = int.from_bytes(hashlib.blake2b(b"bot-1-5\x1fsession-42", digest_size=8).digest(), "big") % 10_000
    assert bucket("bot-1-5", "session-42") == expected
    assert to_candidate(expected / 100 + 0.01, "bot-1-5", "session-42")
    assert not to_candidate(expected / 100, "bot-1-5", "session-42")


@settings(derandomize=True, max_examples=60, deadline=None)
@given(weight=st.integers(0, 10_000).map(lambda w: w / 100), n=st.integers(1_000, 5_000),
       prefix=st.text(min_size=1, max_size=12), name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
def test_the_candidates_share_of_sessions_follows_the_weight_within_the_stated_tolerance(weight, n, prefix, name):
    sessions = [f"{prefix}-{i}" for i in range(n)]
    got = len(candidates(weight, sessions, name)) / n
    assert abs(got - weight / 100) <= share_tolerance(weight, n)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(low=st.integers(0, 10_000), high=st.integers(0, 10_000), prefix=st.text(max_size=8))
def test_a_session_sent_to_the_candidate_stays_with_it_as_the_weight_grows(low, high, prefix):
    low, high = sorted((low / 100, high / 100))
    sessions = [f"{prefix}{i}" for i in range(500)]
    assert candidates(low, sessions) <= candidates(high, sessions)


def test_weight_zero_sends_no_one_and_a_hundred_everyone():
    sessions = [f"s{i}" for i in range(2000)]
    assert candidates(0, sessions) == set() and candidates(100, sessions) == set(sessions)


def test_two_rollouts_split_sessions_independently():
    sessions = [f"s{i}" for i in range(4000)]
    a, b = candidates(50, sessions, "one"), candidates(50, sessions, "two")
    assert abs(len(a & b) / 4000 - 0.25) <= 4.5 * (0.25 * 0.75 / 4000) ** 0.5  # independent halves overlap 1/4


def test_the_router_follows_the_pipeline_at_each_refresh(pipeline):
    now = [0.0]
    router = Router("bot", client=DecisionClient(pipeline.endpoint, cache_ttl=1.0, clock=lambda: now[0]),
                    default="1.4")
    pipeline.answer = rollout(25)
    sessions = [f"s{i}" for i in range(2000)]
    routed = {s: router.route(s) for s in sessions}
    assert {s for s, v in routed.items() if v == "1.5"} == candidates(25, sessions)
    assert set(routed.values()) == {"1.4", "1.5"}
    assert pipeline.requests == 1  # one answer kept for the refresh interval, whatever the call rate
    pipeline.answer = rollout(0)  # rolled back
    now[0] = 0.99
    assert router.route("s1") == routed["s1"] and pipeline.requests == 1
    now[0] = 1.0
    assert {router.route(s) for s in sessions} == {"1.4"} and pipeline.requests == 2


def test_without_an_answer_the_last_one_stays_in_force_and_before_any_the_default(pipeline):
    now = [0.0]
    router = Router("bot", client=DecisionClient(pipeline.endpoint, cache_ttl=1.0, clock=lambda: now[0]),
                    default="1.4")
    assert router.route("s1") == "1.4"  # 404: the pipeline knows no rollout
    pipeline.answer = {"agent_id": "bot", "action": "allow"}
    now[0] = 1.0
    assert router.route("s1") == "1.4" and router.rollout() is None  # answered: no rollout
    pipeline.answer = rollout(100)
    now[0] = 2.0
    assert router.route("s1") == "1.5"
    pipeline.stop()
    now[0] = 3.0
    assert router.route("s1") == "1.5"  # unreachable: routing does not flap with the pipeline's availability


def test_mirror_names_the_candidate_for_shadowed_sessions_only(pipeline):
    now = [0.0]
    router = Router("bot", client=DecisionClient(pipeline.endpoint, cache_ttl=1.0, clock=lambda: now[0]))
    pipeline.answer = rollout(0, shadow_share=30)
    sessions = [f"s{i}" for i in range(3000)]
    mirrored = [s for s in sessions if router.mirror(s) == "1.5"]
    assert abs(len(mirrored) / 3000 - 0.3) <= share_tolerance(30, 3000)
    assert {router.route(s) for s in sessions} == {"1.4"}
    pipeline.answer = rollout(0)
    now[0] = 1.0
    assert {router.mirror(s) for s in sessions} == {None}


def test_the_module_level_route_needs_configure_first(pipeline):
    delivery._router = None
    with pytest.raises(RuntimeError, match="configure"):
        delivery.route("s1")
    pipeline.answer = rollout(100)
    delivery.configure("bot", pipeline.endpoint, refresh=1.0, default="1.4")
    assert delivery.route("s1") == "1.5" and delivery.mirror("s1") is None
    delivery._router = None


def test_importing_the_router_loads_nothing_but_the_standard_library():
    code = ("import sys; before = set(sys.modules); import agent_sre.delivery; new = set(sys.modules) - before; "
            "print(sorted({m.split('.')[0] for m in new} - set(sys.stdlib_module_names) - {'agent_sre'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
