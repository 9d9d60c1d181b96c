"""The tracker key goes to exactly the configured host, over https or loopback http, and nowhere
else: not to a host another URL parser sees, not through a redirect or a proxy, not into a log,
the spool, a dead letter or a command's output. See docs/security.md.

Decoy servers listen on a second loopback address (127.0.0.2): whatever reaches them is a leak.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from cmdrdata_autotrack.cli import main as cli
from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.client import (
    DeliveryClient,
    endpoint_problem,
    endpoints_problem,
)
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.export.spool import Spool
from cmdrdata_autotrack.telemetry.logging import redact, register_secret
from cmdrdata_autotrack.usage.event import build_event

from fake_openai import FakeOpenAI
from ingest_server import IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

KEY = "tk-sec-0123456789abcdef"
# a key without the tk- prefix: only the registered literal can mask it
PLAIN_KEY = "cmdr_live_5f0c2d9e8b7a41c3"


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def decoy() -> Iterator[IngestServer]:
    """A server on another loopback address: the key must never reach it."""
    with IngestServer(host="127.0.0.2") as server:
        yield server


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    made: list[Pipeline] = []
    yield made
    for pipeline in made:
        pipeline.shutdown(0)


def make(pipelines: list[Pipeline], tmp_path: Path, **overrides: Any) -> Pipeline:
    values: dict[str, Any] = {
        "api_key": KEY,
        "spool_dir": str(tmp_path / "spool"),
        "ledger_path": str(tmp_path / "ledger.sqlite3"),
        "timeout": 0.5,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.2,
        "breaker_threshold": 100,
        "breaker_cooldown": 0.1,
        "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    pipeline = Pipeline(Settings(**values))
    pipelines.append(pipeline)
    return pipeline


def event() -> dict[str, Any]:
    attributes = {
        "cmdrdata.metered": True,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 17,
        "gen_ai.usage.output_tokens": 9,
        "cmdrdata.customer.id": "acme",
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
    events = [event() for _ in range(n)]
    for item in events:
        pipeline.submit(item)
    return [item["event_id"] for item in events]


def spool_text(pipeline: Pipeline) -> str:
    """Every row of every table of the spool, as SQL text."""
    conn = sqlite3.connect(pipeline.spool_path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def wait_for(check: Any, timeout: float = 10.0) -> bool:
    """Poll state owned by another thread (nothing to wait on)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        pause.wait(0.02)
    return bool(check())


# --- 6. one URL, one host: the loopback check and the HTTP client read the URL alike ------------

ACCEPTED = [
    "https://api.cmdrdata.ai/api/events",
    "https://api.cmdrdata.ai:8443/api/events",
    "HTTPS://api.cmdrdata.ai/api/events",  # both parsers lower-case the scheme
    "http://127.0.0.1:8080/api/events",
    "http://127.9.9.9/api/events",
    "http://localhost/api/events",
    "http://LOCALHOST:8080/api/events",
    "http://[::1]:9/api/events",
    "http://127.0.0.1:8080/a@b",  # '@' in the path is no userinfo, for either parser
    "http://127.0.0.1:8080/a%40b",
    "https://api.cmdrdata.ai",
]

REJECTED = [
    # userinfo: the key goes in a header; credentials in a URL are a mistake or a trick
    "http://user:pass@127.0.0.1/api/events",
    "https://user:pass@api.cmdrdata.ai/api/events",
    "https://user@api.cmdrdata.ai/api/events",
    "http://a%40b@127.0.0.1/api/events",
    "http://evil.example@127.0.0.1/api/events",
    # backslashes: urllib3 ends the host at '\', urllib.parse does not
    "http://vm:80\\@127.0.0.1:80/api/events",
    "https://api.cmdrdata.ai\\@evil.example/api/events",
    "http://127.0.0.1\\api/events",
    # loopback spelled so only some resolvers agree
    "http://127.1/api/events",
    "http://0x7f.1/api/events",
    "http://0177.0.0.1/api/events",
    "http://2130706433/api/events",
    "http://localhost./api/events",
    "http://localhost.evil.example/api/events",
    "http://127.0.0.1.nip.io/api/events",
    "http://[::ffff:7f00:1]x/api/events",
    "http://[fe80::1%25lo]/api/events",
    "http://[::1/api/events",
    # ports
    "http://127.0.0.1:99999/api/events",
    "http://127.0.0.1:0/api/events",
    "http://127.0.0.1:/api/events",
    "http://127.0.0.1:8o/api/events",
    # non-ASCII hosts (IDNA maps some of them onto ASCII ones)
    "https://exämple.com/api/events",
    "http://\uff4cocalhost/api/events",  # fullwidth l
    "http://127。0。0。1/api/events",
    # no host
    "http:///api/events",
    "https://",
    "https:///api/events",
    "http://:8080/api/events",
    "//127.0.0.1/api/events",
    "http:/127.0.0.1/api/events",
    # whitespace and control characters
    "http://127.0.0.1 /api/events",
    "https://api.cmdrdata.ai/api/ev ents",
    "https://api.cmdrdata.ai\t.evil.example/api/events",
    "https://api.cmdrdata.ai/api/events\r\nX-Injected: 1",
    " https://api.cmdrdata.ai/api/events",
    "https://api.cmdrdata.ai/api/events\x00",
    # fragments and queries: an events URL has neither
    "http://127.0.0.1#@evil.example/api/events",
    "http://127.0.0.1:80?@evil.example/api/events",
    "https://api.cmdrdata.ai/api/events?x=1",
    # plain http off loopback, other schemes, not URLs
    "http://api.cmdrdata.ai/api/events",
    "ftp://127.0.0.1/api/events",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "not a url",
    "",
]


def client_view(url: str) -> tuple[str, str, int | None, str | None]:
    """Scheme, host, port and userinfo as ``requests`` and urllib3 will use them."""
    prepared = requests.Request("POST", url).prepare().url or ""
    parsed = parse_url(prepared)
    return (
        (parsed.scheme or "").lower(),
        (parsed.host or "").strip("[]").lower(),
        parsed.port,
        parsed.auth,
    )


def stdlib_view(url: str) -> tuple[str, str, int | None, str | None]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), parts.hostname or "", parts.port, None)


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_endpoints_mean_one_host_to_every_parser(url: str) -> None:
    assert endpoint_problem(url) is None
    assert client_view(url) == stdlib_view(url)


@pytest.mark.parametrize("url", REJECTED)
def test_tricky_endpoints_are_refused(url: str) -> None:
    problem = endpoint_problem(url)
    assert problem is not None
    assert "\n" not in problem and "\r" not in problem and "\x00" not in problem


def test_refusals_say_what_to_write() -> None:
    # the message the docs quote (troubleshooting.md, cli.md, operations.md)
    assert endpoint_problem("http://api.example.com/events") == (
        "endpoint 'http://api.example.com/events' must use https "
        "(plain http is allowed on loopback only)"
    )
    hint = endpoint_problem("http://127.1:8080/api/events")
    assert hint is not None and "127.x.x.x in full" in hint


def test_the_refusal_never_shows_credentials() -> None:
    problem = endpoint_problem("https://svc:hunter2-secret@api.cmdrdata.ai/api/events")
    assert problem is not None and "credentials" in problem
    assert "hunter2" not in problem


def _joined(*pieces: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=5).map("".join)


_SCHEMES = st.sampled_from(["http://", "https://", "HTTP://", "https:/", "http:\\\\"])
_AUTHORITIES = _joined(
    "127.0.0.1", "127.0.0.2", "localhost", "[::1]", "api.cmdrdata.ai", "evil.example", "x",
    ":", "80", "8080", "@", "\\", ".", "%40", "[", "]", " ", "\t", "ä", "\u3002",
).filter(bool)  # fmt: skip
_PATHS = _joined("/", "api", "events", "@", "%40", "\\", "?", "#", ":", "x", " ", "..", "127.0.0.2")
_URLS = st.tuples(_SCHEMES, _AUTHORITIES, _PATHS).map("".join)


@settings(max_examples=500, deadline=None)
@given(_URLS)
def test_no_accepted_url_means_two_hosts(url: str) -> None:
    """Whatever passes the check, requests connects where the check looked, and plain http
    only to loopback."""
    if endpoint_problem(url) is not None:
        return
    ours, theirs = stdlib_view(url), client_view(url)
    assert ours == theirs
    if ours[0] == "http":  # loopback: localhost, or a loopback address written in full
        host = ours[1]
        assert host == "localhost" or ipaddress.ip_address(host).is_loopback, host


def test_a_confusing_endpoint_never_sends_the_key(
    tmp_path: Path, ingest: IngestServer, decoy: IngestServer, pipelines: list[Pipeline]
) -> None:
    # urllib.parse sees 127.0.0.1 (the real server); urllib3 would connect to the decoy
    url = f"http://{decoy.host}:{decoy.port}\\@127.0.0.1:{ingest.port}/api/events"
    assert client_view(url)[1] == decoy.host  # the trap is real
    pipeline = make(pipelines, tmp_path, endpoint=url)
    assert pipeline.problem is not None
    submit(pipeline, 2)
    assert pipeline.flush(0.5) is False
    # and the client, asked directly, refuses too: it does not rely on its caller's check
    client = DeliveryClient(url, None, KEY, 0.5)
    try:
        result = client.send_one("e1", '{"event_id":"e1"}')
    finally:
        client.close()
    assert result.outcome == "misconfigured"
    assert decoy.connections() == 0 and ingest.connections() == 0


# --- 7. the batch endpoint is checked like the endpoint -----------------------------------------


def test_an_insecure_batch_endpoint_is_refused(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    good = "https://api.cmdrdata.ai/api/events"
    bad = "http://api.cmdrdata.ai/api/events/batch"
    assert endpoints_problem(good, None) is None
    problem = endpoints_problem(good, bad)
    assert problem is not None and "CMDRDATA_BATCH_ENDPOINT" in problem
    pipeline = make(pipelines, tmp_path, endpoint=good, batch_endpoint=bad, batch_size=10)
    assert pipeline.problem is not None
    submit(pipeline, 3)
    assert len(pipeline._threads) == 1  # the journal importer only: no sender
    # the client refuses on its own, without trying the network
    client = DeliveryClient(good, bad, KEY, 0.5)
    try:
        overall, _ = client.send_batch([("e1", '{"event_id":"e1"}'), ("e2", '{"event_id":"e2"}')])
    finally:
        client.close()
    assert overall.outcome == "misconfigured" and "CMDRDATA_BATCH_ENDPOINT" in overall.reason


def test_a_confusing_batch_endpoint_never_sends_the_key(
    tmp_path: Path, ingest: IngestServer, decoy: IngestServer, pipelines: list[Pipeline]
) -> None:
    batch = f"http://{decoy.host}:{decoy.port}\\@127.0.0.1:{ingest.port}/api/events/batch"
    pipeline = make(pipelines, tmp_path, endpoint=ingest.url, batch_endpoint=batch, batch_size=5)
    assert pipeline.problem is not None
    submit(pipeline, 3)
    assert pipeline.flush(0.5) is False
    assert decoy.connections() == 0 and ingest.connections() == 0
    assert Spool(pipeline.spool_path).stats().depth == 3  # kept, not lost


# --- 8. redirects are never followed --------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_a_redirect_is_not_followed_and_not_counted_delivered(
    tmp_path: Path,
    ingest: IngestServer,
    decoy: IngestServer,
    pipelines: list[Pipeline],
    caplog: pytest.LogCaptureFixture,
    status: int,
    batch_size: int,
) -> None:
    target = decoy.batch_url if batch_size > 1 else decoy.url
    ingest.redirect(target.replace("http://", "http://user:hunter2@"), status, times=None)
    caplog.set_level(logging.INFO, logger="cmdrdata_autotrack")
    pipeline = make(pipelines, tmp_path, endpoint=ingest.url, batch_size=batch_size)
    submit(pipeline, 2)
    assert ingest.wait_for_requests(1)
    assert wait_for(lambda: pipeline.refusal is not None)
    assert pipeline.flush(0.3) is False
    assert decoy.connections() == 0 and decoy.requests == []
    assert ingest.accepted_ids() == set()
    stats = Spool(pipeline.spool_path).stats()
    assert (stats.depth, stats.dead_letters) == (2, 0)  # kept for when the endpoint is fixed
    ready, why = pipeline.readiness()
    assert not ready and f"{decoy.host}:{decoy.port}" in why and "redirect" in why
    logged = caplog.text
    assert f"{decoy.host}:{decoy.port}" in logged
    assert "hunter2" not in logged and "hunter2" not in why and KEY not in logged


def test_a_redirect_to_the_same_host_is_not_followed_either(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    ingest.redirect(ingest.url + "/v2", 308, times=None)
    pipeline = make(pipelines, tmp_path, endpoint=ingest.url)
    submit(pipeline, 1)
    assert wait_for(lambda: pipeline.refusal is not None)
    assert all(r.path == "/api/events" for r in ingest.requests)


# --- a proxy never sees a plain-http request with the key ----------------------------------------


def test_plain_http_to_loopback_bypasses_proxies(
    tmp_path: Path,
    ingest: IngestServer,
    decoy: IngestServer,
    pipelines: list[Pipeline],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, decoy.root_url)
    pipeline = make(pipelines, tmp_path, endpoint=ingest.url)
    ids = submit(pipeline, 2)
    assert ingest.wait_for_events(2)
    assert ingest.accepted_ids() == set(ids)
    assert decoy.connections() == 0


# --- 9. nothing the API echoes is stored or printed -------------------------------------------------


@pytest.mark.parametrize("key", [KEY, PLAIN_KEY])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_an_echoed_key_is_never_stored_or_printed(
    tmp_path: Path, pipelines: list[Pipeline], key: str, batch_size: int
) -> None:
    with IngestServer(api_key=key) as server:
        pipeline = make(
            pipelines, tmp_path, api_key=key, endpoint=server.url, batch_size=batch_size
        )
        events = [event() for _ in range(3)]
        bad = events[1]["event_id"]
        server.reject_event(bad, 422, "unknown model", echo_headers=True)
        for item in events:
            pipeline.submit(item)
        assert server.wait_for_events(2)
        assert wait_for(lambda: server.rejected_ids() == {bad})
        assert wait_for(lambda: Spool(pipeline.spool_path).stats().dead_letters == 1)
        pipeline.shutdown(1)
        # the server did echo the key: this test can fail
        echoed = [r for r in server.requests if r.status == 200 or r.status == 422]
        assert any(r.headers.get("authorization") == f"Bearer {key}" for r in echoed)
    stored = spool_text(pipeline)
    assert bad in stored and "unknown model" in stored
    assert "authorization" in stored  # the header was kept, and its value masked
    assert key not in stored and "Bearer" not in stored
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMDRDATA_")}
    env.update(CMDRDATA_SPOOL_DIR=str(tmp_path / "spool"), CMDRDATA_API_KEY=key)
    for args in (["dead-letters"], ["dead-letters", "--json"], ["doctor", "--no-network"]):
        done = subprocess.run(
            [sys.executable, "-m", "cmdrdata_autotrack.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        printed = done.stdout + done.stderr
        assert key not in printed and "Bearer" not in printed, args
        if args[0] == "dead-letters":
            assert done.returncode == 0 and bad in printed and "HTTP 422" in printed
            assert "[REDACTED]" in printed


def test_dead_letters_stored_before_the_fix_are_printed_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMDRDATA_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CMDRDATA_API_KEY", PLAIN_KEY)
    spool = Spool(tmp_path / "spool" / "spool.sqlite3")
    spool.put([("e1", "{}", None)], 10**6, "drop-newest")
    raw = f'HTTP 422: {{"headers": {{"Authorization": "Bearer {PLAIN_KEY}"}}}} \x1b[2J'
    spool.dead_letter("e1", raw, 422)
    spool.close()
    for args in (["dead-letters"], ["dead-letters", "--json"]):
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "e1" in out and PLAIN_KEY not in out and "\x1b" not in out


def test_doctor_shows_no_credentials_and_checks_the_batch_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMDRDATA_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CMDRDATA_API_KEY", KEY)
    monkeypatch.setenv("CMDRDATA_ENDPOINT", "https://svc:hunter2@api.cmdrdata.ai/api/events")
    assert cli.main(["doctor", "--no-network", "--json"]) == 1
    out = capsys.readouterr().out
    assert "hunter2" not in out and KEY not in out
    monkeypatch.setenv("CMDRDATA_ENDPOINT", "https://api.cmdrdata.ai/api/events")
    monkeypatch.setenv("CMDRDATA_BATCH_ENDPOINT", "http://api.cmdrdata.ai/api/events/batch")
    assert cli.main(["doctor", "--no-network"]) == 1
    assert "CMDRDATA_BATCH_ENDPOINT" in capsys.readouterr().out


# --- each key goes to its own service only ---------------------------------------------------------

KEYS_APP = """
import openai
client = openai.OpenAI(max_retries=0)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "a private prompt"}],
    customer_id="acme",
)
print(reply.usage.total_tokens)
"""


@pytest.mark.drives_sdk
def test_the_openai_key_never_reaches_cmdrdata_nor_the_tracker_key_openai(
    fake: FakeOpenAI, ingest: IngestServer, tmp_path: Path
) -> None:
    openai_key = "sk-proj-test-never-to-cmdrdata-0123456789"
    app = tmp_path / "app.py"
    app.write_text(KEYS_APP)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMDRDATA_", "OTEL_", "PYTEST_")) and k != "PYTHONPATH"
    }
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY=openai_key,
        CMDRDATA_API_KEY=KEY,
        CMDRDATA_ENDPOINT=ingest.url,
        CMDRDATA_SPOOL_DIR=str(tmp_path / "spool"),
        CMDRDATA_LEDGER_PATH=str(tmp_path / "ledger.sqlite3"),
        CMDRDATA_LOG_LEVEL="debug",
    )
    run = str(Path(sys.executable).parent / "cmdrdata-run")
    done = subprocess.run(
        [run, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert ingest.wait_for_events(1)
    to_cmdrdata = json.dumps([(r.headers, r.body) for r in ingest.requests])
    assert openai_key not in to_cmdrdata and "a private prompt" not in to_cmdrdata
    to_openai = json.dumps([(r.headers, r.body.decode()) for r in fake.requests])
    assert KEY not in to_openai
    assert fake.requests[0].headers["authorization"] == f"Bearer {openai_key}"
    assert openai_key not in done.stderr and KEY not in done.stderr


# --- the redaction filter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer SECRETVALUE",
        "authorization: bearer SECRETVALUE",
        "AUTHORIZATION=BEARER SECRETVALUE",
        "Authorization: Basic SECRETVALUE",
        "Authorization: SECRETVALUE",
        "Proxy-Authorization: Bearer SECRETVALUE",
        '{"authorization": "Bearer SECRETVALUE"}',
        '{\\"authorization\\": \\"Bearer SECRETVALUE\\"}',
        "{'Authorization': 'Bearer SECRETVALUE'}",
        "sent bEaReR SECRETVALUE to the API",
        "x-api-key: SECRETVALUE",
        '{"api_key": "SECRETVALUE"}',
        "https://svc:SECRETVALUE@api.cmdrdata.ai/api/events",
        "tk-SECRETVALUE",
        "sk-proj-SECRETVALUE",
    ],
)
def test_redact_masks_secrets_in_every_spelling(text: str) -> None:
    clean = redact(text)
    assert "SECRETVALUE" not in clean and "[REDACTED]" in clean


def test_redact_keeps_json_valid() -> None:
    line = json.dumps({"message": 'header "Authorization: Bearer SECRETVALUE" sent'})
    clean = redact(line)
    assert "SECRETVALUE" not in clean
    json.loads(clean)


def test_registered_secrets_are_masked_in_escaped_forms() -> None:
    secret = "zq9-Live/Secret.v4lue"
    register_secret(secret)
    escaped_json = json.dumps(secret)[1:-1].replace("/", "\\/")
    unicode_escaped = "".join(f"\\u{ord(c):04x}" for c in secret)
    percent = "".join(f"%{ord(c):02X}" for c in secret)
    for spelling in (secret, escaped_json, unicode_escaped, percent, f"{{'k': {secret!r}}}"):
        clean = redact(f"body: {spelling} end")
        assert "zq9" not in clean and "v4lue" not in clean and "[REDACTED]" in clean, spelling


def test_short_or_empty_secrets_are_not_registered() -> None:
    register_secret("")
    register_secret("abc")
    assert redact("abc def") == "abc def"


@pytest.mark.parametrize(
    "text",
    [
        "HTTP 422: unknown model gpt-4o-mini",
        "cmdrdata: delivery failed (HTTP 503); retry in 0.50s",
        "17 input tokens, 9 output tokens; task-1234567 desk-987654",
        "endpoint https://api.cmdrdata.ai/api/events",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text
