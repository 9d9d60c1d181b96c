"""Shared fixtures: a fake OpenAI API on 127.0.0.1, the agent, and the spans it makes.

The test process plays an app that configured OpenTelemetry itself: a global SDK
``TracerProvider`` with an in-memory exporter (what a trace backend would get)
and a processor that records every ended span, sampled or not (what metering
sees). The agent joins that provider, as it does in production.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).parent))

import cmdrdata_autotrack
from cmdrdata_autotrack import agent

from fake_openai import FakeOpenAI, start_server

# The agent's settings in this process; tests change them through `agent_settings`.
# Read before the agent's variables are cleared below (tests/run.sh sets it under CI).
REQUIRE_SYSTEM_TOOLS = os.environ.get("CMDRDATA_REQUIRE_SYSTEM_TOOLS") == "1"
for _name in [n for n in os.environ if n.startswith("CMDRDATA_")]:
    del os.environ[_name]
# Never touch the user's own spool or ledger. Removed at exit, after the agent's own
# exit handlers have run (registered later, so run earlier): a run leaves nothing in /tmp.
STATE_DIR = Path(tempfile.mkdtemp(prefix="cmdrdata-tests-"))
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)
os.environ["CMDRDATA_SPOOL_DIR"] = str(STATE_DIR / "spool")
os.environ["CMDRDATA_LEDGER_PATH"] = str(STATE_DIR / "ledger.sqlite3")


# --- no network beyond loopback: a test that tries fails loudly -------------------------------
_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo


def _loopback(host: object) -> bool:
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise ConnectionRefusedError(f"tests may not reach {address[0]} (loopback only)")
    _real_connect(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _loopback(host.decode() if isinstance(host, bytes) else host):
        raise socket.gaierror(f"tests may not resolve {host!r} (loopback only)")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo


class RecordingProcessor(SpanProcessor):
    """Keeps every span that ends, sampled or not."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


EXPORTER = InMemorySpanExporter()
RECORDED = RecordingProcessor()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
_provider.add_span_processor(RECORDED)
trace.set_tracer_provider(_provider)
cmdrdata_autotrack.instrument(stream_usage="always")


class Spans:
    """The metered spans ended since the test began."""

    def __init__(self) -> None:
        EXPORTER.clear()
        RECORDED.spans.clear()

    @property
    def all(self) -> list[ReadableSpan]:
        return [s for s in RECORDED.spans if s.attributes and "cmdrdata.metered" in s.attributes]

    @property
    def exported(self) -> list[ReadableSpan]:
        return list(EXPORTER.get_finished_spans())

    def one(self) -> ReadableSpan:
        spans = self.all
        assert len(spans) == 1, f"expected one metered span, got {[s.name for s in spans]}"
        return spans[0]

    def attrs(self) -> dict[str, Any]:
        return dict(self.one().attributes or {})

    @staticmethod
    def metered_since(start_ns: int) -> list[ReadableSpan]:
        """Metered spans recorded in this process that started at or after ``start_ns``."""
        return [
            s
            for s in list(RECORDED.spans)
            if s.attributes
            and "cmdrdata.metered" in s.attributes
            and (s.start_time or 0) >= start_ns
        ]


@pytest.fixture(scope="session")
def _fake_openai() -> Iterator[FakeOpenAI]:
    fake = start_server()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def server(_fake_openai: FakeOpenAI) -> FakeOpenAI:
    return _fake_openai  # (a module may name its own server so; the guard below needs this one)


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def spans() -> Spans:
    return Spans()


@pytest.fixture
def agent_settings() -> Iterator[Any]:
    """Change the running agent's settings for one test: ``agent_settings(stream_usage="auto")``."""
    running = agent.get()
    assert running is not None
    original = running.runtime.settings

    def change(**values: Any) -> None:
        running.runtime.settings = dataclasses.replace(original, **values)

    yield change
    running.runtime.settings = original


@pytest.fixture
def client(fake: FakeOpenAI) -> Any:
    import openai

    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test-key", max_retries=0)


@pytest.fixture
def aclient(fake: FakeOpenAI) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test-key", max_retries=0)


# --- tests that need not run under every SDK major -------------------------------------------
# tests/run.sh runs the suite under the newest openai 1.x, 2.x and 3.x. A test that never drives
# the SDK (its module's ``pytestmark = pytest.mark.sdk_independent``, or its own mark) proves the
# same under each, so the first two runs skip it (``--skip-sdk-independent``); the last runs it.
# ``@pytest.mark.drives_sdk`` takes a test of such a module back into every run. Unmarked tests
# run under every SDK.


def runs_once(item: pytest.Item) -> bool:
    """True when the test is marked sdk_independent (itself or its module), not drives_sdk."""
    return item.get_closest_marker("sdk_independent") is not None and (
        item.get_closest_marker("drives_sdk") is None
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-sdk-independent",
        action="store_true",
        help="deselect the sdk_independent tests (tests/run.sh runs them under the newest SDK only)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--skip-sdk-independent"):
        return
    once = [item for item in items if runs_once(item)]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if not runs_once(item)]


def _made_by_the_sdk(headers: dict[str, str]) -> bool:
    # (the fake also plays the events API for delivery tests: those requests are not the SDK's)
    return "x-stainless-lang" in headers or headers.get("user-agent", "").startswith("OpenAI/")


@pytest.fixture(autouse=True)
def _sdk_independent_means_no_sdk(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that runs under one SDK only must not drive it: no SDK client fixture, no metered
    call in this process, no SDK request to the fake OpenAI API (from here or a subprocess)."""
    if not runs_once(request.node):
        yield
        return
    hint = "mark it @pytest.mark.drives_sdk so that it runs under every SDK major"
    clients = {"client", "aclient"} & set(request.fixturenames)
    if clients:
        pytest.fail(f"sdk_independent test uses {sorted(clients)}: {hint}", pytrace=False)
    fake: FakeOpenAI = request.getfixturevalue("_fake_openai")
    before = list(fake.requests)  # held, so that no new request can reuse an id
    seen = {id(r) for r in before}
    started = time.time_ns()
    yield
    calls = [r.path for r in fake.requests if id(r) not in seen and _made_by_the_sdk(r.headers)]
    metered = [s.name for s in Spans.metered_since(started)]
    if calls or metered:
        pytest.fail(
            f"sdk_independent test drove the SDK (requests {calls[:3]}, metered spans "
            f"{metered[:3]}): {hint}",
            pytrace=False,
        )


def system_tool(name: str, *alternatives: str) -> str | None:
    """The path of a system program a test drives for real, or ``None`` (the test skips).

    Under CI (``CMDRDATA_REQUIRE_SYSTEM_TOOLS=1``, set by tests/run.sh) a missing
    program is an error instead: the install step in tests/run.sh must have run.
    """
    import shutil

    for candidate in (name, *alternatives):
        found = shutil.which(candidate)
        if found:
            return found
    if REQUIRE_SYSTEM_TOOLS:
        raise RuntimeError(f"{name} is required under CI; tests/run.sh installs it")
    return None
