"""``/healthz`` and ``/metrics`` from start-up: the bootstrap opens the health server before
the app imports ``openai``, and the agent attaches to that same server when it starts.

Real ``cmdrdata-run`` subprocesses; the apps wait on pipes the tests control.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from test_launcher import PLAIN_APP, RUN, app_env

from cmdrdata_autotrack.telemetry import health_server
from cmdrdata_autotrack.telemetry.health_server import NOT_STARTED, HealthServer

from fake_openai import FakeOpenAI

CHAT = 'model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]'
HEAVY = ("openai", "opentelemetry.sdk.trace", "requests", "sqlite3", "wrapt", "http.server")

# Never imports openai until the test says so on stdin.
LAZY_APP = f"""
import sys
# (coverage, when it measures this process, loads sqlite3 for its own data file)
print("waiting", sorted(m for m in {HEAVY!r} if m in sys.modules
      and not (m == "sqlite3" and "coverage" in sys.modules)), flush=True)
sys.stdin.readline()
import openai
reply = openai.OpenAI(max_retries=0).chat.completions.create({CHAT}, customer_id="acme")
print("called", reply.usage.total_tokens, flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answer(url: str, within_s: float = 15.0) -> tuple[int, str]:
    """GET ``url``, retrying while nothing listens yet (bounded)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def app_process(
    args: list[str], env: dict[str, str], **popen: object
) -> Iterator[subprocess.Popen[str]]:
    """A running app; killed if a test leaves it hanging."""
    process = subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )
    watchdog = threading.Timer(90, process.kill)
    watchdog.start()
    try:
        yield process
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()


def next_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"the app ended early (status {process.wait()})"
    return line.strip()


def test_endpoints_answer_before_openai_is_imported_then_the_agent_attaches(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Issue 8: a worker that imports openai lazily failed its liveness probe until then."""
    app = tmp_path / "lazy.py"
    app.write_text(LAZY_APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = app_env(fake, CMDRDATA_LOG_LEVEL="info")
    args = [RUN, "--metrics-port", str(port), sys.executable, str(app)]
    with app_process(args, env) as process:
        assert process.stdin is not None
        # nothing heavy loaded, openai not imported: the probes answer all the same
        assert next_line(process) == "waiting []"
        assert answer(base + "/healthz") == (200, "ok\n")
        assert answer(base + "/readyz") == (200, NOT_STARTED + "\n")
        code, text = answer(base + "/metrics")
        assert code == 200
        assert "cmdrdata_calls_metered_total 0" in text
        assert "cmdrdata_agent_started 0" in text
        assert "circuit_breaker_state" not in text  # no sender yet

        process.stdin.write("import openai now\n")
        process.stdin.flush()
        assert next_line(process) == "called 26"
        # the same server, now with the agent's readiness, counters and gauges
        code, reason = answer(base + "/readyz")
        assert code == 200 and reason.startswith("ready: recording to the local ledger")
        code, text = answer(base + "/metrics")
        assert code == 200
        for line in (
            "cmdrdata_calls_metered_total 1",
            "cmdrdata_events_accepted_total 1",
            "cmdrdata_agent_started 1",
            "cmdrdata_circuit_breaker_state 0",
        ):
            assert line in text.splitlines(), line
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        assert process.stderr is not None
        stderr = process.stderr.read()
    assert stderr.count(f"metrics and health on http://127.0.0.1:{port}/metrics") == 1, stderr
    assert "could not serve metrics" not in stderr


def test_port_in_use_one_warning_and_the_app_unharmed(fake: FakeOpenAI, tmp_path: Path) -> None:
    app = tmp_path / "plain.py"
    app.write_text(PLAIN_APP)
    env = app_env(fake)
    plain = subprocess.run(
        [sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )
    with socket.socket() as holder:  # another program owns the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        metered = subprocess.run(
            [RUN, "--metrics-port", str(port), sys.executable, str(app)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # a process that never meters stays quiet about it (a helper, a build step)
        quiet = subprocess.run(
            [RUN, "--metrics-port", str(port), sys.executable, "-c", "print('no openai')"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert plain.returncode == metered.returncode == 0, metered.stderr
    assert metered.stdout == plain.stdout
    warnings = [line for line in metered.stderr.splitlines() if "could not serve" in line]
    assert len(warnings) == 1, metered.stderr
    assert f"could not serve metrics on 127.0.0.1:{port}: " in warnings[0]
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "no openai\n", "")


# A parent that serves from start-up forks a worker that imports openai (gunicorn without
# --preload): the worker must neither take the port as its own nor keep a copy of it open.
FORK_APP = f"""
import os, sys
hold = int(os.environ["HOLD_FD"])
if os.fork() == 0:
    import openai
    from cmdrdata_autotrack import agent
    openai.OpenAI(max_retries=0).chat.completions.create({CHAT}, customer_id="worker")
    print("worker", os.getpid(), agent.get().health, flush=True)
    os.read(hold, 1)  # until the test closes its end
    os._exit(0)
sys.stdin.readline()
"""


def test_forked_worker_does_not_serve_or_hold_the_parents_socket(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    app = tmp_path / "forking.py"
    app.write_text(FORK_APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hold_read, hold_write = os.pipe()
    env = app_env(fake, HOLD_FD=str(hold_read))
    args = [RUN, "--metrics-port", str(port), sys.executable, str(app)]
    try:
        with app_process(args, env, pass_fds=(hold_read,)) as process:
            os.close(hold_read)
            assert process.stdin is not None
            word, pid, health = next_line(process).split()
            assert (word, health) == ("worker", "None")
            for _ in range(5):  # every answer is the parent's: no call, no agent
                text = answer(base + "/metrics")[1]
                assert "cmdrdata_calls_metered_total 0" in text
                assert "cmdrdata_agent_started 0" in text
            process.stdin.close()  # the parent exits; its worker runs on
            assert process.wait(timeout=60) == 0
            os.kill(int(pid), 0)  # still running
            with socket.socket() as probe:  # nobody holds the port any more
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
            os.close(hold_write)  # the worker exits: stdout and stderr end
            hold_write = -1
            assert process.stderr is not None
            stderr = process.stderr.read()
        assert "could not serve" not in stderr  # its parent serves: nothing to warn about
    finally:
        if hold_write != -1:
            os.close(hold_write)


# gunicorn --preload: the agent (and its server) started in the parent before the fork.
PRELOAD_APP = """
import os, sys, threading, urllib.request
import openai
import cmdrdata_autotrack
child = os.fork()
if child == 0:
    done = threading.Thread(target=cmdrdata_autotrack.uninstrument, daemon=True)
    done.start()
    done.join(20)  # it used to wait forever for the parent's server thread
    print("child uninstrumented", not done.is_alive(), flush=True)
    os._exit(0)
os.waitpid(child, 0)
url = "http://127.0.0.1:" + os.environ["CMDRDATA_METRICS_PORT"] + "/healthz"
with urllib.request.urlopen(url, timeout=5) as response:
    print("parent answers", response.status, flush=True)
"""


def test_forked_child_of_a_running_agent_can_uninstrument(fake: FakeOpenAI, tmp_path: Path) -> None:
    app = tmp_path / "preload.py"
    app.write_text(PRELOAD_APP)
    env = app_env(fake, CMDRDATA_METRICS_PORT=str(free_port()))
    result = subprocess.run(
        [RUN, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child uninstrumented True", "parent answers 200"]


def test_server_before_and_after_the_agent_attaches() -> None:
    server = HealthServer("127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(base + "/readyz") == (200, NOT_STARTED + "\n")
        assert "cmdrdata_agent_started 0" in get(base + "/metrics")[1]
        server.attach(lambda: {"spool_depth": 3}, lambda: (False, "not ready: test"), lambda: None)
        assert get(base + "/readyz") == (503, "not ready: test\n")
        text = get(base + "/metrics")[1]
        assert "cmdrdata_agent_started 1" in text and "cmdrdata_spool_depth 3" in text
        head = urllib.request.Request(base + "/healthz", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as response:
            assert (response.status, response.read()) == (200, b"")
        post = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(post, timeout=5)
            raise AssertionError("POST was accepted")
        except urllib.error.HTTPError as error:
            assert error.code == 405
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"nonsense\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        server.stop()
    assert not server.serving


def test_a_server_of_the_process_is_not_bound_twice() -> None:
    port = free_port()
    first = health_server.serve("127.0.0.1", port)
    try:
        assert first is not None
        assert health_server.serve("127.0.0.1", port) is first
    finally:
        assert first is not None
        first.stop()
    again = health_server.serve("127.0.0.1", port)  # a stopped server may be opened anew
    assert again is not None and again is not first
    again.stop()


def test_spool_gauges_before_the_agent_starts(tmp_path: Path) -> None:
    """A master that never imports openai still shows its workers' shared spool."""
    from cmdrdata_autotrack import bootstrap
    from cmdrdata_autotrack.config import Settings
    from cmdrdata_autotrack.export.spool import Spool
    from cmdrdata_autotrack.paths import locations

    assert bootstrap._shared_spool_gauges(Settings(spool_dir=str(tmp_path))) is None  # ledger
    settings = Settings(api_key="tk-spool-0123456789", spool_dir=str(tmp_path))
    gauges = bootstrap._shared_spool_gauges(settings)
    assert gauges is not None
    assert gauges() == {}  # no spool yet: nothing to show, nothing created
    spool_path = locations(settings.spool_dir, settings.ledger_path).spool_path
    assert not spool_path.exists()
    Spool(spool_path).close()
    assert gauges() == {"spool_depth": 0, "spool_bytes": 0, "dead_letters": 0}
