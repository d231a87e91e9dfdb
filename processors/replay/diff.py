"""What changed: between two traces (``diff_traces``), or between two sets of traces (``diff_sets``).

Two traces (each with the traces it delegated to, followed through links: ``traces.trace_spans``)
are compared on:

    status      the task's outcome: the root ``agent_task`` span's ``task_success`` (else its status
                is not ``error``); without a root task, every task span's; without task spans, no span
                has status ``error``.  The same rule as the ``task_success_rate`` SLI, per trace.
    output      the final output (the root span's recorded output, ``contents.span_output``; without
                one, the last LLM answer), with ``text_similarity`` and the changed lines
    totals      cost, tokens (input, output, cached), latency (first start to last end), spans,
                errors, LLM and tool calls
    tools       the tool-call sequence (tool spans by start time) as an alignment, ``align``:
                Levenshtein edits (insert, delete, substitute at cost 1) with the fewest edits, then
                a tool deleted at one place and inserted at another reported as ``moved``
    steps       every LLM, tool, retrieval, delegation and sub-agent span in order, aligned the same
                way (an LLM call is an LLM call whatever its model), with per-step changes of model,
                status, cost, tokens, latency and output
    models      LLM calls per model, and the steps whose model changed
    shape       the span tree: each span's path of roles and names from the root, counted; paths
                that appear more or less often, depth, widest fan-out

``text_similarity`` (also what golden suites' ``output_similarity`` tolerance means) is difflib's
ratio over word tokens: 2*M / T, where T is the number of tokens of both texts and M the tokens in
the matching blocks difflib finds (``SequenceMatcher``, no junk heuristic); tokens are runs of word
characters and single punctuation marks, whitespace ignored.  1.0 is identical, 0.0 nothing in common.

Two sets are the traces with a span that matches a SQL predicate over the ``spans`` view (the user's,
e.g. ``agent_version = '1.5.0'``; with ``task``, a span that matches it and has that ``task_name``:
the store gives every span of a task its task's name).  Per trace:
success (as above, root = the span without a parent), cost (sum of ``cost_usd``) and latency (first
start to last end); per set, all in one SQL statement: the sample size, the success rate with a
two-proportion z-test, and cost per task and latency (mean, p50, p90, p99) with a Mann-Whitney U
test (normal approximation with tie and continuity corrections, two-sided).  A trace matching both
predicates is counted in both sets (``overlap`` says how many: the tests assume independent sets).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Callable

from agent_sre.processors.replay.contents import span_output
from agent_sre.processors.replay.traces import owned_by, trace_spans

Read = Callable[[str, list], list[tuple]]

SIMILARITY_MEASURE = ("difflib ratio over word tokens: 2*M/T (T tokens in both texts, M tokens in matching "
                      "blocks); 1.0 = identical")
ALPHA = 0.05  # the significance level of the sets' verdicts
STEP_ROLES = ("llm", "tool", "retrieval", "delegation", "agent_task", "policy_check")
MAX_ALIGN_CELLS = 1_000_000  # beyond this (after the common prefix and suffix; ~0.5 s), difflib's opcodes: not minimal
MAX_DIFF_LINES = 40
MAX_SHAPE_PATHS = 50
_TOKEN = re.compile(r"\w+|[^\w\s]")


class DiffError(ValueError):
    """A diff that cannot be made: an unknown trace, a filter that is not a predicate, an empty set."""


class TraceNotFound(DiffError, LookupError):
    pass


# --- text ---------------------------------------------------------------------------------------

def text_similarity(a: str | None, b: str | None) -> float | None:
    """The module docstring's measure; None when neither text exists, 0.0 when only one does."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return 0.0
    if a == b:
        return 1.0
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    if not ta and not tb:
        return 1.0
    return round(difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio(), 4)


def changed_lines(a: str | None, b: str | None) -> list[str]:
    """The unified diff of two texts (one line of context), at most ``MAX_DIFF_LINES`` lines."""
    lines = list(difflib.unified_diff((a or "").splitlines(), (b or "").splitlines(), "A", "B", n=1, lineterm=""))
    lines = lines[2:]  # the ---/+++ header
    return lines[:MAX_DIFF_LINES] + ([f"... {len(lines) - MAX_DIFF_LINES} more lines"]
                                     if len(lines) > MAX_DIFF_LINES else [])


# --- sequence alignment -------------------------------------------------------------------------

def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance of two sequences (insert, delete, substitute: 1 each); a move costs 2."""
    return align(a, b)["distance"]


def align(a: list[str], b: list[str]) -> dict:
    """``{"distance", "approximate", "ops"}``: the edits turning ``a`` into ``b``, in order.

    Each op is ``{"op": equal|inserted|deleted|substituted|moved, "a": index in a or None, "b": index
    in b or None, "name_a", "name_b"}``; a ``moved`` item (deleted at ``a``, inserted at ``b``) is
    listed where it was inserted."""
    raw, approximate = _edits(a, b)
    distance = sum(op != "equal" for op, _, _ in raw)
    return {"distance": distance, "approximate": approximate, "ops": _with_moves(raw, a, b)}


def _edits(a: list[str], b: list[str]) -> tuple[list[tuple[str, int | None, int | None]], bool]:
    """Minimal edits as (equal|insert|delete|substitute, i, j), on ties keeping an element in place
    (a swap is one element kept and one moved, not two substitutions)."""
    n, m = len(a), len(b)
    p = 0
    while p < n and p < m and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and s < m - p and a[n - 1 - s] == b[m - 1 - s]:
        s += 1
    head = [("equal", i, i) for i in range(p)]
    tail = [("equal", n - s + k, m - s + k) for k in range(s)]
    mid_a, mid_b = a[p:n - s], b[p:m - s]
    if len(mid_a) * len(mid_b) > MAX_ALIGN_CELLS:
        return head + _opcodes(mid_a, mid_b, p) + tail, True
    return head + _levenshtein(mid_a, mid_b, p) + tail, False


def _levenshtein(a: list[str], b: list[str], offset: int) -> list[tuple[str, int | None, int | None]]:
    n, m = len(a), len(b)
    d = [list(range(m + 1))] + [[i] + [0] * m for i in range(1, n + 1)]
    for i in range(1, n + 1):
        row, prev, ai = d[i], d[i - 1], a[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ai != b[j - 1]))
    out: list[tuple[str, int | None, int | None]] = []
    i, j = n, m
    while i or j:
        if i and j and a[i - 1] == b[j - 1] and d[i][j] == d[i - 1][j - 1]:
            out.append(("equal", i - 1 + offset, j - 1 + offset))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            out.append(("delete", i - 1 + offset, None))
            i -= 1
        elif j and d[i][j] == d[i][j - 1] + 1:
            out.append(("insert", None, j - 1 + offset))
            j -= 1
        else:
            out.append(("substitute", i - 1 + offset, j - 1 + offset))
            i, j = i - 1, j - 1
    return out[::-1]


def _opcodes(a: list[str], b: list[str], offset: int) -> list[tuple[str, int | None, int | None]]:
    """difflib's edits for sequences too long for the exact table: a replace of k by l elements is
    min(k, l) substitutions and the rest inserted or deleted."""
    out: list[tuple[str, int | None, int | None]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        common = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        kind = "equal" if tag == "equal" else "substitute"
        out += [(kind, i1 + k + offset, j1 + k + offset) for k in range(i2 - i1 if tag == "equal" else common)]
        out += [("delete", i + offset, None) for i in range(i1 + common, i2) if tag != "equal"]
        out += [("insert", None, j + offset) for j in range(j1 + common, j2) if tag != "equal"]
    return out


def _with_moves(raw: list[tuple[str, int | None, int | None]], a: list[str], b: list[str]) -> list[dict]:
    """Pair what left one place with the same name arriving at another: ``moved``."""
    gone: dict[str, list[int]] = {}
    for op, i, _ in raw:
        if op in ("delete", "substitute") and i is not None:
            gone.setdefault(a[i], []).append(i)
    moved_to: dict[int, int] = {}  # b index -> a index
    for op, _, j in raw:
        if op in ("insert", "substitute") and j is not None and gone.get(b[j]):
            moved_to[j] = gone[b[j]].pop(0)
    moved_from = set(moved_to.values())

    def item(op: str, i: int | None, j: int | None) -> dict:
        return {"op": op, "a": i, "b": j, "name_a": a[i] if i is not None else None,
                "name_b": b[j] if j is not None else None}

    out = []
    for op, i, j in raw:
        if op == "equal":
            out.append(item("equal", i, j))
            continue
        left = i is not None and i not in moved_from  # the a side still needs reporting
        arrived = j is not None and j in moved_to
        if op == "substitute" and left and not arrived:
            out.append(item("substituted", i, j))
            continue
        if arrived and j is not None:
            out.append(item("moved", moved_to[j], j))
        elif j is not None:
            out.append(item("inserted", None, j))
        if left:
            out.append(item("deleted", i, None))
    return out


# --- one trace ----------------------------------------------------------------------------------

def _role(span: dict) -> str:
    return span.get("span_role") or "other"


def _tool(span: dict) -> str:
    return span.get("tool_name") or span.get("name") or "?"


def _label(span: dict) -> str:
    """What a step or tree node is, for alignment: its role and what it calls (not an LLM's model)."""
    role = _role(span)
    if role == "tool":
        return f"tool:{_tool(span)}"
    if role == "llm":
        return "llm"
    if role == "delegation":
        return f"delegation:{span.get('delegation_to') or span.get('name')}"
    if role == "agent_task":
        return f"agent:{span.get('agent_id') or span.get('agent_name') or span.get('name')}"
    return f"{role}:{span.get('name')}"


def _roots(spans: list[dict]) -> list[dict]:
    ids = {(s["trace_id"], s["span_id"]) for s in spans}
    return [s for s in spans if not s.get("parent_span_id") or (s["trace_id"], s["parent_span_id"]) not in ids]


def _task_ok(span: dict) -> bool:
    return span["task_success"] if span.get("task_success") is not None else span.get("status_code") != "error"


def trace_status(spans: list[dict]) -> str:
    """``ok`` or ``failed``: the module docstring's rule."""
    roots = _roots(spans)
    tasks = [s for s in roots[:1] if _role(s) == "agent_task"] or [s for s in spans if _role(s) == "agent_task"]
    if tasks:
        return "ok" if all(_task_ok(s) for s in tasks) else "failed"
    return "failed" if any(s.get("status_code") == "error" for s in spans) else "ok"


def trace_output(spans: list[dict]) -> str | None:
    """The root span's recorded output, else the last LLM answer (by end time)."""
    for root in _roots(spans)[:1]:
        text = span_output(root.get("attributes") or {}, root.get("events"))
        if text is not None:
            return text
    for s in sorted((s for s in spans if _role(s) == "llm"), key=lambda s: s.get("end_ns") or 0, reverse=True):
        text = span_output(s.get("attributes") or {}, s.get("events"))
        if text is not None:
            return text
    return None


def tool_sequence(spans: list[dict]) -> list[str]:
    """Tool names in call order (ties in start time by name, so parallel calls compare stably)."""
    tools = [s for s in spans if _role(s) == "tool"]
    return [_tool(s) for s in sorted(tools, key=lambda s: (s.get("start_ns") or 0, _tool(s)))]


def _num(value) -> float:
    return float(value) if value is not None else 0.0


def trace_totals(spans: list[dict]) -> dict:
    starts = [s["start_ns"] for s in spans if s.get("start_ns") is not None]
    ends = [s["end_ns"] for s in spans if s.get("end_ns") is not None]
    return {
        "cost_usd": round(sum(_num(s.get("cost_usd")) for s in spans), 9),
        "input_tokens": int(sum(_num(s.get("input_tokens")) for s in spans)),
        "output_tokens": int(sum(_num(s.get("output_tokens")) for s in spans)),
        "cached_tokens": int(sum(_num(s.get("cached_tokens")) for s in spans)),
        "latency_ms": round((max(ends) - min(starts)) / 1e6, 3) if starts and ends else None,
        "spans": len(spans),
        "errors": sum(s.get("status_code") == "error" for s in spans),
        "llm_calls": sum(_role(s) == "llm" for s in spans),
        "tool_calls": sum(_role(s) == "tool" for s in spans),
    }


def _steps(spans: list[dict]) -> list[dict]:
    root = _roots(spans)[:1]
    return [s for s in spans if _role(s) in STEP_ROLES and s not in root]


def _step_view(span: dict, index: int) -> dict:
    output = span_output(span.get("attributes") or {}, span.get("events"))
    return {"index": index, "label": _label(span), "name": span.get("name"), "span_id": span.get("span_id"),
            "role": _role(span), "tool": span.get("tool_name"), "model": span.get("model"),
            "agent": span.get("agent_id"), "status": span.get("status_code"),
            "cost_usd": span.get("cost_usd"), "input_tokens": span.get("input_tokens"),
            "output_tokens": span.get("output_tokens"),
            "duration_ms": round(span["duration_ns"] / 1e6, 3) if span.get("duration_ns") is not None else None,
            "output": output}


def _delta(a, b) -> dict:
    out = {"a": a, "b": b}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        out["delta"] = round(b - a, 9)
        if a:
            out["ratio"] = round(b / a, 4)
    return out


def _step_changes(a: dict, b: dict) -> dict:
    changes: dict[str, dict] = {}
    for key in ("model", "status", "agent"):
        if a[key] != b[key]:
            changes[key] = {"a": a[key], "b": b[key]}
    for key in ("cost_usd", "input_tokens", "output_tokens", "duration_ms"):
        if a[key] != b[key]:
            changes[key] = _delta(a[key], b[key])
    if a["output"] != b["output"]:
        changes["output"] = {"similarity": text_similarity(a["output"], b["output"])}
    return changes


def _compare_steps(spans_a: list[dict], spans_b: list[dict]) -> list[dict]:
    va = [_step_view(s, i) for i, s in enumerate(_steps(spans_a))]
    vb = [_step_view(s, i) for i, s in enumerate(_steps(spans_b))]
    out = []
    for op in align([v["label"] for v in va], [v["label"] for v in vb])["ops"]:
        a = va[op["a"]] if op["a"] is not None else None
        b = vb[op["b"]] if op["b"] is not None else None
        entry = {"op": op["op"], "a": _brief(a), "b": _brief(b)}
        if a is not None and b is not None:
            entry["changes"] = _step_changes(a, b)
        out.append(entry)
    return out


def _brief(view: dict | None) -> dict | None:
    """A step without its full output (the changes carry its similarity)."""
    if view is None:
        return None
    out = {k: v for k, v in view.items() if k != "output"}
    out["output_chars"] = len(view["output"]) if view["output"] is not None else None
    return out


def _paths(spans: list[dict]) -> tuple[Counter, int, int]:
    """Each span's path of labels from its root (counted), the depth, the widest fan-out."""
    by_id = {(s["trace_id"], s["span_id"]): s for s in spans}
    children = Counter((s["trace_id"], s.get("parent_span_id")) for s in spans if s.get("parent_span_id"))
    paths: Counter = Counter()
    depth = 0
    for s in spans:
        labels: list[str] = []
        node: dict | None = s
        hops = 0
        while node is not None and hops < 256:  # a parent cycle in bad data must not hang the diff
            labels.append(_label(node))
            parent = node.get("parent_span_id")
            node = by_id.get((node["trace_id"], parent)) if parent else None
            hops += 1
        paths[" > ".join(reversed(labels))] += 1
        depth = max(depth, len(labels))
    return paths, depth, max(children.values(), default=0)


def _shape(spans_a: list[dict], spans_b: list[dict]) -> dict:
    pa_, depth_a, fan_a = _paths(spans_a)
    pb, depth_b, fan_b = _paths(spans_b)
    added = sorted(({"path": p, "a": pa_.get(p, 0), "b": n} for p, n in pb.items() if n > pa_.get(p, 0)),
                   key=lambda x: x["path"])
    removed = sorted(({"path": p, "a": n, "b": pb.get(p, 0)} for p, n in pa_.items() if n > pb.get(p, 0)),
                     key=lambda x: x["path"])
    return {"a": {"spans": len(spans_a), "depth": depth_a, "max_fanout": fan_a},
            "b": {"spans": len(spans_b), "depth": depth_b, "max_fanout": fan_b},
            "changed": bool(added or removed), "added": added[:MAX_SHAPE_PATHS], "removed": removed[:MAX_SHAPE_PATHS]}


def _models(spans_a: list[dict], spans_b: list[dict], steps: list[dict]) -> dict:
    ca = Counter(s.get("model") or "?" for s in spans_a if _role(s) == "llm")
    cb = Counter(s.get("model") or "?" for s in spans_b if _role(s) == "llm")
    changed = [{"step_a": st["a"]["index"], "step_b": st["b"]["index"], "a": st["changes"]["model"]["a"],
                "b": st["changes"]["model"]["b"]}
               for st in steps if st.get("changes", {}).get("model") and st["a"]["role"] == "llm"]
    return {"a": dict(sorted(ca.items())), "b": dict(sorted(cb.items())), "added": sorted(set(cb) - set(ca)),
            "removed": sorted(set(ca) - set(cb)), "changed_steps": changed}


def diff_spans(spans_a: list[dict], spans_b: list[dict], trace_a: str = "", trace_b: str = "") -> dict:
    """The diff of two traces given as span dicts (``traces.trace_spans``' shape)."""
    out_a, out_b = trace_output(spans_a), trace_output(spans_b)
    ta, tb = trace_totals(spans_a), trace_totals(spans_b)
    tools_a, tools_b = tool_sequence(spans_a), tool_sequence(spans_b)
    tools = align(tools_a, tools_b)
    steps = _compare_steps(spans_a, spans_b)
    status_a, status_b = trace_status(spans_a), trace_status(spans_b)
    return {
        "kind": "traces",
        "a": {"trace_id": trace_a, "traces": sorted({s["trace_id"] for s in spans_a}),
              "agents": sorted({s["agent_id"] for s in spans_a if s.get("agent_id")})},
        "b": {"trace_id": trace_b, "traces": sorted({s["trace_id"] for s in spans_b}),
              "agents": sorted({s["agent_id"] for s in spans_b if s.get("agent_id")})},
        "status": {"a": status_a, "b": status_b, "changed": status_a != status_b},
        "output": {"a": out_a, "b": out_b, "similarity": text_similarity(out_a, out_b),
                   "measure": SIMILARITY_MEASURE, "changed": out_a != out_b,
                   "diff": changed_lines(out_a, out_b) if out_a != out_b else []},
        "totals": {k: _delta(ta[k], tb[k]) for k in ta},
        "tools": {"a": tools_a, "b": tools_b, "equal": tools_a == tools_b, "distance": tools["distance"],
                  "approximate": tools["approximate"], "ops": tools["ops"],
                  "counts": dict(Counter(op["op"] for op in tools["ops"] if op["op"] != "equal"))},
        "steps": steps,
        "models": _models(spans_a, spans_b, steps),
        "shape": _shape(spans_a, spans_b),
    }


def diff_traces(read: Read, trace_a: str, trace_b: str, follow_links: bool = True,
                agents: frozenset[str] | None = None) -> dict:
    """What changed from ``trace_a`` to ``trace_b`` (module docstring); ``TraceNotFound`` for a trace
    the store does not hold (with ``agents``, a tenant's: one that is not theirs, ``traces.owned_by``)."""
    spans = []
    for trace_id in (trace_a, trace_b):
        found = trace_spans(read, trace_id, follow_links)
        if agents is not None:
            found = owned_by(found, agents)
        if not any(s["trace_id"] == trace_id for s in found):
            raise TraceNotFound(f"no spans of trace {trace_id!r} in the store")
        spans.append(found)
    return diff_spans(spans[0], spans[1], trace_a, trace_b)


# --- two sets of traces ---------------------------------------------------------------------------

_SUCCESS = "coalesce(s.task_success, s.status_code <> 'error')"
_QUANTILES = "[0.5, 0.9, 0.99]"


def _sets_sql(baseline: str, candidate: str, task: bool) -> str:
    """One statement: per set, its size, successes, cost and latency figures and rank sums; the
    predicates are the only text put into it (the task is a parameter, ``$1``)."""
    tasked = " AND task_name = $1" if task else ""
    return f"""
WITH matched AS (
  SELECT DISTINCT trace_id, 'baseline' AS side FROM spans WHERE ({baseline}){tasked}
  UNION ALL
  SELECT DISTINCT trace_id, 'candidate' AS side FROM spans WHERE ({candidate}){tasked}),
per_trace AS MATERIALIZED (
  SELECT m.side, s.trace_id,
         sum(coalesce(s.cost_usd, 0)) AS cost_usd,
         (max(s.end_ns) - min(s.start_ns)) / 1e6 AS latency_ms,
         coalesce(bool_and({_SUCCESS}) FILTER (WHERE s.span_role = 'agent_task' AND coalesce(s.parent_span_id, '') = ''),
                  bool_and({_SUCCESS}) FILTER (WHERE s.span_role = 'agent_task'),
                  NOT bool_or(s.status_code = 'error')) AS success,
         sum(coalesce(s.input_tokens, 0) + coalesce(s.output_tokens, 0)) AS tokens
  FROM spans s JOIN matched m ON s.trace_id = m.trace_id
  GROUP BY m.side, s.trace_id),
ranked AS (
  SELECT side, success, cost_usd, latency_ms, tokens,
         rank() OVER (ORDER BY latency_ms) + (count(*) OVER (PARTITION BY latency_ms) - 1) / 2.0 AS latency_rank,
         rank() OVER (ORDER BY cost_usd) + (count(*) OVER (PARTITION BY cost_usd) - 1) / 2.0 AS cost_rank
  FROM per_trace)
SELECT side, count(*), count(*) FILTER (WHERE success),
       avg(cost_usd), quantile_cont(cost_usd, {_QUANTILES}), sum(cost_rank),
       avg(latency_ms), quantile_cont(latency_ms, {_QUANTILES}), sum(latency_rank), avg(tokens),
       (SELECT sum(t * t * t - t) FROM (SELECT count(*)::DOUBLE AS t FROM per_trace GROUP BY cost_usd)),
       (SELECT sum(t * t * t - t) FROM (SELECT count(*)::DOUBLE AS t FROM per_trace GROUP BY latency_ms)),
       (SELECT count(*) FROM (SELECT trace_id FROM per_trace GROUP BY trace_id HAVING count(*) > 1))
FROM ranked GROUP BY side ORDER BY side"""


class _ReadConnection:
    """``read`` as the one method the sandbox's checks call on a connection."""

    def __init__(self, read: Read):
        self._read = read

    def execute(self, sql: str, params: list | None = None) -> _ReadConnection:
        self._rows = self._read(sql, list(params or []))
        return self

    def fetchall(self) -> list[tuple]:
        return self._rows


def check_predicate(read: Read, predicate: str, what: str) -> None:
    """A filter must be one read-only SQL predicate over ``spans`` that reads no file: checked on
    DuckDB's parse tree by the query API's own sandbox, then bound on no rows (a bad column is named)."""
    from agent_sre.pipeline.storage.sandbox import QueryError, check_sandboxed

    if not predicate or not predicate.strip():
        raise DiffError(f"the {what} filter is empty: give a SQL predicate over spans, e.g. agent_version = '1.5.0'")
    sql = f"SELECT count(*) FROM spans WHERE ({predicate}) AND false"
    try:
        check_sandboxed(_ReadConnection(read), sql)  # type: ignore[arg-type]  # duck-typed: execute().fetchall()
    except QueryError as exc:
        raise DiffError(f"the {what} filter {predicate!r} is not allowed: {exc}") from None
    try:
        read(sql, [])
    except Exception as exc:  # noqa: BLE001 - DuckDB's parser and binder errors, said as they are
        raise DiffError(f"the {what} filter {predicate!r} is not a SQL predicate over spans: "
                        f"{str(exc).splitlines()[0]}") from None


def _normal_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def two_proportion_z(ok1: int, n1: int, ok2: int, n2: int) -> dict:
    """Pooled two-proportion z-test of set 2's rate against set 1's (two-sided), with the difference's
    95 % interval (unpooled standard error)."""
    p1, p2 = ok1 / n1, ok2 / n2
    pooled = (ok1 + ok2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se if se else 0.0
    half = 1.959964 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return {"test": "two-proportion z", "z": round(z, 4), "p_value": _normal_p(z) if se else 1.0,
            "difference": round(p2 - p1, 6), "ci95": [round(p2 - p1 - half, 6), round(p2 - p1 + half, 6)]}


def mann_whitney(rank_sum_1: float, n1: int, n2: int, ties: float) -> dict:
    """Mann-Whitney U of set 2 against set 1 from set 1's rank sum in the pooled sample (average ranks
    for ties), ``ties`` = sum of t^3 - t over groups of tied values: normal approximation with the tie
    correction and a continuity correction of 0.5 (as scipy's ``mannwhitneyu(method='asymptotic')``).
    ``prob_greater`` is U2 / (n1 n2): the chance a set-2 value exceeds a set-1 value (ties count half)."""
    n = n1 + n2
    u1 = rank_sum_1 - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0))
    if var <= 0:
        z, p = 0.0, 1.0
    else:
        z = (max(u1, u2) - mu - 0.5) / math.sqrt(var)
        p = min(1.0, math.erfc(z / math.sqrt(2))) if z > 0 else 1.0
        z = math.copysign(abs(z), u2 - mu)
    return {"test": "Mann-Whitney U", "u": u2, "z": round(z, 4), "p_value": p,
            "prob_greater": round(u2 / (n1 * n2), 6)}


def _verdict(p: float, worse: bool, better: bool) -> str:
    if p >= ALPHA:
        return "no significant change"
    return "worse" if worse else "better" if better else "no significant change"


def diff_sets(read: Read, baseline_filter: str, candidate_filter: str, task: str | None = None) -> dict:
    """Two sets of traces by SQL predicate (module docstring); ``DiffError`` for a bad filter or an empty set."""
    check_predicate(read, baseline_filter, "baseline")
    check_predicate(read, candidate_filter, "candidate")
    rows = read(_sets_sql(baseline_filter, candidate_filter, task is not None), [task] if task is not None else [])
    sides = {r[0]: r for r in rows}
    for side, predicate in (("baseline", baseline_filter), ("candidate", candidate_filter)):
        if side not in sides:
            raise DiffError(f"the {side} filter {predicate!r} matches no trace"
                            + (f" of task {task!r}" if task is not None else ""))
    b, c = sides["baseline"], sides["candidate"]
    n1, n2 = b[1], c[1]
    cost_ties, latency_ties, overlap = b[10], b[11], b[12]

    def figures(r) -> dict:
        return {"traces": r[1], "successes": r[2], "success_rate": round(r[2] / r[1], 6),
                "cost_usd": {"mean": r[3], "p50": r[4][0], "p90": r[4][1], "p99": r[4][2]},
                "latency_ms": {"mean": r[6], "p50": r[7][0], "p90": r[7][1], "p99": r[7][2]},
                "tokens_mean": r[9]}

    success = two_proportion_z(b[2], n1, c[2], n2)
    cost = mann_whitney(b[5], n1, n2, cost_ties)
    latency = mann_whitney(b[8], n1, n2, latency_ties)
    success["verdict"] = _verdict(success["p_value"], success["difference"] < 0, success["difference"] > 0)
    for test in (cost, latency):
        test["verdict"] = _verdict(test["p_value"], test["prob_greater"] > 0.5, test["prob_greater"] < 0.5)
    return {"kind": "sets", "task": task,
            "baseline": {"filter": baseline_filter, **figures(b)},
            "candidate": {"filter": candidate_filter, **figures(c)},
            "overlap": overlap, "alpha": ALPHA,
            "tests": {"success_rate": success, "cost_usd": cost, "latency_ms": latency}}


class NotForTenants(DiffError):
    """A set diff asked with a tenant's key: its predicates read every tenant's spans (HTTP 403)."""


def diff_request(read: Read, body: dict, agents: frozenset[str] | None = None) -> dict:
    """What ``POST /v1/diff`` answers (and ``agent-sre diff`` computes over a file): ``body`` is
    ``{"trace_a", "trace_b", "follow_links"?}`` or ``{"baseline", "candidate", "task"?}``.  ``DiffError``
    (HTTP 400; ``TraceNotFound``: 404) for a body that is neither, a bad filter or an unknown trace.
    ``agents``: a tenant caller's agents; its traces only, and no set diff (``NotForTenants``)."""
    if not isinstance(body, dict):
        raise DiffError("the body must be a JSON object")
    if "baseline" in body or "candidate" in body:
        if agents is not None:
            raise NotForTenants("a set diff runs SQL predicates over every tenant's spans: not with a tenant's key")
        baseline, candidate, task = body.get("baseline"), body.get("candidate"), body.get("task")
        if not isinstance(baseline, str) or not isinstance(candidate, str):
            raise DiffError("a set diff needs 'baseline' and 'candidate': SQL predicates over spans (strings)")
        if task is not None and not isinstance(task, str):
            raise DiffError("'task' must be a task_name (a string)")
        return diff_sets(read, baseline, candidate, task)
    a, b = body.get("trace_a"), body.get("trace_b")
    if not isinstance(a, str) or not isinstance(b, str):
        raise DiffError("give 'trace_a' and 'trace_b' (trace ids), or 'baseline' and 'candidate' (SQL predicates)")
    follow = body.get("follow_links", True)
    if not isinstance(follow, bool):
        raise DiffError("'follow_links' must be true or false")
    return diff_traces(read, a.strip().lower(), b.strip().lower(), follow, agents)


# --- for a person ---------------------------------------------------------------------------------

_COLORS = {"red": "\x1b[31m", "green": "\x1b[32m", "yellow": "\x1b[33m", "cyan": "\x1b[36m", "bold": "\x1b[1m",
           "dim": "\x1b[2m"}


def _paint(color: bool) -> Callable[[str, str], str]:
    return (lambda text, c: f"{_COLORS[c]}{text}\x1b[0m") if color else (lambda text, c: text)


def render_diff(doc: dict, color: bool = False) -> str:
    """A diff (of traces or sets) as text a person reads at a glance; ANSI colours only with ``color``."""
    return "\n".join(_render_sets(doc, _paint(color)) if doc["kind"] == "sets" else _render_traces(doc, _paint(color)))


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "usd":
        return f"${value:.6f}"
    if unit == "ms":
        return f"{value / 1000:.3f}s" if abs(value) >= 1000 else f"{value:.1f}ms"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _change(d: dict, unit: str, paint, higher_is_worse: bool = True) -> str:
    delta = d.get("delta")
    if not delta:
        return paint("=", "dim") if delta == 0 else ""
    sign = "+" if delta > 0 else "-"
    pct = f" ({(d['ratio'] - 1) * 100:+.0f}%)" if "ratio" in d else ""
    text = f"{sign}{_fmt(abs(delta), unit)}{pct}"
    return paint(text, "red" if (delta > 0) == higher_is_worse else "green")


_TOTALS = (("cost_usd", "cost", "usd"), ("latency_ms", "latency", "ms"), ("input_tokens", "input tokens", ""),
           ("output_tokens", "output tokens", ""), ("cached_tokens", "cached tokens", ""),
           ("llm_calls", "LLM calls", ""), ("tool_calls", "tool calls", ""), ("spans", "spans", ""),
           ("errors", "errors", ""))
_OPS = {"equal": ("=", "dim"), "inserted": ("+", "green"), "deleted": ("-", "red"),
        "substituted": ("~", "yellow"), "moved": ("↕", "cyan")}


def _render_traces(doc: dict, paint) -> list[str]:
    a, b = doc["a"], doc["b"]
    lines = [paint(f"diff {a['trace_id']} → {b['trace_id']}", "bold")]
    for side, name in ((a, "A"), (b, "B")):
        extra = f", {len(side['traces'])} traces linked" if len(side["traces"]) > 1 else ""
        lines.append(f"  {name}: agents {', '.join(side['agents']) or '-'}{extra}")
    st = doc["status"]
    lines.append(f"status   {st['a']} → " + (paint(st["b"], "red" if st["b"] == "failed" else "green")
                                             if st["changed"] else st["b"] + paint("  (same)", "dim")))
    out = doc["output"]
    if out["similarity"] is None:
        lines.append("output   none recorded in either trace")
    else:
        same = out["similarity"] == 1.0
        lines.append(f"output   similarity {out['similarity']:.2f}" + (paint("  (same)", "dim") if same else ""))
        for line in out["diff"]:
            lines.append("  " + (paint(line, "red") if line.startswith("-") else paint(line, "green")
                                 if line.startswith("+") else paint(line, "dim")))
    lines.append("")
    lines.append(f"{'totals':<15}{'A':>14}{'B':>14}  change")
    for key, label, unit in _TOTALS:
        d = doc["totals"][key]
        lines.append(f"  {label:<13}{_fmt(d['a'], unit):>14}{_fmt(d['b'], unit):>14}  {_change(d, unit, paint)}")
    tools = doc["tools"]
    lines.append("")
    head = "tool calls: same sequence" if tools["equal"] else f"tool calls: edit distance {tools['distance']}"
    counts = ", ".join(f"{n} {op}" for op, n in sorted(tools["counts"].items()))
    lines.append(head + (f" ({counts})" if counts else ""))
    for op in tools["ops"]:
        mark, c = _OPS[op["op"]]
        if op["op"] == "substituted":
            text = f"{op['name_a']} → {op['name_b']}"
        elif op["op"] == "moved":
            text = f"{op['name_b']}  (A#{op['a'] + 1} → B#{op['b'] + 1})"
        else:
            text = op["name_b"] if op["name_b"] is not None else op["name_a"]
        lines.append("  " + paint(f"{mark} {text}", c) + ("" if op["op"] == "equal" else paint(f"  {op['op']}", "dim")))
    lines += _render_models(doc["models"], paint)
    lines += _render_shape(doc["shape"], paint)
    lines += _render_steps(doc["steps"], paint)
    return lines


def _render_models(models: dict, paint) -> list[str]:
    if not models["a"] and not models["b"]:
        return []
    fmt = lambda c: ", ".join(f"{m}×{n}" for m, n in c.items()) or "-"  # noqa: E731
    lines = ["", f"models   A: {fmt(models['a'])}   B: {fmt(models['b'])}"]
    for ch in models["changed_steps"]:
        lines.append("  " + paint(f"step B#{ch['step_b'] + 1}: {ch['a']} → {ch['b']}", "yellow"))
    return lines


def _render_shape(shape: dict, paint) -> list[str]:
    a, b = shape["a"], shape["b"]
    lines = ["", f"tree     spans {a['spans']} → {b['spans']}, depth {a['depth']} → {b['depth']}, "
                 f"widest {a['max_fanout']} → {b['max_fanout']}" + ("" if shape["changed"] else paint("  (same shape)", "dim"))]
    for p in shape["added"]:
        lines.append("  " + paint(f"+ {p['path']}  ({p['a']} → {p['b']})", "green"))
    for p in shape["removed"]:
        lines.append("  " + paint(f"- {p['path']}  ({p['a']} → {p['b']})", "red"))
    return lines


def _render_steps(steps: list[dict], paint) -> list[str]:
    if not steps:
        return []
    lines = ["", "steps (LLM, tool, retrieval, delegation and sub-agent spans, aligned)",
             f"{'':4}{'A':>4}{'B':>4}  {'step':<41}{'latency A → B':>22}{'cost A → B':>26}  changes"]
    for st in steps:
        mark, c = _OPS[st["op"]]
        a, b = st["a"], st["b"]
        name = lambda v: v["label"] + (f" [{v['model']}]" if v.get("model") else "")  # noqa: E731
        label = f"{name(a)} → {name(b)}" if st["op"] == "substituted" else name(b or a)
        lat = f"{_fmt(a['duration_ms'] if a else None, 'ms')} → {_fmt(b['duration_ms'] if b else None, 'ms')}"
        cost = f"{_fmt(a['cost_usd'] if a else None, 'usd')} → {_fmt(b['cost_usd'] if b else None, 'usd')}"
        notes = []
        for key, ch in (st.get("changes") or {}).items():
            if key in ("model", "status", "agent"):
                notes.append(f"{key} {ch['a']}→{ch['b']}")
            elif key == "output":
                notes.append(f"output {ch['similarity']:.2f}" if ch["similarity"] is not None else "output")
        lines.append(f"  {paint(mark, c)} {(str(a['index'] + 1) if a else '-'):>4}{(str(b['index'] + 1) if b else '-'):>4}"
                     f"  {label[:40]:<41}{lat:>22}{cost:>26}  " + (paint(", ".join(notes), "yellow") if notes else ""))
    return lines


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _render_sets(doc: dict, paint) -> list[str]:
    b, c, tests = doc["baseline"], doc["candidate"], doc["tests"]
    lines = [paint("diff of two sets of traces" + (f" (task {doc['task']})" if doc["task"] else ""), "bold"),
             f"  baseline:  {b['filter']}  ({b['traces']:,} traces)",
             f"  candidate: {c['filter']}  ({c['traces']:,} traces)"]
    if doc["overlap"]:
        lines.append(paint(f"  {doc['overlap']:,} traces match both filters (counted in both; the tests assume "
                           "independent sets)", "yellow"))
    verdict_color = {"worse": "red", "better": "green", "no significant change": "dim"}
    lines += ["", f"{'':<22}{'baseline':>14}{'candidate':>14}{'change':>12}   {'test':<22}{'p-value':>10}  verdict"]

    def row(label: str, va: str, vb: str, change: str, test: dict | None) -> str:
        tail = ""
        if test is not None:
            tail = f"   {test['test']:<22}{_p(test['p_value']):>10}  " + paint(test["verdict"], verdict_color[test["verdict"]])
        return f"  {label:<20}{va:>14}{vb:>14}{change:>12}" + tail

    s = tests["success_rate"]
    lines.append(row("success rate", _pct(b["success_rate"]), _pct(c["success_rate"]),
                     f"{s['difference'] * 100:+.2f}pp", s))
    for key, label, unit in (("cost_usd", "cost per task", "usd"), ("latency_ms", "latency", "ms")):
        for i, q in enumerate(("mean", "p50", "p90", "p99")):
            va, vb = b[key][q], c[key][q]
            change = f"{(vb / va - 1) * 100:+.1f}%" if va else "-"
            lines.append(row(f"{label} {q}" if i == 0 else f"  {q}", _fmt(va, unit), _fmt(vb, unit), change,
                             tests[key] if i == 0 else None))
    lines.append(paint(f"  tests two-sided at α = {doc['alpha']}; Mann-Whitney compares whole distributions "
                       "(P(candidate > baseline) = "
                       f"{tests['latency_ms']['prob_greater']:.3f} for latency, {tests['cost_usd']['prob_greater']:.3f} for cost)",
                       "dim"))
    return lines


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, default=str)
