"""The surfaces added by the endpoint table, driven through the real SDK against FakeOpenAI.

Newer endpoints (``responses.compact``, ``beta.responses.*``, ``decisions.create``), hosted
tool calls, cache writes, SVG images, whisper's text formats, direct ``client.post()``
calls and provider labels. Every call is made twice: with metering off (what the app
does without the agent) and on; OpenAI must receive exactly the same request, and the
app get the same kind of result. Surfaces an installed SDK lacks are skipped, saying so.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from cmdrdata_autotrack import agent, customer_context
from cmdrdata_autotrack.export import ledger
from cmdrdata_autotrack.pricing import cost, load_prices
from cmdrdata_autotrack.telemetry import metrics
from cmdrdata_autotrack.usage.event import build_event
from cmdrdata_autotrack.usage.work import makes_no_event

from conftest import Spans
from fake_openai import FakeOpenAI, raw

MAJOR = int(openai.__version__.split(".")[0])
MODES = ["plain", "raw", "streaming_response"]
AUDIO = ("hello.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28), "audio/wav")
MESSAGES = [{"role": "user", "content": "Say hello"}]
# Request headers that differ between any two identical SDK calls.
VOLATILE = frozenset({"content-length"})


@pytest.fixture
def metering_off() -> Iterator[Callable[[bool], None]]:
    """Switch metering off and on: off, the app runs as it would without the agent."""
    running = agent.get()
    assert running is not None
    original = running.runtime.metering

    def switch(on: bool) -> None:
        running.runtime.metering = on

    yield switch
    running.runtime.metering = original


def sent(fake: FakeOpenAI) -> list[tuple[Any, ...]]:
    """What OpenAI received: method, path, query, headers, and the body (form for multipart)."""
    out = []
    for r in fake.requests:
        headers = {k: v for k, v in r.headers.items() if k not in VOLATILE}
        multipart = "multipart" in headers.get("content-type", "")
        if multipart:
            headers.pop("content-type")  # its boundary is random
        body = r.form if multipart else r.body
        out.append((r.method, r.path, r.query, headers, body))
    return out


def resolve(client: Any, path: tuple[str, ...], mode: str) -> Any:
    obj = client
    for part in path:
        if not hasattr(obj, part):
            pytest.skip(f"openai {openai.__version__} has no client.{'.'.join(path)}")
        obj = getattr(obj, part)
    if mode == "raw":
        obj = obj.with_raw_response
    elif mode == "streaming_response":
        obj = obj.with_streaming_response
    return obj


async def call(
    client: Any,
    aclient: Any,
    is_async: bool,
    path: tuple[str, ...],
    method: str,
    mode: str,
    stream: bool,
    kwargs: dict[str, Any],
) -> tuple[type, list[type]]:
    """Call ``client.<path>.<method>(**kwargs)`` as the app would: the result's type and
    the types of the items it streamed."""
    target = getattr(resolve(aclient if is_async else client, path, mode), method, None)
    if target is None:
        pytest.skip(f"openai {openai.__version__} has no {'.'.join(path)}.{method}")
    kwargs = {**kwargs, "stream": True} if stream else kwargs
    if mode == "streaming_response":
        if is_async:
            async with target(**kwargs) as response:
                result = await response.parse()
                items = [i async for i in result] if stream else []
        else:
            with target(**kwargs) as response:
                result = response.parse()
                items = list(result) if stream else []
        return type(result), [type(i) for i in items]
    result = await target(**kwargs) if is_async else target(**kwargs)
    if mode == "raw":
        result = result.parse()
        if inspect.isawaitable(result):
            result = await result
    items: list[Any] = []
    if stream:
        items = [i async for i in result] if is_async else list(result)
    return type(result), [type(i) for i in items]


def chat(client: Any, stream: bool, **kwargs: Any) -> Any:
    return call(client, None, False, ("chat", "completions"), "create", "plain", stream, kwargs)


def shape(value: Any) -> Any:
    """What the app got, less the fake's random ids: its type, keys and length."""
    if isinstance(value, dict):
        return dict, sorted(value)
    if isinstance(value, list):
        return list, [shape(v) for v in value]
    return type(value)


async def twice(
    fake: FakeOpenAI,
    metering_off: Callable[[bool], None],
    make: Callable[[], Any],
    setup: Callable[[], None] | None = None,
    compare: Callable[[Any], Any] = shape,
) -> Any:
    """Run ``make()`` without, then with metering; the requests and results must match."""
    results = []
    requests = []
    for on in (False, True):
        fake.reset()
        if setup is not None:
            setup()
        metering_off(on)
        result = make()
        if inspect.isawaitable(result):
            result = await result
        results.append(result)
        requests.append(sent(fake))
    assert requests[0] == requests[1]  # OpenAI saw exactly the app's request
    assert compare(results[0]) == compare(results[1])
    return results[1]


def usage_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in attrs.items()
        if k.startswith(("gen_ai.usage.", "cmdrdata.usage.")) and k != "cmdrdata.usage.source"
    }


# --- newer endpoints --------------------------------------------------------------------------

CACHE = {
    "gen_ai.usage.input_tokens": 17,
    "gen_ai.usage.cache_read.input_tokens": 5,
    "gen_ai.usage.cache_creation.input_tokens": 6,
    "cmdrdata.usage.cache_write_30m_tokens": 4,
    "cmdrdata.usage.cache_write_12h_tokens": 2,
    "gen_ai.usage.reasoning.output_tokens": 3,
}


def with_output(usage: dict[str, Any], output: int) -> dict[str, Any]:
    return {
        **usage,
        "gen_ai.usage.output_tokens": output,
        "cmdrdata.usage.total_tokens": usage["gen_ai.usage.input_tokens"] + output,
    }


@dataclass(frozen=True)
class Surface:
    id: str
    path: tuple[str, ...]
    method: str
    kwargs: dict[str, Any]
    operation: str
    api_type: str
    usage: dict[str, Any]
    stream_usage: dict[str, Any] | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = field(default=())


QUESTIONS = [
    {"type": "predicate", "name": "spam", "instructions": "Is it spam?"},
    {"type": "choice", "instructions": "Tone?", "choices": [{"value": "calm"}, {"value": True}]},
    {"type": "score", "instructions": "Quality?", "levels": [{"label": "low"}, {"label": "high"}]},
]
SURFACES = [
    Surface(
        "responses.compact",
        ("responses",),
        "compact",
        {"model": "gpt-5", "input": [{"role": "user", "content": "a long talk"}]},
        "compaction",
        "responses",
        with_output(CACHE, 9),
    ),
    Surface(
        "beta.responses.create",
        ("beta", "responses"),
        "create",
        {"model": "gpt-4o", "input": "Say hello"},
        "chat",
        "responses",
        with_output(CACHE, 9),
        with_output(CACHE, 5),
        "gpt-4o-2024-08-06",
        ("stop",),
    ),
    Surface(
        "beta.responses.compact",
        ("beta", "responses"),
        "compact",
        {"model": "gpt-5", "input": "a long talk"},
        "compaction",
        "responses",
        with_output(CACHE, 9),
    ),
    Surface(
        "decisions.create",
        ("decisions",),
        "create",
        {"model": "gpt-6-luna", "input": "Buy now!!!", "questions": QUESTIONS},
        "decision",
        "decisions",
        with_output(  # Decision's usage has no cache-write TTL details
            {k: v for k, v in CACHE.items() if "_30m_" not in k and "_12h_" not in k}, 9
        ),
        None,
        "gpt-6-luna-2024-07-18",
    ),
]


def cache_writes(fake: FakeOpenAI) -> None:
    fake.usage.cache_write_tokens = 6
    fake.usage.cache_write_30m_tokens = 4
    fake.usage.cache_write_12h_tokens = 2


def surface_matrix() -> list[Any]:
    params = []
    for surface in SURFACES:
        for mode in MODES:
            for stream in (False, True):
                if not stream or surface.stream_usage is not None:
                    name = f"{surface.id}-{mode}-{'stream' if stream else 'once'}"
                    params.append(pytest.param(surface, mode, stream, id=name))
    return params


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("surface", "mode", "stream"), surface_matrix())
async def test_newer_endpoints_are_metered(
    surface: Surface,
    mode: str,
    stream: bool,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Callable[[bool], None],
) -> None:
    kwargs = {**surface.kwargs, "customer_id": "cust-9"}
    result_type, _ = await twice(
        fake,
        metering_off,
        lambda: call(client, aclient, is_async, surface.path, surface.method, mode, stream, kwargs),
        lambda: cache_writes(fake),
    )
    assert result_type.__module__.startswith("openai")
    span = spans.one()
    attrs = dict(span.attributes or {})
    assert usage_attributes(attrs) == (surface.stream_usage if stream else surface.usage)
    assert attrs["gen_ai.operation.name"] == surface.operation
    assert attrs["openai.api.type"] == surface.api_type
    assert span.name == f"{surface.operation} {surface.kwargs['model']}"
    assert attrs["cmdrdata.customer.id"] == "cust-9"
    assert attrs["cmdrdata.usage.source"] == "response"
    assert attrs.get("gen_ai.response.model") == surface.response_model
    assert tuple(attrs.get("gen_ai.response.finish_reasons", ())) == surface.finish_reasons
    if stream:
        assert attrs["cmdrdata.stream.outcome"] == "completed"


def test_the_fake_answers_the_sdk_types(fake: FakeOpenAI, client: Any) -> None:
    """The fake's new bodies are valid for the installed SDK's own types."""
    import httpx

    def post(path: str, body: dict[str, Any]) -> Any:
        answer = httpx.post(fake.base_url + path, json=body, headers={"Authorization": "Bearer k"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    from openai.types.responses import Response

    cache_writes(fake)
    Response.model_validate(post("/responses", {"model": "gpt-5", "input": "x", "tools": TOOLS}))
    if MAJOR >= 2:
        from openai.types.responses import CompactedResponse

        CompactedResponse.model_validate(post("/responses/compact", {"model": "m", "input": "x"}))
    if MAJOR >= 3:
        from openai.types import Decision, ImagesResponse

        Decision.model_validate(
            post("/decisions", {"model": "m", "input": "x", "questions": QUESTIONS})
        )
        ImagesResponse.model_validate(
            post("/images/generations", {"model": "gpt-image-1", "prompt": "x", **SVG})
        )


# --- hosted tools -----------------------------------------------------------------------------

TOOLS = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation", "quality": "high", "size": "1024x1536"},
    {
        "type": "computer_use_preview",
        "display_width": 1024,
        "display_height": 768,
        "environment": "browser",
    },
    {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"},
]
TOOL_UNITS = {
    "cmdrdata.usage.web_search_calls": 2,
    "cmdrdata.usage.file_search_calls": 2,
    "cmdrdata.usage.code_interpreter_calls": 2,
    "cmdrdata.usage.code_interpreter_sessions": 1,  # both ran in the response's one container
    "cmdrdata.usage.image_generation_calls": 2,
    "cmdrdata.usage.image_generation_size": "1024x1536",
    "cmdrdata.usage.image_generation_quality": "high",
    "cmdrdata.usage.computer_calls": 2,
    "cmdrdata.usage.mcp_calls": 2,
}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
async def test_hosted_tool_calls_are_billable_units(
    stream: bool,
    mode: str,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Callable[[bool], None],
    tmp_path: Any,
) -> None:
    def setup() -> None:
        fake.usage.hosted_tool_calls = 2

    kwargs = {"model": "gpt-5", "input": "Research it", "tools": TOOLS, "customer_id": "acme"}
    await twice(
        fake,
        metering_off,
        lambda: call(client, aclient, is_async, ("responses",), "create", mode, stream, kwargs),
        setup,
    )
    span = spans.one()
    attrs = dict(span.attributes or {})
    units = usage_attributes(attrs)
    containers = units.pop("cmdrdata.usage.code_interpreter_container_ids")
    assert len(containers) == 1 and containers[0].startswith("cntr_")
    assert {k: v for k, v in units.items() if k in TOOL_UNITS} == TOOL_UNITS
    # the ledger keeps each unit in its column, and the price table prices the fees
    event = build_event(attrs, trace_id=1, span_id=2, start_ns=0, end_ns=1, ok=True)
    conn = ledger.open_ledger(tmp_path / "ledger.sqlite3")
    ledger.record(conn, [(event, json.dumps(event))])
    row = conn.execute(
        "SELECT web_search_calls, file_search_calls, code_interpreter_sessions,"
        " image_generation_calls, image_generation_quality, computer_calls FROM usage"
    ).fetchone()
    assert row == (2, 2, 1, 2, "high", 2)
    price = load_prices().for_model(event["model"])
    assert price is not None
    fees = cost(price, input_tokens=0, units=event["units"])
    # 2 web searches at $0.01, 2 file searches at $0.0025, 1 container at $0.03,
    # 2 high 1024x1536 images at $0.25; computer use and MCP: the model's tokens only
    assert fees == pytest.approx(0.02 + 0.005 + 0.03 + 0.5)


async def test_chat_web_search_is_one_web_search_call(
    client: Any, fake: FakeOpenAI, spans: Spans, metering_off: Callable[[bool], None]
) -> None:
    kwargs = {
        "model": "gpt-4o-mini-search-preview",
        "messages": MESSAGES,
        "web_search_options": {"search_context_size": "low"},
    }
    await twice(fake, metering_off, lambda: chat(client, False, **kwargs))
    attrs = spans.attrs()
    assert attrs["cmdrdata.usage.web_search_calls"] == 1
    event = build_event(attrs, trace_id=1, span_id=2, start_ns=0, end_ns=1, ok=True)
    price = load_prices().for_model(event["model"])
    assert price is not None
    assert cost(price, input_tokens=0, units=event["units"]) == pytest.approx(0.025)


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
async def test_chat_cache_writes(
    stream: bool, client: Any, fake: FakeOpenAI, spans: Spans, metering_off: Any
) -> None:
    def setup() -> None:
        fake.usage.cache_write_tokens = 7

    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES}
    if stream:  # asked by the app, so the agent adds nothing to the request
        kwargs["stream_options"] = {"include_usage": True}
    await twice(fake, metering_off, lambda: chat(client, stream, **kwargs), setup)
    attrs = spans.attrs()
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 7
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 5


SVG = {"output_format": "svg", "svg": {"model": "gpt-5"}}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", MODES)
async def test_svg_images_carry_their_authoring_tokens(
    mode: str,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Any,
) -> None:
    if MAJOR < 3:
        pytest.skip(f"openai {openai.__version__} has no svg= image option")
    kwargs = {"model": "gpt-image-1", "prompt": "a logo", **SVG}
    await twice(
        fake,
        metering_off,
        lambda: call(client, aclient, is_async, ("images",), "generate", mode, False, kwargs),
    )
    attrs = spans.attrs()
    assert {k: v for k, v in usage_attributes(attrs).items() if "svg" in k} == {
        "cmdrdata.usage.svg_input_tokens": 120,
        "cmdrdata.usage.svg_output_tokens": 900,
        "cmdrdata.usage.svg_reasoning_tokens": 300,
        "cmdrdata.usage.svg_model": "gpt-5",
    }
    event = build_event(attrs, trace_id=1, span_id=2, start_ns=0, end_ns=1, ok=True)
    price = load_prices().for_model("gpt-image-1")
    assert price is not None
    svg_only = {k: v for k, v in event["units"].items() if k.startswith("svg")}
    # gpt-5: 120 input at $1.25, 600 output at $10, 300 reasoning at $10 (per 1M)
    assert cost(price, input_tokens=0, units=svg_only) == pytest.approx(
        (120 * 1.25 + 900 * 10.0) / 1e6
    )


# --- whisper's text formats -------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("fmt", "seconds"), [("text", 3.6), ("srt", 7.0), ("vtt", 7.0)])
async def test_whisper_text_formats_record_estimated_seconds(
    fmt: str,
    seconds: float,
    mode: str,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Any,
) -> None:
    kwargs = {"model": "whisper-1", "file": AUDIO, "response_format": fmt}
    result_type, _ = await twice(
        fake,
        metering_off,
        lambda: call(
            client, aclient, is_async, ("audio", "transcriptions"), "create", mode, False, kwargs
        ),
    )
    assert result_type is str
    attrs = spans.attrs()
    assert usage_attributes(attrs) == {
        "cmdrdata.usage.audio_seconds": seconds,
        "cmdrdata.usage.estimated": True,
    }
    assert attrs["cmdrdata.usage.source"] == "estimate"


# --- direct calls -----------------------------------------------------------------------------

CHAT_BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}
CHAT_USAGE = {
    "gen_ai.usage.input_tokens": 17,
    "gen_ai.usage.cache_read.input_tokens": 5,
    "gen_ai.usage.reasoning.output_tokens": 3,
    "cmdrdata.usage.input_audio_tokens": 0,
    "cmdrdata.usage.output_audio_tokens": 0,
    "cmdrdata.usage.accepted_prediction_tokens": 0,
    "cmdrdata.usage.rejected_prediction_tokens": 0,
}


async def direct(client: Any, aclient: Any, is_async: bool, path: str, **options: Any) -> Any:
    with customer_context("ctx-customer"):
        if is_async:
            result = await aclient.post(path, **options)
            if options.get("stream"):
                return [item async for item in result]
            return result
        result = client.post(path, **options)
        return list(result) if options.get("stream") else result


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("cast", ["model", "object"])
async def test_a_direct_call_to_a_billable_path_is_metered(
    cast: str,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Any,
) -> None:
    from openai.types.chat import ChatCompletion

    before = metrics.snapshot().get("calls_metered_direct", 0)
    cast_to = ChatCompletion if cast == "model" else object
    result = await twice(
        fake,
        metering_off,
        lambda: direct(
            client, aclient, is_async, "/chat/completions", body=CHAT_BODY, cast_to=cast_to
        ),
    )
    assert isinstance(result, ChatCompletion if cast == "model" else dict)
    span = spans.one()
    attrs = dict(span.attributes or {})
    assert usage_attributes(attrs) == with_output(CHAT_USAGE, 9)
    assert span.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert (attrs["cmdrdata.customer.id"], attrs["cmdrdata.customer.source"]) == (
        "ctx-customer",
        "context",
    )
    assert attrs["openai.request.id"] == fake.requests[-1].request_id
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    assert metrics.snapshot()["calls_metered_direct"] == before + 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
async def test_a_direct_stream_is_metered_as_it_is_read(
    include_usage: bool,
    is_async: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    spans: Spans,
    metering_off: Any,
) -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    body: dict[str, Any] = {**CHAT_BODY, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    stream_cls = (openai.AsyncStream if is_async else openai.Stream)[ChatCompletionChunk]
    items = await twice(
        fake,
        metering_off,
        lambda: direct(
            client,
            aclient,
            is_async,
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=stream_cls,
        ),
    )
    assert len(items) == 7 + include_usage  # role, 5 words, finish (+ usage): the app's own
    attrs = spans.attrs()
    assert attrs["cmdrdata.stream.outcome"] == "completed"
    assert "cmdrdata.stream.usage_injected" not in attrs  # the request was sent as made
    if include_usage:
        assert usage_attributes(attrs) == with_output(CHAT_USAGE, 5)
    else:  # no usage asked: estimated from the request and the deltas, and flagged
        assert attrs["cmdrdata.usage.estimated"] is True
        assert attrs["gen_ai.usage.output_tokens"] == 5


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_direct_call_to_an_unknown_path_with_usage_is_metered_generically(
    is_async: bool, client: Any, aclient: Any, fake: FakeOpenAI, spans: Spans, metering_off: Any
) -> None:
    answer = b'{"model":"rerank-1","results":[],"usage":{"prompt_tokens":11,"total_tokens":11}}'
    before = metrics.snapshot().get("calls_metered_generic", 0)
    result = await twice(
        fake,
        metering_off,
        lambda: direct(
            client, aclient, is_async, "/rerank", body={"model": "rerank-1"}, cast_to=object
        ),
        lambda: fake.enqueue(raw(answer, path="/rerank")),
    )
    assert result == json.loads(answer)
    span = spans.one()
    attrs = dict(span.attributes or {})
    assert span.name == "unknown rerank-1"
    assert (attrs["gen_ai.operation.name"], attrs["openai.api.type"]) == ("unknown", "generic")
    assert attrs["url.path"] == "/rerank"
    assert usage_attributes(attrs) == {
        "gen_ai.usage.input_tokens": 11,
        "cmdrdata.usage.total_tokens": 11,
        "cmdrdata.usage.problem": "malformed_usage",  # no completion tokens: flagged
    }
    assert attrs["cmdrdata.customer.id"] == "ctx-customer"
    assert metrics.snapshot()["calls_metered_generic"] == before + 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/rerank", b'{"results":[]}'),  # no usage object
        ("get", "/responses/resp_1", b'{"id":"resp_1","usage":{"input_tokens":3}}'),  # stored
        ("post", "/responses/resp_1/cancel", b'{"id":"resp_1","usage":{"input_tokens":3}}'),
        ("post", "/batches", b'{"id":"batch_1","usage":{"input_tokens":3,"output_tokens":1}}'),
    ],
    ids=["no-usage", "retrieve", "cancel", "batch"],
)
def test_direct_calls_that_are_not_new_bills_are_not_metered(
    method: str, path: str, body: bytes, client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    before = metrics.snapshot().get("calls_unmetered_with_usage", 0)
    fake.enqueue(raw(body, path=path))
    call_method = getattr(client, method)
    options: dict[str, Any] = {"cast_to": object}
    if method == "post":
        options["body"] = {}
    assert call_method(path, **options) == json.loads(body)
    # a stored object read (or a batch started) bills nothing: at most a span, no event
    assert [s for s in spans.all if not makes_no_event(s.attributes or {})] == []
    counted = metrics.snapshot().get("calls_unmetered_with_usage", 0) - before
    assert counted == 0  # read as deferred work (see tests/test_deferred.py)


def test_a_streamed_unknown_path_is_counted_not_read(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    before = metrics.snapshot().get("calls_unmetered_generic_stream", 0)
    events = b'data: {"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    fake.enqueue(raw(events, path="/generate", content_type="text/event-stream"))
    stream = client.post(
        "/generate", body={}, cast_to=object, stream=True, stream_cls=openai.Stream[object]
    )
    assert [item for item in stream] == [{"usage": {"prompt_tokens": 3, "completion_tokens": 1}}]
    assert spans.all == []
    assert metrics.snapshot()["calls_unmetered_generic_stream"] == before + 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_patched_calls_are_not_metered_again_as_direct_calls(
    is_async: bool, client: Any, aclient: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    before = metrics.snapshot().get("calls_metered_direct", 0)
    completions = (aclient if is_async else client).chat.completions
    for track in (True, False):
        reply = completions.create(**CHAT_BODY, track_usage=track)
        if is_async:
            await reply
    # one span: the metered call's; the untracked call's request is not a direct call
    assert len(spans.all) == 1
    assert metrics.snapshot().get("calls_metered_direct", 0) == before


def test_a_direct_call_on_azure_is_routed_past_the_deployment(
    fake: FakeOpenAI, spans: Spans
) -> None:
    azure = openai.AzureOpenAI(
        api_key="az",
        api_version="2024-10-21",
        azure_endpoint=fake.root_url,
        azure_deployment="my-gpt",
        max_retries=0,
    )
    azure.post("/chat/completions", body=CHAT_BODY, cast_to=object)
    assert fake.requests[-1].path == "/openai/deployments/my-gpt/chat/completions"
    attrs = spans.attrs()
    assert (attrs["gen_ai.operation.name"], attrs["gen_ai.provider.name"]) == (
        "chat",
        "azure.ai.openai",
    )


# --- provider labels --------------------------------------------------------------------------


def test_a_compatible_host_is_not_labelled_openai(client: Any, spans: Spans) -> None:
    client.chat.completions.create(**CHAT_BODY)
    attrs = spans.attrs()
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai_compatible"
    assert attrs["server.address"] == "127.0.0.1"


def test_bedrock_clients_are_labelled_aws_bedrock(
    fake: FakeOpenAI, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(openai, "BedrockOpenAI"):
        pytest.skip(f"openai {openai.__version__} has no BedrockOpenAI")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    bedrock = openai.BedrockOpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
    bedrock.chat.completions.create(**CHAT_BODY)
    assert spans.attrs()["gen_ai.provider.name"] == "aws.bedrock"


def test_vertex_provider_clients_are_labelled_gcp_vertex_ai(fake: FakeOpenAI, spans: Spans) -> None:
    providers = pytest.importorskip("openai.providers")
    if not hasattr(providers, "vertex"):
        pytest.skip(f"openai {openai.__version__} has no openai.providers.vertex")
    vertex = openai.OpenAI(
        provider=providers.vertex(base_url=fake.base_url, token_provider=lambda: "tok"),
        max_retries=0,
    )
    vertex.responses.create(model="gpt-4o", input="hi")
    assert spans.attrs()["gen_ai.provider.name"] == "gcp.vertex_ai"


# --- every SDK method whose answer carries usage is metered, or deliberately not --------------

# Methods that return a stored object or a WebSocket event (not a new billable request).
NOT_REQUESTS = frozenset({"retrieve", "list", "update", "cancel", "poll", "parse_event", "recv"})
# Surfaces metered elsewhere, or later (Assistants, Batch, Realtime, Agents sessions, evals).
OTHER_SURFACES = (
    "openai.resources.beta.threads.",
    "openai.resources.batches",
    "openai.resources.beta.realtime.",
    "openai.resources.realtime.",
    "openai.resources.live.",
    "openai.resources.beta.agents.",
    "openai.resources.evals.",
)


def _returns_usage(function: Any) -> bool:
    import typing

    import pydantic

    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation this Python cannot resolve: not a billable shape
        return False
    pending, seen = [hints.get("return")], 0
    while pending and seen < 64:
        kind = pending.pop()
        seen += 1
        model = isinstance(kind, type) and issubclass(kind, pydantic.BaseModel)
        if model and "usage" in kind.model_fields:
            return True
        pending.extend(typing.get_args(kind))
    return False


def test_every_sdk_method_answering_usage_is_a_table_row() -> None:
    import importlib
    import pkgutil

    import openai.resources

    from cmdrdata_autotrack.instrumentation.openai.endpoints import ENDPOINTS

    rows = {
        f"{module}.{cls}.{row.method}"
        for row in ENDPOINTS
        for module in row.modules
        for cls in row.classes
    }
    unmetered = []
    prefix = openai.resources.__name__ + "."
    for info in pkgutil.walk_packages(openai.resources.__path__, prefix):
        module = importlib.import_module(info.name)
        if info.name.startswith(OTHER_SURFACES):
            continue
        for cls_name, cls in list(vars(module).items()):
            if not isinstance(cls, type) or cls.__module__ != info.name or "With" in cls_name:
                continue
            for name, function in list(vars(cls).items()):
                if name.startswith("_") or name in NOT_REQUESTS or not callable(function):
                    continue
                qualified = f"{info.name}.{cls_name}.{name}"
                if qualified not in rows and _returns_usage(function):
                    unmetered.append(qualified)
    assert unmetered == []
