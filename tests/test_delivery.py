"""Delivery to a real HTTP ingest server on 127.0.0.1 that fails on command.

For every fault: the distinct event ids received equal the events sent, and no
event is counted twice once deduplicated by its idempotency key.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export import ledger as ledger_db
from cmdrdata_autotrack.export.client import endpoint_problem, key_problem
from cmdrdata_autotrack.export.pipeline import Pipeline, lease_owner
from cmdrdata_autotrack.export.spool import Spool
from cmdrdata_autotrack.telemetry import logging as agent_logging
from cmdrdata_autotrack.telemetry import metrics
from cmdrdata_autotrack.usage.event import build_event

from ingest_server import IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

KEY = "tk-test-0123456789abcdef"


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


def settings_for(tmp_path: Path, ingest: IngestServer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": KEY,
        "endpoint": ingest.url if ingest else "https://api.cmdrdata.ai/api/events",
        "spool_dir": str(tmp_path / "spool"),
        "ledger_path": str(tmp_path / "ledger.sqlite3"),
        "timeout": 0.5,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.2,
        "breaker_threshold": 3,
        "breaker_cooldown": 0.1,
        "shutdown_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    made: list[Pipeline] = []
    yield made
    for pipeline in made:
        pipeline.shutdown(0)


def make(pipelines: list[Pipeline], settings: Settings) -> Pipeline:
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    return pipeline


def event(customer: str = "acme", **attrs: Any) -> dict[str, Any]:
    attributes = {
        "cmdrdata.metered": True,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 17,
        "gen_ai.usage.output_tokens": 9,
        "cmdrdata.customer.id": customer,
        **attrs,
    }
    return build_event(
        attributes,
        trace_id=uuid.uuid4().int,
        span_id=uuid.uuid4().int >> 64,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_500_000_000,
        ok=True,
    )


def submit(pipeline: Pipeline, n: int) -> list[str]:
    events = [event(f"c{i % 5}") for i in range(n)]
    for e in events:
        pipeline.submit(e)
    return [e["event_id"] for e in events]


def assert_exactly_once(ingest: IngestServer, ids: list[str], timeout: float = 20.0) -> None:
    assert ingest.wait_for_events(len(ids), timeout), (
        f"{len(ingest.accepted_ids())} of {len(ids)} events arrived"
    )
    assert ingest.accepted_ids() == set(ids)


# --- the happy paths ----------------------------------------------------------------------


def test_single_event_mode(tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, batch_size=1))
    ids = submit(pipeline, 40)
    assert_exactly_once(ingest, ids)
    assert ingest.duplicates() == 0
    first = ingest.requests[0]
    assert first.path == "/api/events"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.idempotency_key == first.body["event_id"]
    assert first.headers["content-type"] == "application/json"
    # the event in the format the cmdrdata-openai client used, plus the new fields
    body = ingest.accepted()[ids[0]]
    for key in (
        "customer_id",
        "model",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "provider",
        "metadata",
        "timestamp",
        "version",
        "latency",
        "error",
        "request",
    ):
        assert key in body
    assert (body["input_tokens"], body["output_tokens"], body["total_tokens"]) == (17, 9, 26)
    # all acknowledged: the spool is empty
    assert pipeline.flush(5)
    assert Spool(pipeline.spool_path).stats().depth == 0


def test_batch_mode(tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, batch_size=25))
    ids = submit(pipeline, 100)
    assert_exactly_once(ingest, ids)
    assert all(r.path == "/api/events/batch" for r in ingest.requests)
    assert len(ingest.requests) < 100


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 10, 500])
@pytest.mark.parametrize(
    "fault",
    ["fail_500", "rate_limit", "slow", "reset", "down"],
)
def test_faults_lose_nothing_and_count_nothing_twice(
    fault: str, batch_size: int, tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, batch_size=batch_size))
    if fault == "fail_500":
        ingest.fail(500, times=4)
    elif fault == "rate_limit":
        ingest.rate_limit(retry_after="0.2", times=2)
    elif fault == "slow":
        ingest.slow(1.5, times=2)  # beyond the 0.5 s timeout: the client retries
    elif fault == "reset":
        ingest.reset_connection(times=3)
    else:
        ingest.down()
    ids = submit(pipeline, 30)
    if fault == "down":
        assert not ingest.wait_for_events(1, 0.5)
        ingest.up()
    assert_exactly_once(ingest, ids)
    # duplicates (a slow answer the client gave up on) are the same events, same keys
    for request in ingest.requests:
        if request.body and "event_id" in request.body:
            assert request.idempotency_key == request.body["event_id"]


def test_retry_after_is_honoured(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest))
    ingest.rate_limit(retry_after="1", times=1)
    ids = submit(pipeline, 1)
    assert_exactly_once(ingest, ids)
    first, second = ingest.requests[0], ingest.requests[-1]
    assert first.status == 429
    assert second.time - first.time >= 0.95


def test_circuit_breaker_opens_probes_and_recovers(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, breaker_cooldown=0.3))
    ingest.fail(503, times=None)
    ids = submit(pipeline, 10)
    assert ingest.wait_for_requests(3, 10)
    # open: the sender stops hammering the API and probes one request at a time
    assert _wait_for(lambda: pipeline.breaker.state in ("open", "half-open"))
    assert Spool(pipeline.spool_path).state().get("breaker") in ("open", "half-open")
    ingest.clear()
    assert_exactly_once(ingest, ids)
    assert pipeline.breaker.state == "closed"


def test_non_retryable_event_goes_to_dead_letters_alone(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest))
    events = [event() for _ in range(5)]
    ingest.reject_event(events[2]["event_id"], 422, "bad model")
    for e in events:
        pipeline.submit(e)
    good = [e["event_id"] for i, e in enumerate(events) if i != 2]
    assert_exactly_once(ingest, good)
    spool = Spool(pipeline.spool_path)
    assert _wait_for(lambda: spool.stats().dead_letters == 1)
    dead = spool.dead_letters()
    assert dead[0]["event_id"] == events[2]["event_id"]
    assert dead[0]["status"] == 422 and "bad model" in str(dead[0]["reason"])
    # resendable once fixed
    ingest.clear()
    ingest.reset()
    assert spool.resend_dead_letters() == 1
    pipeline.flush(5)
    assert ingest.wait_for_events(1, 10)
    assert events[2]["event_id"] in ingest.accepted_ids()


def test_one_bad_event_does_not_sink_its_batch(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, batch_size=10))
    events = [event() for _ in range(10)]
    ingest.reject_event(events[4]["event_id"])
    for e in events:
        pipeline.submit(e)
    good = [e["event_id"] for i, e in enumerate(events) if i != 4]
    assert_exactly_once(ingest, good)
    spool = Spool(pipeline.spool_path)
    assert _wait_for(lambda: spool.stats().dead_letters == 1)


def test_wrong_key_keeps_events_spooled(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, api_key="tk-wrong-key-000000000"))
    submit(pipeline, 3)
    assert ingest.wait_for_requests(1, 10)
    pipeline.flush(1)
    spool = Spool(pipeline.spool_path)
    stats = spool.stats()
    assert stats.depth == 3 and stats.dead_letters == 0


# --- durability of the spool --------------------------------------------------------------


def test_journal_read_twice_is_not_sent_twice(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """A crash between importing a journal segment and deleting it re-reads the segment."""
    settings = settings_for(tmp_path, ingest)
    pipeline = make(pipelines, settings)
    ids = submit(pipeline, 5)
    pipeline.journal.rotate()
    saved = tmp_path / "saved"
    shutil.copytree(pipeline.spool_dir / "journal", saved)
    assert_exactly_once(ingest, ids)
    pipeline.shutdown()
    shutil.copytree(saved, pipeline.spool_dir / "journal", dirs_exist_ok=True)
    sent = len(ingest.requests)
    again = make(pipelines, settings)
    assert again.flush(5)
    assert ingest.duplicates() == 0 and len(ingest.requests) == sent  # nothing sent again


def span_record(customer: str = "acme", **attrs: Any) -> dict[str, Any]:
    """A span record as the processor journals it (the importer makes it an event)."""
    return {
        "v": 1,
        "a": {
            "cmdrdata.metered": True,
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 17,
            "gen_ai.usage.output_tokens": 9,
            "cmdrdata.customer.id": customer,
            **attrs,
        },
        "t": uuid.uuid4().int,
        "s": uuid.uuid4().int >> 64,
        "b": 1_700_000_000_000_000_000,
        "e": 1_700_000_000_500_000_000,
        "ok": True,
    }


def _delivered(spool: Spool) -> set[str]:
    return {row[0] for row in spool.conn.execute("SELECT event_id FROM delivered")}


def _age_delivered(spool: Spool, seconds: float) -> None:
    with spool._transaction():
        spool.conn.execute("UPDATE delivered SET delivered_at = delivered_at - ?", (seconds,))


def test_delivered_ids_are_kept_while_a_journal_segment_may_give_them_again(
    tmp_path: Path,
) -> None:
    """An ordinary id is forgotten once every segment in the journal started after it was
    delivered (by more than the clock margin); a deferred work's id is kept the week."""
    from cmdrdata_autotrack.export.journal import JOURNAL_MARGIN_S
    from cmdrdata_autotrack.export.spool import DELIVERED_KEEP_S

    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        plain, work = event(), event()
        items = [(e["event_id"], json.dumps(e), e) for e in (plain, work)]
        spool.put_leased(items, 1 << 30, "reject", lasting={work["event_id"]})
        spool.ack([e["event_id"] for e in (plain, work)])
        both = {plain["event_id"], work["event_id"]}
        _age_delivered(spool, 3600)
        now = time.time()
        # a segment started before they were delivered is still there: both are kept
        assert spool.prune_delivered(journal_start=now - 7200) == 0
        assert spool.prune_delivered(journal_start=None) == 0  # not known: the week
        # delivered within the margin before the oldest segment's start: kept
        assert spool.prune_delivered(journal_start=now - 3600 + JOURNAL_MARGIN_S / 2) == 0
        assert _delivered(spool) == both
        # every segment started later: the plain id goes, the work's stays ...
        assert spool.prune_delivered(journal_start=now) == 1
        assert _delivered(spool) == {work["event_id"]}
        # ... and a later sighting of the work is still skipped; the plain event, which no
        # segment can give again, would be spooled like a new one
        assert spool.put(items, 1 << 30, "reject") == (1, 0)
        assert spool.stats().depth == 1
        assert [x.event_id for x in spool.lease("me", 10, 60)] == [plain["event_id"]]
        # after the week the work's id goes too, and its lasting row with it
        _age_delivered(spool, DELIVERED_KEEP_S)
        with spool._transaction():
            spool.conn.execute("UPDATE lasting_ids SET until = 0")
        assert spool.prune_delivered(journal_start=now) == 1
        assert list(spool.conn.execute("SELECT * FROM lasting_ids")) == []


def test_a_waiting_deferred_works_lasting_row_outlives_its_until(tmp_path: Path) -> None:
    """Still in the queue (a long outage), the work's id keeps its lasting row, so that
    once delivered it is kept the week."""
    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        work = event()
        spool.put_leased(
            [(work["event_id"], json.dumps(work), work)],
            1 << 30,
            "reject",
            lasting=[work["event_id"]],
        )
        with spool._transaction():
            spool.conn.execute("UPDATE lasting_ids SET until = 0")
        spool.prune_delivered(journal_start=time.time())
        assert [r[0] for r in spool.conn.execute("SELECT event_id FROM lasting_ids")] == [
            work["event_id"]
        ]


def test_a_week_of_delivered_ids_is_forgotten_a_chunk_a_round(
    tmp_path: Path, pipelines: list[Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table an older version filled for a week is pruned a bounded chunk at a time;
    the lead prunes again after its next round while a chunk came back full."""
    from cmdrdata_autotrack.export import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "PRUNE_CHUNK", 2)
    pipeline = make(pipelines, settings_for(tmp_path, None, endpoint="http://127.0.0.1:9/none"))
    with closing(Spool(pipeline.spool_path)) as spool:
        old = [event() for _ in range(3)]
        spool.put([(e["event_id"], json.dumps(e), e) for e in old], 1 << 30, "reject")
        spool.ack([e["event_id"] for e in old])
        _age_delivered(spool, 3600)
        assert spool.prune_delivered(journal_start=None, limit=2) == 0  # within the week
        never = -math.inf
        assert pipeline._prune_delivered(spool, never) == never  # 2 of 3: again next round
        assert len(_delivered(spool)) == 1
        pruned_at = pipeline._prune_delivered(spool, never)  # the last one: done
        assert pruned_at > never and _delivered(spool) == set()
        assert pipeline._prune_delivered(spool, pruned_at) == pruned_at  # not due yet


def test_the_journals_oldest_start_is_read_from_its_segments_names(tmp_path: Path) -> None:
    from cmdrdata_autotrack.export.journal import Journal

    folder = tmp_path / "journal"
    journal = Journal(folder, 1 << 20)
    before = time.time()
    assert journal.oldest_start() >= before  # no folder yet: nothing to read again
    folder.mkdir()
    (folder / "12-1700000000000000000.jsonl").write_text("")
    (folder / "13-1700000500000000000.jsonl").write_text("")
    (folder / "notes.txt").write_text("")  # not a segment
    assert journal.oldest_start() == 1_700_000_000.0
    (folder / "odd.jsonl").write_text("")  # a name that does not say: not known
    assert journal.oldest_start() is None
    (folder / "odd.jsonl").unlink()
    (folder / "14-\u00b2.jsonl").write_text("")  # digits Python's int() would refuse
    assert journal.oldest_start() is None


def test_the_importer_marks_deferred_works_ids_as_lasting(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    from cmdrdata_autotrack.export.pipeline import journal_line
    from cmdrdata_autotrack.usage.work import ID_KEY, work_event_id

    settings = settings_for(tmp_path, None, endpoint="http://127.0.0.1:9/none")
    pipeline = make(pipelines, settings)  # no submit: no threads, this test imports
    plain, work = span_record(), span_record(**{ID_KEY: "batch:batch_1/req_1"})
    prebuilt = event()  # an event already (as older versions journaled): it does not say
    for record in (plain, work, prebuilt):
        assert pipeline.journal.append(journal_line(record).encode())
    with closing(Spool(pipeline.spool_path)) as spool:
        assert pipeline.import_journal(spool) == 3
        lasting = {r[0] for r in spool.conn.execute("SELECT event_id FROM lasting_ids")}
        assert spool.stats().depth == 3
    assert lasting == {work_event_id("batch:batch_1/req_1"), prebuilt["event_id"]}


def test_the_lead_sender_forgets_delivered_ids_no_segment_can_give_again(
    tmp_path: Path,
    ingest: IngestServer,
    pipelines: list[Pipeline],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lead prunes as it runs, and a segment left in the journal keeps its events'
    ids. (It prunes after rounds that sent something as well as idle ones; here the idle
    ones alone would do it.)"""
    from cmdrdata_autotrack.export import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "PRUNE_DELIVERED_EVERY_S", 0.0)
    settings = settings_for(tmp_path, ingest)
    pipeline = make(pipelines, settings)
    for record in (span_record(), span_record()):
        pipeline.submit(record)
    assert pipeline.flush(5)
    with closing(Spool(pipeline.spool_path)) as spool:
        assert len(_delivered(spool)) == 2
        _age_delivered(spool, 3600)  # as if delivered an hour ago
    # a segment started two hours ago is in the journal (its writer holds it, so that the
    # importer leaves it there): every id delivered since may be in it, so all are kept
    left = pipeline.spool_dir / "journal" / f"1-{time.time_ns() - 7200 * 10**9}.jsonl"
    held = os.open(left, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        pipeline.submit(span_record())
        assert pipeline.flush(5)
        with closing(Spool(pipeline.spool_path)) as spool:
            assert len(_delivered(spool)) == 3
    finally:
        os.close(held)
    left.unlink()
    pipeline.submit(span_record())
    assert pipeline.flush(5)
    pipeline.shutdown()  # the round's prune is behind it once its thread has ended
    with closing(Spool(pipeline.spool_path)) as spool:
        assert len(_delivered(spool)) == 2  # the two delivered an hour ago are forgotten
    assert len(ingest.accepted_ids()) == 4 and ingest.duplicates() == 0


def test_spool_overflow_is_counted_and_logged(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    settings = settings_for(tmp_path, None, endpoint="http://127.0.0.1:9/none", spool_max_mb=0.01)
    pipeline = make(pipelines, settings)
    before = metrics.snapshot().get("events_dropped", 0)
    submit(pipeline, 40)  # ~1.5 kB each: about 6 fit in 10 kB
    pipeline.import_journal(Spool(pipeline.spool_path))
    stats = Spool(pipeline.spool_path).stats()
    assert 0 < stats.depth < 40 and stats.bytes <= 0.01 * 1024 * 1024
    assert metrics.snapshot()["events_dropped"] - before == 40 - stats.depth


def test_a_segment_is_stored_a_slice_at_a_time_and_a_failure_between_slices_loses_nothing(
    tmp_path: Path, pipelines: list[Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import round stores a segment's events IMPORT_SLICE at a time (a round's objects
    are what the importer's malloc arena grows to): damage after the first slice leaves
    the segment in the journal, and the next round stores every event exactly once."""
    from cmdrdata_autotrack.export import pipeline as pipeline_module
    from cmdrdata_autotrack.export.sqlite import DamagedDatabase

    settings = settings_for(tmp_path, None, endpoint="http://127.0.0.1:9/none")
    pipeline = make(pipelines, settings)  # no submit: no threads, this test imports
    events = [event(f"c{i % 5}") for i in range(150)]
    for e in events:
        assert pipeline.journal.append(pipeline_module.journal_line(e).encode())
    real_put = pipeline_module.ImportTargets.put
    calls: list[int] = []
    failures = [DamagedDatabase(pipeline.spool_path, "injected")]

    def put(self: Any, owner: Any, batch: list[Any], *args: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 2 and failures:
            raise failures.pop()
        return real_put(self, owner, batch, *args)

    monkeypatch.setattr(pipeline_module.ImportTargets, "put", put)
    store = pipeline.open_store()
    try:
        assert pipeline.import_journal(store) == 0  # the first slice stored; the segment stays
        assert calls == [64, 64]
        calls.clear()
        assert pipeline.import_journal(store) == 150 - 64  # the first slice is known by id
        assert calls == [64, 64, 22]
    finally:
        store.close()
    with closing(sqlite3.connect(pipeline.spool_path)) as conn:  # leased to our senders
        waiting = [row[0] for row in conn.execute("SELECT event_id FROM events")]
    assert sorted(waiting) == sorted(e["event_id"] for e in events)


def test_drop_oldest_policy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    items = [(f"id{i}", "x" * 100, None) for i in range(10)]
    added, dropped = spool.put(items, max_bytes=500, policy="drop-oldest")
    assert (added, dropped) == (10, 5)
    remaining = [e.event_id for e in spool.lease("t", 100, 10)]
    assert remaining == [f"id{i}" for i in range(5, 10)]


def test_ledger_mode_without_a_key(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, None, api_key=None))
    ids = submit(pipeline, 7)
    assert pipeline.flush(5)
    conn = ledger_db.open_ledger(Path(pipeline.ledger_path))
    rows = conn.execute("SELECT event_id, input_tokens FROM usage").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    # recorded once even when the same events come again
    for e in [event()]:
        pipeline.submit(e)
        pipeline.submit(e)
    pipeline.flush(5)
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 8


# --- security -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.cmdrdata.ai/api/events", True),
        ("http://127.0.0.1:8080/api/events", True),
        ("http://localhost/api/events", True),
        ("http://[::1]:9/api/events", True),
        ("http://api.cmdrdata.ai/api/events", False),
        ("ftp://x/y", False),
        ("not a url", False),
    ],
)
def test_https_only_except_loopback(url: str, ok: bool) -> None:
    assert (endpoint_problem(url) is None) is ok


def test_insecure_endpoint_is_refused_at_start(
    tmp_path: Path, pipelines: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = make(
        pipelines, settings_for(tmp_path, None, endpoint="http://api.cmdrdata.ai/api/events")
    )
    assert pipeline.problem is not None and "https" in pipeline.problem
    submit(pipeline, 1)
    assert len(pipeline._threads) == 1  # journal import only: nothing is sent over plain http


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("tk-0123456789abcdef", None),
        ("sk-0123456789abcdef", "does not start with 'tk-'"),
        ("tk-short", "characters long"),
        (" tk-0123456789abcdef", "whitespace"),
        ("tk-0123456789ab\ncdef", "whitespace or control"),
    ],
)
def test_key_format_check(key: str, problem: str | None) -> None:
    found = key_problem(key)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_key_never_appears_in_logs(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(agent_logging.RedactingFilter())
    root = logging.getLogger()
    agent_logger = logging.getLogger("cmdrdata_autotrack")
    old_levels = root.level, agent_logger.level
    root.addHandler(handler)
    agent_logger.addHandler(handler)
    root.setLevel(logging.DEBUG)
    agent_logger.setLevel(logging.DEBUG)
    try:
        pipeline = make(pipelines, settings_for(tmp_path, ingest))
        ingest.fail(500, times=2)
        ingest.reset_connection(times=1)
        ids = submit(pipeline, 3)
        assert_exactly_once(ingest, ids)
        wrong = make(pipelines, settings_for(tmp_path / "w", ingest, api_key="tk-" + "s3cr3t" * 4))
        submit(wrong, 1)
        assert ingest.wait_for_requests(len(ingest.requests) + 1, 10)
        agent_logger.debug("header dump: Authorization: Bearer %s", KEY)
        agent_logger.error("oops with key %s", KEY)
    finally:
        root.removeHandler(handler)
        agent_logger.removeHandler(handler)
        root.setLevel(old_levels[0])
        agent_logger.setLevel(old_levels[1])
    text = stream.getvalue()
    assert "delivery failed" in text  # the failures were logged
    assert KEY not in text and "s3cr3t" not in text
    assert "[REDACTED]" in text


# --- hostile input ------------------------------------------------------------------------


def test_hostile_span_gives_a_clean_event() -> None:
    e = build_event(
        {
            "cmdrdata.customer.id": "ac\x00me\n" + "x" * 1000,
            "gen_ai.usage.input_tokens": -5,
            "gen_ai.usage.output_tokens": 2**62,
            "cmdrdata.usage.total_tokens": "lots",
            "gen_ai.response.model": "\x1b[31mred",
            "cmdrdata.metadata.k\x07": "v\x00",
            "cmdrdata.metadata.big": 10**40,
            "cmdrdata.metadata.nan": float("nan"),
            "cmdrdata.metadata.list": ["a", "b"],
            "gen_ai.response.finish_reasons": ["stop", "\x00"],
            "gen_ai.response.time_to_first_chunk": float("inf"),
        },
        trace_id=1,
        span_id=2,
        start_ns=10,
        end_ns=5,
        ok=True,
    )
    import json

    json.dumps(e, allow_nan=False)  # valid JSON, no NaN
    assert e["customer_id"].startswith("acme") and len(e["customer_id"]) == 256
    assert (e["input_tokens"], e["output_tokens"]) == (0, 0)
    assert e["total_tokens"] == 0
    assert e["model"] == "[31mred"
    assert e["metadata"] == {"k": "v", "big": str(10**40), "nan": None, "list": "a,b"}
    assert e["latency"]["duration_ms"] == 0 and e["latency"]["time_to_first_token_ms"] is None


def test_event_ids_are_stable_per_span() -> None:
    a = build_event({}, trace_id=7, span_id=9, start_ns=0, end_ns=0, ok=True)
    b = build_event({}, trace_id=7, span_id=9, start_ns=0, end_ns=0, ok=False)
    c = build_event({}, trace_id=7, span_id=10, start_ns=0, end_ns=0, ok=True)
    assert a["event_id"] == b["event_id"] != c["event_id"]
    assert uuid.UUID(a["event_id"]).version == 5
    assert a["customer_id"] == "unattributed" and a["attributed"] is False


def _wait_for(check: Any, timeout: float = 10.0) -> bool:
    """Poll a condition that has no event to wait on (state owned by another thread)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        pause.wait(0.02)
    return bool(check())


def test_wrong_endpoint_path_keeps_events_instead_of_dead_lettering(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    wrong = ingest.url.replace("/api/events", "/api/evnts")
    pipeline = make(pipelines, settings_for(tmp_path, ingest, endpoint=wrong))
    submit(pipeline, 2)
    assert ingest.wait_for_requests(1, 10)
    pipeline.flush(1)
    stats = Spool(pipeline.spool_path).stats()
    assert (stats.depth, stats.dead_letters) == (2, 0)


def test_shutdown_waits_for_a_retry_due_before_its_deadline(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest, shutdown_timeout=5.0))
    ingest.rate_limit(retry_after="1", times=1)
    ids = submit(pipeline, 1)
    assert ingest.wait_for_requests(1, 10)
    pipeline.shutdown()
    assert ingest.accepted_ids() == set(ids)


def test_shutdown_frees_a_lease_left_by_a_process_gone(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, ingest))
    ids = submit(pipeline, 1)
    assert_exactly_once(ingest, ids)  # the senders run: their start-up reclaim is behind them
    ingest.slow(0.3)  # the lead is busy sending (not idle, where it reclaims too) ...
    ids += submit(pipeline, 1)
    assert ingest.wait_for_arrivals(2, 10)
    # ... when a worker sharing the spool, which leased an event for a minute, dies
    host, namespace, _, nonce = lease_owner().split(":")
    dead = ":".join([host, namespace, str(_reaped_pid()), nonce])
    orphan = event("orphan")
    with closing(Spool(pipeline.spool_path)) as spool:
        spool.put_leased(
            [(orphan["event_id"], json.dumps(orphan), orphan)],
            1 << 30,
            "reject",
            pipeline.identity.fingerprint,
            (dead, time.time() + 60),
        )
    # the last pass does not leave it to wait out the lease: its owner is gone
    pipeline.shutdown()
    assert ingest.accepted_ids() == {*ids, orphan["event_id"]}
    assert ingest.duplicates() == 0


def _reaped_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_release_by_owner_leaves_another_senders_lease(tmp_path: Path) -> None:
    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        e = event()
        spool.put([(e["event_id"], json.dumps(e), e)], 1 << 30, "reject")
        assert [x.event_id for x in spool.lease("b", 10, 60)] == [e["event_id"]]
        spool.release([e["event_id"]], owner="a")  # a's lease ran out; b holds it now
        assert spool.lease("c", 10, 60) == []
        spool.release([e["event_id"]], owner="b")
        assert [x.event_id for x in spool.lease("c", 10, 60)] == [e["event_id"]]


def test_insecure_endpoint_flush_reports_failure(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    pipeline = make(pipelines, settings_for(tmp_path, None, endpoint="http://example.com/e"))
    submit(pipeline, 1)
    assert pipeline.flush(1) is False


def test_journal_budget_is_credited_when_another_process_imports(tmp_path: Path) -> None:
    from cmdrdata_autotrack.export.journal import Journal

    journal = Journal(tmp_path / "j", max_bytes=100)
    assert journal.append(b"x" * 60 + b"\n")
    assert not journal.append(b"y" * 60 + b"\n")  # over budget
    journal.rotate()
    for path in (tmp_path / "j").iterdir():
        path.unlink()  # imported elsewhere
    journal.reconcile()
    assert journal.append(b"z" * 60 + b"\n")


def test_empty_unattributed_sentinel_falls_back() -> None:
    e = build_event(
        {}, trace_id=1, span_id=1, start_ns=0, end_ns=0, ok=True, unattributed_customer=""
    )
    assert e["customer_id"] == "unattributed"
    e = build_event(
        {"gen_ai.response.finish_reasons": ["stop", "\x00", ""]},
        trace_id=1,
        span_id=1,
        start_ns=0,
        end_ns=0,
        ok=True,
    )
    assert e["finish_reasons"] == ["stop"]


def test_spool_gives_space_back_after_delivery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    for round_ in range(10):
        spool.put([(f"{round_}-{i}", "x" * 1500, None) for i in range(200)], 10**9, "drop-newest")
        spool.ack([e.event_id for e in spool.lease("owner", 1000, 10)])
    spool.compact()
    assert spool.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0


# --- the spool's byte total (what CMDRDATA_SPOOL_MAX_MB is held to) ----------------------

OLD_BYTE_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS events_bytes_in AFTER INSERT ON events BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + NEW.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS events_bytes_out AFTER DELETE ON events BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) - OLD.size WHERE key = 'bytes';
END;
"""


def _spooled(n: int) -> list[tuple[str, str, Any]]:
    events = [event(f"c{i}") for i in range(n)]
    return [(e["event_id"], json.dumps(e), e) for e in events]


def _total_is_exact(spool: Spool) -> bool:
    (summed,) = spool.conn.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()
    return bool(spool.stats().bytes == summed)


def test_the_byte_total_follows_every_way_in_and_out(tmp_path: Path) -> None:
    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        items = _spooled(12)
        size = len(items[0][1])
        spool.put(items[:6], 1 << 30, "reject")
        spool.put(items[:8], 1 << 30, "reject")  # six known already: two added
        assert spool.stats().bytes > 0 and _total_is_exact(spool)
        # over the bound: the oldest are evicted for the newest
        added, dropped = spool.put(items[8:], 8 * size + 10, "drop-oldest")
        assert (added, dropped) == (4, 4) and _total_is_exact(spool)
        leased = spool.lease("me", 3, 60)
        spool.ack([x.event_id for x in leased[:2]] + ["not-spooled"])
        assert _total_is_exact(spool)
        spool.dead_letter(leased[2].event_id, "HTTP 422", 422)
        assert _total_is_exact(spool) and spool.stats().depth == 5
        assert spool.resend_dead_letters() == 1
        assert _total_is_exact(spool) and spool.stats().depth == 6


def test_an_older_versions_byte_triggers_are_dropped_and_honoured_while_they_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    Spool(path).close()
    old = sqlite3.connect(path)  # a spool last opened by 0.7.0, its total kept by triggers
    old.executescript(OLD_BYTE_TRIGGERS)
    old.execute("UPDATE meta SET value = '12345' WHERE key = 'bytes'")  # and gone astray
    old.commit()
    with closing(Spool(path)) as spool:
        triggers = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'"
        assert spool.conn.execute(triggers).fetchone() == (0,)
        assert spool.stats().bytes == 0  # recounted
        spool.put(_spooled(3), 1 << 30, "reject")
        assert _total_is_exact(spool)
        # an older version sharing the spool opens it again: its triggers are back, and
        # they alone keep the total (nothing counted twice)
        old.executescript(OLD_BYTE_TRIGGERS)
        old.commit()
        spool.put(_spooled(2), 1 << 30, "reject")
        leased = spool.lease("me", 2, 60)
        spool.ack([x.event_id for x in leased])
        assert _total_is_exact(spool) and spool.stats().depth == 3
    old.close()


def test_an_ack_that_knows_its_bytes_keeps_the_total_exact(tmp_path: Path) -> None:
    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        spool.put(_spooled(6), 1 << 30, "reject")
        leased = spool.lease("me", 4, 60)
        spool.ack([x.event_id for x in leased[:2]], sum(len(x.body) for x in leased[:2]))
        assert _total_is_exact(spool) and spool.stats().depth == 4
        # one of them was gone already (another sender took it after this lease ran out):
        # the size said is not what left, so the total is counted again
        spool.ack([leased[2].event_id], len(leased[2].body))
        spool.ack([x.event_id for x in leased[2:]], sum(len(x.body) for x in leased[2:]))
        assert _total_is_exact(spool) and spool.stats().depth == 2
        # with an older version's triggers back, they alone take the bytes off
        old = sqlite3.connect(tmp_path / "spool.sqlite3")
        old.executescript(OLD_BYTE_TRIGGERS)
        old.commit()
        rest = spool.lease("me", 2, 60)
        spool.ack([x.event_id for x in rest], sum(len(x.body) for x in rest))
        assert _total_is_exact(spool) and spool.stats().depth == 0
        old.close()


def _indexes(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    return {name for (name,) in rows}


def test_an_older_versions_due_index_is_dropped_and_does_no_harm_when_it_is_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    old_index = "CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt_at, lease_until)"
    with closing(Spool(path)) as spool:
        assert _indexes(spool.conn) == {"events_by_identity"}
        spool.put(_spooled(4), 1 << 30, "reject")
    old = sqlite3.connect(path)  # 0.7.2 opens it: its index is made again
    old.execute(old_index)
    old.commit()
    with closing(Spool(path)) as spool:
        assert _indexes(spool.conn) == {"events_by_identity"}
        # while an older version sharing the spool keeps making it, this one still works
        old.execute(old_index)
        old.commit()
        leased = spool.lease("me", 3, 60)
        assert len(leased) == 3
        spool.ack([x.event_id for x in leased], sum(len(x.body) for x in leased))
        assert spool.stats().depth == 1 and _total_is_exact(spool)
        assert _indexes(old) == {"events_by_identity", "events_due"}
    old.close()


def test_a_new_spool_has_large_pages_and_an_older_ones_keep_theirs(tmp_path: Path) -> None:
    with closing(Spool(tmp_path / "new.sqlite3")) as spool:
        assert spool.conn.execute("PRAGMA page_size").fetchone() == (8192,)
        assert spool.conn.execute("PRAGMA cache_size").fetchone() == (-512,)
    older = tmp_path / "older.sqlite3"
    made = sqlite3.connect(older)  # as 0.7.2 made it: SQLite's default pages
    made.execute("PRAGMA page_size = 4096")
    made.execute("PRAGMA journal_mode = WAL")
    made.close()
    with closing(Spool(older)) as spool:
        assert spool.conn.execute("PRAGMA page_size").fetchone() == (4096,)
        spool.put(_spooled(3), 1 << 30, "reject")
        leased = spool.lease("me", 3, 60)
        spool.ack([x.event_id for x in leased], sum(len(x.body) for x in leased))
        assert spool.stats().depth == 0 and _total_is_exact(spool)


def test_an_idle_compaction_recounts_the_byte_total(tmp_path: Path) -> None:
    with closing(Spool(tmp_path / "spool.sqlite3")) as spool:
        spool.put(_spooled(3), 1 << 30, "reject")
        # an older version wrote after its triggers were dropped: its events went uncounted
        spool.conn.execute("UPDATE meta SET value = '7' WHERE key = 'bytes'")
        spool.compact()
        assert _total_is_exact(spool)


@pytest.mark.parametrize("mode", ["deliver", "ledger"])
def test_a_flush_waits_for_a_segment_another_importer_is_moving(
    mode: str, tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    import fcntl

    key = KEY if mode == "deliver" else None
    pipeline = make(pipelines, settings_for(tmp_path, ingest, api_key=key))
    assert pipeline.mode == mode
    e = event()
    assert pipeline.journal.append((json.dumps(e) + "\n").encode())  # threads not started
    pipeline.journal.rotate()
    (segment,) = pipeline.journal.unimported()
    held = os.open(segment, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as an importer holds a segment while it reads it
        # the spool is empty, and yet the event is not delivered: the flush must not say so
        assert pipeline.flush(0.3) is False
    finally:
        os.close(held)  # that importer let go of it without finishing
    assert pipeline.flush(10) is True
    if mode == "deliver":
        assert ingest.accepted_ids() == {e["event_id"]}
    else:
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as ledger:
            assert ledger.execute("SELECT COUNT(*) FROM usage").fetchone() == (1,)
