"""Events (the ``events`` signal, ``EVENT_SCHEMA``) and the bus that carries them.

Processors derive events from what they see; every event is one row:

    kind       alert | budget | decision | anomaly | circuit | incident | chaos | rollout
    state      firing | resolved          (what channels notify and resolve)
    severity   page | ticket | info       (what channels filter on)
    name       what fired: a burn-rate rule, a budget step, an action, a series, a breaker ...
    fingerprint  one identity from firing to resolved (dedup, PagerDuty's dedup_key)
    labels     agent_id and the details, as strings (what channels group and route by)

Who publishes what:

    slo        alert     a burn-rate rule fired / resolved
    cost       budget    a utilisation step crossed (resolved when the period resets)
    decisions  decision  an agent's decision left / came back to allow
    anomaly    anomaly   a series point outside its expected range (resolved when back inside)
    incidents  circuit   a breaker opened / closed;  incident: opened, changed, resolved
    chaos      chaos     an experiment started / ended, stopped or aborted (with its result)
    delivery   rollout   a rollout started, advanced, paused, rolled back or promoted

``EventBus.publish`` appends the events to the store's ``events`` table (the
history, and what processors resume from after a restart), then hands them to
every subscriber (the ``alerts`` receiver, the ``incidents`` processor).  A
subscriber that raises is logged and does not stop the others.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import pyarrow as pa

from agent_sre.pipeline.pdata.schema import EVENT_SCHEMA

log = logging.getLogger("agent_sre.events")

EVENT_KINDS = ("alert", "budget", "decision", "anomaly", "circuit", "incident", "chaos", "rollout")
SEVERITIES = ("page", "ticket", "info")
Subscriber = Callable[[list[dict]], None]


def fingerprint(labels: dict[str, str]) -> str:
    """Identifies an event from firing to resolved: a hash of its (identifying) labels."""
    text = "\x1f".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event(kind: str, state: str, severity: str, name: str, labels: dict[str, str], summary: str,
          identity: dict[str, str] | None = None, time_ns: int | None = None,
          started_ns: int | None = None) -> dict:
    """One event row; ``identity`` (default: all labels) is what its fingerprint is made of."""
    now = time_ns if time_ns is not None else time.time_ns()
    labels = {k: str(v) for k, v in labels.items() if v is not None}
    return {"time_ns": now, "kind": kind, "state": state, "severity": severity, "name": name,
            "fingerprint": fingerprint({"kind": kind, **(identity if identity is not None else labels)}),
            "summary": summary, "labels": labels, "started_ns": started_ns if started_ns is not None else now}


def alert_events(rows: list[dict]) -> pa.Table:
    """rows: {time_ns, state, severity, name, labels, summary, started_ns[, kind, fingerprint]} -> a table.

    Rows without a fingerprint are SLO alerts, identified by their labels (as before the bus)."""
    return pa.Table.from_pylist([{
        "time_ns": r["time_ns"], "kind": r.get("kind", "alert"), "state": r["state"], "severity": r["severity"],
        "name": r["name"], "fingerprint": r.get("fingerprint") or fingerprint(r["labels"]), "summary": r["summary"],
        "labels": list(r["labels"].items()), "started_ns": r["started_ns"],
    } for r in rows], schema=EVENT_SCHEMA)


def rows_from_table(batch: pa.Table) -> list[dict]:
    return [{**r, "labels": dict(r["labels"] or [])} for r in batch.to_pylist()]


class EventBus:
    """Publish derived events: persisted first (if a store is attached), then handed to subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[Subscriber, frozenset[str] | None]] = []
        self._lock = threading.Lock()
        self._record: Callable[[pa.Table], None] | None = None

    def persist_to(self, record: Callable[[pa.Table], None] | None) -> None:
        self._record = record

    def subscribe(self, callback: Subscriber, kinds: Iterable[str] | None = None) -> None:
        with self._lock:
            self._subscribers.append((callback, frozenset(kinds) if kinds is not None else None))

    def unsubscribe(self, callback: Subscriber) -> None:
        with self._lock:
            self._subscribers = [(c, k) for c, k in self._subscribers if c != callback]

    def publish(self, rows: list[dict]) -> None:
        if not rows:
            return
        rows = [{**r, "fingerprint": r.get("fingerprint") or fingerprint(r["labels"]),
                 "kind": r.get("kind", "alert")} for r in rows]
        if self._record is not None:
            try:
                self._record(alert_events(rows))
            except Exception:  # noqa: BLE001 - the history is lost for these, delivery is not
                log.exception("could not record %d events in the store", len(rows))
        with self._lock:
            subscribers = list(self._subscribers)
        for callback, kinds in subscribers:
            mine = rows if kinds is None else [r for r in rows if r["kind"] in kinds]
            if not mine:
                continue
            try:
                callback(mine)
            except Exception:  # noqa: BLE001 - one subscriber's failure must not stop the others
                log.exception("event subscriber %r failed", callback)
