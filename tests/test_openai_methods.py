"""Every instrumented method x sync/async x stream/non-stream x plain/raw/streaming-response.

Each call goes through the real ``openai`` SDK to the fake API on 127.0.0.1;
the test asserts the exact usage attributes the server reported, that the
caller got the SDK's own objects, and what was actually sent.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from conftest import Spans
from fake_openai import PNG_BYTES, FakeOpenAI

MESSAGES = [{"role": "user", "content": "Say hello"}]
AUDIO = ("hello.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28), "audio/wav")
IMAGE = ("cat.png", PNG_BYTES, "image/png")

CHAT_USAGE = {
    "gen_ai.usage.input_tokens": 17,
    "gen_ai.usage.cache_read.input_tokens": 5,
    "gen_ai.usage.reasoning.output_tokens": 3,
    "cmdrdata.usage.input_audio_tokens": 0,
    "cmdrdata.usage.output_audio_tokens": 0,
    "cmdrdata.usage.accepted_prediction_tokens": 0,
    "cmdrdata.usage.rejected_prediction_tokens": 0,
}
RESPONSES_USAGE = {
    "gen_ai.usage.input_tokens": 17,
    "gen_ai.usage.cache_read.input_tokens": 5,
    "gen_ai.usage.cache_creation.input_tokens": 0,
    "gen_ai.usage.reasoning.output_tokens": 3,
}
GPT_IMAGE_USAGE = {
    "gen_ai.usage.input_tokens": 34,
    "cmdrdata.usage.input_text_tokens": 13,
    "cmdrdata.usage.input_image_tokens": 21,
    "gen_ai.usage.output_tokens": 272,
    "cmdrdata.usage.total_tokens": 306,
    # gpt-image responses say which size and quality they were billed at
    "cmdrdata.usage.image_size": "1024x1024",
    "cmdrdata.usage.image_quality": "medium",
}
TRANSCRIBE_USAGE = {
    "gen_ai.usage.input_tokens": 27,
    "cmdrdata.usage.input_text_tokens": 4,
    "cmdrdata.usage.input_audio_tokens": 23,
    "gen_ai.usage.output_tokens": 11,
    "cmdrdata.usage.total_tokens": 38,
}


def with_output(usage: dict[str, Any], output: int) -> dict[str, Any]:
    return {
        **usage,
        "gen_ai.usage.output_tokens": output,
        "cmdrdata.usage.total_tokens": usage["gen_ai.usage.input_tokens"] + output,
    }


@dataclass(frozen=True)
class Case:
    id: str
    path: tuple[str, ...]  # client.<path...>
    method: str
    kwargs: dict[str, Any]
    operation: str
    usage: dict[str, Any]  # exact usage attributes for the non-streamed call
    stream_usage: dict[str, Any] | None = None  # for stream=True; None: no streaming variant
    response_model: str | None = None
    finish_reasons: tuple[str, ...] | None = None
    request_model: str | None = field(default=None)

    @property
    def model(self) -> str | None:
        return self.request_model or self.kwargs.get("model")


CASES = [
    Case(
        "chat.create",
        ("chat", "completions"),
        "create",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.5},
        "chat",
        with_output(CHAT_USAGE, 9),
        with_output(CHAT_USAGE, 5),
        "gpt-4o-mini-2024-07-18",
        ("stop",),
    ),
    Case(
        "chat.parse",
        ("chat", "completions"),
        "parse",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "response_format": {"type": "json_object"}},
        "chat",
        with_output(CHAT_USAGE, 9),
        None,
        "gpt-4o-mini-2024-07-18",
        ("stop",),
    ),
    Case(
        "completions.create",
        ("completions",),
        "create",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello"},
        "text_completion",
        {
            "gen_ai.usage.input_tokens": 17,
            "gen_ai.usage.output_tokens": 9,
            "cmdrdata.usage.total_tokens": 26,
        },
        {
            "gen_ai.usage.input_tokens": 17,
            "gen_ai.usage.output_tokens": 5,
            "cmdrdata.usage.total_tokens": 22,
        },
        None,
        ("stop",),
    ),
    Case(
        "responses.create",
        ("responses",),
        "create",
        {"model": "gpt-4o", "input": "Say hello", "max_output_tokens": 50},
        "chat",
        with_output(RESPONSES_USAGE, 9),
        with_output(RESPONSES_USAGE, 5),
        None,
        ("stop",),
    ),
    Case(
        "embeddings.create",
        ("embeddings",),
        "create",
        {"model": "text-embedding-3-small", "input": ["a", "b"]},
        "embeddings",
        {"gen_ai.usage.input_tokens": 17, "cmdrdata.usage.total_tokens": 17},
    ),
    Case(
        "images.generate.gpt-image",
        ("images",),
        "generate",
        {"model": "gpt-image-1", "prompt": "a cat", "n": 2},
        "image_generation",
        {**GPT_IMAGE_USAGE, "cmdrdata.usage.image_count": 2},
    ),
    Case(
        "images.generate.gpt-image.stream",
        ("images",),
        "generate",
        {"model": "gpt-image-1", "prompt": "a cat", "partial_images": 2},
        "image_generation",
        {**GPT_IMAGE_USAGE, "cmdrdata.usage.image_count": 1},
        {**GPT_IMAGE_USAGE, "cmdrdata.usage.image_count": 1},
    ),
    Case(
        "images.generate.dall-e",
        ("images",),
        "generate",
        {"model": "dall-e-3", "prompt": "a cat", "size": "1024x1792", "quality": "hd"},
        "image_generation",
        {
            "cmdrdata.usage.image_count": 1,
            "cmdrdata.usage.image_size": "1024x1792",
            "cmdrdata.usage.image_quality": "hd",
        },
    ),
    Case(
        "images.edit",
        ("images",),
        "edit",
        {"model": "gpt-image-1", "image": IMAGE, "prompt": "add a hat"},
        "image_edit",
        {**GPT_IMAGE_USAGE, "cmdrdata.usage.image_count": 1},
    ),
    Case(
        "images.create_variation",
        ("images",),
        "create_variation",
        {"model": "dall-e-2", "image": IMAGE, "n": 3, "size": "256x256"},
        "image_variation",
        {"cmdrdata.usage.image_count": 3, "cmdrdata.usage.image_size": "256x256"},
    ),
    Case(
        "audio.transcriptions.tokens",
        ("audio", "transcriptions"),
        "create",
        {"model": "gpt-4o-transcribe", "file": AUDIO},
        "audio_transcription",
        TRANSCRIBE_USAGE,
        TRANSCRIBE_USAGE,
    ),
    Case(
        "audio.transcriptions.duration",
        ("audio", "transcriptions"),
        "create",
        {"model": "whisper-1", "file": AUDIO},
        "audio_transcription",
        {"cmdrdata.usage.audio_seconds": 7.0},
    ),
    Case(
        "audio.translations.verbose",
        ("audio", "translations"),
        "create",
        {"model": "whisper-1", "file": AUDIO, "response_format": "verbose_json"},
        "audio_translation",
        {"cmdrdata.usage.audio_seconds": 7.0},
    ),
    Case(
        "audio.speech",
        ("audio", "speech"),
        "create",
        {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello there, world!"},
        "audio_speech",
        # bare audio reports no tokens: a token-billed model's are estimated from 19 characters
        {
            "cmdrdata.usage.input_characters": 19,
            "gen_ai.usage.input_tokens": 5,
            "cmdrdata.usage.input_text_tokens": 5,
            "gen_ai.usage.output_tokens": 27,
            "cmdrdata.usage.output_audio_tokens": 27,
            "cmdrdata.usage.total_tokens": 32,
            "cmdrdata.usage.estimated": True,
        },
    ),
    Case(
        "audio.speech.sse",
        ("audio", "speech"),
        "create",
        {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hi!", "stream_format": "sse"},
        "audio_speech",
        {
            "cmdrdata.usage.input_characters": 3,
            "gen_ai.usage.input_tokens": 8,
            "gen_ai.usage.output_tokens": 40,
            "cmdrdata.usage.total_tokens": 48,
        },
    ),
    Case(
        "moderations.create",
        ("moderations",),
        "create",
        {"model": "omni-moderation-latest", "input": "hello"},
        "moderation",
        {},
    ),
]

MODES = ["plain", "raw", "streaming_response"]


def resource(client: Any, case: Case, mode: str) -> Any:
    obj = client
    for part in case.path:
        obj = getattr(obj, part)
    if mode == "raw":
        obj = obj.with_raw_response
    elif mode == "streaming_response":
        obj = obj.with_streaming_response
    return obj


def usage_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in attrs.items()
        if k.startswith(("gen_ai.usage.", "cmdrdata.usage."))
        and k not in ("cmdrdata.usage.source",)
    }


def consume_sync(case: Case, client: Any, mode: str, stream: bool) -> tuple[Any, list[Any]]:
    kwargs = {**case.kwargs, "customer_id": "cust-42"}
    if stream:
        kwargs["stream"] = True
    method = getattr(resource(client, case, mode), case.method)
    if mode == "plain":
        result = method(**kwargs)
    elif mode == "raw":
        raw = method(**kwargs)
        assert isinstance(raw, openai._legacy_response.LegacyAPIResponse)
        result = raw.parse()
    else:
        with method(**kwargs) as response:
            assert isinstance(response, openai._response.APIResponse)
            result = response.parse()
            items = list(result) if stream else []
            return result, items
    items = list(result) if stream else []
    return result, items


async def consume_async(case: Case, client: Any, mode: str, stream: bool) -> tuple[Any, list[Any]]:
    kwargs = {**case.kwargs, "customer_id": "cust-42"}
    if stream:
        kwargs["stream"] = True
    method = getattr(resource(client, case, mode), case.method)
    if mode == "plain":
        result = await method(**kwargs)
    elif mode == "raw":
        raw = await method(**kwargs)
        result = raw.parse()
        if inspect.isawaitable(result):
            result = await result
    else:
        async with method(**kwargs) as response:
            assert isinstance(response, openai._response.AsyncAPIResponse)
            result = await response.parse()
            items = [item async for item in result] if stream else []
            return result, items
    items = [item async for item in result] if stream else []
    return result, items


def matrix() -> list[Any]:
    params = []
    for case in CASES:
        for mode in MODES:
            for stream in (False, True):
                if stream and case.stream_usage is None:
                    continue
                params.append(
                    pytest.param(
                        case, mode, stream, id=f"{case.id}-{mode}-{'stream' if stream else 'once'}"
                    )
                )
    return params


def check(
    case: Case, stream: bool, spans: Spans, fake: FakeOpenAI, result: Any, items: list[Any]
) -> None:
    attrs = spans.attrs()
    span = spans.one()
    expected = case.stream_usage if stream else case.usage
    assert usage_attributes(attrs) == expected
    assert attrs["gen_ai.operation.name"] == case.operation
    assert span.name == f"{case.operation} {case.model}"
    assert span.kind.name == "CLIENT"
    assert attrs["gen_ai.provider.name"] == "openai_compatible"  # a host it cannot name
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == fake.port
    assert attrs["cmdrdata.customer.id"] == "cust-42"
    assert attrs["cmdrdata.customer.source"] == "argument"
    assert attrs["gen_ai.request.model"] == case.model
    assert span.status.is_ok
    if case.response_model:
        assert attrs["gen_ai.response.model"] == case.response_model
    if case.finish_reasons:
        assert tuple(attrs["gen_ai.response.finish_reasons"]) == case.finish_reasons
    # the agent's keyword argument never reaches OpenAI
    sent = fake.requests[-1]
    assert "customer_id" not in (sent.json or {}) and "customer_id" not in (sent.form or {})
    assert len(fake.requests) == 1
    if stream:
        assert attrs["cmdrdata.stream.outcome"] == "completed"
        assert attrs["gen_ai.response.time_to_first_chunk"] >= 0
        if case.path[-1] in ("completions",):
            # usage was asked for, and its extra chunk hidden from the caller
            assert sent.json["stream_options"] == {"include_usage": True}
            assert all(item.choices for item in items)
    else:
        assert not isinstance(result, openai.Stream | openai.AsyncStream)


@pytest.mark.parametrize(("case", "mode", "stream"), matrix())
def test_sync(
    case: Case, mode: str, stream: bool, client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    result, items = consume_sync(case, client, mode, stream)
    if stream:
        assert isinstance(result, openai.Stream)
        assert items
    check(case, stream, spans, fake, result, items)


@pytest.mark.parametrize(("case", "mode", "stream"), matrix())
async def test_async(
    case: Case, mode: str, stream: bool, aclient: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    result, items = await consume_async(case, aclient, mode, stream)
    if stream:
        assert isinstance(result, openai.AsyncStream)
        assert items
    check(case, stream, spans, fake, result, items)
