"""The fleet ledger: one PostgreSQL database for the usage of every process on every machine.

A real PostgreSQL server runs on 127.0.0.1 for the whole session (``pg_server.py``:
``initdb`` into a temporary folder); each test gets a database of its own. The
store is driven directly where a test needs exact times, and through real app
processes under ``cmdrdata-run`` (the real SDK against the fake OpenAI API, each
with its own spool folder: two machines) end to end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.cli.fleet_query import load_fleet_report
from cmdrdata_autotrack.cli.usage_query import load_report
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export import fleet_ledger
from cmdrdata_autotrack.export.fleet_ledger import (
    HOUR,
    FleetStore,
    FleetUnavailable,
    describe,
    plan,
)
from cmdrdata_autotrack.export.fleet_outbox import FleetRecorder, waiting_in
from cmdrdata_autotrack.export.ledger import open_ledger, record
from cmdrdata_autotrack.pricing import load_prices
from cmdrdata_autotrack.reconcile.fleet_source import FleetSource
from cmdrdata_autotrack.reconcile.metered import CallReader, LedgerSource, MeteredCall, aggregate
from cmdrdata_autotrack.usage.units import NAMES

from fake_openai import FakeOpenAI
from fake_openai_admin import FakeOpenAIAdmin
from ingest_server import IngestServer
from pg_server import INSTALL, PostgresServer, find_bindir, required

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

BIN = Path(sys.executable).parent
DAY = 86400
MINI = "gpt-4o-mini-2024-07-18"
PRICES = load_prices()
KEY = "tk-fleet-test-0123456789"
NOW = float(int(time.time() // HOUR) * HOUR + 1800)  # mid-hour: the tests' clock


def _missing(what: str) -> None:
    if required():
        pytest.fail(f"{what}: required under CI (tests/run.sh installs it)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        _missing(f"PostgreSQL's server (initdb) is not installed; for the fleet tests: {INSTALL}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed: pip install -e '.[dev]'")
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def url(pg: PostgresServer) -> Iterator[str]:
    if not pg.running:
        pg.start()
    yield pg.database()
    if not pg.running:  # a test stopped it: the next one needs it
        pg.start()


@pytest.fixture
def store(url: str) -> Iterator[FleetStore]:
    opened = FleetStore(url)
    yield opened
    opened.close()


def event(n: int | str, when: float, **fields: Any) -> dict[str, Any]:
    """A chat call's usage event (override any field)."""
    out: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "timestamp": int(when),
        "timestamp_ms": int(when * 1000),
        "customer_id": "acme",
        "model": MINI,
        "operation": "chat",
        "endpoint": "chat_completions",
        "input_tokens": 100,
        "cached_input_tokens": 40,
        "output_tokens": 20,
        "reasoning_tokens": 0,
        "total_tokens": 120,
        "units": {},
        "metadata": {},
        "request": {"success": True},
    }
    out.update(fields)
    return out


def items(events: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["event_id"], json.dumps(e), e) for e in events]


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger's tables, sorted (to compare before and after)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("cmdrdata_event_ids", "cmdrdata_usage_events", "cmdrdata_usage_hourly")
        }


def hourly(url: str) -> dict[tuple[int, str, str, str], float]:
    """``(hour, customer, model, unit) -> quantity`` of the hourly rows."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT hour, customer_id, model, unit, sum(quantity) FROM cmdrdata_usage_hourly "
            "GROUP BY 1, 2, 3, 4"
        ).fetchall()
    return {(int(h), c, m, u): float(q) for h, c, m, u, q in rows}


def calls_by_customer(url: str) -> dict[str, float]:
    calls: dict[str, float] = {}
    for (_, customer, _, unit), quantity in hourly(url).items():
        if unit == "calls":
            calls[customer] = calls.get(customer, 0) + quantity
    return calls


def count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# --- where each part of a range is read from ---------------------------------------------------

H0 = 1_000 * HOUR  # an hour boundary


def test_whole_hours_come_from_the_hourly_rows_partial_hours_from_the_events() -> None:
    # raw window from H0 on: everything is known event by event
    assert plan(H0 + 600, H0 + 3 * HOUR + 60, H0, fine=False) == (
        [(H0 + HOUR, H0 + 3 * HOUR)],
        [(H0 + 600, H0 + HOUR), (H0 + 3 * HOUR, H0 + 3 * HOUR + 60)],
    )
    assert plan(H0 + 600, H0 + 900, H0, fine=False) == ([], [(H0 + 600, H0 + 900)])
    # minute buckets: the events wherever they are kept, hours before that
    assert plan(H0 - 2 * HOUR, H0 + 900, H0, fine=True) == (
        [(H0 - 2 * HOUR, H0)],
        [(H0, H0 + 900)],
    )


def test_past_the_raw_window_an_hour_counts_when_it_starts_in_the_range() -> None:
    later = H0 + 10 * HOUR  # the events of hours before it are gone
    assert plan(H0 + 600, H0 + 2 * HOUR + 600, later, fine=False) == (
        [(H0 + HOUR, H0 + 2 * HOUR), (H0 + 2 * HOUR, H0 + 3 * HOUR)],
        [],
    )
    assert plan(H0, H0 + 900, later, fine=True) == ([(H0, H0 + HOUR)], [])
    assert plan(H0 + 1, H0 + 900, later, fine=False) == ([], [])
    assert plan(H0, H0, later, fine=False) == ([], [])


def test_the_call_counters_are_named_like_no_unit() -> None:
    assert not NAMES.intersection(fleet_ledger.COUNTERS)


# --- exactly once ---------------------------------------------------------------------------


def test_a_replayed_batch_changes_nothing(store: FleetStore, url: str) -> None:
    batch = items([event(i, NOW - 3 * HOUR + 600 * i) for i in range(5)])  # 3 + 2 an hour
    assert store.put(batch) == (5, 0)
    before = snapshot(url)
    assert len(before["cmdrdata_event_ids"]) == 5
    assert store.put(batch) == (0, 0)  # a journal replayed after a crash
    assert store.put(batch[2:] + items([event(9, NOW)])) == (1, 0)  # only the new one counts
    other = FleetStore(url)  # another machine importing the same events
    try:
        assert other.put(batch) == (0, 0)
    finally:
        other.close()
    after = snapshot(url)
    assert len(after["cmdrdata_event_ids"]) == 6
    for table in ("cmdrdata_event_ids", "cmdrdata_usage_events"):
        assert set(before[table]) <= set(after[table])
    assert hourly(url)[floor(NOW - 3 * HOUR), "acme", MINI, "calls"] == 3
    assert hourly(url)[floor(NOW - 2 * HOUR), "acme", MINI, "calls"] == 2


def floor(moment: float) -> int:
    return int(moment // HOUR * HOUR)


def test_a_large_segment_is_written_in_several_transactions_each_exactly_once(
    store: FleetStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_ledger, "WRITE_CHUNK", 3)
    batch = items([event(i, NOW - i) for i in range(10)])
    assert store.put(batch[:4]) == (4, 0)  # as if a write died after its first commits
    assert store.put(batch) == (6, 0)
    assert store.put(batch) == (0, 0)
    assert hourly(url)[floor(NOW), "acme", MINI, "calls"] == 10


def test_two_writers_racing_record_each_event_once(url: str) -> None:
    """Two importers write overlapping events at once, in opposite orders: each event counts
    once, and neither deadlocks nor fails."""
    events = [event(i, NOW - (i % 7) * HOUR, customer_id=f"c{i % 3}") for i in range(300)]
    first, second = events[:200], list(reversed(events[100:]))
    barrier = threading.Barrier(2)
    added: list[int] = []
    errors: list[BaseException] = []

    def write(part: list[dict[str, Any]]) -> None:
        writer = FleetStore(url)
        try:
            writer.ping()
            barrier.wait()
            for start in range(0, len(part), 25):
                added.append(writer.put(items(part[start : start + 25]))[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(part,)) for part in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(added) == 300
    assert count(url, "cmdrdata_event_ids") == 300
    totals: dict[str, float] = {}
    for (_, _, _, unit), quantity in hourly(url).items():
        totals[unit] = totals.get(unit, 0) + quantity
    assert totals == {
        "calls": 300,
        "input_tokens": 300 * 100,
        "cached_input_tokens": 300 * 40,
        "output_tokens": 300 * 20,
        "total_tokens": 300 * 120,
    }


# --- rollups --------------------------------------------------------------------------------


def test_hourly_rows_per_customer_model_and_unit(store: FleetStore, url: str) -> None:
    h1, h2 = floor(NOW) - 2 * HOUR, floor(NOW) - HOUR
    store.put(
        items(
            [
                event(1, h1 + 5, input_tokens=10, cached_input_tokens=0, total_tokens=30),
                event(2, h1 + 3599, input_tokens=7, cached_input_tokens=2, total_tokens=27),
                event(3, h2, customer_id="bob", input_tokens=1, cached_input_tokens=0),
                event(
                    4,
                    h2 + 10,
                    customer_id="bob",
                    model="dall-e-3",
                    input_tokens=0,
                    cached_input_tokens=0,
                    output_tokens=0,
                    total_tokens=0,
                    units={"image_count": 2, "image_size": "1024x1024", "image_quality": "hd"},
                    request={"success": False},
                ),
                event(
                    5,
                    h2 + 20,
                    customer_id="bob",
                    model="dall-e-3",
                    input_tokens=0,
                    cached_input_tokens=0,
                    output_tokens=0,
                    total_tokens=0,
                    request={"success": False},
                ),
            ]
        )
    )
    assert hourly(url) == {
        (h1, "acme", MINI, "calls"): 2,
        (h1, "acme", MINI, "input_tokens"): 17,
        (h1, "acme", MINI, "cached_input_tokens"): 2,
        (h1, "acme", MINI, "output_tokens"): 40,
        (h1, "acme", MINI, "total_tokens"): 57,
        (h2, "bob", MINI, "calls"): 1,
        (h2, "bob", MINI, "input_tokens"): 1,
        (h2, "bob", MINI, "output_tokens"): 20,
        (h2, "bob", MINI, "total_tokens"): 120,
        (h2, "bob", "dall-e-3", "calls"): 2,
        (h2, "bob", "dall-e-3", "image_count"): 2,
        (h2, "bob", "dall-e-3", "failed_calls"): 2,
        (h2, "bob", "dall-e-3", "refused_calls"): 1,  # failed and consumed nothing
    }
    # the images' size and quality say how they are priced: kept with them
    summaries = store.summaries(None, None, width=None)
    (images,) = [
        s
        for s in summaries
        if s.group.model == "dall-e-3" and s.calls == 1 and s.quantities.get("image_count")
    ]
    assert images.group.descriptor_values() == {"image_quality": "hd", "image_size": "1024x1024"}


# --- bounded storage ------------------------------------------------------------------------


def test_pruning_keeps_events_for_the_window_and_hours_for_the_retention(
    store: FleetStore, url: str
) -> None:
    old, mid, new = NOW - 40 * DAY, NOW - 3 * DAY, NOW - HOUR
    everything = [event("old", old), event("mid", mid), event("new", new)]
    store.put(items(everything))
    from_mid_hour = store.summaries(floor(mid), None, width=None)

    pruned = store.prune(NOW, every_s=0)
    assert pruned is not None
    assert (pruned.raw_events, pruned.event_ids) == (2, 1)  # old and mid; old
    assert pruned.hourly_rows == 5  # old's hour: calls and four token units
    assert pruned.raw_horizon == floor(NOW - 48 * HOUR)
    assert store.raw_horizon() == pruned.raw_horizon
    assert count(url, "cmdrdata_usage_events") == 1
    assert count(url, "cmdrdata_event_ids") == 2
    assert {h for h, *_ in hourly(url)} == {floor(mid), floor(new)}

    # mid's hour is known per hour now: a range from its start still counts it ...
    assert store.summaries(floor(mid), None, width=None) == from_mid_hour
    assert [s.calls for s in from_mid_hour] == [2]
    # ... one from mid-way through it no longer does (its events are gone)
    assert [s.calls for s in store.summaries(floor(mid) + 1, None, width=None)] == [1]
    # a replay of mid's event, long after its event row went, changes nothing
    before = snapshot(url)
    assert store.put(items([event("mid", mid)])) == (0, 0)
    assert snapshot(url) == before
    # another process pruning right after: nothing to do, no work done
    other = FleetStore(url)
    try:
        assert other.prune(NOW) is None
    finally:
        other.close()


# --- reading: the same numbers as the local ledger ---------------------------------------------


def _mixed_events() -> list[dict[str, Any]]:
    """Calls over two days: customers, models, images, estimates, failures, keys, projects."""
    start = floor(NOW) - 30 * HOUR
    events: list[dict[str, Any]] = []
    for i in range(60):
        when = start + i * 1789.0  # across hour and day boundaries
        fields: dict[str, Any] = {"customer_id": ("acme", "bob", "carol")[i % 3]}
        if i % 5 == 0:
            fields.update(
                model="dall-e-3",
                operation="image_generation",
                endpoint="images",
                input_tokens=0,
                cached_input_tokens=0,
                output_tokens=0,
                total_tokens=0,
                units={"image_count": 1 + i % 2, "image_size": "1024x1024", "image_quality": "hd"},
            )
        if i % 7 == 0:
            fields["usage_estimated"] = True
        if i % 11 == 0:
            fields["request"] = {"success": False}
        if i % 13 == 0:  # refused: nothing consumed, not a billed request
            fields.update(
                input_tokens=0,
                cached_input_tokens=0,
                output_tokens=0,
                total_tokens=0,
                units={},
                request={"success": False},
            )
        if i % 4 == 0:
            fields["metadata"] = {"openai_key_suffix": "wxyz", "openai_project_id": "proj_a"}
        if i % 9 == 0:
            fields["model"] = "not-a-priced-model"
        if i % 6 == 0:
            fields["service_tier"] = "flex"
        events.append(event(i, when, **fields))
    return events


def _local_ledger(tmp_path: Path, events: list[dict[str, Any]]) -> Path:
    path = tmp_path / "ledger.sqlite3"
    conn = open_ledger(path)
    record(conn, [(e, json.dumps(e)) for e in events])
    conn.close()
    return path


def _report_rows(report: Any) -> list[dict[str, Any]]:
    rows = []
    for row in [*report.rows, *report.daily]:
        values = row.to_dict()
        if values["estimated_cost"] is not None:
            values["estimated_cost"] = pytest.approx(values["estimated_cost"], rel=1e-9)
        rows.append(values)
    return rows


@pytest.mark.parametrize(
    "since, until",
    [(None, None), (NOW - 26 * HOUR + 123, NOW - 700), (NOW - 20 * HOUR, None)],
    ids=["all", "mid-hour", "from-an-hour"],
)
def test_report_numbers_are_the_local_ledgers(
    store: FleetStore, tmp_path: Path, since: float | None, until: float | None
) -> None:
    events = _mixed_events()
    store.put(items(events))
    local = load_report(_local_ledger(tmp_path, events), since, until, None, PRICES, per_day=True)
    fleet = load_fleet_report(store, since, until, None, PRICES, per_day=True)
    assert local is not None and fleet is not None
    assert _report_rows(fleet) == _report_rows(local)
    assert fleet.ledger == describe(store.url)
    for customer in ("bob", "nobody"):
        one = load_report(
            _local_ledger(tmp_path / customer, events), since, until, customer, PRICES
        )
        assert one is not None
        fleet_one = load_fleet_report(store, since, until, customer, PRICES)
        assert fleet_one is not None and _report_rows(fleet_one) == _report_rows(one)


def _comparable(calls: list[MeteredCall]) -> list[tuple[Any, ...]]:
    out = []
    for c in calls:
        out.append(
            (
                c.timestamp,
                c.endpoint,
                c.model,
                c.key_suffix,
                c.project_id,
                c.service_tier,
                c.estimated,
                c.units.to_dict(),
                None if c.cost is None else pytest.approx(c.cost, rel=1e-9),
            )
        )
    return sorted(out, key=lambda t: repr(t[:8]))


@pytest.mark.parametrize("width", [60, HOUR, DAY], ids=["1m", "1h", "1d"])
def test_reconcile_reads_the_calls_the_local_ledger_gives(
    store: FleetStore, tmp_path: Path, width: int
) -> None:
    events = _mixed_events()
    store.put(items(events))
    since, until = floor(NOW) // DAY * DAY - 2 * DAY, floor(NOW) // DAY * DAY + DAY
    reader = CallReader(PRICES)
    source = LedgerSource(_local_ledger(tmp_path, events))
    local_calls = [c for e in source.events(since, until) if (c := reader.read(e)) is not None]
    fleet_calls = list(FleetSource(store, width).calls(CallReader(PRICES), since, until))
    assert sum(c.units.requests for c in fleet_calls) == sum(c.units.requests for c in local_calls)
    assert _comparable(aggregate(fleet_calls, width)) == _comparable(aggregate(local_calls, width))
    if width >= HOUR:  # hours and days: the same once the events are pruned
        store.prune(NOW + 10 * DAY, every_s=0)
        pruned = list(FleetSource(store, width).calls(CallReader(PRICES), since, until))
        assert _comparable(aggregate(pruned, width)) == _comparable(aggregate(local_calls, width))


# --- odd input ------------------------------------------------------------------------------


def test_hostile_events_are_recorded_never_fatal(store: FleetStore) -> None:
    odd = [
        event("x" * 5000, NOW),  # an id longer than an index entry may be
        event("nul\x00id", NOW, customer_id="evil\x00\ud800customer"),
        event("types", NOW, units="not a dict", metadata=["x"], model=42, request="?"),
        event("numbers", NOW, input_tokens=-5, output_tokens=1e300, total_tokens=True),
        {**event("no-time", NOW), "timestamp": "yesterday", "timestamp_ms": None},
    ]
    raw = [(e["event_id"], json.dumps(e), e) for e in odd]
    raw.append(("not-json", "{", None))  # skipped
    assert store.put(raw) == (5, 0)
    assert store.put(raw) == (0, 0)
    summaries = store.summaries(None, None, width=None)
    customers = {s.group.customer_id for s in summaries}
    assert customers == {"acme", "evil?customer"}  # the NUL dropped, the lone surrogate replaced
    assert sum(s.calls for s in summaries) == 5
    assert sum(s.quantities.get("input_tokens", 0) for s in summaries) == 4 * 100  # not -5


def test_many_processes_creating_the_tables_at_once(url: str) -> None:
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            FleetStore(url).ping()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors


def test_a_ledger_of_a_newer_schema_is_refused_with_the_reason(url: str) -> None:
    import psycopg

    FleetStore(url).ping()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cmdrdata_meta SET value = '99' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO cmdrdata_meta VALUES ('writers_from', '99')")
    with pytest.raises(FleetUnavailable, match="newer than this version"):
        FleetStore(url).put(items([event(1, NOW)]))


def test_the_settings_and_the_url_never_shown_with_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://metering:s3cret-pw@db.internal:6432/usage?sslmode=require"
    assert describe(url) == "PostgreSQL db.internal:6432/usage"
    assert describe("host=db dbname=usage") == "PostgreSQL (connection string)"
    assert fleet_ledger.configured(Settings()) == (None, 35.0)
    monkeypatch.setenv("CMDRDATA_LEDGER_URL", url)
    monkeypatch.setenv("CMDRDATA_LEDGER_RETENTION", "7")
    settings = Settings.from_env()
    assert fleet_ledger.configured(settings) == (url, 7.0)
    monkeypatch.setenv("CMDRDATA_LEDGER_RETENTION", "0")  # out of range: the default
    assert fleet_ledger.configured(Settings.from_env())[1] == 35.0
    assert "s3cret" not in str(settings.masked())  # a secret: masked wherever shown


# --- the ledger unreachable -----------------------------------------------------------------


def test_while_the_ledger_is_down_events_wait_in_the_outbox(
    pg: PostgresServer, url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    recorder = FleetRecorder(url, spool)
    first, second = items([event(i, NOW) for i in range(4)]), items([event(9, NOW)])
    agent_logger = logging.getLogger("cmdrdata_autotrack")
    agent_logger.addHandler(caplog.handler)
    try:
        assert recorder.record(first[:1], "ledger", 10**6, "drop-newest") == (1, 0)
        pg.stop()
        assert recorder.record(first, "ledger", 10**6, "drop-newest") == (4, 0)
        assert recorder.record(first, "ledger", 10**6, "drop-newest") == (0, 0)  # kept once
        assert recorder.record(second, "ledger", 10**6, "drop-newest") == (1, 0)
        assert recorder.tick() == 0  # nothing moves while it is down
        warnings = [r.getMessage() for r in caplog.records if "fleet ledger" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert describe(url) in warnings[0] and "waits in" in warnings[0]
        assert waiting_in(spool) == 5
    finally:
        agent_logger.removeHandler(caplog.handler)
        recorder.close()
        pg.start()
    # a process started after the outage (or a flush) records what waited, once
    later = FleetRecorder(url, spool)
    try:
        assert later.tick() == 5
        assert later.waiting() == 0
    finally:
        later.close()
    assert count(url, "cmdrdata_event_ids") == 5
    assert hourly(url)[floor(NOW), "acme", MINI, "calls"] == 5


def test_a_full_outbox_drops_by_the_spools_policy(tmp_path: Path) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    recorder = FleetRecorder(unreachable, tmp_path)
    try:
        batch = items([event(i, NOW) for i in range(3)])
        size = len(batch[0][1])
        assert recorder.record(batch, "ledger", 2 * size + 10, "drop-newest") == (2, 1)
        assert recorder.record(batch[2:], "ledger", 2 * size + 10, "drop-oldest") == (1, 1)
        assert recorder.outbox().oldest(10)[0][1] == "ev-1"
    finally:
        recorder.close()


# --- end to end: real apps on two machines ----------------------------------------------------

APP = r"""
import sys
import openai
from cmdrdata_autotrack import customer_context

client = openai.OpenAI(max_retries=0)
for spec in sys.argv[1:]:
    customer, times = spec.split(":")
    with customer_context(customer):
        for _ in range(int(times)):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
print("done", flush=True)
"""


def app_env(fake: FakeOpenAI, machine: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMDRDATA_", "OTEL_", "PYTEST_")) and k != "PYTHONPATH"
    }
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test-key",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        CMDRDATA_SPOOL_DIR=str(machine / "spool"),
        CMDRDATA_LEDGER_PATH=str(machine / "ledger.sqlite3"),
    )
    env.update(extra)
    return env


def start_app(tmp_path: Path, env: dict[str, str], *specs: str) -> subprocess.Popen[str]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    return subprocess.Popen(
        [str(BIN / "cmdrdata-run"), sys.executable, str(script), *specs],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(app: subprocess.Popen[str]) -> str:
    out, err = app.communicate(timeout=60)
    assert app.returncode == 0 and "done" in out, err
    assert "Traceback" not in err, err
    return err


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.drives_sdk
def test_two_machines_record_every_event_exactly_once(
    fake: FakeOpenAI, url: str, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    apps = [
        start_app(tmp_path, app_env(fake, one, CMDRDATA_LEDGER_URL=url), "acme:3", "bob:2"),
        start_app(tmp_path, app_env(fake, two, CMDRDATA_LEDGER_URL=url), "acme:4"),
    ]
    for app in apps:
        finish(app)
    assert count(url, "cmdrdata_event_ids") == 9
    assert count(url, "cmdrdata_usage_events") == 9
    assert calls_by_customer(url) == {"acme": 7, "bob": 2}
    assert sum(q for (*_, unit), q in hourly(url).items() if unit == "total_tokens") == 9 * 26
    assert not (one / "ledger.sqlite3").exists()  # the fleet ledger instead of a local one

    # report, on any machine, shows the whole fleet
    shown = cli(app_env(fake, tmp_path / "three", CMDRDATA_LEDGER_URL=url), "report", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert {r["customer"]: r["calls"] for r in document["rows"]} == {"acme": 7, "bob": 2}
    assert document["ledger"] == describe(url)

    # a journal replayed after a crash (imported, but not deleted): nothing changes
    before = snapshot(url)
    lines = [row[-1] for row in before["cmdrdata_usage_events"]]
    replay = tmp_path / "replay"
    settings = Settings.from_env(
        {
            "CMDRDATA_LEDGER_URL": url,
            "CMDRDATA_SPOOL_DIR": str(replay / "spool"),
            "CMDRDATA_LEDGER_PATH": str(replay / "ledger.sqlite3"),
        }
    )
    from cmdrdata_autotrack.export.pipeline import Pipeline

    pipeline = Pipeline(settings)
    for line in lines:
        assert pipeline.journal.append((line + "\n").encode())
    pipeline.journal.rotate()
    journal = replay / "spool" / "journal"
    kept = tmp_path / "kept"
    shutil.copytree(journal, kept)
    assert pipeline.flush(10)
    assert not any(journal.glob("*.jsonl"))
    for segment in kept.glob("*.jsonl"):  # the crash: the segments are back
        shutil.copy(segment, journal / segment.name)
    assert Pipeline(settings).flush(10)
    assert not any(journal.glob("*.jsonl"))
    assert snapshot(url) == before


@pytest.mark.drives_sdk
def test_keyed_usage_is_delivered_and_recorded_in_the_fleet_ledger(
    fake: FakeOpenAI, url: str, tmp_path: Path
) -> None:
    with IngestServer(api_key=KEY) as ingest:
        env = app_env(
            fake,
            tmp_path / "one",
            CMDRDATA_LEDGER_URL=url,
            CMDRDATA_API_KEY=KEY,
            CMDRDATA_ENDPOINT=ingest.url,
        )
        finish(start_app(tmp_path, env, "acme:3"))
        assert ingest.wait_for_events(3)
        delivered = ingest.accepted_ids()
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT event_id, identity FROM cmdrdata_usage_events").fetchall()
    assert {event_id for event_id, _ in rows} == delivered
    assert all(identity.startswith("k-") for _, identity in rows)  # metered under the key


@pytest.mark.drives_sdk
def test_with_the_ledger_down_usage_waits_and_arrives_once_when_it_is_back(
    fake: FakeOpenAI, pg: PostgresServer, url: str, tmp_path: Path
) -> None:
    machine = tmp_path / "one"
    env = app_env(fake, machine, CMDRDATA_LEDGER_URL=url)
    pg.stop()
    try:
        err = finish(start_app(tmp_path, env, "acme:3", "bob:1"))
        warnings = [line for line in err.splitlines() if "fleet ledger" in line]
        assert len(warnings) == 1, err
        assert waiting_in(machine / "spool") == 4  # nothing lost
        down = cli(env, "flush", "--quiet")
        assert down.returncode == 1 and "4 event(s) wait" in down.stdout, down.stdout + down.stderr
        unread = cli(env, "report")
        assert unread.returncode == 2 and "cannot read the fleet ledger" in unread.stderr
    finally:
        pg.start()
    back = cli(env, "flush", "--quiet")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Recorded 4 event(s) in the fleet ledger" in back.stdout
    assert waiting_in(machine / "spool") == 0
    assert count(url, "cmdrdata_event_ids") == 4
    assert calls_by_customer(url) == {"acme": 3, "bob": 1}


def test_reconcile_with_a_tracker_key_reads_the_fleet_ledger(
    store: FleetStore, url: str, tmp_path: Path
) -> None:
    with FakeOpenAIAdmin() as admin:
        yesterday = NOW // DAY * DAY - DAY
        events = [event(i, yesterday + 3600 * i + 17, customer_id="c") for i in range(5)]
        store.put(items(events), identity="k-0123456789abcdef")
        for e in events:
            admin.add_usage(
                "completions",
                e["timestamp"],
                model=MINI,
                input_tokens=100,
                input_cached_tokens=40,
                output_tokens=20,
                num_model_requests=1,
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDRDATA_", "OPENAI_"))}
        env.update(
            CMDRDATA_LEDGER_URL=url,
            CMDRDATA_API_KEY=KEY,
            CMDRDATA_SPOOL_DIR=str(tmp_path / "spool"),
            OPENAI_ADMIN_KEY=admin.admin_key,
            OPENAI_BASE_URL=admin.base_url,
        )
        day = time.strftime("%Y-%m-%d", time.gmtime(yesterday))
        until = time.strftime("%Y-%m-%d", time.gmtime(yesterday + DAY))
        out = cli(env, "reconcile", "--since", day, "--until", until, "--json", "--no-costs")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["coverage"]["requests"] == {"metered": 5, "billed": 5, "coverage_pct": 100.0}
    assert document["coverage"]["input_tokens"]["metered"] == 500
    assert "fleet ledger" in json.dumps(document)
