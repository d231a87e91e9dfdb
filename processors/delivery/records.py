"""Rollouts in the store: the ``rollouts`` table (one row per rollout, rewritten at every change and
analysis, so a restarted pipeline resumes each one where it was) and their history (the ``rollout``
rows of ``events``).  The readers are shared by the running component and by ``agent-sre rollout
status`` on a stopped pipeline's file."""

from __future__ import annotations

import json
from collections.abc import Callable

from agent_sre.processors.delivery.machine import RolloutRun
from agent_sre.processors.delivery.rollout import Rollout

Read = Callable[[str, list], list[tuple]]

DDL = ("CREATE TABLE IF NOT EXISTS rollouts (processor VARCHAR, name VARCHAR, agent_id VARCHAR, document VARCHAR, "
       "state VARCHAR, step INTEGER, paused_by VARCHAR, reason VARCHAR, started_ns BIGINT, step_started_ns BIGINT, "
       "updated_ns BIGINT, analysis VARCHAR, PRIMARY KEY (processor, name))")
_COLUMNS = ("document, state, step, paused_by, reason, started_ns, step_started_ns, updated_ns, analysis")


def save(processor: str, run: RolloutRun) -> tuple[str, list]:
    return ("INSERT OR REPLACE INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [processor, run.name, run.spec.agent, json.dumps(run.rollout.document()), run.state, run.step,
             run.paused_by, run.reason, run.started_ns, run.step_started_ns, run.updated_ns,
             json.dumps(run.analysis) if run.analysis is not None else None])


def _run(row: tuple) -> RolloutRun:
    document, state, step, paused_by, reason, started, step_started, updated, analysis = row
    return RolloutRun(Rollout.model_validate(json.loads(document)), started_ns=started, state=state, step=step,
                      step_started_ns=step_started, paused_by=paused_by, reason=reason or "", updated_ns=updated,
                      analysis=json.loads(analysis) if analysis else None)


def load(read: Read, processor: str) -> list[RolloutRun]:
    return [_run(r) for r in read(f"SELECT {_COLUMNS} FROM rollouts WHERE processor = ? ORDER BY started_ns",
                                  [processor])]


def history(read: Read, name: str, started_ns: int) -> list[dict]:
    """The run's decisions, oldest first (the ``rollout`` events of this run)."""
    rows = read("SELECT time_ns, name, summary, labels FROM events WHERE kind = 'rollout' "
                "AND labels['rollout'] = ? AND started_ns = ? ORDER BY time_ns, name", [name, started_ns])
    return [{"time_ns": t, "decision": decision, "summary": summary,
             "reason": summary.split("% to the candidate: ", 1)[-1], "state": dict(labels).get("state"),
             "weight": float(dict(labels).get("weight", 0)), "by": dict(labels).get("by", "")}
            for t, decision, summary, labels in rows]


def detail(run: RolloutRun, read: Read | None) -> dict:
    """One rollout as ``GET /v1/rollouts/{name}`` shows it."""
    return {**run.summary(), "document": run.rollout.document(), "analysis": run.analysis,
            "history": history(read, run.name, run.started_ns) if read is not None else []}


def rollout_list(read: Read) -> list[dict]:
    """Every rollout in a store (all processors), newest first: what ``GET /v1/rollouts`` answers."""
    if not _has_table(read):
        return []
    runs = [_run(r) for r in read(f"SELECT {_COLUMNS} FROM rollouts ORDER BY started_ns DESC, name", [])]
    return [r.summary() for r in runs]


def rollout_detail(read: Read, name: str) -> dict | None:
    if not _has_table(read):
        return None
    rows = read(f"SELECT {_COLUMNS} FROM rollouts WHERE name = ? ORDER BY started_ns DESC LIMIT 1", [name])
    return detail(_run(rows[0]), read) if rows else None


def _has_table(read: Read) -> bool:
    return bool(read("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'rollouts'", [])[0][0])
