"""Agent identity follows the trace: a span with no agent of its own belongs to the agent of its
nearest ancestor that has one, and so do its task, session and version.

Agents instrumented the way the GenAI conventions describe put ``gen_ai.agent.id`` on the
``invoke_agent`` span only; its LLM and tool spans carry none.  The OpenTelemetry SDK exports a
span when it ends, so children usually arrive *before* their parent, in other requests and
through other worker processes.  Attribution therefore runs in the store's insert transaction
(after the durable point, on one writer), before every rollup:

1. The batch being inserted (read where it lies) plus the spans still *held* from earlier batches
   whose trace got new spans now or whose wait is over (no other held span can change).
2. For each span without an agent, walk up the parent chain (a recursive query) through
   the batch, those held spans and the spans committed in the last ``lookback`` (read by ``received_ns``, which
   DuckDB prunes by zone maps), and stop at the first ancestor with an agent.
3. Verdicts: **resolved** (an ancestor with an agent: its identity fills the span's empty
   columns); **root** (the chain ends at a root with no agent: nothing will come); **wait** (a
   parent is not here yet).  A span waits at most ``wait`` from its receipt, then is released
   with what it has.  Released spans without an agent fall back to their resource's
   ``service.name`` (unless it is the SDK's ``unknown_service…``), else stay unattributed
   (``agent_id`` NULL; counted in ``agent_sre_attribution_unattributed_spans``).
4. Released spans go to ``span_rows``, with the insert's time as ``received_ns`` (a held span's too:
   the rollups read what each insert stored by it), and are what every rollup, budget, breaker and SLI of this
   transaction sees (``_batch``); waiting spans go to ``held_spans`` (queried through the ``spans``
   view like any other).  Both in the same transaction as the spool position, so a crash and a
   spool replay attribute every span exactly once.

A batch whose spans all have an agent, with nothing held, takes none of this (one null count).
"""

from __future__ import annotations

from dataclasses import dataclass

# The identity a span inherits from its nearest ancestor with an agent (only where its own is null).
INHERITED = ("agent_id", "agent_name", "agent_version", "session_id", "task_name")
MAX_DEPTH = 64  # a parent chain longer than this (or a cycle) stops the walk: released as it is


@dataclass(frozen=True)
class AttributionSettings:
    """How long a span without an agent may wait for an ancestor, and how far back ancestors are
    looked up among committed spans (both in seconds)."""

    wait: float = 120.0
    lookback: float = 300.0
    service_name_fallback: bool = True
    max_held_spans: int = 1_000_000  # beyond it the oldest are released at once (bounded disk)


HELD_DDL = "CREATE TABLE IF NOT EXISTS held_spans AS SELECT * FROM span_rows LIMIT 0"

_IDS = "trace_id, span_id, parent_span_id, " + ", ".join(INHERITED)
_REST = ", ".join(f"{c} := {c}" for c in ("parent_span_id", *INHERITED))


def _fallback(settings: AttributionSettings) -> str:
    if not settings.service_name_fallback:
        return "NULL"
    return "CASE WHEN i.service_name NOT LIKE 'unknown_service%' THEN nullif(i.service_name, '') END"


def statements(settings: AttributionSettings, now_ns: int) -> list[str]:
    """The statements that turn ``_in`` (the batch, storage layout) plus ``held_spans`` into
    ``_batch`` (a view of what is released now, attributed, with ``received_ns``) and the new
    ``held_spans``."""
    lookback_ns = now_ns - int(settings.lookback * 1e9)
    expire_ns = now_ns - int(settings.wait * 1e9)
    inherit = ", ".join(f"coalesce(i.{c}, s.{c}) AS {c}" for c in INHERITED[1:])
    both = f"(SELECT *, {now_ns}::BIGINT AS received_ns FROM _in UNION ALL BY NAME SELECT * FROM _held)"
    return [
        # Of the held spans, only those whose trace got spans now (a missing ancestor may have come)
        # or whose wait is over can change: the work is the batch's, not the backlog's.  The batch
        # itself is read where it lies (``_in``); only what is released or held is copied.
        f"CREATE OR REPLACE TEMP TABLE _held AS SELECT * FROM held_spans WHERE trace_id IN "
        f"(SELECT trace_id FROM _in) OR received_ns <= {expire_ns}",
        "CREATE OR REPLACE TEMP TABLE _cand AS SELECT trace_id, span_id, parent_span_id FROM _in "
        "WHERE agent_id IS NULL UNION ALL SELECT trace_id, span_id, parent_span_id FROM _held",
        # Everything an ancestor can be: this transaction's spans and the recently committed ones of
        # the same traces.
        # One row per span (a retried span may come twice): a hash aggregate, the copy with an agent first.
        f"CREATE OR REPLACE TEMP TABLE _nodes AS SELECT trace_id, span_id, unnest(arg_max(struct_pack("
        f"{_REST}), agent_id IS NOT NULL)) FROM (SELECT {_IDS} FROM _in UNION ALL SELECT {_IDS} FROM _held "
        f"UNION ALL SELECT {_IDS} FROM span_rows WHERE received_ns >= {lookback_ns} "
        "AND trace_id IN (SELECT trace_id FROM _cand)) GROUP BY trace_id, span_id",
        # Walk up from each span without an agent; `up` is the next ancestor to look at.
        f"""CREATE OR REPLACE TEMP TABLE _verdicts AS
WITH RECURSIVE walk(trace_id, span_id, up, depth) AS (
  SELECT DISTINCT trace_id, span_id, parent_span_id, 0 FROM _cand
  UNION ALL
  SELECT w.trace_id, w.span_id, n.parent_span_id, w.depth + 1 FROM walk w
  JOIN _nodes n ON n.trace_id = w.trace_id AND n.span_id = w.up
  WHERE n.agent_id IS NULL AND w.depth < {MAX_DEPTH}),
last AS (SELECT trace_id, span_id, arg_max(up, depth) AS up, max(depth) AS depth FROM walk
          GROUP BY trace_id, span_id)
SELECT l.trace_id, l.span_id,
  CASE WHEN n.agent_id IS NOT NULL THEN 'resolved'
       WHEN coalesce(l.up, '') = '' OR n.span_id IS NOT NULL OR l.depth >= {MAX_DEPTH} THEN 'root'
       ELSE 'wait' END AS verdict,
  {", ".join(f"n.{c}" for c in INHERITED)}
FROM last l LEFT JOIN _nodes n ON n.trace_id = l.trace_id AND n.span_id = l.up""",
        f"""CREATE OR REPLACE TEMP TABLE _ready AS
SELECT i.* REPLACE (coalesce(i.agent_id, s.agent_id, {_fallback(settings)}) AS agent_id, {inherit},
  -- stored now: a held span's receipt becomes its release's (the rollups read what was stored by it)
  {now_ns}::BIGINT AS received_ns,
  -- a delegation that names no delegator was sent by its own agent (normalize.py does the same for
  -- spans that carry their agent; these inherit it here)
  CASE WHEN i.delegation_from IS NULL AND i.delegation_to IS NOT NULL AND i.span_role = 'delegation'
       THEN coalesce(i.agent_id, s.agent_id, {_fallback(settings)}) ELSE i.delegation_from END AS delegation_from)
FROM {both} i LEFT JOIN _verdicts s ON s.trace_id = i.trace_id AND s.span_id = i.span_id
WHERE i.agent_id IS NOT NULL OR s.verdict IS DISTINCT FROM 'wait' OR i.received_ns <= {expire_ns}""",
        "DELETE FROM held_spans USING _held h WHERE held_spans.trace_id = h.trace_id "
        "AND held_spans.span_id = h.span_id",
        f"""INSERT INTO held_spans BY NAME SELECT i.* FROM {both} i
JOIN _verdicts s ON s.trace_id = i.trace_id AND s.span_id = i.span_id
WHERE i.agent_id IS NULL AND s.verdict = 'wait' AND i.received_ns > {expire_ns}""",
        "CREATE OR REPLACE TEMP VIEW _batch AS SELECT * FROM _ready",
    ]


# Dropped before the commit: temporary tables live in DuckDB's buffer pool (48 MB by default), and
# a 16k-span batch with its attributes is a good part of it.
CLEANUP = ("DROP VIEW IF EXISTS _batch", "DROP TABLE IF EXISTS _ready", "DROP TABLE IF EXISTS _held",
           "DROP TABLE IF EXISTS _cand", "DROP TABLE IF EXISTS _nodes", "DROP TABLE IF EXISTS _verdicts")


def _received(now_ns: int) -> str:
    return f"SELECT *, {now_ns}::BIGINT AS received_ns FROM _in"


def direct_statement(now_ns: int) -> str:
    """Nothing to attribute: the batch is released as it is."""
    return f"CREATE OR REPLACE TEMP VIEW _batch AS {_received(now_ns)}"


def direct_insert(now_ns: int) -> str:
    """Nothing to attribute or filter: the batch (``_in``) stored as it is, without a view in between."""
    return f"INSERT INTO span_rows BY NAME {_received(now_ns)}"


def overflow_statement(settings: AttributionSettings) -> str:
    """Held beyond ``max_held_spans``: the oldest are released with the next transaction.  Their receipt
    is negated, which puts it past any wait (and keeps their order); released, a span is stored with the
    releasing insert's time, as every released span is (``_ready``)."""
    return (f"UPDATE held_spans SET received_ns = -received_ns WHERE received_ns > 0 AND rowid IN (SELECT rowid FROM held_spans "
            f"ORDER BY received_ns LIMIT (SELECT greatest(count(*) - {settings.max_held_spans}, 0) FROM held_spans))")
