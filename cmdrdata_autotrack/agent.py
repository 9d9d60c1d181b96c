"""The running agent: settings, tracer, metering processor and instrumentation, once a process."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from .config import Settings
from .export.processor import MeteringSpanProcessor
from .instrumentation.openai import instrumentor
from .instrumentation.openai.wrappers import Runtime
from .telemetry.logging import logger
from .tracing.provider import TracerSource


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processor = MeteringSpanProcessor()
        self.tracers = TracerSource(settings, [self.processor])
        self.runtime = Runtime(settings, self.tracers)

    @property
    def metering(self) -> bool:
        return self.runtime.metering


_lock = threading.Lock()
_agent: Agent | None = None


def get() -> Agent | None:
    return _agent


def start(settings: Settings | None = None) -> Agent:
    """Start the agent (idempotent): the first start's settings win."""
    global _agent
    with _lock:
        if _agent is None:
            _agent = Agent(settings or Settings.from_env())
            instrumentor.instrument(_agent.runtime)
            logger.debug(
                "agent started (metering %s)", "on" if _agent.metering else "off: disabled"
            )
        return _agent


def ensure_started(**overrides: Any) -> Agent:
    """Start the agent, or apply explicit settings (``TrackedOpenAI(tracker_key=...)``) to it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    current = get()
    if current is None:
        return start(Settings.from_env(**given))
    changed = {k: v for k, v in given.items() if getattr(current.settings, k) != v}
    if changed:
        with _lock:
            current.settings = replace(current.settings, **changed)
            current.runtime.settings = current.settings
    return current


def uninstrument() -> None:
    """Restore the SDK's original methods and stop the agent."""
    global _agent
    with _lock:
        instrumentor.uninstrument()
        agent, _agent = _agent, None
    if agent is not None:
        agent.tracers.shutdown()
