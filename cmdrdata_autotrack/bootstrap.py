"""Start the agent in this process, guarded: whatever fails, the app runs on uninstrumented."""

from __future__ import annotations

import sys

_DONE = "_cmdrdata_autotrack_bootstrapped"


def run() -> None:
    """Idempotent: a process is instrumented once, however many ways it asks."""
    if getattr(sys, _DONE, False):
        return
    setattr(sys, _DONE, True)
    try:
        from . import agent
        from .config import Settings
        from .telemetry import logging as agent_logging

        settings = Settings.from_env()
        agent_logging.configure(settings.log_level, settings.log_format)
        agent.start_when_openai_is_imported(settings)
    except Exception as exc:  # never crash the app
        try:
            from .telemetry.logging import logger

            logger.error("cmdrdata-autotrack could not start; the app runs uninstrumented: %r", exc)
        except Exception:
            pass
