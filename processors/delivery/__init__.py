"""delivery: canary and shadow rollouts of agent versions, judged from the stored spans."""
