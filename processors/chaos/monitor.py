"""Abort conditions, judged from committed spans: per-second tallies of a running experiment's agents.

The chaos processor hands every committed batch (``SpanStore.on_commit``) of the agents of running
experiments to one DuckDB query (``tally_sql``): per second, agent and ``chaos.experiment.id`` tag,
the calls (tool, llm and delegation spans), failed calls, spend, spans, and the good and total events
of the span SLIs the abort conditions name.  Each experiment's ``Monitor`` adds the rows of its agents
from the second it started, keeps per-second tallies as long as its longest window, and judges its
conditions from them every second.  Clock-free: the caller says what ``now`` is.

Measured (bench/chaos.py, 2 shared cores): ~4-5 ms per committed batch of 256-1024 spans (DuckDB's
fixed cost of a query from Python is most of it), ~7 ms at 8k spans (~1 us/span); paid only while an
experiment runs and only for batches holding its agents' spans.  The loader commits a few times a second
at most, so this is about 1-2 % of a core.  A second's judgement is a sum over at most ``window`` tallies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.processors.chaos.spec import AbortCondition

CALL_ROLES = ("tool", "llm", "delegation")
EXPERIMENT_KEY = "chaos.experiment.id"
FAULT_KEY = "chaos.fault.type"


@dataclass(frozen=True)
class SpanSli:
    """A span-scope SLI as the sli processor stored it (``sli_rollups``): predicates over ``spans``."""

    name: str
    total: str
    good: str


def tally_sql(slis: Iterable[SpanSli], source: str, where: str = "", tag: str = f"attributes['{EXPERIMENT_KEY}']") -> str:
    """Per (second, agent, experiment tag): calls, errors, cost, spans, then good and total per SLI, over
    ``source`` (the ``spans`` view, or a committed batch with its ``tag`` column: ``tag="tag"``)."""
    columns = [f"count(*) FILTER (WHERE ({s.total})) AS \"t:{s.name}\", "
               f"count(*) FILTER (WHERE ({s.total}) AND ({s.good})) AS \"g:{s.name}\"" for s in slis]
    roles = ", ".join(f"'{r}'" for r in CALL_ROLES)
    return (f"SELECT end_ns // 1000000000 AS second, agent_id, {tag} AS tag, "
            f"count(*) FILTER (WHERE span_role IN ({roles})) AS calls, "
            f"count(*) FILTER (WHERE span_role IN ({roles}) AND status_code = 'error') AS errors, "
            f"coalesce(sum(cost_usd), 0)::DOUBLE AS cost, count(*) AS spans"
            + "".join(", " + c for c in columns)
            + f" FROM {source} {where} GROUP BY ALL")


_TALLIED = ("end_ns", "agent_id", "span_role", "status_code", "cost_usd")


def tally_input(rows: pa.Table, slis: list[SpanSli]) -> tuple[pa.Table, str]:
    """(what the tally query reads of a committed batch registered as ``_batch``, the query's source): the
    columns it and the SLI predicates name, plus ``tag``, each row's ``chaos.experiment.id`` found
    column-wise; attribute lists a predicate reads are presented as MAPs by the source.  Measured
    (bench/chaos.py): DuckDB's cost of a query over an Arrow table grows with its columns, so a batch's
    45 cost ~3x the handful read here, and presenting attributes as a MAP ~10x reading one key."""
    text = " ".join(f"{s.total} {s.good}" for s in slis)
    wanted = [c for c in rows.column_names if c in _TALLIED or re.search(rf"(?<![.\w]){c}\b", text)]
    out = rows.select(wanted).append_column("tag", experiment_tags(rows))
    maps = [c for c in ("attributes", "resource_attributes", "scope_attributes") if c in wanted]
    source = ("(SELECT * REPLACE (" + ", ".join(f"map_from_entries({c}) AS {c}" for c in maps) + ") FROM _batch)"
              if maps else "_batch")
    return out, source


def experiment_tags(rows: pa.Table) -> pa.Array:
    """Each row's ``chaos.experiment.id`` (storage layout: attributes as a list of key/value), null where
    it has none; column-wise: one comparison per attribute key, a take for the tagged rows."""
    index = np.full(rows.num_rows, -1, dtype=np.int64)
    values = []
    offset = found = 0
    for chunk in rows.column("attributes").chunks:
        flat = pc.list_flatten(chunk)
        hit = pc.equal(flat.field("key"), EXPERIMENT_KEY)
        if pc.any(hit).as_py():
            parents = pc.filter(pc.list_parent_indices(chunk), hit).to_numpy()
            index[offset + parents] = np.arange(found, found + len(parents))
            values.append(pc.filter(flat.field("value"), hit))
            found += len(parents)
        offset += len(chunk)
    if not found:
        return pa.nulls(rows.num_rows, pa.string())
    return pc.take(pa.concat_arrays(values), pa.array(index, mask=index < 0))


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    injected: int = 0
    cost_usd: float = 0.0
    sli: dict[str, list[int]] = field(default_factory=dict)  # name -> [good, total]

    def add(self, other: Tally) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.injected += other.injected
        self.cost_usd += other.cost_usd
        for name, (good, total) in other.sli.items():
            mine = self.sli.setdefault(name, [0, 0])
            mine[0] += good
            mine[1] += total


class Monitor:
    """One running experiment's tallies since its start, and its abort conditions judged over them."""

    def __init__(self, experiment_id: str, agents: Iterable[str], start: float, conditions: list[AbortCondition]):
        self.experiment_id = experiment_id
        self.agents = frozenset(agents)
        self.start_second = int(start)  # spans are tallied by the second they ended in
        self.conditions = conditions
        self.keep = int(max((c.window or 0 for c in conditions), default=0)) + 1  # seconds of tallies kept
        self.total = Tally()
        self.seconds: dict[int, Tally] = {}

    def slis(self) -> set[str]:
        return {c.metric[4:] for c in self.conditions if c.metric.startswith("sli:")}

    def add_rows(self, rows: list[tuple], sli_names: list[str]) -> None:
        """Rows of ``tally_sql`` (with SLI columns in ``sli_names`` order): those of this experiment's agents."""
        for row in rows:
            second, agent, tag, calls, errors, cost, spans = row[:7]
            if agent not in self.agents or second < self.start_second:
                continue
            tally = Tally(calls, errors, spans if tag == self.experiment_id else 0, cost,
                          {name: [row[8 + 2 * i], row[7 + 2 * i]] for i, name in enumerate(sli_names)})
            self.total.add(tally)
            self.seconds.setdefault(second, Tally()).add(tally)

    def window(self, seconds: float | None, now: float) -> Tally:
        if seconds is None:
            return self.total
        out = Tally()
        since = now - seconds
        for second, tally in self.seconds.items():
            if second >= since:
                out.add(tally)
        return out

    def value(self, condition: AbortCondition, now: float) -> tuple[float | None, int]:
        """(the metric's value over the condition's window, events it is made of); None: no events yet."""
        t = self.window(condition.window, now)
        metric = condition.metric
        if metric == "error_rate":
            return (t.errors / t.calls if t.calls else None), t.calls
        if metric.startswith("sli:"):
            good, total = t.sli.get(metric[4:], [0, 0])
            return (good / total if total else None), total
        value = {"errors": t.errors, "calls": t.calls, "injected": t.injected, "cost_usd": t.cost_usd}[metric]
        return float(value), t.calls

    def breached(self, now: float) -> tuple[AbortCondition, float] | None:
        """The first condition that holds now, with its value; None while none does."""
        self.prune(now)
        for c in self.conditions:
            value, events = self.value(c, now)
            if value is None:
                continue
            rate = c.metric in ("error_rate",) or c.metric.startswith("sli:")
            if rate and events < c.min_events:
                continue
            if (c.above is not None and value > c.above) or (c.below is not None and value < c.below):
                return c, value
        return None

    def prune(self, now: float) -> None:
        horizon = now - self.keep - 1
        for second in [s for s in self.seconds if s < horizon]:
            del self.seconds[second]
