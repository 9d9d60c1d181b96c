"""Other OpenAI instrumentations running in the same process.

When one is active (the official ``opentelemetry-instrumentation-openai-v2`` or
OpenLLMetry's ``opentelemetry-instrumentation-openai``) and the app has an SDK
tracer provider for its spans to go to, it already traces every call. The agent
then keeps its own span for metering only: recorded, never exported, never
made current, so each call shows as one GenAI span in the traces (the other
one's), and is metered once (the agent's). Without an SDK provider the other
instrumentation's spans go nowhere, and the agent's are exported as usual.
"""

from __future__ import annotations

import sys
import time

# module -> the instrumentor class it defines
PEERS = {
    "opentelemetry.instrumentation.openai_v2": "OpenAIInstrumentor",
    "opentelemetry.instrumentation.openai": "OpenAIInstrumentor",
}
_CHECK_EVERY_S = 1.0


def active_peers() -> list[str]:
    """Modules of OpenAI instrumentors that are instrumenting right now."""
    found = []
    for module_name, class_name in PEERS.items():
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        instance = getattr(cls, "_instance", None)
        if instance is not None and getattr(instance, "_is_instrumented_by_opentelemetry", False):
            found.append(module_name)
    return found


class PeerWatch:
    """``active()`` answers from a cache refreshed at most once a second (it runs per call)."""

    def __init__(self) -> None:
        self._checked = float("-inf")
        self._active = False
        self.names: list[str] = []

    def active(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= _CHECK_EVERY_S:
            self._checked = now
            self.names = active_peers()
            self._active = bool(self.names) and _traces_go_somewhere()
        return self._active


def _traces_go_somewhere() -> bool:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)
