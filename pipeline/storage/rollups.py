"""SLI rollups: the SQL the store runs to turn spans into per-minute SLI events.

Two scopes of SLI, both a pair of SQL predicates (``total``: is this an event of the
SLI; ``good``: is the event good):

- ``span``: over the columns of ``spans``, one event per matching span at the minute it
  ended, rolled up in the same transaction that inserts the batch.
- ``task``: over a task's rollup (``trace_rollups``: ``agent_id``, ``agent_version``,
  ``cost_usd`` summed over the trace, ``delegations`` = delegation spans in the trace,
  ``task_end_ns``), one event per task at the minute its agent_task span ended.  Spans of
  a trace arrive in many batches, so each insert adds to the trace's running rollup and a
  task is counted once its agent_task span is in and the trace has been quiet for
  ``TASK_GRACE_NS`` (spans arriving later for a counted task are not counted).  Traces
  that never show an agent_task span are dropped after an hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

TASK_GRACE_NS = 60 * 10**9
_ORPHAN_NS = 3600 * 10**9


@dataclass(frozen=True)
class SliRollup:
    """One SLI as the store rolls it up (see the module docstring for ``scope``)."""

    name: str
    total: str
    good: str
    scope: str = "span"


# attributes['k'] in a predicate, read straight from the stored list of (key, value): measured
# 0.3 us/row, where presenting the whole column as a MAP first costs 3.4 us/row.
_ATTRIBUTE = re.compile(r"(?<![.\w])attributes\s*\[\s*('(?:[^']|'')*')\s*\]")  # not e.attributes[...]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _key_value(column: str, key_literal: str) -> str:
    """The value (or NULL) of a key (a quoted SQL literal) in a stored list of (key, value): the one form
    of a look-up by key in the statements here, which ``lookups`` finds and ``without`` leaves out."""
    return f"list_filter({column}, lambda e: e.key = {key_literal})[1].value"


def _has_key(column: str, key_literal: str, field: str = "key") -> str:
    """Whether a stored list of structs has an entry whose ``field`` is the key (a quoted SQL literal)."""
    return f"list_contains(list_transform({column}, lambda e: e.{field}), {key_literal})"


def _on_stored_layout(predicate: str) -> str:
    return _ATTRIBUTE.sub(lambda m: _key_value("attributes", m.group(1)), predicate)


# Spans of a replay's re-run (``agent-sre replay``) carry this key, on the resource or the span: they are
# stored like any other, but the rollups (SLIs, budgets, anomaly series) and the commit callbacks
# (budgets, breakers, incidents, metrics) see only ``_counted``, the batch without them, unless the
# store counts replays.  The predicate is only used for a batch that holds such spans.
REPLAY_KEY = "agent_sre.replay.of"
_HAS_REPLAY_KEY = f"({_has_key('resource_attributes', _quote(REPLAY_KEY))} OR {_has_key('attributes', _quote(REPLAY_KEY))})"
COUNTED_ALL = "CREATE OR REPLACE TEMP VIEW _counted AS SELECT * FROM _batch"
COUNTED_WITHOUT_REPLAYS = f"CREATE OR REPLACE TEMP VIEW _counted AS SELECT * FROM _batch WHERE NOT {_HAS_REPLAY_KEY}"


# --- deferred rollups -------------------------------------------------------------------------------
# Every stored span carries the time of the insert transaction that stored it (``received_ns``: the
# store's clock, strictly increasing from one insert to the next, and a held span's is that of the insert
# that releases it); the store's rollups have run over every span up to ``rollup_state.rolled_ns``,
# committed in the same transaction as what they added.  While the loader is behind, its inserts store
# spans without rolling them up, and the store's rollup thread (or the first insert that is not behind)
# rolls up everything stored since (``stored_after``), once for several inserts: every rollup statement has
# a fixed cost of planning per run (~31 ms for the five of them, bench/deferred_rollups.py).


def stored_after(rolled_ns: int, without_replays: bool, until_ns: int | None = None) -> str:
    """The source the rollups read for the spans stored after ``rolled_ns`` (this transaction's
    included), up to ``until_ns`` when given, without those of replays' re-runs when ``without_replays``."""
    replays = f" AND NOT {_HAS_REPLAY_KEY}" if without_replays else ""
    until = f" AND received_ns <= {int(until_ns)}" if until_ns is not None else ""
    return f"(SELECT * FROM span_rows WHERE received_ns > {int(rolled_ns)}{until}{replays})"


# A GenAI evaluation result (OpenTelemetry's gen_ai.evaluation.result event): its evaluator's name and score.
EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE = "gen_ai.evaluation.score.value"


def evaluation_score(name_literal: str) -> str:
    """The score (a string) of the span's first evaluation result of this evaluator (a quoted SQL literal),
    in DuckDB over the store's ``events``; the fleet store reads the same from its ``evaluations`` map."""
    return (f"list_filter(events, lambda e: e.name = '{EVALUATION_EVENT}' AND "
            f"e.attributes['{EVALUATION_NAME}'] = {name_literal})[1].attributes['{EVALUATION_SCORE}']")


def _span_select(slis: list[SliRollup]) -> str:
    """Per-minute (good, total) per SLI, agent and version, of the batch being inserted.

    One scan of the batch and one aggregation for every SLI: each span gets one column per SLI
    (NULL: not an event of it; 1 or 0: good or not), counted per minute, agent and version, and the
    few aggregated rows are turned into one row per SLI.  Measured on 16k-span inserts: a UNION ALL of
    one scan and aggregation per SLI cost 1.5-2 ms per SLI more."""
    preds = [(x, _on_stored_layout(x.total), _on_stored_layout(x.good)) for x in slis]
    # Any other use of attributes (map functions, a computed key) gets the column as a MAP.
    mapped = any(re.search(r"(?<![.\w])attributes\b(?!, lambda e)", f"{t} {g}") for _, t, g in preds)
    source = ("(SELECT * REPLACE (map_from_entries(attributes) AS attributes) FROM _counted)" if mapped
              else "_counted")
    if mapped:
        preds = [(x, x.total, x.good) for x in slis]
    # "X IS NOT NULL" / "... X ...": X (an attribute's look-up, say) is computed once per span, not twice.
    values: list[str] = []
    for i, (x, total, good) in enumerate(preds):
        present = _present(total)
        uses = re.compile(r"(?<![\w.])" + re.escape(present)) if present is not None else None
        if uses is not None and uses.search(good):
            values.append(f"{present} AS _v{i}")
            preds[i] = (x, f"_v{i} IS NOT NULL", uses.sub(f"_v{i}", good))
    if values:
        source = f"(SELECT *, {', '.join(values)} FROM {source})"
    events = ", ".join(f"CASE WHEN ({total}) THEN CASE WHEN ({good}) THEN 1 ELSE 0 END END AS _e{i}"
                       for i, (_, total, good) in enumerate(preds))
    counts = ", ".join(f"coalesce(sum(_e{i}), 0)::BIGINT AS _g{i}, count(_e{i}) AS _t{i}" for i in range(len(preds)))
    rows = ", ".join(f"{{'sli': {_quote(x.name)}, 'good': _g{i}, 'total': _t{i}}}" for i, (x, _, _) in enumerate(preds))
    return (f"SELECT minute, _r.sli AS sli, agent_id, agent_version, _r.good AS good, _r.total AS total FROM ("
            f"SELECT minute, agent_id, agent_version, unnest([{rows}]) AS _r FROM ("
            f"SELECT minute, agent_id, agent_version, {counts} FROM ("
            f"SELECT end_ns // 60000000000 AS minute, coalesce(agent_id, '') AS agent_id, "
            f"coalesce(agent_version, '') AS agent_version, {events} FROM {source}) GROUP BY ALL)) "
            "WHERE _r.total > 0")


_CALL = re.compile(r"[A-Za-z_][\w.]*\s*\(")


def _present(total: str) -> str | None:
    """X of a ``total`` that is "X IS NOT NULL", when X is one call (``f(...)``, its parentheses
    closing at its end, so that no operator can bind differently once it stands alone), else None."""
    text = total.strip()
    if not text.upper().endswith(" IS NOT NULL"):
        return None
    x = text[:-len(" IS NOT NULL")].strip()
    if not _CALL.match(x) or not x.endswith(")"):
        return None
    depth, quoted = 0, False
    for k, ch in enumerate(x):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
            if depth == 0 and k != len(x) - 1:
                return None  # f(a) + g(b): its first call closes before the end
    return x if depth == 0 and not quoted else None


def _task_select(slis: list[SliRollup], due: str) -> str:
    parts = [f"SELECT task_end_ns // 60000000000 AS minute, {_quote(x.name)} AS sli, "
             f"coalesce(agent_id, '') AS agent_id, coalesce(agent_version, '') AS agent_version, "
             f"CASE WHEN ({x.good}) THEN 1 ELSE 0 END AS good FROM trace_rollups WHERE {due} AND ({x.total})"
             for x in slis]
    return _sum(parts)


def _sum(parts: list[str]) -> str:
    return ("SELECT minute, sli, agent_id, agent_version, sum(good)::BIGINT AS good, count(*) AS total FROM ("
            + " UNION ALL ".join(parts) + ") GROUP BY ALL")


def _upsert(select: str) -> str:
    return (f"INSERT INTO sli_minutes {select} ON CONFLICT (minute, sli, agent_id, agent_version) DO UPDATE SET "
            "good = sli_minutes.good + excluded.good, total = sli_minutes.total + excluded.total")


# Adds the batch to each trace's running rollup; parameter: the insert time (ns).  Besides what the task
# SLIs read, the trace's spend as the task budgets charge it (``task_usd``, ``task_calls``: priced spans,
# cost > 0, as the charges count them), what this insert added to it (``added_usd``, ``added_calls``) and
# the agent of its last priced span (``spend_agent``): with RETURNING (``TASK_SPEND_RETURNING``) the store
# hands the task budgets each trace's spend so far, and they keep an account only for the tasks that
# reach a budget's first step (processors/cost/budget.py), instead of one per trace charged.
#
# The rollup is keyed by the trace id as a 128-bit integer (``TRACE_ID_KEY``), as the trace locator is: its
# upsert probes and grows an index of every trace of the last minute or more (~200k at 40k spans/s), and
# with the 32-character hex string as its key it cost 1.3-2.2 us/span against 1.0-1.4 (16k-span inserts
# into a table of 200k traces; docs/benchmarks.md, fourteenth stop).  A span whose trace id is not 16 bytes of hex
# (the receivers accept none) would have no key: its trace is left out (HAVING), never failing the insert.
TRACE_ID_KEY = "TRY_CAST('0x' || {} AS UHUGEINT)"
# The key as the trace id's lowercase hex (what spans store), for what reads a trace id back.
TRACE_ID_HEX = "lower(lpad(hex({}), 32, '0'))"
SPAN_ROLLUP_SQL = f"""INSERT INTO trace_rollups (trace_id, agent_id, agent_version, cost_usd, delegations, task_end_ns,
  last_seen_ns, task_usd, task_calls, added_usd, added_calls, spend_agent)
SELECT {TRACE_ID_KEY.format("trace_id")},
  arg_min(agent_id, start_ns) FILTER (WHERE span_role = 'agent_task'),
  arg_min(agent_version, start_ns) FILTER (WHERE span_role = 'agent_task'),
  coalesce(sum(cost_usd), 0),
  count(*) FILTER (WHERE span_role = 'delegation'),
  max(end_ns) FILTER (WHERE span_role = 'agent_task'),
  ?,
  coalesce(sum(cost_usd) FILTER (WHERE cost_usd > 0), 0),
  count(*) FILTER (WHERE cost_usd > 0),
  coalesce(sum(cost_usd) FILTER (WHERE cost_usd > 0), 0),
  count(*) FILTER (WHERE cost_usd > 0),
  arg_max(coalesce(agent_id, ''), end_ns) FILTER (WHERE cost_usd > 0)
FROM _counted GROUP BY trace_id HAVING {TRACE_ID_KEY.format("trace_id")} IS NOT NULL
ON CONFLICT (trace_id) DO UPDATE SET
  agent_id = coalesce(trace_rollups.agent_id, excluded.agent_id),
  agent_version = coalesce(trace_rollups.agent_version, excluded.agent_version),
  cost_usd = trace_rollups.cost_usd + excluded.cost_usd,
  delegations = trace_rollups.delegations + excluded.delegations,
  task_end_ns = greatest(trace_rollups.task_end_ns, excluded.task_end_ns),
  last_seen_ns = excluded.last_seen_ns,
  task_usd = coalesce(trace_rollups.task_usd, 0) + excluded.task_usd,
  task_calls = coalesce(trace_rollups.task_calls, 0) + excluded.task_calls,
  added_usd = excluded.added_usd,
  added_calls = excluded.added_calls,
  spend_agent = coalesce(excluded.spend_agent, trace_rollups.spend_agent)"""
# Appended to SPAN_ROLLUP_SQL when the task budgets are charged from it: every trace of the insert, with
# the agent of its task (its agent_task span's, else its last priced span's).
TASK_SPEND_RETURNING = (f"\nRETURNING coalesce(agent_id, spend_agent, '') AS agent, {TRACE_ID_HEX.format('trace_id')}, "
                        "added_usd, added_calls, task_usd, task_calls")
TRACE_ROLLUP_COLUMNS = ("trace_id", "agent_id", "agent_version", "cost_usd", "delegations", "task_end_ns", "last_seen_ns",
                        "task_usd", "task_calls", "added_usd", "added_calls", "spend_agent")

TRACE_ROLLUPS_DDL = ("CREATE TABLE IF NOT EXISTS trace_rollups (trace_id UHUGEINT PRIMARY KEY, agent_id VARCHAR, "
                     "agent_version VARCHAR, cost_usd DOUBLE NOT NULL, delegations BIGINT NOT NULL, "
                     "task_end_ns BIGINT, last_seen_ns BIGINT NOT NULL, task_usd DOUBLE, task_calls BIGINT, "
                     "added_usd DOUBLE, added_calls BIGINT, spend_agent VARCHAR)")
# A store from before the task spend columns: added (NULL in the rows of traces in progress: counted as 0).
TRACE_ROLLUPS_MIGRATION = tuple(f"ALTER TABLE trace_rollups ADD COLUMN IF NOT EXISTS {c}" for c in (
    "task_usd DOUBLE", "task_calls BIGINT", "added_usd DOUBLE", "added_calls BIGINT", "spend_agent VARCHAR"))
# A store from before the integer key (trace_id VARCHAR): its traces in progress copied into the new shape.
TRACE_ROLLUPS_KEY_MIGRATION = (
    "ALTER TABLE trace_rollups RENAME TO trace_rollups_old",
    TRACE_ROLLUPS_DDL,
    f"INSERT INTO trace_rollups ({', '.join(TRACE_ROLLUP_COLUMNS)}) SELECT {TRACE_ID_KEY.format('trace_id')}, "
    f"{', '.join(TRACE_ROLLUP_COLUMNS[1:])} FROM trace_rollups_old WHERE {TRACE_ID_KEY.format('trace_id')} IS NOT NULL",
    "DROP TABLE trace_rollups_old",
)


def rollup_sql(slis: list[SliRollup], track_tasks: bool = False) -> list[str]:
    """Statements for the insert transaction (parameterless span rollups; the trace rollup
    takes the insert time and is returned last, when there are task SLIs or ``track_tasks``)."""
    span = [x for x in slis if x.scope == "span"]
    out = [_upsert(_span_select(span))] if span else []
    if track_tasks or any(x.scope == "task" for x in slis):
        out.append(SPAN_ROLLUP_SQL)
    return out


_DUE = "task_end_ns IS NOT NULL AND last_seen_ns <= $1"
# Finished tasks per minute of their end, with their summed cost (the anomaly processor's cost per task).
_TASKS_DONE_SQL = f"""INSERT INTO agent_minutes (minute, agent_id, tasks_done, task_cost_usd)
SELECT task_end_ns // 60000000000, coalesce(agent_id, ''), count(*), sum(cost_usd) FROM trace_rollups
WHERE {_DUE} GROUP BY ALL
ON CONFLICT (minute, agent_id) DO UPDATE SET tasks_done = agent_minutes.tasks_done + excluded.tasks_done,
  task_cost_usd = agent_minutes.task_cost_usd + excluded.task_cost_usd"""


def finalize_tasks_sql(slis: list[SliRollup], track_tasks: bool = False) -> tuple[list[str], str] | None:
    """(statements counting the due tasks, one forgetting them); parameters: [cutoff_ns] and
    [cutoff_ns, orphan_cutoff_ns], where cutoff = now - grace."""
    task = [x for x in slis if x.scope == "task"]
    if not task and not track_tasks:
        return None
    counts = ([_upsert(_task_select(task, _DUE))] if task else []) + [_TASKS_DONE_SQL]
    return counts, f"DELETE FROM trace_rollups WHERE ({_DUE}) OR last_seen_ns <= $2"


def orphan_cutoff(cutoff_ns: int) -> int:
    return cutoff_ns + TASK_GRACE_NS - _ORPHAN_NS


def validate_sql(sli: SliRollup) -> str:
    """A statement that binds the SLI's predicates (EXPLAIN it to name a bad column at start)."""
    if sli.scope == "task":
        return f"EXPLAIN {_task_select([sli], 'true')}"
    return f"EXPLAIN {_span_select([sli])}"


# Per minute and agent, in every insert transaction: what the anomaly processor's series are made of
# (latency = task_duration_ns / tasks, error rate = errors / spans, tokens per call = tokens / llm_calls,
# cost per task = task_cost_usd / tasks_done, the last two filled when tasks finish).
AGENT_MINUTES_DDL = ("CREATE TABLE IF NOT EXISTS agent_minutes (minute BIGINT NOT NULL, agent_id VARCHAR NOT NULL, "
                     "spans BIGINT NOT NULL DEFAULT 0, errors BIGINT NOT NULL DEFAULT 0, "
                     "llm_calls BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0, "
                     "tasks BIGINT NOT NULL DEFAULT 0, task_duration_ns BIGINT NOT NULL DEFAULT 0, "
                     "tasks_done BIGINT NOT NULL DEFAULT 0, task_cost_usd DOUBLE NOT NULL DEFAULT 0, "
                     "PRIMARY KEY (minute, agent_id))")
# Token and duration sums are taken in HUGEINT and saturate at the int64 range: a client may send any
# int64 token count or a 292-year span, and an overflow here failed the insert on every retry.
def _saturated(expr: str) -> str:
    return f"greatest(least({expr}, 9223372036854775807), -9223372036854775808)::BIGINT"


AGENT_ROLLUP_SQL = f"""INSERT INTO agent_minutes (minute, agent_id, spans, errors, llm_calls, tokens, tasks, task_duration_ns)
SELECT end_ns // 60000000000, coalesce(agent_id, ''), count(*), count(*) FILTER (WHERE status_code = 'error'),
  count(*) FILTER (WHERE span_role = 'llm'),
  {_saturated("coalesce(sum(coalesce(input_tokens, 0)::HUGEINT + coalesce(output_tokens, 0))"
              " FILTER (WHERE span_role = 'llm'), 0)")},
  count(*) FILTER (WHERE span_role = 'agent_task'),
  {_saturated("coalesce(sum(duration_ns::HUGEINT) FILTER (WHERE span_role = 'agent_task'), 0)")}
FROM _counted WHERE end_ns IS NOT NULL GROUP BY ALL
ON CONFLICT (minute, agent_id) DO UPDATE SET spans = agent_minutes.spans + excluded.spans,
  errors = agent_minutes.errors + excluded.errors, llm_calls = agent_minutes.llm_calls + excluded.llm_calls,
  tokens = {_saturated("agent_minutes.tokens::HUGEINT + excluded.tokens")}, tasks = agent_minutes.tasks + excluded.tasks,
  task_duration_ns = {_saturated("agent_minutes.task_duration_ns::HUGEINT + excluded.task_duration_ns")}"""

# Spend per minute, agent, model and tenant, in every insert transaction: budgets are rebuilt from
# it, so a restart keeps the spend and a spool replay counts it once.  The tenant is the `tenant.id`
# resource attribute ('' without one): a property of the deployment that sent the spans, so it is
# read from the few resource attributes, not searched for among every span's attributes.
COST_MINUTES_DDL = ("CREATE TABLE IF NOT EXISTS cost_minutes (minute BIGINT NOT NULL, agent_id VARCHAR NOT NULL, "
                    "model VARCHAR NOT NULL, tenant VARCHAR NOT NULL DEFAULT '', cost_usd DOUBLE NOT NULL, "
                    "spans BIGINT NOT NULL, PRIMARY KEY (minute, agent_id, model, tenant))")
# A store from before tenants had (minute, agent_id, model) as its key: copied into the new shape.
COST_MINUTES_MIGRATION = (
    "ALTER TABLE cost_minutes RENAME TO cost_minutes_old",
    COST_MINUTES_DDL,
    "INSERT INTO cost_minutes SELECT minute, agent_id, model, '', cost_usd, spans FROM cost_minutes_old",
    "DROP TABLE cost_minutes_old",
)
TENANT_SQL = f"coalesce({_key_value('resource_attributes', _quote('tenant.id'))}, '')"
COST_ROLLUP_SQL = f"""INSERT INTO cost_minutes
SELECT end_ns // 60000000000, coalesce(agent_id, ''), coalesce(model, ''), {TENANT_SQL}, sum(cost_usd), count(*)
FROM _counted WHERE cost_usd IS NOT NULL GROUP BY ALL
ON CONFLICT (minute, agent_id, model, tenant) DO UPDATE SET
  cost_usd = cost_minutes.cost_usd + excluded.cost_usd, spans = cost_minutes.spans + excluded.spans"""
# What the batch charges, for budgets after the commit: per agent, model and tenant, and per task
# (trace) only when a task budget needs it (a batch holds ~1k traces but ~10 agents).
# The minute is that of cost_minutes: a budget charges what was spent in its current period, as the
# rebuild from cost_minutes does.
_CHARGED = "FROM _counted WHERE cost_usd IS NOT NULL AND cost_usd > 0 GROUP BY ALL"
CHARGES_SQL = (f"SELECT coalesce(agent_id, ''), NULL, coalesce(model, ''), {TENANT_SQL}, sum(cost_usd), count(*), "
               "end_ns // 60000000000 " + _CHARGED)
CHARGES_BY_TASK_SQL = (f"SELECT coalesce(agent_id, ''), trace_id, coalesce(model, ''), {TENANT_SQL}, sum(cost_usd), "
                       "count(*), end_ns // 60000000000 " + _CHARGED)
# What a commit charges when a task budget needs it, in one statement: the period rows of CHARGES_SQL
# (trace NULL) and one row per agent and trace (model, tenant and minute NULL) for the task budgets,
# rather than a row per trace, model, tenant and minute summed again in Python per commit (measured:
# ~40 % of the charging callback's CPU at max rate).
CHARGES_SPLIT_SQL = (
    "SELECT agent, trace_id, model, tenant, sum(cost_usd), count(*), minute FROM (SELECT coalesce(agent_id, '') AS agent, "
    f"trace_id, coalesce(model, '') AS model, {TENANT_SQL} AS tenant, cost_usd, end_ns // 60000000000 AS minute "
    "FROM _counted WHERE cost_usd IS NOT NULL AND cost_usd > 0) "
    "GROUP BY GROUPING SETS ((agent, model, tenant, minute), (agent, trace_id))")


# --- look-ups by key, left out of a batch that has no such key --------------------------------------
# A look-up by key in one of a span's lists, as the statements above write it (an SLI's
# attributes['k'], the tenant, an evaluation's score), is a lambda over every span of the batch: measured
# ~0.3 us per span for each, most of it DuckDB reading the nested column from the batch, and it yields NULL
# for a span without the key.  Most batches have no span with the key (an evaluator's score, a tenant
# in a single-tenant deployment): the store runs them with NULL in the look-up's place (``without``),
# which DuckDB folds, and no nested column is read for it.  Whether a batch has the key is one Arrow
# comparison over its flattened keys (``present``: ~0.05 us per span).


@dataclass(frozen=True)
class Lookup:
    """A key looked up in a list column of the storage layout (events: an event's name)."""

    column: str  # attributes | resource_attributes | events
    key: str


_KEY_BEFORE, _KEY_BETWEEN, _KEY_AFTER = _key_value("\x00", "\x01").replace("\x01", "\x00").split("\x00")
_BY_KEY = re.compile(re.escape(_KEY_BEFORE) + "(attributes|resource_attributes)" + re.escape(_KEY_BETWEEN)
                     + r"('(?:[^']|'')*')" + re.escape(_KEY_AFTER))
_SCORE_BEFORE, _SCORE_AFTER = evaluation_score("\x00").split("\x00")
_BY_EVALUATION = re.compile(re.escape(_SCORE_BEFORE) + r"'(?:[^']|'')*'" + re.escape(_SCORE_AFTER))


def _unquoted(literal: str) -> str:
    return literal[1:-1].replace("''", "'")


def lookups(statements: Iterable[str]) -> frozenset[Lookup]:
    """The look-ups by key of these statements that ``without`` can leave out."""
    found: set[Lookup] = set()
    for sql in statements:
        found.update(Lookup(m.group(1), _unquoted(m.group(2))) for m in _BY_KEY.finditer(sql))
        if _BY_EVALUATION.search(sql):
            found.add(Lookup("events", EVALUATION_EVENT))
    return frozenset(found)


def without(sql: str, absent: frozenset[Lookup]) -> str:
    """The statement with NULL for each look-up of a key no span of the batch has (what it yields there)."""
    if not absent:
        return sql
    sql = _BY_KEY.sub(lambda m: "NULL::VARCHAR" if Lookup(m.group(1), _unquoted(m.group(2))) in absent
                      else m.group(0), sql)
    if Lookup("events", EVALUATION_EVENT) in absent:
        sql = _BY_EVALUATION.sub("NULL::VARCHAR", sql)
    return sql


def present(rows: pa.Table, wanted: frozenset[Lookup]) -> frozenset[Lookup]:
    """Which of the ``wanted`` keys some span of ``rows`` (storage layout) has; a column the batch lacks
    counts as having them all (its statements are then left as they are)."""
    import pyarrow.compute as pc  # here, not at the top: ~36 ms of `agent-sre query --db`'s start-up

    found: set[Lookup] = set()
    for column in {w.column for w in wanted}:
        keys = [w for w in wanted if w.column == column]
        if column not in rows.column_names:
            found.update(keys)
            continue
        flat = pc.list_flatten(rows.column(column))
        names = pc.struct_field(flat, "name" if column == "events" else "key")
        found.update(w for w in keys if pc.any(pc.equal(names, w.key)).as_py())
    return frozenset(found)


def held_presence_sql(keys: list[Lookup], table: str) -> str:
    """One row: for each of ``keys``, whether some span of ``table`` (storage layout) has it."""
    return "SELECT " + ", ".join(
        f"coalesce(bool_or({_has_key(k.column, _quote(k.key), 'name' if k.column == 'events' else 'key')}), false)"
        for k in keys) + f" FROM {table}"
