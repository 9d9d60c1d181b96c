"""Observers of a response body as its bytes pass from the network to the SDK.

A streamed response (``stream=True``, ``.with_raw_response`` with a stream,
``.with_streaming_response``) is read lazily by the caller. Instead of wrapping
the object the caller gets back, the agent watches the bytes underneath it, so
the caller keeps the SDK's own ``Stream`` / ``APIResponse`` object untouched.

* :class:`SSEObserver` reads server-sent events: the usage event, which it
  parses, finish reasons, content deltas (for estimates), and the first event
  (model, id) when the later ones leave a fact unsaid. It only ever parses JSON
  for those few events; every other chunk costs
  a couple of byte searches. When the agent asked for ``include_usage`` itself
  it removes the usage-only chunk from the bytes, so the caller sees exactly the
  chunks it would have seen without the agent.
* :class:`BodyObserver` keeps the head and tail of a JSON body read through a
  streaming response and extracts usage when it ends.

Events are framed as the SSE specification says (and as the SDK reads them): a
line ends with CRLF, LF or CR (a CRLF may be split across two reads), an empty
line ends an event, a leading UTF-8 BOM is not part of the first line, and an
event's data is its ``data`` field lines (one optional space after the colon)
joined by LF.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from ...usage.extract import Extractor, extract_stream_event, field
from ...usage.model import ResponseInfo, Usage
from .endpoints import TERMINAL_EVENT_TYPES

_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,64})"')
_DELTA = re.compile(rb'"(?:content|delta|text)"\s*:\s*"(?!")')
# An error event: OpenAI's {"error": {...}} data, an `event: error` line, or {"type": "error"}.
_ERROR_MARKERS = (
    b'"error":{',
    b'"error": {',
    b"event: error",
    b"event:error",
    b'"type":"error"',
    b'"type": "error"',
)
END_WINDOW = 16 * 1024
_USAGE_TEXT = re.compile(r'"usage"\s*:\s*\{')
_HEAD_MODEL = re.compile(r'"model"\s*:\s*"([^"]{1,256})"')
_HEAD_ID = re.compile(r'"id"\s*:\s*"([^"]{1,256})"')
# Event types that end a stream (besides ``data: [DONE]``): the endpoint table says.
_TERMINAL_TYPES = tuple(f'"{name}"'.encode() for name in TERMINAL_EVENT_TYPES)
_TERMINAL_TYPE_NAMES = frozenset(t.strip(b'"').decode() for t in _TERMINAL_TYPES)
# Responses statuses that give finish reasons (usage.extract.responses_finish_reasons).
_FINISHING_STATUSES = (b'"incomplete"', b'"failed"', b'"completed"')

# --- SSE framing --------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_CR_AS_LF = bytes.maketrans(b"\r", b"\n")
# An empty line: a line end right after a line end. A CRLF is one line end, never CR + LF.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
# How a read that ends exactly at an event boundary (an empty line) ends.
_ENDS_AT_EVENT = (b"\n\n", b"\n\r\n", b"\r\r\n", b"\r\r", b"\n\r")
_ENDS_AT_EVENT_LF = _ENDS_AT_EVENT[:3]  # ... with a line feed (no CRLF may straddle the next)
_JSON_SPACE = b" \t\r\n"
# A "usage" key with an object value. Between the tokens: JSON whitespace, or the line
# break and `data:` of a data field spread over several lines.
_GAP = rb"(?:\s|data:)*"
_USAGE_OBJECT = re.compile(rb'"usage"' + _GAP + rb":" + _GAP + rb"\{")
_OBJECT_VALUE = re.compile(_GAP + rb":" + _GAP + rb"\{").match
ESCAPED_KEY_EVENTS = 16  # how many last events are parsed for a "usage" key spelled with escapes
_EMPTY_ARRAY = re.compile(rb"\[(?:[\s\]]|\Z)").search  # "[" then "]", whitespace or the end
# The "usage": null member every other chunk carries once include_usage is asked for, as
# OpenAI writes it; and its key and value in any other spelling on one line. In valid JSON
# an unescaped quote is never inside a string: a match is a key and its value.
_NULL_USAGE = b',"usage":null'
_NULL_USAGE_SPELLED = re.compile(rb'"usage"[ \t]*:[ \t]*null(?=[ \t]*[,}])')
_COMMA_AFTER = re.compile(rb"[ \t]*,").match


def without_null_usage(data: bytes) -> bytes:
    """``data`` without the ``"usage": null`` members ``include_usage`` added to its chunks.

    The SDK would otherwise hand the app chunks whose ``to_dict()`` and ``to_json()``
    show a ``usage`` the app never asked for (and spend time parsing it). OpenAI's own
    spelling costs one byte search; another is looked for only in data without it. One
    split across two reads is left as it is.
    """
    out = data.replace(_NULL_USAGE, b"")
    if len(out) != len(data) or b'"usage"' not in out:
        return out
    return _without_spelled_null_usage(out)


def _without_spelled_null_usage(data: bytes) -> bytes:
    """A member taken out with the comma before it, or, first in its object, the one after."""
    kept: list[bytes] = []
    done = 0  # data[:done] is settled
    for match in _NULL_USAGE_SPELLED.finditer(data):
        start, stop = match.span()
        before = start
        while before > done and data[before - 1] in b" \t":
            before -= 1
        if before > done and data[before - 1] == 44:  # ","
            cut = (before - 1, stop)
        elif before > done and data[before - 1] == 123 and (after := _COMMA_AFTER(data, stop)):
            cut = (start, after.end())  # "{": first in its object
        else:
            continue
        kept.append(data[done : cut[0]])
        done = cut[1]
    if not kept:
        return data
    kept.append(data[done:])
    return b"".join(kept)


_DECODER = json.JSONDecoder()


def data_field(event: bytes) -> bytes | None:
    """The ``data`` of one event as the SDK reads it, or ``None`` when it has no data line."""
    values: list[bytes] = []
    for line in event.splitlines():  # bytes split on CRLF, LF and CR only
        if line[:4] == b"data":
            name, _, value = line.partition(b":")
            if name == b"data":
                values.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(values) if values else None


def event_data(event: bytes) -> Any:
    """The JSON of an event's data (decoded as UTF-8, as the SDK does), or ``None``."""
    data = data_field(event)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def is_usage_only_chunk(data: Any) -> bool:
    """The extra chunk ``include_usage`` adds: no choices, a usage object."""
    return (
        isinstance(data, dict)
        and data.get("choices") == []
        and isinstance(data.get("usage"), dict)
        and data.get("object") in ("chat.completion.chunk", "text_completion", None)
    )


def may_be_usage_only_chunk(events: bytes) -> bool:
    """False when no event in ``events`` can be a usage-only chunk (a byte search or two).

    Such a chunk has ``"choices": []``, so an empty array (``[`` then ``]`` or
    whitespace: a line end when its data spans lines), and a ``usage`` key, spelled
    plainly or with escapes. Whatever passes is decided on its parsed JSON.
    """
    if _EMPTY_ARRAY(events) is None:
        return False
    if b"usage" not in events and b"\\" not in events:
        return False
    # One "choices" key, whose list has an item: a real chunk (keys need \u to be escaped).
    return not (
        b'"choices":[{' in events and events.count(b'"choices"') == 1 and b"\\u" not in events
    )


def _known_not_usage_only(lines: bytes) -> bool:
    """Whether the complete lines of an unfinished event already rule out a usage-only chunk.

    Its data can only grow, so data that does not start an object rules it out,
    and so does a complete object that is not one (more data makes it invalid).
    """
    data = data_field(lines)
    if data is None:
        return False
    text = data.lstrip(_JSON_SPACE)
    if not text:
        return False
    if text[:1] != b"{":
        return True
    if not text.rstrip(_JSON_SPACE).endswith(b"}"):
        return False  # the object cannot be complete yet
    try:
        value, _ = _DECODER.raw_decode(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return not is_usage_only_chunk(value)


def _one_line_end(data: bytes) -> bytes:
    """``data`` with every line end (CRLF, CR, LF) written as LF: events end at LF LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in data else data


def _events_backwards(
    text: bytes, first: int, limit: int, end: int | None = None
) -> Iterator[bytes]:
    """The last ``limit`` events of ``text[first:end]`` (LF line ends), last first."""
    stop = len(text) if end is None else end
    while stop > first and limit > 0:
        cut = text.rfind(b"\n\n", first, stop)
        yield text[cut + 2 if cut >= 0 else first : stop]
        if cut < 0:
            return
        stop, limit = cut, limit - 1


class SSEObserver:
    """Watches a server-sent event stream at a couple of byte searches per chunk.

    Per chunk it only keeps a bounded tail of the bytes, and the first event's;
    everything (usage, finish reasons, content deltas for estimates, how the
    stream ended) is read from the tail when the stream ends, and the first event
    (model, id) only for what the later events left unsaid.

    When hiding the injected usage chunk it also frames the events as they pass.
    A read that ends at an event boundary and cannot hold a usage-only chunk is
    handed on as it is (the usual case). Otherwise each event is handed on as soon
    as it is known not to be a usage-only chunk; the only bytes held back are
    those of the one unfinished event that may still turn out to be one, and at
    most :attr:`HOLD_LIMIT` of them: a longer event is handed on.
    """

    __slots__ = (
        "_bom",
        "_checked",
        "_clean",
        "_cr",
        "_done",
        "_drop_lf",
        "_fast",
        "_first",
        "_head",
        "_held",
        "_hidden_event",
        "_hidden_usage",
        "_mid_line",
        "_reasons",
        "_released",
        "_tail",
        "_tail_bytes",
        "_truncated",
        "content_events",
        "error",
        "failed",
        "family",
        "hidden",
        "hide_usage_chunk",
        "info",
        "terminal",
        "usage",
    )
    TAIL_LIMIT = 512 * 1024  # the usage event is at the end; a final Responses event fits
    HOLD_LIMIT = 64 * 1024  # a usage-only chunk is well under 2 KiB

    def __init__(self, family: str, hide_usage_chunk: bool) -> None:
        self.family = family
        self.hide_usage_chunk = hide_usage_chunk
        self.usage: Usage | None = None
        self.info = ResponseInfo()
        self.content_events = 0
        self.terminal = False
        self.error = False
        self.hidden = False
        self.failed = False  # an internal error turned the observer into a pass-through
        self._head: bytearray | None = bytearray()  # None once the first data event was read
        # That event, read at the end only if the events after it left a fact unsaid (they
        # say the same of a chat stream, and what they say wins): parsing it costs more
        # than a dozen chunks' reads.
        self._first: bytes | None = None
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._truncated = False  # the tail lost its first bytes (it starts mid-event)
        self._reasons: list[str] = []
        self._done = False
        self._hidden_usage: Usage | None = None
        # The hidden chunk as the tail is read (LF line ends, no empty line): found there
        # again as the last usage, it is not parsed a second time.
        self._hidden_event = b""
        # The framing state while hiding:
        self._held = bytearray()  # the unfinished event that may be a usage-only chunk
        self._released = False  # the unfinished event is known not to be one: it flows on
        self._checked = 0  # how much of it was held when its lines were last looked at
        self._mid_line = False  # the last read ended inside a line
        self._cr = False  # the last read ended with CR (a leading LF completes its CRLF)
        self._drop_lf = False  # ...and that CR ended a hidden event: such an LF is its own
        self._bom: bytes | None = b""  # the first bytes, while they may be a BOM; then None
        self._clean = True  # at an event start, nothing held: whole events may pass as they are
        self._fast = False  # the next read may take feed's fast path (see there)

    @property
    def held_back(self) -> int:
        """How many bytes are held back, waiting for the end of their event."""
        return len(self._held)

    def feed(self, chunk: bytes) -> bytes:
        """Observe ``chunk``; return the bytes to hand on (``chunk`` itself unless hiding)."""
        if self._fast and (
            not self.hide_usage_chunk
            or (chunk.endswith(_ENDS_AT_EVENT_LF) and _EMPTY_ARRAY(chunk) is None)
        ):
            # The usual read, past the first event (and, while hiding, whole events, none of
            # which can be a usage-only chunk: it needs an empty array). Kept for the end,
            # handed on as it is (_scan, inlined: this runs for every chunk).
            self._tail.append(chunk)
            self._tail_bytes += len(chunk)
            if self._tail_bytes > self.TAIL_LIMIT:
                self._trim_tail()
            return chunk
        if self.failed:
            return chunk
        if not self.hide_usage_chunk:
            try:
                self._scan(chunk)
            except Exception:
                self.failed = True
            self._fast = self._head is None and not self.failed
            return chunk
        held, held_size, bom = self._held, len(self._held), self._bom
        try:
            self._scan(chunk)
            if (
                self._clean
                and chunk.endswith(_ENDS_AT_EVENT)
                and not may_be_usage_only_chunk(chunk)
            ):  # whole events, none of them a usage-only chunk: handed on as they are
                if self._cr or chunk[-1] == 13:  # CR line ends: a CRLF may straddle two reads
                    if self._drop_lf and chunk[:1] == b"\n":
                        return self._frame(chunk)
                    self._cr, self._drop_lf = chunk[-1] == 13, False
                self._bom = None
                return chunk
            return self._frame(chunk) if chunk else chunk
        except Exception:
            # Never let observation change the stream: hand on everything held back (a held
            # event only ever grows in place; nothing of this chunk was handed on yet).
            self.failed, self._held, self._bom = True, bytearray(), None
            return (bom or b"") + bytes(held[:held_size]) + chunk
        finally:
            # The next read may take the fast path: nothing held, at an event's start, no CR
            # that a leading LF would complete, the first event read.
            self._fast = (
                self._clean
                and not self._cr
                and self._bom is None
                and self._head is None
                and not self.failed
            )

    def hand_on(self, chunk: bytes) -> bytes:
        """:meth:`feed` then :func:`without_null_usage`, in one call for the usual read.

        The tap calls this for every chunk while hiding; the fast path is feed's (whole
        events past the first, none with an empty array), inlined with the strip.
        """
        if self._fast and chunk.endswith(_ENDS_AT_EVENT_LF) and _EMPTY_ARRAY(chunk) is None:
            self._tail.append(chunk)  # the bytes as they came: the tail is read as sent
            self._tail_bytes += len(chunk)
            if self._tail_bytes > self.TAIL_LIMIT:
                self._trim_tail()
            out = chunk.replace(_NULL_USAGE, b"")
            if len(out) != len(chunk) or b'"usage"' not in out:
                return out
            return _without_spelled_null_usage(out)
        out = self.feed(chunk)
        return without_null_usage(out) if out else out

    def _frame(self, chunk: bytes) -> bytes:
        """Hand on ``chunk`` event by event, leaving out usage-only chunks."""
        out: list[bytes] = []
        if self._bom is not None:  # a leading BOM is handed on: it is not part of a line
            chunk = self._bom + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._bom, self._clean = chunk, False
                return b""
            self._bom = None
            if chunk.startswith(_BOM):
                out.append(_BOM)
                chunk = chunk[len(_BOM) :]
        if self._cr:
            if chunk[:1] == b"\n":  # the LF of a CRLF: it goes where its CR went
                chunk = chunk[1:]
                if self._drop_lf:
                    pass
                elif self._held:
                    self._held += b"\n"
                else:
                    out.append(b"\n")
            self._cr = self._drop_lf = False
        if not chunk:
            return b"".join(out)
        # Find the events' ends with byte searches where the line ends are all alike.
        if b"\r" not in chunk:
            hidden_last = self._split(chunk, chunk, b"\n", out)
        elif b"\n" not in chunk:
            hidden_last = self._split(chunk, chunk.translate(_CR_AS_LF), b"\n", out)
        elif chunk.count(b"\r") == chunk.count(b"\n") == chunk.count(b"\r\n"):
            hidden_last = self._split(chunk, chunk, b"\r\n", out)
        else:
            hidden_last = self._split_lines(chunk, out)
        self._cr = chunk.endswith(b"\r")
        self._drop_lf = self._cr and hidden_last
        self._clean = not (self._held or self._released or self._mid_line)
        return b"".join(out)

    def _split(self, chunk: bytes, probe: bytes, eol: bytes, out: list[bytes]) -> bool:
        """Frame ``chunk`` whose line ends are all ``eol`` in ``probe`` (same offsets)."""
        blank, step = eol + eol, len(eol)
        start = 0
        line_start = not self._mid_line
        bulk = True  # once per chunk: its whole events, if none can be the usage chunk, at once
        hidden_last = False
        while True:
            if bulk and line_start and not self._held and not self._released:
                bulk = False
                last = probe.rfind(blank, start)
                if last >= 0 and not may_be_usage_only_chunk(chunk[start : last + 2 * step]):
                    out.append(chunk[start : last + 2 * step])
                    start, hidden_last = last + 2 * step, False
                    continue
            if line_start and probe.startswith(eol, start):
                end = start + step  # an empty line right at a line start
            else:
                found = probe.find(blank, start)
                if found < 0:
                    break
                end = found + 2 * step
            hidden_last = self._end_event(chunk[start:end], out)
            start = end
            line_start = True
        if start == len(chunk):
            self._mid_line = False
            return hidden_last
        self._mid_line = not probe.endswith(eol)
        last_line_end = probe.rfind(eol, start)
        self._unfinished(chunk, start, last_line_end + step if last_line_end >= 0 else start, out)
        return False

    def _split_lines(self, chunk: bytes, out: list[bytes]) -> bool:
        """Frame ``chunk`` line by line (its line ends are mixed)."""
        start = line = 0  # the current event's and line's first bytes in this chunk
        mid = self._mid_line
        hidden_last = False
        for match in _LINE_END.finditer(chunk):
            stop, after = match.span()
            if mid or stop != line:  # a line with content ended
                mid, line = False, after
                continue
            line = after  # an empty line: the event ends here
            hidden_last = self._end_event(chunk[start:after], out)
            start = after
        self._mid_line = mid or line < len(chunk)
        if start == len(chunk):
            return hidden_last
        self._unfinished(chunk, start, line, out)
        return False

    def _unfinished(self, chunk: bytes, start: int, lines_end: int, out: list[bytes]) -> None:
        """``chunk[start:]`` begins or goes on with an event that has not ended yet.

        ``chunk[:lines_end]`` holds its last complete line.
        """
        if self._released:
            out.append(chunk[start:])
            return
        held = self._held
        held += chunk[start:]
        if len(held) > self.HOLD_LIMIT:
            self._release(out)
        elif lines_end > start and len(held) >= 2 * self._checked:
            # Lines of it ended: they may rule a usage-only chunk out already (looked at
            # again only once it doubled, so a long event costs linear time).
            self._checked = len(held)
            if _known_not_usage_only(bytes(held[: len(held) - len(chunk) + lines_end])):
                self._release(out)

    def _release(self, out: list[bytes]) -> None:
        """The unfinished event is not held any longer: its bytes and the rest flow on."""
        out.append(bytes(self._held))
        self._held, self._checked = bytearray(), 0
        self._released = True

    def _end_event(self, rest: bytes, out: list[bytes]) -> bool:
        """An event ended with ``rest``: hand it on, or leave it out (True) if it is hidden."""
        if self._released:
            self._released = False
            out.append(rest)
            return False
        if self._held:
            event = bytes(self._held) + rest
            self._held, self._checked = bytearray(), 0
        else:
            event = rest
        if may_be_usage_only_chunk(event) and self._take_hidden(event):
            return True
        out.append(event)
        return False

    def _take_hidden(self, event: bytes) -> bool:
        """Whether ``event`` is a usage-only chunk; if so, read its usage and hide it."""
        try:
            data = event_data(event)
            if not is_usage_only_chunk(data):
                return False
            usage, info = extract_stream_event(self.family, data)
        except Exception:
            return False
        self.hidden = True
        if usage is not None:
            self._hidden_usage = usage
            if data.get("type") not in _TERMINAL_TYPE_NAMES:  # (a chunk has no type)
                self._hidden_event = _one_line_end(event).rstrip(b"\n")
        self.info.merge(info)
        return True

    def _scan(self, data: bytes) -> None:
        self._tail.append(data)
        self._tail_bytes += len(data)
        if self._tail_bytes > self.TAIL_LIMIT:
            self._trim_tail()
        if self._head is not None:
            self._read_head(data)

    def _trim_tail(self) -> None:
        tail = self._tail
        while self._tail_bytes > self.TAIL_LIMIT and len(tail) > 1:
            old = tail.popleft()
            self._tail_bytes -= len(old)
            self._truncated = True
            self.content_events += len(_DELTA.findall(old))

    def _read_head(self, data: bytes) -> None:
        """Find the first event with data (model, id) in the first bytes of the stream."""
        head = self._head
        assert head is not None
        searched = max(0, len(head) - 3)  # an event's end (up to 4 bytes) may straddle reads
        head += data  # in place: a first event read in many small reads costs linear time
        pos = 0
        for match in _EVENT_END.finditer(head, searched):
            event = bytes(head[pos : match.start()]).removeprefix(_BOM)
            pos = match.end()
            if data_field(event) is not None:
                self._head, self._first = None, event
                return
        if len(head) - pos >= 65536:  # no event boundary in 64 KiB: give up on it
            self._head, self._first = None, bytes(head[pos:])
        elif pos:
            del head[:pos]

    def _first_event(self) -> None:
        """The first event's facts, where the events after it (which win) left one unsaid."""
        raw, self._first = self._first, None
        if raw is None or self._first_has_nothing_new(raw):
            return
        first = event_data(raw.removeprefix(_BOM))
        if isinstance(first, dict):
            _, info = extract_stream_event(self.family, first)
            if not info.model and not info.id:
                info = ResponseInfo(model=_str(field(first, "model")), id=_str(field(first, "id")))
            info.merge(self.info)
            self.info = info

    def _first_has_nothing_new(self, raw: bytes) -> bool:
        """Whether the later events said every fact the first event could (model, id, tier,
        fingerprint, and finish reasons unless its bytes show it has none to give)."""
        known = self.info
        if not (known.model and known.id and known.service_tier and known.system_fingerprint):
            return False
        if known.finish_reasons:
            return True
        # No finish reason written out (a chat chunk's is null), no Responses status that
        # gives one, no key spelled with escapes: it has none.
        return (
            b"\\" not in raw
            and _FINISH.search(raw) is None
            and not any(status in raw for status in _FINISHING_STATUSES)
        )

    def flush(self) -> bytes:
        """The end of the body: hand on whatever was held back, and read the tail."""
        rest = (self._bom or b"") + self._held
        self._held, self._bom = bytearray(), None
        if not self.failed and not self._done:
            self._done = True
            try:
                self._read_tail()
            except Exception:
                self.failed = True
            try:
                self._first_event()  # last: what the later events said wins
            except Exception:
                self.failed = True
        return bytes(rest) if self.hide_usage_chunk else b""

    def _read_tail(self) -> None:
        """Read how the stream ended from its last bytes, framed into events."""
        data = b"".join(self._tail)
        self._tail.clear()
        if self._head:  # a stream too short to finish its first event
            self._first = bytes(self._head)
        self._head = None
        end = data[-END_WINDOW:]  # finish reasons and errors are at the end
        self._reasons = [m.group(1).decode() for m in _FINISH.finditer(end)]
        self.error = b"error" in end and any(marker in end for marker in _ERROR_MARKERS)
        text = _one_line_end(data if self._truncated else data.removeprefix(_BOM))
        first = 0  # where the first whole event starts (a tail cut at its start begins mid-event)
        if self._truncated:
            cut = text.find(b"\n\n")
            first = cut + 2 if cut >= 0 else len(text)
        parsed: tuple[bytes, Any] = (b"", None)  # a (large) final event is parsed only once
        for event in _events_backwards(text, first, 256):  # the last event with data
            last = data_field(event)
            if last is None:
                continue
            if last.startswith(b"[DONE]"):
                self.terminal = True
            elif any(t in last for t in _TERMINAL_TYPES):
                parsed = (event, event_data(event))
                self.terminal = isinstance(parsed[1], dict) and parsed[1].get("type") in (
                    _TERMINAL_TYPE_NAMES
                )
            break
        self.usage = self._last_usage(text, first, parsed)
        if self.usage is None:
            self.usage = self._hidden_usage
        if self.usage is None or self.usage.output_tokens is None:
            self.content_events += len(_DELTA.findall(data))  # only an estimate needs them

    def _last_usage(self, text: bytes, first: int, parsed: tuple[bytes, Any]) -> Usage | None:
        """The usage of the last event that reports one (a repeated report is one call)."""
        unread = len(text)  # text[unread:] was looked at for keys spelled with escapes
        for at in self._usage_keys(text, first):
            cut = text.rfind(b"\n\n", first, at)
            stop = text.find(b"\n\n", at)
            if stop >= 0 and text.find(b"\\u", stop, unread) >= 0:
                # An event after this plain key may spell its "usage" key with escapes.
                later = self._escaped_usage(text, stop, unread)
                if later is not None:
                    return later
            unread = max(cut, first)
            event = text[cut + 2 if cut >= 0 else first : stop if stop >= 0 else None]
            if event == self._hidden_event:  # read when it was hidden (its facts merged then)
                return self._hidden_usage
            usage = self._usage_of(parsed[1] if event == parsed[0] else event_data(event))
            if usage is not None:
                return usage
        if text.find(b"\\u", first, unread) >= 0:  # escaped keys: looked for near the end only
            return self._escaped_usage(text, first, unread)
        return None

    def _escaped_usage(self, text: bytes, first: int, end: int) -> Usage | None:
        """The usage of one of the last events of ``text[first:end]``, its key escaped."""
        for event in _events_backwards(text, first, ESCAPED_KEY_EVENTS, end):
            if b"\\u" not in event:
                continue
            if event == self._hidden_event:
                return self._hidden_usage
            usage = self._usage_of(event_data(event))
            if usage is not None:
                return usage
        return None

    @staticmethod
    def _usage_keys(text: bytes, first: int) -> Iterator[int]:
        """Where a "usage" key with an object value is, from the end of ``text`` backwards."""
        stop = len(text)
        for _ in range(64):  # the usage event is near the end: a few plain searches find it
            at = text.rfind(b'"usage"', first, stop)
            if at < 0:
                return
            if _OBJECT_VALUE(text, at + 7):
                yield at
            stop = at
        yield from reversed([m.start() for m in _USAGE_OBJECT.finditer(text, first, stop)])

    def _usage_of(self, value: Any) -> Usage | None:
        """The usage an event's parsed data reports (and the facts it carries)."""
        if not isinstance(value, dict):
            return None
        usage, info = extract_stream_event(self.family, value)
        if usage is not None:
            self.info.merge(info)
            if value.get("type") in _TERMINAL_TYPE_NAMES:
                self.terminal = True
        return usage

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
