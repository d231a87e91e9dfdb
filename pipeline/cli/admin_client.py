"""The one client of a running pipeline's admin API (pipeline/service/admin.py) that every command uses.

    client = AdminClient("127.0.0.1:13133")          # or "http://host:port"
    client.get_json("/v1/costs", {"days": 7})        # -> dict
    client.post_json("/v1/query", {"sql": "..."})   # -> dict
    client.get_text("/v1/incidents/INC-00001/postmortem")

Two kinds of failure, both ``AdminError``:

    AdminUnreachable   no pipeline answers at the endpoint (refused, unresolvable, no answer within
                       the timeout): a command that can read the stopped pipeline's file does so
    AdminError         the pipeline answered with an error status (``status``; the message is the
                       answer's ``{"error": ...}``), or with something that is not JSON

With the admin API's ``auth`` on, the client sends the key in ``AGENT_SRE_ADMIN_TOKEN`` as
``Authorization: Bearer``; with its ``tls`` on (an ``https://`` endpoint), it trusts the CA in
``AGENT_SRE_ADMIN_CA_FILE`` (else the system's) and presents ``AGENT_SRE_ADMIN_CLIENT_CERT`` /
``AGENT_SRE_ADMIN_CLIENT_KEY`` for mTLS.

Standard library only: the CLI starts without importing the HTTP server's stack.  ``urllib.request`` and
``ssl`` are imported by the first request (~50 ms of start-up a command reading a stopped pipeline's file,
``agent-sre query --db``, does not need).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    import urllib.error

DEFAULT_TIMEOUT = 60.0
TOKEN_ENV = "AGENT_SRE_ADMIN_TOKEN"
CA_FILE_ENV = "AGENT_SRE_ADMIN_CA_FILE"
CLIENT_CERT_ENV = "AGENT_SRE_ADMIN_CLIENT_CERT"
CLIENT_KEY_ENV = "AGENT_SRE_ADMIN_CLIENT_KEY"


class AdminError(Exception):
    """An error answer of the admin API (``status``), or no usable answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AdminUnreachable(AdminError):
    """No pipeline answers at the endpoint: it is stopped (or elsewhere)."""


class AdminClient:
    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, token: str | None = None):
        """``token``: the admin API key; None: ``AGENT_SRE_ADMIN_TOKEN`` if set."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.endpoint = endpoint
        self.base = endpoint.rstrip("/") if "://" in endpoint else f"http://{endpoint.rstrip('/')}"
        self.timeout = timeout
        self._token = token if token is not None else (os.environ.get(TOKEN_ENV, "").strip() or None)
        self._ssl = _tls_context() if self.base.startswith("https://") else None

    def __repr__(self) -> str:
        return f"AdminClient({self.base!r})"

    def url(self, path: str, params: dict | None = None) -> str:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def get_json(self, path: str, params: dict | None = None) -> dict:
        return self._json(self._request("GET", path, params))

    def post_json(self, path: str, payload: dict) -> dict:
        return self._json(self._request("POST", path, None, payload))

    def get_text(self, path: str, params: dict | None = None) -> str:
        return self._request("GET", path, params).decode("utf-8", errors="replace")

    def _request(self, method: str, path: str, params: dict | None, payload: dict | None = None) -> bytes:
        import urllib.error
        import urllib.request

        url = self.url(path, params)
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:  # an answer: the pipeline runs and said no
            hint = f" (give the admin API key in {TOKEN_ENV})" if exc.code == 401 and not self._token else ""
            raise AdminError(_error_text(exc) + hint, exc.code) from None
        except urllib.error.URLError as exc:
            raise AdminUnreachable(f"no pipeline answers at {self.endpoint}: {_reason(exc.reason)}") from None
        except (ConnectionError, TimeoutError) as exc:  # e.g. reset or timed out mid-answer
            raise AdminUnreachable(f"no pipeline answers at {self.endpoint}: {_reason(exc)}") from None

    def _json(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise AdminError(f"{self.base} answered something that is not JSON: {raw[:200]!r}") from None
        if not isinstance(body, dict):
            raise AdminError(f"{self.base} answered JSON that is not an object: {raw[:200]!r}")
        return body


def _tls_context() -> ssl.SSLContext:
    """Trust the CA in AGENT_SRE_ADMIN_CA_FILE (else the system's); present the client certificate if set."""
    import ssl

    context = ssl.create_default_context(cafile=os.environ.get(CA_FILE_ENV) or None)
    cert = os.environ.get(CLIENT_CERT_ENV)
    if cert:
        context.load_cert_chain(cert, os.environ.get(CLIENT_KEY_ENV) or None)
    return context


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError (3.10+)
        return "no answer in time"
    return str(reason)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of a JSON error answer; else its text; else the HTTP reason."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    text = raw.decode("utf-8", errors="replace").strip()
    return text[:500] if text else str(exc.reason)
