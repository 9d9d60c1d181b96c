"""The ``opentelemetry_instrumentor`` entry point: ``opentelemetry-instrument python app.py``
meters OpenAI calls as ``cmdrdata-run`` does, without the launcher.

Loaded only by OpenTelemetry's auto-instrumentation (which installs
``opentelemetry-instrumentation``); the agent itself does not need that package.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)


class CmdrdataOpenAIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Starts the cmdrdata agent: OpenAI instrumentation, metering and delivery."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 1.40, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        from .. import agent, instrument

        instrument()  # idempotent: under cmdrdata-run too, the agent starts once
        provider = kwargs.get("tracer_provider")
        running = agent.get()
        if provider is not None and running is not None:
            running.tracers.use_provider(provider)

    def _uninstrument(self, **kwargs: Any) -> None:
        from .. import uninstrument

        uninstrument()
