"""What-if: what the SRE loop would have said over a range of stored spans, under other conditions.

``what_if(read, since_ns, until_ns, changes, config)`` takes the spans that ended in the range and
computes, twice — once from the spans as stored (**actual**) and once with the changes applied
(**what-if**), by the same code, so every difference is the changes' and nothing else's:

- cost per span, per task (trace) and per agent and day (the cost processor's ``priced`` for
  re-priced spans; the store's own charge query over the range for the sums);
- the SLIs per objective and agent (the store's rollup SQL over the changed spans, added to the
  minutes before the range as the store rolled them up), the SLO rows ``agent-sre slo status``
  shows at the end of the range (``processors.slo.factory.evaluate``) and the burn-rate alerts that
  fired and resolved minute by minute (``BurnRateRule.firing_at``);
- the budgets replayed minute by minute through the cost processor's ``BudgetLedger`` (from the
  spend of the current periods before the range): the steps crossed and the throttles and kills;
- with breakers configured, the circuit breakers replayed over the agents' calls
  (``CircuitBreaker``): the opens that would have happened.

The changes (``Changes``), and what each assumes (also listed in the answer, ``assumptions``):

- **re-price** (``reprice`` A→B, or a price table in ``prices``): the LLM spans of A cost what
  their tokens (input, cached, output) cost at B's price — ``prices`` first, then genai-prices,
  then the cost processor's overrides, as in the pipeline; they count as B's in model budgets.
  Latency and outputs are taken as unchanged.
- **remove a tool**: its calls vanish with every span under them; their duration comes off each
  ancestor (calls of a span are taken as sequential) and their cost off the task.  The task's
  outcome is unchanged (``task_success`` and status as recorded): the what-if assumes the agent
  did without the tool, and says so.
- **slow a tool** (``+2s`` or ``x2`` per call): each call lasts longer, and each ancestor ends
  later by the same amount (sequential calls again); other spans keep their times.
- **an SLO target** (by objective name or SLI) or **a budget's limit** (by name).

Calls a kill refused are not invented, nor are the calls a new kill would have refused removed:
spend after a kill is as recorded.  Alerts and budget decisions are evaluated at the end of each
minute (the pipeline does so every second), so their times are to the minute.

Everything per span is SQL over the range (DuckDB, column-wise), the store's own rollup and charge
SQL run over the changed spans; the what-if's per-span changes (removed spans, moved durations, new
costs) are computed once and joined by the span's key.  Python runs per minute, per charge row (as
the cost processor does per commit), per failed call (breakers), and once over the re-priced spans
(``priced`` is Arrow-columnar).  Measured on 2 loaded cores: 140k spans over a day, every change at
once, ~5-10 s; it fits the running pipeline's 48MB DuckDB pool (a range that does not raises
``RangeTooLarge``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.component.config import parse_duration
from agent_sre.pipeline.storage.rollups import (
    CHARGES_BY_TASK_SQL,
    CHARGES_SQL,
    REPLAY_KEY,
    SPAN_ROLLUP_SQL,
    TRACE_ROLLUP_COLUMNS,
    SliRollup,
    _span_select,
    _task_select,
)
from agent_sre.pipeline.storage.store import MAP_COLUMNS
from agent_sre.processors.cost.budget import BudgetLedger, BudgetSpec
from agent_sre.processors.cost.factory import PriceOverride, Pricer, priced
from agent_sre.processors.incidents.breaker import CLOSED, OPEN, BreakerSettings, CircuitBreaker
from agent_sre.processors.slo.budget import MinuteSeries, allowed_error_rate
from agent_sre.processors.slo.factory import Objective, evaluate, window_end

__all__ = ["Changes", "RangeTooLarge", "SlowTool", "WhatIfConfig", "config_from_settings", "parse_request", "render_what_if", "what_if"]

Query = Callable[[str, list], list[tuple]]
MINUTE_NS = 60 * 10**9
TOP = 10  # tasks listed as the most changed
MAX_EVENTS = 50  # alerts and decisions listed per column (all are counted)


# --- what changes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SlowTool:
    """Each call of ``tool`` lasts ``add_ns`` longer, or ``factor`` times as long."""

    tool: str
    add_ns: int = 0
    factor: float = 1.0

    @classmethod
    def parse(cls, tool: str, how: str) -> SlowTool:
        """``how``: a duration added to each call (``2s``, ``+500ms``) or a factor (``x2``, ``2x``)."""
        text = str(how).strip().lower()
        try:
            if text.startswith(("x", "*")) or text.endswith("x"):
                factor = float(text.strip("x*"))
                if not math.isfinite(factor) or factor < 0:
                    raise ValueError
                return cls(tool, 0, factor)
            return cls(tool, int(round(parse_duration(text.lstrip("+")) * 1e9)), 1.0)
        except ValueError:
            raise ValueError(f"slow tool {tool}: {how!r} is neither a duration added to each call (2s, 500ms) "
                             "nor a factor (x2)") from None

    def describe(self) -> str:
        return f"{self.tool} x{self.factor:g}" if self.add_ns == 0 else f"{self.tool} +{self.add_ns / 1e9:g}s"


@dataclass(frozen=True)
class Changes:
    """The conditions of the what-if (all optional; none: both columns are equal)."""

    reprice: dict[str, str] = field(default_factory=dict)  # model -> the model whose price it pays
    prices: dict[str, PriceOverride] = field(default_factory=dict)  # model -> price, over the price table
    remove_tools: tuple[str, ...] = ()
    slow_tools: tuple[SlowTool, ...] = ()
    slo_targets: dict[str, float] = field(default_factory=dict)  # objective name or SLI -> target
    budgets: dict[str, float] = field(default_factory=dict)  # budget name -> limit (USD)

    def __post_init__(self) -> None:
        both = set(self.remove_tools) & {s.tool for s in self.slow_tools}
        if both:
            raise ValueError(f"tool {sorted(both)[0]} is both removed and slowed")
        for name, target in self.slo_targets.items():
            try:
                allowed_error_rate(target)
            except ValueError as exc:
                raise ValueError(f"SLO {name}: {exc}") from None
        for name, usd in self.budgets.items():
            if not usd > 0:
                raise ValueError(f"budget {name}: the limit must be a positive amount of USD, got {usd!r}")

    @classmethod
    def from_dict(cls, body: dict) -> Changes:
        """From JSON (``POST /v1/what-if``): ``reprice`` {model: model} or ["A=B"], ``prices`` {model:
        {input_per_mtok, output_per_mtok, cached_input_per_mtok}}, ``remove_tools`` [tool],
        ``slow_tools`` {tool: "2s" | "x2"} or ["T=2s"], ``slo`` {name: target}, ``budgets`` {name: usd}."""
        unknown = set(body) - {"reprice", "prices", "remove_tools", "slow_tools", "slo", "budgets"}
        if unknown:
            raise ValueError(f"unknown change {sorted(unknown)[0]!r} (valid: reprice, prices, remove_tools, "
                             "slow_tools, slo, budgets)")
        try:
            prices = {str(m): PriceOverride(**p) for m, p in _mapping(body.get("prices"), "prices", parse=False).items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"prices: {exc}") from None
        tools = body.get("remove_tools") or []
        if isinstance(tools, str) or not all(isinstance(t, str) and t for t in tools):
            raise ValueError("remove_tools: a list of tool names")
        return cls(
            reprice={k: str(v) for k, v in _mapping(body.get("reprice"), "reprice").items()},
            prices=prices, remove_tools=tuple(dict.fromkeys(tools)),
            slow_tools=tuple(SlowTool.parse(t, h) for t, h in _mapping(body.get("slow_tools"), "slow_tools").items()),
            slo_targets={k: _number(v, f"slo {k}") for k, v in _mapping(body.get("slo"), "slo").items()},
            budgets={k: _number(v, f"budget {k}") for k, v in _mapping(body.get("budgets"), "budgets").items()})

    def describe(self) -> list[str]:
        out = [f"re-price {a} as {b}" for a, b in self.reprice.items()]
        out += [f"price {m} at ${p.input_per_mtok:g}/${p.output_per_mtok:g} per Mtok in/out" for m, p in self.prices.items()]
        out += [f"remove tool {t}" for t in self.remove_tools]
        out += [f"slow tool {s.describe()}" for s in self.slow_tools]
        out += [f"SLO {k} target {v:g}" for k, v in self.slo_targets.items()]
        out += [f"budget {k} ${v:g}" for k, v in self.budgets.items()]
        return out


def _mapping(value, what: str, parse: bool = True) -> dict:
    """A dict, or (``parse``) a list of ``key=value`` strings, as a dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if parse and isinstance(value, (list, tuple)):
        out = {}
        for item in value:
            key, sep, val = str(item).partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
            out[key.strip()] = val.strip()
        return out
    raise ValueError(f"{what}: expected an object{' or a list of NAME=VALUE' if parse else ''}")


def _number(value, what: str) -> float:
    try:
        number = float(str(value).lstrip("$"))
    except ValueError:
        raise ValueError(f"{what}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}: not a finite number: {value!r}")
    return number


def parse_request(body: dict, now_ns: int) -> tuple[int, int, Changes]:
    """(since_ns, until_ns, changes) from a ``POST /v1/what-if`` body: ``since_ns`` (required),
    ``until_ns`` (default: now) and the changes of ``Changes.from_dict``."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    rest = {k: v for k, v in body.items() if k not in ("since_ns", "until_ns")}
    try:
        since = int(body["since_ns"])
        until = int(body.get("until_ns") or now_ns)
    except KeyError:
        raise ValueError("since_ns is required (the start of the range, Unix ns)") from None
    except (TypeError, ValueError):
        raise ValueError("since_ns and until_ns must be integers (Unix ns)") from None
    return since, until, Changes.from_dict(rest)


@dataclass(frozen=True)
class WhatIfConfig:
    """What the pipeline's config says the SRE loop is: the slo processor's objectives, the sli
    processor's SLIs (empty: those stored with the spans), the cost processor's budgets and price
    overrides, the incidents processor's breakers (None: none)."""

    objectives: tuple[Objective, ...] = ()
    slis: tuple[SliRollup, ...] = ()
    budgets: tuple[BudgetSpec, ...] = ()
    price_overrides: dict[str, PriceOverride] = field(default_factory=dict)
    breakers: BreakerSettings | None = None
    breaker_roles: tuple[str, ...] = ("tool", "llm")
    breaker_per_tool: bool = False


# --- the SQL of the range, as stored and as changed -------------------------------------------

class _Sql:
    """The CTEs of one what-if: ``base`` (the range's spans in the stored layout, so the store's own
    rollup SQL runs on them unchanged) and ``scen`` (the same spans with the changes applied).
    Parameters are numbered ($1, $2, ...) so a CTE can use one twice."""

    def __init__(self) -> None:
        self.params: list = []
        self.ctes: list[str] = []

    def fork(self) -> _Sql:
        """A copy to add a query's own parameters to (the CTEs keep theirs)."""
        other = _Sql()
        other.params, other.ctes = list(self.params), list(self.ctes)
        return other

    def param(self, value) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def run(self, read: Query, body: str, extra: str = "") -> list[tuple]:
        return read(f"WITH RECURSIVE {', '.join(self.ctes)}{extra} {body}", self.params)


def _base(read: Query, q: _Sql, since_ns: int, until_ns: int) -> None:
    """``base``: the range's spans in the stored layout, a replay's re-runs left out (they count in no
    SLI or budget).  Asking whether the range holds any costs one scan; filtering them out costs a map
    per span in every scan (0.27 s per 140k spans), so the filter is there only when needed."""
    entries = ", ".join(f"map_entries({c}) AS {c}" for c in MAP_COLUMNS)
    rerun = "coalesce(map_contains(resource_attributes, $3) OR map_contains(attributes, $3), false)"
    (reruns,), = read(f"SELECT count(*) FROM spans WHERE end_ns >= $1 AND end_ns < $2 AND {rerun}",
                      [since_ns, until_ns, REPLAY_KEY])
    since, until = q.param(since_ns), q.param(until_ns)
    skip = f" AND NOT {rerun.replace('$3', q.param(REPLAY_KEY))}" if reruns else ""
    q.ctes.append(f"base AS NOT MATERIALIZED (SELECT * REPLACE ({entries}) FROM spans "
                  f"WHERE end_ns >= {since} AND end_ns < {until}{skip})")


# A span is keyed by hash(trace_id, span_id) (64 bits) in the what-if's joins and lists: measured on
# 140k spans, the walk up the trees did not fit the pipeline's 48MB DuckDB pool with the two strings
# as keys, and binding a list parameter costs ~1 us per element (one key, not two).  A collision
# (probability ~ n^2 / 2^65: 3e-6 for 10M spans in the range) would mix two spans' changes.
_KEY = "hash(trace_id, span_id)"


def _span_changes(read: Query, q: _Sql, changes: Changes) -> dict:
    """One query over the range's span tree: the removed spans (each removed call and every span under
    it) and how far each slowed call and each ancestor of a removed or slowed call moves (calls of a
    span taken as sequential).  The answer comes back as lists that the later queries join (``chg``):
    the walk runs once, not once per query."""
    empty = {"key": [], "gone": [], "delta": [], "removed": 0, "slowed": 0}
    if not changes.remove_tools and not changes.slow_tools:
        return empty
    cq = q.fork()
    cq.ctes.append(f"tree AS NOT MATERIALIZED (SELECT {_KEY} AS k, CASE WHEN coalesce(parent_span_id, '') <> '' "
                   "THEN hash(trace_id, parent_span_id) END AS pk, span_role, tool_name, duration_ns FROM base)")
    cq.ctes.append("links AS MATERIALIZED (SELECT k, pk FROM tree WHERE pk IS NOT NULL)")
    moved = []
    if changes.remove_tools:
        tools = cq.param(list(changes.remove_tools))
        cq.ctes.append(f"gone(k) AS (SELECT k FROM tree WHERE span_role = 'tool' AND list_contains({tools}::VARCHAR[], "
                       "tool_name) UNION SELECT l.k FROM links l JOIN gone g ON l.pk = g.k)")
        # Only the outermost removed spans take their time off their ancestors: the rest is inside them.
        moved.append("SELECT t.k, t.pk, -coalesce(t.duration_ns, 0) AS delta FROM tree t SEMI JOIN gone g "
                     "ON g.k = t.k ANTI JOIN gone p ON p.k = t.pk")
    if changes.slow_tools:
        names = cq.param([x.tool for x in changes.slow_tools])
        add = cq.param([x.add_ns for x in changes.slow_tools])
        factor = cq.param([x.factor for x in changes.slow_tools])
        cq.ctes.append(f"slow AS (SELECT unnest({names}::VARCHAR[]) AS tool, unnest({add}::BIGINT[]) AS add_ns, "
                       f"unnest({factor}::DOUBLE[]) AS factor)")
        not_gone = " ANTI JOIN gone g ON g.k = t.k" if changes.remove_tools else ""
        cq.ctes.append("slowed AS (SELECT t.k, t.pk, (s.add_ns + round(coalesce(t.duration_ns, 0) * (s.factor - 1)))"
                       f"::BIGINT AS delta FROM tree t JOIN slow s ON t.span_role = 'tool' AND t.tool_name = s.tool"
                       f"{not_gone})")
        moved.append("SELECT k, pk, delta FROM slowed")
    cq.ctes.append("changed AS (" + " UNION ALL ".join(moved) + ")")
    # Each change walks up to the root (a depth bound stops a cycle of parent ids in bad data).
    cq.ctes.append("up(k, delta, depth) AS (SELECT pk, delta, 1 FROM changed WHERE pk IS NOT NULL UNION ALL "
                   "SELECT l.pk, u.delta, u.depth + 1 FROM up u JOIN links l ON l.k = u.k WHERE u.depth < 64)")
    own = " UNION ALL SELECT k, delta FROM slowed" if changes.slow_tools else ""
    # An ancestor outside the range is no span of it: the semi join keeps the range's only.
    rows = (f"SELECT m.k, false AS gone, sum(m.delta)::BIGINT AS delta FROM (SELECT k, delta FROM up{own}) m "
            "SEMI JOIN tree t ON t.k = m.k GROUP BY m.k")
    if changes.remove_tools:
        rows += " UNION ALL SELECT k, true, NULL FROM gone"
    slowed = "(SELECT count(*) FROM slowed)" if changes.slow_tools else "0"
    (keys, gones, deltas, removed, n_slowed), = cq.run(
        read, f"SELECT list(k), list(gone), list(delta), count(*) FILTER (WHERE gone), {slowed} FROM ({rows})")
    return {"key": keys or [], "gone": gones or [], "delta": deltas or [], "removed": removed, "slowed": n_slowed}


def _scenario(q: _Sql, moved: dict, repriced: dict | None) -> None:
    """``scen``: the range's spans with the changes applied (``moved`` from ``_span_changes``,
    ``repriced`` from ``_reprice``), each a hash join on the span's key."""
    replace, joins, where = [], [], "true"
    if moved["key"]:
        lists = [q.param(moved[k]) for k in ("key", "gone", "delta")]
        q.ctes.append(f"chg AS MATERIALIZED (SELECT unnest({lists[0]}::UBIGINT[]) AS k, "
                      f"unnest({lists[1]}::BOOLEAN[]) AS gone, unnest({lists[2]}::BIGINT[]) AS delta)")
        joins.append("LEFT JOIN chg m ON m.k = hash(b.trace_id, b.span_id)")
        where = "m.gone IS NOT TRUE"
        duration = "greatest(b.duration_ns + m.delta, 0)"  # parallel calls removed can take more than there was
        replace += [f"CASE WHEN m.delta IS NULL THEN b.duration_ns ELSE {duration} END AS duration_ns",
                    f"CASE WHEN m.delta IS NULL THEN b.end_ns ELSE b.end_ns + ({duration} - b.duration_ns) END AS end_ns"]
    if repriced:
        lists = [q.param(repriced[k]) for k in ("key", "model", "cost_usd")]
        q.ctes.append(f"price AS MATERIALIZED (SELECT unnest({lists[0]}::UBIGINT[]) AS k, "
                      f"unnest({lists[1]}::VARCHAR[]) AS model, unnest({lists[2]}::DOUBLE[]) AS cost_usd)")
        joins.append("LEFT JOIN price r ON r.k = hash(b.trace_id, b.span_id)")
        replace += ["coalesce(r.model, b.model) AS model",
                    "CASE WHEN r.k IS NULL THEN b.cost_usd ELSE r.cost_usd END AS cost_usd"]
    replaced = f" REPLACE ({', '.join(replace)})" if replace else ""
    q.ctes.append(f"scen AS NOT MATERIALIZED (SELECT b.*{replaced} FROM base b {' '.join(joins)} WHERE {where})")


def _trace_rollup_select() -> str:
    """The store's per-trace rollup (``SPAN_ROLLUP_SQL``, what task SLIs are computed over) as a
    SELECT over ``_batch``, its insert-time parameter made NULL: the same columns, by the same SQL."""
    select = SPAN_ROLLUP_SQL[SPAN_ROLLUP_SQL.index("SELECT"):SPAN_ROLLUP_SQL.index("ON CONFLICT")]
    if select.count("?") != 1:
        raise RuntimeError("SPAN_ROLLUP_SQL changed shape: the what-if reads its SELECT with one parameter")
    return select.replace("?", "NULL::BIGINT")


def _as_batch(rel: str) -> str:
    """``rel`` under the names the store's rollup SQL reads: the batch being inserted (``_batch``) and
    its spans that count (``_counted``: replays' re-runs are already out of ``base``)."""
    return (f", _batch AS NOT MATERIALIZED (SELECT * FROM {rel}), "
            "_counted AS NOT MATERIALIZED (SELECT * FROM _batch)")


def _column_spans(read: Query, q: _Sql, rel: str, slis: list[SliRollup], specs: list[BudgetSpec],
                  config: WhatIfConfig) -> dict:
    """All one column needs from the spans of ``rel``: the SLI minutes (the store's rollup SQL), the
    budget charges (the store's charge query; per task only for tasks that spend enough to cross a
    task budget's first step: the others raise no event) and, with breakers, the calls of each agent
    that failed some.  One query each: together they did not fit the pipeline's 48MB DuckDB pool
    (140k spans re-priced), apart they do."""
    extra = _as_batch(rel)
    span, task = [x for x in slis if x.scope == "span"], [x for x in slis if x.scope == "task"]
    minutes = [f"SELECT * FROM ({_span_select(span)})"] if span else []
    if task:  # every task of the range counts (the store counts a task once its trace is quiet)
        extra += f", trace_rollups({', '.join(TRACE_ROLLUP_COLUMNS)}) AS ({_trace_rollup_select()})"
        minutes.append(f"SELECT * FROM ({_task_select(task, 'task_end_ns IS NOT NULL')})")
    out = {"minutes": q.run(read, " UNION ALL ".join(minutes), extra) if minutes else [],
           "charges": q.run(read, CHARGES_SQL, extra), "task_charges": [], "calls": []}
    floors = [(min(x.steps) - 1e-6) * x.limit_usd for x in specs if x.scope == "task"]
    if floors:
        tq = q.fork()
        out["task_charges"] = tq.run(read, f"SELECT * FROM ({CHARGES_BY_TASK_SQL}) c WHERE c.trace_id IN (SELECT "
                                           f"trace_id FROM _counted GROUP BY trace_id HAVING sum(cost_usd) >= "
                                           f"{tq.param(min(floors))})", extra)
    if config.breakers is not None:
        bq = q.fork()
        tool = "coalesce(tool_name, '')" if config.breaker_per_tool else "''"
        only_tools = " AND coalesce(tool_name, '') <> ''" if config.breaker_per_tool else ""
        # A closed breaker opens on failures only: keys without any in the range cannot open.
        out["calls"] = bq.run(read, f"SELECT agent_id, {tool}, list(end_ns ORDER BY end_ns), list(coalesce("
                                    "status_code = 'error', false) ORDER BY end_ns) FROM _counted WHERE list_contains("
                                    f"{bq.param(list(config.breaker_roles))}::VARCHAR[], span_role) AND agent_id IS "
                                    f"NOT NULL AND end_ns IS NOT NULL{only_tools} GROUP BY ALL "
                                    "HAVING bool_or(status_code = 'error') ORDER BY ALL", extra)
    return out


# --- re-pricing --------------------------------------------------------------------------------

class _Prices:
    """The what-if's price table: ``prices`` first, then the pipeline's (genai-prices, its overrides)."""

    def __init__(self, prices: dict[str, PriceOverride], overrides: dict[str, PriceOverride]):
        self._given = {m: p.linear() for m, p in prices.items()}
        self._pricer = Pricer(overrides)

    def price(self, provider: str | None, model: str):
        return self._given.get(model) or self._pricer.price(provider, model)


def _reprice(read: Query, q: _Sql, changes: Changes, config: WhatIfConfig,
             moved: dict) -> tuple[dict | None, list[dict]]:
    """The new cost (and model) of every LLM span re-priced (removed ones aside), by the cost
    processor's ``priced``; and a summary per (model, priced as)."""
    models = sorted(set(changes.reprice) | set(changes.prices))
    if not models:
        return None, []
    rq = q.fork()
    gone = [k for k, g in zip(moved["key"], moved["gone"], strict=True) if g]
    not_gone = (f"ANTI JOIN (SELECT unnest({rq.param(gone)}::UBIGINT[]) AS k) g ON g.k = hash(b.trace_id, b.span_id) "
                if gone else "")
    old, new = rq.param(list(changes.reprice)), rq.param(list(changes.reprice.values()))
    rows = rq.run(read, "SELECT hash(b.trace_id, b.span_id), b.provider, b.model, coalesce(r.new, b.model), "
                        "b.input_tokens, b.output_tokens, b.cached_tokens, b.cost_usd FROM base b "
                        f"LEFT JOIN (SELECT unnest({old}::VARCHAR[]) AS old, unnest({new}::VARCHAR[]) AS new) r "
                        f"ON r.old = b.model {not_gone}WHERE b.span_role = 'llm' "
                        f"AND list_contains({rq.param(models)}::VARCHAR[], b.model)")
    names = ("key", "provider", "was", "model", "input_tokens", "output_tokens", "cached_tokens", "recorded_usd")
    types = (pa.uint64(),) + (pa.string(),) * 3 + (pa.int64(),) * 3 + (pa.float64(),)
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    table = pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})
    n = table.num_rows
    spans = table.append_column("span_role", pa.array(["llm"] * n, pa.string())).append_column(
        "cost_usd", pa.nulls(n, pa.float64()))
    cost = priced(spans, _Prices(changes.prices, config.price_overrides)).column("cost_usd")
    if cost.null_count:
        missing = sorted(set(pc.filter(table.column("model"), pc.is_null(cost)).to_pylist()))
        raise ValueError(f"no price for model {', '.join(missing)}: not in genai-prices, the cost processor's "
                         "overrides or the given prices")
    new_cost = cost.to_numpy(zero_copy_only=False)
    recorded = table.column("recorded_usd").to_numpy(zero_copy_only=False)  # nulls: nan
    tokens = {c: pc.fill_null(table.column(c), 0).to_numpy(zero_copy_only=False)
              for c in ("input_tokens", "output_tokens", "cached_tokens")}
    pair = pc.dictionary_encode(pc.binary_join_element_wise(table.column("was"), table.column("model"), "\x1f")
                                .combine_chunks())
    ids = pair.indices.to_numpy(zero_copy_only=False)
    summary = []
    for k, key in sorted(enumerate(pair.dictionary.to_pylist()), key=lambda kv: kv[1]):
        mine = ids == k
        was, model = key.split("\x1f")
        summary.append({"model": was, "priced_as": model, "spans": int(mine.sum()),
                        **{c: int(v[mine].sum()) for c, v in tokens.items()},
                        "actual_usd": round(float(np.nansum(recorded[mine])), 9),
                        "what_if_usd": round(float(new_cost[mine].sum()), 9)})
    repriced = {"key": list(cols[0]), "model": list(cols[3]), "cost_usd": new_cost.tolist()}
    return repriced, summary


# --- SLOs: the rows of `slo status` at the end of the range, and the alerts on the way -----------

def _slo_report(rows: list[tuple], objectives: list[Objective], since_minute: int,
                end_minute: int) -> tuple[list[dict], list[dict]]:
    """(the SLO rows at the end of the range, the burn-rate alert transitions in it) from per-minute
    (minute, sli, agent_id, agent_version, good, total): the slo processor's own evaluation runs on
    them, from a table of that shape in memory."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    # A span a slowdown moved past the end of the range counts in its last minute.
    minute = np.minimum(np.asarray(cols[0], np.int64), end_minute - 1)
    table = pa.table({"minute": pa.array(minute, pa.int64()), "sli": pa.array(cols[1], pa.string()),
                      "agent_id": pa.array(cols[2], pa.string()), "agent_version": pa.array(cols[3], pa.string()),
                      "good": pa.array(cols[4], pa.int64()), "total": pa.array(cols[5], pa.int64())})
    mem = duckdb.connect(config={"threads": 1})
    try:
        mem.register("sli_minutes", table)
        status = evaluate(lambda sql, params: mem.execute(sql, params).fetchall(), objectives, end_minute)
        by_key = {(r["slo"], r["agent_id"], r["agent_version"] or ""): r for r in status}
        transitions = []
        points = np.arange(since_minute, end_minute + 1)  # the first is the state the range starts in
        for obj in objectives:
            version = "agent_version" if obj.per_version else "''"
            for agent, ver, minutes, good, total, range_good, range_total in mem.execute(
                    "SELECT agent_id, v, list(minute ORDER BY minute), list(good ORDER BY minute), "
                    "list(total ORDER BY minute), sum(good) FILTER (WHERE minute >= $1), "
                    "sum(total) FILTER (WHERE minute >= $1) FROM (SELECT agent_id, "
                    f"{version} AS v, minute, sum(good) AS good, sum(total) AS total FROM sli_minutes "
                    "WHERE sli = $2 GROUP BY ALL) GROUP BY ALL ORDER BY ALL", [since_minute, obj.sli]).fetchall():
                row = by_key.get((obj.name, agent, ver))
                if row is not None:
                    row["range_events"], row["range_bad_events"] = int(range_total or 0), int(
                        (range_total or 0) - (range_good or 0))
                series = MinuteSeries.from_minutes(minutes, good, total)
                for rule in obj.burn_rules:
                    firing = rule.firing_at(series, points, obj.target)
                    for i in np.flatnonzero(firing[1:] != firing[:-1]) + 1:
                        transitions.append({
                            "slo": obj.name, "sli": obj.sli, "agent_id": agent,
                            "agent_version": ver if obj.per_version else None, "rule": rule.name,
                            "severity": rule.severity, "state": "firing" if firing[i] else "resolved",
                            "at_ns": int(points[i]) * MINUTE_NS})
                    if firing[0]:
                        transitions.append({
                            "slo": obj.name, "sli": obj.sli, "agent_id": agent,
                            "agent_version": ver if obj.per_version else None, "rule": rule.name,
                            "severity": rule.severity, "state": "already_firing", "at_ns": since_minute * MINUTE_NS})
    finally:
        mem.close()
    for row in status:
        row.setdefault("range_events", 0)
        row.setdefault("range_bad_events", 0)
    transitions.sort(key=lambda t: (t["at_ns"], t["slo"], t["agent_id"], t["rule"]))
    return status, transitions


def _sli_history(read: Query, slis: Iterable[str], first_minute: int, since_minute: int) -> list[tuple]:
    """The minutes before the range as the store rolled them up: the same in both columns."""
    if first_minute >= since_minute:
        return []
    return read("SELECT minute, sli, agent_id, agent_version, good, total FROM sli_minutes WHERE minute >= $1 "
                "AND minute < $2 AND list_contains($3::VARCHAR[], sli)", [first_minute, since_minute, sorted(slis)])


def _stored_slis(read: Query) -> list[SliRollup]:
    return [SliRollup(*r) for r in read(
        "SELECT name, total, good, coalesce(scope, 'span') FROM sli_rollups ORDER BY position", [])]


def _retarget(objectives: list[Objective], targets: dict[str, float]) -> list[Objective]:
    out = list(objectives)
    for name, target in targets.items():
        hit = [i for i, o in enumerate(out) if o.name == name] or [i for i, o in enumerate(out) if o.sli == name]
        if not hit:
            raise ValueError(f"no SLO objective or SLI named {name!r} (objectives: "
                             f"{', '.join(o.name for o in objectives) or 'none'}; SLIs: "
                             f"{', '.join(sorted({o.sli for o in objectives})) or 'none'})")
        for i in hit:
            out[i] = out[i].model_copy(update={"target": target})
    return out


def _relimit(specs: list[BudgetSpec], limits: dict[str, float]) -> list[BudgetSpec]:
    names = [s.name for s in specs]
    for name in limits:
        if name not in names:
            raise ValueError(f"no budget named {name!r} (budgets: {', '.join(names) or 'none'})")
    return [dataclasses.replace(s, limit_usd=limits[s.name]) if s.name in limits else s for s in specs]


# --- budgets: replayed minute by minute through the cost processor's ledger ----------------------

def _prior_spend(read: Query, specs: list[BudgetSpec], since_ns: int) -> list[tuple]:
    """(budget, subject, spent, calls, agents) of each period budget's current period before the range,
    from the store's cost rollup (as the cost processor rebuilds its ledger at start)."""
    since_minute = since_ns // MINUTE_NS
    out = []
    for spec in specs:
        if spec.scope == "task":
            continue  # a task's spend before the range is not counted
        start = int(spec.period_start(since_ns / 1e9).timestamp() // 60)
        if start >= since_minute:
            continue
        subject = {"agent": "agent_id", "org": "'org'", "model": "model", "tenant": "tenant"}[spec.subject_kind]
        for who, spent, calls, agents in read(
                f"SELECT {subject}, sum(cost_usd), sum(spans)::BIGINT, list(DISTINCT agent_id) FROM cost_minutes "
                "WHERE minute >= $1 AND minute < $2 GROUP BY ALL ORDER BY ALL", [start, since_minute]):
            if who and spent is not None:
                out.append((spec.name, who, spent, calls, agents))
    return out


def _replay_budgets(charges: list[tuple], task_charges: list[tuple], specs: list[BudgetSpec], prior: list[tuple],
                    since_ns: int, until_ns: int) -> dict:
    """The ledger's events over the range, charged minute by minute as the cost processor charges a
    commit: per agent, model and tenant for the period budgets, per task for the task budgets."""
    ledger = BudgetLedger(list(specs))
    for name, who, spent, calls, agents in prior:
        ledger.restore(name, who, spent, since_ns / 1e9, calls, agents)
    scopes = {x.name: x.scope for x in specs}
    by_task = "task" in scopes.values()
    steps: list[dict] = []
    decisions = [_decision(d, agent, None, since_ns, "already")
                 for agent in sorted({a for *_, agents in prior for a in agents if a})
                 if (d := ledger.assess(agent, since_ns / 1e9)).action != "allow"]
    rows = sorted([(r[6], 0, r) for r in charges] + [(r[6], 1, r) for r in task_charges],
                  key=lambda x: (x[0], x[1], x[2][0], x[2][1] or "", x[2][2], x[2][3]))
    for minute, group in itertools.groupby(rows, key=lambda x: x[0]):
        now = minute * 60.0
        ledger.expire(now)  # periods that ended start again
        events = []
        for _, is_task, (agent, trace, model, tenant, usd, calls, _) in group:
            if is_task:
                events += [(e, trace) for e in ledger.charge(agent, usd, now, task=trace, calls=calls, at=now,
                                                             only="task")]
            else:
                events += [(e, None) for e in ledger.charge(agent, usd, now, model=model or None,
                                                            tenant=tenant or None, calls=calls, at=now,
                                                            only="period" if by_task else None)]
        for ev, trace in events:
            if ev.kind == "alert":
                steps.append({"budget": ev.budget, "scope": scopes[ev.budget], "subject": ev.subject,
                              "period": ev.period, "step": float(ev.detail),
                              "utilisation": round(ev.utilisation, 6), "at_ns": minute * MINUTE_NS})
            elif ev.kind == "decision":
                d = ledger.assess(ev.subject, now, trace)
                task = trace if scopes.get(d.budget) == "task" else None
                decisions.append(_decision(d, ev.subject, task, minute * MINUTE_NS, ev.detail))
    # The periods the range ends in (a range ending at midnight shows the day it covers, not the next).
    accounts = [a for a in ledger.accounts(until_ns / 1e9 - 0.001) if a["scope"] != "task"]
    return {"steps": steps, "decisions": decisions, "accounts": accounts}


def _decision(d, agent: str, task: str | None, at_ns: int, action: str) -> dict:
    return {"action": d.action if action == "already" else action, "agent_id": agent, "task": task,
            "budget": d.budget or None, "utilisation": round(d.utilisation, 6), "reason": d.reason,
            "at_ns": at_ns, "until_ns": int(d.until * 1e9) if d.until else None, "at_start": action == "already"}


def _spend(charges: list[tuple], specs: list[BudgetSpec]) -> dict:
    """Total, per agent and day (the calendar of the first agent_day budget, UTC without) and per model."""
    daily = next((s for s in specs if s.scope == "agent_day"), None)
    calendar = BudgetSpec("day", "agent_day", 1.0, tz=daily.tz if daily is not None else "UTC")
    days: dict[int, str] = {}
    by_day: dict[tuple[str, str], float] = {}
    by_model: dict[str, float] = {}
    total = 0.0
    for agent, _, model, _, usd, _, minute in charges:
        day = days.get(minute) or days.setdefault(minute, calendar.period(minute * 60.0)[0])
        by_day[(day, agent)] = by_day.get((day, agent), 0.0) + usd
        by_model[model] = by_model.get(model, 0.0) + usd
        total += usd
    return {"total": total, "by_day": by_day, "by_model": by_model}


# --- breakers: replayed over the calls of the agents that failed some ----------------------------

def _replay_breakers(calls: list[tuple], settings: BreakerSettings, origin_ns: int) -> list[dict]:
    """The breakers' transitions, each breaker fed its calls in end order with the clock at the call
    that decides: a closed breaker at each failure, an open one at its first call after the recovery
    timeout, a half-open one at each probe.  Times are relative to ``origin_ns`` inside (float
    seconds of Unix time lose the nanoseconds the breaker compares)."""
    out = []
    for agent, tool, ends, fails in calls:
        end_ns = np.asarray(ends, np.int64) - origin_ns
        failed = np.asarray(fails, bool)
        failures = np.flatnonzero(failed)
        breaker, i, n = CircuitBreaker(settings), 0, len(end_ns)
        transitions = []
        while i < n:
            if breaker.state == OPEN:
                i += int(np.searchsorted(end_ns[i:], math.ceil(breaker.open_until * 1e9), side="left"))
                if i < n:
                    transitions += breaker.tick(max(end_ns[i] / 1e9, breaker.open_until))
            elif breaker.state == CLOSED:
                nxt = np.searchsorted(failures, i)
                if nxt >= len(failures):
                    break
                k = int(failures[nxt])
                transitions += breaker.record(end_ns[i:k + 1], failed[i:k + 1], end_ns[k] / 1e9)
                i = k + 1
            else:  # half-open: each call is a probe
                transitions += breaker.record(end_ns[i:i + 1], failed[i:i + 1], end_ns[i] / 1e9)
                i += 1
        out += [{"agent_id": agent, "tool": tool or None, "from": t.old, "to": t.new,
                 "at_ns": origin_ns + int(round(t.at * 1e9)), "reason": t.reason} for t in transitions]
    return sorted(out, key=lambda t: (t["at_ns"], t["agent_id"], t["tool"] or ""))


# --- the answer ---------------------------------------------------------------------------------

class RangeTooLarge(Exception):
    """The store ran out of memory for the range (the running pipeline's DuckDB pool is small)."""


def what_if(read: Query, since_ns: int, until_ns: int, changes: Changes, config: WhatIfConfig) -> dict:
    """Actual and what-if, side by side, over the spans that ended in [since_ns, until_ns) (the start
    taken back to its minute: SLIs count per minute); see the module docstring.  Raises ValueError
    for a change that names no objective, budget or priced model, ``RangeTooLarge`` when the store
    has not the memory for the range."""
    try:
        return _what_if(read, since_ns, until_ns, changes, config)
    except duckdb.OutOfMemoryException as exc:
        raise RangeTooLarge(f"the store has not the memory for a what-if over this range ({exc.args[0].splitlines()[0]}"
                            "): narrow it with since/until, or run `agent-sre what-if --db FILE` on the stopped "
                            "pipeline's file") from None


def _what_if(read: Query, since_ns: int, until_ns: int, changes: Changes, config: WhatIfConfig) -> dict:
    started = time.monotonic()
    since_ns = since_ns // MINUTE_NS * MINUTE_NS
    if until_ns <= since_ns:
        raise ValueError("the range is empty: until must be after since")
    objectives = list(config.objectives)
    changed_objectives = _retarget(objectives, changes.slo_targets)
    specs = list(config.budgets)
    changed_specs = _relimit(specs, changes.budgets)
    notes: list[str] = []
    slis = list(config.slis) or _stored_slis(read)
    used = {o.sli for o in objectives}
    for name in sorted(used - {s.name for s in slis}):
        notes.append(f"SLI {name} has no definition: only its minutes before the range count")
    slis = [s for s in slis if s.name in used]

    q = _Sql()
    _base(read, q, since_ns, until_ns)
    moved = _span_changes(read, q, changes)
    repriced, reprice_summary = _reprice(read, q, changes, config, moved)
    q_base = q.fork()  # the queries of the actual column bind none of the what-if's lists
    _scenario(q, moved, repriced)
    spans_changed = bool(repriced) or bool(moved["key"])
    since_minute, end_minute = since_ns // MINUTE_NS, window_end(until_ns / 1e9)
    longest = max((max([int(o.window // 60), *(r.long_minutes for r in o.burn_rules)]) for o in objectives),
                  default=0)
    history = _sli_history(read, used, end_minute - longest, since_minute)
    prior = _prior_spend(read, specs, since_ns)

    def column(spans: dict, objs: list[Objective], budget_specs: list[BudgetSpec]) -> dict:
        slos, alerts = _slo_report(history + spans["minutes"], objs, since_minute, end_minute)
        out = {"slos": slos, "alerts": alerts, "spend": _spend(spans["charges"], budget_specs),
               "budgets": _replay_budgets(spans["charges"], spans["task_charges"], budget_specs, prior, since_ns,
                                          until_ns)}
        if config.breakers is not None:
            out["breakers"] = _replay_breakers(spans["calls"], config.breakers, since_ns)
        return out

    actual_spans = _column_spans(read, q_base, "base", slis, specs, config)
    actual = column(actual_spans, objectives, specs)
    if spans_changed:
        what = column(_column_spans(read, q, "scen", slis, changed_specs, config), changed_objectives, changed_specs)
    elif changes.slo_targets or changes.budgets:  # the same spans: only task charges depend on the budgets
        spans = _column_spans(read, q_base, "base", slis, changed_specs, config) if changes.budgets else actual_spans
        what = column(spans, changed_objectives, changed_specs)
    else:
        what = actual  # nothing changed: the same column
    tasks = _tasks(read, q if spans_changed else q_base, "scen" if spans_changed else "base")
    doc: dict[str, Any] = {
        "range": {"since_ns": since_ns, "until_ns": until_ns, "spans": tasks.pop("spans"),
                  "tasks": tasks["count"]},
        "changes": changes.describe(),
        "assumptions": _assumptions(changes),
        "notes": notes,
        "cost": _cost(actual["spend"], what["spend"], reprice_summary, moved["removed"], moved["slowed"]),
        "tasks": tasks,
        "slos": _compare_slos(actual["slos"], what["slos"]),
        "alerts": _side_by_side(actual["alerts"], what["alerts"], ("slo", "agent_id", "agent_version", "rule",
                                                                   "severity"), lambda e: e["state"] == "firing"),
        "budgets": _budgets(actual["budgets"], what["budgets"]),
    }
    if config.breakers is not None:
        doc["breakers"] = _side_by_side(actual["breakers"], what["breakers"], ("agent_id", "tool"),
                                        lambda t: t["to"] == "open")
    doc["took_ms"] = round((time.monotonic() - started) * 1000, 1)
    return doc


def _assumptions(changes: Changes) -> list[str]:
    out = ["the range holds the spans that ended in it; SLO windows and budget periods before it count as the "
           "store rolled them up, the same in both columns",
           "alerts and budget decisions are evaluated at the end of each minute; spend after a kill is as recorded "
           "(the calls a kill refused are not invented, those a new kill would refuse are not removed)"]
    if changes.reprice or changes.prices:
        out.append("re-priced LLM spans keep their tokens (input, cached, output), latency and outputs, at the "
                   "other model's price (given prices, else genai-prices, else the cost processor's overrides); "
                   "they count as that model's in model budgets")
    if changes.remove_tools:
        out.append("a removed tool's calls vanish with every span under them; their duration comes off each "
                   "ancestor (calls taken as sequential) and their cost off the task; the task's outcome is "
                   "unchanged (task_success and status as recorded)")
    if changes.slow_tools:
        out.append("a slowed tool's calls last longer; each ancestor ends later by as much (calls taken as "
                   "sequential); other spans keep their times, and a span moved past the range counts in its "
                   "last minute")
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 9)


def _cost(actual: dict, what: dict, repriced: list[dict], removed: int, slowed: int) -> dict:
    days = sorted(set(actual["by_day"]) | set(what["by_day"]))
    models = sorted(set(actual["by_model"]) | set(what["by_model"]))
    return {
        "actual_usd": _r(actual["total"]), "what_if_usd": _r(what["total"]),
        "delta_usd": _r(what["total"] - actual["total"]),
        "repriced": repriced, "removed_spans": removed, "slowed_spans": slowed,
        "by_agent_day": [{"day": d, "agent_id": a, "actual_usd": _r(actual["by_day"].get((d, a), 0.0)),
                          "what_if_usd": _r(what["by_day"].get((d, a), 0.0)),
                          "delta_usd": _r(what["by_day"].get((d, a), 0.0) - actual["by_day"].get((d, a), 0.0))}
                         for d, a in days],
        "by_model": [{"model": m or None, "actual_usd": _r(actual["by_model"].get(m, 0.0)),
                      "what_if_usd": _r(what["by_model"].get(m, 0.0)),
                      "delta_usd": _r(what["by_model"].get(m, 0.0) - actual["by_model"].get(m, 0.0))}
                     for m in models],
    }


_TASK = ("SELECT trace_id, arg_min(agent_id, start_ns) FILTER (WHERE span_role = 'agent_task') AS agent_id, "
         "coalesce(sum(cost_usd), 0) AS cost_usd, max(duration_ns) FILTER (WHERE span_role = 'agent_task') "
         "AS latency_ns FROM {rel} GROUP BY trace_id HAVING bool_or(span_role = 'agent_task')")


def _tasks(read: Query, q: _Sql, rel: str) -> dict:
    """Tasks (traces with an agent_task span): their cost (all the trace's spans) and latency (the
    outermost agent_task span), actual and what-if (``rel``), and the tasks that changed most; with
    the range's span count, in one query."""
    extra = (f", ta AS ({_TASK.format(rel='base')}), tw AS ({_TASK.format(rel=rel)}), t AS (SELECT a.trace_id, "
             "a.agent_id, a.cost_usd AS a_cost, coalesce(w.cost_usd, 0) AS w_cost, a.latency_ns AS a_lat, "
             "w.latency_ns AS w_lat, abs(coalesce(w.cost_usd, 0) - a.cost_usd) > 1e-12 "
             "OR a.latency_ns IS DISTINCT FROM w.latency_ns AS changed FROM ta a LEFT JOIN tw w USING (trace_id))")
    rows = q.run(read, "SELECT * FROM (SELECT (SELECT count(*) FROM base), count(*), count(*) FILTER (WHERE changed), "
                       "sum(a_cost), sum(w_cost), avg(a_lat), avg(w_lat), quantile_cont(a_lat, 0.5), "
                       "quantile_cont(w_lat, 0.5), quantile_cont(a_lat, 0.95), quantile_cont(w_lat, 0.95) FROM t) "
                       "LEFT JOIN (SELECT trace_id, agent_id, a_cost, w_cost, a_lat, w_lat FROM t WHERE changed "
                       "ORDER BY abs(w_cost - a_cost) DESC, abs(coalesce(w_lat, 0) - coalesce(a_lat, 0)) DESC, "
                       f"trace_id LIMIT {TOP}) ON true", extra)
    spans, n, changed, a_cost, w_cost, a_mean, w_mean, a_p50, w_p50, a_p95, w_p95 = rows[0][:11]

    def side(cost, mean, p50, p95) -> dict:
        return {"cost_usd": _r(cost or 0.0), "cost_per_task_usd": _r((cost or 0.0) / n) if n else None,
                "latency_mean_ms": _ms(mean), "latency_p50_ms": _ms(p50), "latency_p95_ms": _ms(p95)}

    top = [r[11:] for r in rows if r[11] is not None]
    top.sort(key=lambda t: (-abs(t[3] - t[2]), -abs((t[5] or 0) - (t[4] or 0)), t[0]))  # a join keeps no order
    return {"spans": spans, "count": n, "changed": changed, "actual": side(a_cost, a_mean, a_p50, a_p95),
            "what_if": side(w_cost, w_mean, w_p50, w_p95),
            "most_changed": [{"trace_id": t, "agent_id": a, "actual_usd": _r(ac), "what_if_usd": _r(wc),
                              "delta_usd": _r(wc - ac), "actual_latency_ms": _ms(al), "what_if_latency_ms": _ms(wl),
                              "delta_latency_ms": _ms(wl - al) if al is not None and wl is not None else None}
                             for t, a, ac, wc, al, wl in top]}


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


_SLO_FIELDS = ("target", "window", "sli_value", "budget_remaining", "status", "firing", "burn_rates", "events",
               "bad_events", "range_events", "range_bad_events")


def _compare_slos(actual: list[dict], what: list[dict]) -> list[dict]:
    """One row per (objective, agent[, version]): its ``slo status`` row actual and what-if."""
    def key(r: dict) -> tuple:
        return r["slo"], r["agent_id"], r["agent_version"]

    a, w = {key(r): r for r in actual}, {key(r): r for r in what}
    order = list(dict.fromkeys([*a, *w]))
    out = []
    for k in order:
        ra, rw = a.get(k), w.get(k)
        first = ra if ra is not None else w[k]
        row: dict[str, Any] = {"slo": first["slo"], "sli": first["sli"], "agent_id": first["agent_id"],
               "agent_version": first["agent_version"],
               "actual": {f: ra[f] for f in _SLO_FIELDS} if ra else None,
               "what_if": {f: rw[f] for f in _SLO_FIELDS} if rw else None}
        row["changed"] = row["actual"] != row["what_if"]
        out.append(row)
    return out


def _side_by_side(actual: list[dict], what: list[dict], key: tuple[str, ...],
                  counts: Callable[[dict], bool]) -> dict:
    """Both columns' events (up to ``MAX_EVENTS`` each) and, per ``key``, how many of the events that
    ``counts`` happened in each, the first of each, and the change (new, gone, same, changed)."""
    def group(events: list[dict]) -> dict[tuple, list[int]]:
        out: dict[tuple, list[int]] = {}
        for e in events:
            if counts(e):
                out.setdefault(tuple(e[f] for f in key), []).append(e["at_ns"])
        return out

    ga, gw = group(actual), group(what)
    compared = []
    for k in sorted(set(ga) | set(gw), key=lambda k: tuple("" if v is None else str(v) for v in k)):
        ta, tw = ga.get(k, []), gw.get(k, [])
        change = "new" if not ta else "gone" if not tw else "same" if ta == tw else "changed"
        compared.append({**dict(zip(key, k, strict=True)), "actual": len(ta), "what_if": len(tw),
                         "actual_first_ns": ta[0] if ta else None, "what_if_first_ns": tw[0] if tw else None,
                         "change": change})
    return {"actual": actual[:MAX_EVENTS], "what_if": what[:MAX_EVENTS],
            "actual_total": sum(len(v) for v in ga.values()), "what_if_total": sum(len(v) for v in gw.values()),
            "compared": compared}


def _budgets(actual: dict, what: dict) -> dict:
    decisions = _side_by_side(actual["decisions"], what["decisions"], ("action", "agent_id", "task", "budget"),
                              lambda d: d["action"] in ("throttle", "kill"))

    def key(a: dict) -> tuple:
        return a["budget"], a["subject"], a["period"]

    wa = {key(a): a for a in what["accounts"]}
    aa = {key(a): a for a in actual["accounts"]}
    accounts = []
    for k in list(dict.fromkeys([*aa, *wa])):
        ra, rw = aa.get(k), wa.get(k)
        accounts.append({"budget": k[0], "scope": (ra if ra is not None else wa[k])["scope"], "subject": k[1], "period": k[2],
                         "actual_spent_usd": ra["spent_usd"] if ra else 0.0,
                         "actual_limit_usd": ra["limit_usd"] if ra else None,
                         "actual_utilisation": ra["utilisation"] if ra else 0.0,
                         "what_if_spent_usd": rw["spent_usd"] if rw else 0.0,
                         "what_if_limit_usd": rw["limit_usd"] if rw else None,
                         "what_if_utilisation": rw["utilisation"] if rw else 0.0})
    steps = {"actual": len(actual["steps"]), "what_if": len(what["steps"])}
    return {"decisions": decisions, "accounts_at_end": accounts, "steps_crossed": steps,
            "steps": {"actual": actual["steps"][:MAX_EVENTS], "what_if": what["steps"][:MAX_EVENTS]}}


# --- the answer as a person reads it ------------------------------------------------------------

_RED, _GREEN, _BOLD, _DIM = "31", "32", "1", "2"


def render_what_if(doc: dict, color: bool = False) -> str:
    """The answer as text: cost, tasks, SLOs, alerts, budgets (and breakers), actual → what-if.
    ``color``: ANSI colours (green where the what-if is better, red where it is worse)."""
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color and code else text

    def better(delta: float | None, lower_is_better: bool = True) -> str:
        if not delta:
            return ""
        return _GREEN if (delta < 0) == lower_is_better else _RED

    lines = _render_head(doc, paint)
    lines += _render_cost(doc["cost"], paint, better)
    lines += _render_tasks(doc["tasks"], paint, better)
    lines += _render_slos(doc["slos"], paint)
    lines += _render_events("ALERTS (burn-rate rules that fired)", doc["alerts"],
                            lambda c: f"{c['rule']}  SLO {c['slo']}, agent {_who(c['agent_id'], c['agent_version'])}",
                            paint)
    lines += _render_events("BUDGET DECISIONS (throttles and kills)", doc["budgets"]["decisions"],
                            lambda c: f"{c['action']} agent {_who(c['agent_id'], None)}"
                                      + (f" task {c['task']}" if c["task"] else "") + f" ({c['budget']})", paint)
    lines += _render_accounts(doc["budgets"]["accounts_at_end"], paint, better)
    if "breakers" in doc:
        lines += _render_events("CIRCUIT BREAKERS (opened)", doc["breakers"],
                                lambda c: f"agent {_who(c['agent_id'], None)}" + (f" tool {c['tool']}" if c["tool"] else ""),
                                paint)
    lines += ["", paint("ASSUMES", _BOLD)] + [f"  - {a}" for a in doc["assumptions"]]
    lines += [f"  ! {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def _render_head(doc: dict, paint) -> list[str]:
    r = doc["range"]
    head = (f"What-if over {_when(r['since_ns'], True)} → {_when(r['until_ns'], True)} UTC: "
            f"{r['spans']:,} span{'s' if r['spans'] != 1 else ''}, {r['tasks']:,} task{'s' if r['tasks'] != 1 else ''}")
    return [paint(head, _BOLD), "  changes: " + ("; ".join(doc["changes"]) or "none (both columns are the same)")]


def _render_cost(cost: dict, paint, better) -> list[str]:
    rows = [["total", _usd(cost["actual_usd"]), _usd(cost["what_if_usd"]),
             paint(_delta_usd(cost["delta_usd"], cost["actual_usd"]), better(cost["delta_usd"]))]]
    rows += [[f"agent {_who(d['agent_id'], None)} {d['day']}", _usd(d["actual_usd"]), _usd(d["what_if_usd"]),
              paint(_delta_usd(d["delta_usd"]), better(d["delta_usd"]))] for d in cost["by_agent_day"]]
    rows += [[f"model {m['model'] or '(none)'}", _usd(m["actual_usd"]), _usd(m["what_if_usd"]),
              paint(_delta_usd(m["delta_usd"]), better(m["delta_usd"]))] for m in cost["by_model"]]
    lines = ["", *_grid(["COST", "actual", "what-if", "delta"], rows, paint)]
    for p in cost["repriced"]:
        lines.append(f"  re-priced {p['model']} as {p['priced_as']}: {p['spans']:,} spans, {p['input_tokens']:,} input "
                     f"({p['cached_tokens']:,} cached) and {p['output_tokens']:,} output tokens: "
                     f"{_usd(p['actual_usd'])} → {_usd(p['what_if_usd'])}")
    if cost["removed_spans"] or cost["slowed_spans"]:
        lines.append(f"  spans removed: {cost['removed_spans']:,}; calls slowed: {cost['slowed_spans']:,}")
    return lines


def _render_tasks(tasks: dict, paint, better) -> list[str]:
    a, w = tasks["actual"], tasks["what_if"]
    rows = [["cost per task", _usd(a["cost_per_task_usd"]), _usd(w["cost_per_task_usd"]),
             paint(_delta_usd(_minus(w["cost_per_task_usd"], a["cost_per_task_usd"])),
                   better(_minus(w["cost_per_task_usd"], a["cost_per_task_usd"])))]]
    for label, k in (("latency mean", "latency_mean_ms"), ("latency p50", "latency_p50_ms"),
                     ("latency p95", "latency_p95_ms")):
        d = _minus(w[k], a[k])
        rows.append([label, _dur(a[k]), _dur(w[k]), paint(_delta_dur(d), better(d))])
    title = f"TASKS ({tasks['count']:,}, {tasks['changed']:,} changed)"
    lines = ["", *_grid([title, "actual", "what-if", "delta"], rows, paint)]
    if tasks["most_changed"]:
        lines.append("  most changed:")
    for t in tasks["most_changed"]:
        lines.append(f"    {t['trace_id']} (agent {_who(t['agent_id'], None)}): cost {_usd(t['actual_usd'])} → "
                     f"{_usd(t['what_if_usd'])}, latency {_dur(t['actual_latency_ms'])} → {_dur(t['what_if_latency_ms'])}")
    return lines


def _render_slos(slos: list[dict], paint) -> list[str]:
    rank = {"healthy": 0, "warning": 1, "critical": 2, "exhausted": 3}
    rows = []
    for s in slos:
        a, w = s["actual"] or {}, s["what_if"] or {}
        target = _pair(_target(a.get("target")), _target(w.get("target")), "")
        status_a, status_w = a.get("status", "-"), w.get("status", "-")
        worse = rank.get(status_w, 0) - rank.get(status_a, 0)
        rows.append([f"{s['slo']}  {_who(s['agent_id'], s['agent_version'])}", target,
                     _pair(_pct(a.get("sli_value"), 2), _pct(w.get("sli_value"), 2)),
                     _pair(_pct(a.get("budget_remaining"), 1), _pct(w.get("budget_remaining"), 1)),
                     paint(_pair(status_a, status_w), _RED if worse > 0 else _GREEN if worse < 0 else "")])
    if not rows:
        return ["", paint("SLOS", _BOLD), "  no SLI events in the objectives' windows"]
    return ["", *_grid(["SLOS (at the end of the range)", "target", "SLI value", "budget left", "status"], rows, paint)]


def _render_events(title: str, events: dict, label: Callable[[dict], str], paint) -> list[str]:
    lines = ["", paint(f"{title}: actual {events['actual_total']}, what-if {events['what_if_total']}", _BOLD)]
    words = {"new": ("+", "what-if only", _RED), "gone": ("-", "actual only", _GREEN),
             "same": ("=", "both", ""), "changed": ("~", "both, at other times", "")}
    for c in events["compared"]:
        sign, text, code = words[c["change"]]
        times = f"{_times(c['actual'], c['actual_first_ns'])} → {_times(c['what_if'], c['what_if_first_ns'])}"
        lines.append(paint(f"  {sign} {label(c)}: {times}  ({text})", code))
    if not events["compared"]:
        lines.append("  none in either")
    return lines


def _render_accounts(accounts: list[dict], paint, better) -> list[str]:
    rows = [[f"{a['budget']}  {a['subject']}  {a['period']}",
             f"{_usd(a['actual_spent_usd'])} of {_usd(a['actual_limit_usd'])} ({_pct(a['actual_utilisation'], 1)})",
             paint(f"{_usd(a['what_if_spent_usd'])} of {_usd(a['what_if_limit_usd'])} "
                   f"({_pct(a['what_if_utilisation'], 1)})",
                   better(a["what_if_utilisation"] - a["actual_utilisation"]))] for a in accounts]
    return ["", *_grid(["BUDGETS (the periods the range ends in)", "actual", "what-if"], rows, paint)] if rows else []


def _grid(header: list[str], rows: list[list[str]], paint) -> list[str]:
    def width(text: str) -> int:  # without the colour codes
        import re
        return len(re.sub(r"\x1b\[[0-9;]*m", "", text))

    widths = [max(width(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c + " " * (w - width(c)) if i == 0 else " " * (w - width(c)) + c
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [paint(line(header)[2:], _BOLD), *(line(r) for r in rows)]


def _who(agent: str | None, version: str | None) -> str:
    return (agent or "(none)") + (f"@{version}" if version else "")


def _when(ns: int | None, day: bool = False) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M" if day else "%m-%d %H:%M", time.gmtime(ns / 1e9))


def _times(n: int, first_ns: int | None) -> str:
    return "-" if not n else f"{_when(first_ns)}" + (f" (+{n - 1} more)" if n > 1 else "")


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "$0"
    return f"${x:,.6f}" if abs(x) < 1 else f"${x:,.2f}"


def _delta_usd(d: float | None, base: float | None = None) -> str:
    if d is None:
        return "-"
    if abs(d) < 5e-10:
        return "="
    text = ("+" if d > 0 else "-") + _usd(abs(d))
    return text + (f" ({d / base:+.1%})" if base else "")


def _dur(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:,.0f} ms" if abs(ms) < 1000 else f"{ms / 1000:,.2f} s"


def _delta_dur(d: float | None) -> str:
    if d is None:
        return "-"
    return "=" if abs(d) < 5e-4 else ("+" if d > 0 else "-") + _dur(abs(d))


def _pct(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}%}"


def _pair(a: str, b: str, same: str | None = None) -> str:
    if a == b:
        return f"{a} = {b}" if same is None else a
    return f"{a} → {b}"


def _target(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:g}%"


def config_from_settings(slo: Iterable = (), sli: Iterable = (), cost: Iterable = (),
                         incidents: Iterable = ()) -> WhatIfConfig:
    """A ``WhatIfConfig`` from the processors' configs (``SloConfig``, ``SliConfig``, ``CostConfig``,
    ``IncidentsConfig``; each a list, as a pipeline may hold several): what the CLI reads from the config
    file and the running pipeline from its processors.  The first incidents processor's breakers count."""
    from agent_sre.processors.sli.factory import builtin_slis

    slis = [x for s in sli for x in [*builtin_slis(s), *(SliRollup(c.name, c.total, c.good, c.scope)
                                                          for c in s.custom)]]
    overrides: dict[str, PriceOverride] = {}
    for c in cost:
        overrides.update(c.overrides)
    breakers = next((i.breakers for i in incidents if i.breakers.enabled), None)
    return WhatIfConfig(
        objectives=tuple(o for s in slo for o in s.objectives), slis=tuple(slis),
        budgets=tuple(b.spec() for c in cost for b in c.budgets), price_overrides=overrides,
        breakers=breakers.settings() if breakers is not None else None,
        breaker_roles=tuple(breakers.roles) if breakers is not None else ("tool", "llm"),
        breaker_per_tool=breakers.per_tool if breakers is not None else False)
