"""The wrappers around the SDK's methods (installed with wrapt, on the classes).

* :func:`call_wrapper` wraps a billable method: it takes the agent's keyword
  arguments out, opens the call's span, calls the original with the caller's own
  arguments (plus ``include_usage`` where configured) and returns its result
  unchanged, or re-raises its exception unchanged.
* :func:`stream_helper_wrapper` wraps ``.stream()`` helpers, which call
  ``create`` later from their manager: it resolves the attribution now and
  carries it to that ``create`` inside ``extra_headers`` (removed before sending).
* :func:`process_response_hook` sees the SDK's final HTTP response of the
  current call, whatever entry point made it, and taps streamed bodies; with no
  patched method active it meters direct calls (see :mod:`.direct`).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Tracer

from ... import limits
from ...attribution.resolve import Attribution, resolve
from ...config import Settings
from ...telemetry import metrics
from ...telemetry.logging import error_once, warn_once
from ...tracing.meter_only import MeterOnlySpan, MeterOnlyTracer
from ...tracing.provider import TracerSource
from ...usage import attributes as A
from ...usage.model import Usage
from ..peers import PeerWatch
from . import deferred, direct
from . import request as R
from .call import MeteredCall
from .endpoints import Endpoint
from .providers import provider_name


class Untracked:
    """A patched method's call that is not metered (``track_usage=False``, metering off)."""

    __slots__ = ()


# A patched method is not metered: the hook must not meter its request as a direct call.
UNTRACKED = Untracked()
# The call whose SDK request is in progress in this context (helpers nest inside it).
ACTIVE: contextvars.ContextVar[MeteredCall | Untracked | None] = contextvars.ContextVar(
    "cmdrdata_active_call", default=None
)
CARRY_HEADER = "X-Cmdrdata-Carry"
_T = TypeVar("_T")


class Carried(str):
    """An ``extra_headers`` value that carries a stream helper's attribution to ``create``.

    It is a one-character string, so if it ever reached the SDK it would be a
    harmless header; the call wrapper always removes it first.
    """

    attribution: Attribution | None
    track: bool

    def __new__(cls, attribution: Attribution | None, track: bool) -> Carried:
        value = super().__new__(cls, "1")
        value.attribution = attribution
        value.track = track
        return value


class Runtime:
    """What the wrappers need from the running agent."""

    def __init__(self, settings: Settings, tracers: TracerSource) -> None:
        self.settings = settings
        self.tracers = tracers
        self.metering = not settings.disabled
        self.peers = PeerWatch()
        self._clients: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    def client_attributes(self, client: Any) -> dict[str, Any]:
        """Provider and server attributes of an SDK client, cached until its base URL changes."""
        base_url = getattr(client, "base_url", None)
        try:
            cached = self._clients.get(client)
        except TypeError:
            cached = None
        if cached is not None and cached[0] is base_url:
            return cached[1]
        server = R.server_attributes(base_url)
        provider = provider_name(client, server.get(A.SERVER_ADDRESS))
        attrs: dict[str, Any] = {A.PROVIDER_NAME: provider, A.SYSTEM: provider}
        attrs.update(server)
        attrs.update(key_attributes(client))
        with contextlib.suppress(TypeError):
            self._clients[client] = (base_url, attrs)
        return attrs

    def begin(
        self,
        endpoint: Endpoint,
        client: Any,
        kwargs: dict[str, Any],
        attribution: Attribution,
        *,
        direct: bool = False,
        elapsed_ns: int = 0,
    ) -> MeteredCall:
        """Open the call's span. Odd input drops only the part it spoils, never the span.

        ``direct``: a direct ``client.post()`` whose response is here already (its request
        was sent as the caller made it); ``elapsed_ns``: how long ago it started.
        """
        tracer = self.tracers.tracer()
        if (
            type(tracer) is MeterOnlyTracer
            and not direct
            and not elapsed_ns
            and not self.settings.capture_content
        ):
            try:
                call = self._begin_meter_only(endpoint, client, kwargs, attribution, tracer)
            except Exception:  # odd input: read part by part below, dropping what fails
                call = None
            if call is not None:
                return call
        settings = self.settings
        parts = _Parts(endpoint.method)
        base = parts.read("server", _no_attrs, lambda: self.client_attributes(client))
        hide = not direct and parts.read(
            "stream_usage",
            bool,
            lambda: self._asks_stream_usage(endpoint, base, kwargs),
        )
        if hide:
            injected = parts.read("stream_usage", _no_attrs, lambda: R.with_stream_usage(kwargs))
            if injected:
                kwargs = injected
            else:
                hide = False  # the caller's request goes out exactly as given
        attrs: dict[str, Any] = {
            A.METERED_MARK: True,
            A.OPERATION_NAME: endpoint.operation,
            A.OPENAI_API_TYPE: endpoint.api_type,
        }
        attrs.update(base)
        failed = len(parts.dropped)
        if isinstance(tracer, MeterOnlyTracer):  # no one reads the request's trace attributes
            request = parts.read("request", _no_attrs, lambda: _essentials(kwargs))
        else:
            request = parts.read(  # the essentials (model, streaming) among them
                "request", _no_attrs, lambda: R.request_attributes(kwargs, endpoint.output_type)
            )
            if len(parts.dropped) > failed:  # odd parameters: read the essentials on their own
                request = parts.read("request", _no_attrs, lambda: _essentials(kwargs))
        attrs.update(request)
        attrs.update(parts.read("attribution", _no_attrs, attribution.to_attributes))
        if attribution.metadata_dropped:
            parts.dropped.append("metadata")
        if hide:
            attrs[A.STREAM_USAGE_INJECTED] = True
        suppressed = parts.read("peers", bool, self.peers.active)
        if suppressed:
            attrs[A.TRACE_SUPPRESSED] = True
        if settings.capture_content:
            attrs.update(parts.read("content", _no_attrs, lambda: R.content_attributes(kwargs)))
        units = endpoint.request_units
        request_usage = (
            parts.read("request_usage", _no_usage, lambda: units(kwargs)) if units else None
        )
        if parts.dropped:
            attrs[A.METERING_DEGRADED] = True
            attrs[A.METERING_DROPPED] = list(dict.fromkeys(parts.dropped))
        span = self._start_span(endpoint, attrs, elapsed_ns, tracer)
        call = MeteredCall(span, endpoint, kwargs, request_usage, hide)
        call.attribution = attribution  # whose limits apply (limits.admit_call)
        if request_usage is None and isinstance(span, MeterOnlySpan):
            call.reader = _reader(endpoint, kwargs)
        if elapsed_ns:
            call.started -= elapsed_ns / 1e9
        # another span stays the parent; a meter-only span has no one to parent
        call.current = not suppressed and not direct and not isinstance(span, MeterOnlySpan)
        return call

    def _begin_meter_only(
        self,
        endpoint: Endpoint,
        client: Any,
        kwargs: dict[str, Any],
        attribution: Attribution,
        tracer: MeterOnlyTracer,
    ) -> MeteredCall | None:
        """:meth:`begin` for a call whose span only the metering processor reads, in one go.

        ``None`` when the call needs more than the usual (another instrumentation tracing
        it, units its request tells, odd metadata): the part-by-part reading of
        :meth:`begin` does it. Raises on odd input, which that reading then takes part by
        part too.
        """
        if attribution.metadata_dropped or self.peers.active():
            return None
        units = endpoint.request_units
        if units is not None and units(kwargs) is not None:
            return None
        attrs = dict(endpoint_attributes(endpoint))
        server = self.client_attributes(client)
        attrs.update(server)
        hide = self._asks_stream_usage(endpoint, server, kwargs)
        if hide:
            kwargs = R.with_stream_usage(kwargs)
        essentials = _essentials(kwargs)
        attrs.update(essentials)
        attrs.update(attribution.to_attributes())
        if hide:
            attrs[A.STREAM_USAGE_INJECTED] = True
        model = essentials.get(A.REQUEST_MODEL)
        name = f"{endpoint.operation} {model}" if model else endpoint.operation
        call = MeteredCall(tracer.start_own(name, attrs), endpoint, kwargs, None, hide)
        call.attribution = attribution
        call.current = False  # a meter-only span has no one to parent
        call.reader = _reader(endpoint, kwargs)
        return call

    def _asks_stream_usage(
        self, endpoint: Endpoint, server: Mapping[str, Any], kwargs: Mapping[str, Any]
    ) -> bool:
        """Whether the agent adds ``include_usage`` to this request (a chat-like stream)."""
        return endpoint.injects_stream_usage and R.should_inject_stream_usage(
            self.settings.stream_usage, server.get(A.SERVER_ADDRESS), kwargs
        )

    def begin_degraded(
        self,
        endpoint: Endpoint,
        kwargs: dict[str, Any],
        attribution: Attribution | None,
        customer: Any,
    ) -> MeteredCall | None:
        """A minimal span for a call whose normal start failed unexpectedly (never raises).

        It keeps what billing cannot do without: the operation, the model and the
        customer when they can be read, and a mark that the record is degraded. The
        request is sent as the caller gave it.
        """
        metrics.increment("metering_degraded")
        try:
            attrs: dict[str, Any] = {
                A.METERED_MARK: True,
                A.OPERATION_NAME: endpoint.operation,
                A.OPENAI_API_TYPE: endpoint.api_type,
                A.METERING_DEGRADED: True,
            }
            with contextlib.suppress(Exception):
                attrs.update(_essentials(kwargs))
            try:
                if attribution is None:  # the customer alone: the metadata may be the trouble
                    attribution = resolve(customer, None, self.settings.customer_id)
                attrs.update(attribution.to_attributes())
            except Exception:
                attrs[A.UNATTRIBUTED] = True
            return MeteredCall(self._start_span(endpoint, attrs), endpoint, kwargs, None, False)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("begin-degraded", "cmdrdata: could not meter a call, even minimally")
            return None

    def _start_span(
        self,
        endpoint: Endpoint,
        attrs: dict[str, Any],
        elapsed_ns: int = 0,
        tracer: Tracer | None = None,
    ) -> Any:
        model = attrs.get(A.REQUEST_MODEL)
        name = f"{endpoint.operation} {model}" if model else endpoint.operation
        start = time.time_ns() - elapsed_ns if elapsed_ns else None
        return (tracer or self.tracers.tracer()).start_span(
            name, kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )


# By the row's identity (hashing a row would hash all its fields); the row is kept with
# its attributes, so an id is never reused for another row while it is cached.
_ENDPOINT_ATTRIBUTES: dict[int, tuple[Endpoint, dict[str, Any]]] = {}


def endpoint_attributes(endpoint: Endpoint) -> dict[str, Any]:
    """The attributes every call of ``endpoint`` starts with (made once per row)."""
    cached = _ENDPOINT_ATTRIBUTES.get(id(endpoint))
    if cached is not None and cached[0] is endpoint:
        return cached[1]
    attrs = {
        A.METERED_MARK: True,
        A.OPERATION_NAME: endpoint.operation,
        A.OPENAI_API_TYPE: endpoint.api_type,
    }
    _ENDPOINT_ATTRIBUTES[id(endpoint)] = (endpoint, attrs)
    return attrs


def _reader(endpoint: Endpoint, kwargs: dict[str, Any]) -> str | None:
    """The reader that copies a meter-only call's response for the importer (usage.snapshot),
    or ``None``: its response is read on the app's thread (deferred work settles there)."""
    if endpoint.reader is None or deferred.involves(endpoint, kwargs):
        return None
    return endpoint.reader


def _no_usage() -> Usage | None:
    return None


def _no_attrs() -> dict[str, Any]:
    return {}


def _essentials(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request facts an event needs (model, streaming), read on their own."""
    attrs: dict[str, Any] = {}
    model = R.model_name(R.arg(kwargs, "model"))
    if model:
        attrs[A.REQUEST_MODEL] = model
    if R.arg(kwargs, "stream") is True:
        attrs[A.REQUEST_STREAM] = True
    return attrs


class _Parts:
    """Reads the optional parts of a call's record; one that fails is dropped, not the call."""

    __slots__ = ("dropped", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.dropped: list[str] = []

    def read(self, name: str, empty: Callable[[], _T], read: Callable[[], _T]) -> _T:
        try:
            return read()
        except Exception:
            self.dropped.append(name)
            metrics.increment("metering_parts_dropped")
            warn_once(
                f"part:{name}:{self.method}",
                "cmdrdata: could not record the %s of a %s call (odd input); "
                "it is left out and the call is metered without it",
                name,
                self.method,
            )
            return empty()


def key_attributes(client: Any) -> dict[str, str]:
    """The client's OpenAI key as its last four characters, and its project, when known."""
    attrs: dict[str, str] = {}
    try:
        key, project = getattr(client, "api_key", None), getattr(client, "project", None)
    except Exception:
        return attrs
    if isinstance(key, str) and len(key) >= 12 and key.isprintable():
        attrs[A.OPENAI_KEY_SUFFIX] = key[-4:]
    if isinstance(project, str) and 0 < len(project) <= 128 and project.isprintable():
        attrs[A.OPENAI_PROJECT_ID] = project
    return attrs


def _take_agent_kwargs(kwargs: dict[str, Any]) -> tuple[Any, Any, bool, Carried | None]:
    """Remove the agent's keyword arguments (and a carried attribution) from ``kwargs``.

    Never raises: the SDK must never see the agent's arguments, whatever else they are.
    """
    customer = kwargs.pop("customer_id", None)
    metadata = kwargs.pop("tracking_metadata", None)
    track = kwargs.pop("track_usage", True) is not False
    carried = None
    headers = kwargs.get("extra_headers")
    # An odd headers mapping that cannot be read is left as it is (the SDK will judge it).
    with contextlib.suppress(Exception):
        if isinstance(headers, Mapping) and CARRY_HEADER in headers:
            found = headers[CARRY_HEADER]
            rest = {k: v for k, v in headers.items() if k != CARRY_HEADER}
            kwargs["extra_headers"] = rest or None
            carried = found if isinstance(found, Carried) else None
    return customer, metadata, track, carried


def _start(
    runtime: Runtime, endpoint: Endpoint, resource: Any, kwargs: dict[str, Any]
) -> MeteredCall | None:
    """The call's metering, or ``None`` when it is not to be metered.

    Every call that reaches OpenAI gets one: odd input only drops parts of the record
    (see :meth:`Runtime.begin`), and an unexpected failure still meters a minimal span.
    """
    customer, metadata, track, carried = _take_agent_kwargs(kwargs)
    if not runtime.metering or not track or ACTIVE.get() is not None:
        return None
    attribution: Attribution | None = None
    if carried is not None:
        if not carried.track:
            return None
        attribution = carried.attribution
    try:
        if attribution is None:
            attribution = resolve(customer, metadata, runtime.settings.customer_id)
        return runtime.begin(endpoint, getattr(resource, "_client", None), kwargs, attribution)
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once("begin:" + endpoint.method, "cmdrdata: could not start metering a call")
        return runtime.begin_degraded(endpoint, kwargs, attribution, customer)


Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def _untracked(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a patched method that is not metered, so that its request is not metered either."""
    if ACTIVE.get() is not None:  # inside a metered call: that call meters the request
        return wrapped(*args, **kwargs)
    token = ACTIVE.set(UNTRACKED)
    try:
        return wrapped(*args, **kwargs)
    finally:
        ACTIVE.reset(token)


async def _untracked_async(
    wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if ACTIVE.get() is not None:
        return await wrapped(*args, **kwargs)
    token = ACTIVE.set(UNTRACKED)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        ACTIVE.reset(token)


def call_wrapper(runtime: Runtime, endpoint: Endpoint, is_async: bool) -> Wrapper:
    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            call = _start(runtime, endpoint, instance, kwargs)
            if call is None:
                return await _untracked_async(wrapped, args, kwargs)
            if limits.ENGINE is not None:  # may raise CustomerLimitExceeded: nothing sent
                limits.admit_call(call, getattr(instance, "_client", None))
            token = ACTIVE.set(call)
            call.activate()
            try:
                result = await wrapped(*args, **call.kwargs)
            except BaseException as exc:
                call.fail(exc)
                raise
            finally:
                call.deactivate()
                ACTIVE.reset(token)
            call.complete(result)
            return result

        return async_wrapper

    def sync_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = _start(runtime, endpoint, instance, kwargs)
        if call is None:
            return _untracked(wrapped, args, kwargs)
        if limits.ENGINE is not None:  # may raise CustomerLimitExceeded: nothing is sent
            limits.admit_call(call, getattr(instance, "_client", None))
        token = ACTIVE.set(call)
        call.activate()
        try:
            result = wrapped(*args, **call.kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            call.deactivate()
            ACTIVE.reset(token)
        call.complete(result)
        return result

    return sync_wrapper


def stream_helper_wrapper(runtime: Runtime, endpoint: Endpoint) -> Wrapper:
    """``.stream()``: resolve attribution now, let the later ``create`` carry it."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        customer, metadata, track, _ = _take_agent_kwargs(kwargs)
        # Resuming a stored response (response_id=) calls retrieve, not create: a
        # carried header would go out with it. Its usage is the create's (deferred).
        if runtime.metering and R.arg(kwargs, "response_id") is None:
            try:
                attribution = (
                    resolve(customer, metadata, runtime.settings.customer_id) if track else None
                )
                headers = kwargs.get("extra_headers") or {}
                kwargs["extra_headers"] = {**headers, CARRY_HEADER: Carried(attribution, track)}
            except Exception:
                error_once("helper:" + endpoint.method, "cmdrdata: could not carry attribution")
        return wrapped(*args, **kwargs)

    return wrapper


def process_response_hook(is_async: bool, runtime: Runtime | None = None) -> Wrapper:
    """Sees ``_process_response(response=..., retries_taken=...)`` of every SDK request.

    With a patched method's call active, its response goes to that call; with none, a
    direct call to a billable path is metered here (see :mod:`.direct`).
    """

    def hook(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = ACTIVE.get()
        if isinstance(call, MeteredCall):
            response = kwargs.get("response")
            if response is not None:
                call.on_http_response(response, kwargs.get("retries_taken"), is_async)
            return wrapped(*args, **kwargs)
        if call is not None or runtime is None or not runtime.metering:
            return wrapped(*args, **kwargs)
        found = _begin_direct(runtime, instance, kwargs, is_async)
        if found is None:
            return wrapped(*args, **kwargs)
        found.on_http_response(kwargs.get("response"), kwargs.get("retries_taken"), is_async)
        if is_async:
            return _finish_direct_async(found, wrapped(*args, **kwargs))
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            found.fail(exc)
            raise
        found.complete(result)
        return result

    return hook


def _begin_direct(
    runtime: Runtime, client: Any, kwargs: dict[str, Any], is_async: bool
) -> MeteredCall | None:
    try:
        return direct.begin(runtime, client, kwargs, is_async)
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once("direct", "cmdrdata: could not meter a direct call")
        return None


async def _finish_direct_async(call: MeteredCall, pending: Any) -> Any:
    try:
        result = await pending
    except BaseException as exc:
        call.fail(exc)
        raise
    call.complete(result)
    return result
