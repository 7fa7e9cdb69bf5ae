"""Built-in demo agents (placeholder until the agent API lands)."""
