"""Usage survives what happens to processes: SIGKILL, SIGTERM, fork, and several workers.

Apps run as real subprocesses under ``cmdrdata-run`` against the fake OpenAI API,
delivering to a real ingest server on 127.0.0.1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_launcher import app_env

from fake_openai import FakeOpenAI
from ingest_server import IngestServer

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")
KEY = "tk-durability-0123456789"

# Makes N calls (forever when N < 0), printing one line after each, then maybe waits.
APP = """
import os, sys, time, openai
client = openai.OpenAI(max_retries=0)
n, then = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "exit"
i = 0
while n < 0 or i < n:
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id=f"c{i % 3}")
    print(f"ok {os.getpid()} {i}", flush=True)
    i += 1
if then == "wait":
    print("ready", flush=True)
    sys.stdin.read()
"""

FORKING_APP = """
import os, sys, openai
client = openai.OpenAI(max_retries=0)
def calls(who, n):
    for i in range(n):
        client.embeddings.create(model="text-embedding-3-small", input="x", customer_id=who)
calls("parent", 3)
pid = os.fork()
if pid == 0:
    calls("child", 4)
    if sys.argv[1] == "hard":
        os._exit(0)  # like a multiprocessing worker: no exit hooks
    sys.exit(0)
os.waitpid(pid, 0)
calls("parent", 2)
"""


# Forks while the sender thread waits for the API's answer, then both deliver their own.
FORK_MID_REQUEST = """
import os, sys, uuid
from cmdrdata_autotrack import forksafe
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.pipeline import Pipeline

def submit(pipeline, who, n):
    for i in range(n):
        pipeline.submit({"event_id": str(uuid.uuid4()), "customer_id": who, "input_tokens": i})

pipeline = Pipeline(Settings.from_env())
submit(pipeline, "parent", 3)
print("submitted", flush=True)
sys.stdin.readline()  # the test saw the sender's request arrive: it is held there now
pid = os.fork()
if pid == 0:
    # nothing of the parent's threads, locks or connections is the child's
    fresh = not pipeline._threads and pipeline._client is None and not pipeline._held
    submit(pipeline, "child", 4)
    delivered = pipeline.flush(30)
    pipeline.shutdown(5)
    os._exit(0 if fresh and delivered and forksafe.failures == 0 else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
submit(pipeline, "parent", 2)
print("parent", pipeline.flush(30), flush=True)
pipeline.shutdown(5)
"""


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def env(fake: FakeOpenAI, ingest: IngestServer, tmp_path: Path) -> dict[str, str]:
    # the launcher tests' app environment (spool under tmp_path), delivering to `ingest`
    return app_env(
        fake,
        tmp_path,
        CMDRDATA_API_KEY=KEY,
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_TIMEOUT="1",
        CMDRDATA_RETRY_BASE_DELAY="0.05",
        CMDRDATA_RETRY_MAX_DELAY="0.5",
        CMDRDATA_BREAKER_COOLDOWN="0.2",
        CMDRDATA_SHUTDOWN_TIMEOUT="5",
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def start(app: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [RUN, sys.executable, str(app), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(process: subprocess.Popen[str], count: int) -> list[str]:
    """Lines the app printed, until ``count`` calls completed (blocking reads, no sleeps)."""
    assert process.stdout is not None
    lines: list[str] = []
    while len([x for x in lines if x.startswith("ok")]) < count:
        line = process.stdout.readline()
        assert line, f"app ended early: {process.stderr.read() if process.stderr else ''}"
        lines.append(line.strip())
    return lines


def test_sigkill_mid_run_then_restart_delivers_everything(
    app: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    ingest.down()  # nothing can be delivered: everything is on disk when the kill comes
    process = start(app, env, "-1")
    read_until(process, 25)
    process.kill()
    out, _ = process.communicate()
    completed = 25 + len([line for line in out.splitlines() if line.startswith("ok")])
    ingest.up()
    # the next process that uses the same spool delivers the dead one's events
    again = subprocess.run(
        [RUN, sys.executable, str(app), "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    accepted = len(ingest.accepted_ids())
    # every completed call arrived; the call in flight at the kill may have been journaled too
    assert completed + 2 <= accepted <= completed + 3
    assert ingest.duplicates() == 0


def test_flush_command_delivers_a_killed_process_events(
    app: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    ingest.down()
    process = start(app, env, "10", "wait")
    read_until(process, 10)
    process.kill()
    process.communicate()
    ingest.up()
    flushed = subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), "flush", "--timeout", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert "10 delivered, 0 still spooled" in flushed.stdout
    assert "10/10 delivered" in flushed.stderr  # the progress bar
    assert len(ingest.accepted_ids()) == 10


def test_sigterm_flushes_within_the_deadline(
    app: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    ingest.down()
    process = start(app, env, "12", "wait")
    lines = read_until(process, 12)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    ingest.up()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=15)
    assert process.returncode == -signal.SIGTERM  # the default action still happens after the flush
    assert len(ingest.accepted_ids()) == 12, lines
    assert ingest.duplicates() == 0


def test_sigterm_chains_the_apps_own_handler(
    tmp_path: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    script = tmp_path / "handler.py"
    script.write_text(
        "import signal, sys, openai\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('app handler', flush=True), sys.exit(3)))\n"
        + APP
    )
    # the agent's handler is installed at start-up, before the app's: the app's wins, and
    # its sys.exit runs the exit hook, which flushes
    process = start(script, env, "5", "wait")
    read_until(process, 5)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=15)
    assert process.returncode == 3 and "app handler" in out
    assert len(ingest.accepted_ids()) == 5


@pytest.mark.parametrize("child_exit", ["normal", "hard"])
def test_forked_child_delivers_its_own_events_once(
    child_exit: str, tmp_path: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    script = tmp_path / "forking.py"
    script.write_text(FORKING_APP)
    result = subprocess.run(
        [RUN, sys.executable, str(script), child_exit],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    events = ingest.accepted()
    customers = sorted(e["customer_id"] for e in events.values())
    assert customers == ["child"] * 4 + ["parent"] * 5
    assert ingest.duplicates() == 0


def test_workers_sharing_one_spool_send_each_event_once(
    app: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    # first, three workers pile events up while the API is down ...
    ingest.down()
    workers = [start(app, env, "15") for _ in range(3)]
    for worker in workers:
        worker.communicate(timeout=60)
        assert worker.returncode == 0
    assert ingest.accepted_ids() == set()
    # ... then three more start together and drain the shared spool concurrently
    ingest.up()
    # (what this checks is who sends what, not how fast: room for a loaded machine)
    env = dict(env, CMDRDATA_TIMEOUT="5", CMDRDATA_SHUTDOWN_TIMEOUT="20")
    workers = [start(app, env, "1") for _ in range(3)]
    for worker in workers:
        worker.communicate(timeout=60)
        assert worker.returncode == 0
    assert len(ingest.accepted_ids()) == 48
    assert ingest.duplicates() == 0


@pytest.mark.sdk_independent
def test_a_fork_while_the_sender_waits_for_the_api_gives_the_child_its_own_pipeline(
    tmp_path: Path, env: dict[str, str], ingest: IngestServer
) -> None:
    script = tmp_path / "fork_mid_request.py"
    script.write_text(FORK_MID_REQUEST)
    env = {**env, "CMDRDATA_TIMEOUT": "10"}  # the held request is answered, not retried
    ingest.slow(2.0, times=1)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline().strip() == "submitted", process.stderr
    assert ingest.wait_for_arrivals(1, timeout=30)  # the parent's sender is mid-request
    process.stdin.write("go\n")
    process.stdin.flush()
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    assert out.splitlines() == ["child 0", "parent True"], out + err
    customers = sorted(e["customer_id"] for e in ingest.accepted().values())
    assert customers == ["child"] * 4 + ["parent"] * 5
    assert ingest.duplicates() == 0
