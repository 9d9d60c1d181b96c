"""The agent's files: private whatever the umask, somewhere even without a home, and a
damaged spool reported in one line without losing what the journal holds.

Apps run as real subprocesses under ``cmdrdata-run`` (or with ``TrackedOpenAI``)
against the fake OpenAI API, delivering to a real ingest server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_delivery import event
from test_identity import ledger_rows
from test_launcher import app_env

from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.export.spool import Spool

from fake_openai import FakeOpenAI
from ingest_server import IngestServer

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")
CLI = str(BIN / "cmdrdata-autotrack")
KEY = "tk-files-test-0123456789"
NO_PASSWD_UID = 12345  # a uid with no passwd entry, as in some containers

# N calls, then (with "wait") prints "ready" and waits for stdin to close.
APP = """
import sys, openai
client = openai.OpenAI(max_retries=0)
for i in range(int(sys.argv[1])):
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="c")
if sys.argv[2:] == ["wait"]:
    print("ready", flush=True)
    sys.stdin.read()
"""

# glibc drops TMPDIR from the environment of a process whose real and effective uids differ
# (see `without_passwd_entry`): such an app sets it again before the agent starts.
KEEP_TMPDIR = """
import os
os.environ["TMPDIR"] = os.environ.get("TEST_TMPDIR", os.environ.get("TMPDIR", "/tmp"))
"""

TRACKED_APP = """
from cmdrdata_autotrack import TrackedOpenAI
client = TrackedOpenAI(max_retries=0)
for i in range(2):
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="c")
print("made", type(client).__name__)
"""

# What a process leaves when it is killed before its importer runs: one journal segment.
SEGMENT = """
import os
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.pipeline import Pipeline
assert Pipeline(Settings.from_env()).journal.append(b'{"event_id": "e1"}\\n')
os._exit(0)
"""


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def run(
    args: list[str], env: dict[str, str], preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=60, preexec_fn=preexec
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def no_home_env(fake: FakeOpenAI, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = app_env(fake, tmp_path, **extra)
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "CMDRDATA_SPOOL_DIR"):
        env.pop(name, None)
    env.pop("CMDRDATA_LEDGER_PATH")
    env["TMPDIR"] = env["TEST_TMPDIR"] = str(tmp_path / "tmp")  # for the fallback folder
    (tmp_path / "tmp").mkdir()
    return env


def without_passwd_entry() -> None:
    # The real uid has no passwd entry, so `Path.home()` fails without HOME; the effective
    # uid stays root because this machine's interpreter lives in a folder only root reads.
    os.setreuid(NO_PASSWD_UID, os.geteuid())


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to change uid"
)


# --- no home directory --------------------------------------------------------------------


@needs_root
def test_no_home_directory_under_the_launcher_records_usage_in_a_private_temp_folder(
    fake: FakeOpenAI, tmp_path: Path, app: Path
) -> None:
    env = no_home_env(fake, tmp_path)
    app.write_text(KEEP_TMPDIR + APP)
    # The Python launcher: the effective uid must stay root to read this interpreter, and
    # /bin/sh (the cmdrdata-run script) drops to the real uid, as every shell does.
    launcher = [str(BIN / "cmdrdata-autotrack"), "run"]
    result = run([*launcher, sys.executable, str(app), "3"], env, without_passwd_entry)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "tmp" / f"cmdrdata-autotrack-{os.geteuid()}"
    assert mode(folder) == 0o700
    assert ledger_rows(folder / "ledger.sqlite3") == 3
    # one warning that says where usage went, no traceback
    assert result.stderr.count("there is no home directory") == 1, result.stderr
    assert str(folder) in result.stderr and "Traceback" not in result.stderr


@needs_root
def test_no_home_directory_tracked_openai_is_made_and_delivers(
    fake: FakeOpenAI, tmp_path: Path, ingest: IngestServer
) -> None:
    script = tmp_path / "tracked.py"
    script.write_text(KEEP_TMPDIR + TRACKED_APP)
    env = no_home_env(fake, tmp_path, CMDRDATA_API_KEY=KEY, CMDRDATA_ENDPOINT=ingest.url)
    result = run([sys.executable, str(script)], env, without_passwd_entry)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "made TrackedOpenAI"
    assert len(ingest.accepted_ids()) == 2
    assert "Traceback" not in result.stderr


def test_a_home_folder_that_cannot_be_written_falls_back_too(
    fake: FakeOpenAI, tmp_path: Path, app: Path
) -> None:
    env = no_home_env(fake, tmp_path)
    (tmp_path / "a-file").write_text("")
    env["HOME"] = str(tmp_path / "a-file")  # no folder can be made in it, even by root
    result = run([RUN, sys.executable, str(app), "2"], env)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "tmp" / f"cmdrdata-autotrack-{os.geteuid()}"
    assert ledger_rows(folder / "ledger.sqlite3") == 2
    assert "cannot be created" in result.stderr


@needs_root
def test_a_temp_folder_of_someone_else_is_not_used(
    fake: FakeOpenAI, tmp_path: Path, app: Path
) -> None:
    env = no_home_env(fake, tmp_path)
    (tmp_path / "a-file").write_text("")
    env["HOME"] = str(tmp_path / "a-file")
    planted = tmp_path / "tmp" / f"cmdrdata-autotrack-{os.geteuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, NO_PASSWD_UID, -1)  # made first by another user
    result = run([RUN, sys.executable, str(app), "2"], env)
    assert result.returncode == 0, result.stderr
    assert list(planted.iterdir()) == []
    assert "for this process only" in result.stderr
    alone = [p for p in (tmp_path / "tmp").iterdir() if p != planted]
    assert len(alone) == 1 and mode(alone[0]) == 0o700
    assert ledger_rows(alone[0] / "ledger.sqlite3") == 2


# --- permissions ----------------------------------------------------------------------------


def no_umask() -> None:
    os.umask(0)


def assert_private(top: Path) -> list[Path]:
    """Every folder from ``top`` down is 0700 and every file 0600; returns the files."""
    files = []
    assert mode(top) == 0o700, top
    for folder, dirs, names in os.walk(top):
        for name in dirs:
            assert mode(Path(folder, name)) == 0o700, Path(folder, name)
        for name in names:
            files.append(Path(folder, name))
            assert mode(Path(folder, name)) == 0o600, Path(folder, name)
    return files


def test_files_are_private_under_umask_000(
    fake: FakeOpenAI, tmp_path: Path, app: Path, ingest: IngestServer
) -> None:
    top = tmp_path / "made"  # nothing of it exists: the agent makes every folder
    env = app_env(
        fake,
        tmp_path,
        CMDRDATA_API_KEY=KEY,
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_SPOOL_DIR=str(top / "deep" / "spool"),
        CMDRDATA_SHUTDOWN_TIMEOUT="0.5",
    )
    ingest.down()  # events stay spooled, and the sender keeps the spool open
    process = subprocess.Popen(
        [RUN, sys.executable, str(app), "3", "wait"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=no_umask,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        # while the app runs: the sender holds the spool open, with its -wal and -shm
        wanted = {"spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm"}
        deadline = time.monotonic() + 20
        while not wanted <= {p.name for p in top.rglob("*")} and time.monotonic() < deadline:
            time.sleep(0.05)  # the importer opens the spool after its linger: poll, bounded
        names = {p.name for p in assert_private(top)}
        assert wanted <= names
    finally:
        process.communicate(timeout=30)
    assert process.returncode == 0
    # a segment left by a process killed before importing it; and the keyless ledger
    ledger_top = tmp_path / "ledger-made"
    env.pop("CMDRDATA_API_KEY")
    env["CMDRDATA_LEDGER_PATH"] = str(ledger_top / "sub" / "ledger.sqlite3")
    left = run([sys.executable, "-c", SEGMENT], env, no_umask)
    assert left.returncode == 0, left.stderr
    segments = list((top / "deep" / "spool" / "journal").glob("*.jsonl"))
    assert len(segments) == 1 and mode(segments[0]) == 0o600
    recorded = run([RUN, sys.executable, str(app), "1"], env, no_umask)
    assert recorded.returncode == 0, recorded.stderr
    assert_private(ledger_top)
    assert ledger_rows(ledger_top / "sub" / "ledger.sqlite3") == 2  # e1 and the app's call


@pytest.mark.parametrize("kind", ["world-writable", "another user's"])
def test_a_spool_folder_others_can_write_to_is_refused(
    kind: str, fake: FakeOpenAI, tmp_path: Path, app: Path
) -> None:
    refused = tmp_path / "shared"
    refused.mkdir()
    if kind == "world-writable":
        os.chmod(refused, 0o777)
    elif os.geteuid() == 0:
        os.chown(refused, NO_PASSWD_UID, -1)
    else:
        pytest.skip("needs root to give a folder away")
    env = app_env(fake, tmp_path, CMDRDATA_SPOOL_DIR=str(refused), TMPDIR=str(tmp_path))
    result = run([RUN, sys.executable, str(app), "2"], env)
    assert result.returncode == 0, result.stderr
    assert list(refused.iterdir()) == []  # nothing written where others could tamper
    assert f"the spool folder {refused}" in result.stderr
    assert result.stderr.count("the spool folder") == 1
    assert ledger_rows(tmp_path / "ledger.sqlite3") == 2  # nothing lost
    doctor = run([CLI, "doctor", "--no-network"], env)
    assert "[warn] folders: the spool folder" in doctor.stdout


def test_a_sticky_shared_folder_is_accepted(fake: FakeOpenAI, tmp_path: Path, app: Path) -> None:
    shared = tmp_path / "sticky"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename or delete the agent's files
    env = app_env(fake, tmp_path, CMDRDATA_SPOOL_DIR=str(shared))
    result = run([RUN, sys.executable, str(app), "1"], env)
    assert result.returncode == 0, result.stderr
    assert "spool folder" not in result.stderr
    assert mode(shared / "journal") == 0o700


# --- a damaged spool --------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a database, it was overwritten\n" * 200)
    else:  # a real spool with events, cut in the middle
        spool = Spool(path)
        spool.put([(f"e{i}", "x" * 2000, None) for i in range(100)], 10**9, "drop-newest")
        spool.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        spool.close()
        with path.open("r+b") as file:
            file.truncate(path.stat().st_size // 2)


@pytest.mark.sdk_independent
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_doctor_and_flush_report_a_damaged_spool_in_one_line(
    how: str, fake: FakeOpenAI, tmp_path: Path, ingest: IngestServer
) -> None:
    env = app_env(fake, tmp_path, CMDRDATA_API_KEY=KEY, CMDRDATA_ENDPOINT=ingest.url)
    path = tmp_path / "spool" / "spool.sqlite3"
    path.parent.mkdir(mode=0o700)
    damage(path, how)
    for command in (["doctor", "--no-network"], ["flush"]):
        result = run([CLI, *command], env)
        assert result.returncode == 1, result.stdout + result.stderr
        text = result.stdout + result.stderr
        assert "Traceback" not in text
        lines = [line for line in text.splitlines() if "is not a readable SQLite database" in line]
        assert len(lines) == 1, text
        assert str(path) in lines[0] and "move it aside" in lines[0] and "journal" in lines[0]


def test_an_app_with_a_damaged_spool_keeps_its_usage_in_the_journal(
    fake: FakeOpenAI, tmp_path: Path, app: Path, ingest: IngestServer
) -> None:
    env = app_env(
        fake,
        tmp_path,
        CMDRDATA_API_KEY=KEY,
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_SHUTDOWN_TIMEOUT="1",
    )
    path = tmp_path / "spool" / "spool.sqlite3"
    path.parent.mkdir(mode=0o700)
    damage(path, "garbage")
    result = run([RUN, sys.executable, str(app), "3"], env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("is not a readable SQLite database") == 1, result.stderr
    assert list((tmp_path / "spool" / "journal").glob("*.jsonl"))  # kept, not dropped
    assert ingest.accepted_ids() == set()
    # the way out the warning gives: move the file aside, and flush
    shutil.move(path, path.with_name("spool.sqlite3.damaged"))
    flushed = run([CLI, "flush", "--quiet"], env)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert len(ingest.accepted_ids()) == 3


@pytest.mark.sdk_independent
def test_a_damaged_ledger_keeps_keyless_usage_in_the_journal(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    damage(ledger, "garbage")
    settings = Settings(spool_dir=str(tmp_path / "spool"), ledger_path=str(ledger))
    pipeline = Pipeline(settings)
    assert pipeline.journal.append((json.dumps(event("c")) + "\n").encode())
    assert pipeline.flush(1.0) is False  # and no exception reaches the caller
    assert len(list((tmp_path / "spool" / "journal").glob("*.jsonl"))) == 1
    shutil.move(ledger, tmp_path / "ledger.sqlite3.damaged")
    assert Pipeline(settings).flush(1.0) is True
    assert ledger_rows(ledger) == 1
