"""Whose data a console page shows: every tenant's, or, to a caller whose key carries a tenant, that
tenant's only, by the admin API's rules (admin_tenants.py):

    fleet, SLOs, incidents      rows of the tenant's agents (the agents every stored span of which
                                carries the tenant: pipeline/storage/tenants.py)
    costs                       its agents' spend and its own budget accounts (tenant_costs), its
                                agents' costliest tasks and anomalies, its own line of spend per tenant
    traces                      traces all of whose agents are its agents (search and waterfall)
    SQL                         the query sandbox scoped to the tenant (QueryLimits.tenant)

Another tenant's agent, incident or trace is 404, the same answer as one that does not exist."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVERYONE", "Viewer"]


@dataclass(frozen=True)
class Viewer:
    tenant: str | None = None  # None: every tenant's data
    agents: frozenset[str] | None = None  # the tenant's agents; None: every agent

    def sees(self, agent: str | None) -> bool:
        return self.agents is None or agent in self.agents

    def mine(self, rows: list[dict], key: str = "agent_id") -> list[dict]:
        return rows if self.agents is None else [r for r in rows if r.get(key) in self.agents]

    def refusal(self, what: str) -> str:
        return f"{what} is not one of tenant {self.tenant!r}'s"


EVERYONE = Viewer()
