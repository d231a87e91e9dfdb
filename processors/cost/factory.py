"""cost: every LLM span gets ``cost_usd``.

Precedence: a cost the client sent (normalised into ``cost_usd`` by agent_semconv from
``agent.cost.usd``, ``gen_ai.usage.cost``, ``llm.cost.total``) > tokens x the price of the
``genai-prices`` package (maintained, small, with cached-token prices) > the YAML's
``overrides`` (private or fine-tuned models the package does not know).  A model neither
knows gets no cost: ``cost_usd`` stays null, never a silent 0, and ``agent-sre cost
unknown-models`` lists such models from the store.

Prices are resolved once per (provider, model) and applied column-wise; only models with
tiered prices (e.g. above 128k tokens) are priced span by span with the package's own
calculation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from genai_prices import Usage, calc_price
from pydantic import Field, model_validator

from agent_sre.pipeline.component import Factory, Kind, Processor
from agent_sre.pipeline.component.capabilities import CostReports, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration
from agent_sre.pipeline.component.decisions import ALLOW, Decision
from agent_sre.pipeline.component.events import event
from agent_sre.pipeline.component.host import CapabilityError
from agent_sre.pipeline.component.periodic import PeriodicWorker
from agent_sre.pipeline.storage.rollups import TENANT_SQL
from agent_sre.pipeline.storage.shared_state import StateUrl
from agent_sre.processors.cost.budget import (
    MAX_TASK_ACCOUNTS,
    SCOPES,
    BudgetEvent,
    BudgetLedger,
    BudgetSpec,
    FleetBudgets,
    readable_rate,
)
from agent_sre.processors.cost.claims import (
    ELSEWHERE_DDL,
    Charge,
    charges,
    elsewhere_rows,
    keys_of,
    priced_spans,
)
from agent_sre.processors.cost.summary import cost_summary, restore_budgets

# Task accounts get at most this share of the pipeline's memory limit when max_task_accounts is not set;
# one holds ~450 bytes (measured: forgetting 50,000 freed 21.6 MiB of Python objects).
TASK_ACCOUNTS_MEMORY_SHARE = 1 / 32
TASK_ACCOUNT_BYTES = 450
TASK_ACCOUNTS_FLOOR = 1_000


class PriceOverride(ConfigModel):
    input_per_mtok: float = Field(ge=0)  # USD per million input tokens
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)  # default: the input price

    def linear(self) -> LinearPrice:
        """USD per token (what ``priced`` applies), from these USD per million tokens."""
        cached = self.cached_input_per_mtok if self.cached_input_per_mtok is not None else self.input_per_mtok
        return LinearPrice(self.input_per_mtok / 1e6, self.output_per_mtok / 1e6, cached / 1e6)


class BudgetConfig(ConfigModel):
    name: str
    scope: Literal[SCOPES]  # type: ignore[valid-type]
    limit_usd: float = Field(gt=0)
    alert_steps: list[float] = [0.5, 0.75, 0.9]
    throttle_at: float = Field(default=0.85, gt=0)
    kill_at: float = Field(default=0.95, gt=0)
    tz: str = "UTC"
    # tenant -> its own limit (USD), for a tenant_day/tenant_month budget; other tenants get limit_usd.
    tenant_limits_usd: dict[str, Annotated[float, Field(gt=0)]] = {}

    def spec(self) -> BudgetSpec:
        return BudgetSpec(self.name, self.scope, self.limit_usd, tuple(self.alert_steps), self.throttle_at,
                          self.kill_at, self.tz, tuple(sorted(self.tenant_limits_usd.items())))

    @model_validator(mode="after")
    def _valid(self) -> BudgetConfig:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        self.spec()  # raises ValueError with the reason
        return self


class CostConfig(ConfigModel):
    overrides: dict[str, PriceOverride] = {}  # model name -> price, for models genai-prices does not know
    budgets: list[BudgetConfig] = []  # charged from the store as spans are committed (needs a duckdb exporter)
    storage: str = ""  # which duckdb exporter's store (its id); empty: the only one
    # Budgets shared by the fleet: redis://host:port/db.  Decisions read the local view, refreshed every
    # state_refresh (their staleness bound); state_instance names this pipeline (default: the host name).
    state: StateUrl = ""
    state_refresh: Duration = Field(default="250ms", gt=0)
    state_instance: str = ""
    # With state: how long a priced span's claim lasts in Redis; a client's re-send of it to another
    # pipeline within this is charged once in the fleet (processors/cost/claims.py).
    claim_window: Duration = Field(default="5m", gt=0)
    # Task budgets: at most this many running tasks' accounts per budget (~450 bytes each with its id);
    # beyond it the least recently charged is forgotten before its hour of idleness is up (counted, logged).
    # Not set, it is also held to a 32nd of the pipeline's memory limit (18,641 at 256 MiB).
    max_task_accounts: int = Field(default=MAX_TASK_ACCOUNTS, gt=0)


@dataclass(frozen=True)
class LinearPrice:
    input: float  # USD per token
    output: float
    cached: float


class Pricer:
    """(provider, model) -> a price: linear (column-wise), the package's own (tiered), or None."""

    def __init__(self, overrides: dict[str, PriceOverride]):
        self.overrides = overrides
        self._cache: dict[tuple[str | None, str], LinearPrice | object | None] = {}
        self._lock = threading.Lock()

    def price(self, provider: str | None, model: str):
        key = (provider, model)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._resolve(provider, model)
            return self._cache[key]

    def _resolve(self, provider: str | None, model: str):
        for provider_id in ((provider, None) if provider else (None,)):
            try:
                found = calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=provider_id)
            except LookupError:
                continue
            mp = found.model_price
            rates = (mp.input_mtok, mp.output_mtok, mp.cache_read_mtok)
            if all(r is None or isinstance(r, (int, float)) or type(r).__name__ == "Decimal" for r in rates):
                inp = float(mp.input_mtok or 0) / 1e6
                return LinearPrice(inp, float(mp.output_mtok or 0) / 1e6,
                                   float(mp.cache_read_mtok) / 1e6 if mp.cache_read_mtok is not None else inp)
            return mp  # tiered: priced span by span by the package
        o = self.overrides.get(model)
        if o is not None:
            return o.linear()
        return None


def _ints(col) -> np.ndarray:
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.float64)


def priced(batch: pa.Table, pricer: Pricer) -> pa.Table:
    """``batch`` with cost_usd filled for LLM spans that have a model and no cost yet."""
    need = pc.and_(pc.and_(pc.equal(batch.column("span_role"), "llm"), pc.is_null(batch.column("cost_usd"))),
                   pc.is_valid(batch.column("model")))
    need = pc.fill_null(need, False).to_numpy(zero_copy_only=False)
    if not need.any():
        return batch
    cost = batch.column("cost_usd").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
    rows = np.flatnonzero(need)  # only the spans to price are read further (a third of a batch, or less)
    sub = batch.select(["provider", "model", "input_tokens", "output_tokens", "cached_tokens"]).take(rows)
    inp, out, cached = (_ints(sub.column(c)) for c in ("input_tokens", "output_tokens", "cached_tokens"))
    # One id per (provider, model) pair, column-wise: Python then runs once per pair, not per span.
    pair = pc.binary_join_element_wise(pc.fill_null(sub.column("provider"), ""), sub.column("model"), "\x1f")
    if isinstance(pair, pa.ChunkedArray):
        pair = pair.combine_chunks()
    encoded = pc.dictionary_encode(pair)
    ids = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    for k, key in enumerate(encoded.dictionary.to_pylist()):
        mine = np.flatnonzero(ids == k)
        provider, _, model = key.partition("\x1f")
        price = pricer.price(provider or None, model)
        if price is None:
            continue
        if isinstance(price, LinearPrice):
            uncached = np.maximum(inp[mine] - cached[mine], 0)
            cost[rows[mine]] = uncached * price.input + cached[mine] * price.cached + out[mine] * price.output
        else:
            for i in mine:  # tiered prices: the package's own calculation
                usage = Usage(input_tokens=int(inp[i]), output_tokens=int(out[i]), cache_read_tokens=int(cached[i]))
                cost[rows[i]] = float(price.calc_price(usage)["total_price"])
    column = pa.array(cost, pa.float64(), mask=np.isnan(cost))
    return batch.set_column(batch.schema.get_field_index("cost_usd"), "cost_usd", column)


class CostProcessor(Processor):
    config: CostConfig

    def __init__(self, settings, config: CostConfig):
        super().__init__(settings, config)
        self.pricer = Pricer(config.overrides)
        self.clock = time.time  # tests move time
        self.ledger = BudgetLedger([b.spec() for b in config.budgets])
        self.ledger.max_task_accounts = config.max_task_accounts
        self._evicted_logged = (0, 0.0)  # (evicted tasks, when) at the last warning
        self._store = None
        self._host = None
        self.fleet: FleetBudgets | None = None
        self._by_task = False
        self._refresher: PeriodicWorker | None = None

    def _start(self, host) -> None:
        self._host = host
        if "max_task_accounts" not in self.config.model_fields_set:  # shrunk under a small memory limit
            self.ledger.max_task_accounts = host.memory_share(
                TASK_ACCOUNTS_MEMORY_SHARE, self.config.max_task_accounts * TASK_ACCOUNT_BYTES,
                TASK_ACCOUNTS_FLOOR * TASK_ACCOUNT_BYTES) // TASK_ACCOUNT_BYTES
            if self.ledger.max_task_accounts < self.config.max_task_accounts:
                self.logger.info("sized for the pipeline's %d MiB memory limit: max_task_accounts %d (set it to "
                                 "override)", host.memory_limit_bytes >> 20, self.ledger.max_task_accounts)
        host.provide(CostReports, self.id, self)
        try:
            self._store = host.get(SpanStore, self.config.storage, str(self.id))
        except CapabilityError:
            if self.config.budgets:
                raise  # budgets are charged from committed spans
            return  # pricing only: nothing to charge or report from
        if not self.config.budgets:
            return
        by_task = any(s.scope == "task" for s in self.ledger.specs)
        state = self._connect(host) if self.config.state else None
        if state is not None:
            self._store.write([(ELSEWHERE_DDL, [])])
            self._claim_recent(state)
        self._rebuild(self._store, every_task=state is not None)  # a fleet's tasks: all of them
        if state is not None:
            self._share(state)
            # charged from the committed rows: each priced span once in the fleet (claims.py)
            self._by_task = by_task
            self._store.on_commit(self._charged_once)
        else:
            self._store.on_charges(self._charged)
            if by_task:  # each trace's spend from the store: accounts only for tasks near a line
                self._store.on_task_spend(self._task_spend)
        host.decisions.register(str(self.id), self)

    def _connect(self, host):
        from agent_sre.pipeline.storage.shared_state import SharedState, kept_claim_token

        # the name's claim token is the store's: a restart after kill -9 is not told it clashes with itself
        state = SharedState(self.config.state, self.config.state_instance, component=str(self.id),
                            claim_token=kept_claim_token(self._store, str(self.id)))
        state.bind_metrics(host.telemetry.registry)
        return state

    def _claim(self, state, spans: pa.Table) -> pa.Table:
        """The spans this pipeline charges: those it claims (all of them when Redis is unreachable); the
        others' spend is recorded in the store, which the rebuild at start leaves out."""
        keys, ok = keys_of(spans)
        lost = state.claim_spans(keys[ok], self.config.claim_window)
        if lost is None or not lost.any():
            return spans
        mask = np.zeros(spans.num_rows, dtype=bool)
        mask[np.flatnonzero(ok)[lost]] = True
        taken = spans.filter(pa.array(mask))
        self.logger.info("%d priced spans (%g USD) were claimed first by another pipeline of the fleet (a "
                         "client's re-send): not charged here", taken.num_rows, pc.sum(taken.column("cost_usd")).as_py())
        self._store.write([("INSERT INTO cost_claimed_elsewhere VALUES (?, ?, ?, ?, ?, ?, ?)", list(r))
                           for r in elsewhere_rows(taken)])  # rare: a handful of spans after a kill
        return spans.filter(pa.array(~mask))

    def _charged_once(self, rows: pa.Table) -> None:
        spans = priced_spans(rows)
        fleet = self.fleet
        if fleet is not None and spans.num_rows:
            spans = self._claim(fleet.state, spans)
        self._charged(charges(spans, self._by_task))

    def _claim_recent(self, state) -> None:
        """At start: claim again the priced spans committed within ``claim_window`` (those of a commit
        whose charge a kill cut short were never claimed), before the rebuild counts them as ours; the
        spans already recorded as another pipeline's are not asked about again."""
        since = time.time_ns() - int(self.config.claim_window * 1e9)
        recent = self._store.read(
            f"SELECT coalesce(s.agent_id, ''), s.trace_id, s.span_id, coalesce(s.model, ''), {TENANT_SQL}, s.cost_usd, "
            "s.end_ns // 60000000000 FROM span_rows s ANTI JOIN cost_claimed_elsewhere e "
            "ON e.trace_id = s.trace_id AND e.span_id = s.span_id WHERE s.received_ns >= ? AND s.cost_usd > 0", [since])
        if recent:
            names = ("agent_id", "trace_id", "span_id", "model", "tenant", "cost_usd", "minute")
            types = (pa.string(),) * 5 + (pa.float64(), pa.int64())
            self._claim(state, pa.table({n: pa.array(list(c), t) for n, c, t in zip(
                names, zip(*recent, strict=True), types, strict=True)}))

    def _share(self, state) -> None:
        """Budgets on the fleet's Redis: this pipeline's spend (rebuilt from its store) is reconciled into
        the shared totals now (or at the first refresh that reaches Redis), then refreshed on a timer."""
        self.fleet = FleetBudgets(self.ledger, state)
        self._refresh()
        self._refresher = PeriodicWorker(f"{self.id}-state", self.config.state_refresh, self._refresh,
                                         logging.getLogger(f"agent_sre.{self.id}"))
        self._refresher.start()

    def _refresh(self) -> None:
        fleet = self.fleet
        if fleet is None:
            return  # shut down meanwhile
        now = self.clock()
        changed, events = fleet.refresh(now)
        self._publish(events, now)
        if changed and self._host is not None:
            self._host.decisions.check(self.ledger.known_agents())

    def _shutdown(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self.fleet is not None:
            self.fleet.push(self.clock())  # what the last commits charged
            self.fleet.state.close()
            self.fleet = None
        if self._host is not None:
            self._host.withdraw(CostReports, self.id)
        if self._store is not None:
            self._store.remove_callback(self._charged)
            self._store.remove_callback(self._task_spend)
            self._store.remove_callback(self._charged_once)
            self._store = None

    def budget_specs(self) -> list[BudgetSpec]:
        return list(self.ledger.specs)

    def _rebuild(self, store, every_task: bool = False) -> None:
        """This period's spend from the store's cost rollup, and the running tasks' from their spans: a
        restart keeps both (the same rebuild the CLI does on a stopped pipeline's file)."""
        restore_budgets(self.ledger, store.read, self.clock(), every_task)

    def _charged(self, charges: list[Charge]) -> None:
        now = self.clock()
        events: list[BudgetEvent] = []
        # A commit's charges (claims.Charge): per agent, model, tenant and minute for the period budgets, and
        # per agent and trace (minute None) for the task budgets, when there are any (thousands of rows).
        tasks = [(agent, trace, usd, calls) for agent, trace, _, _, usd, calls, minute in charges if minute is None]
        agents = set()
        for agent, _, model, tenant, usd, calls, minute in charges:
            if minute is not None:
                agents.add(agent)
                events += self.ledger.charge(agent, usd, now, model=model or None, tenant=tenant or None, calls=calls,
                                             at=minute * 60.0, only="period" if tasks else None)
        events += self.ledger.charge_tasks(tasks, now)
        if self.fleet is not None:
            events += self.fleet.push(now)  # the fleet's totals, and the steps this pipeline took it over
        self._publish(events, now)
        if self._host is not None:
            self._host.decisions.check(agents)  # a charge that throttles or kills is announced now

    def _task_spend(self, spend: list[tuple]) -> None:
        """A commit's task charges with each task's spend so far (``SpanStore.on_task_spend``)."""
        now = self.clock()
        events = self.ledger.charge_tasks(spend, now)
        self._publish(events, now)
        if events and self._host is not None:
            self._host.decisions.check({e.subject for e in events if e.kind == "decision"})

    def _publish(self, events: list[BudgetEvent], now: float) -> None:
        rows = []
        specs = {s.name: s for s in self.ledger.specs}
        # One charge can cross several steps of one budget: announce the highest only.
        top = {(e.budget, e.subject, e.period): e for e in events if e.kind == "alert"}
        for ev in events:
            if ev.kind == "decision" or (ev.kind == "alert" and top[(ev.budget, ev.subject, ev.period)] is not ev):
                continue  # the decisions board announces decisions (with the breakers' say)
            spec = specs[ev.budget]
            if ev.kind == "alert":
                self.logger.warning("budget %s: %s%s at %.0f%% of $%g (period %s)", ev.budget,
                                    spec.subject_kind, "" if ev.subject == "org" else f" {ev.subject}",
                                    100 * ev.utilisation, spec.limit(ev.subject), ev.period)
            if spec.scope == "task" and not ev.agent:
                ev = replace(ev, agent=self.ledger.task_agent(ev.subject))
            rows.append(budget_event(spec, ev, int(now * 1e9)))
        if rows and self._host is not None:
            self._host.events.publish(rows)

    def tick(self) -> None:
        """Called every second by the decisions board: periods that ended resolve their budget alerts."""
        now = self.clock()
        self._publish(self.ledger.expire(now), now)
        evicted, logged_at = self.ledger.evicted_tasks, self._evicted_logged[1]
        if evicted > self._evicted_logged[0] and now - logged_at >= 60:
            self.logger.warning("task budgets: %d running tasks' accounts forgotten before an hour of idleness "
                                "(%d since start): more than max_task_accounts=%d were running; their spend so "
                                "far no longer counts", evicted - self._evicted_logged[0], evicted,
                                self.ledger.max_task_accounts)
            self._evicted_logged = (evicted, now)

    def decision(self, agent: str, tool: str | None = None, task: str | None = None) -> Decision:
        d = self.ledger.assess(agent, self.clock(), task)
        if d.action == "allow":
            return ALLOW
        details: dict = {"budget": d.budget, "utilisation": round(d.utilisation, 6)}
        if d.tenant is not None:
            details["tenant"] = d.tenant
        if d.suggested_rate_per_min is not None:
            details["suggested_rate_per_min"] = d.suggested_rate_per_min
            details["suggested_rate"] = readable_rate(d.suggested_rate_per_min)
        return Decision(d.action, d.reason, d.until, details)

    def agents(self) -> set[str]:
        return self.ledger.known_agents()

    def scopes(self) -> list[tuple[str, str | None, str | None]]:
        """(agent, tool, task) decisions the board announces besides the agents': limited tasks."""
        return [(agent, None, task) for agent, task in self.ledger.limited_tasks(self.clock())]

    def costs(self, days: int = 7) -> dict:
        """What /v1/costs answers: spend per day, agent and model with utilisation, and every budget."""
        now = self.clock()
        rows = cost_summary(self._store.read, self.ledger.specs, now, days) if self._store is not None else []
        return {"summary": rows, "budgets": self.ledger.accounts(now)}

    def fleet_costs(self, source, days: int = 7) -> dict:
        """What costs() answers, over every pipeline's spend in the fleet store (processors/cost/fleet.py)."""
        from agent_sre.processors.cost.fleet import fleet_costs

        summary, budgets = fleet_costs(source, list(self.ledger.specs), self.clock(), days)
        return {"summary": summary, "budgets": budgets}

    def budgets(self) -> list[dict]:
        """Every budget's account of the current period, from memory (what /v1/costs lists under "budgets")."""
        return self.ledger.accounts(self.clock())

    def process(self, batch: pa.Table) -> pa.Table:
        return priced(batch, self.pricer)

    def describe(self) -> list[str]:
        """What /v1/status shows: the budgets, and with shared state whose view decides now."""
        lines: list[str] = []
        if self.fleet is not None:
            lines.append(self.fleet.state.describe_line("shared state", self.config.state_refresh,
                                                         "deciding from the local view"))
        return lines

    def state_status(self) -> dict | None:
        """The shared state's status (None without ``state``): for /v1/status."""
        return self.fleet.state.status() if self.fleet is not None else None


def budget_event(spec: BudgetSpec, ev: BudgetEvent, now_ns: int) -> dict:
    """A ``budget`` event: a step crossed (firing; ``page`` once at the kill point) or the period's reset."""
    limit = spec.limit(ev.subject)
    labels = {"budget": spec.name, "scope": spec.scope, "subject": ev.subject, "period": ev.period,
              "utilisation": f"{ev.utilisation:.4f}", "limit_usd": f"{limit:g}"}
    if spec.subject_kind in ("agent", "tenant"):
        labels["agent_id" if spec.subject_kind == "agent" else "tenant"] = ev.subject
    elif ev.agent:  # a task's: the incident it opens is its agent's
        labels["agent_id"] = ev.agent
    identity = {"budget": spec.name, "subject": ev.subject, "period": ev.period}
    who = f"{spec.subject_kind} {ev.subject}" if spec.subject_kind != "org" else "the org"
    if ev.kind == "reset":
        return event("budget", "resolved", "ticket", f"{spec.name} reset", labels,
                     f"budget {spec.name} ({spec.scope}) of {who}: period {ev.period} ended at "
                     f"{ev.utilisation:.0%} of ${limit:g}", identity, now_ns)
    labels["step"] = ev.detail
    severity = "page" if ev.utilisation >= spec.kill_at else "ticket"
    return event("budget", "firing", severity, f"{spec.name} {float(ev.detail):.0%}", labels,
                 f"budget {spec.name} ({spec.scope}) of {who} at {ev.utilisation:.0%} of ${limit:g} "
                 f"(crossed {float(ev.detail):.0%}; throttle at {spec.throttle_at:.0%}, kill at {spec.kill_at:.0%})",
                 identity, now_ns)


factory = Factory(
    type="cost",
    kind=Kind.PROCESSOR,
    config_model=CostConfig,
    create=CostProcessor,
    description="cost_usd for every LLM span: the client's cost, else tokens x genai-prices, else YAML overrides.",
)
