"""Golden suites: recorded traces a candidate version must still behave like, checked in CI.

A suite is a directory (default ``./golden/<suite>/``, to be committed with the agent's code)::

    golden/triage/
      suite.yaml                     the tolerances and the list of golden traces
      <trace_id>.otlp.json           each golden trace as OTLP/JSON (``otlp_io.export_trace``, with the
                                     traces it delegated to): self-contained, importable anywhere

``suite.yaml``::

    suite: triage
    tolerances:                      # defaults for every trace of the suite
      output_similarity: 0.8         # candidate output vs golden, diff.text_similarity, at least this
      cost_ratio: 1.5                # candidate cost / golden cost, at most this
      latency_ratio: 2.0             # candidate latency / golden latency, at most this
      tool_edit_distance: 0          # Levenshtein distance of the tool-call sequences (0: the same calls
                                     # in the same order; a moved call costs 2), at most this
      require_success: true          # a golden task that succeeded must succeed
    traces:
      - trace_id: 4bf92f3577b34da6a3ce929d0e0e4736
        file: 4bf92f3577b34da6a3ce929d0e0e4736.otlp.json
        task: triage                 # the task_name of its spans (the candidates must have the same)
        agent: triage-bot
        added: '2026-01-05T10:00:00Z'
        tolerances: {cost_ratio: 2}  # optional, per trace: overrides the suite's

How candidates are matched to golden traces (``check_suite``), one candidate per golden trace:

    replays=True            the newest trace whose spans carry ``agent_sre.replay.of`` = the golden
                            trace's id (what ``agent-sre replay`` re-ran from it)
    candidate_trace=ID      that trace, for every golden trace of its task
    candidate=FILTER        among the traces with a span matching the SQL predicate and of the golden
                            trace's task: the newest whose root span has the same input (``input.value``,
                            else ``gen_ai.input.messages``, else ``traceloop.entity.input``), among all of
                            them; else, among the newest ``MAX_CANDIDATES_PER_TASK`` of the task, the one
                            whose input is the most similar (``text_similarity``; the input is the root's,
                            else the user messages of the first LLM call); else the newest of the task

Golden traces are never their own candidates.  A golden trace without a candidate is ``missing``:
a regression for CI (the new version did not run that task), unless the caller allows it.

A golden trace is read back from its file by importing it into a temporary store (``otlp_io``, the
receiver's codecs and normalisation, the store's attribution), so it is compared exactly as it was
stored, even after the store's retention removed it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from agent_sre.processors.replay.contents import llm_contents
from agent_sre.processors.replay.diff import (
    DiffError,
    check_predicate,
    diff_spans,
    text_similarity,
    trace_output,
    trace_status,
    trace_totals,
)
from agent_sre.processors.replay.traces import owned_by, trace_spans, valid_trace_id

Read = Callable[[str, list], list[tuple]]

DEFAULT_ROOT = "golden"
SUITE_FILE = "suite.yaml"
REPLAY_OF = "agent_sre.replay.of"
MAX_CANDIDATES_PER_TASK = 200
_INPUT_KEYS = ("input.value", "gen_ai.input.messages", "traceloop.entity.input")


class GoldenError(ValueError):
    """A suite that cannot be read or written, or a trace that cannot be added (the message says why)."""


@dataclass(frozen=True)
class Tolerances:
    output_similarity: float = 0.8
    cost_ratio: float = 1.5
    latency_ratio: float = 2.0
    tool_edit_distance: int = 0
    require_success: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.output_similarity <= 1:
            raise GoldenError(f"output_similarity must be between 0 and 1 (got {self.output_similarity!r})")
        for name in ("cost_ratio", "latency_ratio"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise GoldenError(f"{name} must be a positive number (got {getattr(self, name)!r})")
        if not isinstance(self.tool_edit_distance, int) or self.tool_edit_distance < 0:
            raise GoldenError(f"tool_edit_distance must be a whole number >= 0 (got {self.tool_edit_distance!r})")

    @classmethod
    def parse(cls, values: dict | None, base: Tolerances | None = None, where: str = "tolerances") -> Tolerances:
        """``base`` with ``values`` laid over it; unknown keys are refused, naming the valid ones."""
        values = values or {}
        if not isinstance(values, dict):
            raise GoldenError(f"{where}: must be a mapping of tolerances")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GoldenError(f"{where}: unknown tolerance(s) {', '.join(unknown)} (valid: {', '.join(sorted(known))})")
        try:
            return replace(base or cls(), **values)
        except TypeError as exc:
            raise GoldenError(f"{where}: {exc}") from None


# --- the suite on disk ----------------------------------------------------------------------------

def suite_dir(suite: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """Where suite ``suite`` lives: ``root/suite`` (a suite name is a plain directory name)."""
    if not suite or "/" in suite or "\\" in suite or suite in (".", ".."):
        raise GoldenError(f"a suite name is a plain directory name (got {suite!r})")
    return Path(root) / suite


def _yaml():
    import yaml

    return yaml


def read_suite_file(directory: Path) -> dict:
    """``suite.yaml`` as a dict (an empty suite when there is none yet)."""
    path = directory / SUITE_FILE
    if not path.exists():
        return {"suite": directory.name, "tolerances": asdict(Tolerances()), "traces": []}
    try:
        doc = _yaml().safe_load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # noqa: BLE001 - YAML's and the file system's errors, said as they are
        raise GoldenError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("traces", []), list):
        raise GoldenError(f"{path}: expected a mapping with 'tolerances' and a list of 'traces'")
    doc.setdefault("suite", directory.name)
    doc.setdefault("traces", [])
    Tolerances.parse(doc.get("tolerances"), where=f"{path}: tolerances")  # refused early, with its path
    return doc


def _write_suite_file(directory: Path, doc: dict) -> None:
    text = ("# agent-sre golden suite (processors/replay/golden.py documents every key)\n"
            + _yaml().safe_dump(doc, sort_keys=False, allow_unicode=True))
    tmp = directory / (SUITE_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(directory / SUITE_FILE)


def load_suite(directory: str | Path) -> dict:
    """The suite with its golden traces' OTLP/JSON: what ``check_suite`` takes (JSON-able, so a CLI can
    send it to a running pipeline's ``POST /v1/golden/check``)."""
    directory = Path(directory)
    if not (directory / SUITE_FILE).exists():
        raise GoldenError(f"no golden suite at {directory} (no {SUITE_FILE}); add a trace first: "
                          f"agent-sre golden add TRACE_ID --suite {directory.name}")
    doc = read_suite_file(directory)
    traces = []
    for i, entry in enumerate(doc["traces"]):
        if not isinstance(entry, dict) or not entry.get("trace_id") or not entry.get("file"):
            raise GoldenError(f"{directory / SUITE_FILE}: traces[{i}] needs a trace_id and a file")
        path = directory / str(entry["file"])
        try:
            otlp = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GoldenError(f"cannot read golden trace {entry['trace_id']} from {path}: {exc}") from None
        traces.append({**entry, "otlp": otlp})
    return {"suite": doc["suite"], "directory": str(directory), "tolerances": doc.get("tolerances") or {},
            "traces": traces}


def add_trace(directory: str | Path, trace_id: str, otlp: dict, tolerances: dict | None = None) -> dict:
    """Add (or replace) a golden trace: its OTLP/JSON (``otlp_io.export_trace``) is written next to
    ``suite.yaml`` and listed there with its task and agent; ``tolerances`` are the suite's for a new
    suite, else per-trace overrides.  Returns the entry with the trace's summary."""
    directory = Path(directory)
    if not valid_trace_id(trace_id):
        raise GoldenError(f"not a trace id: {trace_id!r} (32 lowercase hex digits)")
    doc = read_suite_file(directory)
    new_suite = not (directory / SUITE_FILE).exists()
    if new_suite:
        doc["tolerances"] = asdict(Tolerances.parse(tolerances))
    elif tolerances:
        Tolerances.parse(tolerances, Tolerances.parse(doc.get("tolerances")))
    spans = golden_spans([{"trace_id": trace_id, "otlp": otlp}])[trace_id]
    if not spans:
        raise GoldenError(f"the OTLP/JSON of trace {trace_id} holds no span of it")
    summary = trace_summary(spans)
    entry: dict = {"trace_id": trace_id, "file": f"{trace_id}.otlp.json", "task": summary["task"],
                   "agent": summary["agent"], "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if tolerances and not new_suite:
        entry["tolerances"] = dict(tolerances)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / entry["file"]).write_text(json.dumps(otlp, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    doc["traces"] = [t for t in doc["traces"] if t.get("trace_id") != trace_id] + [entry]
    _write_suite_file(directory, doc)
    return {**entry, "summary": summary, "suite": doc["suite"], "new_suite": new_suite}


def list_suites(root: str | Path = DEFAULT_ROOT) -> list[dict]:
    """Every suite under ``root``: its name, tolerances and golden traces (without their OTLP)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for directory in sorted(p for p in root.iterdir() if (p / SUITE_FILE).exists()):
        doc = read_suite_file(directory)
        out.append({"suite": doc["suite"], "directory": str(directory), "tolerances": doc.get("tolerances") or {},
                    "traces": doc["traces"]})
    return out


# --- reading golden traces and their candidates ------------------------------------------------------

def golden_spans(traces: list[dict]) -> dict[str, list[dict]]:
    """{trace_id: its spans (``traces.trace_spans``)} of golden traces given with their ``otlp``: imported
    together into a temporary store, so they are the rows the pipeline would have stored."""
    from agent_sre.pipeline.storage.store import open_read_only
    from agent_sre.processors.replay.otlp_io import import_otlp_json

    merged = {"resourceSpans": [rs for t in traces for rs in (t["otlp"] or {}).get("resourceSpans") or []]}
    tmp = Path(tempfile.mkdtemp(prefix="agent-sre-golden-"))
    try:
        db = tmp / "golden.duckdb"
        try:
            import_otlp_json(merged, db=db)
        except ValueError as exc:
            raise GoldenError(f"a golden trace's OTLP/JSON does not import: {exc}") from None
        con = open_read_only(db)
        try:
            read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731
            return {t["trace_id"]: trace_spans(read, t["trace_id"]) for t in traces}
        finally:
            con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _root_input(spans: list[dict]) -> str | None:
    """The root span's recorded input (``_INPUT_KEYS``, first present)."""
    for root in [s for s in spans if not s.get("parent_span_id")][:1]:
        attrs = root.get("attributes") or {}
        for key in _INPUT_KEYS:
            if attrs.get(key) is not None:
                return str(attrs[key])
    return None


def trace_input(spans: list[dict]) -> str | None:
    """What the task was asked (the module docstring's order), as text; None when nothing was recorded."""
    found = _root_input(spans)
    if found is not None:
        return found
    for s in sorted((s for s in spans if s.get("span_role") == "llm"), key=lambda s: s.get("start_ns") or 0):
        contents = llm_contents(s.get("attributes") or {}, s.get("events"))
        if contents is not None:
            users = [m["content"] for m in contents[1] if m["role"] == "user" and m["content"]]
            if users:
                return "\n".join(users)
    return None


def trace_summary(spans: list[dict]) -> dict:
    """What a golden trace is, in a line: task, agent, status, tools, cost, latency."""
    from agent_sre.processors.replay.diff import tool_sequence

    roots = [s for s in spans if not s.get("parent_span_id")] or spans[:1]
    tasks = [s.get("task_name") for s in roots + spans if s.get("task_name")]
    agents = [s.get("agent_id") for s in roots + spans if s.get("agent_id")]
    totals = trace_totals(spans)
    output = trace_output(spans)
    return {"task": tasks[0] if tasks else None, "agent": agents[0] if agents else None,
            "status": trace_status(spans), "tools": tool_sequence(spans), "cost_usd": totals["cost_usd"],
            "latency_ms": totals["latency_ms"], "spans": totals["spans"],
            "output": output[:200] if output is not None else None}


_CANDIDATES_SQL = """
SELECT trace_id, max(task_name) AS task, max(start_ns) AS last FROM spans
WHERE trace_id IN (SELECT trace_id FROM spans WHERE ({predicate}))
  AND NOT list_contains(?::VARCHAR[], trace_id)
GROUP BY trace_id HAVING list_contains(?::VARCHAR[], max(task_name))
QUALIFY row_number() OVER (PARTITION BY task ORDER BY last DESC) <= ?
"""
_ROOT_INPUT = "coalesce(" + ", ".join(f"s.attributes['{k}']" for k in _INPUT_KEYS) + ")"
_SAME_INPUT_SQL = f"""
SELECT g.golden, arg_max(s.trace_id, s.start_ns), count(DISTINCT s.trace_id)
FROM spans s JOIN (SELECT unnest(?::VARCHAR[]) AS golden, unnest(?::VARCHAR[]) AS input,
                          unnest(?::VARCHAR[]) AS task) g ON {_ROOT_INPUT} = g.input AND s.task_name = g.task
WHERE coalesce(s.parent_span_id, '') = '' AND NOT list_contains(?::VARCHAR[], s.trace_id)
  AND s.trace_id IN (SELECT trace_id FROM spans WHERE ({{predicate}}))
GROUP BY g.golden
"""
_INPUT_SPANS_SQL = """
SELECT trace_id, span_id, parent_span_id, span_role, start_ns, attributes, events FROM spans
WHERE list_contains(?::VARCHAR[], trace_id) AND (coalesce(parent_span_id, '') = '' OR span_role = 'llm')
"""
_REPLAYS_SQL = f"""
SELECT attributes['{REPLAY_OF}'] AS golden, arg_max(trace_id, start_ns) FROM spans
WHERE list_contains(?::VARCHAR[], attributes['{REPLAY_OF}']) GROUP BY golden
"""


def _inputs(read: Read, trace_ids: list[str]) -> dict[str, str | None]:
    """{trace: its input} from the root and LLM spans of these traces (one query)."""
    if not trace_ids:
        return {}
    by_trace: dict[str, list[dict]] = {}
    for trace_id, span_id, parent, role, start, attrs, events in read(_INPUT_SPANS_SQL, [trace_ids]):
        by_trace.setdefault(trace_id, []).append(
            {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "span_role": role,
             "start_ns": start, "attributes": dict(attrs or {}),
             "events": [{**e, "attributes": dict(e.get("attributes") or {})} for e in events or []]})
    return {t: trace_input(by_trace.get(t, [])) for t in trace_ids}


def _by_filter(read: Read, predicate: str, golden: list[dict], spans: dict[str, list[dict]]) -> dict[str, tuple]:
    """{golden trace: (candidate, how it was matched)} for ``candidate=FILTER`` (module docstring): a
    candidate with the same root input first (any number of candidates: one query), else the most
    similar input among the newest of the task."""
    check_predicate(read, predicate, "candidate")
    ids = [g["trace_id"] for g in golden]
    exact = [(g["trace_id"], _root_input(spans[g["trace_id"]]), g.get("task")) for g in golden]
    exact = [e for e in exact if e[1] is not None and e[2]]
    out: dict[str, tuple] = {}
    if exact:
        for g, trace_id, n in read(_SAME_INPUT_SQL.format(predicate=predicate),
                                   [[e[0] for e in exact], [e[1] for e in exact], [e[2] for e in exact], ids]):
            out[g] = (trace_id, f"the same input ({n} candidate(s) with it: the newest)")
    rest = [g for g in golden if g["trace_id"] not in out]
    tasks = sorted({g["task"] for g in rest if g.get("task")})
    if not tasks:
        return out
    rows = read(_CANDIDATES_SQL.format(predicate=predicate), [ids, tasks, MAX_CANDIDATES_PER_TASK])
    per_task: dict[str, list[tuple[str, int]]] = {}
    for trace_id, task, last in rows:
        per_task.setdefault(task, []).append((trace_id, last))
    cand_inputs = _inputs(read, [r[0] for r in rows])
    for g in rest:
        cands = sorted(per_task.get(g.get("task") or "", []), key=lambda c: -c[1])
        if not cands:
            continue
        wanted = trace_input(spans[g["trace_id"]])
        scored = [(text_similarity(wanted, cand_inputs.get(c[0])) or 0.0, c[1], c[0]) for c in cands] if wanted else []
        if scored and max(scored)[0] > 0:
            sim, _, best = max(scored)
            out[g["trace_id"]] = (best, f"input similarity {sim:.2f} among the newest {len(cands)} of the task")
        else:
            out[g["trace_id"]] = (cands[0][0], f"the newest of {len(cands)} of the task (no similar input)")
    return out


def _by_replay(read: Read, golden: list[dict]) -> dict[str, tuple]:
    rows = read(_REPLAYS_SQL, [[g["trace_id"] for g in golden]])
    return {g: (t, f"newest replay of it ({REPLAY_OF})") for g, t in rows}


# --- the check ---------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a == 0:
        return 1.0 if b == 0 else float("inf")
    return round(b / a, 4)


def compare(golden: list[dict], candidate: list[dict], tol: Tolerances) -> dict:
    """One golden trace against one candidate: every check with its value, limit and outcome."""
    d = diff_spans(golden, candidate)
    checks: dict[str, dict] = {}
    reasons: list[str] = []

    def check(name: str, value, limit, ok: bool, why: str) -> None:
        checks[name] = {"value": value, "limit": limit, "ok": ok}
        if not ok:
            reasons.append(why)

    if tol.require_success:
        st = d["status"]
        check("status", st["b"], "ok" if st["a"] == "ok" else "any", st["a"] != "ok" or st["b"] == "ok",
              "the task failed (the golden run succeeded)")
    sim = d["output"]["similarity"]
    if d["output"]["a"] is not None:
        check("output_similarity", sim, tol.output_similarity, sim is not None and sim >= tol.output_similarity,
              f"output similarity {sim:.2f} < {tol.output_similarity}" if sim is not None else "no output recorded")
    cost = _ratio(d["totals"]["cost_usd"]["a"], d["totals"]["cost_usd"]["b"])
    check("cost_ratio", cost, tol.cost_ratio, cost is not None and cost <= tol.cost_ratio,
          f"cost ${d['totals']['cost_usd']['a']:.6f} → ${d['totals']['cost_usd']['b']:.6f} "
          f"(×{cost:.2f} > ×{tol.cost_ratio})" if cost is not None else "no cost")
    lat = _ratio(d["totals"]["latency_ms"]["a"], d["totals"]["latency_ms"]["b"])
    check("latency_ratio", lat, tol.latency_ratio, lat is not None and lat <= tol.latency_ratio,
          f"latency {d['totals']['latency_ms']['a']:.0f}ms → {d['totals']['latency_ms']['b']:.0f}ms "
          f"(×{lat:.2f} > ×{tol.latency_ratio})" if lat is not None else "no latency")
    dist = d["tools"]["distance"]
    ops = [op for op in d["tools"]["ops"] if op["op"] != "equal"]
    check("tool_edit_distance", dist, tol.tool_edit_distance, dist <= tol.tool_edit_distance,
          f"tool calls differ (edit distance {dist} > {tol.tool_edit_distance}: "
          + ", ".join(_op_text(op) for op in ops[:5]) + (", ..." if len(ops) > 5 else "") + ")")
    return {"passed": not reasons, "reasons": reasons, "checks": checks, "diff": d}


def _op_text(op: dict) -> str:
    if op["op"] == "substituted":
        return f"{op['name_a']} → {op['name_b']} substituted"
    if op["op"] == "moved":
        return f"{op['name_b']} moved #{op['a'] + 1} → #{op['b'] + 1}"
    return f"{op['name_b'] or op['name_a']} {op['op']}"


def check_suite(read: Read, suite: dict, candidate: str | None = None, candidate_trace: str | None = None,
                replays: bool = False, allow_missing: bool = False, agents: frozenset[str] | None = None) -> dict:
    """Every golden trace of ``suite`` (``load_suite``) against its candidate (module docstring: exactly one
    of ``candidate``, ``candidate_trace``, ``replays``); per trace passed / failed / missing with reasons,
    and ``ok``: no failure (and no missing candidate unless ``allow_missing``).  ``agents``: a tenant
    caller's agents: candidates are its traces only (``traces.owned_by``), and no filter (it would run
    over every tenant's spans)."""
    if sum([candidate is not None, candidate_trace is not None, bool(replays)]) != 1:
        raise GoldenError("say which traces are the candidates: a filter, a trace id, or the replays (exactly one)")
    if agents is not None and candidate is not None:
        raise GoldenError("a candidate filter runs over every tenant's spans: with a tenant's key, check a "
                          "candidate trace or the replays")

    def candidate_spans(trace_id: str) -> list[dict]:
        found = trace_spans(read, trace_id)
        return owned_by(found, agents) if agents is not None else found

    base = Tolerances.parse(suite.get("tolerances"), where=f"suite {suite.get('suite')}: tolerances")
    entries = suite.get("traces") or []
    if not entries:
        raise GoldenError(f"suite {suite.get('suite')!r} has no golden traces")
    spans = golden_spans(entries)
    # The task as suite.yaml says, else as the golden trace's spans say.
    golden = [{**e, "task": e.get("task") or (trace_summary(spans[e["trace_id"]])["task"]
                                              if spans[e["trace_id"]] else None)} for e in entries]
    if candidate is not None:
        try:
            matched = _by_filter(read, candidate, golden, spans)
        except DiffError as exc:
            raise GoldenError(str(exc)) from None
        how = f"filter {candidate}"
    elif candidate_trace is not None:
        cand = candidate_spans(candidate_trace)
        if not any(s["trace_id"] == candidate_trace for s in cand):
            raise GoldenError(f"no spans of candidate trace {candidate_trace!r} in the store")
        task = trace_summary(cand)["task"]
        matched = {g["trace_id"]: (candidate_trace, "given") for g in golden if g.get("task") == task}
        how = f"trace {candidate_trace}"
    else:
        matched = _by_replay(read, golden)
        how = "replays"
    results = []
    for g in golden:
        tol = Tolerances.parse(g.get("tolerances"), base, where=f"traces[{g['trace_id']}].tolerances")
        entry = {"golden": g["trace_id"], "task": g.get("task"), "tolerances": asdict(tol)}
        if not spans[g["trace_id"]]:
            results.append({**entry, "outcome": "failed", "candidate": None, "matched_by": None,
                            "reasons": [f"its file {g.get('file')} holds no span of it"], "checks": {}})
            continue
        if g["trace_id"] not in matched:
            results.append({**entry, "outcome": "missing", "candidate": None, "matched_by": None,
                            "reasons": [f"no candidate trace of task {g.get('task')!r} ({how})"], "checks": {}})
            continue
        cand_id, matched_by = matched[g["trace_id"]]
        cand_spans = candidate_spans(cand_id) if cand_id != candidate_trace else cand
        if not any(s["trace_id"] == cand_id for s in cand_spans):  # another tenant's
            results.append({**entry, "outcome": "missing", "candidate": None, "matched_by": None,
                            "reasons": [f"no candidate trace of task {g.get('task')!r} ({how})"], "checks": {}})
            continue
        outcome = compare(spans[g["trace_id"]], cand_spans, tol)
        results.append({**entry, "outcome": "passed" if outcome["passed"] else "failed", "candidate": cand_id,
                        "matched_by": matched_by, "reasons": outcome["reasons"], "checks": outcome["checks"]})
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "missing")}
    return {"suite": suite.get("suite"), "candidates": how, "results": results, **counts,
            "ok": counts["failed"] == 0 and (allow_missing or counts["missing"] == 0)}


def check_request(read: Read, body: dict, agents: frozenset[str] | None = None) -> dict:
    """What ``POST /v1/golden/check`` answers (and ``agent-sre golden check`` computes over a file):
    ``body`` is ``{"suite": <load_suite's dict>, "candidate"?, "candidate_trace"?, "replays"?,
    "allow_missing"?}``.  ``GoldenError`` (HTTP 400) for a body that is not one; ``agents``: a tenant
    caller's (``check_suite``)."""
    if not isinstance(body, dict) or not isinstance(body.get("suite"), dict):
        raise GoldenError("the body must be a JSON object with the 'suite' (its tolerances and traces with their OTLP)")
    suite = body["suite"]
    traces = suite.get("traces")
    if not isinstance(traces, list) or not all(
            isinstance(t, dict) and isinstance(t.get("trace_id"), str) and isinstance(t.get("otlp"), dict) for t in traces):
        raise GoldenError("suite.traces must be a list of {trace_id, otlp, ...} (what load_suite reads)")
    candidate, candidate_trace = body.get("candidate"), body.get("candidate_trace")
    for name, value in (("candidate", candidate), ("candidate_trace", candidate_trace)):
        if value is not None and not isinstance(value, str):
            raise GoldenError(f"'{name}' must be a string")
    return check_suite(read, suite, candidate, candidate_trace, bool(body.get("replays")),
                       bool(body.get("allow_missing")), agents)


# --- for a person ------------------------------------------------------------------------------

_MARKS = {"passed": ("PASS", "\x1b[32m"), "failed": ("FAIL", "\x1b[31m"), "missing": ("MISS", "\x1b[33m")}


def render_check(doc: dict, color: bool = False) -> str:
    lines = [f"golden suite {doc['suite']}: {len(doc['results'])} trace(s) against {doc['candidates']}"]
    for r in doc["results"]:
        mark, code = _MARKS[r["outcome"]]
        mark = f"{code}{mark}\x1b[0m" if color else mark
        cand = f" vs {r['candidate']}" if r["candidate"] else ""
        lines.append(f"  {mark}  {r['golden']}{cand}  [{r['task'] or '-'}]")
        if r["matched_by"]:
            lines.append(f"        matched by {r['matched_by']}")
        for name, c in r["checks"].items():
            value = c["value"] if not isinstance(c["value"], float) else f"{c['value']:.4g}"
            lines.append(f"        {'ok ' if c['ok'] else 'BAD'} {name}: {value} (limit {c['limit']})")
        for reason in r["reasons"]:
            lines.append(f"        ✗ {reason}")
    verdict = "ok" if doc["ok"] else "REGRESSION"
    lines.append(f"{doc['passed']} passed, {doc['failed']} failed, {doc['missing']} missing: {verdict}")
    return "\n".join(lines)


def render_list(suites: list[dict]) -> str:
    if not suites:
        return "no golden suites"
    lines = []
    for s in suites:
        tol = ", ".join(f"{k}={v}" for k, v in s["tolerances"].items())
        lines.append(f"{s['suite']}  ({s['directory']}; {len(s['traces'])} trace(s); {tol})")
        for t in s["traces"]:
            extra = f"  overrides {t['tolerances']}" if t.get("tolerances") else ""
            lines.append(f"  {t['trace_id']}  task {t.get('task') or '-'}  agent {t.get('agent') or '-'}  "
                         f"added {t.get('added', '-')}{extra}")
    return "\n".join(lines)
