"""Realistic agent spans for benchmarks: a task span, LLM calls and tool calls.

Each span carries about 12 attributes in the conventions agents emit
(OpenTelemetry GenAI, OpenInference, the agent.* names), so the conversion and
normalisation cost measured here is the cost users will see.
"""

from __future__ import annotations

import os
import random

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_request(n_spans: int = 512, seed: int = 0, base_ns: int | None = None) -> ExportTraceServiceRequest:
    rnd = random.Random(seed)
    base = base_ns if base_ns is not None else 1_700_000_000_000_000_000
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        [_kv("service.name", "support-agent"), _kv("service.version", "1.4.2"),
         _kv("deployment.environment.name", "prod")]
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "agent_sre.bench"
    trace_id = os.urandom(16)
    for i in range(n_spans):
        if i % 16 == 0:
            trace_id = rnd.randbytes(16)
        sp = ss.spans.add()
        sp.trace_id = trace_id
        sp.span_id = rnd.randbytes(8)
        sp.parent_span_id = rnd.randbytes(8)
        start = base + i * 1_000_000
        sp.start_time_unix_nano = start
        sp.end_time_unix_nano = start + rnd.randint(1_000_000, 900_000_000)
        sp.kind = Span.SPAN_KIND_CLIENT
        agent = f"agent-{i % 10}"
        common = [_kv("agent.did", f"did:web:{agent}"), _kv("gen_ai.agent.name", agent),
                  _kv("session.id", f"s-{i // 64}"), _kv("agent.task.name", "answer_ticket")]
        if i % 3 == 0:
            sp.name = "chat gpt-4o-mini"
            attrs = common + [
                _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.request.model", "gpt-4o-mini"), _kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                _kv("gen_ai.usage.input_tokens", rnd.randint(100, 4000)),
                _kv("gen_ai.usage.output_tokens", rnd.randint(10, 800)),
                _kv("gen_ai.request.temperature", 0.2), _kv("gen_ai.response.id", f"chatcmpl-{i}"),
            ]
        elif i % 3 == 1:
            sp.name = "execute_tool search_kb"
            attrs = common + [
                _kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", "search_kb"),
                _kv("gen_ai.tool.call.id", f"call_{i}"), _kv("openinference.span.kind", "TOOL"),
                _kv("tool.name", "search_kb"), _kv("agent.trust_score", 0.93),
                _kv("input.value", "refund policy"), _kv("agent.tool.name", "search_kb"),
            ]
        else:
            sp.name = "invoke_agent support"
            attrs = common + [
                _kv("gen_ai.operation.name", "invoke_agent"), _kv("agent.task.success", True),
                _kv("agent.delegation.from", "triage"), _kv("agent.delegation.to", agent),
                _kv("openinference.span.kind", "AGENT"), _kv("agent.policy.name", "pii"),
                _kv("http.route", "/tickets"), _kv("user.id", f"u{i % 97}"),
            ]
        sp.attributes.extend(attrs)
        if rnd.random() < 0.02:
            sp.status.code = Status.STATUS_CODE_ERROR
            sp.status.message = "tool timeout"
    return req


def request_bodies(seed: int, count: int = 8, n_spans: int = 512, base_ns: int | None = None) -> list[bytes]:
    """The pre-serialised requests one benchmark client sends in turn (``count`` different ones)."""
    return [make_request(n_spans, seed=seed * 100 + i, base_ns=base_ns).SerializeToString() for i in range(count)]


class FreshIds:
    """One pre-serialised request sent again and again with new span ids each time: the store keeps one
    copy of a span re-sent with the same ids (its dedup), so a benchmark resending the same bytes would
    measure the dropping of copies.  The first 4 bytes of every span id are overwritten in place with a
    counter that starts at a random point (the other 4 stay the body's own): ids differ between sends,
    senders and benchmark phases (new processes), with no re-encoding (~30 KB copied per 512 spans)."""

    def __init__(self, body: bytes):
        ids = [sp.span_id for rs in ExportTraceServiceRequest.FromString(body).resource_spans
               for ss in rs.scope_spans for sp in ss.spans]
        offsets, start = [], 0
        for span_id in ids:  # Span.span_id: field 2, length-delimited (tag 0x12), 8 bytes
            at = body.index(b"\x12\x08" + span_id, start)
            offsets.append(at + 2)
            start = at + 10
        self._template = np.frombuffer(body, dtype=np.uint8).copy()
        self._offsets = np.array(offsets, dtype=np.int64)
        self._sent = int.from_bytes(os.urandom(4), "little")

    def next(self) -> bytes:
        self._sent = (self._sent + 1) & 0xFFFFFFFF
        word = np.array([self._sent], dtype="<u4").view(np.uint8)
        out = self._template.copy()
        for j in range(4):
            out[self._offsets + j] = word[j]
        return out.tobytes()


def upb_parse_us_per_span(bodies: list[bytes], repeats: int = 15) -> float:
    """CPU-independent yardstick for a run: µs per span that upb (google.protobuf's C backend) takes to
    parse ``bodies`` on one core, best of ``repeats`` passes (the least disturbed by other load)."""
    import time

    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "upb":
        raise SystemExit(f"protobuf runs the {api_implementation.Type()!r} backend, not upb: the calibration "
                         "would not be upb's parse rate (unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION)")
    spans = sum(len(r.spans) for b in bodies[:1] for rs in ExportTraceServiceRequest.FromString(b).resource_spans
                for r in rs.scope_spans) * len(bodies)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for body in bodies:
            ExportTraceServiceRequest.FromString(body)
        best = min(best, time.perf_counter() - started)
    return best / spans * 1e6
