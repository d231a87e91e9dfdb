"""A postmortem in Markdown for one incident, built from the store (never from memory).

Sections: summary; timeline (the incident's lifecycle and priority changes from ``incident_log``,
and every event about the agent from ``events``: signals, alerts, decisions, circuit changes);
impact over the incident (tasks and failed tasks, tool calls, cost, budgets burned); the traces
most involved (slowest, failed, most expensive, each with its tool sequence); action-item prompts
for the kinds of signal the incident had.  The same function serves
``GET /v1/incidents/{id}/postmortem`` and ``agent-sre postmortem`` on a stopped pipeline's file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Protocol

Query = Callable[[str, list], list[tuple]]


class Budget(Protocol):
    """What the impact section reads of a cost budget (the cost processor's ``BudgetSpec`` is one)."""

    name: str
    scope: str
    limit_usd: float

    @property
    def subject_kind(self) -> str: ...

_TRACES = 3  # per list


def _t(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _duration(ns: int) -> str:
    s = max(ns, 0) // 10**9
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h {m}m {sec}s" if h else f"{m}m {sec}s" if m else f"{sec}s"


def _cell(text: object) -> str:
    return str(text if text is not None else "-").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return ["(none)"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)]


def postmortem_markdown(read: Query, incident_id: str, budgets: Sequence[Budget] = (),
                        lookback_ns: int = 300 * 10**9, now_ns: int | None = None) -> str | None:
    """The postmortem of ``incident_id``, or None if the store has no such incident."""
    rows = read("SELECT id, agent_id, title, priority, state, opened_ns, resolved_ns, signals, duplicates "
                "FROM incidents WHERE id = ?", [incident_id])
    if not rows:
        return None
    iid, agent, title, priority, state, opened, resolved, signals, dups = rows[0]
    end = resolved if resolved is not None else (now_ns if now_ns is not None else time.time_ns())
    since = opened - lookback_ns
    out = [f"# Postmortem: {iid} — {title}", "", "## Summary", ""]
    out += _table(["", ""], [["Incident", iid], ["Agent", agent or "(none)"], ["Priority", priority],
                             ["State", state], ["Opened", _t(opened)],
                             ["Resolved", f"{_t(resolved)} (after {_duration(resolved - opened)})" if resolved
                              else "not yet"], ["Signals", f"{signals} ({dups} duplicates counted, not listed)"]])
    log = read("SELECT time_ns, entry, kind, name, state, priority, summary, who, why FROM incident_log "
               "WHERE incident_id = ? ORDER BY time_ns, rowid", [iid])
    kinds = sorted({r[2] for r in log if r[1] == "signal"})
    out += ["", f"Signals of kind {', '.join(kinds) or '-'} for agent {agent or '(none)'} were correlated into this "
                f"incident; it is {state}.", ""]
    out += _timeline(read, agent, log, since, end)
    out += _impact(read, agent, since, end, budgets)
    out += _traces(read, agent, since, end)
    out += _actions(kinds, log)
    return "\n".join(out) + "\n"


def _timeline(read: Query, agent: str, log: list[tuple], since: int, end: int) -> list[str]:
    items = []
    for t, entry, kind, name, state, priority, summary, who, why in log:
        if entry == "state":
            items.append((t, 1, "incident", f"{state} ({priority})", f"by {who}: {why}"))
        elif entry == "priority":
            items.append((t, 1, "incident", f"priority {priority}", f"by {who}: {why}"))
        elif entry == "signal" and kind == "policy":  # the one signal that is no event: only in the log
            items.append((t, 0, "policy", f"{name} {state}", summary))
    for t, kind, state, name, summary in read(
            "SELECT time_ns, kind, state, name, summary FROM events WHERE kind <> 'incident' "
            "AND coalesce(labels['agent_id'], '') = ? AND time_ns BETWEEN ? AND ? ORDER BY time_ns",
            [agent or "", since, end + 60 * 10**9]):
        items.append((t, 0, kind, f"{name} {state}", summary))
    items.sort(key=lambda i: (i[0], i[1]))  # at the same instant, the event before what it caused
    return ["## Timeline", "", *_table(["time (UTC)", "source", "what", "detail"],
                                       [[_t(t), src, what, detail] for t, _, src, what, detail in items]), ""]


def _impact(read: Query, agent: str, since: int, end: int, budgets: Sequence[Budget]) -> list[str]:
    (tasks, failed_tasks, tools, failed_tools, cost, llm), = read(
        "SELECT count(*) FILTER (WHERE span_role = 'agent_task'), "
        "count(*) FILTER (WHERE span_role = 'agent_task' AND (status_code = 'error' OR task_success = false)), "
        "count(*) FILTER (WHERE span_role = 'tool'), count(*) FILTER (WHERE span_role = 'tool' AND status_code = 'error'), "
        "coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE span_role = 'llm') "
        "FROM spans WHERE coalesce(agent_id, '') = ? AND end_ns BETWEEN ? AND ?", [agent or "", since, end])
    pct = f" ({failed_tasks / tasks:.1%})" if tasks else ""
    out = ["## Impact", "", f"Between {_t(since)} and {_t(end)}:", "",
           f"- Tasks: {tasks}, of which failed: {failed_tasks}{pct}",
           f"- Tool calls: {tools}, of which failed: {failed_tools}",
           f"- LLM calls: {llm}; cost: ${cost:.6f}" + (f" (${cost / tasks:.6f} per task)" if tasks else "")]
    for spec in budgets:
        if spec.subject_kind in ("agent", "org"):
            out.append(f"- Budget {spec.name} ({spec.scope}): ${cost:.6f} of ${spec.limit_usd:g} burned during the "
                       f"incident ({cost / spec.limit_usd:.1%})")
    return [*out, ""]


def _traces(read: Query, agent: str, since: int, end: int) -> list[str]:
    base = ("WITH t AS (SELECT trace_id, max(duration_ns) FILTER (WHERE span_role = 'agent_task') AS task_ns, "
            "coalesce(sum(cost_usd), 0) AS cost, bool_or(status_code = 'error') AS failed, "
            "string_agg(tool_name, ' → ' ORDER BY start_ns) FILTER (WHERE span_role = 'tool') AS tools, "
            "arg_min(name, start_ns) AS root FROM spans WHERE trace_id IN (SELECT DISTINCT trace_id "
            "FROM spans WHERE coalesce(agent_id, '') = ? AND end_ns BETWEEN ? AND ?) GROUP BY trace_id) "
            "SELECT trace_id, root, task_ns, cost, failed, tools FROM t ")
    params = [agent or "", since, end]
    out = ["## Traces most involved", ""]
    for title, tail in (("Slowest", "WHERE task_ns IS NOT NULL ORDER BY task_ns DESC"),
                        ("Failed", "WHERE failed ORDER BY task_ns DESC NULLS LAST"),
                        ("Most expensive", "WHERE cost > 0 ORDER BY cost DESC")):
        rows = read(base + tail + f", trace_id LIMIT {_TRACES}", params)
        out += [f"### {title}", "", *_table(
            ["trace", "first span", "task duration", "cost USD", "failed", "tool sequence"],
            [[f"`{r[0]}`", r[1], "-" if r[2] is None else f"{r[2] / 1e6:.1f} ms", f"{r[3]:.6f}",
              "yes" if r[4] else "no", r[5] or "(no tools)"] for r in rows]), ""]
    return out


_PROMPTS = {
    "alert": "Which change or dependency made the SLO burn? Would an earlier, slower burn alert have caught it?",
    "circuit": "What made the calls fail, and did the breaker's threshold and recovery timeout fit? Is there a "
               "fallback for the failing tool or model?",
    "decision": "Was the kill or throttle right for this agent? Should the agent act on decisions earlier "
                "(should_proceed before each call)?",
    "budget": "Why did spend reach the budget: more tasks, costlier tasks, or a loop? Is the limit right?",
    "anomaly": "What explains the anomalous series (a prompt, a model, a tool, traffic)? Is the detector's "
               "sensitivity right for it?",
    "policy": "Which inputs violated the policy, and should the agent have been stopped before the check?",
}


def _actions(kinds: list[str], log: list[tuple]) -> list[str]:
    out = ["## Action items", "", "Prompts for the review (fill in owners and dates):", ""]
    out += [f"- [ ] {_PROMPTS[k]}" for k in kinds if k in _PROMPTS]
    acked = [r for r in log if r[1] == "state" and r[4] == "acknowledged"]
    if acked:
        out.append(f"- [ ] Time to acknowledge was {_duration(acked[0][0] - log[0][0])}: is the paging route right?")
    out.append("- [ ] What would have prevented this incident, and what would have shortened it?")
    return out
