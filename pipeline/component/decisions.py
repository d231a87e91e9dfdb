"""Decisions: what each agent should do now, from every component that has a say.

    cost budgets      allow | throttle (with a suggested rate) | kill
    incidents breakers  allow | circuit_open
    slo               allow | freeze (an error budget is exhausted: no releases, calls go on)

A provider answers ``decision(agent, tool=None, task=None) -> Decision`` from memory (``tool``:
the call about to be made, for per-tool breakers; ``task``: the trace it belongs to, for task
budgets) and lists the agents it
knows (``agents()``); it may have ``tick()``, called every second, for what changes by the
clock (a budget period ends, a breaker's recovery timeout passes).  The board answers the
strictest decision over its providers (kill > circuit_open > throttle > freeze > allow), with every
provider's reason, and publishes an event whenever an agent's action changes: ``decision``
events are ``firing`` while the agent is not allowed, ``resolved`` when it is again.  The
last decision of each agent is taken from the ``events`` history at start, so a restart does
not announce again what was announced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from agent_sre.pipeline.component.events import EventBus, event
from agent_sre.pipeline.component.periodic import PeriodicWorker

log = logging.getLogger("agent_sre.decisions")

ACTIONS = ("allow", "freeze", "throttle", "circuit_open", "kill")  # in increasing strictness
SEVERITY = {"freeze": "ticket", "throttle": "ticket", "circuit_open": "page", "kill": "page"}


@dataclass(frozen=True)
class Decision:
    action: str = "allow"
    reason: str = ""
    until: float | None = None  # Unix time the action holds until (None: until something changes)
    details: dict = field(default_factory=dict)  # e.g. suggested_rate_per_min, circuit state


ALLOW = Decision()


class DecisionProvider(Protocol):
    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision: ...
    def agents(self) -> Iterable[str]: ...


class DecisionBoard:
    def __init__(self, bus: EventBus, clock: Callable[[], float] = time.time):
        self.bus = bus
        self.clock = clock
        self._providers: list[tuple[str, DecisionProvider]] = []
        # (agent, tool, task) -> (action, since ns) last published; tool and task None for the agent itself
        self._announced: dict[tuple[str, str | None, str | None], tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._publish = threading.Lock()
        self._ticker = PeriodicWorker("decisions-tick", 1.0, self.tick, log)

    @property
    def configured(self) -> bool:
        return bool(self._providers)

    def register(self, source: str, provider: DecisionProvider) -> None:
        self._providers.append((source, provider))

    def decide(self, agent: str, tool: str | None = None, task: str | None = None) -> dict:
        """The agent's decision now: the strictest action, its reason and until, and every source's say."""
        says = []
        details: dict = {}
        for source, provider in self._providers:
            d = provider.decision(agent, tool, task)
            details.update(d.details if d.action == "allow" else {})
            if d.action != "allow":
                says.append((source, d))
        if not says:
            return {"agent_id": agent, "action": "allow", "reason": "", "until": None, **details, "sources": []}
        source, top = max(says, key=lambda s: ACTIONS.index(s[1].action))
        return {"agent_id": agent, "action": top.action, "reason": top.reason, "until": top.until, **details,
                **top.details,
                "sources": [{"source": s, "action": d.action, "reason": d.reason, "until": d.until, **d.details}
                            for s, d in says]}

    def agents(self) -> list[str]:
        return sorted({a for _, p in self._providers for a in p.agents()})

    def all(self) -> list[dict]:
        return [self.decide(a) for a in self.agents()]

    def restore(self, read: Callable[[str, list], list[tuple]]) -> None:
        """The last decision event of every agent (and per-tool or per-task scope), from ``events``."""
        rows = read("SELECT labels['agent_id'], labels['tool'], labels['task'], arg_max(name, time_ns), "
                    "arg_max(state, time_ns), arg_max(started_ns, time_ns) FROM events WHERE kind = 'decision' "
                    "GROUP BY 1, 2, 3", [])
        with self._lock:
            for agent, tool, task, action, state, started in rows:
                if agent is not None and state == "firing":
                    self._announced[(agent, tool or None, task or None)] = (action, started)

    def _scopes(self) -> set[tuple[str, str | None, str | None]]:
        out: set[tuple[str, str | None, str | None]] = {(a, None, None) for a in self.agents()}
        for _, provider in self._providers:
            scopes = getattr(provider, "scopes", None)
            if scopes is not None:
                out.update(scopes())
        return out

    def check(self, agents: Iterable[str] | None = None) -> list[dict]:
        """Publish a decision event for every agent (and per-tool breaker, per-task budget) whose action
        changed since it was last announced; ``agents``: only look at these."""
        now_ns = int(self.clock() * 1e9)
        out = []
        with self._publish:  # one checker at a time, and its events out before the next looks
            with self._lock:
                scopes = self._scopes() | set(self._announced)
                if agents is not None:
                    wanted = set(agents)
                    scopes = {s for s in scopes if s[0] in wanted} | {(a, None, None) for a in wanted}
            for scope in sorted(scopes, key=lambda s: (s[0], s[1] or "", s[2] or "")):
                agent, tool, task = scope
                d = self.decide(agent, tool, task)
                action = d["action"]
                with self._lock:
                    last, since = self._announced.get(scope, ("allow", now_ns))
                    if action == last:
                        continue
                    labels = _labels(d, tool, task)
                    identity = {"agent_id": agent, **({"tool": tool} if tool else {}), **({"task": task} if task else {})}
                    what = f"agent {agent}" + (f" tool {tool}" if tool else "") + (f" task {task}" if task else "")
                    if action == "allow":
                        del self._announced[scope]
                        out.append(event("decision", "resolved", SEVERITY[last], "allow", labels,
                                         f"{what} is allowed again (was {last})", identity=identity,
                                         time_ns=now_ns, started_ns=since))
                    else:
                        since = since if last != "allow" else now_ns
                        self._announced[scope] = (action, since)
                        out.append(event("decision", "firing", SEVERITY[action], action, labels,
                                         f"{what}: {action} ({d['reason']})", identity=identity,
                                         time_ns=now_ns, started_ns=since))
            if out:
                self.bus.publish(out)
        return out

    # --- the ticker: what changes by the clock ------------------------------------------

    def start(self) -> None:
        if self._providers:
            self._ticker.start()

    def tick(self) -> None:
        for _, provider in self._providers:
            tick = getattr(provider, "tick", None)
            if tick is not None:
                tick()
        self.check()

    def shutdown(self) -> None:
        self._ticker.stop()


def _labels(d: dict, tool: str | None = None, task: str | None = None) -> dict[str, str]:
    labels = {"agent_id": d["agent_id"], "action": d["action"], "reason": d["reason"]}
    if tool:
        labels["tool"] = tool
    if task:
        labels["task"] = task
    if d.get("until") is not None:
        labels["until"] = f"{d['until']:.0f}"
    if d.get("suggested_rate_per_min") is not None:
        labels["suggested_rate_per_min"] = f"{d['suggested_rate_per_min']:g}"
    return labels
