"""Property-based: the stream tap frames any SSE stream as the specification (and the SDK) does.

Random streams (LF, CR and CRLF line ends, mixed; comments, ``event:``/``id:``/
``retry:`` fields, unknown and colon-less lines, ``data:`` with and without a
space, data spread over several lines, a leading BOM; injected usage-only chunks
spelled in many ways, real chunks that carry usage) are fed to the observer split
at random points or at every byte. What it hands on must be exactly the server's
bytes minus the usage-only events, event for event as a reference parser written
here from the specification and the SDK's own decoder read them; nothing but the
one unfinished event that may still be such a chunk is held back, never more than
``HOLD_LIMIT``; and the usage the stream reported is read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from cmdrdata_autotrack.instrumentation.openai.observers import SSEObserver, without_null_usage

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOM = b"\xef\xbb\xbf"
LF, CR, CRLF = b"\n", b"\r", b"\r\n"
CHUNK = {"id": "chatcmpl-fuzz", "object": "chat.completion.chunk", "created": 1, "model": "m-1"}
SEPARATORS = [(",", ":"), (", ", ": "), (",", " :"), (" , ", " : ")]


# --- a reference reader, from the specification -----------------------------------------


def spec_events(stream: bytes) -> list[tuple[str, str, str]]:
    """(type, data, last event id) of each event the WHATWG algorithm dispatches."""
    text = stream.decode("utf-8").removeprefix("\ufeff")
    events: list[tuple[str, str, str]] = []
    data: list[str] = []
    kind, last_id = "", ""
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:  # the unfinished last line is dropped
        if not line:
            if data:
                events.append((kind or "message", "\n".join(data), last_id))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return events


def as_object(data: str) -> dict[str, Any]:
    """An event's data parsed as a JSON object (empty when it is not one)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def usage_only(data: str) -> bool:
    """The chunk ``include_usage`` adds, judged on its JSON: no choices and a usage object."""
    value = as_object(data)
    return (
        value.get("choices") == []
        and isinstance(value.get("usage"), dict)
        and value.get("object") in ("chat.completion.chunk", "text_completion", None)
    )


def reported_usage(data: str) -> tuple[int, int] | None:
    """(prompt, completion) tokens of the usage object an event's data reports."""
    usage = as_object(data).get("usage")
    if not isinstance(usage, dict):
        return None
    return usage["prompt_tokens"], usage["completion_tokens"]


def sdk_events(pieces: list[bytes]) -> list[tuple[Any, ...]]:
    return [(e.event, e.data, e.id, e.retry) for e in SSEDecoder().iter_bytes(iter(pieces))]


# --- random streams ------------------------------------------------------------------------


@dataclass
class Stream:
    body: bytes = b""
    expected: bytes = b""  # the body without its usage-only events
    # Where each event kept ends, in the body and in ``expected``, and whether it is CRLF-ended.
    ends: list[tuple[int, int, bool]] = field(default_factory=list)
    removed: list[tuple[int, int]] = field(default_factory=list)  # the usage-only events
    bounds: list[int] = field(default_factory=list)  # where every event ends in the body
    usage: tuple[int, int] | None = None  # (prompt, completion) of the last usage reported
    done: bool = False  # its last event with data is [DONE]


def _json(draw: st.DrawFn, value: dict[str, Any]) -> list[str]:
    """``value`` as JSON, sometimes spread over several lines, spelled in several ways."""
    if draw(st.booleans()):
        text = json.dumps(value, indent=draw(st.sampled_from([None, 1, 2])))
    else:
        text = json.dumps(
            value, separators=draw(st.sampled_from(SEPARATORS)), ensure_ascii=draw(st.booleans())
        )
    return text.split("\n")


def _usage(draw: st.DrawFn) -> dict[str, int]:
    prompt = draw(st.integers(min_value=0, max_value=10**6))
    completion = draw(st.integers(min_value=0, max_value=10**6))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    # content that spells what the byte searches look for (JSON escapes its quotes)
    st.sampled_from(["usage", "\\", '"usage":{', ',"usage":null', "[]", '"choices":[]']),
)
NAME = st.sampled_from(["event", "id", "retry", "foo", "dat", "data2", ""])
VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8)


# Data that looks like a usage-only chunk and is not one: it must reach the app.
LOOKALIKES = [
    '{"choices": [], "usage": {"prompt_tokens": 1',  # cut short: not JSON
    '{"choices":[],"usage":null}',
    '{"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 5, '
    '"completion_tokens": 6, "total_tokens": 11}}',
    '[{"choices": [], "usage": {}}]',
    "{not json",
    "usage",
]


KINDS = ["content", "content", "content_usage", "usage", "usage", "lookalike", "done"]
KINDS += ["comment", "empty"]


@st.composite
def event_lines(draw: st.DrawFn) -> list[str]:
    """The lines of one event."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "empty":
        return []
    if kind == "comment":
        return [":" + draw(VALUE) for _ in range(draw(st.integers(1, 2)))]
    if kind == "done":
        data = ["[DONE]"]
    elif kind == "lookalike":
        data = [draw(st.sampled_from(LOOKALIKES))]
    else:
        value: dict[str, Any] = dict(CHUNK)
        if kind == "usage":
            value.update(choices=[], usage=_usage(draw))
            if draw(st.booleans()):  # keys in another order
                value = dict(reversed(list(value.items())))
        else:
            delta = {"content": draw(TEXT)}
            value["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
            if kind == "content_usage":
                value["usage"] = _usage(draw)
            elif draw(st.booleans()):
                value["usage"] = None
        data = _json(draw, value)
        if kind == "usage" and draw(st.integers(0, 3)) == 0:  # its key spelled with an escape
            data = [part.replace('"usage"', '"\\u0075sage"') for part in data]
    lines = [("data: " if draw(st.booleans()) else "data:") + part for part in data]
    # other fields, comments and unknown lines around the data
    for _ in range(draw(st.integers(0, 2))):
        extra = draw(
            st.one_of(
                st.builds(lambda n, v: f"{n}: {v}" if n else f":{v}", NAME, VALUE),
                st.sampled_from(["nocolon", "id", "event", "retry: 5000", "data"]),
            )
        )
        lines.insert(draw(st.integers(0, len(lines))), extra)
    return lines


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    stream = Stream()
    body = bytearray(BOM if draw(st.booleans()) else b"")
    expected = bytearray(body)
    after_cr = False  # a CR just ended a line: an empty line after it must not end with LF alone
    framing = draw(st.sampled_from(["mixed", "mixed", LF, CR, CRLF]))  # or one line end for all
    for _ in range(draw(st.integers(0, 10))):
        lines = draw(event_lines())
        raw = bytearray()
        for line in [*lines, ""]:
            ends = [CR, CRLF] if after_cr and not line else [LF, CR, CRLF]
            if isinstance(framing, bytes):
                ends = [framing]
            end = draw(st.sampled_from(ends))
            raw += line.encode() + end
            after_cr = end == CR
        data = spec_events(bytes(raw))
        if data:
            stream.usage = reported_usage(data[-1][1]) or stream.usage
            stream.done = data[-1][1].startswith("[DONE]")
        body += raw
        stream.bounds.append(len(body))
        if data and usage_only(data[-1][1]):
            stream.removed.append((len(body) - len(raw), len(body)))
        else:
            expected += raw
            stream.ends.append((len(body), len(expected), raw.endswith(CRLF)))
    stream.body, stream.expected = bytes(body), bytes(expected)
    return stream


splits = st.one_of(
    st.just([1]),  # at every byte
    st.just([]),  # one event per read
    st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=30),
    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=5),
)


def _pieces(stream: Stream, sizes: list[int]) -> list[bytes]:
    body = stream.body
    if not sizes:
        starts = [0, *stream.bounds]
        return [
            body[a:b] for a, b in zip(starts, [*stream.bounds, len(body)], strict=True) if b > a
        ]
    pieces, position, index = [], 0, 0
    while position < len(body):
        size = sizes[index % len(sizes)]
        pieces.append(body[position : position + size])
        position += size
        index += 1
    return pieces


def _without_removed(stream: Stream, pieces: list[bytes]) -> list[bytes]:
    """The server's reads had it not sent the usage-only events: the same splits otherwise."""
    kept, position = [], 0
    for piece in pieces:
        end = position + len(piece)
        part = bytearray()
        for offset in range(position, end):
            if not any(start <= offset < stop for start, stop in stream.removed):
                part.append(stream.body[offset])
        if part:
            kept.append(bytes(part))
        position = end
    return kept


def _required(stream: Stream, consumed: int) -> int:
    """How much of ``expected`` must have been handed on once ``consumed`` bytes were fed."""
    required = len(BOM) if stream.body.startswith(BOM) and consumed >= len(BOM) else 0
    for body_end, expected_end, crlf in stream.ends:
        if body_end <= consumed:
            required = expected_end
        elif crlf and body_end - 1 == consumed:
            required = expected_end - 1  # the event ended at its CR; its LF is still to come
    return required


@pytest.mark.drives_sdk
@SETTINGS
@given(streams(), splits)
def test_the_app_sees_the_server_bytes_minus_the_usage_only_events(
    stream: Stream, sizes: list[int]
) -> None:
    observer = SSEObserver("chat", hide_usage_chunk=True)
    handed_on: list[bytes] = []
    out = b""
    consumed = 0
    pieces = _pieces(stream, sizes)
    for piece in pieces:
        passed = observer.feed(piece)
        consumed += len(piece)
        if passed:
            handed_on.append(passed)
            out += passed
        assert stream.expected.startswith(out)
        assert len(out) >= _required(stream, consumed)  # nothing known to be real is held
        assert observer.held_back <= SSEObserver.HOLD_LIMIT
    rest = observer.flush()
    if rest:
        handed_on.append(rest)
    assert out + rest == stream.expected
    # event for event (an ``id:`` carries over to later events, so types and data only)
    kept = [(kind, data) for kind, data, _ in spec_events(stream.body) if not usage_only(data)]
    assert [(kind, data) for kind, data, _ in spec_events(out + rest)] == kept
    # what the SDK makes of it: as of the server's reads without those events
    assert sdk_events(handed_on) == sdk_events(_without_removed(stream, pieces))
    _assert_read(observer, stream)


@SETTINGS
@given(streams(), splits)
def test_without_hiding_the_bytes_pass_unchanged_and_usage_is_read(
    stream: Stream, sizes: list[int]
) -> None:
    observer = SSEObserver("chat", hide_usage_chunk=False)
    out = b"".join(observer.feed(piece) for piece in _pieces(stream, sizes))
    assert out + observer.flush() == stream.body
    _assert_read(observer, stream)


@SETTINGS
@given(streams(), splits)
def test_hand_on_is_feed_then_without_null_usage(stream: Stream, sizes: list[int]) -> None:
    # The tap's one-step read (its shortcut skips the empty-array search) against the two
    # steps it stands for, read by read, on twin observers.
    one = SSEObserver("chat", hide_usage_chunk=True)
    two = SSEObserver("chat", hide_usage_chunk=True)
    for piece in _pieces(stream, sizes):
        fed = two.feed(piece)
        assert one.hand_on(piece) == (without_null_usage(fed) if fed else fed)
        assert one.held_back == two.held_back
    assert one.flush() == two.flush()
    assert (one.usage, one.terminal, one.hidden) == (two.usage, two.terminal, two.hidden)
    _assert_read(one, stream)


def _assert_read(observer: SSEObserver, stream: Stream) -> None:
    if stream.usage is None:
        assert observer.usage is None
    else:
        assert observer.usage is not None
        assert (observer.usage.input_tokens, observer.usage.output_tokens) == stream.usage
    assert observer.terminal == stream.done
    first = spec_events(stream.body)[:1]
    if first and as_object(first[0][1]).get("model") == "m-1":
        assert observer.info.model == "m-1"  # the first event is a chunk: its model is read
