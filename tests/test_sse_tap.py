"""The stream tap frames server-sent events completely, through the real SDK (sync and async).

Each server answer is exact bytes (FakeOpenAI's ``raw`` fault, one HTTP chunk per
element). What the app gets through the agent hiding its injected usage chunk is
compared with what the SDK makes of the same bytes minus that chunk, read with the
agent in pass-through (``stream_usage="never"``: it hands on every byte as it is).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cmdrdata_autotrack.instrumentation.openai.observers import SSEObserver, without_null_usage

from conftest import Spans
from fake_openai import FakeOpenAI, raw

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MODEL = "gpt-4o-mini-2024-07-18"
CHUNK = {"id": "chatcmpl-tap", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
USAGE_CHUNK = {**CHUNK, "choices": [], "usage": USAGE}
LF, CR, CRLF = b"\n", b"\r", b"\r\n"
FRAMINGS = {  # (line end, end of the empty line that ends an event)
    "LF": (LF, LF),
    "CR": (CR, CR),
    "CRLF": (CRLF, CRLF),
    "LF+CRLF": (LF, CRLF),
    "CRLF+LF": (CRLF, LF),
    "CR+CRLF": (CR, CRLF),
}


def content(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return {**CHUNK, "choices": [choice], "usage": None, **extra}


def event(
    data: dict[str, Any] | str,
    framing: tuple[bytes, bytes] = (LF, LF),
    *,
    text: str | None = None,
    before: tuple[bytes, ...] = (),
) -> bytes:
    """One event: ``before`` lines, then ``data`` (or its JSON ``text``) as data lines."""
    line_end, blank = framing
    payload = text if text is not None else data if isinstance(data, str) else json.dumps(data)
    lines = [*before, *(b"data: " + part.encode() for part in payload.split("\n"))]
    return b"".join(line + line_end for line in lines) + blank


def chat_events(framing: tuple[bytes, bytes]) -> list[bytes]:
    return [
        event(content("Hel"), framing),
        event(content("lo"), framing),
        event(content("", "stop"), framing),
    ]


def handed_on(data: bytes) -> bytes:
    """What the app gets of ``content``'s chunks while the agent hides its usage: no
    "usage": null member (include_usage adds it)."""
    return data.replace(b', "usage": null', b"")


def done(framing: tuple[bytes, bytes] = (LF, LF)) -> bytes:
    return event("[DONE]", framing)


def serve(fake: FakeOpenAI, chunks: list[bytes]) -> None:
    fake.enqueue(raw(chunks, content_type="text/event-stream"))


def read_sync(client: Any, fake: FakeOpenAI, chunks: list[bytes], **kwargs: Any) -> list[Any]:
    serve(fake, chunks)
    return [c.model_dump() for c in client.chat.completions.create(**CHAT, stream=True, **kwargs)]


async def read_async(
    aclient: Any, fake: FakeOpenAI, chunks: list[bytes], **kwargs: Any
) -> list[Any]:
    serve(fake, chunks)
    stream = await aclient.chat.completions.create(**CHAT, stream=True, **kwargs)
    return [c.model_dump() async for c in stream]


def contents(chunks: list[Any]) -> list[str | None]:
    return [c["choices"][0]["delta"]["content"] if c["choices"] else "(usage)" for c in chunks]


def first_attrs(spans: Spans) -> dict[str, Any]:
    return dict(spans.all[0].attributes or {})


def assert_metered(attrs: dict[str, Any], prompt: int = 11, completion: int = 3) -> None:
    assert attrs["gen_ai.usage.input_tokens"] == prompt
    assert attrs["gen_ai.usage.output_tokens"] == completion
    assert attrs["cmdrdata.usage.source"] == "response"
    assert attrs["cmdrdata.stream.outcome"] == "completed"
    assert attrs["gen_ai.response.model"] == MODEL


# --- issue 11: every framing, through the SDK ---------------------------------------------


@pytest.mark.parametrize("name", FRAMINGS)
def test_every_line_ending_hides_the_injected_usage_chunk(
    client: Any, fake: FakeOpenAI, spans: Spans, agent_settings: Any, name: str
) -> None:
    framing = FRAMINGS[name]
    real = chat_events(framing)
    seen = read_sync(client, fake, [*real, event(USAGE_CHUNK, framing), done(framing)])
    attrs = first_attrs(spans)
    agent_settings(stream_usage="never")
    assert seen == read_sync(client, fake, [*real, done(framing)])
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(attrs)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


@pytest.mark.parametrize("name", ["CR", "LF+CRLF", "CRLF"])
async def test_every_line_ending_hides_the_injected_usage_chunk_async(
    aclient: Any, fake: FakeOpenAI, spans: Spans, agent_settings: Any, name: str
) -> None:
    framing = FRAMINGS[name]
    real = chat_events(framing)
    seen = await read_async(aclient, fake, [*real, event(USAGE_CHUNK, framing), done(framing)])
    attrs = first_attrs(spans)
    agent_settings(stream_usage="never")
    assert seen == await read_async(aclient, fake, [*real, done(framing)])
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(attrs)


def test_raw_bytes_are_the_server_bytes_minus_the_usage_event(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    first = event(content("Hel"), (CRLF, CRLF), before=(b": keep-alive", b"id: 7", b"retry: 50"))
    usage_event = event(USAGE_CHUNK, (CR, CRLF))
    body = [
        b"\xef\xbb\xbf" + first[:-1],  # a BOM; a CRLF split across two reads
        first[-1:] + b'event: message\rdata:{"id":"x","object":"chat.completion.chunk",',
        b'"model":"m","choices":[{"index":0,"delta":{"content":"lo"}}]}\r\r',
        b": comment between events\n\n" + usage_event[:-1],  # the usage event's last LF apart
        usage_event[-1:] + done((CR, CRLF)),
    ]
    server = b"".join(body)
    # ... and without the "usage": null member include_usage put in the real chunk
    expected = handed_on(server.replace(usage_event, b""))
    assert len(expected) == len(server) - len(usage_event) - len(b', "usage": null')
    serve(fake, body)
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        seen = b"".join(response.iter_bytes())
    assert seen == expected
    assert_metered(first_attrs(spans))


def test_a_chunk_size_the_caller_asked_for_is_kept(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    body = [*chat_events((LF, LF)), event(USAGE_CHUNK), done()]
    serve(fake, body)
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        pieces = list(response.iter_bytes(chunk_size=7))
    assert b"".join(pieces) == handed_on(b"".join(body).replace(event(USAGE_CHUNK), b""))
    assert {len(piece) for piece in pieces[:-1]} == {7} and 0 < len(pieces[-1]) <= 7
    assert_metered(first_attrs(spans))


async def test_a_chunk_size_the_caller_asked_for_is_kept_async(
    aclient: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    body = [*chat_events((CR, CR)), event(USAGE_CHUNK, (CR, CR)), done((CR, CR))]
    serve(fake, body)
    create = aclient.chat.completions.with_streaming_response.create
    async with create(**CHAT, stream=True) as response:
        pieces = [piece async for piece in response.iter_bytes(chunk_size=5)]
    usage_event = event(USAGE_CHUNK, (CR, CR))
    assert b"".join(pieces) == handed_on(b"".join(body).replace(usage_event, b""))
    assert {len(piece) for piece in pieces[:-1]} == {5}
    assert_metered(first_attrs(spans))


def test_closing_a_resized_body_early_ends_the_span(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    serve(fake, [*chat_events((LF, LF)), event(USAGE_CHUNK), done()])
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        pieces = response.iter_bytes(chunk_size=3)
        assert len(next(pieces)) == 3
        pieces.close()
        assert spans.one().attributes["cmdrdata.stream.outcome"] == "closed"


def test_events_flow_as_they_end_with_cr_framing() -> None:
    """The hostile run: CR-framed events were held back until the end (0 chunks in 40 s)."""
    observer = SSEObserver("chat", hide_usage_chunk=True)
    for index in range(2000):
        chunk = event(content(f"w{index}"), (CR, CR))
        assert observer.feed(chunk) == chunk  # handed on as soon as it ends: nothing held
        assert observer.held_back == 0
    assert observer.feed(event(USAGE_CHUNK, (CR, CR))) == b""
    assert observer.feed(done((CR, CR))) == done((CR, CR))
    assert observer.flush() == b""
    assert observer.usage is not None and observer.usage.total_tokens == 14
    assert observer.terminal


def observed(chunks: list[bytes], family: str = "chat") -> SSEObserver:
    observer = SSEObserver(family, hide_usage_chunk=True)
    for chunk in chunks:
        observer.feed(chunk)
    observer.flush()
    return observer


def test_the_first_events_facts_fill_in_what_the_later_ones_left_unsaid() -> None:
    """The first event is read at the end, and only for what the events after it did not
    say: they win where they say something, as when it was read first."""
    tier = {"service_tier": "default", "system_fingerprint": "fp_1"}
    first = event({**content("Hi"), **tier, "id": "chatcmpl-first", "model": "gpt-first"})
    later = {**USAGE_CHUNK, **tier}
    # the usage chunk says it all: the first event's id and model are not the answer
    info = observed([first, event(later), done()]).info
    assert (info.id, info.model, info.service_tier) == ("chatcmpl-tap", MODEL, "default")
    # the usage chunk has no fingerprint: the first event's fills it in, the rest stays
    bare = {k: v for k, v in later.items() if k != "system_fingerprint"}
    info = observed([first, event(bare), done()]).info
    assert (info.id, info.system_fingerprint) == ("chatcmpl-tap", "fp_1")
    # cut after the first event: its facts are all there is
    info = observed([first]).info
    assert (info.id, info.model, info.system_fingerprint) == ("chatcmpl-first", "gpt-first", "fp_1")
    # a finish reason only the first event gives is kept too
    only = event({**content("", "length"), **tier})
    observer = observed([only, event(later), done()])
    assert observer.finish_reasons == ["length"]
    # a Responses stream: its first event's status, and the id of response.created
    created = event(
        {
            "type": "response.created",
            "response": {"id": "resp_1", "status": "in_progress", "model": "gpt-x"},
        }
    )
    info = observed([created], "responses").info
    assert (info.id, info.model) == ("resp_1", "gpt-x")


def test_a_line_flushed_event_flows_once_it_cannot_be_the_usage_chunk() -> None:
    observer = SSEObserver("chat", hide_usage_chunk=True)
    line = b"data: " + json.dumps(content("hi")).encode() + CRLF
    assert observer.feed(line) == line  # a whole chunk with choices: not the usage chunk
    assert observer.feed(CRLF) == CRLF
    usage_line = b"data: " + json.dumps(USAGE_CHUNK).encode() + LF
    assert observer.feed(usage_line) == b""  # may be the usage chunk: held until it ends
    assert observer.held_back == len(usage_line)
    assert observer.feed(LF) == b""  # it was: left out
    assert observer.feed(b"data: [DO") == b""  # could still be anything
    assert observer.feed(b"NE]\n") == b"data: [DONE]\n"  # not an object: not the usage chunk
    assert observer.feed(LF) == LF
    assert observer.flush() == b""
    assert observer.hidden and observer.usage is not None and observer.usage.total_tokens == 14


def test_a_huge_event_without_a_boundary_is_handed_on_within_the_hold_limit() -> None:
    body = b'data: {"choices":[],"usage":{' + b" " * (1 << 20)  # never ends
    observer = SSEObserver("chat", hide_usage_chunk=True)
    out = b""
    for start in range(0, len(body), 8192):
        out += observer.feed(body[start : start + 8192])
        assert observer.held_back <= SSEObserver.HOLD_LIMIT
        assert len(out) >= start + 8192 - SSEObserver.HOLD_LIMIT
    assert out + observer.flush() == body


def test_a_huge_chunk_reaches_the_app_with_cr_framing(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    big = "x" * 300_000
    payload = event(content(big), (CR, CR))
    chunks = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
    seen = read_sync(client, fake, [*chunks, event(USAGE_CHUNK, (CR, CR)), done((CR, CR))])
    assert contents(seen) == [big]
    assert_metered(first_attrs(spans))


# --- issue 12: the usage chunk is decided on its JSON ------------------------------------

SPELLINGS = {
    "space before colon": json.dumps(USAGE_CHUNK, separators=(",", " :")),
    "spaces around": json.dumps(USAGE_CHUNK, separators=(" , ", " : ")),
    "usage first, choices [ ]": '{"usage" : {"prompt_tokens": 11, "completion_tokens": 3, '
    '"total_tokens": 14}, "choices": [ ], "id": "chatcmpl-tap", "object": "chat.completion.chunk"}',
    "pretty, over several data lines": json.dumps(USAGE_CHUNK, indent=2),
    "a key spelled with escapes": json.dumps(USAGE_CHUNK).replace('"usage"', '"\\u0075sage"'),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_usage_chunk_in_any_spelling_is_hidden(
    client: Any, fake: FakeOpenAI, spans: Spans, spelling: str
) -> None:
    usage_event = event({}, text=SPELLINGS[spelling])
    seen = read_sync(client, fake, [*chat_events((LF, LF)), usage_event, done()])
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(first_attrs(spans))


@pytest.mark.parametrize(
    ("second", "completion"), [(USAGE, 3), ({**USAGE, "completion_tokens": 5}, 5)]
)
def test_usage_chunk_sent_twice_is_hidden_and_counted_once(
    client: Any, fake: FakeOpenAI, spans: Spans, second: dict[str, int], completion: int
) -> None:
    twice = [event(USAGE_CHUNK), event({**USAGE_CHUNK, "usage": second})]
    seen = read_sync(client, fake, [*chat_events((LF, LF)), *twice, done()])
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(first_attrs(spans), completion=completion)  # the last report, not a sum


async def test_usage_chunk_sent_twice_async(aclient: Any, fake: FakeOpenAI, spans: Spans) -> None:
    spaced = event({}, text=json.dumps(USAGE_CHUNK, separators=(",", " :")), framing=(CR, CR))
    body = [*chat_events((CR, CR)), spaced, spaced, done((CR, CR))]
    seen = await read_async(aclient, fake, body)
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(first_attrs(spans))


def test_usage_on_a_chunk_with_choices_reaches_the_app_and_is_read(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    last = event(content("", "stop", usage=USAGE))  # a real chunk that carries the usage
    seen = read_sync(client, fake, [*chat_events((LF, LF))[:2], last, done()])
    assert contents(seen) == ["Hel", "lo", ""]
    assert seen[-1]["usage"]["total_tokens"] == 14
    assert_metered(first_attrs(spans))


@pytest.mark.parametrize("name", ["LF", "CRLF", "CR+CRLF"])
def test_a_usage_reported_after_the_hidden_chunk_is_the_one_billed(
    client: Any, fake: FakeOpenAI, spans: Spans, name: str
) -> None:
    # The hidden chunk's usage is not read again at the end; a later report still wins.
    framing = FRAMINGS[name]
    later = event(content("", "stop", usage={**USAGE, "completion_tokens": 5}), framing)
    body = [*chat_events(framing)[:2], event(USAGE_CHUNK, framing), later, done(framing)]
    seen = read_sync(client, fake, body)
    assert contents(seen) == ["Hel", "lo", ""]
    assert_metered(first_attrs(spans), completion=5)


NULL_USAGE_SPELLINGS = {  # a chunk with the "usage": null member include_usage adds
    "as OpenAI writes it": lambda c: json.dumps({**c, "usage": None}, separators=(",", ":")),
    "spaced": lambda c: json.dumps({**c, "usage": None}),
    "first": lambda c: json.dumps({"usage": None, **c}, separators=(",", " : ")),
}
CHUNK_ARGS: list[tuple[str, ...]] = [("Hel",), ("lo",), ("", "stop")]


def plain_chunks() -> list[dict[str, Any]]:
    """The chat chunks of ``chat_events``, as a server sends them without include_usage."""
    return [{k: v for k, v in content(*args).items() if k != "usage"} for args in CHUNK_ARGS]


@pytest.mark.parametrize("spelling", NULL_USAGE_SPELLINGS)
def test_chunks_carry_no_usage_member_the_app_did_not_ask_for(
    client: Any, fake: FakeOpenAI, spans: Spans, agent_settings: Any, spelling: str
) -> None:
    dump = NULL_USAGE_SPELLINGS[spelling]
    with_nulls = [event({}, text=dump(c)) for c in plain_chunks()]
    assert all(b'"usage"' in e for e in with_nulls)
    serve(fake, [*with_nulls, event(USAGE_CHUNK), done()])
    seen = [(c.to_json(), c.to_dict()) for c in client.chat.completions.create(**CHAT, stream=True)]
    assert_metered(first_attrs(spans))
    agent_settings(stream_usage="never")  # what the app gets with no agent asking for usage
    serve(fake, [*(event(c) for c in plain_chunks()), done()])
    plain = client.chat.completions.create(**CHAT, stream=True)
    assert seen == [(c.to_json(), c.to_dict()) for c in plain]


@pytest.mark.parametrize(
    "chunk",
    [
        {**CHUNK, "choices": [], "usage": None, "obfuscation": "x"},  # mid-object
        {"usage": None, **CHUNK},  # first
        {**CHUNK, "choices": [{"delta": {"content": 'say "usage": null, "usage":null'}}]},
        {**CHUNK, "choices": [{"delta": {"content": "a,"}}], "usage": None},
    ],
)
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": "), (",", " : ")])
def test_only_a_null_usage_member_is_taken_out(
    chunk: dict[str, Any], separators: tuple[str, str]
) -> None:
    data = json.dumps(chunk, separators=separators).encode()
    out = without_null_usage(b"data: " + data + b"\n\n")
    assert out.startswith(b"data: ") and out.endswith(b"}\n\n")
    plain = {k: v for k, v in chunk.items() if not (k == "usage" and v is None)}
    assert json.loads(out[6:]) == plain  # still JSON; strings and other members untouched


def test_a_usage_member_split_across_reads_reaches_the_app_intact(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    dump = NULL_USAGE_SPELLINGS["as OpenAI writes it"]
    body = b"".join([*(event({}, text=dump(c)) for c in plain_chunks()), event(USAGE_CHUNK)])
    body += done()
    seen = read_sync(client, fake, [body[i : i + 7] for i in range(0, len(body), 7)])
    assert contents(seen) == ["Hel", "lo", ""]  # every chunk parsed: nothing cut in half
    assert all(c["usage"] is None for c in seen)
    assert_metered(first_attrs(spans))


def test_a_usage_member_the_caller_asked_for_is_kept(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    dump = NULL_USAGE_SPELLINGS["as OpenAI writes it"]
    body = [*(event({}, text=dump(c)) for c in plain_chunks()), event(USAGE_CHUNK), done()]
    serve(fake, body)
    create = client.chat.completions.with_streaming_response.create
    with create(**CHAT, stream=True, stream_options={"include_usage": True}) as response:
        assert b"".join(response.iter_bytes()) == b"".join(body)
    assert_metered(first_attrs(spans))


def test_an_unfinished_last_event_is_handed_on_and_read() -> None:
    observer = SSEObserver("chat", hide_usage_chunk=True)
    body = b"".join(chat_events((CR, CR))) + b"data: " + json.dumps(USAGE_CHUNK).encode() + CR
    out = b"".join(observer.feed(body[i : i + 50]) for i in range(0, len(body), 50))
    assert out + observer.flush() == body  # not an event yet: the SDK would not parse it either
    assert observer.usage is not None and observer.usage.total_tokens == 14


@pytest.mark.parametrize("hide", [True, False])
@pytest.mark.parametrize("name", ["CR", "CRLF", "LF+CRLF"])
def test_a_long_stream_reads_its_usage_from_a_bounded_tail(hide: bool, name: str) -> None:
    framing = FRAMINGS[name]
    observer = SSEObserver("chat", hide_usage_chunk=hide)
    real = event(content("x" * 1000), framing)
    for _ in range(SSEObserver.TAIL_LIMIT // len(real) + 50):
        assert observer.feed(real) == real
    usage_event = event(USAGE_CHUNK, framing)
    assert observer.feed(usage_event) == (b"" if hide else usage_event)
    observer.feed(done(framing))
    observer.flush()
    assert observer.usage is not None and observer.usage.total_tokens == 14
    assert observer.terminal


def test_a_usage_key_spelled_with_escapes_is_read_without_hiding() -> None:
    observer = SSEObserver("chat", hide_usage_chunk=False)
    spelled = json.dumps(USAGE_CHUNK).replace('"usage"', '"\\u0075sage"')
    body = b"".join(chat_events((LF, LF))) + event({}, text=spelled) + done()
    assert observer.feed(body) == body
    observer.flush()
    assert observer.usage is not None and observer.usage.total_tokens == 14


@pytest.mark.parametrize("hide", [True, False], ids=["hiding", "not hiding"])
def test_a_later_usage_key_spelled_with_escapes_wins_over_an_earlier_plain_one(
    hide: bool,
) -> None:
    # The last report is the call's usage, however its key is spelled; a plain key after it
    # whose value is no usage (cut short) does not bring the earlier report back.
    observer = SSEObserver("chat", hide_usage_chunk=hide)
    earlier = {**content("x"), "usage": {**USAGE, "completion_tokens": 1, "total_tokens": 6}}
    spelled = json.dumps(USAGE_CHUNK).replace('"usage"', '"\\u0075sage"')
    body = event(earlier) + event({}, text=spelled) + event({}, text='{"usage": {"prompt')
    observer.feed(body)
    observer.flush()
    assert observer.usage is not None and observer.usage.total_tokens == 14


# --- not hiding: usage and how the stream ended are read with any framing -----------------


@pytest.mark.parametrize("name", ["CR", "LF+CRLF", "CRLF+LF"])
def test_callers_own_include_usage_is_read_with_any_framing(
    client: Any, fake: FakeOpenAI, spans: Spans, name: str
) -> None:
    framing = FRAMINGS[name]
    body = [*chat_events(framing), event(USAGE_CHUNK, framing), done(framing)]
    seen = read_sync(client, fake, body, stream_options={"include_usage": True})
    assert contents(seen) == ["Hel", "lo", "", "(usage)"]
    attrs = first_attrs(spans)
    assert_metered(attrs)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


RESPONSE = {
    "id": "resp_tap",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4o-2024-08-06",
    "status": "completed",
    "output": [],
    "usage": {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 9,
    },
}


@pytest.mark.parametrize("name", ["CR", "LF+CRLF"])
async def test_responses_stream_with_event_lines_and_any_framing(
    client: Any, aclient: Any, fake: FakeOpenAI, spans: Spans, name: str
) -> None:
    framing = FRAMINGS[name]

    def typed(kind: str, **data: Any) -> bytes:
        return event({"type": kind, **data}, framing, before=(b"event: " + kind.encode(),))

    body = [
        typed("response.created", response={**RESPONSE, "status": "in_progress", "usage": None}),
        typed("response.output_text.delta", delta="hi", item_id="m", output_index=0),
        typed("response.completed", response=RESPONSE),
    ]
    serve(fake, body)
    kinds = [e.type for e in client.responses.create(model="gpt-4o", input="hi", stream=True)]
    serve(fake, body)
    stream = await aclient.responses.create(model="gpt-4o", input="hi", stream=True)
    assert [e.type async for e in stream] == kinds
    assert kinds == ["response.created", "response.output_text.delta", "response.completed"]
    for span in spans.all:
        attrs = dict(span.attributes or {})
        assert attrs["gen_ai.usage.input_tokens"] == 7
        assert attrs["gen_ai.usage.output_tokens"] == 2
        assert attrs["cmdrdata.usage.source"] == "response"
        assert attrs["cmdrdata.stream.outcome"] == "completed"
        assert attrs["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert len(spans.all) == 2
