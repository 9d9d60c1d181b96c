"""Meter-only spans: what the agent's spans are when nothing but metering reads them.

With no OpenTelemetry SDK configured by the app and no exporter, the agent makes
:class:`MeterOnlySpan` instead of SDK spans. These tests hold it to the SDK's
behaviour where metering can tell (attribute validation, status, parentage, the
record the processor journals, the event built from it) and check that the agent
goes back to SDK spans the moment anything else would read them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from test_hostile_input import CHAT, PROMPT, USAGE_CASES, chat_body

from cmdrdata_autotrack import agent
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.pipeline import journal_line
from cmdrdata_autotrack.export.processor import (
    MeteringSpanProcessor,
    resolved_attributes,
    span_record_to_event,
)
from cmdrdata_autotrack.instrumentation.openai.endpoints import ENDPOINTS
from cmdrdata_autotrack.instrumentation.openai.wrappers import endpoint_attributes
from cmdrdata_autotrack.tracing.meter_only import MeterOnlySpan, MeterOnlyTracer
from cmdrdata_autotrack.tracing.provider import TracerSource
from cmdrdata_autotrack.usage import attributes as A
from cmdrdata_autotrack.usage.event import EVENT_ID_NAMESPACE, event_id_for

from fake_openai import FakeOpenAI, raw, status

# Request parameters recorded for traces only: a meter-only span leaves them out.
TRACE_ONLY = {
    A.REQUEST_TEMPERATURE,
    A.REQUEST_TOP_P,
    A.REQUEST_MAX_TOKENS,
    A.REQUEST_SEED,
    A.REQUEST_STOP_SEQUENCES,
    A.OUTPUT_TYPE,
}
# Differ between any two calls: ids and times.
PER_CALL = {"event_id", "trace_id", "span_id", "timestamp", "started_at", "ended_at"}
PER_CALL_ATTRIBUTES = {A.OPENAI_REQUEST_ID, A.RESPONSE_ID}


class Records:
    """A sink of the metering processor: the span records it journals, as the importer
    reads them (the journal's line, its response copy read into the attributes)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.copies = 0  # records whose usage was read off the app's thread

    def __call__(self, record: dict[str, Any]) -> None:
        self.items.append(journaled(record))
        self.copies += "x" in record


def journaled(record: dict[str, Any]) -> dict[str, Any]:
    line = json.loads(journal_line(record))
    line["a"] = resolved_attributes(line)
    line.pop("x", None)
    return line


@pytest.fixture
def no_app_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app configured no OpenTelemetry SDK (the test suite's own provider is hidden,
    as OpenTelemetry holds it: no global provider set, so its proxy is handed out)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> Records:
    running = agent.get()
    assert running is not None
    sink = Records()
    monkeypatch.setattr(running.processor, "sinks", [*running.processor.sinks, sink])
    return sink


@pytest.fixture
def meter_only_agent(no_app_sdk: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerSource]:
    """The running agent as it runs in an app with no SDK: its own provider, no exporter."""
    running = agent.get()
    assert running is not None
    source = TracerSource(Settings(), [running.processor])
    monkeypatch.setattr(running.runtime, "tracers", source)
    yield source
    source.shutdown()


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    """An event less what differs between any two calls (ids, times)."""
    out = {
        k: v
        for k, v in event.items()
        if k not in PER_CALL and k not in ("timestamp_ms", "latency", "response_id")
    }
    out["request"] = {k: v for k, v in event["request"].items() if k != "id"}
    return out


def test_calls_meter_the_same_with_meter_only_spans(
    client: Any, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same call, once through the app's SDK provider and once meter-only: the same
    record (less the request's trace attributes) and the same usage event."""
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "max_tokens": 20,
        "customer_id": "acme",
        "tracking_metadata": {"plan": "pro"},
    }
    client.chat.completions.create(**kwargs)
    assert len(records.items) == 1
    sdk = records.items.pop()

    running = agent.get()
    assert running is not None
    proxy = trace.ProxyTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: proxy)
    source = TracerSource(Settings(), [running.processor])
    monkeypatch.setattr(running.runtime, "tracers", source)
    try:
        client.chat.completions.create(**kwargs)
    finally:
        source.shutdown()
    assert source.meter_only
    assert len(records.items) == 1 and records.copies == 1  # read off the app's thread
    mine = records.items.pop()

    assert set(sdk["a"]) - set(mine["a"]) == TRACE_ONLY & set(sdk["a"])
    same = TRACE_ONLY | PER_CALL_ATTRIBUTES
    assert {k: v for k, v in sdk["a"].items() if k not in same} == {
        k: v for k, v in mine["a"].items() if k not in same
    }
    assert mine["ok"] is True and mine["t"] != sdk["t"] and mine["s"] != sdk["s"]
    sdk_event = span_record_to_event(sdk, "unattributed")
    mine_event = span_record_to_event(mine, "unattributed")
    assert _comparable(sdk_event) == _comparable(mine_event)
    assert mine_event["customer_id"] == "acme" and mine_event["input_tokens"] > 0


# --- the usage read off the app's thread is the usage read on it --------------------------------

_CHAT_OK = '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}'
_OUTPUT_TEXT = {"type": "output_text", "text": "Hello there, tests!!", "annotations": []}
_MESSAGE_ITEM = {
    "type": "message",
    "id": "msg_1",
    "status": "completed",
    "role": "assistant",
    "content": [_OUTPUT_TEXT],
}
_REASONING_ITEM = {"type": "reasoning", "id": "rs_1", "summary": []}
_FUNCTION_ITEM = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "f",
    "arguments": "{}",
    "status": "completed",
}
_SEARCH_ITEM = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
_RESPONSE_USAGE = {
    "input_tokens": 9,
    "output_tokens": 4,
    "total_tokens": 13,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens_details": {"reasoning_tokens": 1},
}


def _chat(usage: str | None, **fields: Any) -> bytes:
    body = json.loads(chat_body(usage).decode().replace("NaN", '"NaN"').replace("1e400", '"INF"'))
    body.update(fields)
    text = json.dumps(body).replace('"NaN"', "NaN").replace('"INF"', "1e400")
    return text.encode()


def _response(output: list[Any], usage: Any = _RESPONSE_USAGE, **fields: Any) -> bytes:
    body = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o-2024-08-06",
        "output": output,
        "usage": usage,
        **fields,
    }
    return json.dumps(body).encode()


def _embedding(usage: Any, **fields: Any) -> bytes:
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "usage": usage,
        **fields,
    }
    return json.dumps(body).encode()


def _call_chat(c: Any) -> Any:
    return c.chat.completions.create(**CHAT, customer_id="acme")


def _call_responses(c: Any) -> Any:
    return c.responses.create(model="gpt-4o", input=PROMPT, customer_id="acme")


def _call_embeddings(c: Any) -> Any:
    return c.embeddings.create(model="text-embedding-3-small", input=PROMPT, customer_id="acme")


def _call_completions(c: Any) -> Any:
    return c.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, customer_id="acme")


_COMPLETION = (
    b'{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct",'
    b'"choices":[{"index":0,"text":"Hi!","finish_reason":"stop","logprobs":null}],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}}'
)

# The hostile tests' cases whose counts are valid ints (5.0 is a float to the SDK's model).
_VALID_COUNTS = {"valid", "details-wrong-type"}
# (id, the call, the response body, whether its usage is read off the app's thread)
EQUIVALENCE: list[tuple[str, Any, bytes, bool]] = [
    *[
        # the hostile tests' usage bodies: read off the thread only when their counts are valid
        (
            f"chat-{name}",
            _call_chat,
            chat_body(usage),
            name in _VALID_COUNTS,
        )
        for name, usage, *_ in USAGE_CASES
    ],
    (
        "chat-extra-fields",
        _call_chat,
        _chat(
            '{"prompt_tokens":50,"completion_tokens":7,"total_tokens":57,"surprise":{"a":[1,2]},'
            '"prompt_tokens_details":{"cached_tokens":20,"audio_tokens":0,"new_kind":4},'
            '"completion_tokens_details":{"reasoning_tokens":3,"accepted_prediction_tokens":1,'
            '"rejected_prediction_tokens":2,"audio_tokens":null}}',
            service_tier="flex",
            system_fingerprint="fp_1",
            unknown_top={"x": 1},
        ),
        True,
    ),
    (
        "chat-missing-total",
        _call_chat,
        chat_body('{"prompt_tokens":5,"completion_tokens":3}'),
        True,
    ),
    (
        "chat-total-disagrees",
        _call_chat,
        chat_body('{"prompt_tokens":5,"completion_tokens":3,"total_tokens":99}'),
        True,
    ),
    (
        "chat-details-odd",
        _call_chat,
        chat_body(
            '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,'
            '"prompt_tokens_details":{"cached_tokens":9},'
            '"completion_tokens_details":{"reasoning_tokens":"x","accepted_prediction_tokens":-1}}'
        ),
        True,
    ),
    (
        "chat-details-null",
        _call_chat,
        chat_body(
            '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":null,'
            '"completion_tokens_details":[]}'
        ),
        True,
    ),
    ("chat-no-choices", _call_chat, _chat(_CHAT_OK, choices=[]), True),
    ("chat-choices-not-a-list", _call_chat, _chat(_CHAT_OK, choices={"0": {}}), False),
    (
        "chat-two-choices",
        _call_chat,
        _chat(
            _CHAT_OK,
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "a"},
                    "finish_reason": "stop",
                },
                {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": 7},
            ],
        ),
        True,
    ),
    ("chat-model-odd", _call_chat, _chat(_CHAT_OK, model=["x"], id=None), True),
    ("responses-message", _call_responses, _response([_MESSAGE_ITEM]), True),
    (
        "responses-reasoning-function",
        _call_responses,
        _response([_REASONING_ITEM, _FUNCTION_ITEM, _MESSAGE_ITEM], service_tier="priority"),
        True,
    ),
    ("responses-hosted-tool", _call_responses, _response([_SEARCH_ITEM, _MESSAGE_ITEM]), False),
    (
        "responses-incomplete",
        _call_responses,
        _response(
            [_MESSAGE_ITEM], status="incomplete", incomplete_details={"reason": "max_output_tokens"}
        ),
        True,
    ),
    (
        "responses-details-extra",
        _call_responses,
        _response(
            [_MESSAGE_ITEM],
            {**_RESPONSE_USAGE, "input_tokens_details": {"cached_tokens": 2, "new": 1}, "x": 1},
        ),
        True,
    ),
    (
        "responses-missing-total",
        _call_responses,
        _response([], {"input_tokens": 3, "output_tokens": 1}),
        True,
    ),
    (
        "responses-bad-count",
        _call_responses,
        _response([_MESSAGE_ITEM], {"input_tokens": -1, "output_tokens": 2}),
        False,
    ),
    (
        "embeddings-valid",
        _call_embeddings,
        _embedding({"prompt_tokens": 6, "total_tokens": 6}),
        True,
    ),
    (
        "embeddings-extra",
        _call_embeddings,
        _embedding({"prompt_tokens": 6, "total_tokens": 7, "z": []}, id=3),
        True,
    ),
    (
        "embeddings-bad",
        _call_embeddings,
        _embedding({"prompt_tokens": "6", "total_tokens": 6}),
        False,
    ),
    ("completions", _call_completions, _COMPLETION, True),
]


@pytest.mark.parametrize(
    ("call", "body", "off_thread"), [pytest.param(c, b, o, id=n) for n, c, b, o in EQUIVALENCE]
)
def test_usage_read_off_the_app_thread_is_the_usage_read_on_it(
    call: Any,
    body: bytes,
    off_thread: bool,
    client: Any,
    fake: FakeOpenAI,
    records: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same response, metered through the app's SDK provider (read on the app's thread)
    and meter-only (copied, journaled, read by the importer): the same usage event."""
    fake.enqueue(raw(body))
    sdk_result = call(client)
    (sdk,) = records.items
    assert records.copies == 0
    records.items.clear()

    running = agent.get()
    assert running is not None
    proxy = trace.ProxyTracerProvider()
    with monkeypatch.context() as patch:
        patch.setattr(trace, "get_tracer_provider", lambda: proxy)
        source = TracerSource(Settings(), [running.processor])
        patch.setattr(running.runtime, "tracers", source)
        try:
            fake.enqueue(raw(body))
            mine_result = call(client)
        finally:
            source.shutdown()
    assert source.meter_only
    (mine,) = records.items
    assert records.copies == int(off_thread)
    assert type(mine_result) is type(sdk_result)  # the app got the same object either way
    assert repr(mine_result) == repr(sdk_result)
    sdk_event = span_record_to_event(sdk, "unattributed")
    mine_event = span_record_to_event(mine, "unattributed")
    assert _comparable(sdk_event) == _comparable(mine_event)
    assert mine_event["customer_id"] == "acme"


def test_a_copy_the_journal_cannot_write_is_read_on_the_app_thread() -> None:
    """A response copy holding a loop (an app's own model, say) is read before the line is
    written: the journal line holds its usage, not the copy, and the event is kept."""
    from openai.types import CompletionUsage

    loop: dict[str, Any] = {}
    loop["again"] = loop
    usage = CompletionUsage(prompt_tokens=5, completion_tokens=3, total_tokens=8)
    copy = {"model": "gpt-4o-mini", "usage": usage, "choices": [], "loop": loop}
    record = {"v": 1, "t": 3, "s": 4, "a": {A.CUSTOMER_ID: "acme"}, "b": 1, "e": 2, "ok": True}
    line = json.loads(journal_line({**record, "x": ["chat", copy, True, True]}))
    assert "x" not in line
    assert line["a"][A.INPUT_TOKENS] == 5 and line["a"][A.OUTPUT_TOKENS] == 3
    event = span_record_to_event(line, "unattributed")
    assert (event["customer_id"], event["input_tokens"], event["total_tokens"]) == ("acme", 5, 8)
    assert event["metering_degraded"] is False


def test_an_unreadable_copy_gives_a_flagged_event() -> None:
    record = {"v": 1, "t": 3, "s": 4, "a": {A.CUSTOMER_ID: "acme"}, "b": 1, "e": 2, "ok": True}
    event = span_record_to_event({**record, "x": ["a-later-reader", {}, True, False]}, "u")
    assert event["customer_id"] == "acme" and event["metering_degraded"] is True


def test_a_failed_call_is_recorded_failed(
    client: Any, fake: FakeOpenAI, records: Records, meter_only_agent: TracerSource
) -> None:
    fake.enqueue(status(404))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], customer_id="c"
        )
    assert meter_only_agent.meter_only
    (record,) = records.items
    assert record["ok"] is False
    assert record["a"][A.ERROR_TYPE] == "NotFoundError"
    assert record["a"][A.HTTP_STATUS_CODE] == 404


def test_streams_are_metered_with_meter_only_spans(
    client: Any, records: Records, meter_only_agent: TracerSource
) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        customer_id="c",
    )
    chunks = list(stream)
    assert chunks and all(chunk.choices for chunk in chunks)  # the usage chunk stays hidden
    (record,) = records.items
    attrs = record["a"]
    assert attrs[A.INPUT_TOKENS] > 0 and attrs[A.STREAM_OUTCOME] == "completed"
    # started in one go as other meter-only calls are, the usage asked for and said so
    assert attrs[A.STREAM_USAGE_INJECTED] is True and attrs[A.REQUEST_STREAM] is True
    assert attrs[A.REQUEST_MODEL] == "gpt-4o-mini" and attrs[A.CUSTOMER_ID] == "c"
    assert attrs[A.OPERATION_NAME] == "chat" and attrs[A.SERVER_ADDRESS] == "127.0.0.1"


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


# Values every SDK version keeps alike: scalars, subclasses of them, sequences of one type.
VALID_VALUES: list[Any] = [("a", "b"), [], Text("sub"), Color.RED, True, 1.5, [1, 2], "x", 7]
# Values older SDKs drop and newer ones keep as "complex" attributes (to a string, in the
# record): a meter-only span drops them, as nothing the agent sets is ever one of them.
ODD_VALUES: list[Any] = [None, {"a": 1}, [1, "x"], b"bytes", [[1]], object()]


def _sdk_attributes(values: list[Any]) -> dict[str, Any]:
    from cmdrdata_autotrack.export.processor import json_attributes

    provider = TracerProvider()
    kept: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider.add_span_processor(Keep())
    span = provider.get_tracer("t").start_span("x")
    for i, value in enumerate(values):
        span.set_attribute(f"k{i}", value)
    span.set_attributes({f"m{i}": value for i, value in enumerate(values)})
    span.end()
    return json_attributes(kept[0].attributes)


def _meter_only_attributes(values: list[Any]) -> dict[str, Any]:
    records = Records()
    processor = MeteringSpanProcessor([records])
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    tracer = MeterOnlyTracer(InstrumentationScope(A.INSTRUMENTATION_SCOPE), (processor,))
    span = tracer.start_span("x", attributes={A.METERED_MARK: True})
    for i, value in enumerate(values):
        span.set_attribute(f"k{i}", value)
    span.set_attributes({f"m{i}": value for i, value in enumerate(values)})
    span.end()
    assert isinstance(span, MeterOnlySpan)
    attributes = dict(span.attributes)
    attributes.pop(A.METERED_MARK)
    return attributes


def test_attribute_values_are_kept_as_the_sdk_keeps_them() -> None:
    sdk = _sdk_attributes(VALID_VALUES)
    mine = _meter_only_attributes(VALID_VALUES)
    assert mine == sdk
    # and kept as exact JSON values: a subclass's methods never run again
    assert type(mine["k2"]) is str and type(mine["k3"]) is int


def test_odd_attribute_values_are_dropped() -> None:
    assert _meter_only_attributes(ODD_VALUES) == {}
    assert _meter_only_attributes([[1, None, 3]]) == {"k0": [1, None, 3], "m0": [1, None, 3]}


@given(
    st.lists(
        st.one_of(
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False),
            st.text(max_size=8),
            st.lists(st.integers(0, 9), max_size=3),
            st.lists(st.text(max_size=2), max_size=3),
        ),
        max_size=8,
    )
)
def test_attribute_validation_matches_the_sdk(values: list[Any]) -> None:
    assert _meter_only_attributes(values) == _sdk_attributes(values)


def test_status_parent_and_end_follow_the_sdk() -> None:
    records = Records()
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    tracer = MeterOnlyTracer(
        InstrumentationScope(A.INSTRUMENTATION_SCOPE), (MeteringSpanProcessor([records]),)
    )
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = tracer.start_span("chat m", context=context, attributes={A.METERED_MARK: True})
    assert span.get_span_context().trace_id == 0xABC  # the parent's trace
    assert span.get_span_context().span_id not in (0, 0xDEF)
    assert span.is_recording()
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.set_status(Status(StatusCode.UNSET))  # as the SDK: UNSET never overrides
    span.end()
    span.set_attribute("late", 1)  # ignored once ended, as the SDK ignores it
    span.end()  # ends once
    assert not span.is_recording()
    (record,) = records.items
    assert record["ok"] is False and record["t"] == 0xABC and "late" not in record["a"]
    with tracer.start_as_current_span("y", attributes={A.METERED_MARK: True}) as current:
        assert trace.get_current_span() is current
    assert len(records.items) == 2


def test_spans_are_sdk_spans_when_anything_else_reads_them(
    no_app_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    metering = MeteringSpanProcessor([])
    source = TracerSource(Settings(), [metering])
    assert isinstance(source.tracer(), MeterOnlyTracer) and source.meter_only
    # a processor added to the agent's own provider: the next span is an SDK span it sees
    assert source.own_provider is not None
    source.own_provider.add_span_processor(Keep())
    tracer = source.tracer()
    assert not isinstance(tracer, MeterOnlyTracer) and not source.meter_only
    tracer.start_span("x").end()
    assert len(seen) == 1
    source.shutdown()
    # an exporter named in the environment: SDK spans from the start
    exporting = TracerSource(Settings(traces_exporter="console"), [metering])
    assert not isinstance(exporting.tracer(), MeterOnlyTracer)
    exporting.shutdown()
    # the app sets up an SDK later (set_tracer_provider sets OpenTelemetry's global once):
    # joined at the next call, though the calls before it asked for the global no more
    later = TracerSource(Settings(), [metering])
    assert isinstance(later.tracer(), MeterOnlyTracer)
    assert isinstance(later.tracer(), MeterOnlyTracer)
    provider = TracerProvider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert not isinstance(later.tracer(), MeterOnlyTracer)
    later.shutdown()
    # an OpenTelemetry that keeps its global elsewhere: asked at every call
    monkeypatch.delattr(trace, "_TRACER_PROVIDER")
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    elsewhere = TracerSource(Settings(), [metering])
    assert isinstance(elsewhere.tracer(), MeterOnlyTracer)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert not isinstance(elsewhere.tracer(), MeterOnlyTracer)
    elsewhere.shutdown()


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))
def test_event_ids_are_uuid5_of_the_span(trace_id: int, span_id: int) -> None:
    expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{trace_id:032x}{span_id:016x}")
    assert event_id_for(trace_id, span_id) == str(expected)


def test_endpoint_attributes_belong_to_their_row() -> None:
    """The attributes made once per endpoint row are that row's, even for rows made and
    dropped one after another (whose ids the interpreter would reuse)."""
    row = ENDPOINTS[0]
    for operation in ("first", "second", "third"):
        other = dataclasses.replace(row, operation=operation)
        assert endpoint_attributes(other)[A.OPERATION_NAME] == operation
        del other
    assert endpoint_attributes(row)[A.OPERATION_NAME] == row.operation


def test_with_otel_metrics_a_copy_is_read_as_the_span_ends() -> None:
    """The app's meter provider records token usage when the span ends: a response copy
    is read then, into the record's attributes, not left for the importer."""
    from openai.types import CompletionUsage
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from cmdrdata_autotrack.telemetry.otel_metrics import AgentMetrics

    reader = InMemoryMetricReader()
    recorded: list[dict[str, Any]] = []
    processor = MeteringSpanProcessor(
        sinks=[recorded.append],
        metrics_factory=lambda: AgentMetrics(MeterProvider(metric_readers=[reader]), dict),
    )
    tracer = MeterOnlyTracer(InstrumentationScope(A.INSTRUMENTATION_SCOPE), (processor,))
    span = tracer.start_own("chat gpt-4o-mini", {A.METERED_MARK: True, A.OPERATION_NAME: "chat"})
    usage = CompletionUsage(prompt_tokens=11, completion_tokens=4, total_tokens=15)
    span.pending = ["chat", {"model": "gpt-4o-mini", "usage": usage}, True, True]
    span.end()
    (record,) = recorded
    assert "x" not in record
    assert (record["a"][A.INPUT_TOKENS], record["a"][A.OUTPUT_TOKENS]) == (11, 4)
    sums = {
        point.attributes["gen_ai.token.type"]: point.sum
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "gen_ai.client.token.usage"
        for point in metric.data.data_points
    }
    assert sums == {"input": 11, "output": 4}


def test_each_rows_reader_reads_with_the_rows_extractor() -> None:
    """A row's response is read by the same extractor on the app's thread and off it."""
    from cmdrdata_autotrack.usage import snapshot

    readers = [row for row in ENDPOINTS if row.reader is not None]
    assert readers
    for row in readers:
        assert snapshot.READERS[row.reader].extractor is row.extractor, row
