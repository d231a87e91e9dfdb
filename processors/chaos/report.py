"""An experiment's report, from the stored spans: baseline vs during vs after, and one resilience score.

Windows, over the experiment's agents' spans by the time they ended (D = how long injection lasted):

    baseline   [start - D, start)      the same length before
    during     [start, end)            end: when it ended, was stopped or aborted (now while running)
    after      [end, end + D)          complete once end + D has passed

Per window: every span SLI the ``sli`` processor defines (``sli_rollups``: good / total, higher is
better) plus ``call_success_rate`` (tool, llm and delegation spans not in error), calls, errors,
latency p50/p95 of calls, spend and tokens.  Then:

- **injected**: spans tagged ``chaos.experiment.id`` = this experiment, by ``chaos.fault.type``.
- **fault tolerance** T: of the tasks (traces) that got at least one injected fault, the share whose
  task (their earliest ``agent_task`` span) still succeeded (``coalesce(task_success, status <> error)``).
- **degradation** G: per SLI, ``max(0, baseline - during) / baseline``; G is their mean.
- **recovery time**: the after window is cut into 20 buckets (at least 1 s each); recovery is the
  start of the first bucket from which every bucket with spans has every SLI within ``tolerance``
  (absolute, default 0.05) of its baseline value; R = ``1 - min(recovery / D, 1)``, 0 when the SLIs
  had not recovered by the end of a complete after window.
- **cost impact**: spend during / spend in the baseline (the windows are equally long), and the extra
  dollars.

**Resilience score** = ``100 * (0.4*T + 0.4*(1 - G) + 0.2*R) / (sum of the weights of the terms that
exist)``: a term is left out when it cannot be measured (no task got a fault; no baseline; the after
window has no spans yet).  100: every task hit by a fault still succeeded, no SLI dropped, recovery at
once; 0: every hit task failed, every SLI fell to zero, no recovery.

Everything is computed by SQL over ``spans`` through ``read(sql, params)``: the running pipeline's
store and a stopped pipeline's file give the same report.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from agent_sre.processors.chaos.monitor import CALL_ROLES, EXPERIMENT_KEY, FAULT_KEY, SpanSli

Read = Callable[[str, list], list[tuple]]
PHASES = ("baseline", "during", "after")
WEIGHTS = {"fault_tolerance": 0.4, "degradation": 0.4, "recovery": 0.2}
SCORE_FORMULA = ("100 * (0.4*T + 0.4*(1 - G) + 0.2*R) / (sum of the weights of measured terms); "
                 "T fault tolerance, G mean relative SLI degradation, R = 1 - min(recovery_s / duration_s, 1)")
_ROLES = ", ".join(f"'{r}'" for r in CALL_ROLES)
CALL_SUCCESS = SpanSli("call_success_rate", f"span_role IN ({_ROLES})", "coalesce(status_code, '') <> 'error'")
_BUCKETS = 20
_NS = 1_000_000_000

EXPERIMENT_COLUMNS = ("id", "template", "agents", "state", "reason", "created_ns", "start_ns", "until_ns", "ended_ns",
                      "created_by", "spec", "result")
EXPERIMENTS_DDL = ("CREATE TABLE IF NOT EXISTS chaos_experiments (id VARCHAR PRIMARY KEY, template VARCHAR, "
                   "agents VARCHAR[], state VARCHAR, reason VARCHAR, created_ns BIGINT, start_ns BIGINT, "
                   "until_ns BIGINT, ended_ns BIGINT, created_by VARCHAR, spec VARCHAR, result VARCHAR)")


# --- the experiments table -------------------------------------------------------------------------

def experiment_row(row: tuple) -> dict:
    """A ``chaos_experiments`` row as the API shows it: the record, its spec spread in."""
    rec = dict(zip(EXPERIMENT_COLUMNS, row, strict=True))
    spec = json.loads(rec.pop("spec") or "{}")
    result = rec.pop("result")
    rec["agents"] = list(rec["agents"] or [])
    for key in ("description", "seed", "schedule", "blast_radius", "faults", "abort"):
        rec[key] = spec.get(key)
    rec["result"] = json.loads(result) if result else None
    return rec


def list_experiments(read: Read, include_ended: bool = False, limit: int = 100) -> list[dict]:
    """The newest experiments (running ones only unless ``include_ended``)."""
    if not _has_table(read, "chaos_experiments"):
        return []
    where = "" if include_ended else "WHERE state = 'running'"
    return [experiment_row(r) for r in read(
        f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM chaos_experiments {where} ORDER BY created_ns DESC, id DESC "
        "LIMIT ?", [limit])]


def load_experiment(read: Read, experiment_id: str) -> dict | None:
    if not _has_table(read, "chaos_experiments"):
        return None
    rows = read(f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM chaos_experiments WHERE id = ?", [experiment_id])
    return experiment_row(rows[0]) if rows else None


def _has_table(read: Read, name: str) -> bool:
    return bool(read("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name])[0][0])


def span_slis(read: Read) -> list[SpanSli]:
    """The span-scope SLIs the sli processor stored (none without one)."""
    if not _has_table(read, "sli_rollups"):
        return []
    return [SpanSli(*r) for r in read("SELECT name, total, good FROM sli_rollups "
                                      "WHERE coalesce(scope, 'span') = 'span' ORDER BY position", [])]


# --- the report --------------------------------------------------------------------------------------

def experiment_report(read: Read, exp: dict, now_ns: int, tolerance: float = 0.05) -> dict:
    """The report of ``exp`` (a record of ``load_experiment``) as of ``now_ns``."""
    start = exp["start_ns"]
    end = exp["ended_ns"] if exp["ended_ns"] is not None else min(now_ns, exp["until_ns"])
    end = max(end, start)
    duration = end - start
    after_end = min(end + duration, now_ns)
    windows = {"baseline": (start - duration, start), "during": (start, end), "after": (end, max(after_end, end))}
    slis = [CALL_SUCCESS] + [s for s in span_slis(read) if s.name != CALL_SUCCESS.name]
    agents = list(exp["agents"])
    phases = _phases(read, slis, agents, windows, exp["id"])
    sli_rows = _sli_rows(slis, phases)
    injected = _injected(read, agents, start, windows["after"][1], exp["id"])
    tolerance_doc = _fault_tolerance(read, agents, start, windows["after"][1], exp["id"])
    complete = exp["ended_ns"] is not None and now_ns >= end + duration
    recovery = _recovery(read, slis, agents, windows["after"], duration, sli_rows, tolerance, complete)
    degradations = [r["relative_degradation"] for r in sli_rows if r["relative_degradation"] is not None]
    degradation = sum(degradations) / len(degradations) if degradations else None
    cost = _cost(phases)
    terms = {"fault_tolerance": tolerance_doc["value"],
             "degradation": None if degradation is None else min(max(degradation, 0.0), 1.0),
             "recovery": recovery["factor"]}
    return {
        "experiment": {k: exp.get(k) for k in ("id", "template", "agents", "state", "reason", "seed", "start_ns",
                                               "until_ns", "ended_ns")},
        "windows": {p: {"from_ns": a, "to_ns": b, "seconds": (b - a) / _NS} for p, (a, b) in windows.items()},
        "complete": complete,  # the after window has passed: recovery is final
        "slis": sli_rows,
        "calls": {p: {k: phases[p][k] for k in ("calls", "errors", "error_rate", "p50_ms", "p95_ms")} for p in PHASES},
        "injected": injected,
        "fault_tolerance": tolerance_doc,
        "degradation": degradation,
        "recovery": recovery,
        "cost": cost,
        "resilience_score": score(terms),
        "score_terms": terms,
        "score_formula": SCORE_FORMULA,
    }


def score(terms: dict[str, float | None]) -> float | None:
    """The resilience score (0-100) of the measured terms (see the module docstring); None with none."""
    parts = {"fault_tolerance": terms["fault_tolerance"],
             "degradation": None if terms["degradation"] is None else 1.0 - terms["degradation"],
             "recovery": terms["recovery"]}
    weight = sum(WEIGHTS[k] for k, v in parts.items() if v is not None)
    if not weight:
        return None
    return round(100.0 * sum(WEIGHTS[k] * v for k, v in parts.items() if v is not None) / weight, 1)


def _agents_filter() -> str:
    return "list_contains(?::VARCHAR[], agent_id)"


def _phases(read: Read, slis: list[SpanSli], agents: list[str], windows: dict, exp_id: str) -> dict[str, dict]:
    (b0, _), (d0, _), (a0, a1) = windows["baseline"], windows["during"], windows["after"]
    sli_cols = "".join(f", count(*) FILTER (WHERE ({s.total})), count(*) FILTER (WHERE ({s.total}) AND ({s.good}))"
                       for s in slis)
    rows = read(
        f"SELECT CASE WHEN end_ns < ? THEN 'baseline' WHEN end_ns < ? THEN 'during' ELSE 'after' END AS phase, "
        f"count(*) FILTER (WHERE span_role IN ({_ROLES})), "
        f"count(*) FILTER (WHERE span_role IN ({_ROLES}) AND status_code = 'error'), "
        f"quantile_cont(duration_ns, 0.5) FILTER (WHERE span_role IN ({_ROLES})), "
        f"quantile_cont(duration_ns, 0.95) FILTER (WHERE span_role IN ({_ROLES})), "
        "coalesce(sum(cost_usd), 0)::DOUBLE, coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0)"
        f"{sli_cols} FROM spans WHERE {_agents_filter()} AND end_ns >= ? AND end_ns < ? GROUP BY 1",
        [d0, a0, agents, b0, a1])
    empty = (0, 0, None, None, 0.0, 0) + (0, 0) * len(slis)
    found = {r[0]: r[1:] for r in rows}
    out = {}
    for phase in PHASES:
        calls, errors, p50, p95, usd, tokens, *sli = found.get(phase, empty)
        out[phase] = {"calls": calls, "errors": errors, "error_rate": errors / calls if calls else None,
                      "p50_ms": None if p50 is None else p50 / 1e6, "p95_ms": None if p95 is None else p95 / 1e6,
                      "cost_usd": usd, "tokens": int(tokens),
                      "sli": {s.name: (sli[2 * i + 1], sli[2 * i]) for i, s in enumerate(slis)}}  # (good, total)
    return out


def _value(good: int, total: int) -> dict:
    return {"good": good, "total": total, "value": good / total if total else None}


def _sli_rows(slis: list[SpanSli], phases: dict) -> list[dict]:
    rows = []
    for s in slis:
        cells = {p: _value(*phases[p]["sli"][s.name]) for p in PHASES}
        if not any(c["total"] for c in cells.values()):
            continue  # an SLI with no events around the experiment says nothing about it
        base, during = cells["baseline"]["value"], cells["during"]["value"]
        drop = None if base is None or during is None else max(0.0, base - during)
        relative = None if drop is None or not base else drop / base
        rows.append({"name": s.name, **cells, "degradation": drop, "relative_degradation": relative})
    return rows


def _injected(read: Read, agents: list[str], start: int, until: int, exp_id: str) -> dict:
    rows = read(f"SELECT attributes['{FAULT_KEY}'], count(*) FROM spans WHERE {_agents_filter()} AND end_ns >= ? "
                f"AND end_ns < ? AND attributes['{EXPERIMENT_KEY}'] = ? GROUP BY 1 ORDER BY 1",
                [agents, start, until, exp_id])
    by_fault = {str(fault): n for fault, n in rows}
    return {"total": sum(by_fault.values()), "by_fault": by_fault}


def _fault_tolerance(read: Read, agents: list[str], start: int, until: int, exp_id: str) -> dict:
    (hit, succeeded), = read(
        f"WITH hit AS (SELECT DISTINCT trace_id FROM spans WHERE {_agents_filter()} AND end_ns >= ? AND end_ns < ? "
        f"AND attributes['{EXPERIMENT_KEY}'] = ?), "
        "tasks AS (SELECT trace_id, arg_min(coalesce(task_success, status_code <> 'error'), start_ns) AS ok "
        "FROM spans WHERE trace_id IN (SELECT trace_id FROM hit) AND span_role = 'agent_task' GROUP BY trace_id) "
        "SELECT count(*), count(*) FILTER (WHERE ok) FROM tasks", [agents, start, until, exp_id])
    return {"tasks_hit": hit, "tasks_succeeded": succeeded, "value": succeeded / hit if hit else None}


def _recovery(read: Read, slis: list[SpanSli], agents: list[str], after: tuple[int, int], duration: int,
              sli_rows: list[dict], tolerance: float, complete: bool) -> dict:
    bucket = max(_NS, duration // _BUCKETS)
    doc = {"recovered": None, "seconds": None, "factor": None, "bucket_seconds": bucket / _NS, "tolerance": tolerance}
    baseline = {r["name"]: r["baseline"]["value"] for r in sli_rows if r["baseline"]["value"] is not None}
    start, end = after
    if not baseline or end <= start or duration <= 0:
        return doc
    judged = [s for s in slis if s.name in baseline]
    cols = "".join(f", count(*) FILTER (WHERE ({s.total})), count(*) FILTER (WHERE ({s.total}) AND ({s.good}))"
                   for s in judged)
    rows = read(f"SELECT (end_ns - ?) // ? AS bucket{cols} FROM spans WHERE {_agents_filter()} AND end_ns >= ? "
                f"AND end_ns < ? GROUP BY 1 ORDER BY 1", [start, bucket, agents, start, end])
    healthy = []
    for bucket_index, *counts in rows:
        values = [(s.name, counts[2 * i + 1], counts[2 * i]) for i, s in enumerate(judged)]
        if not any(total for _, _, total in values):
            continue
        ok = all(good / total >= baseline[name] - tolerance for name, good, total in values if total)
        healthy.append((bucket_index, ok))
    if not healthy:
        return doc
    # The first bucket from which every later bucket with spans is healthy.
    recovered_at = None
    for index, ok in reversed(healthy):
        if not ok:
            break
        recovered_at = index
    if recovered_at is None:
        if complete:
            doc.update(recovered=False, factor=0.0)
        return doc
    seconds = recovered_at * bucket / _NS
    doc.update(recovered=True, seconds=seconds, factor=1.0 - min(seconds / (duration / _NS), 1.0))
    return doc


def _cost(phases: dict) -> dict:
    base, during = phases["baseline"]["cost_usd"], phases["during"]["cost_usd"]
    return {**{f"{p}_usd": phases[p]["cost_usd"] for p in PHASES},
            **{f"{p}_tokens": phases[p]["tokens"] for p in PHASES},
            "impact": during / base if base else None, "extra_usd": during - base}


# --- text ----------------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def render_report(doc: dict) -> str:
    """The report as the CLI prints it."""
    exp = doc["experiment"]
    lines = [f"experiment {exp['id']} ({exp['template']}) on {', '.join(exp['agents'])}: {exp['state']}"
             + (f" ({exp['reason']})" if exp.get("reason") else ""),
             f"windows: {doc['windows']['during']['seconds']:g}s each"
             + ("" if doc["complete"] else " (the after window is not complete yet)"), "",
             f"{'SLI':<26} {'baseline':>10} {'during':>10} {'after':>10} {'degradation':>12}"]
    for r in doc["slis"]:
        lines.append(f"{r['name']:<26} {_pct(r['baseline']['value']):>10} {_pct(r['during']['value']):>10} "
                     f"{_pct(r['after']['value']):>10} {_pct(r['relative_degradation']):>12}")
    calls = doc["calls"]
    lines.append(f"{'calls (errors)':<26} " + " ".join(f"{calls[p]['calls']:>5} ({calls[p]['errors']:>2})"
                                                          .rjust(10) for p in PHASES))
    lines.append(f"{'call p95 latency':<26} " + " ".join(
        ("-" if calls[p]["p95_ms"] is None else f"{calls[p]['p95_ms']:.0f} ms").rjust(10) for p in PHASES))
    cost = doc["cost"]
    lines.append(f"{'cost':<26} " + " ".join(f"${cost[p + '_usd']:.4f}".rjust(10) for p in PHASES))
    inj = doc["injected"]
    ft = doc["fault_tolerance"]
    rec = doc["recovery"]
    recovery = ("not measured yet" if rec["recovered"] is None else
                f"{rec['seconds']:g}s" if rec["recovered"] else "not recovered within the after window")
    lines += ["",
              f"injected faults: {inj['total']}" + (f" ({', '.join(f'{k} {v}' for k, v in inj['by_fault'].items())})"
                                                    if inj["by_fault"] else ""),
              f"fault tolerance: {_pct(ft['value'])} ({ft['tasks_succeeded']} of {ft['tasks_hit']} tasks hit by a "
              "fault succeeded)",
              f"degradation: {_pct(doc['degradation'])}",
              f"recovery time: {recovery}",
              "cost impact: " + ("-" if cost["impact"] is None else f"{cost['impact']:.2f}x")
              + f" ({cost['extra_usd']:+.4f} USD)",
              f"resilience score: {'-' if doc['resilience_score'] is None else doc['resilience_score']}",
              f"  = {doc['score_formula']}"]
    return "\n".join(lines) + "\n"
