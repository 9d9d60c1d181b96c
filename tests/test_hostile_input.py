"""Hostile input and malformed usage: every call that reaches OpenAI gives exactly one event.

The real SDK against the fake server, sync and async. Each case is compared with the same
call made with ``track_usage=False`` (the agent steps aside): the app must get the same
result or the same exception, and OpenAI the same request. What the agent cannot record
is left out of the event and flagged, never the event itself; usage the server reports
badly is flagged (``usage_problem``) and estimated (``usage_estimated``), never a silent 0.
Events are built as in production: the span record goes through a JSON journal line.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from cmdrdata_autotrack import agent
from cmdrdata_autotrack.attribution.context import customer_context, reset_customer, set_customer
from cmdrdata_autotrack.export.pipeline import journal_line
from cmdrdata_autotrack.export.processor import json_attributes, span_record_to_event
from cmdrdata_autotrack.instrumentation.openai import request as R
from cmdrdata_autotrack.instrumentation.openai import wrappers
from cmdrdata_autotrack.telemetry import metrics
from cmdrdata_autotrack.usage import extract
from cmdrdata_autotrack.usage.event import build_event

from conftest import Spans
from fake_openai import PNG_BYTES, FakeOpenAI, raw

PROMPT = "Say hello to the hostile tests, please."  # 39 characters: 10 tokens + 4 per message
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
PROMPT_ESTIMATE = 14
SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "usage-event.schema.json").read_text()
)


# --- events, as the journal gives them --------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        out = []
        for record in self.records:
            line = journal_line(record)  # what the journal writes
            event = span_record_to_event(json.loads(line), "unattributed")
            json.dumps(event, allow_nan=False)
            assert validate(event, SCHEMA) == [], validate(event, SCHEMA)
            out.append(event)
        return out

    def one(self) -> dict[str, Any]:
        events = self.events()
        assert len(events) == 1, f"expected exactly one event, got {len(events)}"
        return events[0]


@pytest.fixture
def recorder(spans: Spans) -> Iterator[Recorder]:
    running = agent.get()
    assert running is not None
    rec = Recorder()
    running.processor.sinks.append(rec.records.append)
    try:
        yield rec
    finally:
        running.processor.sinks.remove(rec.records.append)


class Counters:
    def __init__(self) -> None:
        self.before = metrics.snapshot()

    def __getitem__(self, name: str) -> int:
        return metrics.snapshot().get(name, 0) - self.before.get(name, 0)


# --- calling the SDK, sync or async, and what the app got ---------------------------------------


def _plain(value: Any) -> Any:
    """A comparable form of what the SDK returned (ids and times of fake answers dropped)."""
    if hasattr(type(value), "model_fields"):
        value = value.model_dump(warnings=False)
    if type(value).__name__.endswith("BinaryResponseContent"):  # audio.speech
        return value.content
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("id", "created", "url")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def outcome(mode: str, client: Any, aclient: Any, make: Callable[[Any], Any]) -> Any:
    """``("ok", result)`` or ``("raise", type, message)`` of one call, streams read whole."""
    try:
        if mode == "sync":
            result = make(client)
            if isinstance(result, openai.Stream):
                result = list(result)
        else:
            result = await make(aclient)
            if isinstance(result, openai.AsyncStream):
                result = [item async for item in result]
    except Exception as exc:
        return ("raise", type(exc), str(exc))
    return ("ok", _plain(result))


async def compare(
    mode: str,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    make: Callable[..., Any],
    fault: Any = None,
) -> tuple[Any, Any]:
    """The call without the agent, then with it: same answer, same request (or none)."""
    fake.reset()
    if fault is not None:
        fake.enqueue(fault)
    baseline = await outcome(mode, client, aclient, lambda c: make(c, track_usage=False))
    sent_baseline = [r.json or r.form for r in fake.requests]
    fake.reset()
    if fault is not None:
        fake.enqueue(fault)
    metered = await outcome(mode, client, aclient, make)
    sent = [r.json or r.form for r in fake.requests]
    assert metered[:2] == baseline[:2]
    if metered[0] == "raise":
        assert metered[2] == baseline[2]
    assert sent == sent_baseline  # OpenAI saw exactly the caller's request
    return metered, sent


MODES = ["sync", "async"]


# --- odd input: the agent's own arguments --------------------------------------------------------


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class HugeRepr:
    def __repr__(self) -> str:
        return "r" * 5_000_000


class EqHashRaise:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class KeyStrRaises:
    def __str__(self) -> str:
        raise RuntimeError("no str")


class BadLenStr(str):
    def __len__(self) -> int:
        raise RuntimeError("no len")

    def __getitem__(self, index: Any) -> str:
        raise RuntimeError("no getitem")


class ItemsRaise(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth):
        node["k"] = {}
        node = node["k"]
    return root


def _nested_list(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        node.append([])
        node = node[0]
    return root


_cycle: dict[str, Any] = {}
_cycle["self"] = _cycle

# (id, tracking_metadata, metadata expected in the event, whether some of it was dropped)
METADATA_CASES: list[tuple[str, Any, dict[str, Any], bool]] = [
    ("nested-1000", {"plan": "pro", "deep": _nested(1000)}, {"plan": "pro"}, True),
    ("list-nested-1000", {"plan": "pro", "deep": _nested_list(1000)}, {"plan": "pro"}, True),
    ("repr-raises", {"plan": "pro", "bad": ReprRaises()}, {"plan": "pro"}, True),
    ("repr-raises-inside", {"plan": "pro", "bad": [1, ReprRaises()]}, {"plan": "pro"}, True),
    ("key-str-raises", {"plan": "pro", KeyStrRaises(): 1}, {"plan": "pro"}, True),
    ("items-raise", ItemsRaise(plan="pro"), {}, True),
    ("not-a-mapping", ["plan", "pro"], {}, True),
    (
        "huge-repr",
        {"plan": "pro", "big": HugeRepr()},
        {"plan": "pro", "big": '"' + "r" * 1023},
        False,
    ),
    (
        "huge-str",
        {"plan": "pro", "big": "s" * 5_000_000},
        {"plan": "pro", "big": "s" * 1024},
        False,
    ),
    ("huge-list", {"plan": "pro", "big": list(range(10**6))}, {"plan": "pro"}, False),
    ("eq-hash-raise", {"plan": "pro", "odd": EqHashRaise()}, {"plan": "pro"}, False),
    ("str-subclass", {"plan": BadLenStr("pro")}, {"plan": "pro"}, False),
    ("cycle", {"plan": "pro", "loop": _cycle}, {"plan": "pro", "loop": "{'self': {...}}"}, False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("metadata", "expected", "dropped"),
    [pytest.param(m, e, d, id=i) for i, m, e, d in METADATA_CASES],
)
async def test_odd_tracking_metadata_still_meters_the_call(
    mode: str,
    metadata: Any,
    expected: dict[str, Any],
    dropped: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(
            **CHAT, customer_id="acme", tracking_metadata=metadata, **extra
        )

    counters = Counters()
    (status, *_), _ = await compare(mode, client, aclient, fake, make)
    assert status == "ok"
    event = recorder.one()
    assert event["customer_id"] == "acme" and event["attributed"]
    assert (event["input_tokens"], event["output_tokens"]) == (17, 9)
    assert event["usage_source"] == "response" and event["usage_problem"] is None
    for key, value in expected.items():
        assert event["metadata"][key] == value
    if not dropped:
        assert set(event["metadata"]) >= set(expected)
    assert event["metering_degraded"] is dropped
    assert (counters["metadata_dropped"] > 0) is dropped
    assert counters["instrumentation_errors"] == 0


# (id, customer_id, attributed customer or None, problem when unattributed)
CUSTOMER_CASES: list[tuple[str, Any, str | None, str | None]] = [
    ("str-raises", ReprRaises(), None, "customer id must be a string, got ReprRaises"),
    ("str-subclass-len-raises", BadLenStr("cust-7"), "cust-7", None),
    ("huge", "c" * 5_000_000, None, "customer id is 5000000 characters long (at most 256)"),
    ("eq-hash-raise", EqHashRaise(), None, "customer id must be a string, got EqHashRaise"),
    ("control-chars", "acme\x00\n", None, "customer id contains non-printable characters"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("customer", "attributed", "problem"),
    [pytest.param(c, a, p, id=i) for i, c, a, p in CUSTOMER_CASES],
)
async def test_odd_customer_ids_still_meter_the_call(
    mode: str,
    customer: Any,
    attributed: str | None,
    problem: str | None,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
    spans: Spans,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, customer_id=customer, **extra)

    await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    if attributed is None:
        assert event["attributed"] is False and event["customer_id"] == "unattributed"
        assert spans.attrs()["cmdrdata.customer.problem"] == problem
    else:
        assert event["customer_id"] == attributed and event["customer_source"] == "argument"
    assert event["input_tokens"] == 17


@pytest.mark.parametrize("mode", MODES)
async def test_odd_customer_context_and_set_customer(
    mode: str, client: Any, aclient: Any, fake: FakeOpenAI, recorder: Recorder
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, **extra)

    with customer_context(ReprRaises(), plan=ReprRaises(), tier="gold"):  # type: ignore[arg-type]
        await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    assert event["attributed"] is False
    assert event["metadata"] == {"tier": "gold"} and event["metering_degraded"] is True
    recorder.records.clear()
    token = set_customer(BadLenStr("mw-cust"), deep=_nested(1000), ok=1)
    try:
        await compare(mode, client, aclient, fake, make)
    finally:
        reset_customer(token)
    event = recorder.one()
    assert (event["customer_id"], event["customer_source"]) == ("mw-cust", "context")
    assert event["metadata"] == {"ok": 1}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (ReprRaises(), "customer id must be a string, got ReprRaises"),
        ("b" * 100_000, "customer id is 100000 characters long (at most 256)"),
        ("", "customer id is empty"),
    ],
    ids=["object", "huge", "empty"],
)
async def test_odd_baggage_customer(
    mode: str,
    value: Any,
    problem: str,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
    spans: Spans,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, **extra)

    token = otel_context.attach(baggage.set_baggage("cmdrdata.customer_id", value))
    try:
        await compare(mode, client, aclient, fake, make)
    finally:
        otel_context.detach(token)
    event = recorder.one()
    assert event["attributed"] is False
    assert spans.attrs()["cmdrdata.customer.problem"] == problem


# --- odd input: the request --------------------------------------------------------------------


class Opaque:
    pass


class OptionsItemsRaise(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "options",
    [["include_usage"], "include_usage", ("include_usage",), 5, Opaque(), OptionsItemsRaise()],
    ids=["list", "string", "tuple", "int", "object", "mapping-items-raise"],
)
async def test_stream_options_not_a_dict_is_sent_as_given_and_metered(
    mode: str,
    options: Any,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, stream=True, stream_options=options, **extra)

    counters = Counters()
    (status, *_), sent = await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    assert event["request"]["streaming"] is True
    if status == "raise":  # the SDK itself refuses it, before sending: a failed call
        assert sent == [] and event["error"]["occurred"] is True
        assert event["usage_source"] == "none"
        return
    assert sent[0]["stream_options"] == json.loads(json.dumps(options))
    # no usage came: estimated from the request and the streamed deltas, and flagged
    assert event["usage_estimated"] is True and event["usage_problem"] == "missing_usage"
    assert event["usage_source"] == "estimate"
    assert (event["input_tokens"], event["output_tokens"]) == (PROMPT_ESTIMATE, 5)
    assert counters["usage_missing"] == 1 and counters["usage_estimated"] == 1


class FormatGetRaises(dict):  # type: ignore[type-arg]
    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no get")


@pytest.mark.parametrize("mode", MODES)
async def test_a_request_part_that_cannot_be_read_is_dropped_not_the_event(
    mode: str, client: Any, aclient: Any, fake: FakeOpenAI, recorder: Recorder, spans: Spans
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        fmt = FormatGetRaises(type="json_object")
        return c.chat.completions.create(**CHAT, response_format=fmt, customer_id="acme", **extra)

    counters = Counters()
    await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    assert event["request_model"] == "gpt-4o-mini" and event["customer_id"] == "acme"
    assert event["input_tokens"] == 17 and event["metering_degraded"] is True
    assert list(spans.attrs()["cmdrdata.metering.dropped"]) == ["request"]
    assert counters["metering_parts_dropped"] == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "target",
    ["request_attributes", "content_attributes", "with_stream_usage", "client_attributes"],
)
async def test_each_optional_part_failing_still_meters(
    mode: str,
    target: str,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
    spans: Spans,
    agent_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    if target == "client_attributes":
        monkeypatch.setattr(wrappers.Runtime, target, broken)
    else:
        monkeypatch.setattr(R, target, broken)
    agent_settings(capture_content=True)

    stream = target == "with_stream_usage"  # other streams get include_usage: a new request

    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, stream=stream, customer_id="acme", **extra)

    await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    attrs = spans.attrs()
    assert event["customer_id"] == "acme" and event["request_model"] == "gpt-4o-mini"
    assert event["metering_degraded"] is True
    name = {
        "request_attributes": "request",
        "content_attributes": "content",
        "with_stream_usage": "stream_usage",
        "client_attributes": "server",
    }[target]
    assert list(attrs["cmdrdata.metering.dropped"]) == [name]
    if target == "with_stream_usage":  # not injected: the request went out as the caller's
        assert "cmdrdata.stream.usage_injected" not in attrs
        assert event["usage_problem"] == "missing_usage" and event["usage_estimated"]
    else:
        assert event["usage_problem"] is None and event["input_tokens"] == 17


@pytest.mark.parametrize("mode", MODES)
async def test_an_unexpected_failure_meters_a_minimal_span(
    mode: str,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(wrappers.Runtime, "begin", broken)
    counters = Counters()

    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(
            **CHAT, customer_id="acme", tracking_metadata={"plan": "pro"}, **extra
        )

    await compare(mode, client, aclient, fake, make)
    event = recorder.one()
    assert event["metering_degraded"] is True
    assert (event["operation"], event["request_model"]) == ("chat", "gpt-4o-mini")
    assert event["customer_id"] == "acme" and event["input_tokens"] == 17
    assert counters["metering_degraded"] == 1 and counters["instrumentation_errors"] == 1


# --- malformed usage from the server -----------------------------------------------------------

_MESSAGE = {"role": "assistant", "content": "Hello from a hostile server!!"}  # 29 chars: 8 tokens
REPLY_ESTIMATE = 8


def chat_body(usage: str | None) -> bytes:
    head = (
        '{"id":"chatcmpl-hostile","object":"chat.completion","created":1,'
        '"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":'
        + json.dumps(_MESSAGE)
        + ',"finish_reason":"stop"}]'
    )
    return (head + ("" if usage is None else f',"usage":{usage}') + "}").encode()


# (id, the usage JSON text or None for no key, problem, input tokens, output tokens, estimated)
USAGE_CASES: list[tuple[str, str | None, str | None, int, int, bool]] = [
    ("valid", '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}', None, 5, 3, False),
    ("float-integral", '{"prompt_tokens":5.0,"completion_tokens":3}', None, 5, 3, False),
    ("absent", None, "missing_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("null", "null", "missing_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("empty", "{}", "malformed_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("negative", '{"prompt_tokens":-5,"completion_tokens":3}', "malformed_usage", 14, 3, True),
    ("list", "[1,2,3]", "malformed_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("string", '"lots"', "malformed_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("number", "42", "malformed_usage", PROMPT_ESTIMATE, REPLY_ESTIMATE, True),
    ("nan", '{"prompt_tokens":NaN,"completion_tokens":3}', "malformed_usage", 14, 3, True),
    (
        "nan-with-total",  # the input count follows from a valid total
        '{"prompt_tokens":NaN,"completion_tokens":3,"total_tokens":20}',
        "malformed_usage",
        17,
        3,
        True,
    ),
    (
        "over-2^40",
        '{"prompt_tokens":5,"completion_tokens":2199023255552}',
        "malformed_usage",
        5,
        8,
        True,
    ),
    ("infinity", '{"prompt_tokens":1e400,"completion_tokens":3}', "malformed_usage", 14, 3, True),
    (
        "count-as-string",
        '{"prompt_tokens":"12","completion_tokens":3}',
        "malformed_usage",
        14,
        3,
        True,
    ),
    ("bool", '{"prompt_tokens":true,"completion_tokens":3}', "malformed_usage", 14, 3, True),
    (
        "count-as-object",
        '{"prompt_tokens":{"n":5},"completion_tokens":3}',
        "malformed_usage",
        14,
        3,
        True,
    ),
    ("wrong-shape", '{"tokens":{"in":5,"out":3}}', "malformed_usage", 14, REPLY_ESTIMATE, True),
    (
        "details-wrong-type",  # main counts valid: kept as reported, only flagged
        '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":7}',
        "malformed_usage",
        5,
        3,
        False,
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("usage", "problem", "inp", "out", "estimated"),
    [pytest.param(u, p, i, o, e, id=n) for n, u, p, i, o, e in USAGE_CASES],
)
async def test_malformed_usage_is_flagged_and_estimated(
    mode: str,
    usage: str | None,
    problem: str | None,
    inp: int,
    out: int,
    estimated: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(**CHAT, **extra)

    counters = Counters()
    (status, *_), _ = await compare(mode, client, aclient, fake, make, raw(chat_body(usage)))
    assert status == "ok"
    event = recorder.one()
    assert (event["input_tokens"], event["output_tokens"]) == (inp, out)
    assert event["total_tokens"] >= inp + out
    assert event["usage_problem"] == problem
    assert event["usage_estimated"] is estimated
    assert event["usage_source"] == ("estimate" if estimated else "response")
    assert event["model"] == "gpt-4o-mini-2024-07-18"
    metric = {None: None, "missing_usage": "usage_missing", "malformed_usage": "usage_malformed"}
    for name in ("usage_missing", "usage_malformed"):
        assert counters[name] == (1 if metric[problem] == name else 0)
    assert counters["usage_estimated"] == (1 if estimated else 0)


RESPONSE_HEAD = (
    '{"id":"resp_hostile","object":"response","created_at":1,"status":"completed",'
    '"model":"gpt-4o-2024-08-06","output":[{"type":"message","id":"msg_1","status":"completed",'
    '"role":"assistant","content":[{"type":"output_text","text":"Hello there, tests!!","annotations":[]}]}]'
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("family", "usage", "problem", "inp", "out"),
    [
        ("responses", '{"input_tokens":-1,"output_tokens":2}', "malformed_usage", 10, 2),
        ("responses", "null", "missing_usage", 10, 5),
        ("responses", '{"input_tokens":9,"output_tokens":2,"total_tokens":11}', None, 9, 2),
        ("embeddings", None, "missing_usage", 10, 0),
        ("embeddings", '{"prompt_tokens":-3,"total_tokens":-3}', "malformed_usage", 10, 0),
        ("embeddings", '{"prompt_tokens":6,"total_tokens":6}', None, 6, 0),
        ("completions", '{"prompt_tokens":"x","completion_tokens":4}', "malformed_usage", 10, 4),
    ],
)
async def test_malformed_usage_on_other_families(
    mode: str,
    family: str,
    usage: str | None,
    problem: str | None,
    inp: int,
    out: int,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    tail = "" if usage is None else f',"usage":{usage}'
    text = PROMPT[:-1]  # 38 characters: 10 tokens
    if family == "responses":
        body = RESPONSE_HEAD + tail + "}"

        def make(c: Any, **extra: Any) -> Any:
            return c.responses.create(model="gpt-4o", input=text, **extra)
    elif family == "embeddings":
        body = (
            '{"object":"list","model":"text-embedding-3-small","data":[{"object":"embedding","index":0,"embedding":[0.1]}]'
            + tail
            + "}"
        )

        def make(c: Any, **extra: Any) -> Any:
            return c.embeddings.create(model="text-embedding-3-small", input=text, **extra)
    else:
        body = (
            '{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct","choices":[{"index":0,"text":"Hi!","finish_reason":"stop"}]'
            + tail
            + "}"
        )

        def make(c: Any, **extra: Any) -> Any:
            return c.completions.create(model="gpt-3.5-turbo-instruct", prompt=text, **extra)

    await compare(mode, client, aclient, fake, make, raw(body.encode()))
    event = recorder.one()
    assert event["usage_problem"] == problem
    assert (event["input_tokens"], event["output_tokens"]) == (inp, out)
    assert event["usage_estimated"] is (problem is not None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("body", "content_type", "stream", "problem", "failed"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", False, "non_json_body", False),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            "application/json",
            False,
            "non_json_body",
            True,
        ),
        (b"", "application/json", False, "non_json_body", True),
        (b"[1,2]", "application/json", False, "missing_usage", False),
        (b"null", "application/json", False, "missing_usage", False),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", True, "non_json_body", False),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            "application/json",
            True,
            "non_json_body",
            False,
        ),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            "text/event-stream",
            True,
            "missing_usage",
            False,
        ),
    ],
    ids=[
        "html",
        "html-as-json",
        "empty-as-json",
        "json-list",
        "json-null",
        "stream-html",
        "stream-html-as-json",
        "stream-html-as-sse",
    ],
)
async def test_bodies_that_are_not_usage(
    mode: str,
    body: bytes,
    content_type: str,
    stream: bool,
    problem: str,
    failed: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    def make(c: Any, **extra: Any) -> Any:
        if stream:
            extra["stream_options"] = {"include_usage": True}  # the same request either way
        return c.chat.completions.create(**CHAT, stream=stream, **extra)

    counters = Counters()
    (status, *_), _ = await compare(
        mode, client, aclient, fake, make, raw(body, content_type=content_type)
    )
    assert (status == "raise") is failed
    event = recorder.one()
    assert event["usage_problem"] == problem
    assert event["error"]["occurred"] is failed
    if failed:  # the SDK raised: the app saw a failure, nothing is estimated
        assert event["usage_estimated"] is False and event["input_tokens"] == 0
    else:
        assert event["usage_estimated"] is True and event["usage_source"] == "estimate"
        assert event["input_tokens"] == PROMPT_ESTIMATE
    name = {"non_json_body": "usage_non_json_body", "missing_usage": "usage_missing"}[problem]
    assert counters[name] == 1


def _sse(*events: Mapping[str, Any]) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def _chunk(
    content: str | None = None, usage: Any = "absent", finish: str | None = None
) -> dict[str, Any]:
    choices = (
        []
        if content is None and finish is None
        else [
            {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
        ]
    )
    chunk: dict[str, Any] = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": choices,
    }
    if usage != "absent":
        chunk["usage"] = usage
    return chunk


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("usage", "problem", "inp", "out", "estimated"),
    [
        ({"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}, None, 11, 2, False),
        (
            {"prompt_tokens": -3, "completion_tokens": "x"},
            "malformed_usage",
            PROMPT_ESTIMATE,
            2,
            True,
        ),
        ({"prompt_tokens": 11}, "malformed_usage", 11, 2, True),
        (None, "missing_usage", PROMPT_ESTIMATE, 2, True),
    ],
    ids=["valid", "malformed", "no-output-count", "none"],
)
async def test_streamed_usage_is_flagged(
    mode: str,
    usage: Any,
    problem: str | None,
    inp: int,
    out: int,
    estimated: bool,
    client: Any,
    aclient: Any,
    fake: FakeOpenAI,
    recorder: Recorder,
) -> None:
    chunks = [_chunk("Hel"), _chunk("lo"), _chunk(finish="stop")]
    if usage is not None:
        chunks.append(_chunk(usage=usage))
    stream = raw(_sse(*chunks), content_type="text/event-stream")

    def make(c: Any, **extra: Any) -> Any:
        return c.chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}, **extra
        )

    await compare(mode, client, aclient, fake, make, stream)
    event = recorder.one()
    assert event["usage_problem"] == problem
    assert (event["input_tokens"], event["output_tokens"]) == (inp, out)
    assert event["usage_estimated"] is estimated


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "case",
    ["moderation", "speech", "image-variation", "dall-e", "whisper-text", "whisper-no-usage"],
)
async def test_endpoints_without_usage_are_not_flagged(
    mode: str, case: str, client: Any, aclient: Any, fake: FakeOpenAI, recorder: Recorder
) -> None:
    audio = ("hello.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28), "audio/wav")
    image = ("cat.png", PNG_BYTES, "image/png")
    fault = None
    if case == "whisper-no-usage":
        fault = raw(b'{"text":"hello"}')

    def make(c: Any, **extra: Any) -> Any:
        if case == "moderation":
            return c.moderations.create(model="omni-moderation-latest", input="hi", **extra)
        if case == "speech":
            return c.audio.speech.create(model="tts-1", voice="alloy", input="Hi!", **extra)
        if case == "image-variation":
            return c.images.create_variation(model="dall-e-2", image=image, **extra)
        if case == "dall-e":
            return c.images.generate(model="dall-e-3", prompt="a cat", **extra)
        fmt = "text" if case == "whisper-text" else "json"
        return c.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format=fmt, **extra
        )

    counters = Counters()
    (status, *_), _ = await compare(mode, client, aclient, fake, make, fault)
    assert status == "ok"
    event = recorder.one()
    assert event["usage_problem"] is None
    # whisper's text format reports no duration: it is estimated (and says so), not dropped
    assert event["usage_estimated"] is (case == "whisper-text")
    assert counters["usage_missing"] == counters["usage_malformed"] == 0
    assert counters["usage_non_json_body"] == 0


# --- the event builder and the journal record ----------------------------------------------


def test_journal_record_is_json_whatever_the_attribute_values() -> None:
    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    class IntSub(int):
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    attrs = {
        "cmdrdata.customer.id": BadLenStr("acme"),
        "gen_ai.usage.input_tokens": IntSub(5),
        "gen_ai.response.finish_reasons": ("stop", Weird()),
        "cmdrdata.metadata.x": Weird(),
        "cmdrdata.metadata.nan": float("nan"),
        "gen_ai.request.temperature": float("inf"),
    }
    record = json_attributes(attrs)
    line = json.dumps(record)
    assert json.loads(line)["cmdrdata.customer.id"] == "acme"
    assert record["cmdrdata.metadata.x"] is None
    event = span_record_to_event(
        {"a": json.loads(line), "t": 1, "s": 2, "b": 0, "e": 10, "ok": True}, "u"
    )
    assert event["customer_id"] == "acme" and event["input_tokens"] == 5
    assert validate(event, SCHEMA) == []


@pytest.mark.parametrize(
    "record",
    [
        {"a": {"gen_ai.usage.input_tokens": {"n": 1}, "cmdrdata.metadata.m": [{"a": [1]}]}},
        {"a": {"gen_ai.response.finish_reasons": [[1], {"x": None}]}, "b": 1e400, "e": "late"},
        {"a": {"cmdrdata.usage.source": ["response"], "cmdrdata.usage.problem": 7}, "ok": None},
        {"a": {"cmdrdata.customer.id": {"id": "acme"}, "gen_ai.request.model": [None]}},
        # response copies (usage.snapshot) no version of the agent writes
        {"a": {}, "x": ["no-such-reader", {}, True, False]},
        {"a": {}, "x": "chat"},
        {"a": {}, "x": ["chat", [], True, False]},
        {"a": {}, "x": ["chat", {"usage": {"prompt_tokens": 1e400}}, True, False]},
        {"a": {}, "x": ["responses", {"usage": [], "output": "x"}, 1, None]},
    ],
)
def test_odd_record_values_still_give_a_valid_event(record: dict[str, Any]) -> None:
    record = {"t": 3, "s": 4, "b": 0, "e": 0, "ok": True, **record}
    event = span_record_to_event(json.loads(json.dumps(record)), "unattributed")
    json.dumps(event, allow_nan=False)
    assert validate(event, SCHEMA) == []


def test_usage_source_for_spans_from_elsewhere() -> None:
    def source(attrs: dict[str, Any]) -> Any:
        return build_event(attrs, trace_id=1, span_id=1, start_ns=0, end_ns=0, ok=True)[
            "usage_source"
        ]

    assert source({}) == "none"
    assert source({"gen_ai.usage.input_tokens": 3}) == "response"
    assert source({"gen_ai.usage.input_tokens": 3, "cmdrdata.usage.estimated": True}) == "estimate"
    assert source({"cmdrdata.usage.source": "request"}) == "request"
    assert source({"cmdrdata.usage.source": "made-up"}) == "none"


def test_extractors_tell_not_reported_from_malformed() -> None:
    ok = extract.usage_from_io_tokens({"input_tokens": 3, "output_tokens": 1})
    assert ok is not None and ok.problem is None and ok.reasoning_tokens is None
    assert extract.usage_from_io_tokens({"type": "duration", "seconds": 2.5}).problem is None  # type: ignore[union-attr]
    bad = extract.usage_from_io_tokens({"type": "duration", "seconds": -1})
    assert bad is not None and bad.problem == "malformed_usage"
    bad = extract.usage_from_io_tokens(
        {"input_tokens": 3, "output_tokens": 1, "input_tokens_details": "x"}
    )
    assert bad is not None and bad.problem == "malformed_usage" and bad.input_tokens == 3
    assert extract.usage_from_embedding_tokens({"prompt_tokens": 2}).problem is None  # type: ignore[union-attr]
    assert extract.usage_from_completion_tokens(None) is None
    usage, _ = extract.extract_audio_text({"usage": [1], "duration": 3.0})
    assert usage is not None and usage.audio_seconds == 3.0 and usage.problem == "malformed_usage"


# --- a small JSON Schema checker (the subset docs/usage-event.schema.json uses) --------------


def validate(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, path: str = "$"
) -> list[str]:
    root = root or schema
    errors: list[str] = []
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/")
        errors += validate(value, root["$defs"][ref.split("/")[-1]], root, path)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_type(value, kind) for kind in kinds):
            return [f"{path}: {value!r} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get(
            "maxLength", math.inf
        ):
            errors.append(f"{path}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf):
        errors.append(f"{path}: {value} out of bounds")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", math.inf):
            errors.append(f"{path}: too many items")
        for index, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), root, f"{path}[{index}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing {name}")
        if len(value) > schema.get("maxProperties", math.inf):
            errors.append(f"{path}: too many properties")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if "propertyNames" in schema:
                errors += validate(name, schema["propertyNames"], root, f"{path}.<key>")
            if name in properties:
                errors += validate(item, properties[name], root, f"{path}.{name}")
            elif isinstance(extra, Mapping):
                errors += validate(item, extra, root, f"{path}.{name}")
    for option in schema.get("allOf", []):
        errors += validate(value, option, root, path)
    if "anyOf" in schema and all(validate(value, o, root, path) for o in schema["anyOf"]):
        errors.append(f"{path}: {value!r} matches none of anyOf")
    if "if" in schema and not validate(value, schema["if"], root, path):
        errors += validate(value, schema.get("then", {}), root, path)
    return errors


def _is_type(value: Any, kind: str) -> bool:
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[kind]


def test_schema_names_the_new_fields() -> None:
    props = SCHEMA["properties"]
    assert {"usage_source", "usage_problem", "metering_degraded"} <= set(SCHEMA["required"])
    assert set(props["usage_source"]["enum"]) == {"response", "estimate", "request", "none"}
    assert set(props["usage_problem"]["enum"]) == {
        "missing_usage",
        "malformed_usage",
        "non_json_body",
        None,
    }
    bad = build_event({}, trace_id=1, span_id=1, start_ns=0, end_ns=0, ok=True)
    bad["usage_source"] = "stream"
    assert validate(bad, SCHEMA) != []  # the checker does check


@pytest.mark.parametrize("mode", MODES)
async def test_stream_helper_with_odd_metadata_meters_once(
    mode: str, client: Any, aclient: Any, recorder: Recorder
) -> None:
    odd = {"plan": "pro", "deep": _nested(1000), "bad": ReprRaises()}
    if mode == "sync":
        with client.chat.completions.stream(
            **CHAT, customer_id=BadLenStr("helper"), tracking_metadata=odd
        ) as stream:
            text = "".join(e.delta for e in stream if e.type == "content.delta")
    else:
        async with aclient.chat.completions.stream(
            **CHAT, customer_id=BadLenStr("helper"), tracking_metadata=odd
        ) as astream:
            text = "".join([e.delta async for e in astream if e.type == "content.delta"])
    assert text == "Hello from the fake server."
    event = recorder.one()
    assert (event["customer_id"], event["metadata"]) == ("helper", {"plan": "pro"})
    assert event["metering_degraded"] is True and event["usage_problem"] is None


def test_the_example_event_is_valid() -> None:
    example = json.loads(
        (Path(__file__).resolve().parent.parent / "docs" / "usage-event.example.json").read_text()
    )
    assert validate(example, SCHEMA) == []
    assert example["schema_version"] == "1.3"


def test_event_names_the_openai_key_by_its_last_four_characters_only(
    fake: FakeOpenAI, recorder: Recorder
) -> None:
    key = "sk-proj-secretsecret-K3y9"
    client = openai.OpenAI(base_url=fake.base_url, api_key=key, project="proj_abc", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    short = openai.OpenAI(base_url=fake.base_url, api_key="sk-short", max_retries=0)
    short.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    first, second = recorder.events()
    assert first["openai_key_suffix"] == "K3y9" and first["openai_project_id"] == "proj_abc"
    assert second["openai_key_suffix"] is None and second["openai_project_id"] is None
    assert "secret" not in json.dumps(first)


def test_deep_metadata_is_refused_without_recursing_near_the_limit() -> None:
    # Encoding a value nested 1000 deep recursed to the interpreter's limit on the app's
    # thread: a finalizer the GC ran there (an unclosed event loop's) then failed with a
    # RecursionError of its own. With only 40 frames to spare, the value is still refused,
    # by the shape check, and a value a little shallower is still encoded.
    from cmdrdata_autotrack.attribution.resolve import metadata_value

    here = len(inspect.stack(0))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(here + 40)
    try:
        with pytest.raises(ValueError, match="nested over 64 levels"):
            metadata_value(_nested(1000))
        with pytest.raises(ValueError, match="nested over 64 levels"):
            metadata_value(_nested_list(1000))
        with pytest.raises(ValueError, match="holds over 4096 items"):
            metadata_value([[0] * 500 for _ in range(9)])
        deep_ordered: Any = OrderedDict()  # subclasses are walked too
        for _ in range(1000):
            deep_ordered = OrderedDict(k=deep_ordered)
        with pytest.raises(ValueError, match="nested over 64 levels"):
            metadata_value(deep_ordered)
    finally:
        sys.setrecursionlimit(limit)
    assert metadata_value(_nested(3)) == '{"k": {"k": {"k": {}}}}'
    assert metadata_value(_cycle) == "{'self': {...}}"
