"""Connection limits of an HTTP listener: the time to send request headers, to send a body, to stay
idle, and how many connections at once (as the Collector's confighttp server settings).

aiohttp has only the idle (keep-alive) timer: 500 connections that sent headers slowly, or nothing,
stayed open 40 s+ on the OTLP and admin listeners.  ``GuardedSite`` puts a ``_Connection`` between
the event loop and aiohttp's protocol for each accepted connection; it closes one whose request
headers are not complete within ``read_header_timeout`` (counted from the connection, or from the
first byte of the next request on a kept-alive one) and answers 503 to connections beyond
``max_connections``.  ``read_timeout`` bounds reading a body (``httpserver.read_body``);
``idle_timeout`` is aiohttp's keep-alive timeout.  Every close but an idle one is counted
(``agent_sre_http_connections_closed_total{endpoint, reason}``) and logged, at most every 10 s
per reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from pydantic import Field

from agent_sre.pipeline.component.config import ConfigModel, Duration

log = logging.getLogger("agent_sre.http")
_LOG_EVERY_S = 10.0

ClosedCounter = Callable[[str, str], None]
"""Counts a closed connection: (endpoint, reason)."""


class ListenerSettings(ConfigModel):
    """The limits; a component config that serves HTTP inherits them, so each default lives here."""

    # From the connection (or the next request's first byte) to the end of the request headers.
    read_header_timeout: Duration = Field(default=10.0, gt=0)
    # Reading one request body (a 20 MiB body at 1 MiB/s takes 20 s).
    read_timeout: Duration = Field(default=60.0, gt=0)
    # A kept-alive connection with no request in flight.
    idle_timeout: Duration = Field(default=60.0, gt=0)
    # Open connections at once; beyond it a new one is answered 503 + Retry-After and closed.
    max_connections: int = Field(default=1000, gt=0)


class ConnectionGuard:
    """One listener's open connections, their limits, and the count and log of what it closes."""

    def __init__(self, endpoint: str, settings: ListenerSettings, owner: str = "",
                 busy_answer: tuple[str, bytes] | None = None):
        self.endpoint = endpoint
        self.settings = settings
        self.owner = owner  # the component id for the log, when one component owns the listener
        self.busy_answer = busy_answer or ("application/json", b'{"error": "too many connections"}')
        self.count_closed: ClosedCounter | None = None
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}
        self._last_log: dict[str, tuple[float, int]] = {}

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def protocol() -> asyncio.Protocol:
            if len(self.connections) >= self.settings.max_connections:
                return _Refusal(self)
            return _Connection(self, inner())

        return protocol

    def closed(self, reason: str, peer: object, detail: str) -> None:
        if self.count_closed is not None:
            self.count_closed(self.endpoint, reason)
        now = time.monotonic()
        last, suppressed = self._last_log.get(reason, (0.0, 0))
        if now - last < _LOG_EVERY_S:
            self._last_log[reason] = (last, suppressed + 1)
            return
        self._last_log[reason] = (now, 0)
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        owner = f" ({self.owner})" if self.owner else ""
        log.warning("listener %s%s: closed a connection from %s: %s%s", self.endpoint, owner, peer, detail,
                    more)

    def request_started(self, request: web.BaseRequest) -> _Connection | None:
        conn = self.connections.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.request_started()
        return conn


class _Connection(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; adds the header-read deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.connections[transport] = self
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and not self._in_request:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:
            self.guard.connections.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False

    def body_timed_out(self) -> None:
        timeout = self.guard.settings.read_timeout
        self.guard.closed("body_timeout", self._peer(), f"request body not received within {timeout:g}s "
                          "(read_timeout)")

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.guard.settings.read_header_timeout, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_timed_out(self) -> None:
        self._deadline = None
        if self._in_request or self.transport is None or self.transport.is_closing():
            return
        timeout = self.guard.settings.read_header_timeout
        self.guard.closed("header_timeout", self._peer(), f"no complete request headers within {timeout:g}s "
                          "(read_header_timeout)")
        self.transport.close()

    def _peer(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport is not None else None


class _Refusal(asyncio.Protocol):
    """A connection over ``max_connections``: 503 + Retry-After in the listener's encoding, then closed."""

    def __init__(self, guard: ConnectionGuard):
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        content_type, body = self.guard.busy_answer
        head = (f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode("ascii")
        limit = self.guard.settings.max_connections
        self.guard.closed("max_connections", transport.get_extra_info("peername"),
                          f"{limit} connections open already (max_connections)")
        transport.write(head + body)  # type: ignore[attr-defined]
        transport.close()


class GuardedSite(web.TCPSite):
    """A TCPSite whose accepted connections pass through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs):
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        # TCPSite.start, with the guard's factory around the runner's protocol factory.
        await web.BaseSite.start(self)
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(self._runner.server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
