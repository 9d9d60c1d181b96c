"""Meter-only spans: what the agent's spans are when nothing but metering reads them.

With no OpenTelemetry SDK configured by the app and no exporter, the agent makes
:class:`MeterOnlySpan` instead of SDK spans. These tests hold it to the SDK's
behaviour where metering can tell (attribute validation, status, parentage, the
record the processor journals, the event built from it) and check that the agent
goes back to SDK spans the moment anything else would read them.
"""

from __future__ import annotations

import enum
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

from cmdrdata_autotrack import agent
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.processor import MeteringSpanProcessor, span_record_to_event
from cmdrdata_autotrack.tracing.meter_only import MeterOnlySpan, MeterOnlyTracer
from cmdrdata_autotrack.tracing.provider import TracerSource
from cmdrdata_autotrack.usage import attributes as A
from cmdrdata_autotrack.usage.event import EVENT_ID_NAMESPACE, event_id_for

from fake_openai import FakeOpenAI, status

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
    """A sink of the metering processor: the span records it journals."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.items.append(record)


@pytest.fixture
def no_app_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app configured no OpenTelemetry SDK (the test suite's own provider is hidden)."""
    proxy = trace.ProxyTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: proxy)


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
    assert len(records.items) == 1
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
    assert record["a"][A.INPUT_TOKENS] > 0 and record["a"][A.STREAM_OUTCOME] == "completed"


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
    # the app sets up an SDK later: joined at the next call
    later = TracerSource(Settings(), [metering])
    assert isinstance(later.tracer(), MeterOnlyTracer)
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert not isinstance(later.tracer(), MeterOnlyTracer)
    later.shutdown()


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))
def test_event_ids_are_uuid5_of_the_span(trace_id: int, span_id: int) -> None:
    expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{trace_id:032x}{span_id:016x}")
    assert event_id_for(trace_id, span_id) == str(expected)
