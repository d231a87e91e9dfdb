"""Rollouts as text for a terminal (``agent-sre rollout status``), from the dicts the API answers."""

from __future__ import annotations

import time

LIST_COLUMNS = ["rollout", "agent", "strategy", "versions", "state", "step", "weight", "updated (UTC)", "reason"]


def _utc(ns: int | None) -> str:
    return "-" if ns is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def list_rows(rollouts: list[dict]) -> list[list[str]]:
    return [[r["name"], r["agent_id"], r["strategy"], f"{r['baseline']} -> {r['candidate']}", r["state"],
             f"{r['step'] + 1}/{r['steps']}", f"{r['weight']:g}%", _utc(r["updated_ns"]), r["reason"] or "-"]
            for r in rollouts]


def _num(v, fmt: str = "{:.4g}") -> str:
    return "-" if v is None else fmt.format(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False)),
           "+".join("-" * (w + 2) for w in widths)]
    return out + [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]


def render_rollout(doc: dict) -> str:
    """One rollout: where it is, its last analysis and its decisions."""
    lines = [f"rollout {doc['name']} of agent {doc['agent_id']} ({doc['strategy']}): "
             f"{doc['baseline']} -> {doc['candidate']}",
             f"state {doc['state']}" + (f" ({doc['paused_by']})" if doc.get("paused_by") else "")
             + f", step {doc['step'] + 1}/{doc['steps']} {doc['step_name'] or ''}, {doc['weight']:g}% to the candidate",
             f"reason: {doc['reason'] or '-'}", ""]
    analysis = doc.get("analysis")
    if analysis:
        window = analysis["window"]
        lines.append(f"last analysis at {_utc(analysis.get('at_ns'))} UTC over {_utc(window['from_ns'])} .. "
                     f"{_utc(window['to_ns'])}: {analysis['verdict']['outcome']}")
        lines += _shadow(analysis) if analysis["strategy"] == "shadow" else _canary(analysis)
        lines += [f"  - {r}" for r in analysis["verdict"]["reasons"]]
        lines.append("")
    if doc.get("history"):
        lines += _table(["time (UTC)", "decision", "weight", "by", "reason"], [
            [_utc(h["time_ns"]), h["decision"], f"{h['weight']:g}%", h["by"] or "-", h["reason"]]
            for h in doc["history"]])
    return "\n".join(lines) + "\n"


def _canary(a: dict) -> list[str]:
    b, c = a["baseline"], a["candidate"]
    rows = [["tasks", str(b["tasks"]), str(c["tasks"])],
            ["success rate", _num(b["success_rate"]), _num(c["success_rate"])],
            ["latency p50 (s)", _num(b["latency_s"]["p50"]), _num(c["latency_s"]["p50"])],
            ["latency p95 (s)", _num(b["latency_s"]["p95"]), _num(c["latency_s"]["p95"])],
            ["latency p99 (s)", _num(b["latency_s"]["p99"]), _num(c["latency_s"]["p99"])],
            ["cost per task ($)", _num(b["cost_per_task_usd"], "{:.6g}"), _num(c["cost_per_task_usd"], "{:.6g}")],
            ["hallucination rate", _num(b["hallucination"]["rate"]) + f" of {b['hallucination']['scored']}",
             _num(c["hallucination"]["rate"]) + f" of {c['hallucination']['scored']}"]]
    out = _table(["figure", f"baseline {b['version']}", f"candidate {c['version']}"], rows)
    for name, test in a["tests"].items():
        out.append(f"  {name}: {test['summary']}")
    return out


def _shadow(a: dict) -> list[str]:
    f = a["figures"]
    out = [f"pairs {a['pairs']} (baseline tasks {a['baseline']['tasks']}, candidate {a['candidate']['tasks']}); "
           f"similarity {_num(f['similarity'])}, latency ratio {_num(f['latency_ratio'])}, cost ratio "
           f"{_num(f['cost_ratio'])}, candidate success {_num(f['success_rate'])}"]
    out += [f"  least similar: {p['input_id']} ({p['similarity']:.3f})" for p in a.get("least_similar", [])]
    return out
