"""OTLP/HTTP: POST /v1/traces (and /v1/metrics, /v1/logs for the signals the receiver has pipelines
for) with application/x-protobuf or application/json.

Answers in the request's encoding.  Every 4xx/5xx carries a google.rpc.Status
body, as the OTLP specification requires: 400 undecodable, 413 oversize (before
or after gzip), 415 unknown content type or encoding, 405 wrong method (through
the shared router's per-path hook, with ``Allow: POST``), 503 + Retry-After when
the pipeline refuses (memory limiter, full queue, store failure), 500 on a bug.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from agent_sre.pipeline.component.httpserver import BodyTooLarge, HttpServers, read_body
from agent_sre.pipeline.pdata.otlp_json import encode_message
from agent_sre.receivers.otlp.config import HttpConfig
from agent_sre.receivers.otlp.ingest import ExportFailed, Ingest, Outcome

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def _encode(message: Message, content_type: str) -> bytes:
    return encode_message(message) if content_type == JSON else message.SerializeToString()


def _fallback_type(request: web.Request) -> str:
    # For 405 and 415 the request's encoding is unknown or unusable.  The spec asks for a "Protobuf-encoded"
    # Status and binary protobuf is OTLP/HTTP's default encoding, so every client can decode it; only a client
    # that said it speaks JSON gets JSON.
    return JSON if request.content_type.lower() == JSON else PROTOBUF


def _status_response(http_status: int, code: int, message: str, content_type: str,
                     headers: dict[str, str] | None = None) -> web.Response:
    body = _encode(status_pb2.Status(code=code, message=message), content_type)
    return web.Response(status=http_status, body=body, content_type=content_type, headers=headers)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge(limit)
    if not d.eof:
        raise zlib.error("truncated compressed body")
    return out


class HttpTraceServer:
    def __init__(self, config: HttpConfig, ingest: Ingest | dict[str, Ingest], http: HttpServers,
                 reuse_port: bool = False):
        self.config = config
        self.ingests = ingest if isinstance(ingest, dict) else {"traces": ingest}
        self.ingest = self.ingests.get("traces") or next(iter(self.ingests.values()))  # for its logger
        self.http = http
        self.reuse_port = reuse_port
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="otlp-http")
        self._paths = {signal: getattr(config, f"{signal}_url_path") for signal in self.ingests}

    def start(self) -> None:
        for signal, path in self._paths.items():
            ingest = self.ingests[signal]

            async def handle(request: web.Request, ingest: Ingest = ingest) -> web.Response:
                return await self.handle(request, ingest)

            self.http.add_route(self.config.endpoint, "POST", path, handle, reuse_port=self.reuse_port,
                                method_not_allowed=self.method_not_allowed)

    def stop(self) -> None:
        self.http.remove_routes(self.config.endpoint, list(self._paths.values()))
        self._pool.shutdown(wait=False)

    def method_not_allowed(self, request: web.Request, allow: str) -> web.Response:
        return _status_response(405, code_pb2.UNIMPLEMENTED,
                                f"method {request.method} not allowed for {request.path} (use {allow})",
                                _fallback_type(request))

    async def handle(self, request: web.Request, ingest: Ingest | None = None) -> web.Response:
        ingest = ingest or self.ingest
        content_type = request.content_type.lower()
        if content_type not in (PROTOBUF, JSON):
            return _status_response(415, code_pb2.INVALID_ARGUMENT,
                                    f"unsupported content type {content_type!r} (use {PROTOBUF} or {JSON})",
                                    PROTOBUF)  # the request's encoding is unusable: see _fallback_type
        reply_type = content_type
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "deflate"):
            return _status_response(415, code_pb2.INVALID_ARGUMENT,
                                    f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)", reply_type)
        limit = self.config.max_request_body_size
        try:
            body = await read_body(request, limit)
            if encoding in ("gzip", "deflate"):
                # The limit applies to the inflated size too: a small gzip bomb is refused.
                body = _decompress(body, encoding, limit)
        except BodyTooLarge as exc:
            return _status_response(413, code_pb2.RESOURCE_EXHAUSTED, str(exc), reply_type)
        except zlib.error as exc:
            return _status_response(400, code_pb2.INVALID_ARGUMENT, f"cannot decompress {encoding} body: {exc}",
                                    reply_type)
        export = ingest.export_json if content_type == JSON else ingest.export_protobuf
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._pool, export, body, "http")
        except ExportFailed as exc:
            if exc.outcome is Outcome.INVALID:
                return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.message, reply_type)
            retry = str(max(1, math.ceil(exc.retry_after)))
            return _status_response(503, code_pb2.UNAVAILABLE, exc.message, reply_type, {"Retry-After": retry})
        except Exception as exc:  # noqa: BLE001 - aiohttp's own 500 would be text/plain, not a Status
            ingest.logger.exception("http: export failed unexpectedly")
            # 500 is not retryable: a request that trips a bug would trip it again.
            return _status_response(500, code_pb2.INTERNAL, f"internal error: {exc}", reply_type)
        return web.Response(status=200, body=_encode(response, reply_type), content_type=reply_type)
