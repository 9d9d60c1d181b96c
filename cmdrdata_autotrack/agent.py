"""The running agent: settings, tracer, metering processor, delivery and instrumentation.

One agent a process. It starts from the bootstrap (``cmdrdata-run``,
``cmdrdata_autotrack.auto``), from :func:`cmdrdata_autotrack.instrument`, or
from ``TrackedOpenAI``; it flushes at exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import sys
import threading
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import lifecycle
from .config import Settings, known_overrides
from .import_hook import when_imported
from .telemetry import logging as agent_logging
from .telemetry.logging import error_once, logger

if TYPE_CHECKING:
    from .export.pipeline import Pipeline
    from .telemetry.health_server import HealthServer


class Agent:
    def __init__(self, settings: Settings) -> None:
        # The heavy parts load here, when openai is imported, not at the app's start-up.
        from .export.pipeline import Pipeline
        from .export.processor import MeteringSpanProcessor
        from .instrumentation.openai.wrappers import Runtime
        from .telemetry import otel_metrics
        from .tracing.provider import TracerSource

        self.settings = settings
        self.pipeline: Pipeline | None = None if settings.disabled else Pipeline(settings)
        self.processor = MeteringSpanProcessor(
            unattributed=settings.unattributed_customer,
            metrics_factory=lambda: otel_metrics.create(self._gauges),
        )
        self.health: HealthServer | None = None
        if self.pipeline is not None:
            self.processor.sinks.append(self.pipeline.submit)
        self.tracers = TracerSource(settings, [self.processor])
        self.runtime = Runtime(settings, self.tracers)
        if not settings.disabled:
            from .limits.setup import configure as configure_limits

            configure_limits(settings)  # CMDRDATA_LIMITS_FILE; never raises

    @property
    def metering(self) -> bool:
        return self.runtime.metering

    def reconfigure(self, settings: Settings) -> None:
        """New delivery settings (``TrackedOpenAI(tracker_key=...)``): a new pipeline."""
        from .export.pipeline import Pipeline

        old = self.pipeline
        self.settings = self.runtime.settings = settings
        self.pipeline = None if settings.disabled else Pipeline(settings)
        self.processor.sinks[:] = [self.pipeline.submit] if self.pipeline else []
        if old is not None:  # it delivers what it holds without holding up the caller
            threading.Thread(target=old.shutdown, name="cmdrdata-retire", daemon=True).start()

    def _gauges(self) -> dict[str, float]:
        return self.pipeline.gauges() if self.pipeline is not None else {}

    def _readiness(self) -> tuple[bool, str]:
        if self.pipeline is None:
            return False, "not ready: metering is disabled"
        return self.pipeline.readiness()

    def _breaker(self) -> str | None:
        return self.pipeline.breaker.state if self.pipeline is not None else None

    def serve_health(self) -> None:
        """Serve /metrics, /healthz and /readyz when CMDRDATA_METRICS_PORT is set: on the
        process's one server (the bootstrap opened it at start-up, or it opens now)."""
        if self.settings.metrics_port is None or self.health is not None:
            return
        from .telemetry import health_server

        self.health = health_server.serve(self.settings.metrics_host, self.settings.metrics_port)
        if self.health is not None:
            self.health.attach(self._gauges, self._readiness, self._breaker)

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver (or record) every event so far; ``True`` when nothing is left waiting."""
        return self.pipeline.flush(timeout) if self.pipeline is not None else True

    def shutdown(self, timeout: float | None = None) -> None:
        from .limits.setup import sync_at_exit

        sync_at_exit()  # the limit counters' last usage (SIGTERM skips atexit)
        if self.pipeline is not None:
            self.pipeline.shutdown(timeout)


_lock = threading.Lock()
_agent: Agent | None = None


def get() -> Agent | None:
    return _agent


_pending: Settings | None = None
_lifecycle_installed = False


def _install_lifecycle() -> None:
    global _lifecycle_installed
    # the bootstrap installs them at start-up (its own hooks call this module's)
    if not _lifecycle_installed and not getattr(sys, "_cmdrdata_autotrack_lifecycle", False):
        _lifecycle_installed = True
        atexit.register(_at_exit)
        lifecycle.install_signal_handlers(_on_terminate)


def start(settings: Settings | None = None) -> Agent:
    """Start the agent now (idempotent): the first start's settings win."""
    global _agent
    from .instrumentation.openai import instrumentor

    with _lock:
        if _agent is None:
            agent = _agent = Agent(settings or _pending or Settings.from_env())
            instrumentor.instrument(agent.runtime)
            _install_lifecycle()
            agent.serve_health()
            if agent.pipeline is not None:
                try:
                    agent.pipeline.start_if_leftovers()
                except Exception:
                    error_once("leftovers", "cmdrdata: could not look for spooled events")
            logger.debug("agent started (metering %s)", "on" if agent.metering else "off")
        return _agent


def start_when_openai_is_imported(settings: Settings) -> None:
    """Start the agent at the app's first ``import openai`` (now if it happened already).

    Until then the agent costs one import finder: a process that never uses
    OpenAI (a build step, a CLI tool) never loads OpenTelemetry, SQLite or requests.
    """
    global _pending
    with _lock:
        if _agent is not None or _pending is not None:
            return
        _pending = settings
        _install_lifecycle()
    if "openai" in sys.modules:
        start(settings)
    else:
        when_imported("openai", _start_pending)


def _start_pending(module: ModuleType) -> None:
    try:
        start(_pending)
    except Exception:
        error_once("start", "cmdrdata: could not start; the app runs uninstrumented")


def ensure_started(**overrides: Any) -> Agent:
    """Start the agent, or apply explicit settings (``TrackedOpenAI(tracker_key=...)``) to it."""
    given: dict[str, Any] = known_overrides(overrides)  # checked; None, blank, bad left out
    current = get()
    if current is None:
        settings = Settings.from_env(**given)
        agent_logging.configure(settings.log_level, settings.log_format)
        current = start(settings)
        if current.settings is settings:
            return current
        # another start came first (the bootstrap's, in the background): apply ours to it
    changed = {k: v for k, v in given.items() if getattr(current.settings, k) != v}
    if changed:
        with _lock:
            current.reconfigure(replace(current.settings, **changed))
    return current


def _at_exit() -> None:
    agent = _agent
    if agent is not None:
        try:
            agent.shutdown()
        except Exception:
            error_once("exit-flush", "cmdrdata: could not flush usage at exit")


def _on_terminate() -> None:
    _at_exit()


def uninstrument() -> None:
    """Restore the SDK's original methods and stop the agent (delivering what it holds)."""
    global _agent
    from .instrumentation.openai import instrumentor

    with _lock:
        instrumentor.uninstrument()
        agent, _agent = _agent, None
    if agent is not None:
        agent.shutdown()
        agent.tracers.shutdown()
        if agent.health is not None:
            agent.health.stop()
