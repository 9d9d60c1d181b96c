"""``cmdrdata-autotrack report --html``: the same numbers as the text and JSON reports, a page
that needs no network, and one that a real browser (headless Chromium) renders cleanly."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
import zlib
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.cli import main as cli
from cmdrdata_autotrack.cli.html_report import SCRIPT_HASH
from cmdrdata_autotrack.cli.usage_query import format_cost
from cmdrdata_autotrack.export.ledger import open_ledger, record
from cmdrdata_autotrack.pricing import load_prices
from cmdrdata_autotrack.reconcile.buckets import Window
from cmdrdata_autotrack.reconcile.compare import compare
from cmdrdata_autotrack.reconcile.metered import CallReader, aggregate
from cmdrdata_autotrack.reconcile.model import CostRecord, Units, UsageRecord
from cmdrdata_autotrack.reconcile.render import Context, render_json

from conftest import system_tool

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

DAY = 86400
START = int(datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp())
HOSTILE = "<script>alert(1)</script>"
CUSTOMERS = ("acme", "globex", "initech", HOSTILE)
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "my-finetune")  # the last: no price


def usage_event(n: int, day: int, customer: str, model: str, **extra: Any) -> dict[str, Any]:
    when = START + day * DAY + 3600 + n
    inp, out = 100 + 37 * n, 20 + 11 * n
    return {
        "event_id": f"ev-{n}",
        "timestamp": when,
        "timestamp_ms": when * 1000,
        "customer_id": customer,
        "model": model,
        "operation": "chat",
        "endpoint": "chat_completions",
        "input_tokens": inp,
        "cached_input_tokens": (n % 3) * 10,
        "output_tokens": out,
        "reasoning_tokens": 0,
        "total_tokens": inp + out,
        "usage_estimated": n % 7 == 0,
        "request": {"success": n % 5 != 0},
        "units": {},
        "metadata": {},
        **extra,
    }


EVENTS = [
    usage_event(n, n % 6, CUSTOMERS[n % len(CUSTOMERS)], MODELS[n % len(MODELS)])
    for n in range(1, 40)
]


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CMDRDATA_PRICES_FILE", "CMDRDATA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "ledger.sqlite3"
    conn = open_ledger(path)
    record(conn, [(e, json.dumps(e)) for e in EVENTS])
    conn.close()
    monkeypatch.setenv("CMDRDATA_LEDGER_PATH", str(path))
    return path


class Page(HTMLParser):
    """The tables (by id, rows of cell texts), chart bars, cards and body attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.bars: dict[str, list[dict[str, str]]] = {}
        self.cards: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.urls: list[str] = []
        self._table: str | None = None
        self._chart: str | None = None
        self._cell: list[str] | None = None
        self._card: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href")]
        if tag == "body":
            self.body = a
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "svg" and "chart" in a.get("class", ""):
            self._chart = a["id"]
            self.bars[self._chart] = []
        elif tag == "rect" and self._chart is not None:
            self.bars[self._chart].append(a)
        elif tag == "div" and "data-card" in a:
            self._card = a["data-card"]
            self.cards[self._card] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "svg":
            self._chart = None
        elif tag == "div":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._card is not None:
            self.cards[self._card] += data


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def text_table(text: str) -> list[list[str]]:
    """The body and TOTAL lines of the text report's table, as cells."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("---")]
    body = [*lines[rules[0] + 1 : rules[1]], lines[rules[1] + 1]]
    return [[c.rstrip("* ") for c in re.split(r"\s{2,}", line.strip())] for line in body]


def test_html_shows_the_numbers_of_the_text_and_json_reports(
    ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert "Wrote the report" in run_cli(capsys, "report", "--html", str(out))
    page = Page(out.read_text(encoding="utf-8"))
    text = text_table(run_cli(capsys, "report"))
    doc = json.loads(run_cli(capsys, "report", "--json"))

    usage = page.tables["usage"]
    assert usage[0][:3] == ["Customer", "Model", "Calls"]
    html_rows = [[c.rstrip("*") for c in row] for row in usage[1:]]
    html_rows[-1] = [c for c in html_rows[-1] if c]  # TOTAL has an empty model cell
    assert html_rows == text  # cell for cell, the TOTAL line too
    assert [(r[0], r[1], int(r[2].replace(",", ""))) for r in html_rows[:-1]] == [
        (r["customer"], r["model"], r["calls"]) for r in doc["rows"]
    ]
    assert [r[-1] for r in html_rows[:-1]] == [
        format_cost(r["estimated_cost"]) for r in doc["rows"]
    ]

    t = doc["total"]
    assert page.cards["Calls"] == f"{t['calls']:,}"
    assert page.cards["Total tokens"] == f"{t['total_tokens']:,}"
    assert page.cards["Estimated cost (USD)"] == format_cost(t["estimated_cost"])
    assert page.cards["Failed calls"].startswith(f"{t['failed_calls']:,} (")
    cached = 100 * t["cached_input_tokens"] / t["input_tokens"]
    assert page.cards["Cached share of input"] == f"{cached:.1f}%"
    assert (
        page.cards["Estimated share of calls"] == f"{100 * t['estimated_calls'] / t['calls']:.1f}%"
    )

    # The charts add up to the totals, and each day's bars to that day's usage.
    cost_bars, token_bars = page.bars["cost-by-customer"], page.bars["tokens-by-customer"]
    assert sum(float(b["data-value"]) for b in cost_bars) == pytest.approx(t["estimated_cost"])
    assert sum(float(b["data-value"]) for b in token_bars) == t["total_tokens"]
    day2 = [e for e in EVENTS if START + 2 * DAY <= e["timestamp"] < START + 3 * DAY]
    day2_bars = [b for b in token_bars if b["data-day"] == str(START + 2 * DAY)]
    assert sum(float(b["data-value"]) for b in day2_bars) == sum(e["total_tokens"] for e in day2)

    by_customer = json.loads(run_cli(capsys, "report", "--json", "--by", "customer"))["rows"]
    top = {r[0]: r[6] for r in page.tables["top-customers"][1:]}
    assert top == {r["customer"]: format_cost(r["estimated_cost"]) for r in by_customer}
    by_model = json.loads(run_cli(capsys, "report", "--json", "--by", "model"))["rows"]
    models = {r[0]: int(r[1].replace(",", "")) for r in page.tables["top-models"][1:]}
    assert models == {r["model"]: r["calls"] for r in by_model}


def test_html_needs_no_network(
    ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    run_cli(capsys, "report", "--html", str(out), "--customer", "acme")
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert page.urls == []  # no src, no href
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"] * 2
    assert "@import" not in html and "url(" not in html
    assert f"script-src 'sha256-{SCRIPT_HASH}'" in html and "default-src 'none'" in html
    assert "customer acme" in html and "globex" not in html


def test_html_without_usage_and_bad_reconciliation_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMDRDATA_LEDGER_PATH", str(tmp_path / "none.sqlite3"))
    out = tmp_path / "empty.html"
    run_cli(capsys, "report", "--html", str(out))
    assert 'id="empty"' in out.read_text(encoding="utf-8")
    assert cli.main(["report", "--reconcile", str(out)]) == 2
    assert "--reconcile goes with --html" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"rows": 1}')
    assert cli.main(["report", "--html", str(out), "--reconcile", str(tmp_path / "bad.json")]) == 2
    assert "not the JSON output of cmdrdata-autotrack reconcile" in capsys.readouterr().err


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM = system_tool("chromium", "chromium-browser")


def reconciliation(path: Path) -> Path:
    """A reconcile --json document for the ledger's days, with one day billed more."""
    prices = load_prices()
    reader = CallReader(prices)
    window = Window.around(START, START + 6 * DAY, "1d", now=time.time())
    calls = aggregate([c for c in map(reader.read, EVENTS) if c is not None], window.width)
    usage: list[UsageRecord] = []
    for call in calls:
        units = Units(**call.units.to_dict())
        if call.timestamp == START + 3 * DAY:
            units.requests += 2
            units.input_tokens += 5000
        usage.append(
            UsageRecord(
                "completions", int(call.timestamp), int(call.timestamp) + DAY, call.model, {}, units
            )
        )
    costs = [
        CostRecord(
            START + d * DAY,
            START + (d + 1) * DAY,
            0.002 * (d + 1),
            "usd",
            "gpt-4o-mini, input",
            None,
            None,
        )
        for d in range(6)
    ]
    result = compare(calls, usage, costs, window=window, prices=prices)
    ctx = Context(
        "http://127.0.0.1:1/v1",
        "the local ledger",
        "the whole organization",
        (),
        (),
        prices.version,
        "USD",
        None,
        [],
        len(EVENTS),
    )
    path.write_text(render_json(result, ctx))
    return path


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",  # tests may run as root in a container
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--window-size=1100,2600",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the image data has (a blank page has 1)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_headless_chromium_renders_the_page(
    ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    recon = reconciliation(tmp_path / "reconcile.json")
    run_cli(capsys, "report", "--html", str(out), "--reconcile", str(recon))
    url = out.resolve().as_uri()

    shot = tmp_path / "report.png"
    rendered = chromium(
        "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", url, profile=tmp_path / "p1"
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    console = [line for line in rendered.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no script error, no blocked load, nothing logged at all
    width, height, colours = png_size_and_colours(shot)
    assert (width, height) == (1100, 2600) and colours > 16

    dumped = chromium("--dump-dom", url, profile=tmp_path / "p2")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Page(dumped.stdout)
    assert dom.body.get("data-ready") == "1"  # the page's script ran to the end
    assert dom.body.get("data-charts") == "3"
    assert set(dom.bars) == {"cost-by-customer", "tokens-by-customer", "metered-vs-billed"}
    assert all(
        len([b for b in bars if "bar" in b.get("class", "")]) >= 6 for bars in dom.bars.values()
    )
    series = {b["data-series"] for b in dom.bars["metered-vs-billed"]}
    assert series == {"metered", "billed by OpenAI"}
    day = [
        r
        for r in dom.tables["reconciliation"][1:]
        if r[0].startswith(time.strftime("%Y-%m-%d", time.gmtime(START + 3 * DAY)))
    ]
    assert len(day) == 1 and day[0][1] != day[0][2]  # requests metered != billed that day
    # The hostile customer id is text on the page, never markup.
    assert HOSTILE in [r[0] for r in dom.tables["top-customers"][1:]]
    assert dumped.stdout.count("<script>") == 1
