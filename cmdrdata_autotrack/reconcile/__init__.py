"""Reconciliation: what the agent metered against what OpenAI says it billed.

``usage_api`` reads OpenAI's organization Usage and Costs APIs, ``metered`` reads
what the agent metered, ``buckets`` aligns both to OpenAI's UTC time buckets and
``compare`` sets them side by side (pure: no I/O).
"""
