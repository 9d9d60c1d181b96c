"""One metered API call: its span, from the method call to the last byte of the response.

A call's span starts when the instrumented method is called and ends exactly
once: when the method returns (non-streamed bodies), or when the streamed body
is exhausted, closed, fails, or is garbage-collected unread. Everything here is
guarded: a failure of the agent is logged once and never reaches the app.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from ...telemetry import metrics
from ...telemetry.logging import error_once
from ...usage import attributes as A
from ...usage.estimate import estimate_input_tokens
from ...usage.model import ResponseInfo, Usage
from .endpoints import Endpoint
from .observers import BodyObserver, SSEObserver


class MeteredCall:
    __slots__ = (
        "_ended",
        "_lock",
        "_otel_token",
        "current",
        "deferred",
        "endpoint",
        "first_chunk_at",
        "hide_usage_chunk",
        "http_response",
        "kwargs",
        "observer",
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
        try:
            usage, info = self._extract_result(result)
            self.finish(usage, info)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("complete", "cmdrdata: could not read usage from a response")
            self.finish(None, ResponseInfo())

    def _extract_result(self, result: Any) -> tuple[Usage | None, ResponseInfo]:
        if hasattr(type(result), "model_fields"):  # a pydantic model: the SDK's parsed object
            return self.endpoint.extractor(result)
        response = self.http_response
        if response is None:
            return None, ResponseInfo()
        content_type = response.headers.get("content-type", "")
        if "json" in content_type:
            try:
                return self.endpoint.extractor(response.json())
            except ValueError:
                pass
        elif "text/event-stream" in content_type:  # an SSE body the SDK read whole (speech)
            observer = SSEObserver(self.endpoint.family, hide_usage_chunk=False)
            observer.feed(response.content)
            observer.flush()
            return observer.usage, observer.info
        return None, ResponseInfo()

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
                if (usage is None or usage.output_tokens is None) and self.endpoint.family in (
                    "chat",
                    "completions",
                    "responses",
                ):
                    usage = self._estimate(observer, usage)
            elif isinstance(observer, BodyObserver):
                usage, info = observer.result()
                if usage is None and self.endpoint.family in ("chat", "completions", "responses"):
                    # the body was never read: OpenAI billed the call all the same
                    metrics.increment("usage_estimated")
                    usage = Usage(input_tokens=estimate_input_tokens(self.kwargs), estimated=True)
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

    def _estimate(self, observer: SSEObserver, usage: Usage | None) -> Usage:
        """Usage the stream did not report: estimated, and marked so."""
        metrics.increment("usage_estimated")
        estimate = Usage(estimated=True)
        estimate.input_tokens = estimate_input_tokens(self.kwargs)
        estimate.output_tokens = observer.content_events
        estimate.total_tokens = estimate.input_tokens + estimate.output_tokens
        if usage is not None:
            estimate.merge(usage)
            estimate.estimated = True
        return estimate

    # --- the end ---------------------------------------------------------------------------

    def finish(self, usage: Usage | None, info: ResponseInfo, failed: bool = False) -> None:
        """Set the usage attributes and end the span, exactly once."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            span = self.span
            attrs: dict[str, Any] = {}
            source = _usage_source(usage, failed)
            if self.request_usage is not None:
                merged = Usage()
                merged.merge(self.request_usage)
                if usage is not None:
                    merged.merge(usage)
                usage = merged
                if source == "none" and not failed and not usage.is_empty():
                    source = "request"  # known from the request alone (speech characters)
            if usage is not None and not failed:
                attrs.update(usage.to_attributes())
            attrs.update(info.to_attributes())
            self.http_response = None
            if self.request_id:
                attrs[A.OPENAI_REQUEST_ID] = self.request_id
            if self.resend_count:
                attrs[A.HTTP_RESEND_COUNT] = self.resend_count
            attrs[A.USAGE_SOURCE] = source
            span.set_attributes(attrs)
            span.end()
            metrics.increment("calls_metered")
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("finish", "cmdrdata: could not end a span")


def _usage_source(usage: Usage | None, failed: bool) -> str:
    if failed or usage is None or usage.is_empty():
        return "none"
    return "estimate" if usage.estimated else "response"


def _retry_count(request: Any) -> int:
    try:
        value = request.headers.get("x-stainless-retry-count") if request is not None else None
        return int(value) if value else 0
    except (AttributeError, ValueError, TypeError):
        return 0
