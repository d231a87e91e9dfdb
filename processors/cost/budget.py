"""Cost budgets: the ledger, clock-free and atomic (used by the ``cost`` processor's ``budgets``).

A budget has a scope (``agent_day``: each agent per day; ``org_month``: everything per month;
``task``: each task), a limit in USD, utilisation steps that raise alerts (default 50/75/90 %),
and the points where the decision for the agent becomes ``throttle`` (85 %) and ``kill`` (95 %).
Periods follow the calendar of ``tz`` (UTC unless configured) and reset by the clock.

``try_charge`` checks and charges under one lock: a charge is refused once the agent's decision
is ``kill``, so concurrent callers can overshoot the kill point by at most one charge.  The spend
can be saved (``state``) and restored (``from_state``) so a restart keeps it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

ACTIONS = ("allow", "throttle", "kill")


@dataclass(frozen=True)
class BudgetSpec:
    name: str
    scope: str  # agent_day | org_month | task
    limit_usd: float
    alert_steps: tuple[float, ...] = (0.5, 0.75, 0.9)
    throttle_at: float = 0.85
    kill_at: float = 0.95
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if self.scope not in ("agent_day", "org_month", "task"):
            raise ValueError(f"scope must be agent_day, org_month or task, got {self.scope!r}")
        if self.limit_usd <= 0:
            raise ValueError("limit_usd must be positive")
        if not 0 < self.throttle_at <= self.kill_at:
            raise ValueError("need 0 < throttle_at <= kill_at")

    def period(self, now: float) -> tuple[str, float]:
        """(period label, when it ends as a Unix time) for the instant ``now``."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.tz))
        if self.scope == "agent_day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            return start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
        if self.scope == "org_month":
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            nxt = (start + timedelta(days=32)).replace(day=1)
            return start.strftime("%Y-%m"), nxt.timestamp()
        return "task", float("inf")


@dataclass(frozen=True)
class BudgetEvent:
    kind: str  # "alert" (a utilisation step crossed) or "decision" (the action changed)
    budget: str
    subject: str  # agent id, task id, or "org"
    period: str
    utilisation: float
    detail: str  # the step ("0.75") or the new action


@dataclass
class _Account:
    period: str
    ends: float
    spent: float = 0.0
    steps_crossed: set[float] = field(default_factory=set)


class BudgetLedger:
    def __init__(self, specs: list[BudgetSpec]):
        self.specs = specs
        self._accounts: dict[tuple[str, str], _Account] = {}
        self._lock = threading.Lock()

    def _subject(self, spec: BudgetSpec, agent: str, task: str | None) -> str | None:
        if spec.scope == "org_month":
            return "org"
        if spec.scope == "task":
            return task
        return agent

    def _account(self, spec: BudgetSpec, subject: str, now: float) -> _Account:
        label, ends = spec.period(now)
        acc = self._accounts.get((spec.name, subject))
        if acc is None or acc.period != label:  # a new period: the clock reset it
            acc = self._accounts[(spec.name, subject)] = _Account(label, ends)
        return acc

    def decision(self, agent: str, now: float, task: str | None = None) -> tuple[str, str, float | None]:
        """(action, reason, until) for the agent now: the strictest over its budgets."""
        with self._lock:
            return self._decision(agent, task, now)

    def _decision(self, agent: str, task: str | None, now: float) -> tuple[str, str, float | None]:
        worst = ("allow", "", None)
        for spec in self.specs:
            subject = self._subject(spec, agent, task)
            if subject is None:
                continue
            acc = self._account(spec, subject, now)
            u = acc.spent / spec.limit_usd
            action = "kill" if u >= spec.kill_at else "throttle" if u >= spec.throttle_at else "allow"
            if ACTIONS.index(action) > ACTIONS.index(worst[0]):
                worst = (action, f"budget {spec.name} ({spec.scope}) at {u:.0%} of ${spec.limit_usd:g}",
                         acc.ends if acc.ends != float("inf") else None)
        return worst

    def try_charge(self, agent: str, amount: float, now: float,
                   task: str | None = None) -> tuple[bool, list[BudgetEvent]]:
        """Check and charge atomically: refused (False) while the agent's decision is kill."""
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        with self._lock:
            if self._decision(agent, task, now)[0] == "kill":
                return False, []
            return True, self._charge(agent, amount, now, task)

    def charge(self, agent: str, amount: float, now: float, task: str | None = None) -> list[BudgetEvent]:
        """Record money already spent (what spans report): never refused."""
        with self._lock:
            return self._charge(agent, amount, now, task)

    def restore(self, budget: str, subject: str, spent: float, now: float) -> None:
        """Set a period's spend from the store (at start), marking the steps it passed as alerted."""
        with self._lock:
            spec = next(s for s in self.specs if s.name == budget)
            acc = self._account(spec, subject, now)
            acc.spent = spent
            acc.steps_crossed = {st for st in spec.alert_steps if spent / spec.limit_usd >= st}

    def _charge(self, agent: str, amount: float, now: float, task: str | None) -> list[BudgetEvent]:
        before = self._decision(agent, task, now)[0]
        events = []
        for spec in self.specs:
            subject = self._subject(spec, agent, task)
            if subject is None:
                continue
            acc = self._account(spec, subject, now)
            acc.spent += amount
            u = acc.spent / spec.limit_usd
            for step in spec.alert_steps:
                if u >= step and step not in acc.steps_crossed:
                    acc.steps_crossed.add(step)
                    events.append(BudgetEvent("alert", spec.name, subject, acc.period, u, f"{step:g}"))
        after = self._decision(agent, task, now)[0]
        if after != before:
            events.append(BudgetEvent("decision", "*", agent, "", 0.0, after))
        return events

    def spent(self, budget: str, subject: str, now: float) -> float:
        with self._lock:
            spec = next(s for s in self.specs if s.name == budget)
            return self._account(spec, subject, now).spent

    # --- persistence: what a restart needs ---------------------------------------------

    def state(self) -> list[tuple[str, str, str, float, float, list[float]]]:
        with self._lock:
            return [(name, subject, a.period, a.ends, a.spent, sorted(a.steps_crossed))
                    for (name, subject), a in self._accounts.items()]

    @classmethod
    def from_state(cls, specs: list[BudgetSpec], rows) -> BudgetLedger:
        ledger = cls(specs)
        for name, subject, period, ends, spent, steps in rows:
            ledger._accounts[(name, subject)] = _Account(period, ends, spent, set(steps))
        return ledger


def utc(*args) -> float:
    """A UTC instant as a Unix time (for tests and callers with calendar times)."""
    return datetime(*args, tzinfo=timezone.utc).timestamp()
