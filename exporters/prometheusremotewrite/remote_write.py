"""Prometheus remote write 1.0: the WriteRequest protobuf and its snappy-compressed HTTP POST.

The message classes are built with the protobuf library from the field numbers of
Prometheus's prompb/remote.proto and types.proto (the subset remote write 1.0
sends: samples; no exemplars, metadata or native histograms), in a private
descriptor pool.  Bodies are snappy *block* format (cramjam), as the spec says.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "agent-sre",
}


def _write_request_class():
    proto = descriptor_pb2.FileDescriptorProto(name="agent_sre/prometheus_remote_write.proto", package="prometheus",
                                               syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Label", ("name", 1, _F.TYPE_STRING, opt, ""), ("value", 2, _F.TYPE_STRING, opt, ""))
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, opt, ""), ("timestamp", 2, _F.TYPE_INT64, opt, ""))
    message("TimeSeries", ("labels", 1, _F.TYPE_MESSAGE, rep, ".prometheus.Label"),
            ("samples", 2, _F.TYPE_MESSAGE, rep, ".prometheus.Sample"))
    message("WriteRequest", ("timeseries", 1, _F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _write_request_class()


def write_request(families, timestamp_ms: int):
    """One sample per series: every sample of every metric family, labels sorted by name."""
    req = WriteRequest()
    for family in families:
        for s in family.samples:
            ts = req.timeseries.add()
            for name, value in sorted({"__name__": s.name, **s.labels}.items()):
                ts.labels.add(name=name, value=str(value))
            ts.samples.add(value=float(s.value), timestamp=timestamp_ms)
    return req


def encode(req) -> bytes:
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


@dataclass
class PushResult:
    ok: bool
    status: int  # HTTP status, 0 when no answer
    attempts: int
    message: str = ""


def push(url: str, body: bytes, headers: dict[str, str], timeout: float, max_attempts: int,
         sleep=time.sleep) -> PushResult:
    """POST with retries: 5xx, 429 and connection errors are retried with backoff; other 4xx are not
    (the spec: the same request would be refused again)."""
    delay = 0.2
    for attempt in range(1, max_attempts + 1):
        req = urllib.request.Request(url, data=body, method="POST", headers={**HEADERS, **headers})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return PushResult(True, resp.status, attempt)
        except urllib.error.HTTPError as exc:
            status, message = exc.code, exc.read().decode(errors="replace")[:300]
            if status != 429 and status < 500:
                return PushResult(False, status, attempt, message)
        except (urllib.error.URLError, OSError) as exc:
            status, message = 0, str(exc)
        if attempt < max_attempts:
            sleep(delay)
            delay = min(delay * 2, 5.0)
    return PushResult(False, status, max_attempts, message)
