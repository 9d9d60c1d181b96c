"""Whose usage it is: per-call arguments, the customer context, baggage, the process default."""
