"""``agent_sre.replay``: what runs inside an agent being replayed (standard library only)."""
