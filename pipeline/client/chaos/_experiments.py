"""Experiments as the pipeline announces them, and the choice of which call gets which fault.

An experiment (one entry of ``chaos`` in ``GET /v1/decisions/{agent}``)::

    {"id": "CHX-00001", "template": "tool-error-storm", "seed": 42,
     "start": 1700000000.0, "until": 1700000600.0,          # Unix seconds
     "schedule": {"period": 60.0, "active": 20.0},          # optional: on for 20 s of every minute
     "blast_radius": {"agents": ["a"], "tools": [], "models": [], "sessions": 1.0},
     "faults": [{"type": "tool_error", "rate": 0.3, "after": 0.0, "tools": [], "models": [],
                 "params": {"message": "...", "status": 500}}]}

A call is eligible when the experiment's schedule is on, the call is in its blast radius (its tool
among ``tools``, its model among ``models``: empty means every one; its session among the
``sessions`` share, chosen by a hash of the experiment id and the session id, so every process
agrees on which sessions are in) and the fault applies to its kind of call and has begun
(``after`` seconds into the experiment).  The faults are then drawn in order, each from its own
random stream seeded with ``(seed, experiment id, agent, fault index)``; a call gets at most one
fault.  So the same calls in the same order get the same faults: a run is reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from .faults import DEFAULTS, FAULT_TYPES

_NOTHING: tuple = ()


@dataclass
class Fault:
    experiment_id: str
    type: str
    rate: float
    kinds: tuple[str, ...]
    after: float = 0.0
    tools: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    params: dict[str, Any] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def param(self, name: str) -> Any:
        return self.params.get(name, DEFAULTS[self.type].get(name))


@dataclass
class Experiment:
    id: str
    start: float
    until: float
    faults: list[Fault]
    agents: frozenset[str] = frozenset()
    tools: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    sessions: float = 1.0
    period: float | None = None
    active: float | None = None
    spec: Any = None  # the announced dict: an experiment announced again unchanged keeps its random streams

    def on(self, now: float) -> bool:
        if not self.start <= now < self.until:
            return False
        return self.period is None or self.active is None or (now - self.start) % self.period < self.active

    def pick(self, kind: str, name: str | None, session: str | None, now: float) -> Fault | None:
        """The fault this call gets, if any (see the module docstring)."""
        if not self.on(now):
            return None
        if self.tools and kind == "tool" and name not in self.tools:
            return None
        if self.models and kind == "llm" and name not in self.models:
            return None
        if self.sessions < 1.0 and not self.has_session(session):
            return None
        since = now - self.start
        for fault in self.faults:
            if kind not in fault.kinds or since < fault.after:
                continue
            if fault.tools and (kind != "tool" or name not in fault.tools):
                continue
            if fault.models and (kind != "llm" or name not in fault.models):
                continue
            if fault.rng.random() < fault.rate:
                return fault
        return None

    def has_session(self, session: str | None) -> bool:
        """Whether ``session`` is in the experiment's share of sessions (the same answer in every process)."""
        if session is None or self.sessions <= 0.0:
            return False
        digest = hashlib.sha256(f"{self.id}\x1f{session}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64 < self.sessions


def parse(entries: Any, agent: str, seed_salt: str = "", known: dict[str, Experiment] | None = None) -> list[Experiment]:
    """The experiments of a decision's ``chaos`` entry that apply to ``agent``; ones in ``known`` announced
    again unchanged are kept (with their random streams).  Malformed entries and unknown fault types are
    skipped: an older helper ignores what a newer pipeline adds."""
    out = []
    for entry in entries if isinstance(entries, list) else _NOTHING:
        try:
            previous = (known or {}).get(entry["id"])
            if previous is not None and previous.spec == entry:
                out.append(previous)
                continue
            exp = _experiment(entry, agent, seed_salt)
        except (KeyError, TypeError, ValueError):
            continue
        if exp is not None:
            out.append(exp)
    return out


def _experiment(entry: dict, agent: str, seed_salt: str) -> Experiment | None:
    radius = entry.get("blast_radius") or {}
    agents = frozenset(radius.get("agents") or ())
    if agents and agent not in agents:
        return None
    exp_id = str(entry["id"])
    seed = entry.get("seed")
    faults = []
    for i, f in enumerate(entry.get("faults") or ()):
        kinds = FAULT_TYPES.get(f.get("type"))
        if kinds is None:
            continue
        rate = float(f.get("rate", 1.0))
        faults.append(Fault(exp_id, f["type"], min(max(rate, 0.0), 1.0), kinds, float(f.get("after") or 0.0),
                            frozenset(f.get("tools") or ()), frozenset(f.get("models") or ()), dict(f.get("params") or {}),
                            random.Random(f"{seed}\x1f{exp_id}\x1f{agent}\x1f{seed_salt}\x1f{i}")))
    schedule = entry.get("schedule") or {}
    period, active = schedule.get("period"), schedule.get("active")
    return Experiment(exp_id, float(entry["start"]), float(entry["until"]), faults, agents,
                      frozenset(radius.get("tools") or ()), frozenset(radius.get("models") or ()),
                      float(radius.get("sessions", 1.0)), float(period) if period else None,
                      float(active) if active else None, entry)
