"""Work whose usage comes later: background responses, Assistants runs, batches.

The agent never asks OpenAI anything itself: it learns how such work ended only from
what the app fetches, through the SDK's ``_process_response`` hook (see :mod:`.direct`,
which hands these paths here), and from the call that started it:

* ``responses.create(background=True)`` answers ``queued`` with no usage: its span
  bills nothing (state ``pending``) and its attribution (customer, metadata, model) is
  recorded in the pending store (:mod:`...export.pending`), keyed by ``response:ID``;
* ``responses.retrieve`` (polling), a resumed stream (``retrieve(stream=True)``,
  ``responses.stream(response_id=...)``) and ``responses.cancel`` that show the
  response finished bill it, with the create call's attribution, under an event id
  derived from ``response:ID``: a second sighting (another retrieve, another process)
  is the same event. A stored response that is not a background one was billed by its
  own call: reading it bills nothing;
* Assistants runs the same way (``run:ID``): the run's create records the attribution of
  the context it was made in; a ``Run`` (polled or streamed: ``thread.run.completed``)
  that is terminal bills its ``usage``;
* ``batches.create`` records the batch's attribution, ``batches.retrieve`` of a
  completed batch links its output file to it, and ``files.content`` of that file bills
  each line at the batch rate (``service_tier`` ``batch``), keyed by the line's id: read
  twice, it is the same events. ``Batch.usage`` is the sum of those lines: never billed.

Nothing here raises into the app, or changes what it gets.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ...attribution.resolve import Attribution, resolve
from ...export.pending import PendingStore, store_for
from ...paths import spool_location
from ...telemetry import metrics
from ...telemetry.logging import error_once
from ...usage import attributes as A
from ...usage import extract
from ...usage import work as W
from ...usage.batch_extract import MAX_LINE, BatchLine, read_output
from ...usage.model import MISSING_USAGE, ResponseInfo
from . import request as R
from .body_tap import tap_async, tap_sync
from .endpoints import Endpoint
from .observers import SSEObserver

if TYPE_CHECKING:
    from .call import MeteredCall
    from .wrappers import Runtime

RESPONSE_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
RUN_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled", "expired"})
# The span attributes a create call's attribution is carried in (to its later sighting).
_CARRIED = (
    A.CUSTOMER_ID,
    A.CUSTOMER_SOURCE,
    A.UNATTRIBUTED,
    A.CUSTOMER_PROBLEM,
    A.REQUEST_MODEL,
    A.OPENAI_REQUEST_SERVICE_TIER,
)
# Private keys of a sighting's kwargs (the call's own kwargs are empty: it was direct).
_CONTEXT = "__cmdrdata_context_attribution"
_WORK = "__cmdrdata_work_id"


@dataclass(slots=True)
class WorkInfo(ResponseInfo):
    """A stored object's facts, plus what says whether it is finished and billable."""

    status: str | None = None
    background: bool | None = None


def _read_response(body: Any) -> extract.Extracted:
    usage, info = extract.extract_responses(body)
    return usage, _work_info(body, info)


def _read_run(body: Any) -> extract.Extracted:
    """A ``Run``: its usage (prompt/completion tokens) is there once it is terminal."""
    usage = extract.usage_from_completion_tokens(extract.field(body, "usage"))
    info = ResponseInfo(
        model=extract.text(extract.field(body, "model")), id=extract.text(extract.field(body, "id"))
    )
    return usage, _work_info(body, info)


def _run_event(event: Any) -> extract.Extracted:
    """A streamed run event: usage only from a terminal ``thread.run`` (not from its steps)."""
    if extract.field(event, "object") != "thread.run":
        return None, ResponseInfo()
    if extract.field(event, "status") not in RUN_TERMINAL:
        return None, ResponseInfo()
    return _read_run(event)


def _work_info(body: Any, info: ResponseInfo) -> WorkInfo:
    status = extract.field(body, "status")
    background = extract.field(body, "background")
    return WorkInfo(
        model=info.model,
        id=info.id,
        finish_reasons=info.finish_reasons,
        service_tier=info.service_tier,
        system_fingerprint=info.system_fingerprint,
        status=status if isinstance(status, str) else None,
        background=background if isinstance(background, bool) else None,
    )


RUN_FAMILY = "assistant_run"
# Streamed runs are read by their own reader (a step's usage is not the run's).
extract.STREAM_READERS.setdefault(RUN_FAMILY, _run_event)

RESPONSE_READ = Endpoint(
    (), ("", ""), "retrieve", "chat", "responses", _read_response, stream="responses"
)
RESPONSE_CANCEL = Endpoint((), ("", ""), "cancel", "chat", "responses", _read_response)
RUN = Endpoint((), ("", ""), "run", "assistant_run", "assistants", _read_run, stream=RUN_FAMILY)
_KIND: dict[int, str] = {
    id(RESPONSE_READ): "response",
    id(RESPONSE_CANCEL): "response",
    id(RUN): "run",
}

_ID = r"([A-Za-z0-9_\-]{1,128})"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(rf"/responses/{_ID}"), "response_read"),
    ("POST", re.compile(rf"/responses/{_ID}/cancel"), "response_cancel"),
    ("POST", re.compile(r"/threads/runs"), "run_create"),
    ("POST", re.compile(rf"/threads/{_ID}/runs"), "run_create"),
    ("GET", re.compile(rf"/threads/{_ID}/runs/{_ID}"), "run_read"),
    ("POST", re.compile(rf"/threads/{_ID}/runs/{_ID}/(?:submit_tool_outputs|cancel)"), "run_read"),
    ("POST", re.compile(r"/batches"), "batch_create"),
    ("GET", re.compile(rf"/batches/{_ID}"), "batch_read"),
    ("POST", re.compile(rf"/batches/{_ID}/cancel"), "batch_read"),
    ("GET", re.compile(rf"/files/{_ID}/content"), "file_content"),
)


def route(method: str, path: str) -> tuple[str, tuple[str, ...]] | None:
    for verb, pattern, kind in _ROUTES:
        if verb == method:
            match = pattern.fullmatch(path)
            if match is not None:
                return kind, match.groups()
    return None


# --- the pending store --------------------------------------------------------------------

_spool_dirs: dict[str | None, Path] = {}


def store(runtime: Runtime) -> PendingStore:
    configured = runtime.settings.spool_dir
    folder = _spool_dirs.get(configured)
    if folder is None:
        folder = _spool_dirs[configured] = spool_location(configured)[0]
    return store_for(folder, runtime.settings.pending_ttl_days * 86400)


def _carried(attributes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(attributes or {}).items():
        if key in _CARRIED or (isinstance(key, str) and key.startswith(A.METADATA_PREFIX)):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


# --- sightings: responses and runs the app fetches ----------------------------------------


def begin(
    runtime: Runtime, client: Any, hook: dict[str, Any], path: str, is_async: bool = False
) -> MeteredCall | None:
    """The metering of a response of deferred work, or ``None`` (handled here, or not ours)."""
    response: Any = hook["response"]
    method = response.request.method
    found = route(method, path)
    if found is None:
        return None
    kind, ids = found
    if kind.startswith("batch") or kind == "file_content":
        _batch_sighting(runtime, client, kind, ids, response, is_async)
        return None
    endpoint = RUN if kind.startswith("run") else RESPONSE_READ
    if kind == "response_cancel":
        endpoint = RESPONSE_CANCEL
    work = None
    if kind == "response_read" or kind == "response_cancel":
        work = "response:" + ids[0]
    elif kind == "run_read":
        work = "run:" + ids[1]
    from .call import MeteredCall

    attrs: dict[str, Any] = {
        A.METERED_MARK: True,
        A.OPERATION_NAME: endpoint.operation,
        A.OPENAI_API_TYPE: endpoint.api_type,
    }
    attrs.update(runtime.client_attributes(client))
    if kind == "response_read" and response.request.url.params.get("stream") == "true":
        attrs[A.REQUEST_STREAM] = True
    name = f"{endpoint.operation} {endpoint.method}"
    span = runtime.tracers.tracer().start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
    kwargs: dict[str, Any] = {
        _CONTEXT: resolve(None, None, runtime.settings.customer_id),
        _WORK: work,
        "__cmdrdata_runtime": runtime,
    }
    call = MeteredCall(span, endpoint, kwargs, None, False)
    call.current = False
    metrics.increment("deferred_sightings")
    return call


def settle(call: MeteredCall, attrs: dict[str, Any], info: ResponseInfo, failed: bool) -> None:
    """Decide, as a call's span ends, what it bills of deferred work (edits ``attrs``)."""
    try:
        kind = _KIND.get(id(call.endpoint))
        if kind is not None:
            _settle_sighting(call, kind, attrs, info, failed)
        elif _background_create(call.endpoint, call.kwargs) and not failed:
            _settle_background_create(call, attrs, info)
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once("deferred-settle", "cmdrdata: could not settle a call of deferred work")


def _background_create(endpoint: Endpoint, kwargs: dict[str, Any]) -> bool:
    return (
        endpoint.api_type == "responses"
        and endpoint.method in ("create", "parse")
        and R.arg(kwargs, "background") is True
    )


def involves(endpoint: Endpoint, kwargs: dict[str, Any]) -> bool:
    """Whether ending a call of ``endpoint`` with ``kwargs`` settles deferred work."""
    return id(endpoint) in _KIND or _background_create(endpoint, kwargs)


def _runtime_of(call: MeteredCall) -> Runtime | None:
    runtime = call.kwargs.get("__cmdrdata_runtime")
    if runtime is None:
        from .instrumentor import _runtime_now

        runtime = _runtime_now()
    return runtime


def _settle_background_create(call: MeteredCall, attrs: dict[str, Any], info: ResponseInfo) -> None:
    response_id = info.id or attrs.get(A.RESPONSE_ID)
    runtime = _runtime_of(call)
    if not isinstance(response_id, str) or runtime is None:
        return  # no id to find it by later: metered as the call it is
    work = "response:" + response_id
    if info.finish_reasons:  # finished already (a streamed background response)
        attrs[W.ID_KEY] = work
        attrs[W.STATE] = "billed"
        if not store(runtime).claim(work):
            attrs[W.STATE] = "repeat"
        return
    attrs[W.STATE] = "pending"  # set first: a store that fails bills nothing early
    carried = _carried(getattr(call.span, "attributes", None))
    store(runtime).remember(work, "response", carried)


def _terminal(call: MeteredCall, kind: str, info: ResponseInfo, usage_found: bool) -> bool | None:
    """True: finished and billable; False: not finished yet; None: never billable here."""
    observer = call.observer
    if isinstance(observer, SSEObserver):  # a resumed response stream, a streamed run
        if kind == "run":
            return usage_found
        return bool(observer.terminal and info.finish_reasons)
    status = info.status if isinstance(info, WorkInfo) else None
    if kind == "run":
        return status in RUN_TERMINAL if status else None
    if isinstance(info, WorkInfo) and info.background is not True:
        # a cancel answers only for background responses; any other stored one was billed
        return None if call.endpoint is not RESPONSE_CANCEL else status in RESPONSE_TERMINAL
    return status in RESPONSE_TERMINAL if status else None


def _settle_sighting(
    call: MeteredCall, kind: str, attrs: dict[str, Any], info: ResponseInfo, failed: bool
) -> None:
    context: Attribution | None = call.kwargs.get(_CONTEXT)
    attrs[W.STATE] = "not_billable"  # until known otherwise (an error bills nothing twice)
    runtime = _runtime_of(call)
    if failed or runtime is None:
        attrs[W.STATE] = "not_billable"
        if context is not None:
            attrs.update(context.to_attributes())
        return
    usage_found = any(key.startswith("gen_ai.usage.") for key in attrs)
    terminal = _terminal(call, kind, info, usage_found)
    work = call.kwargs.get(_WORK)
    if not work and info.id:
        work = f"{kind}:{info.id}"
    pending = store(runtime)
    if terminal is None or not work:
        attrs[W.STATE] = "not_billable"
        if context is not None:
            attrs.update(context.to_attributes())
        return
    if not terminal:
        attrs[W.STATE] = "pending"
        if context is not None:
            attrs.update(context.to_attributes())
            if kind == "run" and call.kwargs.get(_WORK) is None and work.startswith("run:run_"):
                carried = _carried(context.to_attributes())
                if info.model:
                    carried[A.REQUEST_MODEL] = info.model
                pending.remember(work, "run", carried)  # the run's create: its attribution
        return
    # Keyed by the work from here on: whatever fails below, a second sighting is this event.
    attrs[W.ID_KEY] = work
    attrs[W.STATE] = "billed"
    if not usage_found:
        status = info.status if isinstance(info, WorkInfo) else None
        if status == "completed":
            attrs[A.USAGE_PROBLEM] = MISSING_USAGE
    found: dict[str, Any] | None = None
    try:
        found = pending.lookup(work)
        if not pending.claim(work):
            attrs[W.STATE] = "repeat"
    except Exception:  # the store cannot be read: the sighting's own context, flagged
        attrs[A.METERING_DEGRADED] = True
        error_once("deferred-store", "cmdrdata: could not read the pending-work store")
    if found is not None:
        attrs.update(found)
        attrs[W.ATTRIBUTION_FROM] = "pending"
    elif context is not None:
        attrs.update(context.to_attributes())
        attrs[W.ATTRIBUTION_FROM] = "context"
    metrics.increment("deferred_billed")


# --- batches ---------------------------------------------------------------------------


def _json_body(response: Any) -> Any:
    try:
        if "json" not in response.headers.get("content-type", ""):
            return None
        return response.json()
    except Exception:  # not read yet (a streamed body) or not JSON: nothing to learn
        return None


def _batch_sighting(
    runtime: Runtime,
    client: Any,
    kind: str,
    ids: tuple[str, ...],
    response: Any,
    is_async: bool = False,
) -> None:
    if not 200 <= response.status_code < 300:
        return
    if kind == "file_content":
        _meter_output(runtime, client, ids[0], response, is_async)
        return
    body = _json_body(response)
    batch_id = extract.text(extract.field(body, "id"), 128)
    if not batch_id or extract.field(body, "object") != "batch":
        return
    pending = store(runtime)
    if kind == "batch_create":
        attribution = resolve(None, None, runtime.settings.customer_id).to_attributes()
        pending.remember("batch:" + batch_id, "batch", _carried(attribution))
        return
    output = extract.text(extract.field(body, "output_file_id"), 128)
    if output:
        pending.remember("file:" + output, "file", {"batch_id": batch_id})


def _batch_customer(custom_id: str | None, mode: str | None) -> tuple[str, str] | None:
    """The customer a line's ``custom_id`` names, when the app opted in to that
    (``mode``: ``CMDRDATA_BATCH_CUSTOMER_FROM_CUSTOM_ID``)."""
    if not mode or not custom_id:
        return None
    if mode.lower() in ("1", "true", "yes", "on"):
        return custom_id[:256], "custom_id"
    if mode not in custom_id:
        return None
    customer = custom_id.split(mode, 1)[0]
    return (customer[:256], "custom_id") if customer else None


# An output file names "custom_id" on its first line; a file that does not within its
# first 64 KiB is another kind of file (an input file, a fine-tuning file): not read.
_OUTPUT_MARK = b'"custom_id"'
_OUTPUT_HEAD = 65536


def _meter_output(
    runtime: Runtime, client: Any, file_id: str, response: Any, is_async: bool = False
) -> None:
    try:
        data = response.content
    except Exception:  # with_streaming_response: read as the app reads it (OutputReading)
        reading = OutputReading(runtime, client, file_id)
        (tap_async if is_async else tap_sync)(response, reading)
        return
    if _OUTPUT_MARK not in data[:_OUTPUT_HEAD]:
        return  # not an output file
    lines, bad = read_output(data)
    _bill_output(runtime, client, file_id, lines, bad)


class OutputReading:
    """A batch output file the app reads as a stream (``with_streaming_response``): its
    lines are read as its bytes pass on to the app (:mod:`.body_tap`: of the bytes, only
    a line not ended yet is held; of each line read, its ids and usage), and billed when
    the body ends. A body closed or dropped before
    its end bills the lines read whole; the rest are billed when the file is read again
    (each line once, keyed by its own id)."""

    def __init__(self, runtime: Runtime, client: Any, file_id: str) -> None:
        self.runtime, self.client, self.file_id = runtime, client, file_id
        self.observer = self
        self.reading = False
        self.first_chunk_at: float | None = None
        self.lines: list[BatchLine] = []
        self.bad = 0
        self._pending = bytearray()  # the bytes of lines not ended yet
        self._output: bool | None = None  # an output file? (None: not known yet)
        self._oversized = False  # inside a line longer than any output line: skipped
        self._ended = False

    def on_first_chunk(self) -> None:
        self.first_chunk_at = 0.0  # (no time to first chunk on a file's span)

    def feed(self, chunk: bytes) -> bytes:
        if self._output is not False:
            try:
                self._take(chunk)
            except Exception:  # never the app's concern: this file's lines stay unbilled
                self._output = False
                metrics.increment("batch_output_unread")
                error_once("batch-output-read", "cmdrdata: could not read a batch output file")
        return chunk

    def flush(self) -> bytes:
        return b""

    def _take(self, chunk: bytes) -> None:
        pending = self._pending
        if self._oversized:
            end = chunk.find(b"\n")
            if end < 0:
                return
            self._oversized, chunk = False, chunk[end + 1 :]
        # each search looks at the new bytes only (a caller may read a byte at a time)
        start = len(pending)
        pending += chunk
        if self._output is None:
            if pending.find(_OUTPUT_MARK, max(0, start - len(_OUTPUT_MARK))) >= 0:
                self._output = True
                start = 0  # the lines before the mark end in the bytes held
            elif len(pending) >= _OUTPUT_HEAD:
                self._output = False
                pending.clear()
                return
            else:
                return
        end = pending.rfind(b"\n", start)
        if end >= 0:
            self._read(bytes(pending[:end]))
            del pending[: end + 1]
        if len(pending) > MAX_LINE:  # read_output skips such a line: so does this
            pending.clear()
            self._oversized = True

    def _read(self, data: bytes) -> None:
        lines, bad = read_output(data)
        self.lines += lines
        self.bad += bad

    def finish_stream(self, outcome: str, exc: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            if outcome == "completed" and self._pending:
                if self._output is None and _OUTPUT_MARK in self._pending:
                    self._output = True
                if self._output and not self._oversized:  # the last line, without "\n"
                    self._read(bytes(self._pending))
            self._pending.clear()
            if self._output:
                _bill_output(self.runtime, self.client, self.file_id, self.lines, self.bad)
        except Exception:
            metrics.increment("instrumentation_errors")
            error_once("batch-output-bill", "cmdrdata: could not meter a batch output file")


def _bill_output(
    runtime: Runtime, client: Any, file_id: str, lines: list[BatchLine], bad: int
) -> None:
    """Bill an output file's lines at the batch rate, each once (keyed by its own id)."""
    if not lines:
        return
    pending = store(runtime)
    link = pending.lookup("file:" + file_id) or {}
    batch_id = link.get("batch_id") if isinstance(link.get("batch_id"), str) else None
    base = pending.lookup("batch:" + batch_id) if batch_id else None
    context = resolve(None, None, runtime.settings.customer_id).to_attributes()
    attribution = _carried(base) if base is not None else _carried(context)
    if batch_id:
        pending.claim("batch:" + batch_id)
    if bad:
        metrics.increment("batch_output_bad_lines", bad)
    tracer = runtime.tracers.tracer()
    common: dict[str, Any] = {A.METERED_MARK: True, A.OPENAI_API_TYPE: "batch"}
    common.update(runtime.client_attributes(client))
    keys = [_line_key(line, batch_id, file_id) for line in lines]
    first = pending.claim_many(keys)
    parent = tracer.start_span("batch output " + file_id[:64], kind=SpanKind.CLIENT)
    with contextlib.ExitStack() as stack:
        stack.callback(parent.end)
        context_of_parent = trace.set_span_in_context(parent)
        for line, key in zip(lines, keys, strict=True):
            attrs = dict(common)
            attrs[A.OPERATION_NAME] = "batch"
            attrs.update(attribution)
            named = _batch_customer(line.custom_id, runtime.settings.batch_customer_from_custom_id)
            if named is not None:
                attrs[A.CUSTOMER_ID], attrs[A.CUSTOMER_SOURCE] = named
                attrs.pop(A.UNATTRIBUTED, None)
            if line.usage is not None:
                attrs.update(line.usage.to_attributes())
            attrs.update(line.info.to_attributes())
            attrs[A.OPENAI_RESPONSE_SERVICE_TIER] = "batch"
            attrs[A.USAGE_SOURCE] = (
                "estimate" if line.usage and line.usage.estimated else "response"
            )
            if line.request_id:
                attrs[A.OPENAI_REQUEST_ID] = line.request_id
            if line.custom_id:
                attrs["cmdrdata.batch.custom_id"] = line.custom_id
            if batch_id:
                attrs["cmdrdata.batch.id"] = batch_id
            attrs[W.ID_KEY] = key
            attrs[W.STATE] = "billed" if key in first else "repeat"
            model = line.info.model
            span = tracer.start_span(
                f"batch {model}" if model else "batch",
                context=context_of_parent,
                kind=SpanKind.CLIENT,
                attributes=attrs,
            )
            span.end()
            metrics.increment("deferred_billed")


def _line_key(line: BatchLine, batch_id: str | None, file_id: str) -> str:
    """A batch line's work id: its own request id in the batch (stable, unique)."""
    if line.line_id:
        return "batch_request:" + line.line_id
    return f"batch:{batch_id or 'file:' + file_id}:{line.custom_id}"
