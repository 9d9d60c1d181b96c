"""One Realtime or Responses WebSocket session, as the agent meters it.

A :class:`Session` is told what the app sends (:meth:`Session.on_send`) and what it
receives (:meth:`Session.on_frame`), by the wrappers of :mod:`.realtime`. It keeps the
session's span, its customer, the ``response.create`` events waiting for their
response and the responses in flight; each billed unit (a ``response.done``, a
completed transcription, a finished Responses response) ends one metered child
span of the session's: one usage event. At the end, a response that never reported
its usage is still metered, flagged ``missing_usage``.

Which customer a response is billed to: the one named where the app sent its
``response.create`` (a customer context, or baggage), else the session's (resolved
at ``connect``). Responses answer ``response.create`` events in the order they
were sent, so each ``response.created`` takes the oldest waiting one. A create the
server rejects gets an ``error`` instead: one naming the create's ``event_id`` takes
just that one out; one naming no event could be about any, so the waiting ones fall
back to the session's customer rather than shift onto the wrong responses.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ...attribution.context import current_scope
from ...attribution.resolve import Attribution, resolve
from ...telemetry import metrics
from ...usage import attributes as A
from ...usage import realtime_extract as X
from ...usage.fields import field, text
from ...usage.model import MISSING_USAGE, ResponseInfo, Usage
from . import request as R
from .realtime import guarded

# The session span's scope: not the agent's metering scope, so it is traced, never billed.
SESSION_SCOPE = "cmdrdata_autotrack.openai.session"
# Session span attributes (traces only: a session is not a billed unit).
SESSION_ID = "cmdrdata.realtime.session.id"
SESSION_OUTCOME = "cmdrdata.session.outcome"  # closed | abandoned | connect_failed | uninstrumented
SESSION_METERED = "cmdrdata.session.metered"  # usage events of the session, flagged ones too
SESSION_UNFINISHED = "cmdrdata.session.unfinished"  # of which never reported usage
SESSION_DISCONNECTS = "cmdrdata.session.disconnects"  # times the connection was lost

# Frames worth parsing: those of the types below. A frame that opens with its ``type``
# (as OpenAI's do, maybe after its ``event_id``) is judged by that alone, whatever its size
# (an audio delta is tens of kilobytes of base64); any other is scanned for one of the types
# as a whole JSON string. The parsed event's own ``type`` then decides: text that merely
# mentions a type is parsed and ignored.
_WATCHED_TYPES = (
    "response.created",
    "response.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
    "session.created",
    "session.updated",
    "transcription_session.created",
    "transcription_session.updated",
    "conversation.item.input_audio_transcription.completed",
)
_HEAD = r'\{\s*(?:"event_id"\s*:\s*"[^"\\]*"\s*,\s*)?"type"\s*:\s*"([^"\\]*)"'
_ANY = '"(' + "|".join(re.escape(t) for t in _WATCHED_TYPES) + ')"'
_HEAD_TEXT, _ANY_TEXT = re.compile(_HEAD), re.compile(_ANY)
_HEAD_BYTES, _ANY_BYTES = re.compile(_HEAD.encode()), re.compile(_ANY.encode())
_WATCHED_TEXT = frozenset(_WATCHED_TYPES)
_WATCHED_BYTES = frozenset(t.encode() for t in _WATCHED_TYPES)


def watched(message: bytes | bytearray | str) -> bool:
    """Whether a received frame may be one of the events the agent reads."""
    if isinstance(message, str):
        head, types, scan = _HEAD_TEXT.match(message), _WATCHED_TEXT, _ANY_TEXT
        if head is not None:
            return head.group(1) in types
        return scan.search(message) is not None
    head_b = _HEAD_BYTES.match(message)
    if head_b is not None:
        return bytes(head_b.group(1)) in _WATCHED_BYTES
    return _ANY_BYTES.search(message) is not None


_SESSION_EVENTS = frozenset(
    {
        "session.created",
        "session.updated",
        "transcription_session.created",
        "transcription_session.updated",
    }
)


# --- what the app connects with ---------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What ``connect()`` was called with, kept until the manager is entered."""

    attribution: Attribution
    model: str | None
    client: Any
    protocol: str  # "realtime" | "responses"


@dataclass(eq=False)  # each one is itself: two alike are still two sends
class Pending:
    """A ``response.create`` sent, not yet answered."""

    event_id: str | None
    attribution: Attribution | None  # None: the session's customer
    model: str | None
    sent_ns: int


@dataclass
class Active:
    """A response the server started (``response.created``) and has not finished."""

    start_ns: int
    attribution: Attribution | None
    model: str | None
    response_id: str | None = None


class Session:
    """One WebSocket session: its span, its customer, and the responses in flight."""

    def __init__(self, runtime: Any, plan: Plan) -> None:
        self.runtime = runtime
        self.protocol = plan.protocol
        self.attribution = plan.attribution
        self.model = plan.model
        self.base = _client_attributes(runtime, plan.client)
        self.session_model: str | None = None
        self.transcription_model: str | None = None
        self.pending: collections.deque[Pending] = collections.deque()
        self.active: dict[str, Active] = {}
        self.billed = 0
        self.disconnects = 0
        self.unfinished = 0
        self.ended = False
        self.flagged: set[str | None] = set()  # responses the end metered as unfinished
        self.lock = threading.Lock()
        self.finalizer: weakref.finalize[Any, Any] | None = None
        api_type = "realtime" if self.protocol == "realtime" else "responses"
        attrs: dict[str, Any] = {A.OPENAI_API_TYPE: api_type, **self.base}
        if self.model:
            attrs[A.REQUEST_MODEL] = self.model
        attrs.update(self.attribution.to_attributes())
        name = f"{api_type} session {self.model}" if self.model else f"{api_type} session"
        self.span: Span = runtime.tracers.tracer_for(SESSION_SCOPE).start_span(
            name, kind=SpanKind.CLIENT, attributes=attrs
        )
        self.parent = trace.set_span_in_context(self.span)

    # --- sent events -------------------------------------------------------------------

    def on_send(self, event: Any) -> Pending | None:
        """The app is sending ``event`` (a dict or an SDK model): note a ``response.create``."""
        if field(event, "type") != "response.create":
            return None
        model = None
        if self.protocol == "responses":
            model = R.model_name(field(event, "model"))
        pending = new_pending(self.runtime, event, model)
        with self.lock:
            self.pending.append(pending)
        return pending

    def on_send_raw(self, data: Any) -> Pending | None:
        try:
            if isinstance(data, memoryview):
                data = data.tobytes()
            if isinstance(data, bytes | bytearray):
                if b"response.create" not in data:
                    return None
            elif not isinstance(data, str) or "response.create" not in data:
                return None
            event = json.loads(data)
        except (ValueError, TypeError, RecursionError):
            return None  # the server will judge it
        return self.on_send(event) if isinstance(event, Mapping) else None

    def unsend(self, pending: Pending | None) -> None:
        """The send failed: the server will not answer it."""
        if pending is None:
            return
        with self.lock, contextlib.suppress(ValueError):
            self.pending.remove(pending)

    # --- received events -----------------------------------------------------------------

    def on_recv_error(self, exc: BaseException) -> None:
        """Reading failed: a lost connection is counted (the SDK may reconnect and go on)."""
        if any(c.__name__.startswith("ConnectionClosed") for c in type(exc).__mro__):
            with self.lock:
                self.disconnects += 1

    def on_frame(self, message: Any) -> None:
        """A frame the SDK received (bytes, or text on some websockets versions)."""
        if not isinstance(message, bytes | bytearray | str) or not watched(message):
            return
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            return  # not JSON: the SDK tells the app; an open response is flagged at the end
        if isinstance(event, dict):
            self.on_event(event)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in _SESSION_EVENTS:
            self._on_session(event.get("session"))
        elif kind == "response.created":
            self._on_created(event)
        elif kind == "error":
            self._on_error(event)
        elif self.protocol == "realtime":
            if kind == X.RESPONSE_DONE:
                usage, info, cached = X.extract_response_done(event)
                self._bill_response(event, usage, info, cached)
            elif kind == X.TRANSCRIPTION_COMPLETED:
                self._bill_transcription(event)
        elif kind in X.RESPONSES_FINAL:
            usage, info = X.extract_responses_final(event)
            self._bill_response(event, usage, info, {})

    def _on_session(self, session: Any) -> None:
        session_id, model, transcription_model = X.session_facts(session)
        if session_id:
            self.span.set_attribute(SESSION_ID, session_id)
        with self.lock:
            self.session_model = model or self.session_model
            self.transcription_model = transcription_model or self.transcription_model

    def _on_created(self, event: dict[str, Any]) -> None:
        response_id = text(field(event.get("response"), "id"))
        with self.lock:
            pending = self.pending.popleft() if self.pending else None
            active = Active(
                time.time_ns(),
                pending.attribution if pending else None,
                pending.model if pending else None,
                response_id,
            )
            if response_id is not None:
                self.active[response_id] = active

    def _on_error(self, event: dict[str, Any]) -> None:
        """A rejected ``response.create`` gets no response: keep the order of the others."""
        client_event = text(field(event.get("error"), "event_id"))
        with self.lock:
            if client_event is not None:
                for pending in self.pending:
                    if pending.event_id == client_event:
                        self.pending.remove(pending)
                        break
            elif self.pending:
                # Which event it answers is unknown: rather than shift responses onto the
                # customers of others, the waiting ones fall back to the session's.
                self.pending.clear()

    def _take_active(self, response_id: str | None) -> Active | None:
        """The response this event finishes; ``None`` if it was metered (flagged) already."""
        with self.lock:
            if self.ended and response_id in self.flagged:
                return None  # the session ended as it arrived: its flagged event stands
            active = self.active.pop(response_id, None) if response_id else None
            if active is None and response_id is None and self.active:
                # an event without its response's id: it finishes the oldest in flight
                active = self.active.pop(next(iter(self.active)))
        return active or Active(time.time_ns(), None, None)

    def _bill_response(
        self, event: dict[str, Any], usage: Usage, info: ResponseInfo, extra: dict[str, Any]
    ) -> None:
        response = event.get("response")
        active = self._take_active(info.id)
        if active is None:
            return
        if self.protocol == "realtime":
            operation, api_type = "realtime", "realtime"
            model = active.model or self.model
            info.model = info.model or self.session_model
        else:
            operation, api_type = "chat", "responses"
            model = active.model or R.model_name(field(response, "model")) or self.model
        status = field(response, "status")
        if status == "failed":
            extra[A.ERROR_TYPE] = "response_failed"
        self._bill(operation, api_type, model, active, usage, info, extra)

    def _bill_transcription(self, event: dict[str, Any]) -> None:
        usage = X.extract_transcription(event)
        info = ResponseInfo(id=text(event.get("item_id")))
        model = self.transcription_model
        active = Active(time.time_ns(), None, None)
        self._bill("audio_transcription", "realtime", model, active, usage, info, {})

    def _bill(
        self,
        operation: str,
        api_type: str,
        model: str | None,
        active: Active,
        usage: Usage | None,
        info: ResponseInfo,
        extra: dict[str, Any],
    ) -> None:
        """End one metered span, a child of the session's: one usage event."""
        attribution = active.attribution or self.attribution
        attrs: dict[str, Any] = {
            A.METERED_MARK: True,
            A.OPERATION_NAME: operation,
            A.OPENAI_API_TYPE: api_type,
            **self.base,
        }
        if model:
            attrs[A.REQUEST_MODEL] = model
        attrs.update(attribution.to_attributes())
        if attribution.metadata_dropped:
            attrs[A.METERING_DEGRADED] = True
            attrs[A.METERING_DROPPED] = ["metadata"]
        if usage is not None:
            if usage.problem is not None:
                metrics.increment(
                    "usage_missing" if usage.problem == MISSING_USAGE else "usage_malformed"
                )
            attrs.update(usage.to_attributes())
        attrs.update(info.to_attributes())
        attrs.update(extra)
        empty = usage is None or usage.is_empty()
        attrs[A.USAGE_SOURCE] = "none" if empty else "response"
        name = f"{operation} {model}" if model else operation
        span = self.runtime.tracers.tracer().start_span(
            name,
            context=self.parent,
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=active.start_ns,
        )
        if A.ERROR_TYPE in attrs:
            span.set_status(Status(StatusCode.ERROR, str(attrs[A.ERROR_TYPE])))
        span.end()
        metrics.increment("calls_metered")
        with self.lock:
            self.billed += 1

    # --- the end ---------------------------------------------------------------------------

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        """The session is over: bill what never finished (flagged), end the span, once."""
        with self.lock:
            if self.ended:
                return
            self.ended = True
            unfinished = list(self.active.values())
            unfinished += [Active(p.sent_ns, p.attribution, p.model) for p in self.pending]
            self.flagged = {active.response_id for active in unfinished}
            self.active = {}
            self.pending.clear()
        finalizer = self.finalizer
        if finalizer is not None:
            finalizer.detach()
        for active in unfinished:
            # Started (or asked for), so maybe billed, but its usage never came: flagged.
            guarded(
                "realtime-unfinished",
                self._bill,
                "realtime" if self.protocol == "realtime" else "chat",
                "realtime" if self.protocol == "realtime" else "responses",
                active.model or self.model,
                active,
                Usage(problem=MISSING_USAGE),
                ResponseInfo(model=self.session_model, id=active.response_id),
                {A.STREAM_OUTCOME: outcome},
            )
        self.unfinished = len(unfinished)
        attrs: dict[str, Any] = {
            SESSION_OUTCOME: outcome,
            SESSION_METERED: self.billed,
            SESSION_UNFINISHED: self.unfinished,
            SESSION_DISCONNECTS: self.disconnects,
        }
        if error is not None:
            attrs[A.ERROR_TYPE] = type(error).__qualname__
            self.span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        self.span.set_attributes(attrs)
        self.span.end()


def _named_attribution(runtime: Any) -> Attribution | None:
    """The customer the app names where it sends a ``response.create``, if any."""
    scope = current_scope()
    named = scope is not None and scope.customer_id is not None
    if not named:
        try:
            named = baggage.get_baggage(A.BAGGAGE_CUSTOMER_ID) is not None
        except Exception:
            named = False
    return resolve(None, None, runtime.settings.customer_id) if named else None


def _client_attributes(runtime: Any, client: Any) -> dict[str, Any]:
    """Provider and server of the client; the server is its WebSocket URL when it has one."""
    attrs: dict[str, Any] = dict(runtime.client_attributes(client)) if client is not None else {}
    websocket_url = getattr(client, "websocket_base_url", None)
    if websocket_url:
        url = str(websocket_url)
        url = re.sub(r"^ws(s?)://", r"http\1://", url, flags=re.IGNORECASE)
        attrs.pop(A.SERVER_PORT, None)
        attrs.update(R.server_attributes(url))
    return attrs


def new_pending(runtime: Any, event: Any, model: str | None) -> Pending:
    """A ``response.create`` about to be sent, with the customer named where it is sent."""
    return Pending(
        text(field(event, "event_id")), _named_attribution(runtime), model, time.time_ns()
    )


def plan_at_connect(
    runtime: Any,
    resource: Any,
    kwargs: Mapping[str, Any],
    protocol: str,
    customer: Any,
    metadata: Any,
) -> Plan:
    """The session's customer and model, resolved when the app calls ``connect()``."""
    attribution = resolve(customer, metadata, runtime.settings.customer_id)
    model = R.model_name(R.arg(kwargs, "model"))
    return Plan(attribution, model, getattr(resource, "_client", None), protocol)


def plan_from_manager(runtime: Any, manager: Any, protocol: str) -> Plan:
    """For a manager ``connect()`` made before the agent ran: resolved now, from what it holds."""
    mangled = "_" + type(manager).__name__.lstrip("_")
    model = R.model_name(getattr(manager, mangled + "__model", None))
    client = getattr(manager, mangled + "__client", None)
    return Plan(resolve(None, None, runtime.settings.customer_id), model, client, protocol)


def queued_create(runtime: Any, event: Any) -> Pending | None:
    """A ``response.create`` the app queued on the manager before it connected."""
    if field(event, "type") != "response.create":
        return None
    return new_pending(runtime, event, R.model_name(field(event, "model")))
