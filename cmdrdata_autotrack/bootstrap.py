"""Start the agent in this process, guarded: whatever fails, the app runs on uninstrumented."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .telemetry.health_server import Gauges

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
        if settings.metrics_port is not None:
            _serve_health(settings, settings.metrics_port)
        agent.start_when_openai_is_imported(settings)
    except Exception as exc:  # never crash the app
        try:
            from .telemetry.logging import logger

            logger.error("cmdrdata-autotrack could not start; the app runs uninstrumented: %r", exc)
        except Exception:
            pass


def _serve_health(settings: Settings, port: int) -> None:
    """Open the health server now, so probes answer before the app imports ``openai``
    (the agent attaches to it when it starts). Only socketserver is loaded for it."""
    try:
        from .telemetry import health_server

        health_server.serve(
            settings.metrics_host,
            port,
            at_start_up=True,
            gauges=_shared_spool_gauges(settings),
        )
    except Exception:
        from .telemetry.logging import error_once

        error_once("health-server", "cmdrdata: could not open the health server")


def _shared_spool_gauges(settings: Settings) -> Gauges | None:
    """The spool's gauges before the agent starts (a gunicorn master that never imports
    ``openai`` still shows the workers' shared spool). SQLite loads at the first scrape."""
    if settings.disabled or not settings.api_key:
        return None  # no spool: usage goes to the ledger

    def read() -> dict[str, float]:
        from .export.spool import Spool
        from .paths import locations

        path = locations(settings.spool_dir, settings.ledger_path).spool_path
        if not path.exists():
            return {}
        spool = Spool(path)
        try:
            stats = spool.stats()
        finally:
            spool.close()
        return {
            "spool_depth": stats.depth,
            "spool_bytes": stats.bytes,
            "dead_letters": stats.dead_letters,
        }

    return read
