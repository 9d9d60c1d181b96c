"""The span processor that turns each finished metered span into a usage event.

``on_end`` runs on the thread that ended the span, often the app's own: it
never blocks and never raises. It hands a compact record of the span (its
attributes, ids, times and status) to the sinks: the delivery pipeline
journals it and returns; the usage event is built from it in the background
(:func:`span_record_to_event`). The record holds only JSON values, so its journal
line can always be written, and the event built from it never fails for odd values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..telemetry import metrics
from ..telemetry.logging import error_once
from ..telemetry.otel_metrics import AgentMetrics
from ..tracing.meter_only import MeterOnlySpan
from ..usage import snapshot
from ..usage.attributes import (
    INSTRUMENTATION_SCOPE,
    METERED_MARK,
    METERING_DEGRADED,
    RESPONSE_TIME_TO_FIRST_CHUNK,
)
from ..usage.event import build_event
from ..usage.work import makes_no_event

EventSink = Callable[[dict[str, Any]], None]
_METER_ONLY: type = MeterOnlySpan  # read like a ReadableSpan (see tracing.meter_only)


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
            # One pass over the SDK's mapping (each lookup in it runs Python code); a
            # meter-only span holds exact JSON values already, and never changes once ended.
            meter_only = type(span) is _METER_ONLY
            plain = attributes if meter_only else json_attributes(attributes)
            if makes_no_event(plain):  # deferred work not finished: traces only
                return
            metrics.increment("spans_metered")
            if meter_only:  # its ids, without making the SpanContext an SDK span holds
                trace_id, span_id = span.trace_id, span.span_id  # type: ignore[attr-defined]
            else:
                context = span.context
                if context is None:
                    return
                trace_id, span_id = context.trace_id, context.span_id
            if self._metrics_factory is not None:  # resolved at the first call: the app has
                self.metrics, self._metrics_factory = self._metrics_factory(), None  # set up
            pending = span.pending if meter_only else None  # type: ignore[attr-defined]
            if pending is not None and self.metrics is not None:  # the metrics read it now
                attributes = plain = {**plain, **snapshot.attributes(pending)}
                pending = None
            # The span as it ended, compactly: the usage event is built from it off this thread.
            record = {
                "v": 1,
                "a": plain,
                "t": trace_id,
                "s": span_id,
                "b": span.start_time or 0,
                "e": span.end_time or span.start_time or 0,
                "ok": span.status.is_ok,
            }
            if pending is not None:  # its response's usage is read off this thread
                record["x"] = pending
            for sink in self.sinks:
                try:
                    sink(record)
                except Exception:  # one sink's failure must not cost the others the event
                    metrics.increment("instrumentation_errors")
                    error_once("processor-sink", "cmdrdata: a usage event sink failed")
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


_SCALARS = (str, bool, int, float)


def _json_value(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, tuple | list):
        return [v if type(v) in _SCALARS else _json_scalar(v) for v in value]
    return _json_scalar(value)


def _json_scalar(value: Any) -> Any:
    """An exact JSON scalar for a value the SDK let through (a subclass, an odd object)."""
    if isinstance(value, str):  # exact copies: a subclass's own methods are never run
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    try:
        text = str(value)
    except Exception:
        return None
    return str.__str__(text) if isinstance(text, str) else None


_EXACT = frozenset(_SCALARS)


def json_attributes(attributes: Any) -> dict[str, Any]:
    """The span's attributes as JSON values (string keys; scalars and lists of scalars)."""
    out: dict[str, Any] = {}
    exact = _EXACT
    for key, value in attributes.items():
        if type(key) is not str:  # the common case costs a type check per attribute
            if not isinstance(key, str):
                continue
            key = str.__str__(key)
        out[key] = value if type(value) in exact else _json_value(value)
    return out


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def resolved_attributes(record: dict[str, Any]) -> dict[str, Any]:
    """A span record's attributes, with its response copy's usage read in (usage.snapshot)."""
    attributes = record["a"]
    if not isinstance(attributes, dict):
        raise TypeError("span record attributes must be an object")
    pending = record.get("x")
    if pending is None:
        return attributes
    try:
        return {**attributes, **snapshot.attributes(pending)}
    except Exception:  # not a copy this version reads: the event says it lacks usage
        metrics.increment("instrumentation_errors")
        error_once("snapshot-read", "cmdrdata: a span record's response copy was unreadable")
        return {**attributes, METERING_DEGRADED: True}


def span_record_to_event(record: dict[str, Any], unattributed: str) -> dict[str, Any]:
    """The usage event of a journaled span record.

    Raises ``KeyError``/``TypeError`` only for a line that is not a span record; odd
    values inside a record still give an event (degraded to what can be read).
    """
    attributes = resolved_attributes(record)
    trace_id, span_id = _int(record["t"]), _int(record["s"])
    start, end = max(0, _int(record.get("b", 0))), max(0, _int(record.get("e", 0)))
    ok = bool(record.get("ok", True))

    def event(attrs: dict[str, Any]) -> dict[str, Any]:
        return build_event(
            attrs,
            trace_id=trace_id,
            span_id=span_id,
            start_ns=start,
            end_ns=end,
            ok=ok,
            unattributed_customer=unattributed,
        )

    try:
        return event(attributes)
    except Exception:  # never lose the event: build it from what is plainly readable
        metrics.increment("instrumentation_errors")
        error_once("event-build", "cmdrdata: a span record had odd values; event degraded")
        plain = {k: v for k, v in attributes.items() if isinstance(k, str) and type(v) in _SCALARS}
        plain[METERING_DEGRADED] = True
        return event(plain)
