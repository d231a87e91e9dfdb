"""Who may call the admin API, from where, and how many queries at once.

RequestGuard: the checks against a browser being used against the API.

    Host          every route: the Host header must name this listener (localhost, 127.0.0.1, ::1,
                  the endpoint's host; for 0.0.0.0/:: also the machine's names), an IP address, or a
                  name in ``allowed_hosts`` ("*": any).  A DNS-rebinding page reaches 127.0.0.1 under
                  its own name, which is refused (403).
    Origin        POST: when a browser sends one, it must be this listener's own origin (scheme and
                  host:port of the Host header) or in ``allowed_origins``; else 403 ("null" included).
    Content-Type  POST: application/json, else 415.  The types a cross-site form or fetch may send
                  without a CORS preflight (text/plain, form encodings) never pass, so a page cannot
                  post a body the API acts on.

IP literals pass the Host check: rebinding needs a name, and a page served from the address itself
is same-origin with the API anyway.

QueryAdmission: the bounded pool ad hoc SQL runs in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from agent_sre.pipeline.component.httpserver import split_endpoint
from agent_sre.pipeline.storage.sandbox import QueryError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = {"0.0.0.0", "::", ""}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
T = TypeVar("T")


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # the self-metrics label: host, origin, content_type
    message: str


def host_name(header: str) -> str:
    """The name in a Host header (or an Origin's netloc): no port, no brackets, lower case."""
    name = header.strip().lower()
    if name.startswith("["):
        return name[1:].partition("]")[0]
    if name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def listener_names(endpoint: str) -> frozenset[str]:
    """The names a client of ``endpoint`` may use by default."""
    host = split_endpoint(endpoint)[0].lower()  # "0.0.0.0" for ":13133"
    if host in _WILDCARDS:
        return LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}
    return LOOPBACK_NAMES | {host}


class RequestGuard:
    def __init__(self, endpoint: str, allowed_hosts: list[str], allowed_origins: list[str]):
        self.any_host = "*" in allowed_hosts
        self.hosts = listener_names(endpoint) | {host_name(h) for h in allowed_hosts if h != "*"}
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins)

    def check(self, request: web.Request) -> Refusal | None:
        """Why ``request`` is refused, or None."""
        host = request.headers.get("Host", "")
        name = host_name(host)
        if not self.any_host and not _is_ip(name) and name not in self.hosts:
            return Refusal(403, "host", f"Host {host!r} is not one of this admin API's names ({', '.join(sorted(self.hosts))}); "
                           "add it to allowed_hosts if clients use it")
        if request.method in _SAFE_METHODS:
            return None
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, host, request.scheme):
            return Refusal(403, "origin", f"cross-site request refused: Origin {origin!r} is not this admin API "
                           "(add it to allowed_origins to allow it)")
        if request.content_type != "application/json":
            return Refusal(415, "content_type", f"{request.method} bodies must be application/json "
                           f"(got {request.headers.get('Content-Type') or 'none'})")
        return None

    def _origin_allowed(self, origin: str, host: str, scheme: str) -> bool:
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self.origins:
            return True
        parsed = urllib.parse.urlsplit(normalized)
        return parsed.scheme == scheme and bool(parsed.netloc) and _netloc(parsed.netloc, scheme) == _netloc(
            host.lower(), scheme)


def _netloc(netloc: str, scheme: str) -> str:
    """host:port with the scheme's default port made explicit."""
    default = "443" if scheme == "https" else "80"
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        return f"{host}]:{rest.lstrip(':') or default}"
    host, _, port = netloc.partition(":")
    return f"{host}:{port or default}"


class QueryAdmission:
    """Ad hoc SQL's own threads, shared with nothing else: ``running`` queries at once and ``queued``
    more waiting; beyond that refused at once.  A slot is freed when its query ends, not when its
    client leaves; a query still waiting when its request ends or its time is up never runs."""

    def __init__(self, running: int, queued: int):
        self._pool = ThreadPoolExecutor(max_workers=running, thread_name_prefix="admin-query")
        self._running, self._queued = running, queued
        self._taken = 0
        self._lock = threading.Lock()

    async def run(self, deadline: float, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a query thread.  QueryError 429 when every slot is taken, 503 when it is still
        waiting for a thread at ``deadline`` (``time.monotonic()``)."""
        with self._lock:
            if self._taken >= self._running + self._queued:
                raise QueryError(f"{self._running} queries are running and {self._queued} waiting; try again "
                                 "shortly", 429, "query_busy")
            self._taken += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._release)
        waiting = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, deadline - time.monotonic()))
            if not done and future.cancel():
                raise QueryError("no query slot came free within the query's time limit; try again shortly", 503,
                                 "query_queue_timeout")
            return await waiting
        finally:
            future.cancel()  # no-op once it runs

    def _release(self, _future: object) -> None:
        with self._lock:
            self._taken -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
