"""``agent_sre.delivery``: progressive delivery inside an agent (standard library only at import)."""
