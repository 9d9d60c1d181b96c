"""Where the agent's spans go: the app's tracer provider, or one the agent configures."""
