"""A priced span is charged once in the fleet, wherever a client re-sent it.

OTLP is at-least-once: a pipeline killed after committing a request, before its OK left, gets the
request again from a sidecar's agent (its store keeps one copy: pipeline/storage/dedup.py), or a
gateway's client sends it to the next gateway.  There the span is stored a second time, and each
pipeline's contribution to the fleet budgets in Redis is its own store's spend: without this, the
fleet total counted such a span twice.

With ``state: redis://…`` the cost processor charges from each committed batch's rows: every priced
span (``cost_usd`` > 0) is claimed in Redis under its identity (``dedup.span_keys`` of trace and span
id, ``SET NX`` with the pipeline's instance name, for ``claim_window``), and only the spans this
pipeline claimed first — or claimed before, as after a restart — are charged.  The spend of spans
another pipeline claimed is recorded in the store (``cost_claimed_elsewhere``), so the rebuild at start
(``summary.restore_budgets``) leaves it out of this pipeline's own spend as well; at start the spans
committed within ``claim_window`` are claimed again, for a commit whose charge the kill cut short.

Not covered: a span re-sent after ``claim_window``, and spans committed while Redis was unreachable
(charged where they landed, as the local view does for all spend then).  Redis holds ~200 bytes per
priced span for ``claim_window``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.storage.dedup import span_keys

# One row per span another pipeline claimed first (a handful after a kill): what the rebuild leaves out.
ELSEWHERE_DDL = ("CREATE TABLE IF NOT EXISTS cost_claimed_elsewhere (minute BIGINT, agent_id VARCHAR, model VARCHAR, "
                 "tenant VARCHAR, trace_id VARCHAR, span_id VARCHAR, cost_usd DOUBLE)")
_MINUTE_NS = 60_000_000_000
# A commit's charges, as the store's SQL gives them (rollups.CHARGES_SPLIT_SQL): agent, trace, model,
# tenant, USD, spans, minute of the spans' end; per agent, model, tenant and minute (trace None), and per
# task also per agent and trace (model, tenant and minute None).
Charge = tuple[str, "str | None", "str | None", "str | None", float, int, "int | None"]


def priced_spans(rows: pa.Table) -> pa.Table:
    """The committed rows' priced spans, as (agent_id, trace_id, span_id, model, tenant, cost_usd,
    minute): the columns the charges and the claims need, nulls as the store's SQL writes them ('')."""
    cost = rows.column("cost_usd")
    mask = pc.fill_null(pc.greater(cost, 0), False)
    rows = rows.filter(mask)
    n = rows.num_rows
    tenant = np.full(n, "", dtype=object)
    if n:
        attrs = rows.column("resource_attributes").combine_chunks()
        flat = pc.list_flatten(attrs)
        hit = pc.fill_null(pc.equal(flat.field("key"), "tenant.id"), False)
        if pc.any(hit).as_py():
            where = pc.filter(pc.list_parent_indices(attrs), hit).to_numpy()
            tenant[where] = [v or "" for v in pc.filter(flat.field("value"), hit).to_pylist()]
    return pa.table({
        "agent_id": pc.fill_null(rows.column("agent_id"), ""),
        "trace_id": rows.column("trace_id"),
        "span_id": rows.column("span_id"),
        "model": pc.fill_null(rows.column("model"), ""),
        "tenant": pa.array(tenant, pa.string()),
        "cost_usd": rows.column("cost_usd"),
        "minute": pc.divide(rows.column("end_ns"), _MINUTE_NS),
    })


def keys_of(spans: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit identity per span, whether it has one: spans without valid ids cannot be claimed)."""
    return span_keys(spans.column("trace_id"), spans.column("span_id"))


def charges(spans: pa.Table, by_task: bool) -> list[Charge]:
    """What the store's charge SQL returns for the same spans: summed per agent, model, tenant and
    minute, and with ``by_task`` also per agent and trace (rollups.CHARGES_SPLIT_SQL)."""
    if not spans.num_rows:
        return []
    sums = [("cost_usd", "sum"), ("cost_usd", "count")]
    out = spans.group_by(["agent_id", "model", "tenant", "minute"], use_threads=False).aggregate(sums)
    cols = {name: out.column(name).to_pylist() for name in out.column_names}
    rows: list[Charge] = list(zip(cols["agent_id"], [None] * out.num_rows, cols["model"], cols["tenant"],
                                  cols["cost_usd_sum"], cols["cost_usd_count"], cols["minute"], strict=True))
    if by_task:
        out = spans.group_by(["agent_id", "trace_id"], use_threads=False).aggregate(sums)
        cols = {name: out.column(name).to_pylist() for name in out.column_names}
        none = [None] * out.num_rows
        rows += zip(cols["agent_id"], cols["trace_id"], none, none, cols["cost_usd_sum"], cols["cost_usd_count"],
                    none, strict=True)
    return rows


def elsewhere_rows(spans: pa.Table) -> list[tuple]:
    """The rows of ``cost_claimed_elsewhere`` for these spans (another pipeline's to charge)."""
    cols = [spans.column(c).to_pylist() for c in ("minute", "agent_id", "model", "tenant", "trace_id", "span_id",
                                                   "cost_usd")]
    return list(zip(*cols, strict=True))
