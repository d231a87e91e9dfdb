"""Hand-built OTLP requests for protocol tests."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList


def kv(key: str, value: object) -> KeyValue:
    """A KeyValue of any AnyValue kind: bool, int, float, bytes, str, list (array), dict (kvlist),
    None (an empty AnyValue)."""
    return KeyValue(key=key, value=any_value(value))


def any_value(value: object) -> AnyValue:
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    return AnyValue(string_value=str(value))


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
