"""Limits across processes and machines: real app processes under ``cmdrdata-run``.

Each app is an unmodified-looking program (it imports ``openai`` and catches
``openai.RateLimitError``) driven line by line over its stdin, so the test
decides exactly when each process calls and when its counters sync: no sleeps,
no timing. "Two machines" are two processes with their own spool folders that
share one Redis, a real ``redis-server`` the tests start on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_openai import FakeOpenAI

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")
CALL_TOKENS = 26  # one non-streamed chat call of the fake: 17 in, 9 out

# An app: it knows nothing of limits, and handles OpenAI's 429s as it always did. The
# lines it reads stand for its requests; "sync" and "metrics" are the test's probes.
APP = r"""
import json, os, sys
import openai
from cmdrdata_autotrack import customer_context

client = openai.OpenAI(max_retries=0)
messages = [{"role": "user", "content": "hi"}]

def handle(customer, stream, plan):
    try:
        with customer_context(customer, **({"plan": plan} if plan else {})):
            if stream:
                for _ in client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, stream=True
                ):
                    pass
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        return "served"
    except openai.RateLimitError as exc:
        return "refused " + exc.response.headers.get("retry-after", "?")

# the test's clock: every process sees the same moment, mid-minute (no window resets mid-test)
frozen = os.environ.get("APP_FROZEN_TIME")
if frozen:
    # the agent may start in the background: a first (unmetered) call waits for it
    client.chat.completions.create(model="gpt-4o-mini", messages=messages, track_usage=False)
    from cmdrdata_autotrack import limits
    limits.ENGINE.clock = limits.ENGINE.counters.clock = lambda: float(frozen)

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "exit":
        break
    if words[0] == "sync":
        from cmdrdata_autotrack import limits
        reply = {"synced": limits.ENGINE.flush() if limits.ENGINE is not None else None}
    elif words[0] == "metrics":
        from cmdrdata_autotrack.telemetry import metrics
        reply = metrics.snapshot()
    else:  # call|stream CUSTOMER TIMES [PLAN]
        plan = words[3] if len(words) > 3 else None
        reply = [handle(words[1], words[0] == "stream", plan) for _ in range(int(words[2]))]
    print(json.dumps(reply), flush=True)
"""


class App:
    """One app process under cmdrdata-run; :meth:`ask` sends a line, returns its answer."""

    def __init__(self, script: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [RUN, sys.executable, str(script)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.read() == {"ready": True}

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the app ended: {self.finish()[1]}")
        return json.loads(line)

    def ask(self, line: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> tuple[int, str]:
        """Let the app exit (its counters sync at exit); its exit code and stderr."""
        try:
            _, err = self.proc.communicate("exit\n", timeout=30)
        except (ValueError, OSError):  # stdin closed already
            _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def apps(fake: FakeOpenAI, tmp_path: Path) -> Iterator[Any]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    started: list[App] = []

    # an hour ahead, mid-minute: the counters' windows end after the test, wherever it runs
    frozen = str((int(time.time() // 60) + 60) * 60 + 30)

    def start(state: Path, **env: str) -> App:
        env.setdefault("APP_FROZEN_TIME", frozen)
        app = App(script, app_env(fake, state, **env))
        started.append(app)
        return app

    yield start
    for app in started:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.communicate(timeout=30)


def app_env(fake: FakeOpenAI, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDRDATA_", "OTEL_"))}
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test-key",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        CMDRDATA_STREAM_USAGE="always",
        CMDRDATA_SPOOL_DIR=str(state / "spool"),
        CMDRDATA_LEDGER_PATH=str(state / "ledger.sqlite3"),
        CMDRDATA_LIMITS_SYNC_INTERVAL="60",  # syncs happen when the test says ("sync")
    )
    env.update(extra)
    return env


def cli_env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDRDATA_", "PYTEST_"))}
    env.update(CMDRDATA_SPOOL_DIR=str(state / "spool"), **extra)
    return env


def limits_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return str(path)


def local_counts(state: Path, customer: str) -> dict[str, int]:
    """The machine's counters of ``customer``, summed over windows, by what they count."""
    with sqlite3.connect(state / "spool" / "limits.sqlite3") as conn:
        rows = conn.execute("SELECT key, value FROM counters").fetchall()
    return _by_metric(dict(rows), customer)


def _by_metric(counters: dict[str, int], customer: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in counters.items():
        prefix = f"cmdrdata:limits:{{{customer}}}:"
        if key.startswith(prefix):
            metric = key[len(prefix) :].split(":")[0]
            out[metric] = out.get(metric, 0) + int(value)
    return out


# --- one machine -------------------------------------------------------------------------------

PER_MINUTE = """
[customers."acme"]
requests_per_minute = 3
action = "block"
"""


def test_a_customer_over_its_per_minute_limit_gets_rate_limit_error_while_others_are_served(
    apps: Any, tmp_path: Path
) -> None:
    app = apps(tmp_path, CMDRDATA_LIMITS_FILE=limits_file(tmp_path, PER_MINUTE))
    answers = app.ask("call acme 4")
    assert answers[:3] == ["served"] * 3
    assert answers[3] == "refused 30"  # Retry-After: the minute resets in 30 s
    assert app.ask("call bob 5") == ["served"] * 5
    code, stderr = app.finish()
    assert code == 0 and "Traceback" not in stderr, stderr


def test_processes_of_one_machine_share_the_counters(apps: Any, tmp_path: Path) -> None:
    file = limits_file(tmp_path, PER_MINUTE)
    first = apps(tmp_path, CMDRDATA_LIMITS_FILE=file)
    second = apps(tmp_path, CMDRDATA_LIMITS_FILE=file)
    assert first.ask("call acme 2") == ["served", "served"]
    assert first.ask("sync") == {"synced": True}
    # the other process reads the shared count when it first sees the customer
    shared = second.ask("call acme 2")
    assert shared[0] == "served" and shared[1].startswith("refused")
    assert second.ask("sync") == {"synced": True}
    assert first.ask("sync") == {"synced": True}
    assert first.ask("call acme 1")[0].startswith("refused")
    for app in (first, second):
        assert app.finish()[0] == 0
    third = apps(tmp_path, CMDRDATA_LIMITS_FILE=file)  # a new process: a restart, a worker
    assert third.ask("call acme 1")[0].startswith("refused")
    assert local_counts(tmp_path, "acme")["requests"] == 3
    assert third.finish()[0] == 0


def test_the_limits_command_shows_usage_against_the_limits(apps: Any, tmp_path: Path) -> None:
    file = limits_file(
        tmp_path,
        '[plans.pro]\ntokens_per_day = 100\naction = "block"\n'
        '[customers."zed"]\ncost_per_month_usd = 2.5\n',
    )
    app = apps(tmp_path, CMDRDATA_LIMITS_FILE=file, APP_FROZEN_TIME="")  # the command's clock
    answers = app.ask("call acme 5 pro")
    assert answers[:4] == ["served"] * 4 and answers[4].startswith("refused")
    assert app.finish()[0] == 0
    shown = subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), "limits", "--json"],
        env=cli_env(tmp_path, CMDRDATA_LIMITS_FILE=file),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {(r["customer_id"], r["limit"]): r for r in json.loads(shown.stdout)["limits"]}
    assert set(rows) == {("acme", "tokens_per_day"), ("zed", "cost_per_month_usd")}
    acme = rows["acme", "tokens_per_day"]
    assert (acme["plan"], acme["used"], acme["value"], acme["exceeded"], acme["from"]) == (
        "pro",
        4 * CALL_TOKENS,
        100,
        True,
        "plans.pro",
    )
    assert (
        rows["zed", "cost_per_month_usd"]["used"],
        rows["zed", "cost_per_month_usd"]["value"],
    ) == (0, 2.5)
    text = subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), "limits", "--customer", "acme"],
        env=cli_env(tmp_path, CMDRDATA_LIMITS_FILE=file),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    (row,) = text.stdout.splitlines()[2:]
    assert row.split()[:6] == ["acme", "pro", "tokens_per_day", "104", "tokens", "100"]
    assert "104% over" in row and "block" in row
    bad = subprocess.run(
        [str(BIN / "cmdrdata-autotrack"), "limits", "--file", str(tmp_path / "none.toml")],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "none.toml: cannot be read" in bad.stderr


def test_sigterm_still_adds_the_last_usage_to_the_shared_counters(
    apps: Any, tmp_path: Path
) -> None:
    app = apps(tmp_path, CMDRDATA_LIMITS_FILE=limits_file(tmp_path, PER_MINUTE))
    assert app.ask("call acme 2") == ["served", "served"]  # no sync yet: an interval of 60 s
    app.proc.send_signal(signal.SIGTERM)
    app.proc.communicate(timeout=30)
    assert local_counts(tmp_path, "acme")["requests"] == 2


def test_several_processes_count_every_call_exactly_once(apps: Any, tmp_path: Path) -> None:
    file = limits_file(
        tmp_path, "[default]\nrequests_per_minute = 100000\ntokens_per_day = 10000000\n"
    )
    workers = [
        apps(
            tmp_path,
            CMDRDATA_LIMITS_FILE=file,
            CMDRDATA_LIMITS_SYNC_INTERVAL="0.01",
            # (the frozen clock: on the real one, a run across a minute's end split the
            # requests between two windows, and a sync purged the ended one's count)
        )
        for _ in range(3)
    ]
    for app in workers:  # all three call at once, syncing as often as they can
        assert app.proc.stdin is not None
        app.proc.stdin.write("call acme 15\nstream acme 5\n")
        app.proc.stdin.flush()
    for app in workers:
        assert app.read() == ["served"] * 15
        assert app.read() == ["served"] * 5
        assert app.finish()[0] == 0
    counts = local_counts(tmp_path, "acme")
    assert counts["requests"] == 60
    stream_tokens = 17 + 5  # the fake's stream: 17 prompt tokens, one per reply word (5)
    assert counts["tokens"] == 3 * (15 * CALL_TOKENS + 5 * stream_tokens)


# --- a fleet: Redis ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cmdrdata-redis-"))
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--daemonize", "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # it says when it listens
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis-server did not start (exit {self.proc.wait()})")
        # keep reading what it logs, so a full pipe never stalls it
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def counters(self, customer: str) -> dict[str, int]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            keys = list(client.scan_iter(match="cmdrdata:limits:*"))
            values = dict(zip((k.decode() for k in keys), client.mget(keys), strict=True))
        finally:
            client.close()
        return _by_metric({k: int(v) for k, v in values.items() if v is not None}, customer)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _missing(what: str, install: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI installs it (.ci/run)")
    pytest.skip(f"{what}; to run the Redis tests: {install}")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not on PATH", "apt-get install redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        _missing("the redis package is not installed", "pip install -e '.[dev]'")
    assert binary is not None
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.stop()


FLEET = """
[plans.pro]
requests_per_minute = 4
action = "block"
"""


def test_two_machines_sharing_redis_hold_the_limit_together(
    apps: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    file = limits_file(tmp_path, FLEET.replace("[plans.pro]", '[customers."acme"]'))
    one = apps(
        tmp_path / "one", CMDRDATA_LIMITS_FILE=file, CMDRDATA_LIMITS_REDIS_URL=redis_server.url
    )
    two = apps(
        tmp_path / "two", CMDRDATA_LIMITS_FILE=file, CMDRDATA_LIMITS_REDIS_URL=redis_server.url
    )
    assert one.ask("call acme 3") == ["served"] * 3
    assert one.ask("sync") == {"synced": True}
    shared = two.ask("call acme 2")
    assert shared[0] == "served" and shared[1].startswith("refused")  # the fourth passes
    assert two.ask("sync") == {"synced": True}
    assert one.ask("sync") == {"synced": True}
    assert one.ask("call acme 1")[0].startswith("refused")
    assert two.ask("call bob 3") == ["served"] * 3  # other customers are served
    for app in (one, two):
        code, stderr = app.finish()
        assert code == 0 and "Traceback" not in stderr, stderr
    assert redis_server.counters("acme")["requests"] == 4
    assert not (tmp_path / "one" / "spool" / "limits.sqlite3").exists()  # Redis only


def test_two_machines_count_every_call_exactly_once_in_redis(
    apps: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    file = limits_file(tmp_path, "[default]\ntokens_per_minute = 100000000\n")
    machines = [
        apps(
            tmp_path / name,
            CMDRDATA_LIMITS_FILE=file,
            CMDRDATA_LIMITS_REDIS_URL=redis_server.url,
            CMDRDATA_LIMITS_SYNC_INTERVAL="0.01",
            APP_FROZEN_TIME="",
        )
        for name in ("one", "two")
    ]
    for app in machines:
        assert app.proc.stdin is not None
        app.proc.stdin.write("call acme 20\n")
        app.proc.stdin.flush()
    for app in machines:
        assert app.read() == ["served"] * 20
        assert app.finish()[0] == 0
    assert redis_server.counters("acme") == {"tokens": 2 * 20 * CALL_TOKENS}


def test_redis_killed_mid_run_fails_open_with_one_warning(
    apps: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    file = limits_file(tmp_path, FLEET)
    app = apps(tmp_path, CMDRDATA_LIMITS_FILE=file, CMDRDATA_LIMITS_REDIS_URL=redis_server.url)
    over = app.ask("call acme 5 pro")
    assert over[:4] == ["served"] * 4 and over[4].startswith("refused")
    redis_server.kill()
    assert app.ask("sync") == {"synced": False}  # the agent notices
    assert app.ask("call acme 3 pro") == ["served"] * 3  # fail open: never blocked by accident
    assert app.ask("call bob 2 pro") == ["served"] * 2
    counted = app.ask("metrics")
    assert counted["limits_fail_open"] == 5
    assert counted["limits_blocked"] == 1
    code, stderr = app.finish()
    assert code == 0 and "Traceback" not in stderr, stderr
    warnings = [line for line in stderr.splitlines() if "cannot be reached" in line]
    assert len(warnings) == 1, stderr
    assert redis_server.url.split("//")[1].split("/")[0] in warnings[0]


def test_the_redis_store_adds_reads_expires_and_scans(redis_server: RedisServer) -> None:
    import redis

    from cmdrdata_autotrack.limits.redis_store import EXPIRY_GRACE_S, RedisStore, describe

    assert describe("redis://user:secret@cache.internal:6380/2") == "Redis cache.internal:6380/2"
    store = RedisStore(redis_server.url)
    ends = time.time() + 60
    key = "cmdrdata:limits:{acme}:tokens:m1"
    assert store.sync({key: 5}, {key: ends}, ["cmdrdata:limits:{bob}:tokens:m1"]) == {
        key: 5,
        "cmdrdata:limits:{bob}:tokens:m1": 0,
    }
    assert store.sync({key: -2}, {key: ends}, []) == {key: 3}  # a reservation given back
    assert store.sync({}, {}, [key]) == {key: 3}
    assert store.scan(time.time()) == {key: 3}
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        assert 60 < client.ttl(key) <= 60 + EXPIRY_GRACE_S  # it expires after its window
    finally:
        client.close()
    store.close()
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        RedisStore(redis_server.url).sync({key: 1}, {key: ends}, [])
