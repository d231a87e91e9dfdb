"""Cost budgets: the ledger, clock-free and atomic (used by the ``cost`` processor's ``budgets``).

A budget has a scope: who is charged, and over which calendar period.  Events fire at its
utilisation steps and at its throttle and kill points.

    agent_day  agent_month     each agent            org_day  org_month      everything together
    model_day  model_month     each model            tenant_day  tenant_month  each tenant
    task                       each task (trace), for as long as it runs

a limit in USD (a tenant budget may give some tenants limits of their own), utilisation steps that
raise alerts (default 50/75/90 %), and the points where the decision for an agent becomes
``throttle`` (85 %) and ``kill`` (95 %).  An agent's decision is the strictest over the budgets it
spends from: its own, the org's, those of the models it charged in their current period, and those of
the tenants it charged within the last month (an agent belongs to its tenant: once the tenant's budget
kills, so is its agent that has not spent yet this period).  Periods follow the calendar of ``tz``
(UTC unless configured) and reset by the clock; ``expire`` reports the budgets whose period ended.

``try_charge`` checks and charges under one lock: a charge is refused once the agent's decision
is ``kill``, so concurrent callers can overshoot the kill point by at most one charge.  The spend
can be saved (``state``) and restored (``from_state``, or ``restore`` from the store's rollup) so a
restart keeps it.  A throttle decision carries a suggested rate: the calls per minute that, at the
period's average cost per call, reach the kill point only when the period resets.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from zoneinfo import ZoneInfo

ACTIONS = ("allow", "throttle", "kill")
SUBJECTS = ("agent", "org", "model", "tenant")
SCOPES = tuple(f"{s}_{p}" for s in SUBJECTS for p in ("day", "month")) + ("task",)
TASK_IDLE_S = 3600.0  # a task budget's account is forgotten this long after its last charge
# ... or sooner, least recently charged first, beyond this many accounts per task budget: a task's account
# holds ~0.2 KiB (~0.3 with its id), and at a few hundred tasks a second an hour of them is ~0.3 GB.
MAX_TASK_ACCOUNTS = 50_000
_EPS = 1e-9  # spend is a float sum: ten charges of 0.1 of a 1.0 budget reach 100 %, not 99.99999 %


@dataclass(frozen=True)
class BudgetSpec:
    name: str
    scope: str  # see SCOPES
    limit_usd: float
    alert_steps: tuple[float, ...] = (0.5, 0.75, 0.9)
    throttle_at: float = 0.85
    kill_at: float = 0.95
    tz: str = "UTC"
    tenant_limits: tuple[tuple[str, float], ...] = ()  # (tenant, USD): limits other than limit_usd

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        if self.limit_usd <= 0 or any(limit <= 0 for _, limit in self.tenant_limits):
            raise ValueError("limit_usd must be positive")
        if not 0 < self.throttle_at <= self.kill_at:
            raise ValueError("need 0 < throttle_at <= kill_at")
        if self.tenant_limits and self.subject_kind != "tenant":
            raise ValueError(f"tenant limits need a tenant scope (tenant_day, tenant_month); got {self.scope!r}")

    @cached_property
    def _limits(self) -> dict[str, float]:
        return dict(self.tenant_limits)

    def limit(self, subject: str) -> float:
        """The subject's limit in USD: its own (a tenant listed in ``tenant_limits``) or ``limit_usd``."""
        return self._limits.get(subject, self.limit_usd)

    @cached_property  # read for every charge
    def steps(self) -> tuple[float, ...]:
        """Where events fire: the alert steps, and the throttle and kill points."""
        return tuple(sorted({*self.alert_steps, self.throttle_at, self.kill_at}))

    @property
    def subject_kind(self) -> str:
        """agent | org | model | tenant | task"""
        return self.scope.partition("_")[0]

    def period(self, now: float) -> tuple[str, float]:
        """(period label, when it ends as a Unix time) for the instant ``now``."""
        if self.scope == "task":
            return "task", float("inf")
        start = self.period_start(now)
        if self.scope.endswith("_day"):
            return start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
        nxt = (start + timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), nxt.timestamp()

    def period_start(self, now: float) -> datetime:
        local = datetime.fromtimestamp(now, ZoneInfo(self.tz))
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self.scope.endswith("_day") else day.replace(day=1)


@dataclass(frozen=True)
class BudgetEvent:
    kind: str  # "alert" (a step crossed), "decision" (the agent's action changed), "reset" (period ended)
    budget: str
    subject: str  # agent id, task id, model, tenant, or "org"
    period: str
    utilisation: float
    detail: str  # the step ("0.75"), the new action, or the period that ended
    agent: str = ""  # a task budget's: the agent that spends in the task, where known


@dataclass(frozen=True)
class BudgetDecision:
    action: str
    reason: str = ""
    until: float | None = None
    budget: str = ""
    utilisation: float = 0.0
    suggested_rate_per_min: float | None = None  # for throttle: see the module docstring
    tenant: str | None = None  # the tenant whose budget decided, for a tenant budget


_NO_STEPS: frozenset[float] = frozenset()


@dataclass(slots=True)
class _Account:
    """One subject's spend in one period (slots and a shared empty step set: there is one per task)."""
    period: str
    ends: float
    spent: float = 0.0
    calls: int = 0
    steps_crossed: frozenset[float] = _NO_STEPS
    last_charge: float = 0.0

    def cross(self, step: float) -> None:
        self.steps_crossed = self.steps_crossed | {step}


class BudgetLedger:
    def __init__(self, specs: list[BudgetSpec]):
        self.specs = specs
        self._accounts: dict[tuple[str, str], _Account] = {}
        # agent -> {(subject kind, subject): last charge}: which model/tenant budgets bind the agent
        self._uses: dict[str, dict[tuple[str, str], float]] = {}
        self._periods: dict[str, tuple[int, str, float]] = {}  # budget -> (second, label, end)
        self._labels_at: dict[tuple[str, int], str] = {}  # (budget, second) -> period label
        self._task_agents: dict[str, str] = {}  # task -> the agent that spends in it
        self._agent_tasks: dict[str, int] = {}  # agent -> how many of _task_agents are its (known_agents)
        # Task accounts sit in _accounts least recently charged first (a charge moves its account to the
        # end), so expire finds the idle and the evicted at the front instead of walking every task; and
        # the tasks at or over a throttle line are kept aside, for the decisions board every second.
        self._task_counts: dict[str, int] = {}  # task budget -> its accounts
        self._limited: set[tuple[str, str]] = set()  # (task budget, task) at or over its throttle line
        self._lock = threading.Lock()
        # Fleet mode (set by ``FleetBudgets``): alerts come from the fleet's totals only, and this pipeline's
        # own spend per (budget, subject, period) is tracked (``_own``), with what Redis acknowledged of it
        # (``_pushed``) and what changed since (``_dirty``); a lone pipeline keeps none of it per charge.
        self.fleet_alerts = False
        self.max_task_accounts = MAX_TASK_ACCOUNTS  # per task budget; ``expire`` forgets the oldest beyond
        self.evicted_tasks = 0  # task accounts forgotten early (beyond max_task_accounts) since start
        # expire() walks the period accounts only from this time on (a period's end, or an hour): the
        # decisions board calls it every second, and a walk of 50k task accounts is ~40 ms.  Task accounts
        # are looked at from the front of _accounts only (_expire_tasks).
        self._expire_due = 0.0
        self._own: dict[tuple[str, str, str], list] = {}  # -> [spent, calls, period end]
        self._pushed: dict[tuple[str, str, str], float] = {}
        self._dirty: set[tuple[str, str, str]] = set()

    def _subjects(self, spec: BudgetSpec, agent: str, task: str | None, model: str | None,
                  tenant: str | None) -> list[str]:
        kind = spec.subject_kind
        if kind == "org":
            return ["org"]
        value = {"agent": agent, "task": task, "model": model, "tenant": tenant}[kind]
        return [value] if value else []

    def _binding(self, spec: BudgetSpec, agent: str, task: str | None, now: float) -> list[str]:
        """The subjects of ``spec`` whose decision applies to ``agent`` now."""
        kind = spec.subject_kind
        if kind == "model":
            label = self._period(spec, now)[0]
            return [s for (k, s), at in self._uses.get(agent, {}).items()
                    if k == kind and spec.period(at)[0] == label]
        if kind == "tenant":  # any tenant it charged within the last month (expire forgets older ones)
            return [s for (k, s) in self._uses.get(agent, {}) if k == kind]
        return self._subjects(spec, agent, task, None, None)

    def _period(self, spec: BudgetSpec, now: float) -> tuple[str, float]:
        """``spec.period(now)``, computed once per budget and second: calendars cost ~10 us a call."""
        cached = self._periods.get(spec.name)
        if cached is None or cached[0] != int(now) or spec.scope == "task":
            cached = self._periods[spec.name] = (int(now), *spec.period(now))
        return cached[1], cached[2]

    def _label_at(self, spec: BudgetSpec, at: float) -> str:
        """The period label of instant ``at`` (a charge's minute), cached: charges come by the thousand
        per commit, and their minutes are few."""
        key = (spec.name, int(at))
        label = self._labels_at.get(key)
        if label is None:
            if len(self._labels_at) > 4096:
                self._labels_at.clear()
            label = self._labels_at[key] = spec.period(at)[0]
        return label

    def _account(self, spec: BudgetSpec, subject: str, now: float) -> _Account:
        """The subject's account of the current period, created (or reset, by the clock) if needed."""
        label, ends = self._period(spec, now)
        acc = self._accounts.get((spec.name, subject))
        if acc is None or acc.period != label:  # a new period: the clock reset it
            if acc is None and spec.scope == "task":
                self._task_counts[spec.name] = self._task_counts.get(spec.name, 0) + 1
            acc = self._accounts[(spec.name, subject)] = _Account(label, ends)
            if ends < self._expire_due:
                self._expire_due = ends
        return acc

    def _current(self, spec: BudgetSpec, subject: str, now: float) -> _Account | None:
        """The account of the current period if it exists: asking never creates one."""
        acc = self._accounts.get((spec.name, subject))
        return acc if acc is not None and acc.period == self._period(spec, now)[0] else None

    def decision(self, agent: str, now: float, task: str | None = None) -> tuple[str, str, float | None]:
        """(action, reason, until) for the agent now: the strictest over its budgets."""
        d = self.assess(agent, now, task)
        return d.action, d.reason, d.until

    def assess(self, agent: str, now: float, task: str | None = None) -> BudgetDecision:
        with self._lock:
            return self._decision(agent, task, now)

    def _decision(self, agent: str, task: str | None, now: float) -> BudgetDecision:
        worst, worst_rank = BudgetDecision("allow"), (0, 0.0)
        for spec in self.specs:
            for subject in self._binding(spec, agent, task, now):
                acc = self._current(spec, subject, now)
                if acc is None:
                    continue  # nothing spent this period
                limit = spec.limit(subject)
                u = acc.spent / limit + _EPS
                action = "kill" if u >= spec.kill_at else "throttle" if u >= spec.throttle_at else "allow"
                rank = (ACTIONS.index(action), u)  # the strictest action; among equals, the fullest budget
                if action == "allow" or rank <= worst_rank:
                    continue
                worst_rank = rank
                whose = "" if spec.subject_kind in ("agent", "org", "task") else f" for {spec.subject_kind} {subject}"
                worst = BudgetDecision(
                    action, f"budget {spec.name} ({spec.scope}){whose} at {u:.0%} of ${limit:g}",
                    acc.ends if acc.ends != float("inf") else None, spec.name, u,
                    _suggested_rate(spec, acc, limit, now) if action == "throttle" else None,
                    subject if spec.subject_kind == "tenant" else None)
        return worst

    def try_charge(self, agent: str, amount: float, now: float, task: str | None = None,
                   model: str | None = None, tenant: str | None = None,
                   calls: int = 1) -> tuple[bool, list[BudgetEvent]]:
        """Check and charge atomically: refused (False) while the agent's decision is kill."""
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        with self._lock:
            if self._decision(agent, task, now).action == "kill":
                return False, []
            return True, self._charge(agent, amount, now, task, model, tenant, calls)

    def charge(self, agent: str, amount: float, now: float, task: str | None = None,
               model: str | None = None, tenant: str | None = None, calls: int = 1,
               at: float | None = None, only: str | None = None) -> list[BudgetEvent]:
        """Record money already spent (what spans report): never refused.  ``at``: when it was spent
        (default ``now``); it is charged to the budgets whose current period holds that instant, so a
        late span of yesterday does not count today, as the rebuild after a restart would not count it.
        ``only``: ``"task"`` charges the task budgets alone, ``"period"`` every other budget alone (a
        commit's charges are summed per agent for the latter, and per task for the former)."""
        with self._lock:
            return self._charge(agent, amount, now, task, model, tenant, calls, at, only)

    def restore(self, budget: str, subject: str, spent: float, now: float, calls: int = 0,
                agents: list[str] | tuple[str, ...] = ()) -> None:
        """Set a period's spend from the store (at start), marking the steps it passed as alerted;
        ``agents``: those that charged this (model or tenant) subject in the period; a task's: its agent."""
        with self._lock:
            spec = next(s for s in self.specs if s.name == budget)
            acc = self._account(spec, subject, now)
            acc.spent, acc.calls, acc.last_charge = spent, calls, now
            acc.steps_crossed = frozenset(st for st in spec.steps if spent / spec.limit(subject) + _EPS >= st)
            if spec.scope == "task":
                self._touched(spec, subject, acc)
                if agents:
                    self._set_task_agent(subject, agents[0])
            key = (spec.name, subject, acc.period)  # the store holds this pipeline's own spend
            self._own[key] = [spent, calls, acc.ends]
            self._dirty.add(key)
            for agent in agents if spec.scope != "task" else ():  # who spent from it (model and tenant budgets bind them)
                uses = self._uses.setdefault(agent, {})
                uses[("agent", "")] = now
                if spec.subject_kind in ("model", "tenant"):
                    uses[(spec.subject_kind, subject)] = now

    def _charge(self, agent: str, amount: float, now: float, task: str | None, model: str | None,
                tenant: str | None, calls: int, at: float | None = None,
                only: str | None = None) -> list[BudgetEvent]:
        charged = [(spec, subject) for spec in self.specs
                   if (only is None or (spec.scope == "task") == (only == "task"))
                   # spent in another period than the current one: not charged to it
                   and (at is None or spec.scope == "task" or self._label_at(spec, at) == self._period(spec, now)[0])
                   for subject in self._subjects(spec, agent, task, model, tenant)]
        uses = self._uses.setdefault(agent, {})
        # The agent's decision can only change if this charge takes an account over its throttle or kill
        # line, or binds the agent to a model or tenant budget it was not bound to: otherwise the two
        # assessments around the charge (most of a charge's cost, thousands per commit) are skipped.
        may_change = (self._binds_anew(uses, model, tenant, now)
                      or any(self._crosses(spec, subject, amount, now) for spec, subject in charged))
        before = self._decision(agent, task, now).action if may_change else None
        if task:
            self._set_task_agent(task, agent)
        uses[("agent", "")] = now  # the agent is known while it spends (and a month after)
        for kind, value in (("model", model), ("tenant", tenant)):
            if value:
                uses[(kind, value)] = now
        events = []
        for spec, subject in charged:
            acc = self._account(spec, subject, now)
            acc.spent += amount
            acc.calls += calls
            acc.last_charge = now
            if spec.scope == "task":
                self._touched(spec, subject, acc)
            if self.fleet_alerts:
                own = self._own.setdefault((spec.name, subject, acc.period), [0.0, 0, acc.ends])
                own[0] += amount
                own[1] += calls
                self._dirty.add((spec.name, subject, acc.period))
            else:  # in a fleet, announced by whichever pipeline's contribution crosses the step
                _step_alerts(spec, subject, acc, events)
        if may_change:
            after = self._decision(agent, task, now).action
            if after != before:
                events.append(BudgetEvent("decision", "*", agent, "", 0.0, after))
        return events

    def charge_tasks(self, charges: list[tuple], now: float) -> list[BudgetEvent]:
        """``charge(agent, amount, now, task=task, calls=calls, only="task")`` for each (agent, task,
        amount, calls), under one lock: a commit charges thousands of tasks, and the general path
        spends most of its ~6 us per charge on what a task budget does not have (periods, models,
        tenants).  The events are those of the charges one by one (tests/processors/cost).

        A charge may also carry the task's whole spend so far (agent, task, amount, calls, spent, spent
        calls: the store's ``trace_rollups``, ``SpanStore.on_task_spend``): then a task budget keeps an
        account only for a task whose spend reaches its first step (``reaches_first_step``), opened with all of
        it; below that a charge raises no event and changes no decision, so a task that never gets there
        costs no account (most of them: the default's $2 budget and its 50 % step)."""
        # per task budget: the spec, its limit (a task budget has no tenant limits), lines, first step
        lines = [(s, s.limit_usd, s.throttle_at, s.kill_at, s.steps[0]) for s in self.specs if s.scope == "task"]
        events: list[BudgetEvent] = []
        inf = float("inf")
        with self._lock:
            accounts, own_spend, dirty, fleet = self._accounts, self._own, self._dirty, self.fleet_alerts
            counts, limited = self._task_counts, self._limited
            last_agent = None
            for charge in charges:
                agent, task, amount, calls = charge[:4]
                if agent != last_agent:  # the rows come grouped by agent, mostly
                    self._uses.setdefault(agent, {})[("agent", "")] = now
                    last_agent = agent
                if not task:
                    continue
                so_far = charge[4:6] if len(charge) > 4 else None
                accs = []
                may_change = False
                for spec, limit, throttle, kill, _ in lines:
                    acc = accounts.get((spec.name, task))
                    if acc is not None:
                        before, after = acc.spent / limit + _EPS, (acc.spent + amount) / limit + _EPS
                    elif so_far is None:
                        before, after = _EPS, amount / limit + _EPS
                    elif not reaches_first_step(spec, so_far[0]):
                        accs.append(None)  # below the first step: no account (the spend is in the store)
                        continue
                    else:
                        before, after = _EPS, so_far[0] / limit + _EPS
                    may_change = may_change or (before < throttle <= after) or (before < kill <= after)
                    accs.append(acc if acc is not None else False)
                if all(acc is None for acc in accs):
                    continue
                action = self._decision(agent, task, now).action if may_change else None
                self._set_task_agent(task, agent)
                for (spec, limit, throttle, _, first), acc in zip(lines, accs, strict=True):
                    if acc is None:
                        continue
                    key = (spec.name, task)
                    add, add_calls = amount, calls
                    if acc is False:
                        acc = _Account("task", inf)
                        counts[spec.name] = counts.get(spec.name, 0) + 1
                        if so_far is not None:
                            add, add_calls = so_far
                    else:
                        del accounts[key]  # back in at the end: charged last
                    accounts[key] = acc
                    acc.spent += add
                    acc.calls += add_calls
                    acc.last_charge = now
                    u = acc.spent / limit + _EPS
                    if u >= throttle:
                        limited.add((spec.name, task))
                    if fleet:
                        key = (spec.name, task, "task")
                        own = own_spend.get(key)
                        if own is None:
                            own = own_spend[key] = [0.0, 0, inf]
                        own[0] += add
                        own[1] += add_calls
                        dirty.add(key)
                    elif u >= first:
                        _step_alerts(spec, task, acc, events)
                if may_change:
                    after_action = self._decision(agent, task, now).action
                    if after_action != action:
                        events.append(BudgetEvent("decision", "*", agent, "", 0.0, after_action))
        return events

    def _touched(self, spec: BudgetSpec, task: str, acc: _Account) -> None:
        """A task account just charged (or restored): to the end of the order, aside if limited."""
        key = (spec.name, task)
        self._accounts[key] = self._accounts.pop(key)
        if acc.spent / spec.limit_usd + _EPS >= spec.throttle_at:
            self._limited.add(key)

    def task_agent(self, task: str) -> str:
        """The agent that spends in ``task`` ("" when no charge has said so since the start)."""
        with self._lock:
            return self._task_agents.get(task, "")

    def _set_task_agent(self, task: str, agent: str) -> None:
        old = self._task_agents.get(task)
        if old == agent:
            return
        self._task_agents[task] = agent
        self._agent_tasks[agent] = self._agent_tasks.get(agent, 0) + 1
        if old is not None:
            self._uncount_task_agent(old)

    def _uncount_task_agent(self, agent: str) -> None:
        left = self._agent_tasks[agent] - 1
        if left:
            self._agent_tasks[agent] = left
        else:
            del self._agent_tasks[agent]

    def _crosses(self, spec: BudgetSpec, subject: str, amount: float, now: float) -> bool:
        """Whether charging ``amount`` takes the subject's account over ``spec``'s throttle or kill line
        (an account of an ended period starts again from zero: counted as a change, it is rare)."""
        acc = self._accounts.get((spec.name, subject))
        spent = 0.0
        if acc is not None:
            if acc.period != self._period(spec, now)[0]:
                return True
            spent = acc.spent
        limit = spec.limit(subject)
        before, after = spent / limit + _EPS, (spent + amount) / limit + _EPS
        return any(before < line <= after for line in (spec.throttle_at, spec.kill_at))

    def _binds_anew(self, uses: dict[tuple[str, str], float], model: str | None, tenant: str | None,
                    now: float) -> bool:
        """Whether the charge binds the agent to a model or tenant budget that did not bind it (see
        ``_binding``): a model it has not charged in the budget's current period, a tenant not charged."""
        for kind, value in (("model", model), ("tenant", tenant)):
            if not value or not any(spec.subject_kind == kind for spec in self.specs):
                continue
            last = uses.get((kind, value))
            if last is None:
                return True
            if kind == "model" and any(spec.subject_kind == "model" and
                                       self._label_at(spec, last) != self._period(spec, now)[0] for spec in self.specs):
                return True
        return False

    def expire(self, now: float) -> list[BudgetEvent]:
        """Forget accounts whose period ended, idle task accounts, and the least recently charged task
        accounts beyond ``max_task_accounts`` per task budget; a ``reset`` event for each that had
        alerted, so its alert can resolve."""
        events: list[BudgetEvent] = []
        with self._lock:
            specs = {s.name: s for s in self.specs}
            self._expire_tasks(specs, now, events)
            if now < self._expire_due:
                return events  # no period ended, and not an hour since the last walk
            due = now + 3600.0  # at least hourly (the agents' month of uses below)
            for key, acc in list(self._accounts.items()):
                spec = specs[key[0]]
                if spec.scope == "task":
                    continue  # _expire_tasks
                if acc.ends > now:
                    due = min(due, acc.ends)
                    continue
                self._forget(key, acc, spec, events)
            self._expire_due = due
            horizon = now - 32 * 86400  # no period is longer than a month
            for agent, uses in list(self._uses.items()):
                for k, at in list(uses.items()):
                    if at < horizon:
                        del uses[k]
                if not uses:
                    del self._uses[agent]
        return events

    def _expire_tasks(self, specs: dict[str, BudgetSpec], now: float, events: list[BudgetEvent]) -> None:
        """Idle task accounts, and the least recently charged beyond ``max_task_accounts``: from the front
        of ``_accounts`` (least recently charged first) up to the first task account that stays."""
        over = {name: n - self.max_task_accounts for name, n in self._task_counts.items()
                if n > self.max_task_accounts}
        gone: list[tuple[tuple[str, str], _Account, bool]] = []
        for key, acc in self._accounts.items():
            if specs[key[0]].scope != "task":
                continue  # period accounts: the walk in expire
            if now - acc.last_charge >= TASK_IDLE_S:
                gone.append((key, acc, False))
            elif over.get(key[0], 0) > 0:
                over[key[0]] -= 1
                gone.append((key, acc, True))
            elif not any(n > 0 for n in over.values()):
                break  # charged later than this one: not idle; and no budget over its bound
        for key, acc, evicted in gone:
            self._forget(key, acc, specs[key[0]], events)
            self.evicted_tasks += evicted

    def _forget(self, key: tuple[str, str], acc: _Account, spec: BudgetSpec, events: list[BudgetEvent]) -> None:
        del self._accounts[key]
        own = (key[0], key[1], acc.period)
        self._own.pop(own, None)
        self._pushed.pop(own, None)
        self._dirty.discard(own)
        agent = None
        if spec.scope == "task":
            self._task_counts[key[0]] -= 1
            self._limited.discard(key)
            agent = self._task_agents.pop(key[1], None)
            if agent is not None:
                self._uncount_task_agent(agent)
        if acc.steps_crossed:
            events.append(BudgetEvent("reset", spec.name, key[1], acc.period, acc.spent / spec.limit(key[1]),
                                      acc.period, agent or ""))

    def known_agents(self) -> set[str]:
        """Agents that spent within the last month (the longest period), or have a running task."""
        with self._lock:
            return set(self._uses) | set(self._agent_tasks)

    def limited_tasks(self, now: float) -> list[tuple[str, str]]:
        """(agent, task) of every task whose own budget throttles or kills it now."""
        with self._lock:
            out = []
            limited = sorted(self._limited)
            for spec in self.specs:
                if spec.scope != "task":
                    continue
                for name, task in limited:
                    acc = self._accounts.get((name, task)) if name == spec.name else None
                    if acc is not None and acc.spent / spec.limit_usd + _EPS >= spec.throttle_at:
                        out.append((self._task_agents.get(task, ""), task))
            return out

    def spent(self, budget: str, subject: str, now: float) -> float:
        with self._lock:
            spec = next(s for s in self.specs if s.name == budget)
            acc = self._current(spec, subject, now)
            return acc.spent if acc is not None else 0.0

    def accounts(self, now: float) -> list[dict]:
        """Every account of the current periods, with its utilisation (for /v1/costs)."""
        with self._lock:
            specs = {s.name: s for s in self.specs}
            out = []
            for (name, subject), acc in sorted(self._accounts.items()):
                spec = specs[name]
                if spec.scope != "task" and acc.period != spec.period(now)[0]:
                    continue
                limit = spec.limit(subject)
                account = {"budget": name, "scope": spec.scope, "subject": subject, "period": acc.period,
                           "spent_usd": round(acc.spent, 9), "limit_usd": limit,
                           "utilisation": round(acc.spent / limit, 6), "calls": acc.calls,
                           "resets_at": acc.ends if acc.ends != float("inf") else None}
                if spec.scope == "task":
                    account["agent_id"] = self._task_agents.get(subject)
                out.append(account)
            return out

    # --- fleet mode: what FleetBudgets exchanges with the shared state ------------------

    def contributions(self, now: float, everything: bool = False) -> list[tuple[str, str, str, float, int, float]]:
        """(budget, period, subject, own spend, own calls, expire at) of this pipeline's accounts changed
        since Redis last acknowledged them (``everything``: of all of them, for a reconcile)."""
        with self._lock:
            out = []
            for key in list(self._own) if everything else list(self._dirty):
                own = self._own.get(key)
                if own is not None:
                    name, subject, period = key
                    expire = now + TASK_IDLE_S if period == "task" else own[2] + 2 * 86400
                    out.append((name, period, subject, own[0], own[1], expire))
            return out

    def plan(self, agent: str, amount: float, now: float, task: str | None, model: str | None,
             tenant: str | None, calls: int) -> list[tuple[str, str, str, float, int, float]]:
        """The contributions this pipeline would hold after charging ``amount`` (for an atomic fleet charge)."""
        with self._lock:
            out = []
            for spec in self.specs:
                for subject in self._subjects(spec, agent, task, model, tenant):
                    label, ends = self._period(spec, now)
                    own = self._own.get((spec.name, subject, label), [0.0, 0, ends])
                    expire = now + TASK_IDLE_S if label == "task" else ends + 2 * 86400
                    out.append((spec.name, label, subject, own[0] + amount, own[1] + calls, expire))
            return out

    def kill_lines(self, agent: str, now: float, task: str | None = None) -> list[tuple[str, str, str, float]]:
        """(budget, period, subject, USD) of every account whose kill point kills ``agent``."""
        with self._lock:
            return [(spec.name, self._period(spec, now)[0], subject, (spec.kill_at - _EPS) * spec.limit(subject))
                    for spec in self.specs for subject in self._binding(spec, agent, task, now)]

    def acknowledged(self, sent: list[tuple[str, str, str, float, int, float]], totals: list, now: float) -> list[BudgetEvent]:
        """Redis holds ``sent`` and answered the fleet's ``totals`` (before, after, calls): they become the
        local view (plus what was charged here since), and each step that *this* contribution took the
        fleet over is announced here: the script's atomic before/after makes that one pipeline."""
        events = []
        with self._lock:
            specs = {s.name: s for s in self.specs}
            for (name, period, subject, spent, _calls, _), total in zip(sent, totals, strict=True):
                key = (name, subject, period)
                own = self._own.get(key)
                self._pushed[key] = spent
                if own is not None and own[0] == spent:
                    self._dirty.discard(key)
                spec = specs[name]
                acc = self._current(spec, subject, now)
                if acc is None or acc.period != period:
                    continue
                acc.spent = total.after + ((own[0] if own else spent) - spent)
                acc.calls = max(acc.calls, total.calls)
                if spec.scope == "task" and acc.spent / spec.limit_usd + _EPS >= spec.throttle_at:
                    self._limited.add((name, subject))
                limit = spec.limit(subject)
                before, after = total.before / limit + _EPS, total.after / limit + _EPS
                for step in spec.steps:
                    if before < step <= after and step not in acc.steps_crossed:
                        events.append(BudgetEvent("alert", name, subject, period, after, f"{step:g}"))
                    if step <= after and step not in acc.steps_crossed:
                        acc.cross(step)
        return events

    def local_alerts(self, now: float) -> list[BudgetEvent]:
        """While the fleet is unreachable: the steps this pipeline's local view crossed (each pipeline
        announces its own, so an outage can announce a step once per pipeline)."""
        events = []
        with self._lock:
            specs = {s.name: s for s in self.specs}
            for name, subject, period in list(self._dirty):
                spec = specs[name]
                acc = self._current(spec, subject, now)
                if acc is None:
                    continue
                u = acc.spent / spec.limit(subject) + _EPS
                for step in spec.steps:
                    if u >= step and step not in acc.steps_crossed:
                        acc.cross(step)
                        events.append(BudgetEvent("alert", name, subject, period, u, f"{step:g}"))
        return events

    def fleet_accounts(self, now: float) -> list[tuple[str, str, list[str]]]:
        """What a refresh reads: each period budget's current period whole, each task budget's local tasks."""
        with self._lock:
            return [(spec.name, self._period(spec, now)[0],
                     [s for (n, s) in self._accounts if n == spec.name] if spec.scope == "task" else [])
                    for spec in self.specs]

    def forget_pushed(self) -> None:
        """Redis lost its data (a restart without persistence): nothing of ours is there any more."""
        with self._lock:
            self._pushed.clear()
            self._dirty.update(self._own)

    def fleet_view(self, totals: dict[tuple[str, str, str], tuple[float, int]], now: float) -> bool:
        """The fleet's totals as the local view (plus this pipeline's spend Redis does not hold yet);
        steps the fleet passed are marked without announcing (the pipeline that crossed them did).
        Whether any account changed."""
        changed = False
        with self._lock:
            specs = {s.name: s for s in self.specs}
            for (name, period, subject), (spent, calls) in totals.items():
                spec = specs.get(name)
                if spec is None or (spec.scope != "task" and period != self._period(spec, now)[0]):
                    continue
                key = (name, subject, period)
                own = self._own.get(key)
                view = spent + (max(own[0] - self._pushed.get(key, 0.0), 0.0) if own else 0.0)
                acc = self._account(spec, subject, now)
                changed |= abs(acc.spent - view) > 1e-12
                acc.spent, acc.calls = view, max(acc.calls, calls)
                if spec.scope == "task" and view / spec.limit_usd + _EPS >= spec.throttle_at:
                    self._limited.add((name, subject))
                acc.steps_crossed |= frozenset(st for st in spec.steps if spent / spec.limit(subject) + _EPS >= st)
        return changed

    # --- persistence: what a restart needs ---------------------------------------------

    def state(self) -> list[tuple[str, str, str, float, float, list[float]]]:
        with self._lock:
            return [(name, subject, a.period, a.ends, a.spent, sorted(a.steps_crossed))
                    for (name, subject), a in self._accounts.items()]

    @classmethod
    def from_state(cls, specs: list[BudgetSpec], rows) -> BudgetLedger:
        ledger = cls(specs)
        for name, subject, period, ends, spent, steps in rows:
            spec = next((s for s in specs if s.name == name), None)
            if spec is not None and spec.scope == "task":  # their agents come back with their next charge
                ledger._task_counts[name] = ledger._task_counts.get(name, 0) + 1
                if spent / spec.limit_usd + _EPS >= spec.throttle_at:
                    ledger._limited.add((name, subject))
            ledger._accounts[(name, subject)] = _Account(period, ends, spent, 0, frozenset(steps))
        return ledger


def reaches_first_step(spec: BudgetSpec, spent: float) -> bool:
    """Whether a task's spend so far reaches the first step of its task budget ``spec``: below it a task
    raises no event and changes no decision, and has no account (``BudgetLedger.charge_tasks``)."""
    return spent / spec.limit_usd + _EPS >= spec.steps[0]


def _step_alerts(spec: BudgetSpec, subject: str, acc: _Account, events: list[BudgetEvent]) -> None:
    """An alert for each step of ``spec`` the account has now reached and had not (added to ``events``)."""
    u = acc.spent / spec.limit(subject) + _EPS
    for step in spec.steps:
        if u >= step and step not in acc.steps_crossed:
            acc.cross(step)
            events.append(BudgetEvent("alert", spec.name, subject, acc.period, u, f"{step:g}"))


def _suggested_rate(spec: BudgetSpec, acc: _Account, limit: float, now: float) -> float | None:
    """Calls per minute that reach the kill point only at the reset (None: no average or no reset)."""
    if acc.calls <= 0 or acc.spent <= 0 or acc.ends == float("inf"):
        return None
    minutes_left = max((acc.ends - now) / 60.0, 1.0)
    headroom = max(spec.kill_at * limit - acc.spent, 0.0)
    return float(f"{headroom / (acc.spent / acc.calls) / minutes_left:.2g}")  # two significant digits


def readable_rate(per_min: float) -> str:
    """A suggested rate as a person reads it: "12 calls/min", "1 call every 40 s", "1 call every 4.6 h"."""
    if per_min <= 0:
        return "no more calls this period"
    if per_min >= 1:
        text = f"{per_min:.2g}" if per_min < 10 else f"{round(per_min)}"
        return f"{text} call{'' if text == '1' else 's'}/min"
    seconds = 60 / per_min
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"1 call every {seconds / size:.2g} {unit}"
    return f"1 call every {seconds:.2g} s"


def utc(*args) -> float:
    """A UTC instant as a Unix time (for tests and callers with calendar times)."""
    return datetime(*args, tzinfo=timezone.utc).timestamp()


class FleetBudgets:
    """A ledger whose spend is the fleet's (``state: redis://…``): every pipeline adds its own spend to
    shared totals (``pipeline/storage/shared_state.py``) and decides from its ledger, which holds the
    fleet's totals as of the last ``refresh`` plus its own spend since: decisions stay memory-fast, and
    are at most one refresh interval (plus one round trip) behind the fleet.

    Unreachable Redis: charges go on in the local ledger (the pipeline's last fleet view plus its own
    spend) and step alerts come from that view.  Reconcile, at the next refresh that reaches Redis:
    every contribution of this pipeline is set again (idempotent: Redis adds only what it does not hold
    of it), so spend counted locally during the outage is counted in the fleet once; if Redis lost its
    data meanwhile (``epoch`` changed), every pipeline sends all of its current periods' spend again and
    the totals are whole once all of them have reconciled.  Until then, each pipeline's view is its own.
    """

    def __init__(self, ledger: BudgetLedger, state):  # state: agent_sre.pipeline.storage.shared_state.SharedState
        from agent_sre.pipeline.storage.shared_state import Contribution

        self.ledger, self.state = ledger, state
        self._contribution = Contribution
        ledger.fleet_alerts = True
        self._reconcile = True
        self._lock = threading.Lock()  # one exchange with Redis at a time: views are applied in order

    def _send(self, sent: list, checks: tuple | list = ()):
        return self.state.contribute([self._contribution(*c) for c in sent], list(checks))

    def push(self, now: float) -> list[BudgetEvent]:
        """After a commit's charges: this pipeline's changed contributions into the fleet totals."""
        with self._lock:
            if not self.state.available:
                return self.ledger.local_alerts(now)  # the refresh reconnects
            sent = self.ledger.contributions(now)
            reply = self._send(sent) if sent else (True, [])
            if reply is None:
                self._reconcile = True
                return self.ledger.local_alerts(now)
            return self.ledger.acknowledged(sent, reply[1], now)

    def refresh(self, now: float) -> tuple[bool, list[BudgetEvent]]:
        """Every refresh interval: reconnect and reconcile if needed, then the fleet's totals as the local
        view.  (whether the view changed, step alerts of a reconcile)."""
        with self._lock:
            epoch_changed = self.state.check_epoch()
            if epoch_changed is None:
                self._reconcile = True
                return False, []
            if epoch_changed:
                self.ledger.forget_pushed()
            everything = epoch_changed or self._reconcile
            sent = self.ledger.contributions(now, everything)
            events: list[BudgetEvent] = []
            if sent:
                reply = self._send(sent)
                if reply is None:
                    return False, []
                events = self.ledger.acknowledged(sent, reply[1], now)
            self._reconcile = False
            totals = self.state.totals(self.ledger.fleet_accounts(now))
            if totals is None:
                self._reconcile = True
                return False, events
            return self.ledger.fleet_view(totals, now), events

    def try_charge(self, agent: str, amount: float, now: float, task: str | None = None,
                   model: str | None = None, tenant: str | None = None,
                   calls: int = 1) -> tuple[bool, list[BudgetEvent]]:
        """Check and charge atomically across the fleet (one Lua script): refused while any account that
        kills the agent is at its kill point in the fleet's totals.  Unreachable Redis: the local ledger's
        ``try_charge``."""
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        with self._lock:
            planned = self.ledger.plan(agent, amount, now, task, model, tenant, calls)
            reply = self._send(planned, self.ledger.kill_lines(agent, now, task)) if self.state.available else None
            if reply is None:
                self._reconcile = True
                ok, events = self.ledger.try_charge(agent, amount, now, task, model, tenant, calls)
                return ok, events + (self.ledger.local_alerts(now) if ok else [])
            if not reply[0]:
                return False, []
            events = self.ledger.charge(agent, amount, now, task, model, tenant, calls)
            return True, events + self.ledger.acknowledged(planned, reply[1], now)
