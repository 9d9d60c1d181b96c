"""Instrumentation of the ``openai`` Python SDK (1.x, 2.x, 3.x)."""
