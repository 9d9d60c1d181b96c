"""Realtime and WebSocket sessions, against a real ``websockets`` server on 127.0.0.1.

Every surface the installed SDK has, sync and async: ``realtime.connect``,
``beta.realtime.connect``, ``responses.connect``, ``beta.responses.connect`` (a
surface the SDK lacks is skipped, with the reason). One usage event per billed unit
(``response.done``, a completed transcription, a finished Responses response), each
a child span of the session's; the session span is traced, never billed; the app
receives exactly the frames the server sent, and the server exactly what the app sent.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan

pytest.importorskip("websockets", reason="the Realtime tests need the websockets package")

from websockets.exceptions import ConnectionClosedError

import cmdrdata_autotrack
from cmdrdata_autotrack import agent, customer_context
from cmdrdata_autotrack.export.pipeline import journal_line
from cmdrdata_autotrack.export.processor import span_record_to_event
from cmdrdata_autotrack.instrumentation.openai import instrumentor, realtime
from cmdrdata_autotrack.usage.units import NAMES

from conftest import RECORDED, Spans
from realtime_server import (
    MALFORMED_USAGE,
    REALTIME_USAGE,
    RESPONSES_USAGE,
    TRANSCRIPTION_DURATION,
    RealtimeServer,
)

SESSION_SCOPE = "cmdrdata_autotrack.openai.session"


@pytest.fixture(scope="module")
def server() -> Iterator[RealtimeServer]:
    fake = RealtimeServer()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def rt(server: RealtimeServer) -> RealtimeServer:
    server.reset()
    return server


class Events:
    """The usage events the agent's processor made since the test began."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def all(self) -> list[dict[str, Any]]:
        return [
            span_record_to_event(json.loads(journal_line(r)), "unattributed") for r in self.records
        ]


@pytest.fixture
def events(spans: Spans) -> Iterator[Events]:
    running = agent.get()
    assert running is not None
    recorder = Events()
    running.processor.sinks.append(recorder.records.append)
    try:
        yield recorder
    finally:
        running.processor.sinks.remove(recorder.records.append)


def session_spans() -> list[ReadableSpan]:
    return [s for s in RECORDED.spans if s.instrumentation_scope.name == SESSION_SCOPE]


def sync_client(rt: RealtimeServer) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test", base_url=rt.http_url, websocket_base_url=rt.base_url, max_retries=0
    )


def async_client(rt: RealtimeServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="sk-test", base_url=rt.http_url, websocket_base_url=rt.base_url, max_retries=0
    )


# --- the surfaces -------------------------------------------------------------------------------

# name -> (path to the resource, protocol, connect() arguments)
SURFACES = {
    "realtime": ("realtime", "realtime", {"model": "gpt-realtime"}),
    "beta.realtime": ("beta.realtime", "realtime", {"model": "gpt-4o-realtime-preview"}),
    "responses": ("responses", "responses", {}),
    "beta.responses": ("beta.responses", "responses", {}),
}


def connect_of(client: Any, surface: str) -> Callable[..., Any]:
    """``client.<surface>.connect``, or a skip naming what this SDK lacks."""
    path, _, _ = SURFACES[surface]
    resource: Any = client
    for part in path.split("."):
        resource = getattr(resource, part, None)
        if resource is None:
            pytest.skip(f"openai {openai.__version__} has no client.{path}")
    connect = getattr(resource, "connect", None)
    if connect is None:
        pytest.skip(f"openai {openai.__version__} has no client.{path}.connect")
    return connect  # type: ignore[no-any-return]


def protocol(surface: str) -> str:
    return SURFACES[surface][1]


def connect_kwargs(surface: str, **extra: Any) -> dict[str, Any]:
    return {**SURFACES[surface][2], **extra}


def create(conn: Any, surface: str, **kwargs: Any) -> Any:
    if protocol(surface) == "responses":
        return conn.response.create(model="gpt-5", input="hi", **kwargs)
    return conn.response.create(**kwargs)


FINAL = {"realtime": "response.done", "responses": "response.completed"}


def read_until(conn: Any, last: str, raw: bool = False) -> list[Any]:
    """Events (or raw frames) up to and including the first of type ``last``."""
    got: list[Any] = []
    while True:
        if raw:
            frame = conn.recv_bytes()
            got.append(frame)
            kind = json.loads(frame)["type"]
        else:
            event = conn.recv()
            got.append(event)
            kind = event.type
        if kind in (last, "error"):
            return got


async def aread_until(conn: Any, last: str, raw: bool = False) -> list[Any]:
    got: list[Any] = []
    while True:
        if raw:
            frame = await conn.recv_bytes()
            got.append(frame)
            kind = json.loads(frame)["type"]
        else:
            event = await conn.recv()
            got.append(event)
            kind = event.type
        if kind in (last, "error"):
            return got


def talk(rt: RealtimeServer, surface: str, responses: int = 2, **connect: Any) -> list[Any]:
    """A session: ``responses`` responses (the first read raw), then it is closed."""
    client = sync_client(rt)
    got: list[Any] = []
    with connect_of(client, surface)(**connect_kwargs(surface, **connect)) as conn:
        if protocol(surface) == "realtime":
            got += read_until(conn, "session.created")
        for index in range(responses):
            create(conn, surface)
            got += read_until(conn, FINAL[protocol(surface)], raw=index == 0)
    return got


async def atalk(rt: RealtimeServer, surface: str, responses: int = 2, **connect: Any) -> list[Any]:
    client = async_client(rt)
    got: list[Any] = []
    async with connect_of(client, surface)(**connect_kwargs(surface, **connect)) as conn:
        if protocol(surface) == "realtime":
            got += await aread_until(conn, "session.created")
        for index in range(responses):
            await create(conn, surface)
            got += await aread_until(conn, FINAL[protocol(surface)], raw=index == 0)
    return got


def expected_units(surface: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(event fields, event units) the server's usage report must give, exactly."""
    if protocol(surface) == "responses":
        u = RESPONSES_USAGE
        fields = {
            "input_tokens": 37,
            "output_tokens": 11,
            "total_tokens": 48,
            "cached_input_tokens": 16,
            "reasoning_tokens": 4,
        }
        assert u["input_tokens"] == 37
        return fields, {}
    u = REALTIME_USAGE
    inp, out = u["input_token_details"], u["output_token_details"]
    fields = {
        "input_tokens": u["input_tokens"],
        "output_tokens": u["output_tokens"],
        "total_tokens": u["total_tokens"],
        "cached_input_tokens": inp["cached_tokens"],
        "reasoning_tokens": 0,
    }
    units = {
        "input_text_tokens": inp["text_tokens"],
        "input_audio_tokens": inp["audio_tokens"],
        "input_image_tokens": inp["image_tokens"],
        "output_text_tokens": out["text_tokens"],
        "output_audio_tokens": out["audio_tokens"],
    }
    for modality, value in inp["cached_tokens_details"].items():
        name = f"cached_input_{modality}"
        if name in NAMES:
            units[name] = value
    return fields, units


def check_session(
    surface: str, events: Events, spans: Spans, billed: int, customer: str | None = None
) -> list[dict[str, Any]]:
    """``billed`` events, each exact and a child of the one session span, which is not billed."""
    got = events.all()
    assert len(got) == billed, [e["operation"] for e in got]
    (session,) = session_spans()
    assert "cmdrdata.metered" not in (session.attributes or {})
    assert not any(k.startswith("gen_ai.usage.") for k in session.attributes or {})
    assert session.attributes["cmdrdata.session.metered"] == billed
    assert session.attributes["cmdrdata.session.outcome"] == "closed"
    children = spans.all
    assert len(children) == billed
    fields, units = expected_units(surface)
    for event, child in zip(got, children, strict=True):
        assert child.parent is not None
        assert child.parent.span_id == session.context.span_id
        assert child.context.trace_id == session.context.trace_id
        assert {k: event[k] for k in fields} == fields
        assert event["units"] == units
        assert event["usage_problem"] is None and event["usage_source"] == "response"
        assert event["customer_id"] == (customer or "unattributed")
        assert event["attributed"] is (customer is not None)
        assert event["server_address"] == "127.0.0.1"
        if protocol(surface) == "realtime":
            assert (event["operation"], event["endpoint"]) == ("realtime", "realtime")
            assert event["model"] == SURFACES[surface][2]["model"]
            cached = REALTIME_USAGE["input_token_details"]["cached_tokens_details"]
            attrs = child.attributes or {}
            for modality, value in cached.items():
                assert attrs[f"cmdrdata.usage.cached_input_{modality}"] == value
            assert event["finish_reasons"] == ["stop"]
        else:
            assert (event["operation"], event["endpoint"]) == ("chat", "responses")
            assert event["model"] == "gpt-5-2025-08-07"
            assert event["request_model"] == "gpt-5"
    assert len({e["event_id"] for e in got}) == billed
    return got


# --- one event per billed unit, every surface, sync and async -----------------------------------


@pytest.mark.parametrize("surface", list(SURFACES))
def test_sync_session_meters_each_response_once(
    rt: RealtimeServer, spans: Spans, events: Events, surface: str
) -> None:
    got = talk(rt, surface, customer_id="acme")
    check_session(surface, events, spans, billed=2, customer="acme")
    (conn,) = rt.connections
    assert_app_got_what_was_sent(got, conn.sent)
    assert "customer_id" not in json.dumps(conn.received)  # the agent's argument never left


def as_json(event: Any) -> Any:
    """What the app got, as JSON: a raw frame as it was read, a parsed event as the SDK built it."""
    if isinstance(event, bytes):
        return json.loads(event)
    return event.model_dump(exclude_unset=True, by_alias=True, warnings=False)


def assert_app_got_what_was_sent(got: list[Any], sent: list[bytes]) -> None:
    """Raw frames are the server's bytes; parsed events hold exactly what the server sent."""
    assert len(got) == len(sent)
    for event, frame in zip(got, sent, strict=True):
        if isinstance(event, bytes):
            assert event == frame
        else:
            assert as_json(event) == json.loads(frame)


@pytest.mark.parametrize("surface", list(SURFACES))
async def test_async_session_meters_each_response_once(
    rt: RealtimeServer, spans: Spans, events: Events, surface: str
) -> None:
    with customer_context("globex"):
        await atalk(rt, surface)
    check_session(surface, events, spans, billed=2, customer="globex")


# --- transcriptions -----------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["realtime", "beta.realtime"])
def test_each_completed_transcription_is_one_event(
    rt: RealtimeServer, spans: Spans, events: Events, surface: str
) -> None:
    client = sync_client(rt)
    done = "conversation.item.input_audio_transcription.completed"
    with connect_of(client, surface)(**connect_kwargs(surface)) as conn:
        read_until(conn, "session.created")
        conn.input_audio_buffer.append(audio="AAAA")
        conn.input_audio_buffer.commit()
        read_until(conn, done)
        rt.transcription_usage = dict(TRANSCRIPTION_DURATION)
        conn.input_audio_buffer.commit()
        read_until(conn, done)
        rt.transcription_usage = None  # a server that reports none: flagged, not zero
        conn.input_audio_buffer.commit()
        read_until(conn, done)
    tokens, duration, missing = events.all()
    for event in (tokens, duration, missing):
        assert (event["operation"], event["endpoint"]) == ("audio_transcription", "realtime")
        assert event["model"] == rt.transcription_model  # from session.created
    assert (tokens["input_tokens"], tokens["output_tokens"], tokens["total_tokens"]) == (
        96,
        14,
        110,
    )
    assert tokens["units"] == {"input_text_tokens": 6, "input_audio_tokens": 90}
    assert duration["units"] == {"audio_seconds": 2.75} and duration["input_tokens"] == 0
    assert missing["usage_problem"] == "missing_usage" and missing["units"] == {}
    assert tokens["response_id"].startswith("item_")
    (session,) = session_spans()
    assert all(s.parent.span_id == session.context.span_id for s in spans.all)


# --- attribution ----------------------------------------------------------------------------------


def test_customer_is_resolved_at_connect(rt: RealtimeServer, spans: Spans, events: Events) -> None:
    client = sync_client(rt)
    with customer_context("acme", plan="pro"):
        manager = client.realtime.connect(model="gpt-realtime")
    with manager as conn, customer_context("someone-else"):
        read_until(conn, "session.created")
    with manager as conn:  # entered outside any context: still the connect-time customer
        create(conn, "realtime")
        read_until(conn, "response.done")
    (event,) = events.all()
    assert (event["customer_id"], event["customer_source"]) == ("acme", "context")
    assert event["metadata"] == {"plan": "pro"}
    sessions = session_spans()
    assert [s.attributes["cmdrdata.customer.id"] for s in sessions] == ["acme", "acme"]


def test_a_response_created_in_another_customer_context_is_billed_to_it(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    client = sync_client(rt)
    rt.script = ["ok", "reject", "ok", "ok", "reject", "ok"]
    with customer_context("acme"), client.realtime.connect(model="gpt-realtime") as conn:
        read_until(conn, "session.created")
        with customer_context("initech"):
            create(conn, "realtime")
        read_until(conn, "response.done")
        # a rejected create that names its event: exactly that one is taken out
        with customer_context("hooli"):
            create(conn, "realtime", event_id="evt_hooli")
            create(conn, "realtime")  # also hooli's, answered in order
        assert read_until(conn, "response.done")[0].type == "error"
        read_until(conn, "response.done")
        create(conn, "realtime")  # acme's again
        read_until(conn, "response.done")
        # a rejected create that names no event: the waiting ones fall back to the session's
        with customer_context("umbrella"):
            create(conn, "realtime")
        assert read_until(conn, "response.done")[-1].type == "error"
        with customer_context("umbrella"):
            create(conn, "realtime")
        read_until(conn, "response.done")
    customers = [e["customer_id"] for e in events.all()]
    assert customers == ["initech", "hooli", "acme", "umbrella"]


def test_agent_arguments_never_reach_the_sdk_and_track_usage_false_is_silent(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    talk(rt, "realtime", responses=1, track_usage=False, tracking_metadata={"a": 1})
    assert events.all() == [] and spans.all == [] and session_spans() == []


# --- the app sees what it sees without the agent --------------------------------------------------


def scenario_reads(rt: RealtimeServer) -> tuple[list[Any], list[bytes], list[str], str]:
    rt.reset()
    rt.script = ["ok", "drop"]
    client = sync_client(rt)
    got: list[Any] = []
    with client.realtime.connect(model="gpt-realtime") as conn:
        got.append(conn.recv_bytes())
        conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        got += read_until(conn, "session.updated")
        conn.send({"type": "response.create", "response": {"metadata": {"turn": "1"}}})
        for event in conn:
            got.append(event)
            if event.type == "response.done":
                break
        if hasattr(conn, "send_raw"):
            conn.send_raw(json.dumps({"type": "response.create"}))
        else:
            create(conn, "realtime")
        with pytest.raises(ConnectionClosedError) as info:
            while True:
                got.append(conn.recv())
    (server_side,) = rt.connections
    error = f"{type(info.value).__name__} rcvd={info.value.rcvd} sent={info.value.sent}"
    return got, server_side.sent, server_side.received, error


def test_the_app_gets_and_sends_the_same_with_and_without_the_agent(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    with_agent = scenario_reads(rt)
    assert len(events.all()) == 2  # one response, and the dropped one (flagged)
    running = agent.get()
    assert running is not None
    cmdrdata_autotrack.uninstrument()
    try:
        from openai.resources.realtime.realtime import RealtimeConnection

        assert not hasattr(RealtimeConnection.__dict__["recv_bytes"], "__wrapped__")
        without = scenario_reads(rt)
    finally:
        agent._agent = running
        instrumentor.instrument(running.runtime)
    for got, sent, _, _ in (with_agent, without):
        assert_app_got_what_was_sent(got, sent[: len(got)])
    assert with_agent[2] == without[2]  # the bytes the app sent, exactly
    assert with_agent[3] == without[3]  # the same exception
    assert [as_json(g)["type"] for g in with_agent[0]] == [as_json(g)["type"] for g in without[0]]


# --- sessions that end badly ------------------------------------------------------------------------


def test_a_session_closed_mid_response_meters_it_flagged(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    rt.script = ["ok", "hang"]
    client = sync_client(rt)
    with client.realtime.connect(model="gpt-realtime") as conn:
        create(conn, "realtime")
        read_until(conn, "response.done")
        create(conn, "realtime")
        read_until(conn, "response.output_audio.delta")  # generating: then the app leaves
    complete, unfinished = events.all()
    assert complete["usage_problem"] is None
    assert unfinished["usage_problem"] == "missing_usage"
    assert unfinished["usage_source"] == "none" and unfinished["input_tokens"] == 0
    assert unfinished["response_id"] == json.loads(rt.connections[0].sent[-2])["response_id"]
    (_, child_open) = spans.all
    assert child_open.attributes["cmdrdata.stream.outcome"] == "closed"
    (session,) = session_spans()
    assert session.attributes["cmdrdata.session.unfinished"] == 1
    assert session.attributes["cmdrdata.session.metered"] == 2


async def test_an_abandoned_async_session_ends_when_collected(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    rt.script = ["hang"]
    client = async_client(rt)
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    await create(conn, "realtime")
    await aread_until(conn, "response.output_audio.delta")
    raw = conn._connection  # the app forgets the connection; the test still closes the socket
    del conn
    gc.collect()
    await raw.close()
    (unfinished,) = events.all()
    assert unfinished["usage_problem"] == "missing_usage"
    (session,) = session_spans()
    assert session.attributes["cmdrdata.session.outcome"] == "abandoned"


@pytest.mark.parametrize("surface", ["realtime", "responses"])
def test_a_dropped_connection_reaches_the_app_unchanged_and_flags_the_response(
    rt: RealtimeServer, spans: Spans, events: Events, surface: str
) -> None:
    rt.script = ["drop"]
    client = sync_client(rt)
    with connect_of(client, surface)(**connect_kwargs(surface)) as conn:
        create(conn, surface)
        with pytest.raises(ConnectionClosedError):
            while True:
                conn.recv()
    (event,) = events.all()
    assert event["usage_problem"] == "missing_usage"
    (session,) = session_spans()
    assert session.attributes["cmdrdata.session.disconnects"] == 1
    assert session.attributes["cmdrdata.session.unfinished"] == 1


def test_a_malformed_response_done_is_flagged_not_zero(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    rt.script = ["malformed", "no_usage", "no_response"]
    client = sync_client(rt)
    with client.realtime.connect(model="gpt-realtime") as conn:
        for _ in rt.script[:]:
            create(conn, "realtime")
            read_until(conn, "response.done")
    malformed, no_usage, no_response = events.all()
    assert malformed["usage_problem"] == "malformed_usage"
    assert malformed["output_tokens"] == MALFORMED_USAGE["output_tokens"]  # the valid counts stay
    assert malformed["total_tokens"] == MALFORMED_USAGE["total_tokens"]
    assert "input_text_tokens" not in malformed["units"]  # -5 is not a count
    assert malformed["units"]["input_audio_tokens"] == 25
    assert no_usage["usage_problem"] == "missing_usage"
    assert no_response["usage_problem"] == "malformed_usage"
    # the response.done without its response finished the one in flight: none left over
    (session,) = session_spans()
    assert session.attributes["cmdrdata.session.unfinished"] == 0


@pytest.mark.parametrize("surface", ["responses"])
def test_responses_over_websocket_malformed_usage(
    rt: RealtimeServer, spans: Spans, events: Events, surface: str
) -> None:
    rt.script = ["malformed"]
    talk(rt, surface, responses=1)
    (event,) = events.all()
    assert event["usage_problem"] == "malformed_usage"
    assert event["input_tokens"] == RESPONSES_USAGE["input_tokens"]


# --- concurrency ---------------------------------------------------------------------------------------


def test_two_sessions_in_threads_at_once(rt: RealtimeServer, spans: Spans, events: Events) -> None:
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(customer: str) -> None:
        try:
            client = sync_client(rt)
            with customer_context(customer), client.realtime.connect(model="gpt-realtime") as c:
                read_until(c, "session.created")
                for _ in range(3):
                    barrier.wait(10)  # both sessions have a response in flight at once
                    create(c, "realtime")
                    read_until(c, "response.done")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("acme", "globex")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    got = events.all()
    assert sorted(e["customer_id"] for e in got) == ["acme"] * 3 + ["globex"] * 3
    sessions = {s.context.span_id: s.attributes["cmdrdata.customer.id"] for s in session_spans()}
    for child in spans.all:
        assert sessions[child.parent.span_id] == child.attributes["cmdrdata.customer.id"]


async def test_two_async_sessions_at_once(rt: RealtimeServer, spans: Spans, events: Events) -> None:
    async def run(customer: str) -> None:
        with customer_context(customer):
            await atalk(rt, "realtime", responses=3)

    await asyncio.gather(run("acme"), run("globex"))
    got = events.all()
    assert sorted(e["customer_id"] for e in got) == ["acme"] * 3 + ["globex"] * 3
    sessions = {s.context.span_id: s.attributes["cmdrdata.customer.id"] for s in session_spans()}
    for child in spans.all:
        assert sessions[child.parent.span_id] == child.attributes["cmdrdata.customer.id"]


# --- other paths ------------------------------------------------------------------------------------------


def test_a_create_queued_on_the_manager_before_it_connects(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    client = sync_client(rt)
    with customer_context("acme"):
        manager = client.realtime.connect(model="gpt-realtime")
    if not hasattr(manager, "send"):
        pytest.skip(f"openai {openai.__version__} cannot queue events before connecting")
    with customer_context("initech"):
        manager.send({"type": "response.create"})
    with manager as conn:
        read_until(conn, "response.done")
    (event,) = events.all()
    assert event["customer_id"] == "initech"


async def test_dispatch_events_is_metered(rt: RealtimeServer, spans: Spans, events: Events) -> None:
    client = async_client(rt)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        if not hasattr(conn, "dispatch_events"):
            pytest.skip(f"openai {openai.__version__} has no dispatch_events")
        seen: list[str] = []

        async def on_done(event: Any) -> None:
            seen.append(event.type)
            await conn.close()

        conn.on("response.done", on_done)
        await conn.response.create()
        await conn.dispatch_events()
    assert seen == ["response.done"]
    (event,) = events.all()
    assert event["input_tokens"] == REALTIME_USAGE["input_tokens"]


def test_uninstrument_restores_the_connection_classes() -> None:
    from openai.resources.realtime import realtime as module

    wrapped = module.RealtimeConnection.__dict__["recv_bytes"]
    assert hasattr(wrapped, "__wrapped__")
    running = agent.get()
    assert running is not None
    cmdrdata_autotrack.uninstrument()
    try:
        assert module.RealtimeConnection.__dict__["recv_bytes"] is wrapped.__wrapped__
        assert not any(
            hasattr(getattr(module.RealtimeConnection, name), "__wrapped__")
            for name in ("recv_bytes", "send", "close")
        )
        assert not hasattr(module.Realtime.connect, "__wrapped__")
        with pytest.raises(TypeError):  # the SDK's own connect(): it rejects unknown arguments
            openai.OpenAI(api_key="x").realtime.connect(model="m", customer_id="c")
        assert not realtime._state.sessions
    finally:
        agent._agent = running
        instrumentor.instrument(running.runtime)
    assert hasattr(module.RealtimeConnection.__dict__["recv_bytes"], "__wrapped__")


def test_metering_off_at_run_time_still_accepts_agent_arguments(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    running = agent.get()
    assert running is not None
    running.runtime.metering = False
    try:
        talk(rt, "realtime", responses=1, customer_id="c", tracking_metadata={"a": 1})
    finally:
        running.runtime.metering = True
    assert events.all() == [] and session_spans() == []


def test_a_raw_response_create_is_attributed_too(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    client = sync_client(rt)
    with client.realtime.connect(model="gpt-realtime", customer_id="acme") as conn:
        if not hasattr(conn, "send_raw"):
            pytest.skip(f"openai {openai.__version__} has no send_raw")
        with customer_context("initech"):
            conn.send_raw(b'{"type": "response.create"}')
        read_until(conn, "response.done")
        conn.send_raw('{"type": "response.create"}')
        read_until(conn, "response.done")
    assert [e["customer_id"] for e in events.all()] == ["initech", "acme"]


# --- the pure parts --------------------------------------------------------------------------------


def _layouts(event: dict[str, Any]) -> Iterator[str]:
    """The event's JSON with its keys in every rotation, compact and spaced."""
    items = list(event.items())
    for shift in range(len(items)):
        rotated = dict(items[shift:] + items[:shift])
        yield json.dumps(rotated, separators=(",", ":"))
        yield json.dumps(rotated)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.done", "event_id": "e1", "response": {"output": [{"type": "x"}]}},
        {"type": "response.created", "response": {"id": "r", "status": "in_progress"}},
        {"type": "conversation.item.input_audio_transcription.completed", "usage": {}},
        {"type": "session.updated", "session": {"type": "realtime", "model": "m"}},
        {"type": "transcription_session.created", "session": {}},
        {"type": "error", "error": {"type": "invalid_request_error", "event_id": None}},
        {"type": "response.completed", "sequence_number": 3, "response": {"id": "r"}},
    ],
)
def test_no_billed_event_is_missed_whatever_its_layout(event: dict[str, Any]) -> None:
    from cmdrdata_autotrack.instrumentation.openai.realtime_session import watched

    for text in _layouts(event):
        assert watched(text) and watched(text.encode()), text


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_audio.delta", "event_id": "e", "delta": "QUJD" * 500},
        {"type": "response.output_text.delta", "delta": '"response.done" said the model'},
        {"type": "response.audio_transcript.delta", "delta": "error"},
    ],
)
def test_deltas_are_not_parsed(event: dict[str, Any]) -> None:
    from cmdrdata_autotrack.instrumentation.openai.realtime_session import watched

    first = next(_layouts(event))  # the type first, as OpenAI sends it
    assert not watched(first) and not watched(first.encode())


def test_a_failed_connect_reaches_the_app_unchanged(spans: Spans, events: Events) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = openai.OpenAI(
        api_key="sk-test",
        base_url=f"http://127.0.0.1:{port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{port}/v1",
    )
    with pytest.raises(ConnectionRefusedError):
        client.realtime.connect(model="gpt-realtime", customer_id="acme").enter()
    assert events.all() == []
    (session,) = session_spans()
    assert session.attributes["cmdrdata.session.outcome"] == "connect_failed"
    assert session.attributes["error.type"] == "ConnectionRefusedError"
    assert not session.status.is_ok


def test_a_response_done_racing_the_close_is_metered_once(
    rt: RealtimeServer, spans: Spans, events: Events
) -> None:
    client = sync_client(rt)
    conn = client.realtime.connect(model="gpt-realtime").enter()
    try:
        session = realtime._state.sessions[conn]
        created = {"type": "response.created", "response": {"id": "resp_race"}}
        done = {"type": "response.done", "response": {"id": "resp_race", "usage": REALTIME_USAGE}}
        session.on_frame(json.dumps(created).encode())
        session.end("closed")  # another thread closes while the reader holds response.done
        session.on_frame(json.dumps(done).encode())
    finally:
        conn.close()
    (event,) = events.all()
    assert (event["response_id"], event["usage_problem"]) == ("resp_race", "missing_usage")
