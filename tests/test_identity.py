"""Each event is delivered only with the key and endpoints of the process that metered it.

Apps with different tracker keys (or endpoints), keyed and keyless processes,
and ``cmdrdata-autotrack flush`` share one spool folder here, as real
subprocesses delivering to real ingest servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_delivery import event
from test_launcher import app_env

from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export import identity
from cmdrdata_autotrack.export import ledger as ledger_db
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.export.spool import Spool

from fake_openai import FakeOpenAI
from ingest_server import IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")
CLI = str(BIN / "cmdrdata-autotrack")
KEY_A = "tk-identity-a-0123456789"
KEY_B = "tk-identity-b-0123456789"

# N embeddings calls for one customer: python app.py N CUSTOMER
APP = """
import sys, openai
client = openai.OpenAI(max_retries=0)
for i in range(int(sys.argv[1])):
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id=sys.argv[2])
"""


@pytest.fixture
def ingest_a() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY_A) as server:
        yield server


@pytest.fixture
def ingest_b() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY_B) as server:
        yield server


def env_for(fake: FakeOpenAI, state: Path, key: str | None, ingest: IngestServer) -> dict[str, str]:
    env = app_env(
        fake,
        state,  # one spool folder for every process of the test
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_TIMEOUT="1",
        CMDRDATA_RETRY_BASE_DELAY="0.05",
        CMDRDATA_RETRY_MAX_DELAY="0.5",
        CMDRDATA_BREAKER_COOLDOWN="0.2",
        CMDRDATA_SHUTDOWN_TIMEOUT="0.5",
    )
    if key:
        env["CMDRDATA_API_KEY"] = key
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def customers(ingest: IngestServer) -> list[str]:
    return sorted(e["customer_id"] for e in ingest.accepted().values())


def fingerprint(env: dict[str, str]) -> str:
    settings = Settings.from_env(env)
    return identity.of(
        settings.api_key, settings.endpoint, settings.batch_endpoint, "unused"
    ).fingerprint


def journal_without_importing(env: dict[str, str], n: int) -> list[str]:
    """What a process with ``env`` leaves when it is killed before its importer runs."""
    pipeline = Pipeline(Settings.from_env(env))
    events = [event(f"left-{i}") for i in range(n)]
    for item in events:
        assert pipeline.journal.append((json.dumps(item) + "\n").encode())
    pipeline.journal.rotate()  # closed: any process may import it now
    return [item["event_id"] for item in events]


def ledger_rows(path: Path) -> int:
    if not path.exists():
        return 0
    conn = ledger_db.open_ledger(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.drives_sdk
def test_apps_with_different_keys_on_one_spool_each_deliver_only_their_own(
    fake: FakeOpenAI, tmp_path: Path, ingest_a: IngestServer, ingest_b: IngestServer
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env_a = env_for(fake, tmp_path, KEY_A, ingest_a)
    env_b = env_for(fake, tmp_path, KEY_B, ingest_b)
    ingest_a.down()  # A's events stay in the shared spool when A exits
    assert run([RUN, sys.executable, str(app), "5", "a"], env_a).returncode == 0
    b = run([RUN, sys.executable, str(app), "3", "b"], env_b)
    assert b.returncode == 0, b.stderr
    # B delivered its own three events, with its key, and none of A's
    assert customers(ingest_b) == ["b"] * 3
    assert {r.headers.get("authorization") for r in ingest_b.requests} == {f"Bearer {KEY_B}"}
    # B's flush counts A's events (by A's fingerprint, never A's key) and does not send them
    flushed_b = run([CLI, "flush", "--quiet"], env_b)
    assert flushed_b.returncode == 0, flushed_b.stderr
    assert f"5 event(s) wait for another key or endpoint ({fingerprint(env_a)}: 5)" in (
        flushed_b.stdout
    )
    assert KEY_A not in flushed_b.stdout + flushed_b.stderr
    assert customers(ingest_b) == ["b"] * 3
    # A's own flush delivers them to A, with A's key
    ingest_a.up()
    flushed_a = run([CLI, "flush", "--quiet"], env_a)
    assert flushed_a.returncode == 0, flushed_a.stdout + flushed_a.stderr
    assert "5 delivered, 0 still spooled" in flushed_a.stdout
    assert customers(ingest_a) == ["a"] * 5
    assert {r.headers.get("authorization") for r in ingest_a.requests} == {f"Bearer {KEY_A}"}
    assert ingest_a.duplicates() == 0


def test_another_endpoint_is_another_identity() -> None:
    base = identity.of(KEY_A, "https://a.example/api/events", None, "l")
    assert base.keyed and KEY_A not in base.fingerprint and len(base.fingerprint) == 18
    assert base == identity.of(KEY_A, "https://a.example/api/events", None, "other ledger")
    # unset batch endpoint and its default are the same settings
    same = identity.of(
        KEY_A, "https://a.example/api/events", "https://a.example/api/events/batch", "l"
    )
    assert same == base
    assert identity.of(KEY_B, "https://a.example/api/events", None, "l") != base
    assert identity.of(KEY_A, "https://b.example/api/events", None, "l") != base
    assert identity.of(KEY_A, "https://a.example/api/events", "https://a.example/b", "l") != base
    assert identity.of(None, "https://a.example/api/events", None, "/x/l.db").fingerprint == (
        identity.LEDGER
    )


def test_a_keyless_flush_leaves_keyed_usage_for_its_own_sender(
    fake: FakeOpenAI, tmp_path: Path, ingest_a: IngestServer
) -> None:
    keyed = env_for(fake, tmp_path, KEY_A, ingest_a)
    keyless = env_for(fake, tmp_path, None, ingest_a)
    ids = journal_without_importing(keyed, 4)
    flushed = run([CLI, "flush"], keyless)
    assert flushed.returncode == 0, flushed.stderr
    assert "Recorded 0 event(s) in the ledger" in flushed.stdout
    assert f"4 event(s) wait for another key or endpoint ({fingerprint(keyed)}: 4)" in (
        flushed.stdout
    )
    assert ledger_rows(tmp_path / "ledger.sqlite3") == 0
    # doctor, keyless, shows them waiting for that fingerprint
    doctor = run([CLI, "doctor", "--no-network"], keyless)
    assert f"{fingerprint(keyed)}: 4" in doctor.stdout
    # the keyed process's identity delivers them
    delivered = run([CLI, "flush", "--quiet"], keyed)
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    assert ingest_a.accepted_ids() == set(ids)


@pytest.mark.drives_sdk
def test_a_keyed_process_never_delivers_keyless_usage(
    fake: FakeOpenAI, tmp_path: Path, ingest_a: IngestServer
) -> None:
    keyless = env_for(fake, tmp_path, None, ingest_a)
    keyless["CMDRDATA_LEDGER_PATH"] = str(tmp_path / "keyless-ledger.sqlite3")
    keyed = env_for(fake, tmp_path, KEY_A, ingest_a)  # its own ledger path: ledger.sqlite3
    journal_without_importing(keyless, 3)
    app = tmp_path / "app.py"
    app.write_text(APP)
    result = run([RUN, sys.executable, str(app), "2", "keyed"], keyed)
    assert result.returncode == 0, result.stderr
    # the keyed app imported the keyless segment into the ledger it was metered for
    assert customers(ingest_a) == ["keyed"] * 2
    assert ledger_rows(tmp_path / "keyless-ledger.sqlite3") == 3
    assert ledger_rows(tmp_path / "ledger.sqlite3") == 0


OLD_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    size INTEGER NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0, lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0, last_error TEXT
);
CREATE TABLE delivered (event_id TEXT PRIMARY KEY, delivered_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE dead_letters (
    event_id TEXT PRIMARY KEY, body TEXT NOT NULL, reason TEXT NOT NULL, status INTEGER,
    attempts INTEGER NOT NULL, failed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('bytes', '0');
"""


def test_a_spool_from_before_identities_is_migrated_and_delivered(
    fake: FakeOpenAI, tmp_path: Path, ingest_a: IngestServer
) -> None:
    path = tmp_path / "spool" / "spool.sqlite3"
    path.parent.mkdir(mode=0o700)
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    events = [event("old") for _ in range(2)]
    old.executemany(
        "INSERT INTO events (event_id, body, size, created_at) VALUES (?, ?, ?, 0)",
        [(e["event_id"], json.dumps(e), len(json.dumps(e))) for e in events],
    )
    old.execute("INSERT INTO dead_letters VALUES ('dead-1', '{}', 'HTTP 422', 422, 1, 0)")
    old.commit()
    old.close()
    env = env_for(fake, tmp_path, KEY_A, ingest_a)
    doctor = run([CLI, "doctor", "--no-network"], env)
    assert "2 event(s) waiting for this key and endpoint" in doctor.stdout, doctor.stdout
    flushed = run([CLI, "flush", "--quiet"], env)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert "2 delivered, 0 still spooled" in flushed.stdout
    assert "spooled by an older version" in flushed.stderr  # one warning that says so
    assert ingest_a.accepted_ids() == {e["event_id"] for e in events}
    # the migrated dead letter keeps the unknown identity when it is queued again
    spool = Spool(path)
    try:
        assert spool.resend_dead_letters() == 1
        assert spool.waiting_by_identity().keys() == {identity.UNKNOWN}
        # an older version still sharing the spool (a rolling upgrade) can still write to it
        spool.conn.execute(
            "INSERT INTO events (event_id, body, size, created_at) VALUES ('old-2', '{}', 2, 0)"
        )
        spool.conn.execute(
            "INSERT OR REPLACE INTO dead_letters "
            "SELECT event_id, body, ?, ?, attempts + 1, ? FROM events WHERE event_id = ?",
            ("HTTP 400", 400, 0.0, "old-2"),
        )
    finally:
        spool.close()


def test_calls_without_a_customer_get_the_writers_sentinel_whoever_imports_them(
    fake: FakeOpenAI, tmp_path: Path, ingest_a: IngestServer
) -> None:
    writer = env_for(fake, tmp_path, None, ingest_a)
    writer["CMDRDATA_UNATTRIBUTED_CUSTOMER"] = "writer-sentinel"
    pipeline = Pipeline(Settings.from_env(writer))
    record = {  # what the span processor journals for a call that named no customer
        "v": 1,
        "a": {"cmdrdata.metered": True, "gen_ai.request.model": "gpt-4o-mini"},
        "t": 7,
        "s": 9,
        "b": 1,
        "e": 2,
        "ok": True,
    }
    assert pipeline.journal.append((json.dumps(record) + "\n").encode())
    pipeline.journal.rotate()
    importer = env_for(fake, tmp_path, None, ingest_a)  # the default sentinel
    assert run([CLI, "flush"], importer).returncode == 0
    conn = ledger_db.open_ledger(tmp_path / "ledger.sqlite3")
    try:
        assert conn.execute("SELECT customer_id FROM usage").fetchall() == [("writer-sentinel",)]
    finally:
        conn.close()


def test_a_dead_letter_queued_again_keeps_its_identity(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    try:
        spool.put([("e1", "{}", None)], 10**6, "drop-newest", "k-aaaa")
        assert spool.lease("me", 10, 10, ("k-bbbb", identity.UNKNOWN)) == []  # not ours
        [leased] = spool.lease("me", 10, 10, ("k-aaaa",))
        spool.dead_letter(leased.event_id, "HTTP 422", 422)
        assert spool.resend_dead_letters(["e1"]) == 1
        assert spool.waiting_by_identity().keys() == {"k-aaaa"}
    finally:
        spool.close()
