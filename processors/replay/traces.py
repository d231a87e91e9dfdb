"""What happened: one trace, or a delegation chain across agents and traces, as one tree.

``trace_spans`` reads every span of a trace from the span store (and, following links, the spans of
the traces it delegated to or was delegated from); ``build_tree`` turns them into one tree with
per-span and per-trace figures; ``render_trace`` draws that tree for a terminal.  ``load_trace`` is
the first two: what ``GET /v1/traces/{id}`` and ``agent-sre trace show`` answer.

Traces are tied together across trace ids (the delegated agent started a trace of its own) by:

    span links          a span of trace X links to span S of trace Y: when the linking span is a
                        root of X, X continued from S (X's roots hang under S); otherwise the
                        linking span started Y (Y's roots hang under it)
    agent.delegation.trace_id
                        on the delegating span: the trace the delegated agent ran in
    agent.delegation.parent_trace_id, agent.delegation.parent_span_id
                        on a span of the delegated trace: the trace and span that delegated to it

Within one trace (trace context propagated to the other agent) the chain is the span tree itself.

Cost: a trace's spans are found by one scan of ``trace_id`` (no index: trace ids are random, so zone
maps cannot skip anything; measured on 10M stored spans, one DuckDB thread, 48 MB buffer pool, on 2
busy cores: 25-45 ms when a trace's spans were stored together, 45-90 ms when a thousand traces
interleave); its rows are then read from the row groups that hold them only (zone maps on
``start_ns``).  Traces naming it are looked for among the spans that started while it ran, which the
zone maps of ``start_ns`` (it follows the insert order closely) narrow to a few row groups: 5-15 ms.
Each further trace of a chain costs one more scan (all the traces of one hop in the same scan).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA

__all__ = ["build_tree", "load_trace", "owned_by", "render_trace", "trace_spans", "valid_trace_id"]

Read = Callable[[str, list], list[tuple]]

CANONICAL = [f.name for f in SPAN_SCHEMA]
MAP_COLUMNS = ("attributes", "resource_attributes", "scope_attributes")

# The attribute keys that tie a delegated trace to the span that delegated to it (module docstring).
DELEGATION_TRACE = "agent.delegation.trace_id"
DELEGATION_PARENT_TRACE = "agent.delegation.parent_trace_id"
DELEGATION_PARENT_SPAN = "agent.delegation.parent_span_id"

MAX_LINKED_TRACES = 64  # more traces in one chain are cut (the tree says so): each hop is one more scan
# A delegated trace starts after the span that delegated to it began and ends about when it ends; the
# slack is for the clocks of the agents' hosts, which need not agree.
LINK_WINDOW_SLACK_NS = 10 * 1_000_000_000
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def valid_trace_id(trace_id: str) -> bool:
    """32 lowercase hex digits, the form the store keeps (OTLP/JSON's)."""
    return bool(_TRACE_ID.match(trace_id))


# --- reading -------------------------------------------------------------------------------

_SELECT = ", ".join(CANONICAL)


def _rows(read: Read, trace_ids: list[str]) -> list[dict]:
    """Every span of these traces, as dicts of the canonical columns with the attribute maps as dicts.
    Through the ``spans`` view: it holds what the pipeline has not attributed yet (held_spans) and,
    read-only, what is still in the spool.

    The store's ``trace_locator`` says where the traces' spans started (a few ms); their rows are then
    read from those row groups only (zone maps on ``start_ns``).  Without it (a store from before it, or
    a trace it does not know), in two steps: where the spans are (a scan of ``trace_id`` and ``start_ns``
    alone: 30-130 ms over 10M spans), then their rows."""
    if not trace_ids:
        return []
    where = "trace_id = ?" if len(trace_ids) == 1 else "list_contains(?::VARCHAR[], trace_id)"
    params: list = [trace_ids[0]] if len(trace_ids) == 1 else [list(trace_ids)]
    located = _located(read, trace_ids)
    if located is not None:
        return [_span(row) for row in read(f"SELECT {_SELECT} FROM spans WHERE {where} AND start_ns BETWEEN ? AND ?",
                                           [*params, *located])]
    lo, hi, count = read(f"SELECT min(start_ns), max(start_ns), count(*) FROM spans WHERE {where}", params)[0]
    if not count:
        return []
    rows = read(f"SELECT {_SELECT} FROM spans WHERE {where} AND start_ns BETWEEN ? AND ?", [*params, lo, hi])
    if len(rows) != count:  # spans without a start time: not in the window
        rows = read(f"SELECT {_SELECT} FROM spans WHERE {where}", params)
    return [_span(row) for row in rows]


def _located(read: Read, trace_ids: list[str]) -> tuple[int, int] | None:
    """The start_ns range of these traces' spans from the store's ``trace_locator``; None when it does
    not know them all (a store from before it, spans without a start time): the caller scans."""
    try:
        found, lo, hi, untimed = read(
            "SELECT count(DISTINCT trace_key), min(first_ns), max(last_ns), count(*) FILTER (WHERE first_ns IS NULL) "
            "FROM trace_locator WHERE trace_key IN (SELECT TRY_CAST('0x' || unnest(?::VARCHAR[]) AS UHUGEINT))",
            [list(trace_ids)])[0]
    except Exception:  # noqa: BLE001 - no locator in this store: the scan answers
        return None
    return (lo, hi) if found == len(set(trace_ids)) and not untimed and lo is not None else None


def _span(row: tuple) -> dict:
    span = dict(zip(CANONICAL, row, strict=True))
    for col in MAP_COLUMNS:
        span[col] = _as_dict(span[col])
    span["events"] = [{**e, "attributes": _as_dict(e.get("attributes"))} for e in span["events"] or []]
    span["links"] = [{**k, "attributes": _as_dict(k.get("attributes"))} for k in span["links"] or []]
    return span


def _as_dict(value) -> dict:
    """A DuckDB MAP as Python receives it (a dict; a list of key/value structs from a stored list)."""
    if not value:
        return {}
    if isinstance(value, list):
        return {e["key"]: e["value"] for e in value}
    return dict(value)


def _order(span: dict) -> tuple:
    return (span["start_ns"] if span["start_ns"] is not None else 0, span["trace_id"], span["span_id"])


def trace_spans(read: Read, trace_id: str, follow_links: bool = True) -> list[dict]:
    """Every span of ``trace_id``, sorted by start time, as dicts of the canonical columns (attribute
    maps as dicts; each with its ``trace_id``).  With ``follow_links``, also the spans of the traces tied
    to it by span links or ``agent.delegation.*`` attributes (module docstring), transitively, up to
    ``MAX_LINKED_TRACES`` traces.  A trace that names ours (rather than ours naming it) is looked for among
    the spans that started while ours ran (``LINK_WINDOW_SLACK_NS`` either side); a tied trace is then
    read whole."""
    spans = _rows(read, [trace_id])
    if not spans or not follow_links:
        spans.sort(key=_order)
        return spans
    seen = {trace_id}
    frontier = spans
    tables: list[str] | None = None
    while frontier and len(seen) < MAX_LINKED_TRACES:
        window = _window(frontier)
        if tables is None:
            tables = _stored_tables(read)
        wanted = sorted((_named_by(frontier) | _naming(read, tables, frontier, window)) - seen)
        wanted = wanted[:MAX_LINKED_TRACES - len(seen)]
        seen.update(wanted)
        frontier = _rows(read, wanted) if wanted else []  # whole: a delegated agent may run on long after
        spans.extend(frontier)
    spans.sort(key=_order)
    return spans


def _window(spans: list[dict]) -> tuple[int, int]:
    starts = [s["start_ns"] for s in spans if s["start_ns"] is not None] or [0]
    ends = [s["end_ns"] for s in spans if s["end_ns"] is not None] or starts
    return min(starts) - LINK_WINDOW_SLACK_NS, max(max(ends), max(starts)) + LINK_WINDOW_SLACK_NS


def _named_by(spans: list[dict]) -> set[str]:
    """Trace ids these spans name: their links' and their delegation attributes'."""
    out = set()
    for s in spans:
        for link in s["links"]:
            if link.get("trace_id") and link["trace_id"] != s["trace_id"]:
                out.add(link["trace_id"])
        for key in (DELEGATION_TRACE, DELEGATION_PARENT_TRACE):
            value = s["attributes"].get(key)
            if value and value != s["trace_id"] and valid_trace_id(value):
                out.add(value)
    return out


def _stored_tables(read: Read) -> list[str]:
    """The tables behind the ``spans`` view in this connection (held_spans and the read-only overlay
    of the spool are not always there)."""
    names = {r[0] for r in read("SELECT table_name FROM duckdb_tables() "
                                "WHERE table_name IN ('span_rows', 'held_spans', 'spooled_rows')", [])}
    return [t for t in ("span_rows", "held_spans", "spooled_rows") if t in names]


# The stored tables, not the view: the view builds a MAP per row, which for the ~100k rows of a busy
# minute costs 160 ms; the stored key/value list is searched in place (9 ms for 120k rows).
_NAMING_PART = ("SELECT DISTINCT trace_id FROM {table} WHERE start_ns BETWEEN ? AND ? "
                "AND NOT list_contains(?::VARCHAR[], trace_id) "
                "AND ((len(links) > 0 AND list_has_any(list_transform(links, lambda l: l.trace_id), ?::VARCHAR[])) "
                "OR list_has_any(list_transform(list_filter(attributes, lambda e: e.key IN "
                f"('{DELEGATION_TRACE}', '{DELEGATION_PARENT_TRACE}')), lambda e: e.value), ?::VARCHAR[]))")


def _naming(read: Read, tables: list[str], spans: list[dict], window: tuple[int, int]) -> set[str]:
    """Trace ids whose spans name one of these spans' traces (a link, or a delegation attribute)."""
    if not tables:
        return set()
    ids = sorted({s["trace_id"] for s in spans})
    sql = " UNION ".join(_NAMING_PART.format(table=t) for t in tables)
    return {r[0] for r in read(sql, [window[0], window[1], ids, ids, ids] * len(tables))}


# --- the tree ------------------------------------------------------------------------------

def _error(span: dict) -> str | None:
    """What went wrong, when the span failed (status error, or an error type without a status)."""
    if span.get("status_code") != "error" and not span.get("error_type"):
        return None
    return span.get("status_message") or span.get("error_type") or "error"


def _node(span: dict) -> dict:
    inp, out = span.get("input_tokens"), span.get("output_tokens")
    return {
        "trace_id": span["trace_id"], "span_id": span["span_id"], "parent_span_id": span.get("parent_span_id") or None,
        "name": span.get("name"), "role": span.get("span_role") or "other",
        "agent": span.get("agent_id") or span.get("agent_name"), "tool": span.get("tool_name"),
        "model": span.get("model"), "delegate_to": span.get("delegation_to"), "status": span.get("status_code") or "unset", "error": _error(span),
        "start_ns": span.get("start_ns"), "duration_ns": span.get("duration_ns"), "cost_usd": span.get("cost_usd"),
        "input_tokens": inp, "output_tokens": out,
        "tokens": None if inp is None and out is None else (inp or 0) + (out or 0),
        "orphan": False, "linked": None, "children": [],
    }


def _totals(spans: list[dict]) -> dict:
    starts = [s["start_ns"] for s in spans if s.get("start_ns") is not None]
    ends = [s["end_ns"] for s in spans if s.get("end_ns") is not None]
    inp = sum(s.get("input_tokens") or 0 for s in spans)
    out = sum(s.get("output_tokens") or 0 for s in spans)
    return {
        "spans": len(spans), "errors": sum(1 for s in spans if _error(s) is not None),
        "cost_usd": round(sum(s.get("cost_usd") or 0.0 for s in spans), 10),
        "input_tokens": inp, "output_tokens": out, "tokens": inp + out,
        "start_ns": min(starts) if starts else None,
        "latency_ns": max(ends) - min(starts) if starts and ends else None,
        "agents": sorted({s["agent_id"] for s in spans if s.get("agent_id")}),
    }


def _ties(spans: list[dict], traces: set[str]) -> list[tuple[str, str | None, str, str]]:
    """(parent trace, delegating span or None, child trace, via) for every tie between these traces:
    delegation attributes first (they say what was meant), then links."""
    roots = {(s["trace_id"], s["span_id"]) for s in spans if not s.get("parent_span_id")}
    by_attr, by_link = [], []
    for s in spans:
        attrs, trace = s["attributes"], s["trace_id"]
        child = attrs.get(DELEGATION_TRACE)
        if child in traces and child != trace:
            by_attr.append((trace, s["span_id"], child, "agent.delegation"))
        parent = attrs.get(DELEGATION_PARENT_TRACE)
        if parent in traces and parent != trace:
            by_attr.append((parent, attrs.get(DELEGATION_PARENT_SPAN) or None, trace, "agent.delegation"))
        for link in s["links"]:
            other = link.get("trace_id")
            if other not in traces or other == trace:
                continue
            if (trace, s["span_id"]) in roots:
                by_link.append((other, link.get("span_id") or None, trace, "link"))
            else:
                by_link.append((trace, s["span_id"], other, "link"))
    return by_attr + by_link


def build_tree(spans: list[dict], trace_id: str | None = None) -> dict:
    """The span tree of ``spans`` (as ``trace_spans`` returns them): children under their parents, sorted by
    start; a span whose parent is not among them at the root, marked ``orphan``; the roots of a tied trace
    under the span that delegated to it (``linked``: from which trace, by what), so a delegation chain
    across traces is one tree.  With totals for the whole chain and per trace."""
    spans = sorted(spans, key=_order)
    trace_id = trace_id or (spans[0]["trace_id"] if spans else None)
    traces = sorted({s["trace_id"] for s in spans})
    nodes = {(s["trace_id"], s["span_id"]): _node(s) for s in spans}
    parents = _parents(spans, nodes)
    tops: dict[str, list[dict]] = {t: [] for t in traces}  # each trace's roots and orphans
    for s in spans:
        key = (s["trace_id"], s["span_id"])
        node, parent = nodes[key], parents[key]
        if parent is not None:
            nodes[parent]["children"].append(node)
        else:
            node["orphan"] = bool(s.get("parent_span_id"))
            tops[s["trace_id"]].append(node)
    roots = _hang(tops, _ties(spans, set(traces)), nodes, trace_id)
    per_trace = {t: _totals([s for s in spans if s["trace_id"] == t]) for t in traces}
    return {"trace_id": trace_id, "traces": traces, "totals": {**_totals(spans), "traces": len(traces)},
            "per_trace": per_trace, "roots": roots, "truncated": len(traces) >= MAX_LINKED_TRACES}


def _parents(spans: list[dict], nodes: dict[tuple[str, str], dict]) -> dict[tuple[str, str], tuple[str, str] | None]:
    """Each span's parent among the spans (None: a root, or an orphan); a cycle of parent ids (a broken
    instrumentation) is cut at the span where the walk up comes back, which is then shown as an orphan."""
    parents: dict[tuple[str, str], tuple[str, str] | None] = {}
    for s in spans:
        key, parent = (s["trace_id"], s["span_id"]), (s["trace_id"], s.get("parent_span_id") or "")
        parents[key] = parent if parent in nodes and parent != key else None
    for start in parents:
        path: set[tuple[str, str]] = set()
        step: tuple[str, str] | None = start
        while step is not None and step not in path:
            path.add(step)
            step = parents[step]
        if step is not None:  # came back to a span of the path: cut above it
            parents[step] = None
    return parents


def _hang(tops: dict[str, list[dict]], ties: list[tuple[str, str | None, str, str]],
          nodes: dict[tuple[str, str], dict], trace_id: str | None) -> list[dict]:
    """Hang each tied trace's top nodes under its delegating span, from the chain's first trace down;
    what no tie reaches stays at the root."""
    parent_of: dict[str, tuple[str, str | None, str]] = {}
    for parent, span, child, via in ties:
        parent_of.setdefault(child, (parent, span, via))
    first = trace_id if trace_id in tops else next(iter(tops), None)
    seen: set[str] = set()
    while first in parent_of and first not in seen:  # up the chain to where it began
        seen.add(first)
        first = parent_of[first][0]
    children: dict[str, list[str]] = {}
    for child, (parent, _, _) in parent_of.items():
        children.setdefault(parent, []).append(child)
    placed = {first} if first is not None else set()
    order = [first] if first is not None else []
    for trace in order:  # breadth first; a trace is placed once, so a cycle of ties ends
        for child in sorted(children.get(trace, [])):
            if child in placed:
                continue
            placed.add(child)
            order.append(child)
            parent, span, via = parent_of[child]
            # The delegating span, else (a tie naming the trace only) the parent trace's first root.
            anchor = nodes.get((parent, span or "")) or tops[parent][0]
            for top in tops[child]:
                top["linked"] = {"from_trace": parent, "from_span": span, "via": via}
                anchor["children"].append(top)
            anchor["children"].sort(key=lambda n: (n["start_ns"] or 0, n["span_id"]))
    roots = list(tops[first]) if first is not None else []
    roots += [n for t in sorted(set(tops) - placed) for n in tops[t]]
    return roots


def owned_by(spans: list[dict], agents: frozenset[str]) -> list[dict]:
    """The spans of the traces that belong to ``agents`` (a tenant's): traces with an agent, every one of
    them among ``agents``; the other traces of a chain are left out whole."""
    found: dict[str, set] = {}
    for s in spans:
        found.setdefault(s["trace_id"], set()).add(s.get("agent_id"))
    mine = {t for t, a in found.items() if a - {None} and a - {None} <= agents}
    return [s for s in spans if s["trace_id"] in mine]


def load_trace(read: Read, trace_id: str, follow_links: bool = True,
               agents: frozenset[str] | None = None) -> dict | None:
    """The tree of ``trace_id`` (``build_tree`` over ``trace_spans``); None when no span of it is stored
    (with ``agents``: when it is not theirs, ``owned_by``)."""
    spans = trace_spans(read, trace_id, follow_links)
    if agents is not None:
        spans = owned_by(spans, agents)
    if not any(s["trace_id"] == trace_id for s in spans):
        return None
    return build_tree(spans, trace_id)


# --- the terminal --------------------------------------------------------------------------

_RESET = "\033[0m"
_STYLE = {"error": "\033[31m", "llm": "\033[36m", "tool": "\033[33m", "agent_task": "\033[1;35m",
          "delegation": "\033[1;34m", "retrieval": "\033[32m", "policy_check": "\033[34m", "dim": "\033[2m",
          "head": "\033[1m"}
_ROLE_LABEL = {"agent_task": "agent", "llm": "llm", "tool": "tool", "delegation": "delegate",
               "retrieval": "retrieval", "policy_check": "policy"}


def _paint(text: str, style: str | None, color: bool) -> str:
    return f"{_STYLE[style]}{text}{_RESET}" if color and style else text


def duration(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e3:.0f}µs"


def money(usd: float | None) -> str:
    if usd is None:
        return "-"
    if usd >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.4f}" if usd >= 0.01 or usd == 0 else "$" + f"{usd:.6f}".rstrip("0")  # $0.0078, $0.00017


def _summary(totals: dict) -> str:
    parts = [f"{totals['spans']} span{'s' if totals['spans'] != 1 else ''}",
             f"{len(totals['agents'])} agent{'s' if len(totals['agents']) != 1 else ''}"
             + (f" ({', '.join(totals['agents'])})" if totals["agents"] else ""),
             f"{totals['errors']} error{'s' if totals['errors'] != 1 else ''}",
             money(totals["cost_usd"]), f"{totals['tokens']:,} tokens", duration(totals["latency_ns"])]
    return " · ".join(parts)


def _line(node: dict, color: bool) -> str:
    role = node["role"]
    style = "error" if node["error"] else role if role in _STYLE else None
    label = _ROLE_LABEL.get(role)
    agent = node["agent"] if role in ("agent_task", "delegation") else None
    if node.get("delegate_to"):
        agent = f"{agent or '?'} → {node['delegate_to']}"
    what = [w for w in (agent, node["tool"], node["model"]) if w]
    head = f"{node['name'] or '(unnamed)'}"
    tag = f"[{label}{': ' + ', '.join(what) if what else ''}]" if label else (f"[{', '.join(what)}]" if what else "")
    figures = [duration(node["duration_ns"])]
    if node["cost_usd"]:
        figures.append(money(node["cost_usd"]))
    if node["tokens"]:
        figures.append(f"{node['tokens']:,} tok")
    text = _paint(" ".join(p for p in (head, tag) if p), style, color) + "  " + _paint(" ".join(figures), "dim", color)
    if node["error"]:
        text += "  " + _paint(f"✗ {node['error']}", "error", color)
    if node["orphan"]:
        text += "  " + _paint(f"(orphan: parent {node['parent_span_id']} not stored)", "dim", color)
    return text


def render_trace(doc: dict, color: bool = False) -> str:
    """The tree for a terminal: one line per span (name, [role: agent/tool/model], duration, cost, tokens,
    error), box-drawing indentation, a ``⇢ trace …`` line where a delegation continues in another trace;
    ANSI colour only with ``color`` (errors red; LLM, tool and agent spans each their own colour)."""
    totals = doc["totals"]
    chain = f" (+{totals['traces'] - 1} linked trace{'s' if totals['traces'] > 2 else ''}" if totals["traces"] > 1 else ""
    roots = doc["roots"]
    if chain and roots and roots[0]["trace_id"] != doc["trace_id"]:
        chain += f"; the chain begins in trace {roots[0]['trace_id']}"
    chain += ")" if chain else ""
    lines = [_paint(f"trace {doc['trace_id']}{chain}", "head", color), "  " + _summary(totals)]
    if doc.get("truncated"):
        lines.append(f"  (the chain is cut at {MAX_LINKED_TRACES} traces)")
    for i, node in enumerate(roots):
        _draw(node, "", i == len(roots) - 1, lines, color, doc["trace_id"])
    return "\n".join(lines) + "\n"


def _draw(node: dict, prefix: str, last: bool, lines: list[str], color: bool, trace: str) -> None:
    branch, more = ("└─ ", "   ") if last else ("├─ ", "│  ")
    if node["linked"] is not None and node["trace_id"] != trace:
        how = "span link" if node["linked"]["via"] == "link" else "agent.delegation"
        lines.append(prefix + branch + _paint(f"⇢ trace {node['trace_id']} ({how})", "delegation", color))
        prefix, branch, more = prefix + more, "└─ ", "   "
    lines.append(prefix + branch + _line(node, color))
    kids = node["children"]
    for i, child in enumerate(kids):
        _draw(child, prefix + more, i == len(kids) - 1, lines, color, node["trace_id"])
