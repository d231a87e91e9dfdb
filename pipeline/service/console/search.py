"""Trace search: root spans in a time window, filtered by agent, task, status, cost, duration and text.

One DuckDB statement over the ``spans`` view, bounded by a start-time window (zone maps on ``start_ns``
skip the rest) and a row limit; the per-trace totals are aggregated column-wise in the same statement."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from agent_sre.pipeline.component.config import parse_duration

MAX_TRACES = 100


class SearchError(ValueError):
    """A search field that cannot be read (the message names the field and its forms)."""


@dataclass(frozen=True)
class TraceSearch:
    start_ns: int
    end_ns: int
    agent: str = ""
    task: str = ""
    status: str = ""  # "", "ok" (no span failed) or "error" (some span failed)
    min_cost: float | None = None
    min_ms: float | None = None
    text: str = ""

    @classmethod
    def parse(cls, form: dict[str, str], now_s: float | None = None) -> TraceSearch:
        now_s = time.time() if now_s is None else now_s
        start, end = _window(form.get("day", ""), form.get("since", ""), now_s)
        status = form.get("status", "")
        if status not in ("", "ok", "error"):
            raise SearchError(f"status is ok or error (got {status!r})")
        return cls(start, end, form.get("agent", "").strip(), form.get("task", "").strip(), status,
                   _number(form, "min_cost"), _number(form, "min_ms"), form.get("text", "").strip())

    def describe(self) -> str:
        fmt = "%Y-%m-%d %H:%M"
        a, b = (dt.datetime.fromtimestamp(t / 1e9, dt.timezone.utc).strftime(fmt) for t in (self.start_ns, self.end_ns))
        return f"traces started {a} – {b} UTC, newest first, at most {MAX_TRACES}"

    def sql(self, agents: frozenset[str] | None = None) -> tuple[str, list]:
        """The statement and its parameters; ``agents``: only traces every agent of which is among them (a
        tenant's, as the admin API shows a tenant a trace)."""
        where, params = ["start_ns >= ?", "start_ns < ?"], [self.start_ns, self.end_ns]
        roots = ["parent_span_id IS NULL"]
        if self.agent:
            roots.append("agent_id = ?")
            params_roots = [self.agent]
        else:
            params_roots = []
        if self.task:
            roots.append("task_name = ?")
            params_roots.append(self.task)
        having: list[str] = []
        params_having: list = []
        if agents is not None:
            having.append("bool_and(agent_id IS NULL OR list_contains(?::VARCHAR[], agent_id))")
            params_having.append(sorted(agents))
        if self.status == "error":
            having.append("errors > 0")
        elif self.status == "ok":
            having.append("errors = 0")
        if self.min_cost is not None:
            having.append("cost >= ?")
            params_having.append(self.min_cost)
        if self.text:
            having.append("matched")
        text_expr = "bool_or(name ILIKE ? OR CAST(attributes AS VARCHAR) ILIKE ?)" if self.text else "true"
        text_params = [f"%{self.text}%"] * 2 if self.text else []
        dur = " AND r.duration_ns >= ?" if self.min_ms is not None else ""
        sql = (f"WITH t AS (SELECT trace_id, count(*) AS spans, count(*) FILTER (WHERE status_code = 'error') AS errors, "
               f"coalesce(sum(cost_usd), 0) AS cost, {text_expr} AS matched FROM spans WHERE {' AND '.join(where)} "
               f"GROUP BY trace_id{' HAVING ' + ' AND '.join(having) if having else ''}) "
               "SELECT r.trace_id, r.agent_id, r.task_name, r.name, r.start_ns, r.duration_ns, t.spans, t.errors, t.cost "
               f"FROM spans r JOIN t USING (trace_id) WHERE r.start_ns >= ? AND r.start_ns < ? AND {' AND '.join('r.' + c for c in roots)}{dur} "
               f"ORDER BY r.start_ns DESC LIMIT {MAX_TRACES}")
        return sql, [*text_params, *params, *params_having, self.start_ns, self.end_ns, *params_roots,
                     *([int(self.min_ms * 1e6)] if self.min_ms is not None else [])]


def _number(form: dict[str, str], name: str) -> float | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SearchError(f"{name} must be a number (got {text!r})") from None
    if value < 0:
        raise SearchError(f"{name} must not be negative (got {text!r})")
    return value


def _window(day: str, since: str, now_s: float) -> tuple[int, int]:
    """A day (YYYY-MM-DD, UTC), or from ``since`` (a duration back from now, or a day) until now; default 1h."""
    text = (day or since).strip()
    if not text:
        return int((now_s - 3600) * 1e9), int(now_s * 1e9) + 1
    try:
        start = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        try:
            return int((now_s - parse_duration(text)) * 1e9), int(now_s * 1e9) + 1
        except ValueError:
            raise SearchError(f"since is a duration (1h, 2d) or a day (YYYY-MM-DD) (got {text!r})") from None
    return int(start * 1e9), int((start + 86400 if day else now_s) * 1e9) + (0 if day else 1)
