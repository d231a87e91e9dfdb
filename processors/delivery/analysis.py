"""What a rollout step is judged on, read from the stored spans over one window (the step so far).

Canary: candidate and baseline ``agent_version`` of the rollout's agent, over the same window:

    tasks               the agent's ``agent_task`` spans that ended in the window (one per trace and
                        version: the longest), per version
    success_rate        tasks that succeeded (``task_success``, else status not ``error``: the
                        ``task_success_rate`` SLI's rule) / tasks;  error_rate = 1 - success_rate
    latency_pXX_s       quantiles of the tasks' durations (p50, p95, p99 and ``latency_quantile``)
    cost_per_task_usd   mean over tasks of the summed ``cost_usd`` of the task's trace
    hallucination_rate  from ``sli_minutes`` (the sli processor's ``hallucination_rate``, its own
                        definition: outputs scored at or above its threshold / outputs scored), over
                        the minutes the window touches

A candidate figure is None until it rests on ``min_samples`` events (tasks, or scored outputs).
With ``compare`` (and ``min_samples`` tasks on both sides), the candidate must not be significantly
worse than the baseline at ``alpha``, one-sided (stats.py): success rate (two-proportion z),
hallucination rate (two-proportion z; skipped while either side has too few scored outputs), latency
(Mann-Whitney U, and the candidate's ``latency_quantile`` above the baseline's by more than
``latency_tolerance``) and cost per task (Welch z, and its mean above by more than ``cost_tolerance``).

Shadow: the two versions' tasks are paired by the shared input id (``shadow.match_attribute`` on the
``agent_task`` span; the latest task per input id and version; the ``max_pairs`` most recent pairs),
and compared on: ``similarity`` (mean over pairs of stats.similarity of the outputs, read from the
first of ``shadow.output_attributes`` the span has), ``latency_ratio`` (mean candidate duration / mean
baseline duration), ``cost_ratio`` (summed candidate cost / summed baseline cost; 1.0 when both are 0,
None when only the baseline's is) and the candidate's ``success_rate`` / ``error_rate`` over the pairs.

``judge`` turns a result into a verdict: ``rollback`` (a rollback condition holds, checked at every
analysis), ``running`` (the step's duration is not over), ``wait`` (over, but some figure lacks its
samples), ``fail`` or ``pass``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent_sre.processors.delivery.rollout import Spec, Step
from agent_sre.processors.delivery.stats import (
    mann_whitney_greater,
    proportion_higher,
    proportion_lower,
    similarity,
    welch_greater,
)

Read = Callable[[str, list], list[tuple]]
MINUTE_NS = 60_000_000_000
_CLOCK_SKEW_NS = MINUTE_NS  # a task's spans may start this much before it (clocks of other processes)

_TASKS = """
    SELECT trace_id, agent_version AS v, start_ns, end_ns, duration_ns / 1e9 AS s,
           coalesce(task_success, status_code <> 'error') AS ok{extra}
    FROM spans
    WHERE span_role = 'agent_task' AND agent_id = $1 AND agent_version IN ($2, $3) AND end_ns >= $4 AND end_ns < $5
"""
_COST = f"""
    SELECT trace_id, sum(cost_usd) AS usd FROM spans
    WHERE trace_id IN (SELECT trace_id FROM t) AND start_ns >= (SELECT min(start_ns) FROM t) - {_CLOCK_SKEW_NS}
    GROUP BY trace_id
"""
CANARY_SQL = f"""
WITH t AS ({_TASKS.format(extra="")}
    QUALIFY row_number() OVER (PARTITION BY trace_id, agent_version ORDER BY duration_ns DESC, span_id) = 1
), cost AS ({_COST}
), j AS (SELECT t.v, t.s, t.ok, coalesce(cost.usd, 0) AS usd FROM t LEFT JOIN cost USING (trace_id)
), ranked AS (SELECT v, rank() OVER (ORDER BY s) + (count(*) OVER (PARTITION BY s) - 1) / 2.0 AS r FROM j
), ranks AS (SELECT v, sum(r) AS rank_sum FROM ranked GROUP BY v
), ties AS (SELECT coalesce(sum(n * n * n - n), 0) AS tie FROM (SELECT count(*)::DOUBLE AS n FROM j GROUP BY s))
SELECT j.v, count(*), sum(j.ok::INT), quantile_cont(j.s, [0.5, 0.95, 0.99, $6]), avg(j.usd),
       coalesce(var_samp(j.usd), 0), any_value(ranks.rank_sum), any_value(ties.tie)
FROM j JOIN ranks USING (v) CROSS JOIN ties GROUP BY j.v
"""
HALLUCINATION_SQL = """
SELECT agent_version, sum(total), sum(total - good) FROM sli_minutes
WHERE sli = $1 AND agent_id = $2 AND agent_version IN ($3, $4) AND minute >= $5 AND minute <= $6 GROUP BY 1
"""


@dataclass(frozen=True)
class Verdict:
    outcome: str  # rollback | running | wait | fail | pass
    reasons: list[str] = field(default_factory=list)


def analyse(read: Read, spec: Spec, from_ns: int, to_ns: int) -> dict:
    """The figures of the window [from_ns, to_ns) for ``spec``'s strategy (module docstring)."""
    if spec.strategy == "shadow":
        return shadow_analysis(read, spec, from_ns, to_ns)
    return canary_analysis(read, spec, from_ns, to_ns)


# --- canary ----------------------------------------------------------------------------------

def canary_analysis(read: Read, spec: Spec, from_ns: int, to_ns: int) -> dict:
    cfg = spec.analysis
    rows = {r[0]: r for r in read(CANARY_SQL, [spec.agent, spec.baseline, spec.candidate, from_ns, to_ns,
                                               cfg.latency_quantile])}
    scored = {r[0]: (int(r[1]), int(r[2])) for r in read(HALLUCINATION_SQL, [
        cfg.hallucination_sli, spec.agent, spec.baseline, spec.candidate, from_ns // MINUTE_NS,
        (to_ns - 1) // MINUTE_NS])}
    sides = {role: _side(version, rows.get(version), scored.get(version, (0, 0)))
             for role, version in (("baseline", spec.baseline), ("candidate", spec.candidate))}
    c = sides["candidate"]
    enough = c["tasks"] >= cfg.min_samples
    metrics = {
        "success_rate": c["success_rate"] if enough else None,
        "error_rate": c["error_rate"] if enough else None,
        "latency_p50_s": c["latency_s"]["p50"] if enough else None,
        "latency_p95_s": c["latency_s"]["p95"] if enough else None,
        "latency_p99_s": c["latency_s"]["p99"] if enough else None,
        "cost_per_task_usd": c["cost_per_task_usd"] if enough else None,
        "hallucination_rate": c["hallucination"]["rate"] if c["hallucination"]["scored"] >= cfg.min_samples
        else None,
    }
    samples = {m: c["tasks"] for m in metrics} | {"hallucination_rate": c["hallucination"]["scored"]}
    return {"strategy": "canary", "window": {"from_ns": from_ns, "to_ns": to_ns}, "min_samples": cfg.min_samples,
            "baseline": sides["baseline"], "candidate": c, "metrics": metrics, "samples": samples,
            "tests": _compare(spec, sides["baseline"], c, rows)}


def _side(version: str, row: tuple | None, scored: tuple[int, int]) -> dict:
    tasks, ok = (int(row[1]), int(row[2])) if row else (0, 0)
    q = row[3] if row else [None] * 4
    hallucination = {"scored": scored[0], "hallucinated": scored[1],
                     "rate": scored[1] / scored[0] if scored[0] else None}
    return {"version": version, "tasks": tasks, "successes": ok,
            "success_rate": ok / tasks if tasks else None, "error_rate": (tasks - ok) / tasks if tasks else None,
            "latency_s": {"p50": q[0], "p95": q[1], "p99": q[2], "quantile": q[3]},
            "cost_per_task_usd": row[4] if row else None, "cost_variance": row[5] if row else None,
            "hallucination": hallucination}


def _compare(spec: Spec, b: dict, c: dict, rows: dict) -> dict:
    cfg = spec.analysis
    alpha, n_b, n_c = cfg.alpha, b["tasks"], c["tasks"]
    if min(n_b, n_c) < cfg.min_samples:
        return {}
    success = proportion_lower(b["successes"], n_b, c["successes"], n_c)
    success["worse"] = success["p_value"] < alpha
    success["summary"] = (f"success rate {c['success_rate']:.4f} vs baseline {b['success_rate']:.4f}: "
                          f"{_significance(success, alpha, 'lower')}")
    latency = mann_whitney_greater(rows[spec.candidate][6], n_b, n_c, rows[spec.candidate][7])
    qb, qc, name = b["latency_s"]["quantile"], c["latency_s"]["quantile"], f"p{cfg.latency_quantile * 100:g}"
    latency["worse"] = latency["p_value"] < alpha and qc > qb * (1 + cfg.latency_tolerance)
    latency["summary"] = (f"latency {name} {qc:.4g}s vs baseline {qb:.4g}s (tolerance "
                          f"+{cfg.latency_tolerance:.0%}): {_significance(latency, alpha, 'slower')}")
    cost = welch_greater(b["cost_per_task_usd"], b["cost_variance"], n_b, c["cost_per_task_usd"],
                         c["cost_variance"], n_c)
    mb, mc = b["cost_per_task_usd"], c["cost_per_task_usd"]
    cost["worse"] = cost["p_value"] < alpha and mc > mb * (1 + cfg.cost_tolerance)
    cost["summary"] = (f"cost per task ${mc:.6g} vs baseline ${mb:.6g} (tolerance +{cfg.cost_tolerance:.0%}): "
                       f"{_significance(cost, alpha, 'costlier')}")
    tests = {"success_rate": success, "latency": latency, "cost_per_task": cost}
    hb, hc = b["hallucination"], c["hallucination"]
    if min(hb["scored"], hc["scored"]) >= cfg.min_samples:
        hall = proportion_higher(hb["hallucinated"], hb["scored"], hc["hallucinated"], hc["scored"])
        hall["worse"] = hall["p_value"] < alpha
        hall["summary"] = (f"hallucination rate {hc['rate']:.4f} vs baseline {hb['rate']:.4f}: "
                           f"{_significance(hall, alpha, 'higher')}")
        tests["hallucination_rate"] = hall
    return tests


def _significance(test: dict, alpha: float, worse: str) -> str:
    verdict = f"significantly {worse}" if test["p_value"] < alpha else "not significantly " + worse
    statistic = "" if test["statistic"] is None else f", statistic {test['statistic']:.3f}"
    return f"{verdict} ({test['test']}{statistic}, p = {test['p_value']:.4g}, alpha {alpha:g})"


# --- shadow ----------------------------------------------------------------------------------

def shadow_analysis(read: Read, spec: Spec, from_ns: int, to_ns: int) -> dict:
    cfg, sh = spec.analysis, spec.shadow
    n = len(sh.output_attributes)
    output = "coalesce(" + ", ".join(f"attributes[${8 + i}]" for i in range(n)) + ")" if n else "NULL"
    extra = f", attributes[$6] AS input_id, {output} AS output"
    sql = f"""
WITH t AS ({_TASKS.format(extra=extra)} AND attributes[$6] IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY agent_version, attributes[$6] ORDER BY end_ns DESC, span_id) = 1
), cost AS ({_COST}
), j AS (SELECT t.*, coalesce(cost.usd, 0) AS usd FROM t LEFT JOIN cost USING (trace_id))
SELECT (SELECT count(*) FILTER (WHERE v = $2) FROM j), (SELECT count(*) FILTER (WHERE v = $3) FROM j),
       b.input_id, b.output, c.output, b.s, c.s, b.usd, c.usd, b.ok, c.ok
FROM j AS b JOIN j AS c ON b.input_id = c.input_id AND b.v = $2 AND c.v = $3
ORDER BY greatest(b.end_ns, c.end_ns) DESC, b.input_id LIMIT $7"""
    rows = read(sql, [spec.agent, spec.baseline, spec.candidate, from_ns, to_ns, sh.match_attribute,
                      sh.max_pairs, *sh.output_attributes])
    if not rows:
        counts = read(f"WITH t AS ({_TASKS.format(extra='')} AND attributes[$6] IS NOT NULL) "
                      "SELECT count(*) FILTER (WHERE v = $2), count(*) FILTER (WHERE v = $3) FROM t",
                      [spec.agent, spec.baseline, spec.candidate, from_ns, to_ns, sh.match_attribute])[0]
    else:
        counts = rows[0][:2]
    pairs = [_pair(r) for r in rows]
    figures = _shadow_figures(pairs)
    enough = len(pairs) >= cfg.min_samples
    metrics = {m: (figures[m] if enough else None) for m in ("similarity", "latency_ratio", "cost_ratio",
                                                             "success_rate", "error_rate")}
    worst = sorted(pairs, key=lambda p: (p["similarity"], str(p["input_id"])))[:5]
    return {"strategy": "shadow", "window": {"from_ns": from_ns, "to_ns": to_ns}, "min_samples": cfg.min_samples,
            "baseline": {"version": spec.baseline, "tasks": int(counts[0])},
            "candidate": {"version": spec.candidate, "tasks": int(counts[1])},
            "pairs": len(pairs), "figures": figures, "metrics": metrics,
            "samples": dict.fromkeys(metrics, len(pairs)), "least_similar": worst, "tests": {},
            "similarity_measure": "difflib ratio over word tokens: 2*M/T; 1.0 = identical"}


def _pair(r: tuple) -> dict:
    return {"input_id": r[2], "similarity": round(similarity(r[3], r[4]), 6), "baseline_s": r[5],
            "candidate_s": r[6], "baseline_usd": r[7], "candidate_usd": r[8], "baseline_ok": r[9],
            "candidate_ok": r[10]}


def _shadow_figures(pairs: list[dict]) -> dict:
    if not pairs:
        return dict.fromkeys(("similarity", "latency_ratio", "cost_ratio", "success_rate", "error_rate",
                              "baseline_success_rate"))
    n = len(pairs)
    base_s, cand_s = sum(p["baseline_s"] for p in pairs), sum(p["candidate_s"] for p in pairs)
    base_usd, cand_usd = sum(p["baseline_usd"] for p in pairs), sum(p["candidate_usd"] for p in pairs)
    ok = sum(bool(p["candidate_ok"]) for p in pairs) / n
    return {"similarity": sum(p["similarity"] for p in pairs) / n,
            "latency_ratio": cand_s / base_s if base_s else None,
            "cost_ratio": cand_usd / base_usd if base_usd else (1.0 if cand_usd == 0 else None),
            "success_rate": ok, "error_rate": 1 - ok,
            "baseline_success_rate": sum(bool(p["baseline_ok"]) for p in pairs) / n}


# --- the verdict -----------------------------------------------------------------------------

def judge(result: dict, spec: Spec, step: Step, step_over: bool) -> Verdict:
    metrics = result["metrics"]
    hits = [f"rollback condition {c} holds (candidate: {metrics[c.metric]:.4g})" for c in spec.rollback
            if metrics.get(c.metric) is not None and c.holds(metrics[c.metric])]
    if hits:
        return Verdict("rollback", hits)
    if not step_over:
        return Verdict("running")
    if step.analysis is None:
        return Verdict("pass", ["the step's duration is over (it has no analysis)"])
    fails, waits = [], []
    for c in step.analysis.conditions:
        value = metrics.get(c.metric)
        if value is None:
            waits.append(f"{c.metric}: {result['samples'].get(c.metric, 0)} of the {result['min_samples']} "
                         "samples needed")
        elif not c.holds(value):
            fails.append(f"{c} does not hold (candidate: {value:.4g})")
    if spec.strategy == "canary" and step.analysis.compare:
        tests = result["tests"]
        if not tests:
            waits.append(f"comparison: {result['baseline']['tasks']} baseline and {result['candidate']['tasks']} "
                         f"candidate tasks of the {result['min_samples']} each needed")
        fails += [t["summary"] for t in tests.values() if t["worse"]]
    if fails:
        return Verdict("fail", fails)
    if waits:
        return Verdict("wait", waits)
    passed = [f"{c} holds (candidate: {metrics[c.metric]:.4g})" for c in step.analysis.conditions]
    if spec.strategy == "canary" and step.analysis.compare:
        passed.append("not significantly worse than the baseline on "
                      + ", ".join(name.replace("_", " ") for name in result["tests"]))
    return Verdict("pass", passed)
