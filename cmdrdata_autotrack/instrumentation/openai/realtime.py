"""Realtime and WebSocket sessions: one span per session, one metered span per billed unit.

Covered where the installed SDK has them, sync and async: ``client.realtime.connect``,
``client.beta.realtime.connect``, ``client.responses.connect`` and
``client.beta.responses.connect``. Nothing of these goes through HTTP, so the
HTTP hook never sees them; their usage arrives in server events instead:

* Realtime: each ``response.done`` carries the response's ``usage`` (text, audio,
  image and cached input tokens, text and audio output tokens); each
  ``conversation.item.input_audio_transcription.completed`` carries a
  transcription's (tokens or audio seconds).
* Responses over a WebSocket: ``response.completed`` / ``.incomplete`` / ``.failed``,
  as over HTTP.

The customer is resolved when the app calls ``connect`` (a ``customer_id=``
argument, the customer context, baggage or the default); a ``response.create``
the app sends inside another customer context bills that response to that customer.

How it watches, without changing anything the app gets: every reading path of the
SDK's connection classes (``recv``, iteration, ``dispatch_events``, ``recv_bytes``)
goes through ``recv_bytes``, whose frames are looked at after the SDK returns them
and handed on unchanged. Sent events are looked at before they go, unchanged. A
session span opens when the connection manager is entered and ends when the
connection is closed or collected; it is of its own instrumentation scope, so the
metering processor never bills it. Each billed unit is a child span of the agent's
scope, ended as its usage arrives: one usage event each (see :mod:`.realtime_session`).

This module is light (it is imported when the agent instruments): what a session
needs is imported at the first ``connect``.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wrapt

from ...telemetry import metrics
from ...telemetry.logging import error_once, logger

if TYPE_CHECKING:
    from .realtime_session import Pending, Plan, Session

_MARK = "_self_cmdrdata_autotrack"
_MISSING = object()


@dataclass(frozen=True)
class Surface:
    """Where one WebSocket API lives in the SDK: classes as (sync, async) pairs."""

    module: str
    resources: tuple[str, str]  # the classes with ``connect()``
    managers: tuple[str, str]  # what ``connect()`` returns
    connections: tuple[str, str]  # what entering the manager gives the app
    protocol: str  # "realtime" | "responses"


_REALTIME = (
    ("Realtime", "AsyncRealtime"),
    ("RealtimeConnectionManager", "AsyncRealtimeConnectionManager"),
    ("RealtimeConnection", "AsyncRealtimeConnection"),
)
_RESPONSES = (
    ("Responses", "AsyncResponses"),
    ("ResponsesConnectionManager", "AsyncResponsesConnectionManager"),
    ("ResponsesConnection", "AsyncResponsesConnection"),
)
SURFACES: tuple[Surface, ...] = (
    Surface("openai.resources.realtime.realtime", *_REALTIME, "realtime"),
    Surface("openai.resources.beta.realtime.realtime", *_REALTIME, "realtime"),
    Surface("openai.resources.responses.responses", *_RESPONSES, "responses"),
    Surface("openai.resources.beta.responses.responses", *_RESPONSES, "responses"),
)

# --- the wrappers -----------------------------------------------------------------------------


class _State:
    """The agent's runtime (by a getter) and what belongs to which manager and connection."""

    def __init__(self) -> None:
        self.runtime_now: Callable[[], Any] | None = None
        self.plans: weakref.WeakKeyDictionary[Any, Plan | None] = weakref.WeakKeyDictionary()
        self.queued: weakref.WeakKeyDictionary[Any, list[Pending]] = weakref.WeakKeyDictionary()
        self.sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
        self.lock = threading.RLock()
        self.patched: list[tuple[type, str, Any]] = []  # (class, attribute, own original)
        self.hooks_registered = False


_state = _State()
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
# Set while a wrapped send runs: a send that sends through another is noted once.
_SENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("cmdrdata_ws_send", default=False)


def guarded(key: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run a piece of the agent's own work: a failure is logged once, never raised."""
    try:
        return function(*args)
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once(key, "cmdrdata: could not meter part of a WebSocket session")
        return None


def _runtime() -> Any:
    """The running agent's runtime when it meters, else ``None`` (the SDK goes untouched)."""
    getter = _state.runtime_now
    runtime = getter() if getter is not None else None
    return runtime if runtime is not None and runtime.metering else None


def _take_agent_kwargs(kwargs: dict[str, Any]) -> tuple[Any, Any, bool]:
    """The agent's arguments, out of ``kwargs`` always: the SDK must never see them."""
    customer = kwargs.pop("customer_id", None)
    metadata = kwargs.pop("tracking_metadata", None)
    return customer, metadata, kwargs.pop("track_usage", True) is not False


def connect_wrapper(surface: Surface) -> Wrapper:
    """``connect()``: take the agent's arguments out; resolve the customer now."""

    def plan(
        instance: Any,
        kwargs: dict[str, Any],
        manager: Any,
        customer: Any,
        metadata: Any,
        track: bool,
    ) -> None:
        runtime = _runtime()
        if runtime is None:
            return
        from .realtime_session import plan_at_connect

        _state.plans[manager] = (
            plan_at_connect(runtime, instance, kwargs, surface.protocol, customer, metadata)
            if track
            else None
        )

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        customer, metadata, track = _take_agent_kwargs(kwargs)
        manager = wrapped(*args, **kwargs)
        guarded("realtime-connect", plan, instance, kwargs, manager, customer, metadata, track)
        return manager

    return wrapper


def _begin(surface: Surface, manager: Any) -> Session | None:
    runtime = _runtime()
    if runtime is None:
        return None
    from .realtime_session import Plan, Session, plan_from_manager

    plan = _state.plans.get(manager, _MISSING)  # kept: a manager can be entered again
    if plan is None:
        return None  # connect(track_usage=False)
    if not isinstance(plan, Plan):  # connect() was called before the agent ran
        plan = plan_from_manager(runtime, manager, surface.protocol)
    session = Session(runtime, plan)
    queued = _state.queued.pop(manager, None)
    if queued:  # sent through the manager before it connected: they go first
        session.pending.extend(queued)
    return session


def _attach(session: Session | None, connection: Any) -> None:
    if session is None:
        return
    _state.sessions[connection] = session
    session.finalizer = weakref.finalize(connection, session.end, "abandoned")


def enter_wrapper(surface: Surface, is_async: bool) -> Wrapper:
    """Entering the manager opens the session span; the connection is watched from then on."""

    def begin(instance: Any) -> Session | None:
        return guarded("realtime-begin", _begin, surface, instance)  # type: ignore[no-any-return]

    def failed(session: Session | None, exc: BaseException) -> None:
        if session is not None:
            guarded("realtime-end", session.end, "connect_failed", exc)

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            session = begin(instance)
            try:
                connection = await wrapped(*args, **kwargs)
            except BaseException as exc:
                failed(session, exc)
                raise
            guarded("realtime-attach", _attach, session, connection)
            return connection

        return async_wrapper

    def sync_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        session = begin(instance)
        try:
            connection = wrapped(*args, **kwargs)
        except BaseException as exc:
            failed(session, exc)
            raise
        guarded("realtime-attach", _attach, session, connection)
        return connection

    return sync_wrapper


def _queue_on_manager(manager: Any, event: Any) -> None:
    runtime = _runtime()
    if runtime is None:
        return
    from .realtime_session import queued_create

    pending = queued_create(runtime, event)
    if pending is not None:
        _state.queued.setdefault(manager, []).append(pending)


def manager_send_wrapper() -> Wrapper:
    """``manager.send()`` queues events until the connection opens: note a ``response.create``."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        event = args[0] if args else kwargs.get("event")
        guarded("realtime-queue", _queue_on_manager, instance, event)
        return result

    return wrapper


def recv_wrapper(is_async: bool) -> Wrapper:
    """``recv_bytes()``: every frame the app reads, seen after the SDK returns it."""

    def observe(instance: Any, message: Any) -> None:
        session = _state.sessions.get(instance)
        if session is not None and not session.ended:
            guarded("realtime-recv", session.on_frame, message)

    def failed(instance: Any, exc: BaseException) -> None:
        session = _state.sessions.get(instance)
        if session is not None and not session.ended:
            guarded("realtime-recv", session.on_recv_error, exc)

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            try:
                message = await wrapped(*args, **kwargs)
            except BaseException as exc:
                failed(instance, exc)
                raise
            observe(instance, message)
            return message

        return async_wrapper

    def sync_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            message = wrapped(*args, **kwargs)
        except BaseException as exc:
            failed(instance, exc)
            raise
        observe(instance, message)
        return message

    return sync_wrapper


def send_wrapper(is_async: bool, raw: bool) -> Wrapper:
    """``send()`` / ``send_raw()``: a ``response.create`` is noted before it goes."""

    def note(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pending | None:
        session = _state.sessions.get(instance)
        if session is None or session.ended or _SENDING.get():
            return None
        event = args[0] if args else kwargs.get("data" if raw else "event")
        observe = session.on_send_raw if raw else session.on_send
        return guarded("realtime-send", observe, event)  # type: ignore[no-any-return]

    def unsend(instance: Any, pending: Pending | None) -> None:
        if pending is not None:
            session = _state.sessions.get(instance)
            if session is not None:
                session.unsend(pending)

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            pending = note(instance, args, kwargs)
            token = _SENDING.set(True)
            try:
                return await wrapped(*args, **kwargs)
            except BaseException:
                unsend(instance, pending)
                raise
            finally:
                _SENDING.reset(token)

        return async_wrapper

    def sync_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        pending = note(instance, args, kwargs)
        token = _SENDING.set(True)
        try:
            return wrapped(*args, **kwargs)
        except BaseException:
            unsend(instance, pending)
            raise
        finally:
            _SENDING.reset(token)

    return sync_wrapper


def close_wrapper(is_async: bool) -> Wrapper:
    """``close()``: the session ends (after the SDK closed, whatever it raised)."""

    def end(instance: Any) -> None:
        session = _state.sessions.pop(instance, None)
        if session is not None:
            guarded("realtime-end", session.end, "closed")

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            try:
                return await wrapped(*args, **kwargs)
            finally:
                end(instance)

        return async_wrapper

    def sync_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:
            end(instance)

    return sync_wrapper


# --- patching -----------------------------------------------------------------------------------


def _wrap(cls: type, name: str, wrapper: Wrapper) -> None:
    """Wrap ``cls.name``, its own or inherited (an inherited one is wrapped on ``cls`` only)."""
    own = cls.__dict__.get(name)
    original = own if own is not None else getattr(cls, name, None)
    if original is None or getattr(original, _MARK, False) or not callable(original):
        return
    wrapped = wrapt.FunctionWrapper(original, wrapper)
    setattr(wrapped, _MARK, True)
    setattr(cls, name, wrapped)
    _state.patched.append((cls, name, own))


def _patch_surface(module: Any, surface: Surface) -> None:
    for index, is_async in enumerate((False, True)):
        resource = getattr(module, surface.resources[index], None)
        manager = getattr(module, surface.managers[index], None)
        connection = getattr(module, surface.connections[index], None)
        if not all(isinstance(c, type) for c in (resource, manager, connection)):
            continue  # this SDK has no such API
        assert isinstance(resource, type) and isinstance(manager, type)
        assert isinstance(connection, type)
        if "connect" not in resource.__dict__:
            continue
        _wrap(resource, "connect", connect_wrapper(surface))
        for name in ("__aenter__", "enter") if is_async else ("__enter__", "enter"):
            _wrap(manager, name, enter_wrapper(surface, is_async))
        _wrap(manager, "send", manager_send_wrapper())
        _wrap(connection, "recv_bytes", recv_wrapper(is_async))
        _wrap(connection, "send", send_wrapper(is_async, raw=False))
        _wrap(connection, "send_raw", send_wrapper(is_async, raw=True))
        _wrap(connection, "close", close_wrapper(is_async))


def _patch_module(module: Any) -> None:
    with _state.lock:
        if _state.runtime_now is None:
            return
        try:
            from .instrumentor import sdk_supported

            if not sdk_supported():
                return
            for surface in SURFACES:
                if surface.module == module.__name__:
                    _patch_surface(module, surface)
        except Exception:
            error_once(
                "patch-realtime:" + module.__name__,
                "cmdrdata: could not instrument WebSocket sessions in %s",
                module.__name__,
            )


def patch(runtime_now: Callable[[], Any]) -> None:
    """Patch the WebSocket APIs now for modules already imported, and later for the rest.

    ``runtime_now()`` gives the agent's runtime at each connect (``None``: not metered).
    """
    with _state.lock:
        _state.runtime_now = runtime_now
        if not _state.hooks_registered:
            _state.hooks_registered = True
            for name in dict.fromkeys(s.module for s in SURFACES):
                wrapt.register_post_import_hook(_patch_module, name)
        else:
            for name in dict.fromkeys(s.module for s in SURFACES):
                module = sys.modules.get(name)
                if module is not None:
                    _patch_module(module)
    logger.debug("WebSocket sessions instrumented")


def unpatch() -> None:
    """Restore every original; sessions in progress end (their spans close)."""
    with _state.lock:
        _state.runtime_now = None
        while _state.patched:
            cls, name, own = _state.patched.pop()
            if own is not None:
                setattr(cls, name, own)
            else:
                delattr(cls, name)
        sessions = list(_state.sessions.values())
        _state.sessions = weakref.WeakKeyDictionary()
        _state.plans = weakref.WeakKeyDictionary()
        _state.queued = weakref.WeakKeyDictionary()
    for session in sessions:
        guarded("realtime-end", session.end, "uninstrumented")
