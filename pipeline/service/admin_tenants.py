"""What the admin API's reads show a caller whose key carries a tenant.

    /v1/query       that tenant's rows only (QueryLimits.tenant; pipeline/storage/tenants.py)
    /v1/costs       spend of the tenant's agents; the budget accounts of the tenant, of its agents and of
                    their tasks (org and model accounts add up every tenant's spend: not shown)
    /v1/decisions   the tenant's agents; any other agent id is 404
    /v1/slos        the SLO rows of the tenant's agents
    /v1/incidents   the incidents of the tenant's agents; any other is 404 (its log, postmortem and
                    lifecycle too)
    /v1/status      as for everyone: components, listeners and queue sizes hold no tenant's data

The tenant's agents are those every stored span of which carries the tenant (``OWNED_AGENTS_SQL``),
the same rule the query API's per-agent tables follow.  The answers from memory (decisions) must stay
fast, so the owners are read again only when ``OWNERS_TTL_S`` old, or when a tenant asks for an agent
they do not list and they are ``MISS_REFRESH_S`` old: an agent's first stored spans show it to its
tenant within a second, and asking for unknown agents costs at most one read a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent_sre.pipeline.storage.tenants import OWNED_AGENTS_SQL

__all__ = ["OWNERS_TTL_S", "TenantAgents", "tenant_costs"]

OWNERS_TTL_S = 5.0  # measured: the owners of 1M stored spans (100 agents) are read in 0.11 s
MISS_REFRESH_S = 1.0


class TenantAgents:
    """agent ids per tenant, read from the store and kept ``ttl`` seconds."""

    def __init__(self, read: Callable[[str], list[tuple]], ttl: float = OWNERS_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._read, self._ttl, self._clock = read, ttl, clock
        self._owners: dict[str, frozenset[str]] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def cached(self, tenant: str, agent: str | None = None) -> frozenset[str] | None:
        """The tenant's agents if fresh enough (no I/O: for the event loop), else None.  ``agent``: the one
        asked for; when it is not listed, the list is fresh for ``MISS_REFRESH_S`` only."""
        age = self._clock() - self._read_at
        found = self._owners.get(tenant, frozenset())
        if age >= self._ttl or (agent is not None and agent not in found and age >= MISS_REFRESH_S):
            return None
        return found

    def of(self, tenant: str, agent: str | None = None) -> frozenset[str]:
        """The tenant's agents, read again unless ``cached`` (in a worker thread)."""
        with self._lock:  # one reader at a time; the others take its answer
            found = self.cached(tenant, agent)
            if found is not None:
                return found
            owners: dict[str, set[str]] = {}
            for agent, owner in self._read(OWNED_AGENTS_SQL):
                owners.setdefault(owner, set()).add(agent)
            self._owners = {owner: frozenset(agents) for owner, agents in owners.items()}
            self._read_at = self._clock()
            return self._owners.get(tenant, frozenset())


def tenant_costs(answer: dict, tenant: str, agents: frozenset[str]) -> dict:
    """``/v1/costs`` as ``tenant`` sees it: its agents' spend and its own budget accounts."""
    def mine(account: dict) -> bool:
        kind = account["scope"].partition("_")[0]
        if kind == "tenant":
            return account["subject"] == tenant
        if kind == "agent":
            return account["subject"] in agents
        return kind == "task" and account.get("agent_id") in agents

    return {"summary": [r for r in answer["summary"] if r["agent_id"] in agents],
            "budgets": [b for b in answer["budgets"] if mine(b)], "tenant": tenant}
