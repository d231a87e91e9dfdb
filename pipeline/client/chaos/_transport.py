"""HTTP transports with chaos: any httpx transport (sync or async) or requests adapter, wrapped.

    http = httpx.Client(transport=chaos.transport(httpx.HTTPTransport()))
    client = openai.OpenAI(http_client=http)              # LLM calls: latency, degraded answers, cost ...
    session.mount("https://", chaos.transport(requests.adapters.HTTPAdapter()))   # tool calls over HTTP

Duck-typed: the wrapper calls what the inner object has (``handle_request``, ``handle_async_request``,
``send``) and builds answers and errors with the classes of the library the request came from, found
in ``sys.modules`` (this package imports neither library).  A fault answers as the real failure would:

    tool_timeout        waits, then raises the library's ReadTimeout
    network_partition   raises the library's ConnectError / ConnectionError (nothing is sent)
    credential_expire   401 with an OpenAI-style error body (openai raises AuthenticationError)
    tool_error          ``status`` (500) with an error body;  delegation_reject: 403
    llm_latency         waits, then sends
    llm_degraded, tool_wrong_schema, cost_spike   send, then change a 2xx JSON answer (streamed and
                        non-JSON answers pass through unchanged)

A request is an ``llm`` call when its path ends like an LLM API's (``/chat/completions``,
``/completions``, ``/responses``, ``/messages``, ``/embeddings``, ``:generateContent``), else a
``tool`` call named by its host; ``kind`` and ``name`` override both.  An LLM call's name is the
``model`` of its JSON body, read only while an experiment is limited to some models.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse
from typing import Any

from ._experiments import Fault
from ._inject import Chaos, _delay, change_answer, describe, tag_span
from .faults import AFTER_CALL

_LLM_PATHS = ("/chat/completions", "/completions", "/responses", "/messages", "/embeddings", ":generateContent")
_STATUS = {"tool_error": 500, "delegation_reject": 403, "credential_expire": 401}
_REASON = {500: "Internal Server Error", 401: "Unauthorized", 403: "Forbidden"}
_DROP_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def wrap(chaos: Chaos, inner: Any, kind: str | None = None, name: str | None = None) -> Any:
    if hasattr(inner, "handle_request") or hasattr(inner, "handle_async_request"):
        return ChaosTransport(chaos, inner, kind, name)
    if hasattr(inner, "send"):
        return ChaosAdapter(chaos, inner, kind, name)
    raise TypeError(f"cannot wrap {type(inner).__name__}: expected an httpx transport (handle_request) or a "
                    "requests adapter (send)")


class _Wrapper:
    def __init__(self, chaos: Chaos, inner: Any, kind: str | None, name: str | None):
        if kind not in (None, "tool", "llm", "delegation"):
            raise ValueError(f"kind must be tool, llm or delegation (got {kind!r})")
        self.chaos = chaos
        self.inner = inner
        self.kind = kind
        self.name = name

    def _pick(self, url: str, host: str | None, body: Any) -> tuple[Fault | None, str, str | None]:
        path = urllib.parse.urlsplit(url).path
        kind = self.kind or ("llm" if path.endswith(_LLM_PATHS) else "tool")
        name = self.name
        if name is None:
            name = _model(body) if kind == "llm" and _limits_models(self.chaos) else host
        return self.chaos.pick(kind, name), kind, name

    @staticmethod
    def _error(fault: Fault, kind: str, name: str | None, delay: float) -> tuple[str, int | None]:
        """(message, status of the answer to give, or None to raise) for a fault that fails the call."""
        message = describe(fault, kind, name, delay)
        tag_span(fault, message)
        status = int(fault.param("status") or 500) if fault.type == "tool_error" else _STATUS.get(fault.type)
        return message, status

    @staticmethod
    def _changed(fault: Fault, status: int, content_type: str, body: bytes) -> bytes | None:
        """The answer's new body for an after-call fault, or None to leave it as it is."""
        if not 200 <= status < 300 or "json" not in content_type:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        tag_span(fault)
        return json.dumps(change_answer(fault, doc)).encode()


def _error_body(fault: Fault, message: str) -> bytes:
    code = {"credential_expire": "invalid_api_key", "delegation_reject": "delegation_rejected"}.get(fault.type)
    return json.dumps({"error": {"message": message, "type": "invalid_request_error" if code == "invalid_api_key"
                                 else fault.type, "code": code or fault.type,
                                 "chaos_experiment_id": fault.experiment_id}}).encode()


class ChaosTransport(_Wrapper):
    """An httpx transport (``handle_request`` and/or ``handle_async_request``) with chaos."""

    def handle_request(self, request: Any) -> Any:
        if not self.chaos.experiments():  # the common case: nothing to classify
            return self.inner.handle_request(request)
        fault, kind, name = self._pick(str(request.url), request.url.host, _content(request))
        if fault is None:
            return self.inner.handle_request(request)
        delay = _delay(fault)
        if delay:
            self.chaos.sleep(delay)
        early = self._early(fault, kind, name, delay, request)
        if early is not None:
            return early
        response = self.inner.handle_request(request)
        if fault.type not in AFTER_CALL:
            return response
        return self._after(fault, request, response, response.read())

    async def handle_async_request(self, request: Any) -> Any:
        if not self.chaos.experiments():
            return await self.inner.handle_async_request(request)
        fault, kind, name = self._pick(str(request.url), request.url.host, _content(request))
        if fault is None:
            return await self.inner.handle_async_request(request)
        delay = _delay(fault)
        if delay:
            await asyncio.sleep(delay)
        early = self._early(fault, kind, name, delay, request)
        if early is not None:
            return early
        response = await self.inner.handle_async_request(request)
        if fault.type not in AFTER_CALL:
            return response
        return self._after(fault, request, response, await response.aread())

    def _early(self, fault: Fault, kind: str, name: str | None, delay: float, request: Any) -> Any:
        """The answer (or the raised error) of a fault that fails the call; None to send it."""
        if fault.type in AFTER_CALL:
            return None
        if fault.type == "llm_latency":
            tag_span(fault)
            return None
        httpx = _library(request)
        message, status = self._error(fault, kind, name, delay)
        if status is None:
            error = httpx.ReadTimeout if fault.type == "tool_timeout" else httpx.ConnectError
            raise error(message, request=request)
        return httpx.Response(status, headers={"content-type": "application/json"},
                              content=_error_body(fault, message), request=request)

    def _after(self, fault: Fault, request: Any, response: Any, body: bytes) -> Any:
        changed = self._changed(fault, response.status_code, response.headers.get("content-type", ""), body)
        if changed is None:
            return response
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROP_HEADERS]
        return _library(request).Response(response.status_code, headers=headers, content=changed, request=request,
                                          extensions=response.extensions)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()

    async def aclose(self) -> None:
        if hasattr(self.inner, "aclose"):
            await self.inner.aclose()

    def __enter__(self) -> ChaosTransport:
        if hasattr(self.inner, "__enter__"):
            self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self.inner, "__exit__"):
            self.inner.__exit__(*exc)

    async def __aenter__(self) -> ChaosTransport:
        if hasattr(self.inner, "__aenter__"):
            await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if hasattr(self.inner, "__aexit__"):
            await self.inner.__aexit__(*exc)


class ChaosAdapter(_Wrapper):
    """A requests transport adapter (``send``) with chaos; mount it with ``session.mount(prefix, ...)``."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        if not self.chaos.experiments():
            return self.inner.send(request, **kwargs)
        url = request.url
        fault, kind, name = self._pick(url, urllib.parse.urlsplit(url).hostname, request.body)
        if fault is None:
            return self.inner.send(request, **kwargs)
        delay = _delay(fault)
        if delay:
            self.chaos.sleep(delay)
        if fault.type not in AFTER_CALL and fault.type != "llm_latency":
            requests = _library(request)
            message, status = self._error(fault, kind, name, delay)
            if status is None:
                error = requests.exceptions.ReadTimeout if fault.type == "tool_timeout" \
                    else requests.exceptions.ConnectionError
                raise error(message, request=request)
            return self._response(requests, request, status, _error_body(fault, message))
        if fault.type == "llm_latency":
            tag_span(fault)
        response = self.inner.send(request, **kwargs)
        if fault.type in AFTER_CALL:
            changed = self._changed(fault, response.status_code, response.headers.get("Content-Type", ""),
                                    response.content)
            if changed is not None:
                response._content = changed  # requests keeps the read body here
                response.headers.pop("Content-Encoding", None)
                response.headers["Content-Length"] = str(len(changed))
        return response

    def _response(self, requests: Any, request: Any, status: int, body: bytes) -> Any:
        response = requests.models.Response()
        response.status_code = status
        response.reason = _REASON.get(status, "")
        response._content = body
        response.headers = requests.structures.CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(body))})
        response.encoding = "utf-8"
        response.url = request.url
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        self.inner.close()


def _library(request: Any) -> Any:
    """The HTTP library a request object comes from (httpx, requests), as already imported."""
    return sys.modules[type(request).__module__.partition(".")[0]]


def _content(request: Any) -> Any:
    try:
        return request.content  # httpx: the body of a request that is not streamed
    except Exception:  # noqa: BLE001 - a streamed body: no model to read
        return None


def _model(body: Any) -> str | None:
    if not body:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def _limits_models(chaos: Chaos) -> bool:
    return any(exp.models or any(f.models for f in exp.faults) for exp in chaos.experiments())
