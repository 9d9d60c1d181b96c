"""Every setting is validated, whatever the environment, a keyword or an option says.

Hostile values (``nan``, ``inf``, ``1e309``, huge or negative numbers, hex,
units, blanks) must give the default with one warning naming the variable, never
an exception, a frozen breaker, an agent that won't start or a lost flush at exit.
The cases are parametrised over :data:`SETTINGS`, so a new setting is covered
as soon as it is added.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_launcher import APP, RUN, app_env

from cmdrdata_autotrack import agent
from cmdrdata_autotrack.config import (
    DEFAULT_ENDPOINT,
    SETTINGS,
    Setting,
    Settings,
    known_overrides,
    parse_value,
    reference_markdown,
    resolve,
)
from cmdrdata_autotrack.export.backoff import (
    MAX_COOLDOWN_S,
    MAX_RETRY_AFTER_S,
    CircuitBreaker,
    backoff_delay,
    retry_after_seconds,
)
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.export.spool import Spool

from fake_openai import FakeOpenAI
from ingest_server import IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

NUMERIC = [s for s in SETTINGS if s.kind in ("int", "float")]
WITH_DEFAULT = [s for s in SETTINGS if s.default is not None]
KEY = "tk-settings-0123456789"
CLI = str(Path(sys.executable).parent / "cmdrdata-autotrack")

# Refused by every numeric setting (each range is finite and starts at 0 or more).
HOSTILE_TEXT = [
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-1e309",
    "99999999999",
    "-1",
    "-0.5",
    "0x10",
    "5s",
    "5 5",
    "1_0",
    "\uff15",  # a full-width digit 5: int() takes it, a setting does not
    "five",
    "1e",
    "+",
    ".",
    "5\x00",
    "9" * 5000,  # past int()'s digit limit
]
BLANK = ["", " ", "\t\n  "]
# Keyword values: Python objects, not text.
HOSTILE_OBJECTS: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    10**400,
    -1,
    True,
    "nan",
    "5s",
    b"5",
    [5],
    object(),
]


def typed_default(setting: Setting) -> object:
    return resolve(setting, None)


def out_of_range(setting: Setting) -> list[str]:
    """Just past each bound (and a fraction, for ints)."""
    assert setting.minimum is not None and setting.maximum is not None
    low = setting.minimum - (1 if setting.kind == "int" else 0.001)
    values = [repr(low) if setting.kind == "float" else str(int(low))]
    values.append(str(int(setting.maximum) + 1))
    if setting.kind == "int":
        values += ["2.5", "5.0", "1e2"]
    return values


def assert_valid(setting: Setting, value: object) -> None:
    """``value`` is what consumers may rely on: the right type, finite, within range."""
    if setting.kind in ("int", "float"):
        if value is None:
            assert setting.default is None
            return
        assert type(value) is (int if setting.kind == "int" else float), value
        assert setting.minimum is not None and setting.maximum is not None
        assert math.isfinite(value)  # type: ignore[arg-type]
        assert setting.minimum <= value <= setting.maximum  # type: ignore[operator]
    elif setting.kind == "bool":
        assert type(value) is bool
    elif setting.kind == "choice":
        assert value in setting.choices
    elif value is None:
        assert setting.default is None
    else:
        assert isinstance(value, str) and value == value.strip() and value


class Warnings(logging.Handler):
    """The configuration warnings (the agent's logger does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("cmdrdata_autotrack.config")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def ids(setting: Setting) -> str:
    return setting.env


# --- the table itself -------------------------------------------------------------------------


def test_every_numeric_setting_has_a_finite_range_that_holds_its_default() -> None:
    assert NUMERIC, "the numeric settings are found by kind"
    for setting in NUMERIC:
        assert setting.minimum is not None and setting.maximum is not None, setting.env
        assert math.isfinite(setting.minimum) and math.isfinite(setting.maximum)
        assert 0 <= setting.minimum <= setting.maximum, setting.env
        if setting.kind == "int":
            assert float(setting.minimum).is_integer() and float(setting.maximum).is_integer()
    for setting in SETTINGS:
        if setting.default is not None:
            assert_valid(setting, parse_value(setting, setting.default))
        assert setting.kind in ("int", "float") or setting.minimum is setting.maximum is None


def test_the_dataclass_defaults_are_the_table_defaults() -> None:
    assert Settings() == Settings.from_env({})
    for setting in SETTINGS:
        assert getattr(Settings(), setting.name) == typed_default(setting), setting.env


def test_the_reference_shows_each_range() -> None:
    table = reference_markdown()
    for setting in NUMERIC:
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `{setting.env}` |")]
        assert f"{setting.kind}, " in row and " to " in row, row


# --- environment values -----------------------------------------------------------------------


@pytest.mark.parametrize("setting", NUMERIC, ids=ids)
@pytest.mark.parametrize("raw", HOSTILE_TEXT, ids=lambda raw: repr(raw[:12]))
def test_hostile_number_gives_the_default_and_one_warning(
    setting: Setting, raw: str, warnings: Warnings
) -> None:
    value = getattr(Settings.from_env({setting.env: raw}), setting.name)
    assert value == typed_default(setting)
    (message,) = warnings.messages
    assert setting.env in message and setting.expects() in message
    assert repr(raw)[:40] in message


@pytest.mark.parametrize("setting", NUMERIC, ids=ids)
def test_just_out_of_range_gives_the_default_and_the_bounds_are_accepted(
    setting: Setting, warnings: Warnings
) -> None:
    for raw in out_of_range(setting):
        assert getattr(Settings.from_env({setting.env: raw}), setting.name) == typed_default(
            setting
        ), raw
    assert len(warnings.messages) == len(out_of_range(setting))
    assert all(setting.env in m for m in warnings.messages)
    warnings.messages.clear()
    for bound in (setting.minimum, setting.maximum):
        text = f" {bound if setting.kind == 'float' else int(bound or 0)} "  # spaces are fine
        assert getattr(Settings.from_env({setting.env: text}), setting.name) == bound
    assert warnings.messages == []


@pytest.mark.parametrize("setting", SETTINGS, ids=ids)
@pytest.mark.parametrize("raw", BLANK, ids=repr)
def test_blank_means_unset_for_every_kind(setting: Setting, raw: str, warnings: Warnings) -> None:
    assert getattr(Settings.from_env({setting.env: raw}), setting.name) == typed_default(setting)
    assert warnings.messages == []


def test_blank_endpoint_delivers_to_the_default_endpoint(tmp_path: Path) -> None:
    """CMDRDATA_ENDPOINT="" (documented as unset) used to disable delivery."""
    settings = Settings.from_env(
        {
            "CMDRDATA_API_KEY": KEY,
            "CMDRDATA_ENDPOINT": "",
            "CMDRDATA_UNATTRIBUTED_CUSTOMER": " ",
            "CMDRDATA_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    assert settings.endpoint == DEFAULT_ENDPOINT
    assert settings.unattributed_customer == "unattributed"
    pipeline = Pipeline(settings)  # builds no thread and sends nothing
    assert pipeline.mode == "deliver" and pipeline.problem is None
    assert pipeline.new_client().endpoint == DEFAULT_ENDPOINT


# --- keywords: instrument(), known_overrides, Settings(...), TrackedOpenAI ----------------------


@pytest.mark.parametrize("setting", NUMERIC, ids=ids)
@pytest.mark.parametrize("bad", HOSTILE_OBJECTS, ids=lambda v: type(v).__name__ + repr(v)[:10])
def test_hostile_keyword_is_ignored_with_one_warning(
    setting: Setting, bad: object, warnings: Warnings
) -> None:
    env_value = setting.maximum  # valid, and not the default
    env = {setting.env: str(int(env_value or 0)) if setting.kind == "int" else repr(env_value)}
    # from_env(**overrides): the environment value applies
    assert getattr(Settings.from_env(env, **{setting.name: bad}), setting.name) == env_value
    # known_overrides (instrument's path) leaves it out, so the environment applies there too
    assert known_overrides({setting.name: bad}) == {}
    # built directly, or by dataclasses.replace: the default
    assert getattr(Settings(**{setting.name: bad}), setting.name) == typed_default(setting)
    replaced = dataclasses.replace(Settings(), **{setting.name: bad})
    assert getattr(replaced, setting.name) == typed_default(setting)
    assert len(warnings.messages) == 4
    assert all(setting.env in m and setting.name in m for m in warnings.messages)


def test_valid_keywords_are_typed() -> None:
    assert known_overrides({"timeout": 3, "batch_size": "10", "endpoint": " ", "x": 1}) == {
        "timeout": 3.0,
        "batch_size": 10,
    }
    settings = Settings.from_env({"CMDRDATA_TIMEOUT": "2"}, timeout=9, disabled="yes")
    assert settings.timeout == 9.0 and type(settings.timeout) is float
    assert settings.disabled is True
    assert Settings.from_env({"CMDRDATA_TIMEOUT": "2"}, timeout="").timeout == 2.0


@pytest.mark.drives_sdk
def test_tracked_openai_with_hostile_tracker_values_changes_nothing(
    fake: FakeOpenAI, warnings: Warnings
) -> None:
    from cmdrdata_autotrack import TrackedOpenAI

    running = agent.get()
    assert running is not None
    before = running.settings
    client = TrackedOpenAI(
        api_key="sk-test",
        tracker_timeout=math.nan,
        tracker_endpoint="   ",
        base_url=fake.base_url,
        max_retries=0,
    )
    assert agent.get() is running and running.settings is before  # no new pipeline
    assert len(warnings.messages) == 1 and "CMDRDATA_TIMEOUT" in warnings.messages[0]
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.usage is not None and reply.usage.total_tokens == 26


# --- the property: any input, a valid value, never an exception ---------------------------------

number_like = st.from_regex(r"\A\s*[+-]?[0-9._xXeEa-f]{0,12}\s*\Z")
any_text = st.one_of(
    st.text(),
    number_like,
    st.floats().map(repr),
    st.integers().map(str),
    st.sampled_from(HOSTILE_TEXT + BLANK),
)
any_object = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), any_text, st.lists(st.integers())
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SETTINGS), any_text)
def test_any_text_for_any_setting_is_valid(setting: Setting, raw: str) -> None:
    assert_valid(setting, resolve(setting, raw))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([s.env for s in SETTINGS]), any_text))
def test_any_environment_gives_valid_settings(environ: dict[str, str]) -> None:
    built = Settings.from_env(environ)
    for setting in SETTINGS:
        assert_valid(setting, getattr(built, setting.name))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SETTINGS), any_object)
def test_any_keyword_for_any_setting_is_valid(setting: Setting, value: object) -> None:
    for built in (
        Settings.from_env({}, **{setting.name: value}),
        Settings(**{setting.name: value}),
    ):
        assert_valid(setting, getattr(built, setting.name))
    for name, parsed in known_overrides({setting.name: value}).items():
        assert_valid(SETTINGS[[s.name for s in SETTINGS].index(name)], parsed)


# --- retry timing and the breaker, whatever they are given ------------------------------------

odd_numbers = st.one_of(
    st.floats(), st.integers(min_value=-(10**400), max_value=10**400), st.sampled_from([0, -0.0])
)


@given(odd_numbers, odd_numbers, odd_numbers, st.floats())
def test_backoff_delay_is_always_a_finite_bounded_delay(
    attempt: Any, base: Any, cap: Any, jitter: float
) -> None:
    delay = backoff_delay(attempt, base, cap, rand=lambda: jitter)
    assert math.isfinite(delay) and 0.0 <= delay <= MAX_RETRY_AFTER_S


@given(st.one_of(st.text(), st.floats().map(repr), st.sampled_from(HOSTILE_TEXT)))
def test_retry_after_is_none_or_a_bounded_delay(value: str) -> None:
    seconds = retry_after_seconds(value, now=0.0)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_S


@pytest.mark.parametrize("cooldown", [math.nan, math.inf, -math.inf, -5.0, 10**400, 0.0])
@pytest.mark.parametrize("threshold", [0, -3, 1, 10**30])
def test_the_breaker_always_reopens_for_a_probe(cooldown: Any, threshold: Any) -> None:
    """CMDRDATA_BREAKER_COOLDOWN=nan used to keep the breaker open for ever."""
    now = [1000.0]
    breaker = CircuitBreaker(threshold, cooldown, max_cooldown=math.nan, clock=lambda: now[0])
    for _ in range(min(breaker.threshold, 10**6)):
        breaker.failure()
    assert breaker.state == CircuitBreaker.OPEN
    for _ in range(3):  # and after failed probes, with the cooldown doubled
        wait = breaker.wait_time()
        assert math.isfinite(wait) and 0.0 <= wait <= MAX_COOLDOWN_S
        now[0] += wait
        assert breaker.allow() and breaker.state == CircuitBreaker.HALF_OPEN
        breaker.failure()
    breaker.success()
    assert breaker.allow() and breaker.state == CircuitBreaker.CLOSED


# --- the launcher and whole processes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--timeout", "nan"), ("--batch-size", "0"), ("--metrics-port", "99999999999")],
)
def test_launcher_refuses_a_bad_number_option(fake: FakeOpenAI, option: str, value: str) -> None:
    result = subprocess.run(
        [RUN, option, value, sys.executable, "-c", "print('ran')"],
        env=app_env(fake),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "ran" not in result.stdout
    assert option in result.stderr and repr(value) in result.stderr


def test_launcher_passes_a_valid_number_option_on(fake: FakeOpenAI) -> None:
    code = "import os; print(repr(os.environ['CMDRDATA_TIMEOUT']))"
    result = subprocess.run(
        [RUN, "--timeout", " 7 ", sys.executable, "-c", code],
        env=app_env(fake),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "' 7 '"


# Every numeric variable at once, each refused, plus blanks that mean "default".
HOSTILE_ENV = {
    "CMDRDATA_TIMEOUT": "inf",
    "CMDRDATA_BATCH_SIZE": "0",
    "CMDRDATA_MAX_IN_FLIGHT": "-1",
    "CMDRDATA_BATCH_LINGER": "nan",
    "CMDRDATA_SPOOL_MAX_MB": "inf",
    "CMDRDATA_SHUTDOWN_TIMEOUT": "1e309",
    "CMDRDATA_RETRY_BASE_DELAY": "nan",
    "CMDRDATA_RETRY_MAX_DELAY": "-inf",
    "CMDRDATA_BREAKER_THRESHOLD": "0x10",
    "CMDRDATA_BREAKER_COOLDOWN": "nan",
    "CMDRDATA_METRICS_PORT": "99999999999",
    "CMDRDATA_LEDGER_RETENTION": "-35",
    "CMDRDATA_PENDING_TTL_DAYS": "inf",
    "CMDRDATA_LIMITS_SYNC_INTERVAL": "nan",
}
BLANK_ENV = {
    "CMDRDATA_UNATTRIBUTED_CUSTOMER": "  ",
    "CMDRDATA_LOG_LEVEL": "",
    "CMDRDATA_DISABLED": " ",
    "CMDRDATA_STREAM_USAGE": "",
}


def test_every_numeric_setting_is_in_the_hostile_environment() -> None:
    assert set(HOSTILE_ENV) == {s.env for s in NUMERIC}
    for setting in NUMERIC:
        with pytest.raises(ValueError):
            parse_value(setting, HOSTILE_ENV[setting.env])


def run_app(app: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUN, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.drives_sdk
def test_hostile_settings_app_runs_and_is_metered_in_the_ledger(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = app_env(fake, tmp_path, **HOSTILE_ENV, **BLANK_ENV, CMDRDATA_ENDPOINT="")
    env["CMDRDATA_STREAM_USAGE"] = "always"  # the stream's usage chunk: no estimate
    result = run_app(app, env)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()  # the app is unharmed
    assert first == "Hello from the fake server. 26" and second.endswith("None]")
    for name in HOSTILE_ENV:  # one warning each, naming the variable
        assert result.stderr.count(name) == 1, result.stderr
    assert "Traceback" not in result.stderr and "could not" not in result.stderr

    report = subprocess.run(
        [CLI, "report", "--ledger", str(tmp_path / "ledger.sqlite3"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    rows = {row["customer"]: row for row in json.loads(report.stdout)["rows"]}
    assert set(rows) == {"acme", "unattributed"}  # a blank unattributed name is the default
    assert rows["acme"]["calls"] == rows["unattributed"]["calls"] == 1
    assert rows["acme"]["total_tokens"] == 26
    assert rows["acme"]["estimated_calls"] == rows["unattributed"]["estimated_calls"] == 0


@pytest.mark.drives_sdk
def test_hostile_settings_app_delivers_everything_before_it_exits(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """SHUTDOWN_TIMEOUT=1e309 overflowed the exit flush; SPOOL_MAX_MB=inf kept the agent from
    starting; TIMEOUT=inf and BREAKER_COOLDOWN=nan reached the sender."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    with IngestServer(api_key=KEY) as ingest:
        env = app_env(fake, tmp_path, **HOSTILE_ENV, CMDRDATA_API_KEY=KEY)
        env["CMDRDATA_ENDPOINT"] = ingest.url
        result = run_app(app, env)
        assert result.returncode == 0, result.stderr
        assert "Hello from the fake server." in result.stdout
        # delivered at exit, within the (default) shutdown timeout: nothing left behind
        events = list(ingest.accepted().values())
    assert sorted(e["customer_id"] for e in events) == ["acme", "unattributed"]
    assert sum(e["total_tokens"] for e in events if e["customer_id"] == "acme") == 26
    spool = Spool(tmp_path / "spool" / "spool.sqlite3")
    try:
        assert spool.stats().depth == 0
    finally:
        spool.close()
