"""Who a batch speaks for, decided by the receiver from the client's credentials, not its attributes.

``stamp_resource_attribute`` writes one resource attribute on every row (the tenant of an
authenticated key: ``tenant.id``, the key the store's cost rollups group by), replacing whatever the
client sent under that key.  ``bind_agents`` checks the agent every span claims against the agents
its key may speak for.  Both are columnar: a batch of 10k spans costs a few array operations, no
Python per span.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.pdata.normalize import (
    Conventions,
    _flatten,
    _single_array,
    load_conventions,
    normalize,
)

__all__ = ["TENANT_ATTRIBUTE", "AgentBinding", "agent_id_conventions", "bind_agents", "stamp_resource_attribute"]

TENANT_ATTRIBUTE = "tenant.id"


def stamp_resource_attribute(table: pa.Table, key: str, value: str) -> pa.Table:
    """``table`` with ``resource_attributes[key] = value`` on every row, other entries kept in order."""
    if table.num_rows == 0:
        return table
    maps = _single_array(table.column("resource_attributes"))
    n = len(maps)
    flat = _flatten(maps)
    keep = pc.not_equal(flat.keys, key).to_numpy(zero_copy_only=False)  # map keys are never null
    if maps.null_count:  # a null map's offsets may still span entries: they are not its attributes
        keep &= maps.is_valid().to_numpy(zero_copy_only=False)[flat.owner]
    kept = np.flatnonzero(keep)
    # Kept entries, then one new entry per row; a stable sort by row puts the new one last in its map.
    rows = np.concatenate([flat.owner[kept], np.arange(n, dtype=np.int64)])
    order = pa.array(np.argsort(rows, kind="stable"))
    one = pa.array(np.zeros(n, dtype=np.int64))
    keys = pa.concat_arrays([flat.keys.take(kept), pa.array([key], pa.string()).take(one)]).take(order)
    values = pa.concat_arrays([flat.values.take(kept), pa.array([value], pa.string()).take(one)]).take(order)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    stamped = pa.MapArray.from_arrays(pa.array(offsets), keys, values, type=maps.type)
    i = table.schema.get_field_index("resource_attributes")
    return table.set_column(i, table.schema.field(i), stamped)


@lru_cache(maxsize=1)
def agent_id_conventions() -> Conventions:
    """The shipped table's agent_id rows only: what the receiver needs to read a span's claimed agent."""
    shipped = load_conventions()
    return Conventions({"agent_id": shipped.columns["agent_id"]}, (), ())


@dataclass(frozen=True)
class AgentBinding:
    table: pa.Table  # the spans kept, their agent_id set
    foreign: int  # spans that claimed an agent the key may not speak for
    examples: tuple[str, ...]  # up to three of the agent ids claimed
    reattributed: int  # of those, re-attributed to the key's agent (kept)


def bind_agents(table: pa.Table, agents: tuple[str, ...], reattribute: bool,
                conventions: Conventions | None = None) -> AgentBinding:
    """Hold ``table`` to ``agents`` (the key's agent ids, the first its own).

    A span's claim is its canonical agent_id by ``conventions`` (the shipped agent_id rows).  Foreign
    claims are dropped, or with ``reattribute`` set to ``agents[0]``.  A key of one agent also gets the
    spans that claim none: otherwise the store would attribute them through their trace or their
    ``service.name``, both of which the client controls.  agent_id is set on every kept span, so a
    later agent_semconv keeps the receiver's answer.
    """
    if table.num_rows == 0:
        return AgentBinding(table, 0, (), 0)
    derived = normalize(table, conventions or agent_id_conventions()).column("agent_id")
    allowed = pa.array(list(agents), pa.string())
    foreign = pc.and_(pc.is_valid(derived), pc.invert(pc.is_in(derived, value_set=allowed)))
    n_foreign = pc.sum(foreign).as_py() or 0
    examples = tuple(pc.unique(pc.filter(derived, foreign)).to_pylist()[:3]) if n_foreign else ()
    home = pa.scalar(agents[0], pa.string())
    agent_id = derived
    if reattribute and n_foreign:
        agent_id = pc.if_else(foreign, home, agent_id)
    if len(agents) == 1:
        agent_id = pc.fill_null(agent_id, home)
    i = table.schema.get_field_index("agent_id")
    out = table.set_column(i, table.schema.field(i), agent_id)
    if n_foreign and not reattribute:
        out = out.filter(pc.invert(foreign))
    return AgentBinding(out, n_foreign, examples, n_foreign if reattribute else 0)
