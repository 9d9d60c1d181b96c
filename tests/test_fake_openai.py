"""Self-test of the fake OpenAI server, driven by the real ``openai`` SDK."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import struct
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pydantic
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.responses import FunctionToolParam

from fake_openai import (
    DEFAULT_TRANSCRIPT,
    SPEECH_BYTES,
    FakeOpenAI,
    delay,
    drop_connection,
    iter_sse,
    no_usage,
    reject_stream_options,
    sse_error,
    start_server,
    status,
    stream_cut,
)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say this is a test"}]
FAST_RETRY = {"retry-after-ms": "1"}
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": WEATHER_PARAMETERS,
        },
    }
]
RESPONSES_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_current_weather",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}


class Weather(pydantic.BaseModel):
    city: str
    degrees: int
    sunny: bool


@pytest.fixture(autouse=True)
def _agent_passthrough() -> Iterator[None]:
    """These tests check the fake server, not the agent: keep a running agent out of the calls.

    (The suite's conftest starts the agent for the whole session; a paused agent
    passes calls straight to the SDK.)
    """
    try:
        from cmdrdata_autotrack import agent
    except ImportError:
        yield
        return
    runtime = getattr(agent.get(), "runtime", None)
    if runtime is None or not hasattr(runtime, "metering"):
        yield
        return
    previous = runtime.metering
    runtime.metering = False
    try:
        yield
    finally:
        runtime.metering = previous


@pytest.fixture
def fake_api() -> Iterator[FakeOpenAI]:
    fake = start_server()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def sdk(fake_api: FakeOpenAI) -> Iterator[openai.OpenAI]:
    instance = openai.OpenAI(base_url=fake_api.base_url, api_key="test", max_retries=0)
    try:
        yield instance
    finally:
        instance.close()


@pytest_asyncio.fixture
async def async_sdk(fake_api: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    instance = openai.AsyncOpenAI(base_url=fake_api.base_url, api_key="test", max_retries=0)
    try:
        yield instance
    finally:
        await instance.close()


@contextlib.contextmanager
def _sdk_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def raw_post(fake_api: FakeOpenAI, path: str, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """POST with the stdlib, to check the bytes on the wire."""
    connection = http.client.HTTPConnection(fake_api.host, fake_api.port, timeout=10)
    try:
        connection.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        headers[":status"] = str(response.status)
        return headers, response.read()
    finally:
        connection.close()


# --------------------------------------------------------------------------- chat completions


def test_chat_completion_shape_and_default_usage(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.service_tier == "default"
    assert completion.system_fingerprint
    assert completion.choices[0].message.content == "Hello from the fake server."
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (17, 9, 26)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.prompt_tokens_details.audio_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert raw.headers["x-request-id"] == fake_api.last_request.request_id
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["openai-processing-ms"]) >= 1
    request = fake_api.last_request
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json == {"model": "gpt-4o-mini", "messages": USER}
    assert request.headers["authorization"] == "Bearer test"
    assert request.retry_count == 0


def test_chat_completion_choices_length_and_custom_usage(
    fake_api: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    fake_api.usage.prompt_tokens = 1234
    fake_api.usage.completion_tokens = 4321
    fake_api.usage.cached_tokens = 1000
    completion = sdk.chat.completions.create(model="gpt-4", messages=USER, n=3, max_tokens=2)
    assert completion.model == "gpt-4-0613"
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"Hello from"}
    assert {c.finish_reason for c in completion.choices} == {"length"}
    assert completion.usage is not None
    assert completion.usage.total_tokens == 1234 + 4321
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000


def test_chat_stream_without_usage_chunk(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks] == [
        "",
        "Hello",
        " from",
        " the",
        " fake",
        " server.",
        None,
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1

    headers, body = raw_post(
        fake_api, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    )
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["transfer-encoding"] == "chunked"
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    events = list(iter_sse(body))
    assert len(events) == 8
    assert all(event is None for event, _ in events)
    assert all("usage" not in json.loads(data) for _, data in events[:-1])


def test_chat_stream_with_usage_chunk(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.reply_text = "One two three"
    with sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "One two three"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (17, 3)
    assert last.usage.total_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])

    _, body = raw_post(
        fake_api,
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    datas = [json.loads(data) for _, data in iter_sse(body) if data != "[DONE]"]
    assert all(d["usage"] is None for d in datas[:-1])
    assert datas[-1]["choices"] == []


def test_chat_stream_multiple_choices(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, str | None] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert texts == {0: "Hello from the fake server.", 1: "Hello from the fake server."}
    assert finishes == {0: "stop", 1: "stop"}
    assert usage is not None
    assert usage.completion_tokens == 10


def test_chat_stream_helper(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello from the fake server."
    assert final.usage is not None
    assert final.usage.completion_tokens == 5


def test_chat_tool_calls(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "fake"}

    followup = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            *USER,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "20 degrees"},
        ],
        tools=TOOLS,
    )
    assert followup.choices[0].message.content == "Hello from the fake server."
    none = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=USER, tools=TOOLS, tool_choice="none"
    )
    assert none.choices[0].finish_reason == "stop"

    with sdk.chat.completions.stream(model="gpt-4o-mini", messages=USER, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    tool_calls = final.choices[0].message.tool_calls
    assert tool_calls is not None
    assert json.loads(tool_calls[0].function.arguments) == {"location": "fake"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_chat_parse_structured_output(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    parsed = sdk.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather(city="fake", degrees=1, sunny=True)
    fake_api.reply_text = '{"city": "Paris", "degrees": 21, "sunny": false}'
    parsed = sdk.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather(city="Paris", degrees=21, sunny=False)


def test_stream_options_without_stream_is_rejected(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True}
        )
    assert error.value.param == "stream_options"


# --------------------------------------------------------------------------- legacy completions


def test_legacy_completions(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Hello from the fake server."
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 17,
        "completion_tokens": 9,
        "total_tokens": 26,
    }
    chunks = list(
        sdk.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say hi",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello from the fake server."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


# --------------------------------------------------------------------------- responses


def test_responses_create(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="gpt-4o-mini", input="Say this is a test", instructions="Be brief."
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.service_tier == "default"
    assert response.instructions == "Be brief."
    assert response.output_text == "Hello from the fake server."
    assert [item.type for item in response.output] == ["message"]
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (17, 9, 26)
    assert usage.input_tokens_details.cached_tokens == 5
    assert usage.output_tokens_details.reasoning_tokens == 3

    reasoning = sdk.responses.create(
        model="o4-mini", input="Think", reasoning={"effort": "low"}, max_output_tokens=2
    )
    assert [item.type for item in reasoning.output] == ["reasoning", "message"]
    assert reasoning.status == "incomplete"
    assert reasoning.incomplete_details is not None
    assert reasoning.incomplete_details.reason == "max_output_tokens"
    assert reasoning.output_text == "Hello from"


def test_responses_stream_events(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 5,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 5
    assert completed.response.usage.total_tokens == 22
    assert events[0].type == "response.created"
    assert events[0].response.usage is None

    _, body = raw_post(
        fake_api, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True}
    )
    pairs = list(iter_sse(body))
    assert all(event == json.loads(data)["type"] for event, data in pairs)
    assert b"[DONE]" not in body


def test_responses_stream_helper_and_parse(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="gpt-4o-mini", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the fake server."
    assert final.usage is not None
    assert final.usage.output_tokens == 5

    parsed = sdk.responses.parse(model="gpt-4o-mini", input="weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="fake", degrees=1, sunny=True)
    fake_api.reply_text = '{"city": "Oslo", "degrees": -3, "sunny": true}'
    parsed = sdk.responses.parse(model="gpt-4o-mini", input="weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", degrees=-3, sunny=True)
    assert fake_api.last_request.json["text"]["format"]["type"] == "json_schema"


def test_responses_function_call(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="gpt-4o-mini", input="weather?", tools=[RESPONSES_TOOL])
    item = response.output[0]
    assert item.type == "function_call"
    assert item.name == "get_current_weather"
    assert json.loads(item.arguments) == {"location": "fake"}
    followup = sdk.responses.create(
        model="gpt-4o-mini",
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "20C"}],
        tools=[RESPONSES_TOOL],
    )
    assert followup.output_text == "Hello from the fake server."
    with sdk.responses.stream(
        model="gpt-4o-mini", input="weather?", tools=[RESPONSES_TOOL]
    ) as stream:
        final = stream.get_final_response()
    streamed = final.output[0]
    assert streamed.type == "function_call"
    assert json.loads(streamed.arguments) == {"location": "fake"}


# --------------------------------------------------------------------------- embeddings


def test_embeddings(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    default = sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    # The SDK asks for base64 when no encoding_format is given, and decodes it.
    assert fake_api.last_request.json["encoding_format"] == "base64"
    assert len(default.data[0].embedding) == 1536
    assert default.usage.model_dump() == {"prompt_tokens": 17, "total_tokens": 17}
    assert default.model == "text-embedding-3-small"

    floats = sdk.embeddings.create(
        model="text-embedding-3-small",
        input=["a", "b", "c"],
        dimensions=8,
        encoding_format="float",
    )
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in floats.data)
    decoded = sdk.embeddings.create(
        model="text-embedding-3-small", input=["a", "b", "c"], dimensions=8
    )
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]

    raw = sdk.embeddings.create(model="text-embedding-3-large", input="x", encoding_format="base64")
    vector = raw.data[0].embedding
    assert isinstance(vector, str)
    assert len(struct.unpack(f"<{3072}f", base64.b64decode(vector))) == 3072


# --------------------------------------------------------------------------- images


def test_images(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    dalle = sdk.images.generate(model="dall-e-3", prompt="a cat", n=1)
    assert dalle.data is not None
    assert dalle.data[0].url is not None
    assert dalle.data[0].url.startswith(fake_api.root_url)
    assert dalle.data[0].revised_prompt
    assert dalle.usage is None

    generated = sdk.images.generate(model="gpt-image-1", prompt="a cat", n=2, quality="low")
    assert generated.data is not None
    assert len(generated.data) == 2
    assert generated.data[0].b64_json is not None
    assert base64.b64decode(generated.data[0].b64_json).startswith(b"\x89PNG")
    assert (generated.size, generated.quality, generated.output_format) == (
        "1024x1024",
        "low",
        "png",
    )
    assert generated.usage is not None
    assert generated.usage.input_tokens == 34
    assert generated.usage.input_tokens_details.text_tokens == 13
    assert generated.usage.input_tokens_details.image_tokens == 21
    assert (generated.usage.output_tokens, generated.usage.total_tokens) == (272, 306)

    edited = sdk.images.edit(
        model="gpt-image-1", image=("in.png", b"\x89PNG fake", "image/png"), prompt="add a hat"
    )
    assert edited.usage is not None
    form = fake_api.last_request.form
    assert form is not None
    assert form["prompt"] == "add a hat"
    assert form["model"] == "gpt-image-1"
    assert form["image"].filename == "in.png"
    assert form["image"].data == b"\x89PNG fake"

    with _sdk_deprecations():  # openai 3.x deprecates variations
        variation = sdk.images.create_variation(
            image=("in.png", b"\x89PNG fake", "image/png"), response_format="b64_json"
        )
    assert variation.data is not None
    assert variation.data[0].b64_json is not None
    assert variation.usage is None

    events = list(
        sdk.images.generate(model="gpt-image-1", prompt="a cat", stream=True, partial_images=2)
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    completed = events[-1]
    assert completed.type == "image_generation.completed"
    assert completed.usage.total_tokens == 306


# --------------------------------------------------------------------------- audio


AUDIO = ("speech.wav", b"RIFF\x00\x00\x00\x00WAVEfake", "audio/wav")


def test_transcriptions(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    tokens = sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO)
    assert tokens.text == DEFAULT_TRANSCRIPT
    assert tokens.usage is not None
    assert tokens.usage.type == "tokens"
    assert tokens.usage.model_dump() == {
        "type": "tokens",
        "input_tokens": 27,
        "input_token_details": {"text_tokens": 4, "audio_tokens": 23},
        "output_tokens": 11,
        "total_tokens": 38,
    }
    form = fake_api.last_request.form
    assert form is not None
    assert form["file"].data == AUDIO[1]
    assert form["file"].content_type == "audio/wav"

    whisper = sdk.audio.transcriptions.create(model="whisper-1", file=AUDIO)
    assert whisper.usage is not None
    assert whisper.usage.model_dump() == {"type": "duration", "seconds": 7.0}

    text = sdk.audio.transcriptions.create(model="whisper-1", file=AUDIO, response_format="text")
    assert text == DEFAULT_TRANSCRIPT

    verbose = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=AUDIO,
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert verbose.duration == 7.0
    assert verbose.language == "english"
    assert verbose.words is not None
    assert len(verbose.words) == 9

    events = list(
        sdk.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=AUDIO, stream=True)
    )
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * 9
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert done.text == DEFAULT_TRANSCRIPT
    assert done.usage is not None
    assert done.usage.total_tokens == 38


def test_translations_and_speech(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.transcript_text = "Bonjour means hello."
    with _sdk_deprecations():  # openai 3.x deprecates translations
        translation = sdk.audio.translations.create(model="whisper-1", file=AUDIO)
        verbose = sdk.audio.translations.create(
            model="whisper-1", file=AUDIO, response_format="verbose_json"
        )
        text = sdk.audio.translations.create(model="whisper-1", file=AUDIO, response_format="text")
    assert translation.text == "Bonjour means hello."
    assert verbose.duration == 7.0
    assert text == "Bonjour means hello."

    speech = sdk.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi")
    assert speech.content == SPEECH_BYTES
    assert speech.response.headers["content-type"] == "audio/mpeg"

    sse = sdk.audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hi", stream_format="sse"
    )
    events = [json.loads(data) for _, data in iter_sse(sse.content)]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.done"]
    assert events[-1]["usage"] == {"input_tokens": 8, "output_tokens": 40, "total_tokens": 48}


# ----------------------------------------------------------------- moderations, 404, Azure


def test_moderations(sdk: openai.OpenAI) -> None:
    result = sdk.moderations.create(input=["one", "two"])
    assert result.id.startswith("modr-")
    assert result.model == "omni-moderation-2024-09-26"
    assert len(result.results) == 2
    first = result.results[0]
    assert first.flagged is False
    assert first.categories.self_harm is False
    assert first.category_scores.violence_graphic > 0
    assert first.category_applied_input_types.violence == ["text"]


def test_unknown_path_is_openai_shaped_404(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        sdk.models.list()
    assert error.value.body == {
        "message": "Invalid URL (GET /v1/models)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert error.value.request_id == fake_api.last_request.request_id


def test_azure_paths(fake_api: FakeOpenAI) -> None:
    azure = openai.AzureOpenAI(
        azure_endpoint=fake_api.root_url,
        api_version="2024-10-21",
        api_key="azure-key",
        max_retries=0,
    )
    try:
        completion = azure.chat.completions.create(model="my-deployment", messages=USER)
        assert completion.choices[0].message.content == "Hello from the fake server."
        request = fake_api.last_request
        assert request.path == "/openai/deployments/my-deployment/chat/completions"
        assert request.query == {"api-version": "2024-10-21"}
        assert request.headers["api-key"] == "azure-key"

        embedding = azure.embeddings.create(model="emb-deployment", input="x", dimensions=4)
        assert len(embedding.data[0].embedding) == 4
        assert fake_api.last_request.path == "/openai/deployments/emb-deployment/embeddings"

        fake_api.azure_mode = True
        chunks = list(
            azure.chat.completions.create(
                model="my-deployment",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices == []
        assert chunks[0].usage is None
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
    finally:
        azure.close()


# --------------------------------------------------------------------------- faults


def test_status_faults(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(status(429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as rate_limited:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert rate_limited.value.status_code == 429
    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.type == "requests"
    assert rate_limited.value.response.headers["retry-after"] == "7"

    fake_api.enqueue(status(401))
    fake_api.enqueue(status(500, message="boom"))
    fake_api.enqueue(status(404))
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    with pytest.raises(openai.InternalServerError) as internal:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert "boom" in internal.value.message
    assert internal.value.body == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="nope", messages=USER)
    assert missing.value.code == "model_not_found"
    assert "`nope`" in missing.value.message
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=USER).choices


def test_fault_path_and_times(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(status(400, path="/embeddings", times=2))
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=USER).choices
    for _ in range(2):
        with pytest.raises(openai.BadRequestError):
            sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert sdk.embeddings.create(model="text-embedding-3-small", input="x").data

    fake_api.enqueue(status(503, times=None))
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            sdk.embeddings.create(model="text-embedding-3-small", input="x")
    fake_api.reset()
    assert fake_api.requests == []
    assert fake_api.pending_faults == []
    assert sdk.embeddings.create(model="text-embedding-3-small", input="x").data


def test_retry_after_500(fake_api: FakeOpenAI) -> None:
    fake_api.enqueue(status(500, headers=FAST_RETRY))
    with openai.OpenAI(base_url=fake_api.base_url, api_key="test", max_retries=2) as retrying:
        completion = retrying.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.choices[0].message.content == "Hello from the fake server."
    assert [r.retry_count for r in fake_api.requests] == [0, 1]
    assert [r.headers["x-stainless-retry-count"] for r in fake_api.requests] == ["0", "1"]


def test_delay_triggers_timeout_without_blocking_others(
    fake_api: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    fake_api.enqueue(delay(30, path="/chat/completions"))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk.with_options(timeout=0.3).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert time.monotonic() - started < 10
    assert sdk.embeddings.create(model="text-embedding-3-small", input="x").data

    fake_api.enqueue(delay(0.05))
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=USER).choices


def test_stop_interrupts_a_delay() -> None:
    fake = start_server()
    fake.enqueue(delay(60))
    outcome: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as sdk:
            try:
                sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
            except openai.APIConnectionError as error:
                outcome.append(error)

    worker = threading.Thread(target=call)
    worker.start()
    assert fake.wait_for_requests(1)
    started = time.monotonic()
    fake.stop()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert len(outcome) == 1


def test_drop_connection(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(drop_connection())
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    fake_api.enqueue(drop_connection())
    with openai.OpenAI(base_url=fake_api.base_url, api_key="test", max_retries=1) as retrying:
        assert retrying.embeddings.create(model="text-embedding-3-small", input="x").data
    assert [r.retry_count for r in fake_api.requests[-2:]] == [0, 1]


def test_stream_cut(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(stream_cut(after_chunks=3))
    received = []
    with (
        pytest.raises(Exception) as error,
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream,
    ):
        for chunk in stream:
            received.append(chunk)
    assert "RemoteProtocolError" in type(error.value).__name__ or isinstance(
        error.value, openai.APIConnectionError
    )
    assert len(received) == 3
    # The server keeps serving after a cut.
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=USER).choices

    fake_api.enqueue(stream_cut())
    with pytest.raises(openai.APIConnectionError):  # a truncated JSON body
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)


def test_no_usage(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(no_usage())
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.usage is None
    assert "usage" not in completion.model_dump(exclude_unset=True)

    fake_api.enqueue(no_usage())
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)

    fake_api.enqueue(no_usage(times=2))
    response = sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert response.usage is None
    events = list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is None

    fake_api.enqueue(no_usage())
    embeddings = sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert "usage" not in embeddings.model_dump(exclude_unset=True)


def test_reject_stream_options(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(reject_stream_options(times=None))
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    assert error.value.param == "stream_options"
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sse_error(fake_api: FakeOpenAI, sdk: openai.OpenAI) -> None:
    fake_api.enqueue(sse_error("kaboom"))
    received = []
    with pytest.raises(openai.APIError) as error:
        for chunk in sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True):
            received.append(chunk)
    assert len(received) == 1
    assert error.value.message == "kaboom"

    fake_api.enqueue(sse_error("kaboom"))
    events = list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert [e.type for e in events] == ["response.created", "error"]
    assert events[-1].type == "error"
    assert events[-1].message == "kaboom"


# --------------------------------------------------------------------------- async


@pytest.mark.asyncio
async def test_async_chat_stream_and_responses(
    fake_api: FakeOpenAI, async_sdk: openai.AsyncOpenAI
) -> None:
    stream = await async_sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5

    response = await async_sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert response.output_text == "Hello from the fake server."
    events = [
        e
        async for e in await async_sdk.responses.create(
            model="gpt-4o-mini", input="hi", stream=True
        )
    ]
    assert events[-1].type == "response.completed"
    assert fake_api.last_request.headers["x-stainless-async"].startswith("async")


@pytest.mark.asyncio
async def test_async_embeddings_and_faults(
    fake_api: FakeOpenAI, async_sdk: openai.AsyncOpenAI
) -> None:
    embeddings = await async_sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(embeddings.data) == 2
    fake_api.enqueue(delay(30))
    with pytest.raises(openai.APITimeoutError):
        await async_sdk.with_options(timeout=0.3).embeddings.create(
            model="text-embedding-3-small", input="x"
        )
    fake_api.enqueue(status(429, headers=FAST_RETRY))
    retrying = async_sdk.with_options(max_retries=1)
    completion = await retrying.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.choices
    assert [r.retry_count for r in fake_api.requests[-2:]] == [0, 1]
