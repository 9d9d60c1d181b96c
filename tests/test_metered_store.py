"""The metered record: with a tracker key, what was delivered is kept locally, summed, bounded.

End to end, a real app under ``cmdrdata-run`` (the real SDK against the fake
OpenAI API) delivers to a real ingest server on 127.0.0.1; ``report`` and
``reconcile`` (against the fake admin API) then read the metered record its
importer wrote in the spool folder. The store itself is driven directly where a
test needs exact times: its numbers must be the local ledger's, as the fleet
ledger's are.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_delivery import KEY, settings_for
from test_delivery import event as span_event
from test_fleet_ledger import (
    DAY,
    HOUR,
    NOW,
    PRICES,
    _comparable,
    _local_ledger,
    _mixed_events,
    _report_rows,
    event,
    floor,
    items,
)
from test_reconcile import APP, D1, TODAY, as_json, at, bill_chat, env_for, reconcile

from cmdrdata_autotrack.cli.fleet_query import load_fleet_report
from cmdrdata_autotrack.cli.usage_query import load_report
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export import metered_store
from cmdrdata_autotrack.export.metered_store import METERED_FILE, MeteredStore, gap_in
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.export.spool import Spool
from cmdrdata_autotrack.reconcile.metered import CallReader, LedgerSource, aggregate
from cmdrdata_autotrack.reconcile.metered_source import MeteredRecordSource
from cmdrdata_autotrack.telemetry import logging as agent_logging
from cmdrdata_autotrack.telemetry import metrics

from fake_openai import FakeOpenAI
from fake_openai_admin import FakeOpenAIAdmin
from ingest_server import IngestServer

BIN = Path(sys.executable).parent


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def admin() -> Iterator[FakeOpenAIAdmin]:
    with FakeOpenAIAdmin() as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MeteredStore]:
    opened = MeteredStore(tmp_path / METERED_FILE)
    yield opened
    opened.close()


def keyed_env(admin: FakeOpenAIAdmin | None, state: Path, ingest: IngestServer) -> dict[str, str]:
    """A process with a tracker key, its spool and ledger under ``state``."""
    return env_for(
        admin,
        state / "ledger.sqlite3",
        CMDRDATA_API_KEY=KEY,
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_TIMEOUT="1",
        CMDRDATA_RETRY_BASE_DELAY="0.05",
        CMDRDATA_RETRY_MAX_DELAY="0.5",
    )


def approx_cost(row: dict[str, Any]) -> dict[str, Any]:
    """A report row, its cost compared as a number (summed then priced, or the other way)."""
    cost = row["estimated_cost"]
    return {**row, "estimated_cost": None if cost is None else pytest.approx(cost, rel=1e-9)}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the record's sums and ids (to compare before and after)."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("usage_hourly", "usage_minutely", "recorded", "groups", "lasting")
        }
    finally:
        conn.close()


def calls_in(path: Path) -> int:
    reader = MeteredStore(path, read_only=True)
    try:
        return sum(s.calls for s in reader.summaries(None, None, width=None))
    finally:
        reader.close()


def call(customer: str = "acme") -> dict[str, Any]:
    """A chat call's usage event, as the agent makes it, made now."""
    made = span_event(customer)
    now = time.time()
    made.update(timestamp=int(now), timestamp_ms=int(now * 1000))
    return made


def journal(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    """What a process writes as its calls end: the events in its journal, a closed segment."""
    for item in events:
        assert pipeline.journal.append((json.dumps(item) + "\n").encode())
    pipeline.journal.rotate()


def bill_what_was_served(fake: FakeOpenAI, admin: FakeOpenAIAdmin, when: float) -> None:
    """What the fake OpenAI API served (test_reconcile.APP's calls), as its usage API bills it."""
    for request in fake.requests:
        path, params = request.path, request.params
        if path.endswith("/chat/completions"):
            bill_chat(admin, when, inp=17, cached=5, out=9, api_key_id="key_app")
        elif path.endswith("/embeddings"):
            admin.add_usage(
                "embeddings",
                when,
                model="text-embedding-3-small",
                input_tokens=17,
                num_model_requests=1,
                api_key_id="key_app",
            )
        elif path.endswith("/audio/speech"):
            admin.add_usage(
                "audio_speeches",
                when,
                model="tts-1",
                characters=len(params["input"]),
                num_model_requests=1,
                api_key_id="key_app",
            )
        elif path.endswith("/audio/transcriptions"):
            admin.add_usage(
                "audio_transcriptions",
                when,
                model="whisper-1",
                seconds=7,
                num_model_requests=1,
                api_key_id="key_app",
            )


# --- end to end: a keyed app, report and reconcile ----------------------------------------------


def test_a_keyed_apps_delivered_usage_is_reported_and_reconciled(
    fake: FakeOpenAI, admin: FakeOpenAIAdmin, ingest: IngestServer, tmp_path: Path
) -> None:
    fake.usage.prompt_tokens, fake.usage.cached_tokens, fake.usage.completion_tokens = 17, 5, 9
    fake.model_aliases.update({"text-embedding-3-small": "text-embedding-3-small"})
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    app = tmp_path / "app"
    env = keyed_env(None, app, ingest)
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test-wxyz",
        CMDRDATA_STREAM_USAGE="always",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    ran = subprocess.run(
        [str(BIN / "cmdrdata-run"), sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and "done" in ran.stdout, ran.stderr
    assert ingest.wait_for_events(7), ran.stderr
    delivered = list(ingest.accepted().values())
    assert len(delivered) == 7
    assert not (app / "ledger.sqlite3").exists()  # keyed usage never goes to the ledger
    record = app / "spool" / METERED_FILE
    assert calls_in(record) == 7
    assert oct(record.stat().st_mode & 0o777) == "0o600"

    # report, with the key, shows what was delivered: the numbers a ledger of it would give
    shown = cli(env, "report", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["ledger"] == str(record)
    expected = load_report(_local_ledger(tmp_path, delivered), None, None, None, PRICES)
    assert expected is not None
    assert [approx_cost(row) for row in document["rows"]] == [
        approx_cost(row.to_dict()) for row in expected.rows
    ]
    assert document["total"]["calls"] == 7

    # reconcile needs complete buckets: the same events, imported by a keyed process as if
    # they had been made yesterday noon, reconcile to full coverage from its metered record
    noon = D1 + 12 * HOUR
    moved = [
        {**e, "timestamp": noon + i, "timestamp_ms": (noon + i) * 1000}
        for i, e in enumerate(delivered)
    ]
    state = tmp_path / "yesterday"
    with IngestServer(api_key=KEY) as elsewhere:
        pipeline = Pipeline(Settings.from_env(keyed_env(None, state, elsewhere)))
        journal(pipeline, moved)
        assert pipeline.flush(10)
        pipeline.shutdown(0)
        assert elsewhere.accepted_ids() == ingest.accepted_ids()
    admin.add_key("proj_app", "key_app", "sk-proj-...wxyz", "the app")
    admin.add_key("proj_app", "key_other", "sk-proj-...1234", "another app")
    bill_what_was_served(fake, admin, noon)
    bill_chat(admin, noon, inp=5000, out=500, api_key_id="key_other")  # another app's key
    out = reconcile(
        keyed_env(admin, state, ingest),
        "--since",
        at(D1),
        "--until",
        at(TODAY),
        "--bucket",
        "1h",
        "--json",
        "--no-costs",
        "--fail-below",
        "100",
        "--fail-on",
        "requests,input_tokens,cached_input_tokens,output_tokens,characters,seconds",
    )
    assert out.returncode == 0, out.stderr
    doc = as_json(out)
    assert doc["metered_source"] == f"the metered record {state / 'spool' / METERED_FILE}"
    assert doc["scope"]["api_key_ids"] == ["key_app"]
    cov = doc["coverage"]
    assert cov["requests"] == {"metered": 7, "billed": 7, "coverage_pct": 100.0}
    assert cov["input_tokens"] == {"metered": 5 * 17, "billed": 5 * 17, "coverage_pct": 100.0}
    assert cov["output_tokens"] == {"metered": 36, "billed": 36, "coverage_pct": 100.0}
    assert cov["characters"]["coverage_pct"] == 100.0
    assert cov["seconds"]["coverage_pct"] == 100.0
    assert doc["passed"] is True and doc["largest_differences"] == []
    assert not any("local ledger" in note for note in doc["notes"])


def test_with_a_key_and_no_record_yet_report_and_reconcile_say_why(
    ingest: IngestServer, admin: FakeOpenAIAdmin, tmp_path: Path
) -> None:
    env = keyed_env(admin, tmp_path, ingest)
    shown = cli(env, "report")
    assert shown.returncode == 0, shown.stderr
    assert "No usage has been recorded yet" in shown.stdout
    assert f"the metered record {tmp_path / 'spool' / METERED_FILE}" in shown.stdout
    out = reconcile(env)
    assert out.returncode == 2
    assert "metered record" in out.stderr and "does not exist yet" in out.stderr
    assert not (tmp_path / "spool" / METERED_FILE).exists()  # readers never create it
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_a_keyless_process_never_makes_a_record(tmp_path: Path) -> None:
    pipeline = Pipeline(settings_for(tmp_path, None, api_key=None))
    journal(pipeline, [call() for _ in range(3)])
    assert pipeline.flush(5)
    pipeline.shutdown(0)
    assert (tmp_path / "ledger.sqlite3").exists()
    assert not (tmp_path / "spool" / METERED_FILE).exists()


# --- exactly once -------------------------------------------------------------------------------


def test_a_replayed_segment_and_a_second_importer_count_each_event_once(
    tmp_path: Path, ingest: IngestServer
) -> None:
    settings = settings_for(tmp_path, ingest)
    first = Pipeline(settings)
    events = [call(f"c{i % 3}") for i in range(25)]
    journal(first, events)
    segments = tmp_path / "spool" / "journal"
    kept = tmp_path / "kept"
    shutil.copytree(segments, kept)
    assert first.flush(10)
    first.shutdown(0)
    record = tmp_path / "spool" / METERED_FILE
    before = tables(record)
    assert calls_in(record) == 25
    assert len(before["recorded"]) == 25

    # a crash after the import and before the segment was deleted: the segment is back, and
    # another process imports it
    for segment in kept.glob("*.jsonl"):
        shutil.copy(segment, segments / segment.name)
    second = Pipeline(settings)
    assert second.flush(10)
    assert not any(segments.glob("*.jsonl"))
    # the same events again, in a segment of a third process, imported by both
    third = Pipeline(settings)
    journal(third, events[:10])
    journal(second, events[5:15])
    assert third.flush(10) and second.flush(10)
    for pipeline in (second, third):
        pipeline.shutdown(0)
    assert tables(record) == before
    assert ingest.accepted_ids() == {e["event_id"] for e in events}


def test_repeated_ids_in_one_segment_and_odd_events_are_never_fatal(store: MeteredStore) -> None:
    odd = [
        event("x" * 5000, NOW),  # a long id: recorded as its hash like any other
        event("nul\x00id", NOW, customer_id="evil\x00\ud800customer"),
        event("types", NOW, units="not a dict", metadata=["x"], model=42, request="?"),
        event("numbers", NOW, input_tokens=-5, output_tokens=1e300, total_tokens=True),
        {**event("no-time", NOW), "timestamp": "yesterday", "timestamp_ms": None},
        event("types", NOW),  # the same id again: the first wins
    ]
    raw: list[tuple[str, str, dict[str, Any] | None]] = [
        (e["event_id"], json.dumps(e), e) for e in odd
    ]
    raw.append(("not-json", "{", None))  # skipped
    assert store.put(raw, now=NOW) == 5
    assert store.put(raw, now=NOW) == 0
    summaries = store.summaries(None, None, width=None)
    assert {s.group.customer_id for s in summaries} == {"acme", "evil?customer"}
    assert sum(s.calls for s in summaries) == 5
    assert sum(s.quantities.get("input_tokens", 0) for s in summaries) == 4 * 100


# --- the same numbers as the local ledger -------------------------------------------------------


@pytest.mark.parametrize(
    "since, until",
    [(None, None), (NOW - 26 * HOUR + 120, NOW - 720), (NOW - 20 * HOUR, None)],
    ids=["all", "mid-hour", "from-an-hour"],
)
def test_report_numbers_are_the_local_ledgers(
    store: MeteredStore, tmp_path: Path, since: float | None, until: float | None
) -> None:
    events = _mixed_events()
    assert store.put(items(events), now=NOW) == len(events)
    local = load_report(_local_ledger(tmp_path, events), since, until, None, PRICES, per_day=True)
    kept = load_fleet_report(store, since, until, None, PRICES, per_day=True)
    assert local is not None and kept is not None
    assert _report_rows(kept) == _report_rows(local)
    assert kept.ledger == str(store.path)
    for customer in ("bob", "nobody"):
        one = load_report(
            _local_ledger(tmp_path / customer, events), since, until, customer, PRICES
        )
        assert one is not None
        kept_one = load_fleet_report(store, since, until, customer, PRICES)
        assert kept_one is not None and _report_rows(kept_one) == _report_rows(one)


@pytest.mark.parametrize("width", [60, HOUR, DAY], ids=["1m", "1h", "1d"])
def test_reconcile_reads_the_calls_the_local_ledger_gives(
    store: MeteredStore, tmp_path: Path, width: int
) -> None:
    events = _mixed_events()
    store.put(items(events), now=NOW)
    since, until = floor(NOW) // DAY * DAY - 2 * DAY, floor(NOW) // DAY * DAY + DAY
    source = LedgerSource(_local_ledger(tmp_path, events))
    reader = CallReader(PRICES)
    local = [c for e in source.events(since, until) if (c := reader.read(e)) is not None]
    kept = list(MeteredRecordSource(store, width).calls(CallReader(PRICES), since, until))
    assert sum(c.units.requests for c in kept) == sum(c.units.requests for c in local)
    assert _comparable(aggregate(kept, width)) == _comparable(aggregate(local, width))
    if width >= HOUR:  # hours and days: the same once the minutes are pruned
        assert store.prune(NOW + 10 * DAY, every_s=0) is not None
        pruned = list(MeteredRecordSource(store, width).calls(CallReader(PRICES), since, until))
        assert _comparable(aggregate(pruned, width)) == _comparable(aggregate(local, width))


# --- bounded ------------------------------------------------------------------------------------


def test_pruning_keeps_minutes_for_two_days_hours_for_the_retention(
    store: MeteredStore, tmp_path: Path
) -> None:
    old, mid, new = NOW - 40 * DAY, NOW - 3 * DAY, NOW - HOUR
    store.put(items([event("old", old, customer_id="gone"), event("mid", mid)]), now=NOW - 3 * DAY)
    store.put(items([event("new", new)]), now=NOW)
    from_mid_hour = store.summaries(floor(mid), None, width=None)
    pruned = store.prune(NOW, every_s=0)
    assert pruned is not None
    assert pruned.minute_rows == 2  # old's and mid's minutes
    assert pruned.hourly_rows == 1  # old's hour: past the 35 days
    assert pruned.event_ids == 2  # recorded three days ago: past the 48 hours
    assert pruned.minute_horizon == floor(NOW - 48 * HOUR)
    assert pruned.groups == 1  # gone's: no sums left (acme's still has hours)
    assert [row[2] for row in tables(store.path)["groups"]] == ["acme"]
    hours = {row[0] for row in tables(store.path)["usage_hourly"]}
    assert hours == {floor(mid), floor(new)}
    # mid's hour is known per hour now: a range from its start still counts it ...
    assert store.summaries(floor(mid), None, width=None) == from_mid_hour
    assert [s.calls for s in from_mid_hour] == [2]
    # ... one from mid-way through it no longer does (its minutes are gone)
    assert [s.calls for s in store.summaries(floor(mid) + 60, None, width=None)] == [1]
    # another process right after: nothing to do
    other = MeteredStore(store.path)
    try:
        assert other.prune(NOW) is None
    finally:
        other.close()


def _recorded(store: MeteredStore) -> set[str]:
    """The ids recorded, as their hashes in hex."""
    return {bytes(row[0]).hex() for row in tables(store.path)["recorded"]}


def _hash(event_id: str) -> str:
    return metered_store._id_key(event_id).hex()


def test_ids_no_journal_segment_holds_are_forgotten_but_deferred_works(
    store: MeteredStore,
) -> None:
    """As the spool's delivered ids: an ordinary id goes once every journal segment
    started after it was recorded (a minute's rounding and the clock margin aside); a
    deferred work's stays its 48 hours, and goes with its recorded id."""
    from cmdrdata_autotrack.export.journal import JOURNAL_MARGIN_S

    plain, work = event("plain", NOW - HOUR), event("work", NOW - HOUR)
    store.put(items([plain, work]), now=NOW - HOUR, lasting={"ev-work"})
    both = {_hash("ev-plain"), _hash("ev-work")}
    assert store.forget_ids(None, now=NOW) == 0  # not known: kept
    assert store.forget_ids(NOW - 2 * HOUR, now=NOW) == 0  # an older segment is there
    # recorded within the margin and a minute before the oldest segment's start: kept
    assert store.forget_ids(NOW - HOUR + JOURNAL_MARGIN_S + 60, now=NOW) == 0
    assert _recorded(store) == both
    assert store.forget_ids(NOW, now=NOW) == 1
    assert _recorded(store) == {_hash("ev-work")}
    assert store.put(items([plain, work]), now=NOW) == 1  # the work is still known
    pruned = store.prune(NOW + 3 * DAY, every_s=0)  # past the 48 hours: the work goes too
    assert pruned is not None and pruned.event_ids == 2
    assert tables(store.path)["lasting"] == []


def test_an_hour_an_older_version_recorded_is_kept_its_whole_hour(store: MeteredStore) -> None:
    """Up to 0.7.2 an id's time was its hour: on a whole hour, it may have been recorded
    59 minutes later, so it is forgotten only an hour past the horizon."""
    from cmdrdata_autotrack.export.journal import JOURNAL_MARGIN_S

    hour = floor(NOW - 2 * HOUR)
    conn = store._connection()  # (the file made, as an older version would have)
    with metered_store._transaction(conn):
        conn.execute("INSERT INTO recorded VALUES (?, ?)", (metered_store._id_key("old"), hour))
    start = hour + 30 * 60 + JOURNAL_MARGIN_S  # half an hour in, past the margin
    assert store.forget_ids(start, now=NOW) == 0
    assert store.forget_ids(hour + HOUR + 60 + JOURNAL_MARGIN_S, now=NOW) == 1


def test_the_recorder_forgets_once_a_minute_after_an_import_pass(tmp_path: Path) -> None:
    recorder = metered_store.MeteredRecorder(tmp_path)
    asked: list[float] = []

    def journal_start() -> float | None:
        asked.append(time.time())
        return time.time()

    recorder.tick(journal_start, now=0.0)
    assert asked == []  # before the first pass: nothing
    recorder.record(items([event("a", NOW)]))
    recorder.tick(journal_start, now=0.0)
    recorder.tick(journal_start, now=59.0)
    assert len(asked) == 1
    recorder.tick(journal_start, now=60.0)
    assert len(asked) == 2
    recorder.close()


def test_a_record_an_older_version_filled_is_caught_up_a_chunk_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metered_store, "_PRUNE_CHUNK", 2)
    recorder = metered_store.MeteredRecorder(tmp_path)
    recorder.record(items([event(n, NOW) for n in range(3)]))
    conn = recorder.store._connection()
    with metered_store._transaction(conn):  # recorded two hours ago, minute-exact
        conn.execute("UPDATE recorded SET hour = hour - 7200 + 60")
    recorder.tick(time.time, now=0.0)  # 2 of 3: more next pass, whenever that comes
    assert len(tables(recorder.store.path)["recorded"]) == 1
    recorder.tick(time.time, now=1.0)
    assert tables(recorder.store.path)["recorded"] == []
    recorder.tick(time.time, now=2.0)  # done: not again before the minute is up
    recorder.record(items([event("new", NOW)]))
    with metered_store._transaction(conn):
        conn.execute("UPDATE recorded SET hour = hour - 7200 + 60")
    recorder.tick(time.time, now=3.0)
    assert len(tables(recorder.store.path)["recorded"]) == 1
    recorder.close()


def test_the_importer_records_deferred_works_ids_as_lasting(tmp_path: Path) -> None:
    from test_delivery import span_record

    from cmdrdata_autotrack.export.pipeline import journal_line
    from cmdrdata_autotrack.usage.work import ID_KEY, work_event_id

    pipeline = Pipeline(settings_for(tmp_path, None, endpoint="http://127.0.0.1:9/none"))
    try:
        for record in (span_record(), span_record(**{ID_KEY: "response:resp_1"})):
            assert pipeline.journal.append(journal_line(record).encode())
        assert pipeline.import_journal() == 2
    finally:
        pipeline.shutdown(0)
    lasting = tables(tmp_path / "spool" / METERED_FILE)["lasting"]
    assert [bytes(row[0]).hex() for row in lasting] == [_hash(work_event_id("response:resp_1"))]


def test_a_record_written_for_months_stays_within_its_retention(tmp_path: Path) -> None:
    """Sixty days of calls, pruned as the importer does: only the retention's hours stay."""
    short = MeteredStore(tmp_path / METERED_FILE, retention_days=3)
    customers = [f"c{i}" for i in range(4)]
    start = floor(NOW) - 60 * DAY
    n = 0
    for hour in range(60 * 24):
        moment = start + hour * HOUR
        batch = [event(n + i, moment + 60 * i, customer_id=c) for i, c in enumerate(customers)]
        n += len(batch)
        assert short.put(items(batch), now=moment + 300) == len(batch)
        short.prune(moment + 300, every_s=600)
    rows = tables(short.path)
    assert len(rows["usage_hourly"]) <= (3 * 24 + 1) * len(customers)
    assert len(rows["usage_minutely"]) <= (48 + 1) * len(customers)
    assert len(rows["recorded"]) <= (48 + 1) * len(customers)
    assert len(rows["groups"]) == len(customers)
    summaries = short.summaries(None, None, width=None)
    assert sum(s.calls for s in summaries) == len(rows["usage_hourly"])
    short.close()


def test_the_retention_setting_governs_the_record(tmp_path: Path) -> None:
    pipeline = Pipeline(settings_for(tmp_path, None, ledger_retention=2.0))
    recorder = pipeline.metered_recorder()
    assert recorder is not None and recorder.store.retention_s == 2 * DAY
    assert recorder.path == tmp_path / "spool" / METERED_FILE
    fleet = Pipeline(settings_for(tmp_path, None, ledger_url="postgresql://127.0.0.1:9/x"))
    assert fleet.metered_recorder() is None  # the fleet ledger keeps it instead


# --- failures never touch delivery ---------------------------------------------------------------


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger(agent_logging.ROOT)
    logger.addHandler(handler)
    agent_logging._warned.clear()
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("damage", ["not-a-database", "unwritable"])
def test_a_broken_record_never_holds_up_delivery(
    tmp_path: Path,
    ingest: IngestServer,
    admin: FakeOpenAIAdmin,
    captured: Captured,
    damage: str,
) -> None:
    record = tmp_path / "spool" / METERED_FILE
    record.parent.mkdir(parents=True)
    if damage == "not-a-database":
        record.write_bytes(b"this is not a database " * 200)
    else:  # a folder where the file should be: SQLite cannot open it, root or not
        record.mkdir()
    before = metrics.snapshot().get("metered_unrecorded", 0)
    pipeline = Pipeline(settings_for(tmp_path, ingest))
    events = [call(f"c{i % 2}") for i in range(12)]
    journal(pipeline, events[:6])
    journal(pipeline, events[6:])  # two segments: one warning
    assert pipeline.flush(10)
    pipeline.shutdown(0)
    assert ingest.accepted_ids() == {e["event_id"] for e in events}  # delivered, all of them
    warnings = [m for m in captured.messages if "metered record" in m]
    assert len(warnings) == 1, captured.messages
    assert "delivered all the same" in warnings[0]
    assert metrics.snapshot().get("metered_unrecorded", 0) - before == 12
    spool = Spool(tmp_path / "spool" / "spool.sqlite3")
    try:
        gap = gap_in(spool.state())
    finally:
        spool.close()
    assert gap is not None and gap.events == 12
    assert gap.first <= events[0]["timestamp_ms"] / 1000 <= events[-1]["timestamp_ms"] / 1000
    assert events[-1]["timestamp_ms"] / 1000 <= gap.last

    env = keyed_env(admin, tmp_path, ingest)
    doctor = json.loads(cli(env, "doctor", "--json", "--no-network").stdout)
    check = next(c for c in doctor["checks"] if c["name"] == "metered record")
    assert check["status"] == "warn"
    if damage == "not-a-database":
        unread = cli(env, "report")
        assert unread.returncode == 2 and "cannot read the metered record" in unread.stderr
        # moved aside, as the warning says: the next import records again
        record.rename(record.with_name(METERED_FILE + ".damaged"))
        later = Pipeline(settings_for(tmp_path, ingest))
        journal(later, [call("after")])
        assert later.flush(10)
        later.shutdown(0)
        assert calls_in(record) == 1
        # reconcile of a range with the gap says the record misses those events
        day = time.strftime("%Y-%m-%d", time.gmtime(gap.first))
        out = reconcile(env, "--since", day, "--until", at(gap.last + DAY), "--no-costs", "--json")
        assert out.returncode == 0, out.stderr
        assert any("12 metered event(s)" in n for n in as_json(out)["notes"])


def test_the_gap_is_noted_only_for_ranges_it_touches(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    try:
        recorder = metered_store.MeteredRecorder(tmp_path)
        recorder._reason = "a reason"
        recorder._missed(items([event("a", NOW - DAY), event("b", NOW - DAY + 60)]), spool)
        recorder._missed(items([event("c", NOW)]), spool)
        gap = gap_in(spool.state())
    finally:
        spool.close()
    assert gap is not None and (gap.events, gap.first, gap.last) == (3, NOW - DAY, NOW)
    assert gap.overlaps(NOW - 2 * DAY, NOW - DAY + 1) and not gap.overlaps(NOW + 1, NOW + 2)
    assert recorder.missed == 3
