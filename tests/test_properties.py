"""Property-based tests: no response shape, stream chunking or span content crashes the agent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmdrdata_autotrack.attribution.resolve import clean_metadata
from cmdrdata_autotrack.instrumentation.openai.observers import BodyObserver, SSEObserver
from cmdrdata_autotrack.usage import extract
from cmdrdata_autotrack.usage.event import build_event

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=25,
)
usage_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
        "input_token_details",
        "cached_tokens",
        "reasoning_tokens",
        "type",
        "seconds",
    ]
)
usage_like = st.recursive(
    scalars,
    lambda children: st.dictionaries(usage_keys, children, max_size=6),
    max_leaves=20,
)
response_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_like,
        "model": json_like,
        "usage": usage_like,
        "choices": json_like,
        "data": json_like,
        "status": json_like,
        "output": json_like,
        "duration": json_like,
        "service_tier": json_like,
        "size": json_like,
    },
)
EXTRACTORS = [
    extract.extract_chat,
    extract.extract_responses,
    extract.extract_embeddings,
    extract.extract_images,
    extract.extract_audio_text,
    extract.extract_moderation,
]


def _counts_are_sane(usage: Any) -> None:
    if usage is None:
        return
    for name in (
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_input_tokens",
        "image_count",
    ):
        value = getattr(usage, name)
        assert value is None or (isinstance(value, int) and 0 <= value <= extract.MAX_COUNT)


@SETTINGS
@given(response_like)
def test_extractors_never_crash_on_json(response: dict[str, Any]) -> None:
    for extractor in EXTRACTORS:
        usage, info = extractor(response)
        _counts_are_sane(usage)
        assert info.model is None or isinstance(info.model, str)
    for family in ("chat", "completions", "responses", "images", "audio_text", "speech"):
        extract.extract_stream_event(family, response)


@pytest.mark.drives_sdk
@SETTINGS
@given(st.builds(dict, usage=usage_like), st.integers(min_value=0, max_value=5))
def test_extractors_never_crash_on_sdk_objects(payload: dict[str, Any], choices: int) -> None:
    """Objects the SDK builds without validation (its construct path) from any payload."""
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    for model in (ChatCompletion, Response, CreateEmbeddingResponse):
        obj = model.construct(**payload, choices=[{"finish_reason": "stop"}] * choices)
        for extractor in EXTRACTORS:
            usage, _ = extractor(obj)
            _counts_are_sane(usage)


def _stream(tokens: int) -> tuple[bytes, bytes]:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m", "usage": None}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": f"w{i}"}}]} for i in range(tokens)
    ]
    usage = {
        **chunk,
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens},
    }
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    usage_event = b"data: " + json.dumps(usage).encode() + b"\n\n"
    return body + usage_event + b"data: [DONE]\n\n", usage_event


@SETTINGS
@given(
    st.integers(min_value=0, max_value=12),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_sse_observer_any_chunking(tokens: int, cuts: list[int]) -> None:
    stream, usage_event = _stream(tokens)
    for hide in (True, False):
        observer = SSEObserver("chat", hide_usage_chunk=hide)
        out, position, index = b"", 0, 0
        while position < len(stream):
            size = cuts[index % len(cuts)]
            out += observer.feed(stream[position : position + size])
            position += size
            index += 1
        out += observer.flush()
        assert out == (stream.replace(usage_event, b"") if hide else stream)
        assert observer.usage is not None and observer.usage.output_tokens == tokens
    # without the usage chunk, the deltas are counted for the estimate, however chunked
    bare = stream.replace(usage_event, b"")
    observer = SSEObserver("chat", hide_usage_chunk=False)
    for index in range(0, len(bare), cuts[0]):
        observer.feed(bare[index : index + cuts[0]])
    observer.flush()
    assert observer.usage is None and observer.content_events == tokens


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=20), st.booleans())
def test_sse_observer_never_crashes_and_loses_no_bytes(chunks: list[bytes], hide: bool) -> None:
    observer = SSEObserver("responses", hide_usage_chunk=hide)
    out = b"".join(observer.feed(c) for c in chunks) + observer.flush()
    if not hide:
        assert out == b"".join(chunks)
    else:
        assert len(out) <= len(b"".join(chunks))


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_body_observer_never_crashes(chunks: list[bytes]) -> None:
    observer = BodyObserver(extract.extract_chat)
    for chunk in chunks:
        assert observer.feed(chunk) == chunk
    observer.result()


attribute_values = st.one_of(
    scalars,
    st.lists(st.one_of(st.text(max_size=10), st.integers(), st.booleans()), max_size=4),
)
attribute_keys = st.one_of(
    st.sampled_from(
        [
            "cmdrdata.customer.id",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "cmdrdata.usage.total_tokens",
            "gen_ai.response.model",
            "gen_ai.request.model",
            "gen_ai.response.finish_reasons",
            "gen_ai.response.time_to_first_chunk",
            "cmdrdata.usage.audio_seconds",
            "cmdrdata.usage.image_size",
            "error.type",
            "http.response.status_code",
        ]
    ),
    st.text(max_size=20).map(lambda k: "cmdrdata.metadata." + k),
)


@SETTINGS
@given(
    st.dictionaries(attribute_keys, attribute_values, max_size=12),
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**63),
    st.integers(min_value=0, max_value=2**63),
)
def test_any_span_gives_a_clean_json_event(
    attributes: dict[str, Any], trace_id: int, span_id: int, start: int, end: int
) -> None:
    event = build_event(
        attributes, trace_id=trace_id, span_id=span_id, start_ns=start, end_ns=end, ok=True
    )
    text = json.dumps(event, allow_nan=False)
    assert json.loads(text)["event_id"] == event["event_id"]
    assert isinstance(event["customer_id"], str) and 0 < len(event["customer_id"]) <= 256
    assert event["customer_id"].isprintable()
    assert event["total_tokens"] >= event["input_tokens"] + event["output_tokens"] >= 0
    assert len(event["metadata"]) <= 64


@SETTINGS
@given(st.dictionaries(st.text(max_size=20), json_like, max_size=80))
def test_hostile_metadata_is_bounded_and_serialisable(metadata: dict[str, Any]) -> None:
    cleaned = clean_metadata(metadata)
    assert len(cleaned) <= 64
    json.dumps(cleaned)
    for key, value in cleaned.items():
        assert key.isprintable() and len(key) <= 128
        assert not isinstance(value, str) or len(value) <= 1024
