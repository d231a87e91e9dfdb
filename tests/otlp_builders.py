"""Hand-built OTLP requests for protocol tests."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request(n: int = 3, service: str = "svc", attrs: dict | None = None, bad_trace_ids: int = 0,
            start_ns: int = 1_700_000_000_000_000_000) -> ExportTraceServiceRequest:
    """n valid spans (plus bad_trace_ids spans whose trace id has the wrong length)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    for i in range(n + bad_trace_ids):
        sp = ss.spans.add()
        sp.trace_id = os.urandom(16) if i < n else os.urandom(15)
        sp.span_id = os.urandom(8)
        sp.name = f"span-{i}"
        sp.start_time_unix_nano = start_ns + i
        sp.end_time_unix_nano = start_ns + i + 1_000_000
        for k, v in (attrs or {}).items():
            sp.attributes.append(kv(k, v))
    return req
