"""One metered API call: its span, from the method call to the last byte of the response.

A call's span starts when the instrumented method is called and ends exactly
once: when the method returns (non-streamed bodies), or when the streamed body
is exhausted, closed, fails, or is garbage-collected unread. Everything here is
guarded: a failure of the agent is logged once and never reaches the app.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from ... import limits
from ...telemetry import metrics
from ...telemetry.logging import error_once
from ...usage import attributes as A
from ...usage import settle, snapshot
from ...usage.model import (
    MISSING_USAGE,
    NON_JSON_BODY,
    ResponseInfo,
    Usage,
)
from . import deferred
from .endpoints import Endpoint
from .observers import BodyObserver, SSEObserver

if TYPE_CHECKING:
    from ...attribution.resolve import Attribution
    from ...limits.engine import Reservation


class MeteredCall:
    __slots__ = (
        "_ended",
        "_lock",
        "_otel_token",
        "attribution",
        "current",
        "deferred",
        "endpoint",
        "first_chunk_at",
        "hide_usage_chunk",
        "http_response",
        "kwargs",
        "limit",
        "observer",
        "reader",
        "reading",
        "request_id",
        "request_usage",
        "resend_count",
        "span",
        "started",
    )

    def __init__(
        self,
        span: Span,
        endpoint: Endpoint,
        kwargs: dict[str, Any],
        request_usage: Usage | None,
        hide_usage_chunk: bool,
    ) -> None:
        self.span = span
        self.endpoint = endpoint
        self.kwargs = kwargs
        self.request_usage = request_usage
        self.hide_usage_chunk = hide_usage_chunk
        self.started = time.perf_counter()
        self.first_chunk_at: float | None = None
        self.http_response: Any = None
        self.resend_count = 0
        self.observer: SSEObserver | BodyObserver | None = None
        self.deferred = False
        self.reading = False
        self.request_id: str | None = None
        self._ended = False
        self._lock = threading.Lock()
        self._otel_token: object = None
        self.current = True
        self.attribution: Attribution | None = None  # set by Runtime.begin
        self.limit: Reservation | None = None  # what the customer's limits counted for it
        # Set by Runtime.begin when the response may be copied for the importer to read
        # (a meter-only span, no deferred work, nothing estimated from the request).
        self.reader: str | None = None

    # --- the synchronous part of the call ------------------------------------------------

    def activate(self) -> None:
        """Make the span current while the SDK sends the request (HTTP spans nest under it)."""
        if not self.current:
            return
        self._otel_token = otel_context.attach(trace.set_span_in_context(self.span))

    def deactivate(self) -> None:
        token, self._otel_token = self._otel_token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def on_http_response(self, response: Any, retries_taken: Any, is_async: bool) -> None:
        """The SDK has the final HTTP response (after its own retries): watch its body."""
        try:
            self.request_id = response.headers.get("x-request-id")
            self.http_response = response
            if isinstance(retries_taken, int) and retries_taken > 0:
                self.resend_count = retries_taken
            if response.is_stream_consumed or self._ended:
                return  # the body was read already: usage comes from the result
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" in content_type:
                self.observer = SSEObserver(self.endpoint.family, self.hide_usage_chunk)
            elif "json" in content_type:
                self.observer = BodyObserver(self.endpoint.extractor)
            elif self.endpoint.text_body and "text/plain" in content_type:
                self.observer = TextBodyObserver(self.endpoint.extractor)
            else:
                return
            from .body_tap import tap_async, tap_sync

            (tap_async if is_async else tap_sync)(response, self)
            self.deferred = True
            self.http_response = None  # held weakly by the tap: an abandoned body must be freed
        except Exception:
            self.observer, self.deferred = None, False
            metrics.increment("instrumentation_errors")
            error_once("on-response", "cmdrdata: could not observe a response body")

    def complete(self, result: Any) -> None:
        """The method returned ``result``; end the span now unless its body is still to come."""
        if self.deferred:
            return
        reader = self.reader
        if reader is not None and self.limit is None:  # limits count the usage now
            copy = snapshot.take(reader, result)
            if copy is not None:
                endpoint = self.endpoint
                self._end({}, [reader, copy, endpoint.reports_usage, endpoint.estimates_output])
                return
        try:
            usage, info, body = self._extract_result(result)
            self.finish(self._settle(usage, body), info)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("complete", "cmdrdata: could not read usage from a response")
            self._degrade()
            self.finish(self._settle_safely(None), ResponseInfo())

    def _extract_result(self, result: Any) -> tuple[Usage | None, ResponseInfo, Any]:
        """Usage, facts and the parsed body (for an output estimate) of a returned call."""
        if hasattr(type(result), "model_fields"):  # a pydantic model: the SDK's parsed object
            usage, info = self.endpoint.extractor(result)
            return usage, info, result
        response = self.http_response
        if response is None:
            return None, ResponseInfo(), None
        content_type = response.headers.get("content-type", "")
        if "json" in content_type:
            try:
                body = response.json()
            except ValueError:
                return Usage(problem=NON_JSON_BODY), ResponseInfo(), None
            usage, info = self.endpoint.extractor(body)
            return usage, info, body
        if "text/event-stream" in content_type:  # an SSE body the SDK read whole (speech)
            observer = SSEObserver(self.endpoint.family, hide_usage_chunk=False)
            observer.feed(response.content)
            observer.flush()
            return observer.usage, observer.info, None
        if self.endpoint.text_body and "text/plain" in content_type:  # whisper's text formats
            usage, info = self.endpoint.extractor(response.text)
            return usage, info, None
        # An HTML error page, bare audio: no usage (fine for speech, flagged for the others).
        return Usage(problem=NON_JSON_BODY), ResponseInfo(), None

    def fail(self, exc: BaseException) -> None:
        """The method raised ``exc`` (which the caller gets unchanged)."""
        try:
            response = getattr(exc, "response", None)
            request = getattr(response, "request", None) or getattr(exc, "request", None)
            retry = _retry_count(request)
            if retry:
                self.resend_count = retry
            headers = getattr(response, "headers", None)
            if headers is not None:
                self.request_id = headers.get("x-request-id")
            attrs: dict[str, Any] = {A.ERROR_TYPE: type(exc).__qualname__}
            status = getattr(exc, "status_code", None)
            if isinstance(status, int):
                attrs[A.HTTP_STATUS_CODE] = status
            if self._unparsable_success(exc):
                metrics.increment(settle.PROBLEM_METRICS[NON_JSON_BODY])
                attrs[A.USAGE_PROBLEM] = NON_JSON_BODY
            self.span.set_attributes(attrs)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        except Exception:
            error_once("fail", "cmdrdata: could not record a failed call")
        self.finish(None, ResponseInfo(), failed=True)

    # --- the streamed body -----------------------------------------------------------------

    def on_first_chunk(self) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()

    def finish_stream(self, outcome: str, exc: BaseException | None = None) -> None:
        """The streamed body ended: ``completed``, ``closed``, ``abandoned`` or ``error``."""
        if self._ended:
            return
        observer = self.observer
        usage: Usage | None = None
        info = ResponseInfo()
        attrs: dict[str, Any] = {}
        try:
            if isinstance(observer, SSEObserver):
                observer.flush()
                usage, info = observer.usage, observer.info
                info.finish_reasons = observer.finish_reasons
                if observer.terminal and outcome != "error":
                    outcome = "completed"
                if observer.error and exc is None:
                    exc_type = "APIError"
                    attrs[A.ERROR_TYPE] = exc_type
                    self.span.set_status(Status(StatusCode.ERROR, exc_type))
                    outcome = "error"
                if getattr(observer, "failed", False):
                    self._degrade()  # the observer gave up on this stream: it read no usage
                usage = self._settle(usage, streamed=observer.content_events)
            elif isinstance(observer, BodyObserver):
                usage, info = observer.result()
                body: Any = None
                if usage is None:
                    # a body never read was billed all the same; one that is not JSON is flagged
                    problem, body = _body_problem(observer)
                    usage = Usage(problem=problem)
                usage = self._settle(usage, body)
            if exc is not None:
                error_type = type(exc).__qualname__
                attrs[A.ERROR_TYPE] = error_type
                self.span.set_status(Status(StatusCode.ERROR, error_type))
            attrs[A.STREAM_OUTCOME] = outcome
            if self.first_chunk_at is not None:
                attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK] = self.first_chunk_at - self.started
            self.span.set_attributes(attrs)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("finish-stream", "cmdrdata: could not read usage from a stream")
        # A stream that broke off was still partly generated, and billed: keep its usage.
        self.finish(usage, info)

    # --- usage that is missing or malformed ---------------------------------------------

    def _settle(
        self, usage: Usage | None, body: Any = None, streamed: int | None = None
    ) -> Usage | None:
        """Flag and estimate what the response did not report properly (see :mod:`settle`)."""
        return settle.settle(self.endpoint, self.kwargs, usage, body, streamed)

    settle_usage = _settle

    def _settle_safely(self, usage: Usage | None) -> Usage | None:
        try:
            return self._settle(usage)
        except Exception:
            return usage

    def _degrade(self) -> None:
        """Mark the span: something the agent normally records is missing from it."""
        with contextlib.suppress(Exception):
            self.span.set_attribute(A.METERING_DEGRADED, True)

    def _unparsable_success(self, exc: BaseException) -> bool:
        """The server answered 2xx but the SDK could not parse the body (an HTML page)."""
        response = self.http_response
        status = getattr(response, "status_code", None)
        return (
            isinstance(exc, ValueError)
            and isinstance(status, int)
            and 200 <= status < 300
            and self.endpoint.reports_usage
        )

    # --- the end ---------------------------------------------------------------------------

    def finish(self, usage: Usage | None, info: ResponseInfo, failed: bool = False) -> None:
        """Set the usage attributes and end the span, exactly once."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            attrs: dict[str, Any] = {}
            if not failed:
                usage, source = settle.with_request_units(
                    self.endpoint, self.kwargs, usage, self.request_usage
                )
                if usage is not None:
                    attrs.update(usage.to_attributes())
            else:
                source = "none"
            attrs.update(info.to_attributes())
            if self.limit is not None:  # count its usage against the customer's limits
                limits.settle_call(self, usage, info.model, failed)
            attrs[A.USAGE_SOURCE] = source
            deferred.settle(self, attrs, info, failed)  # usage that comes later
            self._end(attrs)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("finish", "cmdrdata: could not end a span")

    def _end(self, attrs: dict[str, Any], pending: list[Any] | None = None) -> None:
        """End the span with ``attrs`` and the request's facts (``pending``: a response copy
        the importer reads, see :mod:`usage.snapshot`)."""
        if pending is not None:
            with self._lock:
                if self._ended:
                    return
                self._ended = True
        try:
            self.http_response = None
            if self.request_id:
                attrs[A.OPENAI_REQUEST_ID] = self.request_id
            if self.resend_count:
                attrs[A.HTTP_RESEND_COUNT] = self.resend_count
            span = self.span
            if pending is not None:
                span.pending = pending  # type: ignore[attr-defined]  # a MeterOnlySpan
            if attrs:
                span.set_attributes(attrs)
            span.end()
            metrics.increment("calls_metered")
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("finish", "cmdrdata: could not end a span")


class TextBodyObserver(BodyObserver):
    """A text body read through a streaming response (whisper's text, srt, vtt formats)."""

    __slots__ = ()

    def result(self) -> tuple[Usage | None, ResponseInfo]:
        data = self.head if self.size <= self.FULL else self.tail[-self.KEEP :]
        return self.extractor(bytes(data).decode("utf-8", "replace"))


def _body_problem(observer: BodyObserver) -> tuple[str, Any]:
    """Why a body read through a streaming response gave no usage, and its JSON if any."""
    if observer.size == 0 or observer.size > observer.FULL:
        return MISSING_USAGE, None  # never read (or too large to look at again)
    try:
        return MISSING_USAGE, json.loads(bytes(observer.head))
    except ValueError:
        return NON_JSON_BODY, None


def _retry_count(request: Any) -> int:
    try:
        value = request.headers.get("x-stainless-retry-count") if request is not None else None
        return int(value) if value else 0
    except (AttributeError, ValueError, TypeError):
        return 0
