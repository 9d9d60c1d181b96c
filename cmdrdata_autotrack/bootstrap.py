"""Start the agent in this process, guarded: whatever fails, the app runs on uninstrumented.

Every Python process under ``cmdrdata-run`` runs :func:`run` at start-up, most of
them never to import ``openai``, so it does next to nothing: it registers the exit
and SIGTERM flush and a finder for ``openai``, importing only modules the
interpreter has already loaded (no settings, no logging, no OpenTelemetry).

When the app imports ``openai``, the SDK's classes are patched at once, so no call
can be missed, and the rest of the agent (the settings, with a warning for any bad
value; OpenTelemetry, the pipeline, the tracer provider) starts on a background
thread: ``import openai`` returns without waiting for it. A call made
before that start has finished waits for it, and so do ``fork`` (a child must not
inherit a start half done) and the exit flush.

With ``CMDRDATA_METRICS_PORT`` set the settings are read at start-up instead, so the
health server can answer before the app imports ``openai``.
"""

from __future__ import annotations

import os
import sys
from _thread import allocate_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    from .config import Settings
    from .instrumentation.openai.wrappers import Runtime
    from .telemetry.health_server import Gauges

_DONE = "_cmdrdata_autotrack_bootstrapped"
LIFECYCLE_FLAG = "_cmdrdata_autotrack_lifecycle"  # the agent then installs no exit hooks of its own
METRICS_PORT_VARIABLE = "CMDRDATA_METRICS_PORT"
WARM_UP_JOIN_S = 30.0  # the longest a fork waits for the background start (normally ms)

_settings: Settings | None = None  # read at start-up (metrics port) or at the import of openai
_start_lock = allocate_lock()
_start_tried = False
_warm_up: Any = None  # the background start's thread


def run() -> None:
    """Idempotent: a process is instrumented once, however many ways it asks."""
    if getattr(sys, _DONE, False):
        return
    setattr(sys, _DONE, True)
    try:
        if os.environ.get(METRICS_PORT_VARIABLE, "").strip():
            settings = _read_settings()
            if settings.metrics_port is not None:
                _serve_health(settings, settings.metrics_port)
        _install_lifecycle()
        if "openai" in sys.modules:  # imported before us (``cmdrdata_autotrack.auto`` late)
            _start_now()
        else:
            from .import_hook import when_imported

            when_imported("openai", _on_openai_imported)
    except Exception as exc:  # never crash the app
        _log_failure(exc)


def _log_failure(exc: BaseException) -> None:
    try:
        from .telemetry.logging import logger

        logger.error("cmdrdata-autotrack could not start; the app runs uninstrumented: %r", exc)
    except Exception:
        pass


def _read_settings() -> Settings:
    """The settings, read once a process (warning about bad values), with logging set up."""
    global _settings
    if _settings is None:
        from .config import Settings
        from .telemetry import logging as agent_logging

        settings = Settings.from_env()
        agent_logging.configure(settings.log_level, settings.log_format)
        _settings = settings
    return _settings


# --- the first import of openai -------------------------------------------------------------


def _on_openai_imported(module: ModuleType) -> None:
    """Patch now; start the rest in the background (synchronously if that cannot be)."""
    try:
        running = sys.modules.get(__package__ + ".agent")
        if running is not None and running.get() is not None:
            return  # started already (``instrument()``, ``opentelemetry-instrument``)
        # (the settings are read by the start, off the app's thread: patching needs none)
        from .instrumentation.openai import instrumentor

        instrumentor.instrument_deferred(_start_agent)
        _start_in_background()
    except Exception:
        _start_now()


def _start_in_background() -> None:
    global _warm_up
    import threading

    thread = threading.Thread(target=_start_agent, name="cmdrdata-start", daemon=True)
    if hasattr(os, "register_at_fork"):
        # A fork waits for the start to finish (_before_fork), so a child never inherits
        # it half done. Fork hooks run last-registered first, and the "before" hooks of
        # logging and concurrent.futures take locks the start needs (getLogger, and the
        # executor of the OpenTelemetry resource detectors): ours is registered after
        # theirs. Imported now, concurrent.futures.thread is also not first imported by
        # the start while a fork waits (that fork would run only its "after" hooks).
        import concurrent.futures.thread  # noqa: F401
        import logging  # noqa: F401  (already imported: by openai, and the settings)

        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _warm_up = thread
    thread.start()


def _start_now() -> None:
    try:
        _start_agent()
    except Exception as exc:
        _log_failure(exc)


def _start_agent() -> Runtime | None:
    """Start the agent (once; whoever comes second waits for the first) and return its
    runtime, or ``None`` when it could not start (the SDK is then left unpatched)."""
    global _start_tried
    from . import agent

    with _start_lock:
        if not _start_tried:
            _start_tried = True
            if agent.get() is None:
                try:
                    started = agent.start(_read_settings())
                    started.tracers.warm_up()  # so the first call need not build the provider
                except Exception:
                    from .telemetry.logging import error_once

                    error_once("start", "cmdrdata: could not start; the app runs uninstrumented")
                if agent.get() is None:
                    _unpatch()
    running = agent.get()
    return running.runtime if running is not None else None


def _unpatch() -> None:
    import contextlib

    instrumentor = sys.modules.get(__package__ + ".instrumentation.openai.instrumentor")
    if instrumentor is not None:
        with contextlib.suppress(Exception):
            instrumentor.uninstrument()


def _finish_starting(timeout: float = WARM_UP_JOIN_S) -> None:
    """Wait (bounded) for the background start, unless this is its own thread."""
    thread = _warm_up
    if thread is None or thread.ident is None:
        return  # none was started (nor threading imported for one)
    import threading

    if thread is not threading.current_thread():
        thread.join(timeout)


# --- exit, SIGTERM and fork -------------------------------------------------------------------


def _install_lifecycle() -> None:
    """The exit and SIGTERM flush, installed now (on the main thread, where signal handlers
    can be set) for whenever the agent starts."""
    import atexit

    from . import lifecycle

    setattr(sys, LIFECYCLE_FLAG, True)
    atexit.register(_at_exit)
    lifecycle.install_signal_handlers(_on_terminate)


def _at_exit() -> None:
    settings = _settings
    _finish_starting(settings.shutdown_timeout if settings is not None else WARM_UP_JOIN_S)
    running = sys.modules.get(__package__ + ".agent")
    if running is not None:
        running._at_exit()


def _on_terminate() -> None:
    _at_exit()


def _before_fork() -> None:
    _finish_starting()


def _after_fork_in_child() -> None:
    global _start_lock
    _start_lock = allocate_lock()  # an app thread may have held it, only to see it done


# --- the health server at start-up --------------------------------------------------------


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
