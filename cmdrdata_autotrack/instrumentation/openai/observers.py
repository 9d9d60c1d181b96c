"""Observers of a response body as its bytes pass from the network to the SDK.

A streamed response (``stream=True``, ``.with_raw_response`` with a stream,
``.with_streaming_response``) is read lazily by the caller. Instead of wrapping
the object the caller gets back, the agent watches the bytes underneath it, so
the caller keeps the SDK's own ``Stream`` / ``APIResponse`` object untouched.

* :class:`SSEObserver` reads server-sent events: the first event (model, id),
  finish reasons, content deltas (for estimates) and the usage event, which it
  parses. It only ever parses JSON for those few events; every other chunk costs
  a couple of byte searches. When the agent asked for ``include_usage`` itself
  it removes the usage-only chunk from the bytes, so the caller sees exactly the
  chunks it would have seen without the agent.
* :class:`BodyObserver` keeps the head and tail of a JSON body read through a
  streaming response and extracts usage when it ends.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

from ...usage.extract import Extractor, extract_stream_event, field
from ...usage.model import ResponseInfo, Usage

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,64})"')
_DELTA = re.compile(rb'"(?:content|delta|text)"\s*:\s*"(?!")')
# An error event: OpenAI's {"error": {...}} data, an `event: error` line, or {"type": "error"}.
_ERROR_MARKERS = (
    b'"error":{',
    b'"error": {',
    b"event: error",
    b'"type":"error"',
    b'"type": "error"',
)
END_WINDOW = 16 * 1024
_SEPARATOR = re.compile(rb"(\r?\n\r?\n)")
_USAGE_TEXT = re.compile(r'"usage"\s*:\s*\{')
_HEAD_MODEL = re.compile(r'"model"\s*:\s*"([^"]{1,256})"')
_HEAD_ID = re.compile(r'"id"\s*:\s*"([^"]{1,256})"')
_TERMINAL = (b"data: [DONE]", b"data:[DONE]")
# Event types that end a stream (besides ``data: [DONE]``).
_TERMINAL_TYPES = (
    b'"response.completed"',
    b'"response.incomplete"',
    b'"response.failed"',
    b'"transcript.text.done"',
    b'"image_generation.completed"',
    b'"image_edit.completed"',
    b'"speech.audio.done"',
)
_TERMINAL_TYPE_NAMES = frozenset(t.strip(b'"').decode() for t in _TERMINAL_TYPES)


def _last_boundary(buf: bytes) -> int:
    """Index just past the last event separator in ``buf``, or -1."""
    lf = buf.rfind(b"\n\n")
    crlf = buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def event_data(event: bytes) -> Any:
    """The JSON of an event's ``data:`` lines, or ``None``."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return json.loads(b"\n".join(lines))
    except ValueError:
        return None


def is_usage_only_chunk(data: Any) -> bool:
    """The extra chunk ``include_usage`` adds: no choices, a usage object."""
    return (
        isinstance(data, dict)
        and data.get("choices") == []
        and isinstance(data.get("usage"), dict)
        and data.get("object") in ("chat.completion.chunk", "text_completion", None)
    )


class SSEObserver:
    """Watches a server-sent event stream at a couple of byte searches per chunk.

    Per chunk it only keeps a bounded tail of the bytes; the first event is
    parsed once (model, id); everything else (usage, finish reasons, content
    deltas for estimates, how the stream ended) is read from the tail when the
    stream ends. When hiding the injected usage chunk it also holds back the
    incomplete last event of each chunk, so that event can be cut out whole.
    """

    __slots__ = (
        "_done",
        "_head",
        "_reasons",
        "_tail",
        "_tail_bytes",
        "content_events",
        "error",
        "failed",
        "family",
        "hidden",
        "hide_usage_chunk",
        "info",
        "pending",
        "terminal",
        "usage",
    )
    TAIL_LIMIT = 512 * 1024  # the usage event is at the end; a final Responses event fits

    def __init__(self, family: str, hide_usage_chunk: bool) -> None:
        self.family = family
        self.hide_usage_chunk = hide_usage_chunk
        self.pending = b""
        self.usage: Usage | None = None
        self.info = ResponseInfo()
        self.content_events = 0
        self.terminal = False
        self.error = False
        self.hidden = False
        self.failed = False  # an internal error turned the observer into a pass-through
        self._head: bytes | None = b""  # None once the first event was read
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._reasons: list[str] = []
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """Observe ``chunk``; return the bytes to hand on (``chunk`` itself unless hiding)."""
        if self.failed:
            return chunk
        if not self.hide_usage_chunk:
            try:
                self._scan(chunk)
            except Exception:
                self.failed = True
            return chunk
        buf = self.pending + chunk if self.pending else chunk
        try:
            if buf.endswith(b"\n\n"):  # the usual case: a chunk of whole events
                block, self.pending = buf, b""
            else:
                cut = _last_boundary(buf)
                if cut < 0:
                    self.pending = buf
                    return b""
                block, self.pending = buf[:cut], buf[cut:]
            self._scan(block)
            if b'"usage":{' in block or b'"usage": {' in block:
                block = self._cut_usage_chunk(block)
        except Exception:
            # Never let observation change the stream: hand on everything held back.
            self.failed, self.pending = True, b""
            return buf
        return block

    def _scan(self, data: bytes) -> None:
        tail = self._tail
        tail.append(data)
        self._tail_bytes += len(data)
        while self._tail_bytes > self.TAIL_LIMIT and len(tail) > 1:
            old = tail.popleft()
            self._tail_bytes -= len(old)
            self.content_events += len(_DELTA.findall(old))
        if self._head is not None:
            head = self._head + data
            cut = head.find(b"\n\n")
            if cut < 0 and len(head) < 65536:
                self._head = head
                return
            self._head = None
            self._first_event(head[: cut if cut >= 0 else len(head)])

    def _first_event(self, raw: bytes) -> None:
        first = event_data(raw)
        if isinstance(first, dict):
            _, info = extract_stream_event(self.family, first)
            if not info.model and not info.id:
                info = ResponseInfo(model=_str(field(first, "model")), id=_str(field(first, "id")))
            self.info.merge(info)

    def _cut_usage_chunk(self, block: bytes) -> bytes:
        """Take the injected usage-only chunk out of ``block`` (reading its usage)."""
        parts = _SEPARATOR.split(block)
        kept: list[bytes] = []
        skip_separator = False
        for index, part in enumerate(parts):
            if index % 2:  # a separator
                if not skip_separator:
                    kept.append(part)
                skip_separator = False
                continue
            if not self.hidden and _USAGE.search(part) is not None:
                data = event_data(part)
                if is_usage_only_chunk(data):
                    self.hidden = True
                    self._take_usage(data)
                    skip_separator = True
                    continue
            kept.append(part)
        return b"".join(kept)

    def _take_usage(self, data: Any) -> None:
        usage, info = extract_stream_event(self.family, data)
        if usage is not None:
            if self.usage is None:
                self.usage = usage
            else:
                self.usage.merge(usage)
        self.info.merge(info)

    def flush(self) -> bytes:
        """The end of the body: hand on whatever was held back, and read the tail."""
        rest, self.pending = self.pending, b""
        if not self.failed and not self._done:
            self._done = True
            try:
                if rest:
                    self._scan(rest)
                self._read_tail()
            except Exception:
                self.failed = True
        return rest if self.hide_usage_chunk else b""

    def _read_tail(self) -> None:
        """Read how the stream ended from its last bytes: a few searches, one JSON parse."""
        data = b"".join(self._tail)
        self._tail.clear()
        if self._head:  # a stream too short to finish its first event
            self._first_event(self._head)
            self._head = None
        end = data[-END_WINDOW:]  # finish reasons, errors and the last event are at the end
        self._reasons = [m.group(1).decode() for m in _FINISH.finditer(end)]
        self.error = any(marker in end for marker in _ERROR_MARKERS)
        stripped = data.rstrip()
        last = stripped[stripped.rfind(b"\n\n") + 1 :]
        self.terminal = any(t in last for t in _TERMINAL) or any(
            t in last[:512] for t in _TERMINAL_TYPES
        )
        if not self.hidden:
            at = max(data.rfind(b'"usage":{'), data.rfind(b'"usage": {'))
            if at >= 0:
                start = data.rfind(b"\n\n", 0, at)
                stop = data.find(b"\n\n", at)
                event = event_data(
                    data[start + 2 if start >= 0 else 0 : stop if stop >= 0 else None]
                )
                if isinstance(event, dict):
                    self._take_usage(event)
                    if event.get("type") in _TERMINAL_TYPE_NAMES:
                        self.terminal = True
        if self.usage is None or self.usage.output_tokens is None:
            self.content_events += len(_DELTA.findall(data))  # only an estimate needs them

    @property
    def finish_reasons(self) -> list[str]:
        return self.info.finish_reasons or self._reasons


def _str(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


class BodyObserver:
    """A non-SSE body read through a streaming response: usage is extracted at its end."""

    __slots__ = ("extractor", "head", "size", "tail")
    FULL = 1 << 20  # bodies up to 1 MiB are parsed whole
    KEEP = 1 << 16  # larger ones: the usage object is looked for in the last 64 KiB

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        rest = chunk
        if len(self.head) < self.FULL:
            room = self.FULL - len(self.head)
            self.head += chunk[:room]
            rest = chunk[room:]
        if rest:
            self.tail += rest
            if len(self.tail) > 2 * self.KEEP:
                del self.tail[: len(self.tail) - self.KEEP]
        return chunk

    def flush(self) -> bytes:
        return b""

    def result(self) -> tuple[Usage | None, ResponseInfo]:
        if self.size <= self.FULL:
            try:
                return self.extractor(json.loads(bytes(self.head)))
            except ValueError:
                return None, ResponseInfo()
        tail = bytes(self.tail[-self.KEEP :]).decode("utf-8", "replace")
        starts = [m.end() - 1 for m in _USAGE_TEXT.finditer(tail)]
        if not starts:
            return None, ResponseInfo()
        try:
            usage_obj, _ = json.JSONDecoder().raw_decode(tail, starts[-1])
        except ValueError:
            return None, ResponseInfo()
        usage, _ = self.extractor({"usage": usage_obj})
        head = bytes(self.head[:4096]).decode("utf-8", "replace")
        model, ident = _HEAD_MODEL.search(head), _HEAD_ID.search(head)
        return usage, ResponseInfo(
            model=model.group(1) if model else None, id=ident.group(1) if ident else None
        )
