"""HTTP endpoints shared by components on one asyncio loop.

Several components may serve on one endpoint (health check and admin API both
on 127.0.0.1:13133), so routes are registered per endpoint and one aiohttp
server answers for all of them.  Unknown paths get 404; a known path with the
wrong method gets 405 with an ``Allow`` header and a JSON ``{"error": ...}`` body,
unless the path's owner registered its own ``method_not_allowed`` answer (the OTLP
receiver must answer with a google.rpc.Status).

TLS is per endpoint (one listener serves all its routes): a route added with ``tls`` makes its
endpoint TLS, re-opening it if it was plain (the health check registered first on the admin's
endpoint is then served over the admin's TLS); two different TLS settings on one endpoint are an error.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from aiohttp import web

from agent_sre.pipeline.component.listener import (
    ClosedCounter,
    ConnectionGuard,
    GuardedSite,
    ListenerSettings,
)
from agent_sre.pipeline.component.tls import TlsServerConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PATH_PARAM = web.RequestKey("path_param", str)  # the last {parameter} of a templated route
PATH_PARAMS = web.RequestKey("path_params", dict)  # every {parameter} of a templated route, by name
_CONNECTION = web.RequestKey("connection", object)  # the listener's _Connection, for read_body's timeout
MethodNotAllowed = Callable[[web.Request, str], web.StreamResponse]
"""Builds a path's 405 answer from the request and the ``Allow`` value; the router sets ``Allow`` itself."""


def _json_method_not_allowed(request: web.Request, allow: str) -> web.StreamResponse:
    return web.json_response(
        {"error": f"method {request.method} not allowed for {request.path} (allowed: {allow})"}, status=405)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class LoopThread:
    """An asyncio event loop in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str = "agent-sre-http"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[Any], timeout: float | None = 30) -> Any:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running() and not self.loop.is_closed():
            # Closed here, not by the garbage collector at interpreter exit, when its file
            # descriptors may be gone already ("Invalid file descriptor: -1" from the workers).
            self.loop.close()


class Endpoint:
    def __init__(self, endpoint: str, guard: ConnectionGuard | None = None):
        self.endpoint = endpoint
        self.guard = guard or ConnectionGuard(endpoint, ListenerSettings())  # timeouts, connection cap
        self.routes: dict[str, dict[str, Handler]] = {}
        self.not_allowed: dict[str, MethodNotAllowed] = {}
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.tls: TlsServerConfig | None = None
        self.reuse_port = False

    def _match(self, path: str, raw_path: str) -> tuple[str, dict[str, Handler], dict[str, str]] | None:
        """The route for ``path``: exact, else a template (``/v1/incidents/{id}/{action}``) whose
        ``{name}`` segments each match one non-empty segment of the raw path, percent-decoded (so an
        agent id with a ``/``, sent as ``%2F``, is one segment)."""
        if path in self.routes:
            return path, self.routes[path], {}
        segments = [urllib.parse.unquote(s) for s in raw_path.split("?", 1)[0].split("/")]
        for route, methods in self.routes.items():
            parts = route.split("/")
            if "{" not in route or len(parts) != len(segments):
                continue
            params = {}
            for part, seg in zip(parts, segments, strict=True):
                if part.startswith("{") and part.endswith("}") and seg:
                    params[part[1:-1]] = seg
                elif part != seg:
                    break
            else:
                return route, methods, params
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        found = self._match(request.path, request.raw_path)
        if found is None:
            return web.json_response({"error": f"no route for {request.path}"}, status=404)
        route, methods, params = found
        if params:  # a template: hand its parameters to the handler
            request[PATH_PARAMS] = params
            request[PATH_PARAM] = list(params.values())[-1]
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            response = self.not_allowed.get(route, _json_method_not_allowed)(request, allow)
            response.headers["Allow"] = allow  # RFC 9110 requires it on every 405, whoever built the body
            return response
        conn = self.guard.request_started(request)  # headers complete: the header deadline is off
        request[_CONNECTION] = conn
        try:
            return await handler(request)
        except BodyTimeout as exc:
            response = web.json_response({"error": str(exc)}, status=408)
            response.force_close()
            return response
        finally:
            if conn is not None:
                conn.request_finished()


class HttpServers:
    """All HTTP endpoints of one service."""

    def __init__(self) -> None:
        self._loop: LoopThread | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._lock = threading.Lock()
        # Listeners created without their own settings (admin, health, metrics) take these.
        self.default_limits = ListenerSettings()
        self.count_closed: ClosedCounter | None = None  # set by the host: self-telemetry

    @property
    def loop(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop

    def add_route(self, endpoint: str, method: str, path: str, handler: Handler, reuse_port: bool = False,
                  method_not_allowed: MethodNotAllowed | None = None, tls: TlsServerConfig | None = None,
                  limits: ListenerSettings | None = None, owner: str = "",
                  busy_answer: tuple[str, bytes] | None = None) -> None:
        """Register a route and make sure the endpoint is listening (binds on first use).

        ``method_not_allowed`` replaces the JSON 405 body for every other method on ``path``.
        ``tls``: the endpoint serves HTTPS (see the module's docstring); None: as the endpoint is.
        ``limits``: the listener's timeouts and connection cap (``default_limits`` when None); ``owner``
        names it in logs; ``busy_answer`` (content type, body) goes with the 503 over ``max_connections``.
        """
        with self._lock:
            ep = self._endpoints.get(endpoint)
            if ep is not None:
                self._check_conflicts(ep, method, path, method_not_allowed)
                if limits is not None and limits != ep.guard.settings:
                    raise ValueError(f"{endpoint} is already served with other connection limits")
                if tls is not None and tls != ep.tls:
                    if ep.tls is not None:
                        raise ValueError(f"{endpoint} is already served with other TLS settings")
                    self.loop.run(self._relisten(ep, tls))
            else:
                guard = ConnectionGuard(endpoint, limits or self.default_limits, owner, busy_answer)
                guard.count_closed = self._count_closed
                ep = Endpoint(endpoint, guard)
                ep.tls, ep.reuse_port = tls, reuse_port
                self.loop.run(self._listen(ep))
                self._endpoints[endpoint] = ep
            ep.routes.setdefault(path, {})[method] = handler
            if method_not_allowed is not None:
                ep.not_allowed[path] = method_not_allowed

    def _count_closed(self, endpoint: str, reason: str) -> None:
        if self.count_closed is not None:
            self.count_closed(endpoint, reason)

    @staticmethod
    def _check_conflicts(ep: Endpoint, method: str, path: str, method_not_allowed: MethodNotAllowed | None) -> None:
        if method in ep.routes.get(path, {}):
            raise ValueError(f"{method} {path} is already served on {ep.endpoint}")
        current = ep.not_allowed.get(path)
        if method_not_allowed is not None and current is not None and current != method_not_allowed:
            raise ValueError(f"{path} on {ep.endpoint} already has its own 405 answer")

    def remove_routes(self, endpoint: str, paths: list[str]) -> None:
        with self._lock:
            ep = self._endpoints.get(endpoint)
            if ep is None:
                return
            for path in paths:
                ep.routes.pop(path, None)
                ep.not_allowed.pop(path, None)
            if not ep.routes:
                del self._endpoints[endpoint]
                if ep.runner is not None:
                    self.loop.run(ep.runner.cleanup())

    async def _listen(self, ep: Endpoint) -> None:
        ssl_context = ep.tls.ssl_context() if ep.tls is not None else None  # OSError naming a bad file
        # Handlers read bodies with read_body(), which enforces their own limits.
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", ep.dispatch)
        # Bodies are read raw: components decide which encodings they take and bound the inflated size.
        # After an answer sent before the body was read (413, 401, 408), aiohttp reads and drops the rest for
        # lingering_time (10 s) so the client sees the answer: no longer than a body may take at all.
        limits = ep.guard.settings
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                               keepalive_timeout=limits.idle_timeout, lingering_time=min(10.0, limits.read_timeout))
        await runner.setup()
        try:
            await self._open_site(ep, runner, ssl_context)
        except OSError:
            await runner.cleanup()
            raise
        ep.runner = runner

    @staticmethod
    async def _open_site(ep: Endpoint, runner: web.AppRunner, ssl_context: ssl.SSLContext | None) -> None:
        host, port = split_endpoint(ep.endpoint)
        site = GuardedSite(runner, host, port, ep.guard, reuse_address=True, reuse_port=ep.reuse_port or None,
                           ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {ep.endpoint}: {exc.strerror or exc}") from exc
        ep.site = site

    async def _relisten(self, ep: Endpoint, tls: TlsServerConfig) -> None:
        """Re-open a plain endpoint with TLS (at start, when a later route of it asks for TLS)."""
        assert ep.runner is not None and ep.site is not None
        ssl_context = tls.ssl_context()  # a bad file fails here, with the plain listener still up
        await ep.site.stop()
        ep.tls = tls
        await self._open_site(ep, ep.runner, ssl_context)

    def shutdown(self) -> None:
        with self._lock:
            for ep in list(self._endpoints.values()):
                if ep.runner is not None:
                    try:
                        self.loop.run(ep.runner.cleanup(), timeout=10)
                    except Exception:  # noqa: BLE001 - shutting down regardless
                        pass
            self._endpoints.clear()
            if self._loop is not None:
                self._loop.stop()
                self._loop = None


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    """The body did not arrive within the listener's ``read_timeout``; the router answers 408 and closes."""

    def __init__(self, timeout: float):
        super().__init__(f"request body not received within {timeout:g}s")


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read a request body, refusing early (by Content-Length) or while streaming past ``limit``, within
    the listener's ``read_timeout`` (BodyTimeout)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    conn = request.get(_CONNECTION)
    timeout = conn.guard.settings.read_timeout if conn is not None else None

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)  # not asyncio.timeout: that is Python 3.11+
    except asyncio.TimeoutError:
        assert conn is not None and timeout is not None
        conn.body_timed_out()
        raise BodyTimeout(timeout) from None
