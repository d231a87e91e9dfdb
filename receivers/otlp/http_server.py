"""OTLP/HTTP: POST /v1/traces (and /v1/metrics, /v1/logs for the signals the receiver has pipelines
for) with application/x-protobuf or application/json.

Answers in the request's encoding.  Every 4xx/5xx carries a google.rpc.Status
body, as the OTLP specification requires: 400 undecodable, 413 oversize (before
or after gzip), 415 unknown content type or encoding, 405 wrong method (through
the shared router's per-path hook, with ``Allow: POST``), 503 + Retry-After when
the pipeline refuses (memory limiter, full queue, store failure), 500 on a bug; with ``auth``, 401 +
``WWW-Authenticate: Bearer`` before the body is read.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from agent_sre.pipeline.component.admission import Ticket
from agent_sre.pipeline.component.auth import Principal
from agent_sre.pipeline.component.httpserver import BodyTimeout, BodyTooLarge, HttpServers, read_body
from agent_sre.pipeline.component.listener import ListenerSettings
from agent_sre.pipeline.pdata.otlp_json import encode_message
from agent_sre.receivers.otlp.config import HttpConfig
from agent_sre.receivers.otlp.ingest import DECODE_COST, ExportFailed, Ingest, Outcome

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def _encode(message: Message, content_type: str) -> bytes:
    return encode_message(message) if content_type == JSON else message.SerializeToString()


# The answer to a connection over the listener's max_connections (written before any request is read).
_BUSY = (PROTOBUF, status_pb2.Status(code=code_pb2.UNAVAILABLE, message="too many connections").SerializeToString())


def _fallback_type(request: web.Request) -> str:
    # For 405 and 415 the request's encoding is unknown or unusable.  The spec asks for a "Protobuf-encoded"
    # Status and binary protobuf is OTLP/HTTP's default encoding, so every client can decode it; only a client
    # that said it speaks JSON gets JSON.
    return JSON if request.content_type.lower() == JSON else PROTOBUF


def _status_response(http_status: int, code: int, message: str, content_type: str,
                     headers: dict[str, str] | None = None) -> web.Response:
    body = _encode(status_pb2.Status(code=code, message=message), content_type)
    return web.Response(status=http_status, body=body, content_type=content_type, headers=headers)


def _refusal(exc: ExportFailed, reply_type: str) -> web.Response:
    if exc.outcome is Outcome.INVALID:
        return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.message, reply_type)
    retry = str(max(1, math.ceil(exc.retry_after)))
    return _status_response(503, code_pb2.UNAVAILABLE, exc.message, reply_type, {"Retry-After": retry})


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate ``body``, at most ``limit`` bytes in all.  A gzip body may hold several members (RFC 1952
    2.2, e.g. concatenated .gz files): each is decoded, as gunzip does.  Bytes after a deflate (zlib)
    stream, or after a gzip member that do not start another, are an error, never silently ignored."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    parts: list[bytes] = []
    size = 0
    while True:
        d = zlib.decompressobj(wbits)
        part = d.decompress(body, limit - size + 1)  # max_length >= 1 here (0 would mean unbounded)
        size += len(part)
        if size > limit or d.unconsumed_tail:
            raise BodyTooLarge(limit)
        if not d.eof:
            raise zlib.error("truncated compressed body")
        parts.append(part)
        body = d.unused_data
        if not body:
            return b"".join(parts)
        if encoding != "gzip":
            raise zlib.error(f"{len(body)} bytes after the end of the deflate stream")


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
                                method_not_allowed=self.method_not_allowed, tls=self.config.tls,
                                limits=ListenerSettings.model_validate(self.config.model_dump(
                                    include=set(ListenerSettings.model_fields))),
                                owner=f"receiver {self.ingest.receiver_id}", busy_answer=_BUSY)

    def stop(self) -> None:
        self.http.remove_routes(self.config.endpoint, list(self._paths.values()))
        self._pool.shutdown(wait=False)

    def method_not_allowed(self, request: web.Request, allow: str) -> web.Response:
        return _status_response(405, code_pb2.UNIMPLEMENTED,
                                f"method {request.method} not allowed for {request.path} (use {allow})",
                                _fallback_type(request))

    async def handle(self, request: web.Request, ingest: Ingest | None = None) -> web.Response:
        ingest = ingest or self.ingest
        try:  # before anything is read: a client without a key learns nothing else
            principal = ingest.authenticate(request.headers.get("Authorization"), request.headers.get("X-Api-Key"),
                                            "http", request.remote)
        except ExportFailed as exc:
            return _status_response(401, code_pb2.UNAUTHENTICATED, exc.message, _fallback_type(request),
                                    {"WWW-Authenticate": 'Bearer realm="otlp"'})
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
        # Admitted before the body is read: with memory short, or this process already holding its share
        # of requests, the client is told to retry before it costs anything.
        try:
            with ingest.admit((request.content_length or 0) * DECODE_COST, "http") as ticket:
                return await self._read_and_export(request, ingest, principal, content_type, encoding, ticket)
        except ExportFailed as exc:
            return _refusal(exc, reply_type)

    async def _read_and_export(self, request: web.Request, ingest: Ingest, principal: Principal | None,
                               content_type: str, encoding: str, ticket: Ticket) -> web.Response:
        reply_type = content_type
        limit = self.config.max_request_body_size
        try:
            body = await read_body(request, limit)
            if encoding in ("gzip", "deflate"):
                # The limit applies to the inflated size too: a small gzip bomb is refused.
                # In the pool: many small members or a large inflate would stall every connection's loop.
                body = await asyncio.get_running_loop().run_in_executor(self._pool, _decompress, body, encoding,
                                                                        limit)
        except BodyTooLarge as exc:
            return _status_response(413, code_pb2.RESOURCE_EXHAUSTED, str(exc), reply_type)
        except BodyTimeout as exc:  # counted and logged by the listener
            response = _status_response(408, code_pb2.DEADLINE_EXCEEDED, str(exc), reply_type)
            response.force_close()
            return response
        except zlib.error as exc:
            return _status_response(400, code_pb2.INVALID_ARGUMENT, f"cannot decompress {encoding} body: {exc}",
                                    reply_type)
        try:  # the decompressed body is what decoding costs; a chunked body was announced as 0
            ingest.grow(ticket, len(body) * DECODE_COST - ticket.held, "http")
        except ExportFailed as exc:
            return _refusal(exc, reply_type)
        export = ingest.export_json if content_type == JSON else ingest.export_protobuf
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._pool, export, body, "http", principal)
        except ExportFailed as exc:
            return _refusal(exc, reply_type)
        except Exception as exc:  # noqa: BLE001 - aiohttp's own 500 would be text/plain, not a Status
            ingest.logger.exception("http: export failed unexpectedly")
            # 500 is not retryable: a request that trips a bug would trip it again.
            return _status_response(500, code_pb2.INTERNAL, f"internal error: {exc}", reply_type)
        return web.Response(status=200, body=_encode(response, reply_type), content_type=reply_type)
