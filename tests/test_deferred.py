"""Work whose usage comes later: background responses, Assistants runs, Batch.

Each billed unit is metered exactly once, whichever way (and in whichever process) the
app learns it finished: its event id derives from the work's id. Events are made by the
agent's own span processor from the spans the test recorded.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fake_openai_deferred import RUN_USAGE, FakeDeferred

from cmdrdata_autotrack import customer_context
from cmdrdata_autotrack.export import pending
from cmdrdata_autotrack.export.processor import MeteringSpanProcessor, span_record_to_event
from cmdrdata_autotrack.usage.work import STATE, work_event_id

from conftest import Spans
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
CARRY = "x-cmdrdata-carry"
SPOOL_DIR = Path(os.environ["CMDRDATA_SPOOL_DIR"])


@pytest.fixture(scope="module")
def deferred_server() -> Iterator[FakeDeferred]:
    fake = FakeDeferred().start()
    yield fake
    fake.stop()


@pytest.fixture
def dfake(deferred_server: FakeDeferred) -> FakeDeferred:
    deferred_server.reset()
    return deferred_server


@pytest.fixture
def dclient(dfake: FakeDeferred) -> Any:
    return openai.OpenAI(base_url=dfake.base_url, api_key="sk-test-key", max_retries=0)


@pytest.fixture
def daclient(dfake: FakeDeferred) -> Any:
    return openai.AsyncOpenAI(base_url=dfake.base_url, api_key="sk-test-key", max_retries=0)


def events(spans: Spans) -> list[dict[str, Any]]:
    """The usage events the agent's processor makes of the spans ended so far."""
    records: list[dict[str, Any]] = []
    processor = MeteringSpanProcessor(sinks=[records.append])
    for span in spans.all:
        processor.on_end(span)
    return [span_record_to_event(record, "unattributed") for record in records]


def _create_background(client: Any, **extra: Any) -> Any:
    return client.responses.create(model="gpt-4o-mini", input="hi", background=True, **extra)


# --- background responses --------------------------------------------------------------------


def test_background_create_bills_nothing_and_the_first_terminal_retrieve_bills_once(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created = _create_background(dclient, customer_id="acme", tracking_metadata={"job": "nightly"})
    assert created.status == "queued" and created.usage is None
    assert [s.attributes[STATE] for s in spans.all] == ["pending"]
    assert events(spans) == []  # nothing billed early: no zero-usage event
    assert dclient.responses.retrieve(created.id).status == "queued"  # polling, not finished
    assert events(spans) == []

    dfake.finish(created.id)
    final = dclient.responses.retrieve(created.id)
    assert final.status == "completed"
    (event,) = events(spans)
    assert event["event_id"] == work_event_id("response:" + created.id)
    assert (event["customer_id"], event["customer_source"]) == ("acme", "argument")
    assert event["metadata"] == {"job": "nightly"}
    assert (event["input_tokens"], event["output_tokens"]) == (21, 9)
    assert event["request_model"] == "gpt-4o-mini"

    # Seen finished again, by every entry point: the same event, never a second one.
    dclient.responses.retrieve(created.id)
    dclient.responses.with_raw_response.retrieve(created.id).parse()
    with dclient.responses.with_streaming_response.retrieve(created.id) as raw:
        raw.read()
    again = events(spans)
    assert len(again) == 4
    assert {e["event_id"] for e in again} == {event["event_id"]}
    assert {e["customer_id"] for e in again} == {"acme"}
    states = [s.attributes[STATE] for s in spans.all]
    assert states == ["pending", "pending", "billed", "repeat", "repeat", "repeat"]
    assert all(CARRY not in r.headers for r in dfake.requests)


def test_async_background_retrieve(dfake: FakeDeferred, daclient: Any, spans: Spans) -> None:
    async def run() -> str:
        created = await daclient.responses.create(
            model="gpt-4o-mini", input="hi", background=True, customer_id="beta-co"
        )
        dfake.finish(created.id)
        await daclient.responses.retrieve(created.id)
        async with daclient.responses.with_streaming_response.retrieve(created.id) as raw:
            await raw.read()
        return str(created.id)

    response_id = asyncio.run(run())
    found = events(spans)
    assert [e["event_id"] for e in found] == [work_event_id("response:" + response_id)] * 2
    assert {e["customer_id"] for e in found} == {"beta-co"}


def test_create_in_one_process_retrieve_in_another(
    dfake: FakeDeferred, dclient: Any, spans: Spans, tmp_path: Path
) -> None:
    script = (
        "import cmdrdata_autotrack, openai, sys\n"
        "cmdrdata_autotrack.instrument()\n"
        "c = openai.OpenAI(base_url=sys.argv[1], api_key='sk-test-key', max_retries=0)\n"
        "r = c.responses.create(model='gpt-4o-mini', input='hi', background=True,\n"
        "    customer_id='worker-cust', tracking_metadata={'queue': 'q1'})\n"
        "print(r.id)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        PYTHONPATH=str(ROOT),
        CMDRDATA_SPOOL_DIR=str(SPOOL_DIR),  # the same spool folder: the same app
        CMDRDATA_LEDGER_PATH=str(tmp_path / "ledger.sqlite3"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script, dfake.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    response_id = done.stdout.strip().splitlines()[-1]
    dfake.finish(response_id)
    dclient.responses.retrieve(response_id)  # this process never saw the create
    (event,) = events(spans)
    assert event["customer_id"] == "worker-cust"
    assert event["metadata"] == {"queue": "q1"}
    assert event["event_id"] == work_event_id("response:" + response_id)
    assert event["input_tokens"] == 21


def test_cancel_bills_the_partial_usage_once(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created = _create_background(dclient, customer_id="acme")
    cancelled = dclient.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    dclient.responses.retrieve(created.id)
    found = events(spans)
    assert len(found) == 2 and {e["event_id"] for e in found} == {
        work_event_id("response:" + created.id)
    }
    assert (found[0]["output_tokens"], found[0]["customer_id"]) == (3, "acme")


def test_resumed_streams_bill_once_and_send_no_agent_header(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created = _create_background(dclient, customer_id="acme")
    with dclient.responses.stream(response_id=created.id) as stream:  # not finished yet
        assert [e.type for e in stream][-1] == "response.in_progress"
    assert events(spans) == []
    dfake.finish(created.id)
    with dclient.responses.stream(response_id=created.id, starting_after=0) as stream:
        final = stream.get_final_response()
    assert final.status == "completed"
    for _ in dclient.responses.retrieve(created.id, stream=True):
        pass
    found = events(spans)
    assert [e["event_id"] for e in found] == [work_event_id("response:" + created.id)] * 2
    assert found[0]["customer_id"] == "acme" and found[0]["request"]["streaming"] is True
    resumed = [r for r in dfake.requests if r.method == "GET"]
    assert len(resumed) == 3
    for request in resumed:  # the exact headers the server received
        assert CARRY not in request.headers, request.headers


def test_a_streamed_background_create_is_billed_under_the_work_id(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created_id = ""
    for event in dclient.responses.create(
        model="gpt-4o-mini", input="hi", background=True, stream=True, customer_id="acme"
    ):
        created_id = event.response.id
    assert [s.attributes[STATE] for s in spans.all] == ["pending"]  # ended before completing
    dfake.finish(created_id)
    dclient.responses.retrieve(created_id)
    (event,) = events(spans)
    assert event["event_id"] == work_event_id("response:" + created_id)
    assert event["customer_id"] == "acme"


def test_a_stored_response_that_is_not_background_bills_nothing_when_read(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created = dclient.responses.create(model="gpt-4o-mini", input="hi")
    dclient.responses.retrieve(created.id)
    (event,) = events(spans)  # the create's own event only
    assert event["operation"] == "chat" and event["input_tokens"] == 21
    assert event["event_id"] != work_event_id("response:" + created.id)


def test_doctor_lists_background_work_never_seen_finished(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    created = _create_background(dclient)
    found = pending.summary(SPOOL_DIR)
    assert found is not None and found[0] >= 1 and "response:" + created.id in found[1]
    dfake.finish(created.id)
    dclient.responses.retrieve(created.id)
    after = pending.summary(SPOOL_DIR)
    assert after is not None and "response:" + created.id not in after[1]
    from cmdrdata_autotrack.cli import doctor
    from cmdrdata_autotrack.config import Settings

    names = [check.name for check in doctor.checks(Settings.from_env(), network=False)]
    assert "deferred work" in names


# --- the carry header: every stream helper ------------------------------------------------


def _helpers(client: Any) -> list[tuple[str, Any]]:
    helpers = [
        (
            "chat.completions.stream",
            lambda: client.chat.completions.stream(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], customer_id="c"
            ),
        ),
        (
            "responses.stream(input=)",
            lambda: client.responses.stream(model="gpt-4o-mini", input="hi", customer_id="c"),
        ),
    ]
    beta_chat = getattr(getattr(client, "beta", None), "chat", None)
    if beta_chat is not None:
        helpers.append(
            (
                "beta.chat.completions.stream",
                lambda: beta_chat.completions.stream(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                ),
            )
        )
    return helpers


def test_no_stream_helper_sends_the_agent_header(fake: FakeOpenAI, client: Any) -> None:
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, open_stream in _helpers(client):
            with open_stream() as stream:
                for _ in stream:
                    pass
            request = fake.last_request
            assert CARRY not in request.headers, (name, request.headers)
            seen.append(name)
    assert len(seen) >= 2


# --- Assistants runs ----------------------------------------------------------------------


def _beta_threads(client: Any) -> Any:
    threads = getattr(getattr(client, "beta", None), "threads", None)
    if threads is None:
        pytest.skip(f"openai {openai.__version__} has no Assistants runs")
    return threads


def test_polled_run_bills_its_usage_once(dfake: FakeDeferred, dclient: Any, spans: Spans) -> None:
    threads = _beta_threads(dclient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with customer_context("run-cust", team="a"):
            run = threads.runs.create_and_poll(
                thread_id="thread_1", assistant_id="asst_1", poll_interval_ms=1
            )
        assert run.status == "completed"
        threads.runs.retrieve(run.id, thread_id="thread_1")
    found = events(spans)
    assert len(found) == 2 and {e["event_id"] for e in found} == {work_event_id("run:" + run.id)}
    assert found[0]["customer_id"] == "run-cust" and found[0]["metadata"] == {"team": "a"}
    assert (found[0]["input_tokens"], found[0]["output_tokens"]) == (
        RUN_USAGE["prompt_tokens"],
        RUN_USAGE["completion_tokens"],
    )


def test_streamed_run_bills_thread_run_completed(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    threads = _beta_threads(dclient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with customer_context("stream-cust"):
            stream = threads.runs.create(thread_id="thread_1", assistant_id="asst_1", stream=True)
            run_id = ""
            for event in stream:
                if event.event == "thread.run.completed":
                    run_id = event.data.id
    (event,) = events(spans)  # the step's usage is not the run's
    assert event["event_id"] == work_event_id("run:" + run_id)
    assert (event["input_tokens"], event["total_tokens"]) == (40, 52)
    assert event["customer_id"] == "stream-cust"


# --- Batch --------------------------------------------------------------------------------


def _run_batch(client: Any) -> Any:
    lines = [
        {
            "custom_id": f"cust-{n}::req-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        for n in (1, 2)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    with customer_context("batch-owner"):
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    while batch.status != "completed":
        batch = client.batches.retrieve(batch.id)
    return batch


def test_batch_output_lines_bill_once_at_the_batch_rate(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    batch = _run_batch(dclient)
    assert events(spans) == []  # the batch's own calls bill nothing; Batch.usage neither
    dclient.files.content(batch.output_file_id).read()
    first = events(spans)
    assert len(first) == 2
    assert {e["customer_id"] for e in first} == {"batch-owner"}
    assert {e["service_tier"] for e in first} == {"batch"}
    assert [(e["input_tokens"], e["output_tokens"]) for e in first] == [(10, 2), (10, 2)]
    dclient.files.content(batch.output_file_id).read()  # read twice: the same two events
    dclient.batches.retrieve(batch.id)
    both = events(spans)
    assert len(both) == 4 and {e["event_id"] for e in both} == {e["event_id"] for e in first}


def test_batch_customer_from_custom_id_is_opt_in(
    dfake: FakeDeferred, dclient: Any, spans: Spans, agent_settings: Any
) -> None:
    batch = _run_batch(dclient)
    agent_settings(batch_customer_from_custom_id="::")  # CMDRDATA_BATCH_CUSTOMER_FROM_CUSTOM_ID
    dclient.files.content(batch.output_file_id).read()
    found = events(spans)
    assert sorted(e["customer_id"] for e in found) == ["cust-1", "cust-2"]
    assert {e["customer_source"] for e in found} == {"custom_id"}


# --- Batch output read as a stream (with_streaming_response) ---------------------------------


def _upload(client: Any, data: bytes) -> str:
    """A file the fake serves back as it is (an output file the test writes itself)."""
    return str(client.files.create(file=("out.jsonl", io.BytesIO(data)), purpose="batch").id)


def _output_line(n: int, tokens: int = 10) -> dict[str, Any]:
    body = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": tokens, "completion_tokens": 2, "total_tokens": tokens + 2},
    }
    return {
        "id": f"batch_req_{n}",
        "custom_id": f"row-{n}",
        "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
        "error": None,
    }


def test_an_output_file_read_as_a_stream_bills_each_line_once(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    batch = _run_batch(dclient)
    whole = dclient.files.content(batch.output_file_id).read()
    by_read = events(spans)
    with dclient.files.with_streaming_response.content(batch.output_file_id) as response:
        streamed = b"".join(response.iter_bytes(chunk_size=7))  # lines cut across chunks
    assert streamed == whole  # the app's bytes, as they are
    found = events(spans)[len(by_read) :]
    assert [(e["input_tokens"], e["output_tokens"], e["service_tier"]) for e in found] == [
        (10, 2, "batch"),
        (10, 2, "batch"),
    ]
    assert {e["customer_id"] for e in found} == {"batch-owner"}  # the batch's attribution
    assert {e["event_id"] for e in found} == {e["event_id"] for e in by_read}  # once
    with dclient.files.with_streaming_response.content(batch.output_file_id) as response:
        assert [json.loads(line)["custom_id"] for line in response.iter_lines()] == [
            "cust-1::req-1",
            "cust-2::req-2",
        ]
    assert len(events(spans)) == 6


async def test_an_output_file_read_as_an_async_stream_is_billed(
    dfake: FakeDeferred, dclient: Any, daclient: Any, spans: Spans
) -> None:
    batch = _run_batch(dclient)
    async with daclient.files.with_streaming_response.content(batch.output_file_id) as response:
        chunks = [chunk async for chunk in response.iter_bytes(chunk_size=5)]
    assert len(chunks) > 2
    found = events(spans)
    assert len(found) == 2 and {e["service_tier"] for e in found} == {"batch"}


def test_a_stream_closed_early_bills_the_lines_read_whole(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    lines = [json.dumps(_output_line(n, tokens=n)).encode() for n in (1, 2, 3)]
    file_id = _upload(dclient, b"\n".join(lines))  # no "\n" after the last line
    with dclient.files.with_streaming_response.content(file_id) as response:
        chunks = response.iter_bytes(chunk_size=len(lines[0]) + 10)
        next(chunks)  # the first line and a piece of the second
        next(chunks)  # the second line ends in this one
    first = events(spans)
    assert [e["input_tokens"] for e in first] == [1, 2]
    with dclient.files.with_streaming_response.content(file_id) as response:
        response.read()  # to the end: the last line, with no "\n", is read too
    again = events(spans)[2:]
    assert [e["input_tokens"] for e in again] == [1, 2, 3]
    assert [e["event_id"] for e in again][:2] == [e["event_id"] for e in first]


def test_odd_lines_in_a_streamed_output_file_are_counted_not_billed(
    dfake: FakeDeferred, dclient: Any, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmdrdata_autotrack.instrumentation.openai import deferred
    from cmdrdata_autotrack.telemetry import metrics
    from cmdrdata_autotrack.usage import batch_extract

    # a line longer than any output line is skipped, as a read file's is
    monkeypatch.setattr(deferred, "MAX_LINE", 4000)
    monkeypatch.setattr(batch_extract, "MAX_LINE", 4000)
    long_line = json.dumps({**_output_line(9), "padding": "x" * 6000}).encode()
    data = b"\n".join(
        [
            json.dumps(_output_line(1)).encode(),
            b"{not json",
            long_line,
            json.dumps({"custom_id": "no-response"}).encode(),
            json.dumps(_output_line(2)).encode(),
        ]
    )
    file_id = _upload(dclient, data + b"\n")
    before = metrics.snapshot().get("batch_output_bad_lines", 0)
    with dclient.files.with_streaming_response.content(file_id) as response:
        for _ in response.iter_bytes(chunk_size=1000):
            pass
    assert [e["response_id"] for e in events(spans)] == ["chatcmpl-1", "chatcmpl-2"]
    assert metrics.snapshot()["batch_output_bad_lines"] == before + 2
    with dclient.files.with_streaming_response.content(file_id) as response:
        assert b"".join(response.iter_bytes()) == data + b"\n"  # unchanged for the app


def test_another_kind_of_file_read_as_a_stream_bills_nothing(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    from cmdrdata_autotrack.telemetry import metrics

    text = b"".join(b'{"messages": [{"role": "user", "content": "hi"}]}\n' for _ in range(3000))
    file_id = _upload(dclient, text)  # a fine-tuning file: no custom_id in its first 64 KiB
    before = metrics.snapshot().get("batch_output_bad_lines", 0)
    with dclient.files.with_streaming_response.content(file_id) as response:
        assert response.read() == text
    assert events(spans) == []
    assert metrics.snapshot().get("batch_output_bad_lines", 0) == before


def test_an_output_file_streamed_to_disk_is_billed(
    dfake: FakeDeferred, dclient: Any, spans: Spans, tmp_path: Path
) -> None:
    batch = _run_batch(dclient)
    with dclient.files.with_streaming_response.content(batch.output_file_id) as response:
        response.stream_to_file(tmp_path / "out.jsonl", chunk_size=11)
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 2
    assert [e["service_tier"] for e in events(spans)] == ["batch", "batch"]


def test_an_output_file_read_a_byte_at_a_time_is_billed(
    dfake: FakeDeferred, dclient: Any, spans: Spans
) -> None:
    lines = [json.dumps(_output_line(n, tokens=n)).encode() for n in (1, 2)]
    file_id = _upload(dclient, b"\n".join(lines) + b"\n")
    with dclient.files.with_streaming_response.content(file_id) as response:
        read = b"".join(response.iter_bytes(chunk_size=1))  # the mark itself split up
    assert read == b"\n".join(lines) + b"\n"
    assert [e["input_tokens"] for e in events(spans)] == [1, 2]
