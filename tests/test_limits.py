"""Per-customer limits in one process: the rules, the windows, the engine, and the real SDK.

The engine tests use a clock the test moves (windows reset without sleeping) and
a real SQLite counter file; the SDK tests drive the real ``openai`` client against
the loopback fake. Several processes and Redis: test_limits_fleet.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import cmdrdata_autotrack
from cmdrdata_autotrack import agent, customer_context, limits
from cmdrdata_autotrack.export.pipeline import journal_line
from cmdrdata_autotrack.export.processor import span_record_to_event
from cmdrdata_autotrack.limits import setup
from cmdrdata_autotrack.limits.counters import CounterCache
from cmdrdata_autotrack.limits.engine import Engine, Refusal, Reservation, counter_key, parse_key
from cmdrdata_autotrack.limits.local_store import LocalStore
from cmdrdata_autotrack.limits.rules import NANO_USD, LimitsError, from_mapping, parse_text
from cmdrdata_autotrack.limits.windows import window
from cmdrdata_autotrack.telemetry import metrics
from cmdrdata_autotrack.usage.model import Usage

from conftest import Spans
from fake_openai import FakeOpenAI

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CALL_TOKENS = 26  # the fake's usage of one non-streamed chat call: 17 in, 9 out

ISSUE_EXAMPLE = """\
[default]
requests_per_minute = 600
[plans.pro]
tokens_per_day = 2_000_000
[customers."acme"]
tokens_per_minute = 10_000      # also: tokens_per_day, tokens_per_month, cost_per_month_usd
action = "block"
"""

# 2025-03-14 12:00:30 UTC: mid-minute, mid-day, mid-month
NOON = 1741953630.0


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_engine(path: Path, rules: dict[str, Any], clock: Clock | None = None) -> Engine:
    clock = clock or Clock()
    store = LocalStore(path / "limits.sqlite3", clock=clock)
    cache = CounterCache(store, interval=60, clock=clock)
    return Engine(from_mapping(rules), cache, clock=clock)


# --- the rules ---------------------------------------------------------------------------------


def test_the_issue_example_resolves_limit_by_limit() -> None:
    rules = parse_text(ISSUE_EXAMPLE, "limits.toml")
    acme = {limit.name: limit for limit in rules.for_customer("acme", "pro")}
    assert set(acme) == {"requests_per_minute", "tokens_per_minute", "tokens_per_day"}
    assert (acme["tokens_per_minute"].value, acme["tokens_per_minute"].scope) == (
        10_000,
        "customers.acme",
    )
    assert acme["tokens_per_day"].scope == "plans.pro"
    assert acme["requests_per_minute"].scope == "default"
    # each limit acts as its own table says: acme's table blocks, the others warn
    assert acme["tokens_per_minute"].action == "block"
    assert acme["tokens_per_day"].action == acme["requests_per_minute"].action == "warn"
    other = rules.for_customer("bob", None)
    assert [(limit.name, limit.value) for limit in other] == [("requests_per_minute", 600)]


def test_a_customer_table_wins_over_its_plan_which_wins_over_the_default() -> None:
    rules = from_mapping(
        {
            "default": {"tokens_per_minute": 100, "tokens_per_day": 1000, "action": "block"},
            "plans": {"pro": {"tokens_per_minute": 200, "cost_per_month_usd": 5}},
            "customers": {"acme": {"tokens_per_minute": 300, "action": "warn"}},
        }
    )
    acme = {x.name: (x.value, x.action) for x in rules.for_customer("acme", "pro")}
    assert acme == {
        "tokens_per_minute": (300, "warn"),
        "tokens_per_day": (1000, "block"),
        "cost_per_month_usd": (5 * NANO_USD, "block"),  # the plan names no action: the default's
    }
    pro = {x.name: x.value for x in rules.for_customer("zed", "pro")}
    assert pro == {"tokens_per_minute": 200, "tokens_per_day": 1000, "cost_per_month_usd": 5e9}
    assert {x.name: x.value for x in rules.for_customer("zed", "free")} == {
        "tokens_per_minute": 100,
        "tokens_per_day": 1000,
    }


def test_input_and_output_token_limits_and_integral_floats() -> None:
    rules = parse_text(
        "[default]\ninput_tokens_per_day = 2e6\noutput_tokens_per_minute = 50\n", "f.toml"
    )
    limits_ = {x.name: (x.metric, x.window, x.value) for x in rules.for_customer("a", None)}
    assert limits_ == {
        "input_tokens_per_day": ("input_tokens", "day", 2_000_000),
        "output_tokens_per_minute": ("output_tokens", "minute", 50),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ISSUE_EXAMPLE.replace("10_000", "-5"),
            "limits.toml, line 6, key customers.acme.tokens_per_minute: expected a whole number",
        ),
        (
            ISSUE_EXAMPLE.replace("10_000", "1.5"),
            "limits.toml, line 6, key customers.acme.tokens_per_minute: expected a whole number",
        ),
        (
            ISSUE_EXAMPLE.replace('"block"', '"stop"'),
            'limits.toml, line 7, key customers.acme.action: expected "warn" or "block"',
        ),
        (
            ISSUE_EXAMPLE.replace("tokens_per_day =", "token_per_day ="),
            "limits.toml, line 4, key plans.pro.token_per_day: unknown key (did you mean "
            "tokens_per_day?)",
        ),
        (
            ISSUE_EXAMPLE.replace("= 600", "= "),
            "limits.toml, line 2, key default.requests_per_minute: invalid TOML",
        ),
        (
            ISSUE_EXAMPLE + "[customer.bob]\nrequests_per_minute = 1\n",
            "limits.toml, line 8, key customer: unknown table (did you mean customers?)",
        ),
        ("[plans]\npro = 3\n", "limits.toml, line 2, key plans.pro: expected a table"),
        (
            "customers = { acme = { tokens_per_minute = true } }\n",
            "limits.toml, line 1, key customers.acme.tokens_per_minute: expected a whole number",
        ),
        (
            '[default]\ncost_per_month_usd = "5"\n',
            "limits.toml, line 2, key default.cost_per_month_usd: expected a number of dollars",
        ),
    ],
)
def test_a_malformed_file_names_the_file_the_line_and_the_key(text: str, expected: str) -> None:
    with pytest.raises(LimitsError) as caught:
        parse_text(text, "limits.toml")
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_malformed_file_at_start_up_is_one_error_line_and_no_limits(
    tmp_path: Path, agent_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(ISSUE_EXAMPLE.replace("10_000", "ten thousand"))
    monkeypatch.setenv("CMDRDATA_LIMITS_FILE", str(path))
    monkeypatch.setattr(setup, "_from_code", False)
    setup.configure(None)
    assert limits.ENGINE is None
    errors = [r.getMessage() for r in agent_log.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"cmdrdata: limits not applied: {path}, line 6, key customers.acme.tokens_per_minute: "
        "invalid TOML: "
        "Invalid value; the app runs with no limits"
    ]


def test_an_unreadable_file_is_an_error_not_a_crash(
    tmp_path: Path, agent_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CMDRDATA_LIMITS_FILE", str(tmp_path / "missing.toml"))
    monkeypatch.setattr(setup, "_from_code", False)
    setup.configure(None)
    assert limits.ENGINE is None
    assert "missing.toml: cannot be read" in agent_log.text


def test_set_limits_refuses_bad_limits_and_keeps_those_in_force(
    tmp_path: Path, agent_log: pytest.LogCaptureFixture, isolated_limits: None
) -> None:
    assert cmdrdata_autotrack.set_limits({"default": {"requests_per_minute": 5}}) is True
    engine = limits.ENGINE
    assert engine is not None
    assert cmdrdata_autotrack.set_limits({"default": {"requests_per_minute": "many"}}) is False
    assert "set_limits(), key default.requests_per_minute: expected a whole number" in (
        agent_log.text
    )
    assert limits.ENGINE is engine and engine.rules.default.values == {"requests_per_minute": 5}
    assert cmdrdata_autotrack.set_limits(None) is True
    assert limits.ENGINE is None


def test_set_limits_from_a_file(tmp_path: Path, isolated_limits: None) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(ISSUE_EXAMPLE)
    assert cmdrdata_autotrack.set_limits(file=path) is True
    assert limits.ENGINE is not None and limits.ENGINE.rules.source == str(path)


# --- the windows -------------------------------------------------------------------------------


def test_windows_are_utc_minutes_days_and_calendar_months() -> None:
    assert window("minute", NOON) == (f"m{int(NOON // 60)}", 1741953660.0)
    assert window("day", NOON) == ("d2025-03-14", 1741996800.0)  # 2025-03-15 00:00 UTC
    assert window("month", NOON) == ("M2025-03", 1743465600.0)  # 2025-04-01 00:00 UTC
    december = 1735689599.0  # 2024-12-31 23:59:59 UTC
    assert window("month", december) == ("M2024-12", 1735689600.0)
    assert window("month", december + 1) == ("M2025-01", 1738368000.0)
    assert window("day", 1709164800.0)[0] == "d2024-02-29"  # a leap day


def test_counter_keys_name_the_customer_safely() -> None:
    key = counter_key("a:b}{c/ d", "tokens", "m1")
    assert key.startswith("cmdrdata:limits:{") and key.count("{") == 1 and key.count("}") == 1
    assert parse_key(key) == ("a:b}{c/ d", "tokens", "m1")
    assert parse_key("other:key") is None


# --- the engine --------------------------------------------------------------------------------


def test_block_refuses_at_the_limit_and_the_window_resets(tmp_path: Path) -> None:
    clock = Clock()
    engine = make_engine(
        tmp_path, {"customers": {"acme": {"requests_per_minute": 2, "action": "block"}}}, clock
    )
    for _ in range(2):
        assert isinstance(engine.admit("acme", None), Reservation)
    refusal = engine.admit("acme", None)
    assert isinstance(refusal, Refusal)
    assert (refusal.limit.name, refusal.used, refusal.resets_at) == (
        "requests_per_minute",
        2,
        1741953660.0,
    )
    assert engine.admit("bob", None) is None  # no limits for bob: nothing is counted
    clock.now += 30  # the next minute
    assert isinstance(engine.admit("acme", None), Reservation)
    engine.close()


def test_tokens_are_counted_when_the_call_settles(tmp_path: Path) -> None:
    engine = make_engine(
        tmp_path, {"default": {"tokens_per_minute": 50, "output_tokens_per_day": 1000}}
    )
    first = engine.admit("acme", None)
    assert isinstance(first, Reservation) and first.exceeded == ()
    first.settle(Usage(input_tokens=40, output_tokens=15, total_tokens=55))
    first.settle(Usage(input_tokens=40, output_tokens=15, total_tokens=55))  # once only
    second = engine.admit("acme", None)
    assert isinstance(second, Reservation)
    assert second.exceeded == ("tokens_per_minute",)  # warn: admitted, flagged
    usage = {limit.name: used for limit, used, _ in engine.usage("acme")}
    assert usage == {"tokens_per_minute": 55, "output_tokens_per_day": 15}
    engine.close()


def test_a_stream_reserves_its_input_estimate_and_settles_to_what_it_used(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"default": {"tokens_per_minute": 100}})
    reservation = engine.admit("acme", None, estimate=lambda: 60)
    assert isinstance(reservation, Reservation)
    assert [used for _, used, _ in engine.usage("acme")] == [60]  # others see it at once
    reservation.settle(Usage(input_tokens=17, output_tokens=5))
    assert [used for _, used, _ in engine.usage("acme")] == [22]
    failed = engine.admit("acme", None, estimate=lambda: 30)
    assert isinstance(failed, Reservation)
    failed.settle(None)  # the call failed: it used nothing, its estimate is given back
    assert [used for _, used, _ in engine.usage("acme")] == [22]
    engine.close()


def test_cost_is_counted_at_list_prices_and_unpriced_models_warn_once(
    tmp_path: Path, agent_log: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(tmp_path, {"default": {"cost_per_month_usd": 1}})
    call = engine.admit("acme", None, model="gpt-4o-mini")
    assert isinstance(call, Reservation)
    call.settle(Usage(input_tokens=1_000_000, output_tokens=1_000_000), "gpt-4o-mini-2024-07-18")
    price = engine._price("gpt-4o-mini")
    assert price is not None
    expected = round((price.input + price.output) * NANO_USD)
    assert [used for _, used, _ in engine.usage("acme")] == [expected]
    for _ in range(2):
        unknown = engine.admit("acme", None, model="my-own-model")
        assert isinstance(unknown, Reservation)
        unknown.settle(Usage(input_tokens=10, output_tokens=10))
    assert [used for _, used, _ in engine.usage("acme")] == [expected]
    assert agent_log.text.count("no price known for model 'my-own-model'") == 1
    engine.close()


def test_counters_are_shared_through_the_file(tmp_path: Path) -> None:
    rules = {"default": {"requests_per_minute": 3, "action": "block"}}
    first, second = make_engine(tmp_path, rules), make_engine(tmp_path, rules)
    for _ in range(2):
        assert isinstance(first.admit("acme", None), Reservation)
    assert first.flush()
    assert isinstance(second.admit("acme", None), Reservation)  # reads 2 from the file: 3rd
    assert isinstance(second.admit("acme", None), Refusal)
    assert second.flush()
    assert first.flush()  # reads the other's usage back
    assert isinstance(first.admit("acme", None), Refusal)
    first.close()
    second.close()


def test_a_counter_that_idled_out_of_the_cache_is_read_again_not_skipped(tmp_path: Path) -> None:
    clock = Clock()
    engine = make_engine(
        tmp_path, {"default": {"tokens_per_minute": 100, "action": "block"}}, clock
    )
    long_call = engine.admit("acme", None)
    assert isinstance(long_call, Reservation)
    assert engine.flush()
    clock.now += 11  # nobody checks acme's counter for a while: it leaves the cache
    assert engine.flush()
    long_call.settle(Usage(input_tokens=60, output_tokens=50))  # counted before it is read again
    before = metrics.snapshot().get("limits_fail_open", 0)
    assert isinstance(engine.admit("acme", None), Refusal)  # 110 of 100: checked, not let through
    assert metrics.snapshot().get("limits_fail_open", 0) == before
    engine.close()


class BrokenStore:
    name = "a broken store"

    def __init__(self) -> None:
        self.calls = 0

    def sync(self, deltas: Any, expires: Any, read: Any) -> dict[str, int]:
        self.calls += 1
        raise ConnectionError("connection refused")

    def scan(self, now: float) -> dict[str, int]:
        raise ConnectionError("connection refused")

    def after_fork(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_an_unreachable_store_fails_open_with_one_warning_and_a_metric(
    agent_log: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    store = BrokenStore()
    engine = Engine(
        from_mapping({"default": {"requests_per_minute": 0, "action": "block"}}),
        CounterCache(store, interval=60, clock=clock),
    )
    before = metrics.snapshot().get("limits_fail_open", 0)
    for _ in range(3):
        assert isinstance(engine.admit("acme", None), Reservation)  # a 0 limit, yet admitted
    assert engine.flush() is False
    assert metrics.snapshot()["limits_fail_open"] - before == 3
    warnings = [r.getMessage() for r in agent_log.records if "cannot be reached" in r.getMessage()]
    assert warnings == [
        "cmdrdata: the limits counter store (a broken store) cannot be reached (ConnectionError: "
        "connection refused); calls go through unchecked until it answers again"
    ]
    assert store.calls == 2  # the first check's read, then the sync: never on every call
    engine.close()


# --- the exception -----------------------------------------------------------------------------


def test_the_exception_is_a_faithful_rate_limit_error() -> None:
    rules = from_mapping({"customers": {"acme": {"tokens_per_minute": 100, "action": "block"}}})
    (limit,) = rules.for_customer("acme", None)
    refusal = Refusal("acme", limit, 120, NOON + 30, NOON + 0.5, ("tokens_per_minute",))
    error = refusal.error("http://127.0.0.1:9/v1/")
    assert isinstance(error, openai.RateLimitError)
    assert isinstance(error, openai.APIStatusError)
    assert isinstance(error, cmdrdata_autotrack.CustomerLimitExceeded)
    assert error.status_code == 429 and error.response.status_code == 429
    assert error.response.headers["retry-after"] == "30"
    assert error.response.headers["retry-after-ms"] == "29500"
    assert error.code == "customer_limit_exceeded"
    assert error.response.json()["error"]["code"] == "customer_limit_exceeded"
    assert str(error.request.url) == "http://127.0.0.1:9/v1/"
    assert error.message == str(error)
    assert "customer 'acme'" in error.message
    assert "10,000" not in error.message and "100 tokens per minute" in error.message
    assert "resets in 30 s, at 2025-03-14 12:01:00 UTC" in error.message
    assert (error.customer_id, error.limit_name, error.retry_after) == (
        "acme",
        "tokens_per_minute",
        30,
    )


# --- the real SDK ------------------------------------------------------------------------------


class Recorder:
    """The usage events of the calls, as the journal gives them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        return [
            span_record_to_event(json.loads(journal_line(r)), "unattributed") for r in self.records
        ]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    running = agent.get()
    assert running is not None
    rec = Recorder()
    running.processor.sinks.append(rec.records.append)
    try:
        yield rec
    finally:
        running.processor.sinks.remove(rec.records.append)


@pytest.fixture
def install(tmp_path: Path, isolated_limits: None) -> Iterator[Any]:
    """Install limits for the agent of this process, with a clock the test moves."""
    clock = Clock(NOON)

    def put(rules: dict[str, Any]) -> Clock:
        limits.ENGINE = make_engine(tmp_path, rules, clock)
        return clock

    yield put


@pytest.fixture
def isolated_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(setup, "_from_code", False)
    yield
    engine, limits.ENGINE = limits.ENGINE, None
    if engine is not None:
        engine.close()


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("cmdrdata_autotrack")  # it does not propagate
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, "cmdrdata_autotrack")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


BLOCK_ACME = {"customers": {"acme": {"requests_per_minute": 1, "action": "block"}}}


def answer(client: Any, customer: str) -> str:
    """An app's own handler: it already copes with OpenAI's 429s."""
    try:
        reply = client.chat.completions.create(**CHAT, customer_id=customer)
    except openai.RateLimitError as exc:
        return f"busy, retry in {exc.response.headers['retry-after']} s"
    return str(reply.choices[0].message.content)


def test_a_customer_over_its_limit_gets_rate_limit_error_and_others_are_served(
    client: Any, fake: FakeOpenAI, install: Any, recorder: Recorder, spans: Spans
) -> None:
    install(BLOCK_ACME)
    before = metrics.snapshot().get("limits_blocked", 0)
    assert not answer(client, "acme").startswith("busy")
    assert answer(client, "acme") == "busy, retry in 30 s"  # caught by except RateLimitError
    assert not answer(client, "bob").startswith("busy")
    assert len(fake.requests) == 2  # the refused call was never sent
    assert metrics.snapshot()["limits_blocked"] - before == 1
    blocked = [e for e in recorder.events() if e["blocked"]]
    assert len(blocked) == 1
    event = blocked[0]
    assert (event["customer_id"], event["input_tokens"], event["total_tokens"]) == ("acme", 0, 0)
    assert event["limit_exceeded"] == ["requests_per_minute"]
    assert (event["error"]["type"], event["error"]["code"]) == ("CustomerLimitExceeded", "429")
    served = [e for e in recorder.events() if not e["blocked"]]
    assert [(e["customer_id"], e["total_tokens"]) for e in served] == [
        ("acme", CALL_TOKENS),
        ("bob", CALL_TOKENS),
    ]


def test_the_sdk_does_not_retry_a_refused_call(fake: FakeOpenAI, install: Any) -> None:
    install({"default": {"requests_per_minute": 0, "action": "block"}})
    patient = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-key", max_retries=5)
    with pytest.raises(cmdrdata_autotrack.CustomerLimitExceeded):
        patient.chat.completions.create(**CHAT, customer_id="acme")
    assert fake.requests == []


def test_the_window_resets_and_the_customer_is_served_again(
    client: Any, fake: FakeOpenAI, install: Any
) -> None:
    clock = install(BLOCK_ACME)
    client.chat.completions.create(**CHAT, customer_id="acme")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**CHAT, customer_id="acme")
    clock.now += 60
    assert client.chat.completions.create(**CHAT, customer_id="acme").usage.total_tokens == 26


def test_a_blocked_stream_raises_before_anything_is_sent(
    client: Any, fake: FakeOpenAI, install: Any, spans: Spans
) -> None:
    install({"customers": {"acme": {"tokens_per_minute": 10, "action": "block"}}})
    chunks = client.chat.completions.create(**CHAT, customer_id="acme", stream=True)
    streamed = [c for c in chunks]
    assert streamed and len(fake.requests) == 1
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT, customer_id="acme", stream=True)
    assert caught.value.response.headers["x-cmdrdata-limit"] == "tokens_per_minute"
    with (
        customer_context("acme"),
        pytest.raises(openai.RateLimitError),
        client.chat.completions.stream(**CHAT) as helper,
    ):
        list(helper)
    assert len(fake.requests) == 1
    ended = [dict(s.attributes or {}) for s in spans.all]
    assert [a.get("cmdrdata.limit.blocked", False) for a in ended] == [False, True, True]


async def test_async_calls_and_streams_are_refused_likewise(
    aclient: Any, fake: FakeOpenAI, install: Any
) -> None:
    install({"customers": {"acme": {"requests_per_minute": 1, "action": "block"}}})
    stream = await aclient.chat.completions.create(**CHAT, customer_id="acme", stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.RateLimitError):
        await aclient.chat.completions.create(**CHAT, customer_id="acme", stream=True)
    with pytest.raises(cmdrdata_autotrack.CustomerLimitExceeded):
        await aclient.chat.completions.create(**CHAT, customer_id="acme")
    with customer_context("acme"), pytest.raises(openai.RateLimitError):
        async with aclient.chat.completions.stream(**CHAT) as helper:
            async for _ in helper:
                pass
    assert len(fake.requests) == 1


def test_a_stream_counts_what_it_used(client: Any, install: Any, spans: Spans) -> None:
    install({"default": {"tokens_per_minute": 1000}})
    engine = limits.ENGINE
    assert engine is not None
    chunks = client.chat.completions.create(**CHAT, customer_id="acme", stream=True)
    next(iter(chunks))
    ((_, reserved, _),) = engine.usage("acme")
    assert reserved > 0  # the input estimate, while the stream runs
    for _ in chunks:
        pass
    used = spans.attrs()["cmdrdata.usage.total_tokens"]
    assert [u for _, u, _ in engine.usage("acme")] == [used]


def test_warn_flags_the_event_and_logs_once_per_window(
    client: Any, install: Any, recorder: Recorder, agent_log: pytest.LogCaptureFixture
) -> None:
    clock = install({"plans": {"pro": {"tokens_per_minute": 30}}})
    with customer_context("acme", plan="pro"):
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        clock.now += 60
        client.chat.completions.create(**CHAT)
        client.chat.completions.create(**CHAT)
    with customer_context("acme", plan="free"):  # another plan: no limit
        client.chat.completions.create(**CHAT)
    flags = [e["limit_exceeded"] for e in recorder.events()]
    over = ["tokens_per_minute"]
    assert flags == [[], [], over, [], [], []]  # over from the 2nd call's settlement
    assert all(not e["blocked"] for e in recorder.events())
    lines = [r.getMessage() for r in agent_log.records if "is over its limit" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(
        "cmdrdata: customer 'acme' is over its limit of 30 tokens per minute (52 tokens used, "
        "from plans.pro); its calls go on (action = warn)"
    )


def test_unattributed_calls_and_untracked_calls_are_not_limited(
    client: Any, fake: FakeOpenAI, install: Any
) -> None:
    install({"default": {"requests_per_minute": 0, "action": "block"}})
    client.chat.completions.create(**CHAT)  # no customer
    client.chat.completions.create(**CHAT, customer_id="acme", track_usage=False)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**CHAT, customer_id="acme")
    assert len(fake.requests) == 2


def test_no_limits_configured_means_no_engine(isolated_limits: None) -> None:
    assert limits.ENGINE is None
