"""Instrumentation, one package per provider SDK."""
