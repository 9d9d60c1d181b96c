"""The span processor that turns each finished metered span into a usage event.

``on_end`` runs on the thread that ended the span, often the app's own: it
never blocks and never raises. It hands a compact record of the span (its
attributes, ids, times and status) to the sinks: the delivery pipeline
journals it and returns; the usage event is built from it in the background
(:func:`span_record_to_event`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..telemetry import metrics
from ..telemetry.logging import error_once
from ..telemetry.otel_metrics import AgentMetrics
from ..usage.attributes import (
    INSTRUMENTATION_SCOPE,
    METERED_MARK,
    RESPONSE_TIME_TO_FIRST_CHUNK,
)
from ..usage.event import build_event

EventSink = Callable[[dict[str, Any]], None]


class MeteringSpanProcessor(SpanProcessor):
    def __init__(
        self,
        sinks: list[EventSink] | None = None,
        unattributed: str = "unattributed",
        metrics_factory: Callable[[], AgentMetrics | None] | None = None,
    ):
        self.sinks: list[EventSink] = list(sinks or [])
        self.unattributed = unattributed
        self._metrics_factory = metrics_factory
        self.metrics: AgentMetrics | None = None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            attributes = span.attributes
            scope = span.instrumentation_scope
            ours = scope is not None and scope.name == INSTRUMENTATION_SCOPE
            if not attributes or not (ours or METERED_MARK in attributes):
                return
            metrics.increment("spans_metered")
            context = span.context
            if context is None:
                return
            # The span as it ended, compactly: the usage event is built from it off this thread.
            record = {
                "v": 1,
                "a": dict(attributes),
                "t": context.trace_id,
                "s": context.span_id,
                "b": span.start_time or 0,
                "e": span.end_time or span.start_time or 0,
                "ok": span.status.is_ok,
            }
            for sink in self.sinks:
                sink(record)
            if self._metrics_factory is not None:  # resolved at the first call: the app has
                self.metrics, self._metrics_factory = self._metrics_factory(), None  # set up
            if self.metrics is not None:
                start, end = span.start_time or 0, span.end_time or 0
                ttfc = attributes.get(RESPONSE_TIME_TO_FIRST_CHUNK)
                self.metrics.record_call(
                    attributes,
                    max(0, end - start) / 1e9,
                    ttfc if isinstance(ttfc, float) else None,
                )
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("processor", "cmdrdata: could not turn a span into a usage event")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record_to_event(record: dict[str, Any], unattributed: str) -> dict[str, Any]:
    """The usage event of a journaled span record."""
    return build_event(
        record["a"],
        trace_id=int(record["t"]),
        span_id=int(record["s"]),
        start_ns=int(record["b"]),
        end_ns=int(record["e"]),
        ok=bool(record["ok"]),
        unattributed_customer=unattributed,
    )
