"""Spans for metering alone: what the agent's spans are when no one else would see them.

When the app has configured no OpenTelemetry SDK and no ``OTEL_*`` exporter, the
agent's own provider has one span processor, the metering one, and nothing ever
exports a span. Building a full SDK span then costs the calling thread tens of
microseconds per call (sampler, id generator, attribute validation in a bounded
mapping, a frozen copy at the end) for a reader that needs only a dict.

:class:`MeterOnlyTracer` makes :class:`MeterOnlySpan` instead: the same span
interface the agent's code uses, with a plain dict of attributes validated the way
the SDK validates them (a value the SDK would drop is dropped) and held as exact
JSON values (so the processor takes them as they are), the SDK's kind of
random ids, the parent's trace id, and at ``end`` the same ``on_end`` call on the
same processors, which read it like a ``ReadableSpan``. The moment the app sets
up an SDK or an exporter, :class:`..provider.TracerSource` hands out SDK tracers
again: nothing that would be exported is ever a meter-only span.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

_SCALARS = (str, bool, int, float)
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
MAX_ATTRIBUTES = 128  # the SDK's default limit; more is never set on a call's span


def _exact(value: Any) -> Any:
    """An exact copy of a scalar of a subclass (its own methods never run later)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    return float.__float__(value)


def _valid(value: Any) -> Any:
    """The value as the SDK would keep it, as exact JSON values (``None``: the SDK drops it).

    Scalars and sequences of one scalar type (``None`` items allowed) are kept; anything
    else is dropped, as the SDK drops it.
    """
    if type(value) in _SCALARS:
        return value
    if isinstance(value, _SCALARS):
        return _exact(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        items = list(value)
        kinds = {type(v) for v in items if v is not None}
        if len(kinds) <= 1 and all(isinstance(v, _SCALARS) for v in items if v is not None):
            return [v if v is None or type(v) in _SCALARS else _exact(v) for v in items]
    return None


class MeterOnlySpan(trace.Span):
    """A span read by the metering processor only (see the module's docstring)."""

    __slots__ = (
        "_context",
        "_processors",
        "attributes",
        "end_time",
        "instrumentation_scope",
        "kind",
        "name",
        "parent",
        "pending",
        "span_id",
        "start_time",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        parent: SpanContext | None,
        scope: InstrumentationScope,
        processors: tuple[SpanProcessor, ...],
        kind: SpanKind,
        attributes: Attributes,
        start_time: int | None,
    ) -> None:
        self.name = name
        # The ids; their SpanContext is made only if something asks for it (the metering
        # processor reads the ids): making one costs more than the rest of the span's start.
        self.trace_id, self.span_id = trace_id, span_id
        self._context: SpanContext | None = None
        self.parent = parent
        self.instrumentation_scope = scope
        self._processors = processors
        self.kind = kind
        self.attributes: dict[str, Any] = {}
        self.status = _UNSET
        self.start_time = start_time if start_time is not None else time.time_ns()
        self.end_time: int | None = None
        # A copy of the call's response whose usage the importer reads (usage.snapshot).
        self.pending: list[Any] | None = None
        if attributes:
            self.set_attributes(attributes)

    # --- the Span interface ---------------------------------------------------------------

    @property
    def context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = SpanContext(
                self.trace_id, self.span_id, is_remote=False, trace_flags=_SAMPLED
            )
        return context

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is not None:
            return
        mine = self.attributes
        for key, value in attributes.items():
            if type(value) in _SCALARS and type(key) is str:
                if key in mine or len(mine) < MAX_ATTRIBUTES:
                    mine[key] = value
            else:
                self.set_attribute(key, value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is not None or not isinstance(key, str) or not key:
            return
        kept = _valid(value)
        if kept is None:
            return
        mine = self.attributes
        if key in mine or len(mine) < MAX_ATTRIBUTES:
            mine[key] = kept

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if self.status.status_code is StatusCode.OK:  # as the SDK: OK is final
            return
        if status.status_code is StatusCode.UNSET:
            return
        self.status = status

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        return None  # events are for traces; metering reads none

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        return None

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        return None

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        for processor in self._processors:
            processor.on_end(self)  # type: ignore[arg-type]  # read as a ReadableSpan

    def __repr__(self) -> str:
        return f"MeterOnlySpan(name={self.name!r})"


class MeterOnlyTracer(trace.Tracer):
    """Makes :class:`MeterOnlySpan`; used by :class:`..provider.TracerSource` only."""

    def __init__(self, scope: InstrumentationScope, processors: tuple[SpanProcessor, ...]) -> None:
        self.scope = scope
        self.processors = processors

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        return self._span(name, context, kind, attributes, start_time)

    def start_own(self, name: str, attributes: dict[str, Any]) -> MeterOnlySpan:
        """A client span holding ``attributes``, which it takes as they are when they are
        exact JSON scalars (the agent's own, usually), as ``start_span`` would keep them."""
        span = self._span(name, None, SpanKind.CLIENT, None, None)
        if len(attributes) <= MAX_ATTRIBUTES and all(
            type(value) in _SCALARS for value in attributes.values()
        ):
            span.attributes = attributes
        else:
            span.set_attributes(attributes)
        return span

    def _span(
        self,
        name: str,
        context: otel_context.Context | None,
        kind: SpanKind,
        attributes: Attributes,
        start_time: int | None,
    ) -> MeterOnlySpan:
        trace_id, span_id, parent = self._ids(context)
        return MeterOnlySpan(
            name,
            trace_id,
            span_id,
            parent,
            self.scope,
            self.processors,
            kind,
            attributes,
            start_time,
        )

    @staticmethod
    def _ids(context: otel_context.Context | None) -> tuple[int, int, SpanContext | None]:
        """The new span's trace id (the parent's) and span id (new), and its parent's context."""
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent = None
            trace_id = random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        return trace_id, span_id, parent

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]  # the SDK's own decorator is private
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
