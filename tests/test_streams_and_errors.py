"""Streams that end in every way, failed calls, and the SDK's own retries."""

from __future__ import annotations

import gc
import traceback
from typing import Any

import openai
import pytest

from conftest import Spans
from fake_openai import (
    FakeOpenAI,
    no_usage,
    reject_stream_options,
    sse_error,
    status,
    stream_cut,
)
from fake_openai import (
    delay as slow,
)

MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def chat_stream(client: Any, **kwargs: Any) -> Any:
    return client.chat.completions.create(**CHAT, stream=True, **kwargs)


# --- how a stream ends ------------------------------------------------------------------------


def test_caller_indexing_choices_never_sees_the_usage_chunk(client: Any, spans: Spans) -> None:
    words = [chunk.choices[0].delta.content for chunk in chat_stream(client)]
    assert words == ["", "Hello", " from", " the", " fake", " server.", None]
    assert spans.attrs()["gen_ai.usage.output_tokens"] == 5


def test_caller_who_asked_for_usage_sees_it(client: Any, fake: FakeOpenAI, spans: Spans) -> None:
    chunks = list(chat_stream(client, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 22
    attrs = spans.attrs()
    assert attrs["cmdrdata.usage.total_tokens"] == 22
    assert "cmdrdata.stream.usage_injected" not in attrs


def test_with_statement_and_response_attribute(client: Any, spans: Spans) -> None:
    with chat_stream(client) as stream:
        assert isinstance(stream, openai.Stream)
        assert stream.response.status_code == 200
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
    attrs = spans.attrs()
    assert attrs["cmdrdata.stream.outcome"] == "closed"
    assert attrs["cmdrdata.usage.estimated"] is True  # it ended before the usage arrived


def test_early_break_then_close(client: Any, spans: Spans) -> None:
    stream = chat_stream(client)
    for chunk in stream:
        if chunk.choices[0].delta.content == "Hello":
            break
    assert spans.all == []  # still open: the caller may go on reading
    stream.close()
    attrs = spans.attrs()
    assert attrs["cmdrdata.stream.outcome"] == "closed"
    assert attrs["cmdrdata.usage.estimated"] is True
    assert attrs["gen_ai.usage.input_tokens"] > 0


def test_abandoned_stream_ends_when_collected(client: Any, spans: Spans) -> None:
    stream = chat_stream(client)
    del stream
    gc.collect()
    attrs = spans.attrs()
    assert attrs["cmdrdata.stream.outcome"] in ("abandoned", "closed")
    assert attrs["cmdrdata.usage.estimated"] is True


async def test_async_abandoned_and_closed(aclient: Any, spans: Spans) -> None:
    stream = await aclient.chat.completions.create(**CHAT, stream=True)
    async for _ in stream:
        break
    await stream.close()
    assert spans.attrs()["cmdrdata.stream.outcome"] == "closed"


def test_span_ends_exactly_once_whatever_happens_after(client: Any, spans: Spans) -> None:
    stream = chat_stream(client)
    list(stream)
    stream.close()
    stream.close()
    del stream
    gc.collect()
    assert len(spans.all) == 1


def test_host_without_usage_is_estimated_never_zero(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    fake.enqueue(no_usage())
    list(chat_stream(client))
    attrs = spans.attrs()
    assert attrs["cmdrdata.usage.estimated"] is True
    assert attrs["cmdrdata.usage.source"] == "estimate"
    assert attrs["gen_ai.usage.output_tokens"] == 5  # one per content delta
    assert (
        attrs["gen_ai.usage.input_tokens"] == 3 + 4
    )  # "Say hello": 9 chars ~ 3 tokens, + message overhead


def test_stream_cut_by_the_network(client: Any, fake: FakeOpenAI, spans: Spans) -> None:
    fake.enqueue(stream_cut(after_chunks=3))
    # openai 3.x wraps the transport error in APIConnectionError; 1.x and 2.x raise it as is
    with pytest.raises(Exception, match=r"peer closed connection|Connection error") as caught:
        list(chat_stream(client))
    span = spans.one()
    attrs = dict(span.attributes or {})
    assert not span.status.is_ok
    assert attrs["cmdrdata.stream.outcome"] == "error"
    transport_error = caught.value.__cause__ or caught.value
    assert attrs["error.type"] == type(transport_error).__qualname__ == "RemoteProtocolError"
    assert attrs["cmdrdata.usage.estimated"] is True
    assert attrs["gen_ai.usage.output_tokens"] == 2  # the content deltas that did arrive


def test_error_event_in_stream(client: Any, fake: FakeOpenAI, spans: Spans) -> None:
    fake.enqueue(sse_error())
    with pytest.raises(openai.APIError):
        list(chat_stream(client))
    span = spans.one()
    assert not span.status.is_ok
    assert span.attributes["error.type"] == "APIError"


def test_injection_modes(client: Any, fake: FakeOpenAI, spans: Spans, agent_settings: Any) -> None:
    # auto: the fake is not OpenAI's own host, so nothing is added (it might reject it)
    agent_settings(stream_usage="auto")
    fake.enqueue(reject_stream_options())
    list(chat_stream(client))
    assert "stream_options" not in fake.requests[-1].json
    assert spans.attrs()["cmdrdata.usage.estimated"] is True
    # never
    agent_settings(stream_usage="never")
    list(chat_stream(client))
    assert "stream_options" not in fake.requests[-1].json


def test_asking_for_usage_leaves_the_callers_own_options_as_they_would_go(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    # no option of the caller's: the agent's goes in extra_body, beside the caller's own
    extra = {"user": "u-1"}
    list(chat_stream(client, extra_body=extra))
    sent = fake.requests[-1].json
    assert sent["stream_options"] == {"include_usage": True} and sent["user"] == "u-1"
    assert extra == {"user": "u-1"}  # the caller's dict is not changed
    assert spans.attrs()["gen_ai.usage.output_tokens"] == 5  # from the usage chunk
    # stream_options in the caller's extra_body: the SDK lays it over the request, as always
    list(chat_stream(client, extra_body={"stream_options": {"include_usage": False}}))
    assert fake.requests[-1].json["stream_options"] == {"include_usage": False}
    # a stream_options argument of the caller's keeps its options, include_usage added
    options = {"include_obfuscation": False}
    list(chat_stream(client, stream_options=options))
    sent = fake.requests[-1].json
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert options == {"include_obfuscation": False}


def test_host_rejecting_stream_options_error_reaches_the_app(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    fake.enqueue(reject_stream_options())
    with pytest.raises(openai.BadRequestError):
        list(chat_stream(client))
    assert spans.one().attributes["http.response.status_code"] == 400


def test_raw_stream_lines_hide_the_injected_usage_chunk(client: Any, spans: Spans) -> None:
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert not any('"choices":[]' in line.replace(" ", "") for line in lines)
    assert spans.attrs()["cmdrdata.usage.total_tokens"] == 22


def test_streaming_response_read_whole_json_body(client: Any, spans: Spans) -> None:
    with client.chat.completions.with_streaming_response.create(**CHAT) as response:
        body = response.json()
    assert body["usage"]["total_tokens"] == 26
    assert spans.attrs()["cmdrdata.usage.total_tokens"] == 26


# --- stream helpers: one span, the customer carried ----------------------------------------


def test_chat_stream_helper(client: Any, fake: FakeOpenAI, spans: Spans) -> None:
    with client.chat.completions.stream(**CHAT, customer_id="helper-cust") as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.usage is None  # as without the agent: the injected usage chunk stays hidden
    attrs = spans.attrs()
    assert attrs["cmdrdata.customer.id"] == "helper-cust"
    assert attrs["cmdrdata.usage.total_tokens"] == 22
    assert "x-cmdrdata-carry" not in fake.requests[-1].headers


async def test_async_chat_stream_helper(aclient: Any, spans: Spans) -> None:
    async with aclient.chat.completions.stream(**CHAT, customer_id="async-helper") as stream:
        async for _ in stream:
            pass
    assert spans.attrs()["cmdrdata.customer.id"] == "async-helper"


def test_responses_stream_helper(client: Any, spans: Spans) -> None:
    with client.responses.stream(model="gpt-4o", input="hi", customer_id="r-cust") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.usage.total_tokens == 22
    attrs = spans.attrs()
    assert attrs["cmdrdata.customer.id"] == "r-cust"
    assert attrs["gen_ai.usage.output_tokens"] == 5


def test_responses_parse_with_pydantic_model(client: Any, fake: FakeOpenAI, spans: Spans) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        answer: str

    fake.reply_text = '{"answer": "yes"}'
    parsed = client.responses.parse(model="gpt-4o", input="q", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="yes")
    attrs = spans.attrs()
    assert attrs["gen_ai.output.type"] == "json"
    assert attrs["cmdrdata.usage.total_tokens"] == 26


def test_stream_helper_with_tracking_off_opens_no_span(client: Any, spans: Spans) -> None:
    with client.chat.completions.stream(**CHAT, track_usage=False) as stream:
        list(stream)
    assert spans.all == []


# --- failed calls --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_status_errors_reach_the_app_unchanged(
    code: int, error: type[Exception], client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    fake.enqueue(status(code))
    with pytest.raises(error) as caught:
        client.chat.completions.create(**CHAT, customer_id="c")
    # the very exception the SDK raised: its traceback ends in the SDK, not in the agent
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert "openai" in frames[-1].filename and "cmdrdata_autotrack" not in frames[-1].filename
    span = spans.one()
    assert not span.status.is_ok
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == error.__name__
    assert attrs["http.response.status_code"] == code
    assert attrs["cmdrdata.usage.source"] == "none"
    assert "gen_ai.usage.input_tokens" not in attrs


def test_timeout(fake: FakeOpenAI, spans: Spans) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=0.2)
    fake.enqueue(slow(5))
    with pytest.raises(openai.APITimeoutError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert spans.attrs()["error.type"] == "APITimeoutError"


async def test_async_error(aclient: Any, fake: FakeOpenAI, spans: Spans) -> None:
    fake.enqueue(status(503))
    with pytest.raises(openai.InternalServerError):
        await aclient.embeddings.create(model="text-embedding-3-small", input="x")
    assert spans.attrs()["error.type"] == "InternalServerError"


def test_sdk_retries_are_one_call_with_a_resend_count(fake: FakeOpenAI, spans: Spans) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=3)
    fake.enqueue(status(500, headers={"retry-after-ms": "1"}, times=2))
    reply = client.chat.completions.create(**CHAT)
    assert reply.usage.total_tokens == 26
    assert [r.retry_count for r in fake.requests] == [0, 1, 2]
    attrs = spans.attrs()
    assert attrs["http.request.resend_count"] == 2
    assert attrs["cmdrdata.usage.total_tokens"] == 26


def test_retries_exhausted(fake: FakeOpenAI, spans: Spans) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=1)
    fake.enqueue(status(429, headers={"retry-after-ms": "1"}, times=2))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**CHAT)
    attrs = spans.attrs()
    assert attrs["http.request.resend_count"] == 1
    assert attrs["error.type"] == "RateLimitError"
