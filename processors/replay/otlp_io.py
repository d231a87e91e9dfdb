"""One trace out of the store as OTLP/JSON, and OTLP/JSON back in: into a running pipeline or a stopped store.

``export_trace`` reads the trace's rows (``traces.trace_spans``) into a canonical table and encodes it
with the project's one encoder back to OTLP (``pipeline/pdata/arrow_otlp.table_to_json``): an
``ExportTraceServiceRequest`` in OTLP/JSON (hex ids, spans grouped by resource and scope, attributes
as AnyValues), which any OTLP/HTTP endpoint takes.  ``import_otlp_json`` / ``import_file`` take such a
body back: POSTed to a running pipeline's OTLP/HTTP receiver (``/v1/traces``), or, with the pipeline
stopped, decoded by the same codecs the receiver uses (``otlp_json`` → ``otlp_arrow``), normalised
(``normalize``) and appended through the real store (``SpanStore``), which attributes agents and rolls
up as the pipeline would.

What round-trips exactly (store → export → import into a fresh store): every canonical column of the
span (ids, names, kinds, times, status, trace state, flags, resource and scope, attributes, events,
links, dropped counts) and the agent columns the pipeline derives (from the attributes, by attribution
through the trace, from the service name).  What cannot:

* a cost the ``cost`` processor computed (the client sent none) travels as the attribute
  ``agent_sre.cost_usd`` (so that other backends see it, as every exporter sends it); the imported span
  has the same ``cost_usd`` and, in ``attributes``, that one key more;
* agent columns that came from neither the attributes nor the trace (a pipeline's own
  ``agent_semconv.rules`` for in-house keys: pass its ``conventions`` to import with them; columns set
  by hand in a store) are not in OTLP and are derived again on import;
* ``received_ns`` is the import's time: the store stamps it (retention and attribution go by it).

Attribute values are stored as text; the encoder gives the keys the normalisation table types (token
counts, costs, scores, flags) their OTLP type back and sends the rest as strings, so text comes back
as the same text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.processors.replay.traces import Read, owned_by, trace_spans

if TYPE_CHECKING:
    from agent_sre.pipeline.pdata.normalize import Conventions

__all__ = ["ImportResult", "ReceiverUnreachable", "export_trace", "import_file", "import_otlp_json",
           "trace_table"]

MAX_POST_BYTES = 4 << 20  # one POST's body; the receiver's default limit is larger (bodies are split below it)


class ReceiverUnreachable(ConnectionError):
    """No OTLP/HTTP receiver answers at the endpoint (the pipeline is not running there)."""


@dataclass
class ImportResult:
    """What an import did: spans accepted and rejected (with the receiver's or converter's reason)."""

    target: str  # the store's path, or the receiver's URL
    spans: int = 0
    rejected: int = 0
    message: str = ""
    trace_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"target": self.target, "spans": self.spans, "rejected": self.rejected, "message": self.message,
                "trace_ids": self.trace_ids}


# --- export ----------------------------------------------------------------------------------

def trace_table(read: Read, trace_id: str, follow_links: bool = False,
                agents: frozenset[str] | None = None) -> pa.Table:
    """The trace's stored rows as a canonical table (``SPAN_SCHEMA``), grouped by resource and scope (the
    encoder makes one ResourceSpans per run of rows with one resource), in the order they first started;
    ``agents``: only traces that are theirs (``traces.owned_by``)."""
    spans = trace_spans(read, trace_id, follow_links)
    if agents is not None:
        spans = owned_by(spans, agents)
    resource = {id(s): json.dumps(s["resource_attributes"], sort_keys=True) for s in spans}
    scope = {id(s): json.dumps([s["scope_name"], s["scope_version"], s["scope_attributes"]], sort_keys=True)
             for s in spans}
    first: dict[str, int] = {}  # resources, and scopes within them, in the order they first started
    for s in sorted(spans, key=lambda s: s["start_ns"] or 0):
        first.setdefault(resource[id(s)], len(first))
        first.setdefault(resource[id(s)] + scope[id(s)], len(first))
    spans.sort(key=lambda s: (first[resource[id(s)]], first[resource[id(s)] + scope[id(s)]], s["start_ns"] or 0,
                              s["trace_id"], s["span_id"]))
    return pa.Table.from_pylist(spans, schema=SPAN_SCHEMA)


def export_trace(read: Read, trace_id: str, follow_links: bool = False,
                 agents: frozenset[str] | None = None) -> dict | None:
    """The trace as an OTLP/JSON ``ExportTraceServiceRequest`` (a dict; ``json.dumps`` it to send or write);
    with ``follow_links``, the traces tied to it too.  None when no span of it is stored (with ``agents``:
    when it is not theirs)."""
    from agent_sre.pipeline.pdata.arrow_otlp import table_to_json

    table = trace_table(read, trace_id, follow_links, agents)
    if trace_id not in set(table.column("trace_id").to_pylist()):
        return None
    return json.loads(table_to_json(table))


# --- import ----------------------------------------------------------------------------------

def _body(document: bytes | str | dict) -> bytes:
    if isinstance(document, dict):
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return document.encode() if isinstance(document, str) else document


def import_otlp_json(document: bytes | str | dict, *, db: str | Path | None = None, endpoint: str | None = None,
                     conventions: Conventions | None = None, timeout: float = 30.0) -> ImportResult:
    """Import an OTLP/JSON ``ExportTraceServiceRequest``: POSTed to the OTLP/HTTP receiver at ``endpoint``
    (``host:port`` or a URL), or, with ``db``, appended to that store (created if missing; no pipeline may
    hold it).  Raises ``ValueError`` for a body that is not OTLP/JSON, ``ReceiverUnreachable`` when nothing
    listens at ``endpoint``, ``RuntimeError`` when the receiver refuses."""
    if (db is None) == (endpoint is None):
        raise ValueError("import into a store (db) or a running pipeline (endpoint): exactly one of them")
    body = _body(document)
    if endpoint is not None:
        return _post(body, endpoint, timeout)
    return _append(body, Path(db), conventions)  # type: ignore[arg-type]


def import_file(path: str | Path, *, db: str | Path | None = None, endpoint: str | None = None,
                conventions: Conventions | None = None, timeout: float = 30.0) -> ImportResult:
    """``import_otlp_json`` of the file at ``path`` (what ``export_trace`` wrote, or any OTLP/JSON file)."""
    try:
        body = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return import_otlp_json(body, db=db, endpoint=endpoint, conventions=conventions, timeout=timeout)


def _decode(body: bytes) -> tuple[pa.Table, int, str]:
    """The body as canonical rows, by the receiver's own codecs; ``ValueError`` with the JSON path."""
    from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
    from agent_sre.pipeline.pdata.otlp_json import OtlpJsonError, decode_trace_request

    try:
        request = decode_trace_request(body)
    except OtlpJsonError as exc:
        raise ValueError(f"not an OTLP/JSON trace request: {exc}") from None
    conversion = request_to_table(request)
    return conversion.table, conversion.rejected, conversion.message


def _append(body: bytes, db: Path, conventions: Conventions | None) -> ImportResult:
    from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
    from agent_sre.pipeline.storage.store import SpanStore

    table, rejected, message = _decode(body)
    result = ImportResult(str(Path(db).absolute()), rejected=rejected, message=message)
    if not table.num_rows:
        return result
    table = normalize(table, conventions or load_conventions())
    try:
        store = SpanStore(db)  # no spool: the rows are committed when append returns
    except OSError as exc:
        raise RuntimeError(f"cannot open {db} to import into it (is a pipeline running on it? then import "
                           f"with its OTLP endpoint): {exc}") from None
    try:
        store.append(table)
    finally:
        store.close()
    result.spans = table.num_rows
    result.trace_ids = sorted(set(table.column("trace_id").to_pylist()))
    return result


def _url(endpoint: str) -> str:
    base = endpoint if endpoint.startswith(("http://", "https://")) else f"http://{endpoint}"
    return base.rstrip("/") + ("" if base.rstrip("/").endswith("/v1/traces") else "/v1/traces")


def _chunks(body: bytes) -> list[bytes]:
    """The request split into bodies under ``MAX_POST_BYTES`` (by ResourceSpans, then by ScopeSpans)."""
    if len(body) <= MAX_POST_BYTES:
        return [body]
    try:
        doc = json.loads(body)
        groups = [{**rs, "scopeSpans": [ss]} for rs in doc.get("resourceSpans") or []
                  for ss in rs.get("scopeSpans") or []]
    except (ValueError, AttributeError, TypeError):
        return [body]  # the receiver says what is wrong with it
    out: list[bytes] = []
    current: list[dict] = []
    size = 0
    for group in groups:
        encoded = len(json.dumps(group))
        if current and size + encoded > MAX_POST_BYTES:
            out.append(_body({"resourceSpans": current}))
            current, size = [], 0
        current.append(group)
        size += encoded
    if current:
        out.append(_body({"resourceSpans": current}))
    return out


def _post(body: bytes, endpoint: str, timeout: float) -> ImportResult:
    table, _, _ = _decode(body)  # refuse what is not OTLP/JSON before sending it
    url = _url(endpoint)
    result = ImportResult(url, trace_ids=sorted(set(table.column("trace_id").to_pylist())))
    for chunk in _chunks(body):
        request = urllib.request.Request(url, data=chunk, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                reply = json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise RuntimeError(f"the receiver at {url} refused the import ({exc.code}): {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReceiverUnreachable(f"no OTLP/HTTP receiver at {url}: {reason}") from None
        partial = reply.get("partialSuccess") or {}
        result.rejected += int(partial.get("rejectedSpans") or 0)
        result.message = partial.get("errorMessage") or result.message
    result.spans = table.num_rows - result.rejected
    return result
