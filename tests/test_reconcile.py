"""``cmdrdata-autotrack reconcile`` against a loopback fake of OpenAI's Usage and Costs APIs.

The command runs as a real subprocess (the console script). The metered side is
a ledger: written by a real app under ``cmdrdata-run`` against the fake OpenAI
API, or with ``export.ledger.record`` where a test needs exact times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.cli import main as cli
from cmdrdata_autotrack.export.ledger import open_ledger, record
from cmdrdata_autotrack.pricing import cost, load_prices
from cmdrdata_autotrack.reconcile import scope
from cmdrdata_autotrack.reconcile.buckets import Window, ceil_to, floor_to
from cmdrdata_autotrack.reconcile.compare import compare
from cmdrdata_autotrack.reconcile.metered import CallReader, MeteredCall, aggregate, key_suffix
from cmdrdata_autotrack.reconcile.model import ENDPOINTS_BY_NAME, Units, UsageRecord
from cmdrdata_autotrack.reconcile.scope import matches
from cmdrdata_autotrack.reconcile.usage_api import AdminAPI, AdminAPIError, ProjectKey

from fake_openai import FakeOpenAI
from fake_openai_admin import ADMIN_KEY, FakeOpenAIAdmin

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

BIN = Path(sys.executable).parent
CLI = str(BIN / "cmdrdata-autotrack")
DAY, HOUR = 86400, 3600
MINI = "gpt-4o-mini-2024-07-18"
TODAY = floor_to(time.time(), DAY)
D1, D2, D3 = TODAY - DAY, TODAY - 2 * DAY, TODAY - 3 * DAY  # whole, complete days
PRICE = load_prices().for_model(MINI)
assert PRICE is not None


@pytest.fixture
def admin() -> Iterator[FakeOpenAIAdmin]:
    with FakeOpenAIAdmin() as fake:
        yield fake


def at(moment: float) -> str:
    """An ISO date-time for --since/--until."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(moment))


def env_for(admin: FakeOpenAIAdmin | None, ledger: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMDRDATA_", "OPENAI_", "OTEL_", "PYTEST_")) and k != "PYTHONPATH"
    }
    env["CMDRDATA_LEDGER_PATH"] = str(ledger)
    env["CMDRDATA_SPOOL_DIR"] = str(ledger.parent / "spool")
    if admin is not None:
        env.update(OPENAI_ADMIN_KEY=admin.admin_key, OPENAI_BASE_URL=admin.base_url)
    env.update(extra)
    return env


def reconcile(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "reconcile", *args], env=env, capture_output=True, text=True, timeout=60
    )


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def chat(
    n: int, when: float, *, inp: int = 100, cached: int = 40, out: int = 20, **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": f"ev-{n}",
        "timestamp": int(when),
        "timestamp_ms": int(when * 1000),
        "customer_id": "acme",
        "model": MINI,
        "operation": "chat",
        "endpoint": "chat_completions",
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "output_tokens": out,
        "reasoning_tokens": 0,
        "total_tokens": inp + out,
        "units": {},
        "metadata": {},
        "request": {"success": True},
        **extra,
    }


def write_ledger(path: Path, events: list[dict[str, Any]]) -> Path:
    conn = open_ledger(path)
    record(conn, [(e, json.dumps(e)) for e in events])
    conn.close()
    return path


def bill_chat(
    admin: FakeOpenAIAdmin,
    when: float,
    *,
    inp: int = 100,
    cached: int = 40,
    out: int = 20,
    **extra: Any,
) -> None:
    admin.add_usage(
        "completions",
        when,
        model=MINI,
        input_tokens=inp,
        input_cached_tokens=cached,
        output_tokens=out,
        num_model_requests=1,
        **extra,
    )


# --- end to end, with real metered calls -------------------------------------------------------

APP = """
import openai, cmdrdata_autotrack
client = openai.OpenAI(max_retries=0)
with cmdrdata_autotrack.customer_context("acme"):  # its key, sk-test-wxyz, scopes it
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        pass
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    client.audio.speech.create(model="tts-1", voice="alloy", input="Read this aloud.").read()
    client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF0000WAVE"))
print("done")
"""


@pytest.mark.drives_sdk
def test_real_metered_calls_reconcile_to_full_coverage(
    fake: FakeOpenAI, admin: FakeOpenAIAdmin, tmp_path: Path
) -> None:
    """A real app's calls, metered by the agent into the ledger, match what the (fake) OpenAI
    API served, unit by unit; another app's key in the organization is scoped out."""
    fake.usage.prompt_tokens, fake.usage.cached_tokens, fake.usage.completion_tokens = 17, 5, 9
    fake.model_aliases.update({"text-embedding-3-small": "text-embedding-3-small"})
    app_ledger = tmp_path / "app" / "ledger.sqlite3"
    app_ledger.parent.mkdir()
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    env = env_for(
        None,
        app_ledger,
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test-wxyz",
        CMDRDATA_STREAM_USAGE="always",  # the stream reports its usage: nothing is estimated
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    ran = subprocess.run(
        [str(BIN / "cmdrdata-run"), sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and "done" in ran.stdout, ran.stderr
    assert "could not start" not in ran.stderr, ran.stderr  # the agent metered the calls

    # The calls happened just now, in the bucket OpenAI is still filling. Move them, unchanged
    # otherwise, to yesterday noon so their bucket is complete.
    conn = open_ledger(app_ledger)
    events = [
        json.loads(text) for (text,) in conn.execute("SELECT event FROM usage ORDER BY timestamp")
    ]
    conn.close()
    assert len(events) == 7
    noon = D1 + 12 * HOUR
    for i, event in enumerate(events):
        event["timestamp"], event["timestamp_ms"] = noon + i, (noon + i) * 1000
    ledger = write_ledger(tmp_path / "ledger.sqlite3", events)

    # What the fake OpenAI API served, as its usage API would bill it, for the app's key ...
    admin.add_key("proj_app", "key_app", "sk-proj-...wxyz", "the app")
    admin.add_key("proj_app", "key_other", "sk-proj-...1234", "another app")
    when = noon
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
    # ... and another app's usage under another key of the same organization.
    bill_chat(admin, noon, inp=5000, out=500, api_key_id="key_other")
    admin.add_cost(noon, 0.0000069, line_item=f"{MINI}, input", api_key_id="key_app")

    out = reconcile(
        env_for(admin, ledger),
        "--since",
        at(D1),
        "--until",
        at(TODAY),
        "--bucket",
        "1h",
        "--json",
        "--fail-below",
        "100",
        "--fail-on",
        "requests,input_tokens,cached_input_tokens,output_tokens,characters,seconds",
    )
    assert out.returncode == 0, out.stderr
    doc = as_json(out)
    assert doc["scope"]["api_key_ids"] == ["key_app"]
    cov = doc["coverage"]
    assert cov["requests"] == {"metered": 7, "billed": 7, "coverage_pct": 100.0}
    assert cov["input_tokens"]["billed"] == 5 * 17 and cov["input_tokens"]["coverage_pct"] == 100.0
    assert cov["cached_input_tokens"]["metered"] == 4 * 5
    assert cov["output_tokens"] == {"metered": 36, "billed": 36, "coverage_pct": 100.0}
    assert cov["characters"] == {"metered": 16, "billed": 16, "coverage_pct": 100.0}
    assert cov["seconds"] == {"metered": 7, "billed": 7, "coverage_pct": 100.0}
    assert doc["largest_differences"] == [] and doc["passed"] is True
    assert doc["unmetered_cost"]["value"] == 0
    assert {(r["endpoint"], r["model"]) for r in doc["rows"]} == {
        ("completions", MINI),
        ("embeddings", "text-embedding-3-small"),
        ("audio_speeches", "tts-1"),
        ("audio_transcriptions", "whisper-1"),
    }
    # Only the app's key was asked about; endpoints that cannot be scoped by key were skipped.
    usage_asks = admin.requests_to("/organization/usage/completions")
    assert [r.values("api_key_ids") for r in usage_asks] == [["key_app"]]
    assert not admin.requests_to("/usage/code_interpreter_sessions")
    assert any("cannot scope code_interpreter_sessions" in n for n in doc["notes"])
    # The admin key went in the Authorization header only.
    assert all(r.headers["authorization"] == f"Bearer {ADMIN_KEY}" for r in admin.requests)
    assert ADMIN_KEY not in out.stdout + out.stderr


# --- OpenAI billed more than was metered --------------------------------------------------------


def test_a_bucket_billed_more_than_metered(admin: FakeOpenAIAdmin, tmp_path: Path) -> None:
    events = [chat(i, D2 + 3 * HOUR + i) for i in range(4)] + [chat(9, D1 + 5 * HOUR)]
    ledger = write_ledger(tmp_path / "ledger.sqlite3", events)
    for i in range(4):
        bill_chat(admin, D2 + 3 * HOUR + i)
    bill_chat(admin, D1 + 5 * HOUR)
    bill_chat(admin, D1 + 5 * HOUR + 60, inp=1000, cached=0, out=300)  # never metered
    env = env_for(admin, ledger)
    args = ("--since", at(D3), "--until", at(TODAY), "--bucket", "1h", "--no-costs")

    doc = as_json(reconcile(env, *args, "--json"))
    cov = doc["coverage"]
    assert (cov["requests"]["metered"], cov["requests"]["billed"]) == (5, 6)
    assert cov["input_tokens"]["coverage_pct"] == pytest.approx(100 * 500 / 1500, abs=1e-3)
    worst = doc["largest_differences"][0]
    assert worst["start_time"] == D1 + 5 * HOUR and worst["model"] == MINI
    assert (worst["metered"]["requests"], worst["billed"]["requests"]) == (1, 2)
    expected = cost(PRICE, input_tokens=1000, output_tokens=300)
    assert worst["unmetered_cost"] == pytest.approx(expected)
    assert doc["unmetered_cost"]["value"] == pytest.approx(expected)
    assert len(doc["largest_differences"]) == 1  # the other bucket agrees

    failing = reconcile(env, *args, "--fail-below", "99.5")
    assert failing.returncode == 1
    assert "FAIL: coverage below 99.5%" in failing.stdout
    assert "coverage below 99.5%: requests 83.33%" in failing.stderr
    table = failing.stdout
    assert "Buckets that differ most" in table and f"{D1 // DAY}" not in table
    assert "1 / 2" in table  # metered / billed requests of the differing bucket

    rows = reconcile(env, *args, "--csv").stdout.splitlines()
    header = rows[0].split(",")
    lines = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    differing = [r for r in lines if r["billed_requests"] != r["metered_requests"]]
    assert len(differing) == 1 and differing[0]["billed_input_tokens"] == "1100"
    assert all(r["complete"] == "true" for r in lines)

    # Checking only units that agree passes.
    assert reconcile(env, *args, "--fail-below", "50", "--fail-on", "requests").returncode == 0


# --- the incomplete last bucket and empty buckets -----------------------------------------------


def test_the_last_bucket_is_incomplete_not_a_gap(admin: FakeOpenAIAdmin, tmp_path: Path) -> None:
    now = time.time()
    events = [chat(1, D2 + HOUR), chat(2, now - 1)]
    ledger = write_ledger(tmp_path / "ledger.sqlite3", events)
    bill_chat(admin, D2 + HOUR)
    for _ in range(3):  # OpenAI is still counting today: it already shows more than we metered
        bill_chat(admin, now - 1)
    doc = as_json(reconcile(env_for(admin, ledger), "--since", at(D3), "--json", "--no-costs"))
    today = floor_to(now, DAY)
    assert doc["incomplete_buckets"] == [time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(today))]
    assert doc["complete_buckets"] == 3
    assert doc["coverage"]["requests"] == {"metered": 1, "billed": 1, "coverage_pct": 100.0}
    assert doc["largest_differences"] == []
    last = [r for r in doc["rows"] if r["start_time"] == today]
    assert len(last) == 1 and last[0]["complete"] is False
    assert (last[0]["metered"]["requests"], last[0]["billed"]["requests"]) == (1, 3)
    # The fake answered the empty days with empty buckets, and they are no gap either.
    assert {r["start_time"] for r in doc["rows"]} == {D2, today}

    # With a settling margin longer than the day so far, yesterday is incomplete as well.
    settle = f"{int(now - today) // 60 + 60}m"
    doc = as_json(
        reconcile(env_for(admin, ledger), "--since", at(D3), "--json", "--settle", settle)
    )
    assert len(doc["incomplete_buckets"]) == 2


def test_empty_buckets_in_the_api_answer(admin: FakeOpenAIAdmin) -> None:
    """The fake answers days without usage as OpenAI does: a bucket whose results are []."""
    window = Window.around(D3, TODAY, "1d", now=time.time())
    with AdminAPI(admin.base_url, ADMIN_KEY) as api:
        page = api._get(
            "/organization/usage/completions",
            [
                ("start_time", str(window.start)),
                ("end_time", str(window.end)),
                ("bucket_width", "1d"),
            ],
        )
        assert [b["results"] for b in page["data"]] == [[], [], []]
        assert api.usage(ENDPOINTS_BY_NAME["completions"], window) == []


# --- pagination, 429 and Retry-After ------------------------------------------------------------


def test_pagination_and_retry_after(admin: FakeOpenAIAdmin, tmp_path: Path) -> None:
    start = TODAY - 40 * DAY  # 40 daily buckets: two pages of at most 31
    events = [chat(i, start + i * DAY + HOUR) for i in range(40)]
    ledger = write_ledger(tmp_path / "ledger.sqlite3", events)
    for i in range(40):
        bill_chat(admin, start + i * DAY + HOUR)
    admin.add_cost(start + HOUR, 0.25, line_item=f"{MINI}, input")
    admin.fail(429, path="/organization/usage/completions", headers={"retry-after-ms": "300"})
    doc = as_json(reconcile(env_for(admin, ledger), "--since", at(start), "--json"))

    asks = admin.requests_to("/organization/usage/completions")
    assert len(asks) == 3  # the 429, then page 1 and page 2
    assert asks[1].arrived - asks[0].arrived >= 0.3  # it waited as told
    assert asks[1].value("page") is None and asks[2].value("page")
    assert asks[1].value("limit") == "31"
    assert doc["coverage"]["requests"] == {"metered": 40, "billed": 40, "coverage_pct": 100.0}
    assert doc["coverage"]["cost"]["billed"] == 0.25
    assert doc["complete_buckets"] == 40


def test_retries_honour_retry_after_and_give_up(admin: FakeOpenAIAdmin) -> None:
    slept: list[float] = []
    window = Window.around(D3, TODAY, "1d", now=time.time())
    spec = ENDPOINTS_BY_NAME["embeddings"]
    with AdminAPI(admin.base_url, ADMIN_KEY, sleep=slept.append, rand=lambda: 1.0) as api:
        admin.fail(429, headers={"Retry-After": "7"})
        admin.fail(503)
        assert api.usage(spec, window) == []
        assert slept == [7.0, 1.0]  # Retry-After, then backoff (2nd attempt, jitter at its top)
        admin.fail(429, headers={"retry-after-ms": "120000"}, times=10)
        with pytest.raises(AdminAPIError, match=r"HTTP 429.*gave up after 6 attempts"):
            api.usage(spec, window)
        assert slept[2:] == [60.0] * 5  # capped


def test_project_key_listing_is_paged(admin: FakeOpenAIAdmin) -> None:
    admin.list_page_size = 1
    admin.add_key("proj_a", "key_1", "sk-proj-...aaaa")
    admin.add_key("proj_a", "key_2", "sk-proj-...bbbb")
    admin.add_key("proj_b", "key_3", "sk-...cccc")
    with AdminAPI(admin.base_url, ADMIN_KEY) as api:
        keys = api.project_keys()
    assert [(k.id, k.project_id) for k in keys] == [
        ("key_1", "proj_a"),
        ("key_2", "proj_a"),
        ("key_3", "proj_b"),
    ]
    assert admin.requests_to("/projects/proj_a/api_keys")[1].value("after") == "key_1"


# --- refusals -------------------------------------------------------------------------------------


def test_no_admin_key_is_a_clear_error(tmp_path: Path) -> None:
    result = reconcile(env_for(None, tmp_path / "ledger.sqlite3"))
    assert result.returncode == 2
    assert "OPENAI_ADMIN_KEY is not set" in result.stderr and "Traceback" not in result.stderr


def test_with_a_tracker_key_and_no_local_usage_it_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never reached
    monkeypatch.setenv("CMDRDATA_API_KEY", "tk-reconcile-test-0123456789")
    monkeypatch.setenv("CMDRDATA_LEDGER_PATH", str(tmp_path / "none.sqlite3"))
    monkeypatch.setenv("CMDRDATA_SPOOL_DIR", str(tmp_path / "spool"))
    assert cli.main(["reconcile"]) == 2
    err = capsys.readouterr().err
    assert "usage is delivered to cmdrdata" in err
    assert f"the metered record {tmp_path / 'spool' / 'metered.sqlite3'}" in err
    assert "does not exist yet" in err  # (test_metered_store: reconciling what it keeps)


def test_plain_http_to_another_host_is_refused(tmp_path: Path) -> None:
    env = env_for(None, tmp_path / "ledger.sqlite3", OPENAI_ADMIN_KEY=ADMIN_KEY)
    env["OPENAI_BASE_URL"] = "http://api.example.com/v1"
    result = reconcile(env)
    assert result.returncode == 2
    assert "must use https" in result.stderr and "not sent" in result.stderr
    result = reconcile(env, "--base-url", "http://10.0.0.1/v1")
    assert result.returncode == 2 and "must use https" in result.stderr
    assert ADMIN_KEY not in result.stdout + result.stderr


def test_a_refused_admin_key_is_never_printed(admin: FakeOpenAIAdmin, tmp_path: Path) -> None:
    """The fake echoes the key it was given in its 401, as OpenAI does (masked there)."""
    env = env_for(
        admin, tmp_path / "ledger.sqlite3", OPENAI_ADMIN_KEY="sk-admin-WRONGkey0123456789abcd"
    )
    result = reconcile(env)
    assert result.returncode == 2
    assert "HTTP 401" in result.stderr and "OPENAI_ADMIN_KEY was refused" in result.stderr
    assert "WRONGkey0123456789abcd" not in result.stderr + result.stdout


def test_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--fail-below", "150"], "not a percentage"),
        (["--by", "colour"], "cannot group by"),
        (["--fail-on", "tokens"], "unknown unit(s) tokens"),
        (["--settle", "soon"], "not a duration"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(["reconcile", *argv])
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert cli.main(["reconcile", "--since", "now", "--until", "1d"]) == 2
    assert "before its end" in capsys.readouterr().err
    assert cli.main(["reconcile", "--since", "3000d", "--bucket", "1m"]) == 2
    assert "too many" in capsys.readouterr().err


# --- scoping --------------------------------------------------------------------------------------


def test_without_key_suffixes_the_whole_organization_is_compared(
    admin: FakeOpenAIAdmin, tmp_path: Path
) -> None:
    ledger = write_ledger(tmp_path / "ledger.sqlite3", [chat(1, D2 + HOUR)])
    bill_chat(admin, D2 + HOUR)
    doc = as_json(reconcile(env_for(admin, ledger), "--since", at(D3), "--json", "--no-costs"))
    assert doc["scope"] == {
        "description": "the whole organization",
        "api_key_ids": [],
        "project_ids": [],
    }
    assert any("do not record which OpenAI key" in n for n in doc["notes"])
    assert not admin.requests_to("/organization/projects")  # no key listing needed
    assert all(not r.values("api_key_ids") for r in admin.requests)


def test_explicit_project_scope_and_grouping(admin: FakeOpenAIAdmin, tmp_path: Path) -> None:
    events = [
        chat(1, D2 + HOUR, openai_project_id="proj_a", service_tier="default"),
        chat(2, D2 + HOUR, openai_project_id="proj_b", service_tier="flex"),
    ]
    ledger = write_ledger(tmp_path / "ledger.sqlite3", events)
    bill_chat(admin, D2 + HOUR, project_id="proj_a", service_tier="default")
    bill_chat(admin, D2 + HOUR, project_id="proj_b", service_tier="flex")
    doc = as_json(
        reconcile(
            env_for(admin, ledger),
            "--since",
            at(D3),
            "--json",
            "--no-costs",
            "--project",
            "proj_a",
            "--by",
            "project,tier",
        )
    )
    assert doc["group_by"] == ["model", "project_id", "service_tier"]
    assert doc["coverage"]["requests"]["coverage_pct"] == 100.0
    assert [(r["project_id"], r["service_tier"]) for r in doc["rows"]] == [("proj_a", "default")]
    assert any("other keys or projects: left out" in n for n in doc["notes"])
    completions = admin.requests_to("/organization/usage/completions")[0]
    assert completions.values("project_ids") == ["proj_a"]
    assert completions.values("group_by") == ["model", "project_id", "service_tier"]


# --- the parts, in process ------------------------------------------------------------------------


def test_windows_align_to_utc_buckets() -> None:
    now = 1_800_000_000.0
    w = Window.around(now - 7 * DAY + 123, now, "1d", now=now)
    assert w.start % DAY == 0 and w.end == ceil_to(now, DAY) and w.width == DAY
    assert len(w.starts()) == 8 and not w.is_complete(w.starts()[-1]) and w.is_complete(w.start)
    h = Window.around(now - 5 * HOUR, now, "1h", now=now, settle=2 * HOUR)
    complete = [s for s in h.starts() if h.is_complete(s)]
    assert complete == list(range(h.start, floor_to(now, HOUR) - 2 * HOUR, HOUR))
    assert h.days().start == floor_to(h.start, DAY) and h.days().width == DAY
    assert h.bucket_of(h.end) is None and h.bucket_of(h.start + 61) == h.start


def test_over_metering_and_unknown_calls_are_shown() -> None:
    """Metered more than billed (a doubled event) reads as coverage above 100%."""
    prices = load_prices()
    reader = CallReader(prices)
    calls = [reader.read(chat(i, D2 + i)) for i in range(3)]
    calls.append(reader.read({**chat(9, D2), "operation": "execute_tool", "endpoint": None}))
    window = Window.around(D2, D1, "1d", now=time.time())
    billed = [
        UsageRecord(
            "completions",
            D2,
            D1,
            MINI,
            {},
            Units(requests=2, input_tokens=200, cached_input_tokens=80, output_tokens=40),
        )
    ]
    result = compare(
        aggregate([c for c in calls if c], window.width), billed, None, window=window, prices=prices
    )
    cov = {c.unit: c for c in result.coverage()}
    assert cov["requests"].percent == pytest.approx(200.0)  # 4 metered (one 'other') / 2 billed
    assert result.other_calls == 1
    assert result.unmetered_cost() == 0
    assert result.largest_differences()[0].difference_cost > 0


def test_failed_calls_and_key_suffixes() -> None:
    reader = CallReader(load_prices())
    refused = {**chat(1, D2, inp=0, cached=0, out=0), "request": {"success": False}}
    assert reader.read(refused) is None  # OpenAI bills no refused request
    cut = {**chat(2, D2, out=3), "request": {"success": False}}
    assert reader.read(cut) is not None  # a stream cut short was billed for what it used
    assert key_suffix("sk-proj-abcdefWXYZ") == "WXYZ" and key_suffix("ab") is None
    assert key_suffix("x<y>z!") is None
    call = reader.read({**chat(3, D2), "metadata": {"openai_key_suffix": "wxyz"}})
    assert isinstance(call, MeteredCall) and call.key_suffix == "wxyz"
    assert matches("sk-proj-...wxyz", "wxyz") and matches("sk-abc...xyz", "wxyz")
    assert not matches("sk-proj-...wxyz", "abcd") and not matches("sk-...yz", "wxyz")


def test_calls_grouped_by_the_key_id_their_suffix_resolves_to() -> None:
    prices = load_prices()
    reader = CallReader(prices)
    calls = [reader.read(chat(1, D2, openai_key_suffix="wxyz")), reader.read(chat(2, D2))]
    window = Window.around(D2, D1, "1d", now=time.time())
    units = Units(requests=1, input_tokens=100, cached_input_tokens=40, output_tokens=20)
    billed = [
        UsageRecord("completions", D2, D1, MINI, {"api_key_id": "key_app"}, units),
        UsageRecord("completions", D2, D1, MINI, {"api_key_id": "key_other"}, units),
    ]
    result = compare(
        aggregate([c for c in calls if c], window.width),
        billed,
        None,
        window=window,
        group_by=["api_key_id"],
        prices=prices,
        key_ids={"wxyz": "key_app"},
    )
    rows = {r.dims["api_key_id"]: r for r in result.rows}
    assert set(rows) == {"key_app", "key_other", None}
    assert not rows["key_app"].differs()  # the app's key: metered and billed agree
    assert rows["key_other"].metered.requests == 0 and rows[None].billed.requests == 0


def test_scope_notes_unknown_and_shared_suffixes() -> None:
    reader = CallReader(load_prices())
    calls = [
        reader.read(chat(i, D2, openai_key_suffix=s))
        for i, s in enumerate(("aaaa", "bbbb", "cccc"))
    ]
    keys = [
        ProjectKey("key_1", "proj", "sk-proj-...aaaa", ""),
        ProjectKey("key_2", "proj", "sk-proj-...bbbb", ""),
        ProjectKey("key_3", "proj", "sk-svc-...bbbb", ""),
    ]
    decided = scope.decide([c for c in calls if c], list_keys=lambda: keys)
    assert decided.api_key_ids == ("key_1", "key_2", "key_3")
    assert any("No API key of the organization ends in ...cccc" in n for n in decided.notes)
    assert any("More than one API key ends in ...bbbb" in n for n in decided.notes)
    # One call without its key: no scoping at all, and a note that says why.
    mixed = [c for c in [*calls, reader.read(chat(9, D2))] if c]
    decided = scope.decide(mixed, list_keys=lambda: keys)
    assert not decided.scoped and "1 of 4 metered call(s) do not record" in decided.notes[0]
