"""``agent_sre.chaos``: fault injection inside an agent (standard library only at import)."""
