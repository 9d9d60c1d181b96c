"""The agent's own logs and metrics."""
