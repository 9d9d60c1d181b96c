"""The pure extraction functions, on the shapes OpenAI sends (as dicts and as SDK objects)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cmdrdata_autotrack.instrumentation.openai import request as R
from cmdrdata_autotrack.instrumentation.openai.observers import (
    BodyObserver,
    SSEObserver,
    event_data,
)
from cmdrdata_autotrack.usage import extract
from cmdrdata_autotrack.usage.estimate import estimate_input_tokens, tokens_for_chars
from cmdrdata_autotrack.usage.model import Usage

# Shapes as recorded from the real API (chat with details; responses with cache and reasoning).
CHAT = {
    "id": "chatcmpl-ASv9R2E7Yhb2e7bj4Xl0qEQ8q4lY",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "y"}, "finish_reason": "length"},
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 40,
        "total_tokens": 1240,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 12,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 2,
            "rejected_prediction_tokens": 1,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_0ba0d124f1",
}
RESPONSE = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "status": "completed",
    "model": "gpt-4o-2024-08-06",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
    "service_tier": "default",
    "usage": {
        "input_tokens": 2006,
        "input_tokens_details": {"cached_tokens": 1920},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 256},
        "total_tokens": 2306,
    },
}


def test_chat_usage_and_facts() -> None:
    usage, info = extract.extract_chat(CHAT)
    assert usage == Usage(
        input_tokens=1200,
        output_tokens=40,
        total_tokens=1240,
        cached_input_tokens=1024,
        input_audio_tokens=0,
        reasoning_tokens=12,
        output_audio_tokens=0,
        accepted_prediction_tokens=2,
        rejected_prediction_tokens=1,
    )
    assert info.model == "gpt-4o-mini-2024-07-18"
    assert info.finish_reasons == ["stop", "length"]
    assert info.service_tier == "default"
    assert info.system_fingerprint == "fp_0ba0d124f1"


def test_chat_from_sdk_object_equals_from_json() -> None:
    from openai.types.chat import ChatCompletion

    obj = ChatCompletion.model_validate({**CHAT, "created": 1})
    assert extract.extract_chat(obj) == extract.extract_chat(CHAT)


def test_responses_usage() -> None:
    usage, info = extract.extract_responses(RESPONSE)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens) == (2006, 1920)
    assert (usage.output_tokens, usage.reasoning_tokens, usage.total_tokens) == (300, 256, 2306)
    assert info.finish_reasons == ["stop"]


@pytest.mark.parametrize(
    ("response", "reasons"),
    [
        (
            {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
            ["max_output_tokens"],
        ),
        ({"status": "failed"}, ["error"]),
        ({"status": "completed", "output": [{"type": "function_call"}]}, ["tool_calls"]),
        ({"status": "in_progress"}, []),
    ],
)
def test_responses_finish_reasons(response: dict[str, Any], reasons: list[str]) -> None:
    assert extract.responses_finish_reasons(response) == reasons


def test_image_usage_counts_images_and_tokens() -> None:
    usage, _ = extract.extract_images(
        {
            "data": [{"b64_json": "x"}, {"b64_json": "y"}],
            "size": "1024x1024",
            "quality": "high",
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
                "output_tokens": 4160,
                "total_tokens": 4210,
            },
        }
    )
    assert usage is not None
    assert (usage.image_count, usage.image_size, usage.image_quality) == (2, "1024x1024", "high")
    assert (usage.input_text_tokens, usage.input_image_tokens, usage.output_tokens) == (
        10,
        40,
        4160,
    )


def test_audio_usage_tokens_duration_and_verbose() -> None:
    tokens, _ = extract.extract_audio_text(
        {
            "text": "x",
            "usage": {
                "type": "tokens",
                "input_tokens": 27,
                "input_token_details": {"text_tokens": 4, "audio_tokens": 23},
                "output_tokens": 11,
                "total_tokens": 38,
            },
        }
    )
    assert tokens is not None and (tokens.input_audio_tokens, tokens.output_tokens) == (23, 11)
    duration, _ = extract.extract_audio_text(
        {"text": "x", "usage": {"type": "duration", "seconds": 7}}
    )
    assert duration == Usage(audio_seconds=7.0)
    verbose, _ = extract.extract_audio_text({"text": "x", "duration": 3.5})
    assert verbose == Usage(audio_seconds=3.5)


@pytest.mark.parametrize(
    "value", [None, True, -1, 2**41, float("nan"), float("inf"), "12", 1.5, [], {}]
)
def test_malformed_counts_are_not_reported(value: Any) -> None:
    usage = extract.usage_from_completion_tokens({"prompt_tokens": value, "completion_tokens": 3})
    assert usage is not None and usage.input_tokens is None and usage.output_tokens == 3


@pytest.mark.parametrize(
    "shape", [None, 1, "x", [], {"usage": 5}, {"usage": {"prompt_tokens_details": 3}}]
)
def test_extractors_never_raise(shape: Any) -> None:
    for extractor in (
        extract.extract_chat,
        extract.extract_responses,
        extract.extract_embeddings,
        extract.extract_images,
        extract.extract_audio_text,
        extract.extract_moderation,
    ):
        extractor(shape)


# --- request side -------------------------------------------------------------------------


def test_request_attributes_follow_the_conventions() -> None:
    attrs = R.request_attributes(
        {
            "model": "gpt-4o",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 100,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "seed": 42,
            "n": 2,
            "stop": "END",
            "service_tier": "flex",
            "response_format": {"type": "json_object"},
            "messages": [],
        },
        None,
    )
    assert attrs == {
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 100,
        "gen_ai.request.presence_penalty": 0.1,
        "gen_ai.request.frequency_penalty": 0.3,
        "gen_ai.request.seed": 42,
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.stop_sequences": ["END"],
        "openai.request.service_tier": "flex",
        "gen_ai.output.type": "json",
    }


def test_request_attributes_ignore_sdk_sentinels() -> None:
    import openai

    attrs = R.request_attributes({"model": "m", "temperature": openai.NOT_GIVEN, "n": 1}, None)
    assert attrs == {"gen_ai.request.model": "m"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1", {"server.address": "api.openai.com"}),
        ("http://127.0.0.1:8080/v1", {"server.address": "127.0.0.1", "server.port": 8080}),
        ("http://proxy.local/v1", {"server.address": "proxy.local", "server.port": 80}),
    ],
)
def test_server_attributes(url: str, expected: dict[str, Any]) -> None:
    assert R.server_attributes(url) == expected


@pytest.mark.parametrize(
    ("mode", "host", "kwargs", "inject"),
    [
        ("auto", "api.openai.com", {"stream": True}, True),
        ("auto", "my-proxy.internal", {"stream": True}, False),
        ("always", "my-proxy.internal", {"stream": True}, True),
        ("never", "api.openai.com", {"stream": True}, False),
        ("always", "api.openai.com", {"stream": False}, False),
        (
            "always",
            "api.openai.com",
            {"stream": True, "stream_options": {"include_usage": False}},
            False,
        ),
        (
            "always",
            "api.openai.com",
            {"stream": True, "stream_options": {"include_obfuscation": False}},
            True,
        ),
    ],
)
def test_stream_usage_injection_policy(
    mode: str, host: str, kwargs: dict[str, Any], inject: bool
) -> None:
    assert R.should_inject_stream_usage(mode, host, kwargs) is inject


def test_estimates() -> None:
    assert tokens_for_chars(0) == 0 and tokens_for_chars(1) == 1 and tokens_for_chars(8) == 2
    messages = [
        {"role": "user", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 8}]},
    ]
    assert estimate_input_tokens({"messages": messages}) == 10 + 2 + 8
    assert estimate_input_tokens({"input": "z" * 16, "instructions": "w" * 4}) == 5
    # a generator the SDK still needs is never consumed
    gen = (m for m in messages)
    assert estimate_input_tokens({"messages": gen}) == 0
    assert next(gen) is messages[0]


# --- stream observers ---------------------------------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    out = b""
    for event in events:
        payload = event if isinstance(event, str) else json.dumps(event)
        out += b"data: " + payload.encode() + b"\n\n"
    return out


CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "model": "gpt-4o-2024",
    "usage": None,
}
STREAM = sse(
    {
        **CHUNK,
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    },
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": None}]},
    {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {
        **CHUNK,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    },
    "[DONE]",
)
USAGE_EVENT = STREAM.split(b"\n\n")[4] + b"\n\n"


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(STREAM)])
def test_sse_observer_hides_the_usage_chunk_whatever_the_chunking(size: int) -> None:
    observer = SSEObserver("chat", hide_usage_chunk=True)
    out = b"".join(observer.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size))
    out += observer.flush()
    assert out == STREAM.replace(USAGE_EVENT, b"")
    assert observer.usage is not None and observer.usage.total_tokens == 11
    assert observer.finish_reasons == ["stop"]
    assert observer.info.model == "gpt-4o-2024" and observer.info.id == "chatcmpl-1"
    assert observer.terminal


@pytest.mark.parametrize("size", [1, 5, len(STREAM)])
def test_sse_observer_passes_bytes_through_when_not_hiding(size: int) -> None:
    observer = SSEObserver("chat", hide_usage_chunk=False)
    out = b"".join(observer.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size))
    assert out + observer.flush() == STREAM
    assert observer.usage is not None and observer.usage.input_tokens == 9


def test_sse_observer_crlf_framing() -> None:
    crlf = STREAM.replace(b"\n\n", b"\r\n\r\n")
    observer = SSEObserver("chat", hide_usage_chunk=True)
    out = observer.feed(crlf) + observer.flush()
    assert b'"usage": {' not in out and observer.usage is not None


def test_sse_observer_responses_completed_event() -> None:
    body = (
        b"event: response.created\ndata: "
        + json.dumps(
            {
                "type": "response.created",
                "response": {**RESPONSE, "status": "in_progress", "usage": None},
            }
        ).encode()
        + b"\n\nevent: response.output_text.delta\ndata: "
        + json.dumps({"type": "response.output_text.delta", "delta": "hi"}).encode()
        + b"\n\nevent: response.completed\ndata: "
        + json.dumps({"type": "response.completed", "response": RESPONSE}).encode()
        + b"\n\n"
    )
    observer = SSEObserver("responses", hide_usage_chunk=False)
    assert observer.feed(body) == body
    assert observer.flush() == b""  # the end of the stream: its tail is read now
    assert observer.usage is not None and observer.usage.reasoning_tokens == 256
    assert observer.finish_reasons == ["stop"] and observer.terminal


def test_sse_observer_error_event_and_garbage() -> None:
    observer = SSEObserver("chat", hide_usage_chunk=True)
    body = sse({"error": {"message": "boom", "type": "server_error"}}) + b"data: {not json\n\n"
    assert observer.feed(body) + observer.flush() == body
    assert observer.error and observer.usage is None


def test_sse_observer_long_stream_keeps_a_bounded_tail() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"' + b"x" * 1000 + b'"}}]}\n\n'
    observer = SSEObserver("chat", hide_usage_chunk=False)
    for _ in range(2000):  # ~2 MB of stream, and no usage: deltas are counted for the estimate
        observer.feed(chunk)
    observer.flush()
    assert observer.content_events == 2000 and observer.usage is None
    with_usage = SSEObserver("chat", hide_usage_chunk=False)
    for _ in range(2000):
        with_usage.feed(chunk)
    with_usage.feed(USAGE_EVENT)
    with_usage.flush()
    assert with_usage.usage is not None and with_usage.usage.total_tokens == 11


def test_event_data() -> None:
    assert event_data(b'event: x\ndata: {"a": 1}') == {"a": 1}
    assert event_data(b": comment") is None
    assert event_data(b"data: nope") is None


def test_body_observer_small_and_large_bodies() -> None:
    small = json.dumps(CHAT).encode()
    observer = BodyObserver(extract.extract_chat)
    for i in range(0, len(small), 10):
        assert observer.feed(small[i : i + 10]) == small[i : i + 10]
    usage, info = observer.result()
    assert usage is not None and usage.cached_input_tokens == 1024 and info.model

    big = {
        "object": "list",
        "model": "text-embedding-3-large",
        "data": [{"embedding": [0.5] * 1000}] * 300,
    }
    big["usage"] = {"prompt_tokens": 321, "total_tokens": 321}
    raw = json.dumps(big).encode()
    assert len(raw) > BodyObserver.FULL
    observer = BodyObserver(extract.extract_embeddings)
    for i in range(0, len(raw), 65536):
        observer.feed(raw[i : i + 65536])
    usage, info = observer.result()
    assert usage is not None and usage.input_tokens == 321
    assert info.model == "text-embedding-3-large"
