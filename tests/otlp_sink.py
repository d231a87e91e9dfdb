"""A local OTLP/HTTP trace sink for exporter tests: decodes what it gets, strictly, and can misbehave.

It checks what OTLP/HTTP requires of a client (POST to /v1/traces, Content-Type
application/x-protobuf or application/json, a body that decodes) and answers 400 otherwise;
``behaviour`` decides the answer to well-formed requests: "ok", "down" (the test starts the sink
later instead), "429" (with Retry-After, ``times`` times), "hang" (never answers in time).
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from dataclasses import dataclass, field

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Received:
    requests: list[dict] = field(default_factory=list)  # {time, headers, spans}
    span_ids: list[str] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # when a 429 was answered
    lock: threading.Lock = field(default_factory=threading.Lock)


class Sink:
    def __init__(self, port: int = 0, behaviour: str = "ok", times: int = 1, retry_after: int = 2,
                 hang_s: float = 30.0, path: str = "/v1/traces"):
        self.behaviour, self.times, self.retry_after, self.hang_s = behaviour, times, retry_after, hang_s
        self.path = path
        self.got = Received()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as exporters use it

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kind = self.headers.get("Content-Type", "")
                request = ExportTraceServiceRequest()
                try:
                    if self.path != sink.path:
                        raise ValueError(f"wrong path {self.path}")
                    if kind == "application/x-protobuf":
                        request.ParseFromString(body)
                    elif kind == "application/json":
                        json_format.ParseDict(json.loads(body), request)
                    else:
                        raise ValueError(f"wrong content type {kind!r}")
                except Exception as exc:  # noqa: BLE001 - a strict contract check
                    return self._answer(400, str(exc).encode())
                if sink.behaviour == "hang":
                    time.sleep(sink.hang_s)
                with sink.got.lock:
                    if sink.behaviour == "429" and sink.times > 0:
                        sink.times -= 1
                        sink.got.refused.append(time.monotonic())
                        return self._answer(429, b"slow down", {"Retry-After": str(sink.retry_after)})
                    ids = [sp.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]
                    sink.got.span_ids.extend(ids)
                    sink.got.requests.append({"time": time.monotonic(), "headers": dict(self.headers), "spans": ids,
                                              "request": request})
                self._answer(200, ExportTraceServiceResponse().SerializeToString(),
                             {"Content-Type": "application/x-protobuf"})

            def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
