"""``cmdrdata-autotrack report`` and the price table: numbers, filters, costs, output formats."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.cli.report import (
    ReportRow,
    add_parser,
    format_cost,
    parse_time,
    run,
    summarize,
    total,
)
from cmdrdata_autotrack.export.ledger import open_ledger, record
from cmdrdata_autotrack.pricing import ModelPrice, PriceTable, cost, load_prices

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


DAY1, DAY2, DAY3 = ts("2026-11-01T10:00"), ts("2026-11-02T10:00"), ts("2026-11-03T10:00")

# Prices that make the arithmetic obvious, merged over the shipped table.
CUSTOM_PRICES = {
    "version": "test",
    "models": {
        "m-a": {"input": 1, "cached_input": 0.5, "output": 2, "reasoning": 4},
        "m-b": {"input": 10, "output": 20},
    },
}


def event(
    n: int,
    when: float,
    customer: str | None,
    model: str,
    *,
    inp: int = 0,
    cached: int = 0,
    out: int = 0,
    reasoning: int = 0,
    estimated: bool = False,
    success: bool = True,
    units: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event_id": f"ev-{n}",
        "timestamp": int(when),
        "timestamp_ms": int(when * 1000),
        "customer_id": customer or "unattributed",
        "attributed": customer is not None,
        "model": model,
        "provider": "openai",
        "operation": "chat",
        "endpoint": "chat.completions",
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "output_tokens": out,
        "reasoning_tokens": reasoning,
        "total_tokens": inp + out,
        "usage_estimated": estimated,
        "request": {"success": success},
        "units": units or {},
        "metadata": {},
    }


EVENTS = [
    # acme: a dated snapshot of a shipped model, twice (once estimated), across two days
    event(1, DAY1, "acme", "gpt-4o-mini-2024-07-18", inp=1000, cached=400, out=500),
    event(2, DAY2, "acme", "gpt-4o-mini-2024-07-18", inp=2000, out=1000, estimated=True),
    # acme: cached and reasoning tokens at the custom prices
    event(3, DAY2, "acme", "m-a", inp=1_000_000, cached=200_000, out=500_000, reasoning=100_000),
    # acme: audio minutes and speech characters
    event(8, DAY1, "acme", "whisper-1", units={"audio_seconds": 90}),
    event(9, DAY1, "acme", "tts-1", units={"input_characters": 2000}),
    # globex: a dated snapshot of a custom model, failed
    event(4, DAY3, "globex", "m-a-2026-01-01", inp=100, out=50, success=False),
    # globex: two HD images, and a model without a price
    event(
        6,
        DAY3,
        "globex",
        "dall-e-3",
        units={"image_count": 2, "image_size": "1024x1024", "image_quality": "hd"},
    ),
    event(7, DAY3, "globex", "mystery-model", inp=10, out=10),
    # no customer named
    event(5, DAY1, None, "m-b", inp=1000, out=1000),
]

# Hand-computed costs per (customer, model), USD.
COST_MINI_1 = (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6  # 0.00042
COST_MINI_2 = (2000 * 0.15 + 1000 * 0.60) / 1e6  # 0.0009
COST_M_A = (800_000 * 1 + 200_000 * 0.5 + 400_000 * 2 + 100_000 * 4) / 1e6  # 2.1
COST_WHISPER = 90 / 60 * 0.006  # 0.009
COST_TTS = 2000 * 15 / 1e6  # 0.03
COST_GLOBEX_M_A = (100 * 1 + 50 * 2) / 1e6  # 0.0002
COST_DALLE = 2 * 0.08
COST_M_B = (1000 * 10 + 1000 * 20) / 1e6  # 0.03


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CMDRDATA_PRICES_FILE", "CMDRDATA_LEDGER_PATH", "CMDRDATA_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    conn = open_ledger(path)
    assert record(conn, [(e, json.dumps(e)) for e in EVENTS]) == len(EVENTS)
    conn.close()
    return path


@pytest.fixture
def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(CUSTOM_PRICES))
    return path


@pytest.fixture
def prices(prices_file: Path) -> PriceTable:
    return load_prices(prices_file)


def rows_by_key(rows: list[ReportRow]) -> dict[tuple[str | None, str | None], ReportRow]:
    return {(r.customer, r.model): r for r in rows}


# --- summarize ------------------------------------------------------------------------------


def test_summarize_per_customer_and_model(ledger: Path, prices: PriceTable) -> None:
    conn = open_ledger(ledger)
    rows = summarize(conn, None, None, None, prices)
    assert [(r.customer, r.model) for r in rows] == [
        ("acme", "gpt-4o-mini-2024-07-18"),
        ("acme", "m-a"),
        ("acme", "tts-1"),
        ("acme", "whisper-1"),
        ("globex", "dall-e-3"),
        ("globex", "m-a-2026-01-01"),
        ("globex", "mystery-model"),
        ("unattributed", "m-b"),
    ]
    by = rows_by_key(rows)
    mini = by["acme", "gpt-4o-mini-2024-07-18"]
    assert (mini.calls, mini.input_tokens, mini.cached_input_tokens) == (2, 3000, 400)
    assert (mini.output_tokens, mini.reasoning_tokens, mini.total_tokens) == (1500, 0, 4500)
    assert (mini.estimated_calls, mini.failed_calls, mini.unpriced_calls) == (1, 0, 0)
    assert mini.cost == pytest.approx(COST_MINI_1 + COST_MINI_2)

    m_a = by["acme", "m-a"]
    assert (m_a.input_tokens, m_a.cached_input_tokens) == (1_000_000, 200_000)
    assert (m_a.output_tokens, m_a.reasoning_tokens, m_a.total_tokens) == (
        500_000,
        100_000,
        1_500_000,
    )
    assert m_a.cost == pytest.approx(2.1)
    assert by["acme", "whisper-1"].cost == pytest.approx(COST_WHISPER)
    assert by["acme", "tts-1"].cost == pytest.approx(COST_TTS)

    failed = by["globex", "m-a-2026-01-01"]
    assert (failed.calls, failed.failed_calls) == (1, 1)
    assert failed.cost == pytest.approx(COST_GLOBEX_M_A)
    assert by["globex", "dall-e-3"].cost == pytest.approx(0.16)

    unknown = by["globex", "mystery-model"]
    assert unknown.cost is None
    assert (unknown.unpriced_calls, unknown.unpriced_models) == (1, ("mystery-model",))
    assert by["unattributed", "m-b"].cost == pytest.approx(COST_M_B)

    summed = total(rows)
    assert (summed.calls, summed.estimated_calls, summed.failed_calls) == (9, 1, 1)
    assert summed.input_tokens == 3000 + 1_000_000 + 100 + 10 + 1000
    assert summed.total_tokens == 4500 + 1_500_000 + 150 + 20 + 2000
    assert summed.cost == pytest.approx(
        COST_MINI_1
        + COST_MINI_2
        + COST_M_A
        + COST_WHISPER
        + COST_TTS
        + COST_GLOBEX_M_A
        + COST_DALLE
        + COST_M_B
    )
    assert (summed.unpriced_calls, summed.unpriced_models) == (1, ("mystery-model",))


def test_summarize_grouped_by_customer_and_by_model(ledger: Path, prices: PriceTable) -> None:
    conn = open_ledger(ledger)
    customers = rows_by_key(summarize(conn, None, None, None, prices, by="customer"))
    assert set(customers) == {("acme", None), ("globex", None), ("unattributed", None)}
    globex = customers["globex", None]
    assert (globex.calls, globex.input_tokens, globex.failed_calls) == (3, 110, 1)
    # Partly priced: the known calls are summed, the unknown one is counted apart.
    assert globex.cost == pytest.approx(COST_GLOBEX_M_A + COST_DALLE)
    assert globex.unpriced_calls == 1
    assert customers["acme", None].calls == 5

    models = rows_by_key(summarize(conn, None, None, None, prices, by="model"))
    assert models[None, "m-b"].calls == 1
    assert models[None, "mystery-model"].cost is None
    with pytest.raises(ValueError):
        summarize(conn, None, None, None, prices, by="day")


def test_summarize_filters(ledger: Path, prices: PriceTable) -> None:
    conn = open_ledger(ledger)
    # [since, until): DAY2 only
    rows = summarize(conn, ts("2026-11-02"), ts("2026-11-03"), None, prices)
    assert [(r.customer, r.model, r.calls) for r in rows] == [
        ("acme", "gpt-4o-mini-2024-07-18", 1),
        ("acme", "m-a", 1),
    ]
    assert rows[0].estimated_calls == 1
    assert rows[0].cost == pytest.approx(COST_MINI_2)
    # until is exclusive
    assert summarize(conn, None, DAY1, None, prices) == []
    assert total(summarize(conn, DAY3, None, None, prices)).calls == 3
    # one customer, incl. the unattributed sentinel
    assert {r.customer for r in summarize(conn, None, None, "globex", prices)} == {"globex"}
    unattributed = summarize(conn, None, None, "unattributed", prices)
    assert [(r.model, r.calls) for r in unattributed] == [("m-b", 1)]
    assert summarize(conn, None, None, "nobody", prices) == []


# --- prices ---------------------------------------------------------------------------------


def test_price_lookup() -> None:
    table = load_prices()
    mini, gpt4o = table.for_model("gpt-4o-mini"), table.for_model("gpt-4o")
    assert mini is not None and gpt4o is not None
    assert (mini.input, mini.cached_input, mini.output, mini.reasoning) == (0.15, 0.075, 0.6, 0.6)
    assert gpt4o.input == 2.5
    # dated snapshots price as their model; the longest known name wins
    assert table.for_model("gpt-4o-mini-2024-07-18") == mini
    assert table.for_model("gpt-4o-2024-08-06") == gpt4o
    assert table.for_model("gpt-4.1-nano-2025-04-14") == table.for_model("gpt-4.1-nano")
    # a snapshot with its own price is an exact match
    old = table.for_model("gpt-4o-2024-05-13")
    assert old is not None and old.input == 5.0 and old.cached_input == 5.0
    # a prefix only counts when followed by "-"
    assert table.for_model("gpt-4omega") is None
    assert table.for_model("ft:gpt-4o-mini-2024-07-18:org::abc") is None
    assert table.for_model("mystery-model") is None
    assert table.for_model("") is None
    assert table.for_model("GPT-4o-Mini") == mini


def test_longest_prefix_wins_whatever_the_order() -> None:
    a = ModelPrice(1, 1, 1, 1)
    b = ModelPrice(2, 2, 2, 2)
    table = PriceTable({"x": a, "x-mini": b})
    assert table.for_model("x-mini-2026") == b
    assert table.for_model("x-2026") == a
    assert table.for_model("x-mini") == b
    assert PriceTable({"x-mini": b, "x": a}).for_model("x-mini-2026") == b


def test_shipped_table_covers_common_models() -> None:
    table = load_prices()
    assert table.currency == "USD" and table.version and table.override_file is None
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "gpt-image-1",
        "dall-e-2",
        "dall-e-3",
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
        "omni-moderation-latest",
    ):
        assert model in table, model
    moderation = table.for_model("omni-moderation-2024-09-26")
    assert moderation is not None
    assert cost(moderation, input_tokens=1000, output_tokens=0) == 0
    assert table.for_model("gpt-3.5-turbo-instruct") != table.for_model("gpt-3.5-turbo")


def test_override_file_replaces_models_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"models": {"gpt-4o": {"input": 3, "output": 12}, "new": {}}}))
    with pytest.raises(ValueError, match="no price"):
        load_prices(path)
    path.write_text(json.dumps({"models": {"GPT-4o": {"input": 3, "output": 12}}}))
    table = load_prices(path)
    assert table.override_file == str(path)
    assert table.for_model("gpt-4o") == ModelPrice(3.0, 3.0, 12.0, 12.0)
    assert table.for_model("gpt-4o-mini") == load_prices().for_model("gpt-4o-mini")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"models": []}, "models"),
        ({"models": {"x": {"input": -1}}}, "non-negative"),
        ({"models": {"x": {"input": "1"}}}, "a number"),
        ({"models": {"x": {"input": True}}}, "a number"),
        ({"models": {"x": {"ouput": 1}}}, "unknown field"),
        ({"models": {"x": {"per_image": {"1024x1024": None}}}}, "a number"),
        ({"models": {}, "unit": "per 1K tokens"}, "unit"),
        ({"modles": {}}, "unknown key"),
    ],
)
def test_malformed_prices_file(tmp_path: Path, document: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        load_prices(path)


def test_cost_arithmetic() -> None:
    price = ModelPrice(
        input=1,
        cached_input=0.5,
        output=2,
        reasoning=4,
        per_image={"1024x1024": 0.04, "1024x1024/hd": 0.08, "default": 0.02},
        per_minute=0.006,
        per_1m_characters=15,
    )
    tokens = {"input_tokens": 1_000_000, "output_tokens": 500_000}
    assert cost(price, **tokens, units={}) == pytest.approx(1.0 + 1.0)
    assert cost(
        price, **tokens, cached_input_tokens=200_000, reasoning_tokens=100_000, units={}
    ) == pytest.approx(0.8 + 0.1 + 0.8 + 0.4)
    # cached never exceeds input, reasoning never exceeds output: never negative
    assert cost(
        price, input_tokens=10, cached_input_tokens=50, output_tokens=0, reasoning_tokens=7
    ) == pytest.approx(10 * 0.5 / 1e6)
    assert cost(price, input_tokens=-5, output_tokens=-1, units={"audio_seconds": -60}) == 0
    # non-token units
    images = {"image_count": 3, "image_size": "1024x1024"}
    assert cost(price, input_tokens=0, units=images) == pytest.approx(0.12)
    assert cost(price, input_tokens=0, units={**images, "image_quality": "HD"}) == pytest.approx(
        0.24
    )
    assert cost(price, input_tokens=0, units={**images, "image_quality": "low"}) == pytest.approx(
        0.12
    )
    assert cost(price, input_tokens=0, units={"image_count": 1}) == pytest.approx(0.02)
    assert cost(price, input_tokens=0, units={"image_count": 1, "image_size": "9x9"}) == (
        pytest.approx(0.02)
    )
    assert cost(price, input_tokens=0, units={"audio_seconds": 30}) == pytest.approx(0.003)
    assert cost(price, input_tokens=0, units={"input_characters": 1000}) == pytest.approx(0.015)
    assert cost(price, input_tokens=0, units={"image_count": "many", "audio_seconds": None}) == 0
    # a model without non-token prices ignores those units
    plain = ModelPrice(1, 1, 1, 1)
    assert cost(plain, input_tokens=0, units={"image_count": 2, "audio_seconds": 60}) == 0


def test_shipped_non_token_prices() -> None:
    table = load_prices()
    dalle3, dalle2 = table.for_model("dall-e-3"), table.for_model("dall-e-2")
    whisper, tts = table.for_model("whisper-1"), table.for_model("tts-1-hd")
    assert dalle3 and dalle2 and whisper and tts
    hd = {"image_count": 1, "image_size": "1792x1024", "image_quality": "hd"}
    assert cost(dalle3, input_tokens=0, units=hd) == pytest.approx(0.12)
    assert cost(dalle3, input_tokens=0, units={"image_count": 2}) == pytest.approx(0.08)
    assert cost(
        dalle2, input_tokens=0, units={"image_count": 1, "image_size": "256x256"}
    ) == pytest.approx(0.016)
    assert cost(whisper, input_tokens=0, units={"audio_seconds": 600}) == pytest.approx(0.06)
    assert cost(tts, input_tokens=0, units={"input_characters": 1_000_000}) == pytest.approx(30)


# --- times ----------------------------------------------------------------------------------


def test_parse_relative_times() -> None:
    now = 2_000_000_000.0
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time("24h", now=now) == now - 86400
    assert parse_time("30m", now=now) == now - 1800
    assert parse_time("90s", now=now) == now - 90
    assert parse_time("2w", now=now) == now - 14 * 86400
    assert parse_time(" 1.5H ", now=now) == now - 5400
    assert parse_time("now", now=now) == now


def test_parse_iso_times() -> None:
    assert parse_time("2026-11-01") == ts("2026-11-01T00:00")
    assert parse_time("2026-11-01T12:00") == ts("2026-11-01T12:00")
    assert parse_time("2026-11-01 12:00:30") == ts("2026-11-01T12:00:30")
    assert parse_time("2026-11-01T12:00Z") == ts("2026-11-01T12:00")
    assert parse_time("2026-11-01T12:00+02:00") == ts("2026-11-01T10:00")
    for bad in ("yesterday", "7", "7y", "-7d", "2026-13-01", ""):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(bad)


# --- the command ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cmdrdata-autotrack")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["report", *argv])


def test_parser_defaults_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse()
    assert args.func is run
    assert (args.since, args.until, args.customer, args.by) == (None, None, None, "customer,model")
    assert (args.json, args.csv, args.ledger, args.prices) == (False, False, None, None)
    assert parse("--since", "2026-11-01").since == ts("2026-11-01T00:00")
    for argv in (["--since", "soon"], ["--json", "--csv"], ["--by", "day"]):
        with pytest.raises(SystemExit):
            parse(*argv)
    assert "not a time" in capsys.readouterr().err


def test_table_output(ledger: Path, prices_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--ledger", str(ledger), "--prices", str(prices_file))) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"Usage in {ledger}, all time:"
    header = lines[1].split()
    assert header[:4] == ["CUSTOMER", "MODEL", "CALLS", "INPUT"]
    assert lines[1].rstrip().endswith("COST (USD)")
    table = lines[1 : lines.index("")]
    # aligned: numbers end where their heading ends; the cost column ends the line
    calls_end = lines[1].index("CALLS") + len("CALLS")
    for line in table[2:]:
        if not line.startswith("-"):
            assert line[calls_end - 1].isdigit() and line[calls_end] == " ", line
    width = len(lines[1])
    assert {len(line) for line in table if line.endswith("*")} == {width}
    assert {len(line) for line in table if line[-1].isdigit()} == {width - 1}
    m_a = next(line for line in lines if " m-a " in line)
    assert m_a.split() == [
        "acme",
        "m-a",
        "1",
        "1,000,000",
        "200,000",
        "500,000",
        "100,000",
        "1,500,000",
        "0",
        "0",
        "2.1000",
    ]
    assert next(line for line in lines if "mystery-model" in line).split()[-1] == "-"
    assert next(line for line in lines if "m-a-2026" in line).split()[-1] == "0.000200"
    summed = next(line for line in lines if line.startswith("TOTAL")).split()
    grand = round(2.1 + 0.00132 + 0.009 + 0.03 + 0.0002 + 0.16 + 0.03, 4)
    assert summed == [
        "TOTAL",
        "9",
        "1,004,110",
        "200,400",
        "502,560",
        "100,000",
        "1,506,670",
        "1",
        "1",
        f"{grand:,.4f}*",
    ]
    assert f"with {prices_file} merged over them." in out
    assert "* No price for 1 call(s) to mystery-model:" in out
    assert "ESTIMATED:" in out


def test_table_footer_with_shipped_prices(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--ledger", str(ledger), "--by", "customer", "--since", "2026-11-02")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Usage in {ledger}, 2026-11-02 00:00 UTC to now:"
    assert out.splitlines()[1].split()[:2] == ["CUSTOMER", "CALLS"]
    assert "shipped table of OpenAI list prices" in out
    assert "override with --prices FILE or $CMDRDATA_PRICES_FILE." in out
    # m-a is not in the shipped table: acme is partly priced
    assert "* No price for 3 call(s) to m-a, m-a-2026-01-01, mystery-model:" in out


def test_prices_file_from_environment(
    ledger: Path,
    prices_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CMDRDATA_PRICES_FILE", str(prices_file))
    assert run(parse("--ledger", str(ledger), "--json")) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["prices_file"] == str(prices_file)
    monkeypatch.setenv("CMDRDATA_PRICES_FILE", str(prices_file.parent / "missing.json"))
    assert run(parse("--ledger", str(ledger))) == 2
    assert "CMDRDATA_PRICES_FILE" in capsys.readouterr().err


def test_json_output(ledger: Path, prices_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--ledger", str(ledger), "--prices", str(prices_file), "--json"]
    assert run(parse(*argv, "--until", "2026-11-03", "--customer", "acme")) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["currency"] == "USD"
    assert document["since"] is None
    assert document["until"] == "2026-11-03T00:00:00+00:00"
    assert document["by"] == "customer,model"
    assert document["ledger"] == str(ledger)
    assert document["rows"][0] == {
        "customer": "acme",
        "model": "gpt-4o-mini-2024-07-18",
        "calls": 2,
        "input_tokens": 3000,
        "cached_input_tokens": 400,
        "output_tokens": 1500,
        "reasoning_tokens": 0,
        "total_tokens": 4500,
        "estimated_calls": 1,
        "failed_calls": 0,
        "estimated_cost": 0.00132,
        "unpriced_calls": 0,
        "unpriced_models": [],
    }
    assert len(document["rows"]) == 4
    assert document["total"]["calls"] == 5
    assert "customer" not in document["total"]
    assert document["total"]["estimated_cost"] == pytest.approx(2.1 + 0.00132 + 0.009 + 0.03)

    assert run(parse(*argv, "--by", "model", "--customer", "globex")) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["model"] for r in rows] == ["dall-e-3", "m-a-2026-01-01", "mystery-model"]
    assert "customer" not in rows[0]
    assert rows[2]["estimated_cost"] is None and rows[2]["unpriced_models"] == ["mystery-model"]


def test_csv_output(ledger: Path, prices_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--ledger", str(ledger), "--prices", str(prices_file), "--csv")) == 0
    out = capsys.readouterr().out
    records = list(csv.DictReader(io.StringIO(out)))
    assert len(records) == 8
    assert list(records[0]) == [
        "customer",
        "model",
        "calls",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "total_tokens",
        "estimated_calls",
        "failed_calls",
        "estimated_cost",
        "currency",
        "unpriced_calls",
    ]
    by = {(r["customer"], r["model"]): r for r in records}
    assert by["acme", "m-a"]["input_tokens"] == "1000000"
    assert by["acme", "m-a"]["estimated_cost"] == "2.1"
    assert by["acme", "gpt-4o-mini-2024-07-18"]["estimated_cost"] == "0.00132"
    assert by["globex", "mystery-model"]["estimated_cost"] == ""
    assert by["globex", "mystery-model"]["unpriced_calls"] == "1"
    assert by["unattributed", "m-b"]["calls"] == "1"

    assert run(parse("--ledger", str(ledger), "--csv", "--by", "customer")) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["customer"] for r in records] == ["acme", "globex", "unattributed"]
    assert "model" not in records[0]


def test_no_matching_usage(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--ledger", str(ledger), "--customer", "nobody")) == 0
    assert capsys.readouterr().out == (
        f"No usage for customer 'nobody', all time (ledger: {ledger}).\n"
    )
    assert run(parse("--ledger", str(ledger), "--since", "2026-12-01", "--json")) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rows"] == [] and document["total"]["calls"] == 0
    assert document["total"]["estimated_cost"] is None


def test_since_after_until(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--ledger", str(ledger), "--since", "2026-11-02", "--until", "2026-11-01")
    assert run(args) == 2
    assert "--since must be before --until" in capsys.readouterr().err


def test_missing_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere" / "ledger.sqlite3"
    assert run(parse("--ledger", str(path))) == 0
    captured = capsys.readouterr()
    assert captured.out == f"No usage has been recorded yet (ledger: {path}).\n"
    assert not path.exists() and not path.parent.exists(), "the report never creates a ledger"
    # JSON and CSV stay parseable; the message goes to stderr
    assert run(parse("--ledger", str(path), "--json")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == []
    assert "No usage has been recorded yet" in captured.err
    assert run(parse("--ledger", str(path), "--csv")) == 0
    assert capsys.readouterr().out.startswith("customer,model,calls,")


def test_empty_ledger_and_ledger_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.sqlite3"
    open_ledger(path).close()
    monkeypatch.setenv("CMDRDATA_LEDGER_PATH", str(path))
    monkeypatch.setenv("CMDRDATA_API_KEY", "tk-test-key-123")
    # a spool of its own, with no metered record yet (the suite's may have one by now)
    monkeypatch.setenv("CMDRDATA_SPOOL_DIR", str(tmp_path / "spool"))
    assert run(parse()) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"No usage has been recorded yet (ledger: {path}).")
    assert "CMDRDATA_API_KEY is set" in out


def test_not_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    assert run(parse("--ledger", str(path))) == 2
    assert "cannot read the ledger" in capsys.readouterr().err


def test_format_cost() -> None:
    assert format_cost(None) == "-"
    assert format_cost(0) == "0.0000"
    assert format_cost(0.00042) == "0.000420"
    assert format_cost(0.0123) == "0.0123"
    assert format_cost(1234.5) == "1,234.5000"
