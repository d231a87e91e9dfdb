"""Events (the ``events`` signal, ``EVENT_SCHEMA``): building alert events and their fingerprints."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from agent_sre.pipeline.schema import EVENT_SCHEMA


def fingerprint(labels: dict[str, str]) -> str:
    """Identifies an alert from firing to resolved: a hash of its labels."""
    text = "\x1f".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alert_events(rows: list[dict]) -> pa.Table:
    """rows: {time_ns, state, severity, name, labels, summary, started_ns} -> an EVENT_SCHEMA table."""
    return pa.Table.from_pylist([{
        "time_ns": r["time_ns"], "kind": "alert", "state": r["state"], "severity": r["severity"],
        "name": r["name"], "fingerprint": fingerprint(r["labels"]), "summary": r["summary"],
        "labels": list(r["labels"].items()), "started_ns": r["started_ns"],
    } for r in rows], schema=EVENT_SCHEMA)
