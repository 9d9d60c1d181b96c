"""The span processor that turns each finished metered span into usage for billing.

``on_end`` runs on the thread that ended the span, often the app's own: it
never blocks and never raises. It recognises metered spans by their mark and
hands them to the sinks (the delivery pipeline), which do the rest elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..telemetry import metrics
from ..telemetry.logging import error_once
from ..usage.attributes import METERED_MARK

Sink = Callable[[ReadableSpan], None]


class MeteringSpanProcessor(SpanProcessor):
    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            attributes = span.attributes
            if not attributes or METERED_MARK not in attributes:
                return
            metrics.increment("spans_metered")
            for sink in self.sinks:
                sink(span)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("processor", "cmdrdata: could not process a metered span")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
