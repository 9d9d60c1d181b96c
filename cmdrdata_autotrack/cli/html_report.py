"""``report --html``: one self-contained, printable page of the usage report.

No network, no CDN: the charts are inline SVG drawn here, the styles inline,
and a Content-Security-Policy forbids loading anything (the one small inline
script, allowed by its hash, only marks the page as rendered). Every string
from the ledger (customer ids, model names) is HTML-escaped.

The numbers come from the same :class:`~.usage_query.UsageReport` as the text,
JSON and CSV outputs, and are written with the same formatting.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from .._version import __version__
from .usage_query import (
    COUNT_COLUMNS,
    DAY,
    ReportRow,
    UsageReport,
    format_cost,
    regroup,
    total,
)

MAX_SERIES = 8  # customers drawn in the stacked charts; the rest are "other"
TOP = 10  # rows of the top-customers and top-models tables
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
)
OTHER_COLOR = "#bab0ac"
METERED_COLOR, BILLED_COLOR = "#4e79a7", "#f28e2b"

# Marks the page as rendered, with the number of charts drawn (a browser test reads it).
SCRIPT = (
    'document.addEventListener("DOMContentLoaded",function(){'
    'var b=document.body;b.setAttribute("data-charts",'
    'String(document.querySelectorAll("svg.chart").length));'
    'b.setAttribute("data-ready","1");});'
)
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'"

STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --rule: #d0d7de; --band: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1040px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px;
     border-bottom: 1px solid var(--rule); }
p.meta, p.note, figcaption { color: var(--muted); margin: 4px 0; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0; }
.card { border: 1px solid var(--rule); border-radius: 6px; padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--rule); text-align: right; }
th { background: var(--band); font-weight: 600; }
th.text, td.text { text-align: left; overflow-wrap: anywhere; }
tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
tr.incomplete td { color: var(--muted); font-style: italic; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg.chart .grid { stroke: var(--rule); stroke-width: 1; }
ul.legend { list-style: none; padding: 0; margin: 6px 0;
            display: flex; flex-wrap: wrap; gap: 4px 16px; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
ul.legend .swatch { width: 12px; height: 12px; border-radius: 2px; display: inline-block;
                    print-color-adjust: exact; -webkit-print-color-adjust: exact; }
figure { margin: 8px 0 0; }
@page { size: A4; margin: 12mm; }
@media print {
  body { padding: 0; max-width: none; font-size: 11px; }
  section, figure, table { break-inside: avoid; }
  .cards { grid-template-columns: repeat(4, 1fr); }
  svg.chart rect { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""


def load_reconciliation(path: Path) -> dict[str, Any]:
    """The JSON ``cmdrdata-autotrack reconcile --json`` wrote (``ValueError`` if it is not)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("rows"), list)
        and isinstance(document.get("coverage"), dict)
    ):
        raise ValueError("not the JSON output of cmdrdata-autotrack reconcile --json")
    return document


# --- small pieces ---------------------------------------------------------------------------


def _day_label(day: int, *, year: bool = False) -> str:
    moment = datetime.fromtimestamp(day, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d" if year else "%b %d")


def _integer(value: float) -> str:
    return f"{value:,.0f}"


def _share(part: float, whole: float) -> str:
    return "-" if whole <= 0 else f"{100.0 * part / whole:.1f}%"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (an axis' top)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** (len(f"{int(value):d}") - 1) if value >= 1 else 1.0
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    color: str


def _legend(series: Sequence[Series]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{s.color}"></span>{escape(s.name)}</li>'
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def bar_chart(
    chart_id: str,
    label: str,
    days: Sequence[int],
    series: Sequence[Series],
    fmt: Callable[[float], str],
    *,
    stacked: bool = True,
    faded: frozenset[int] = frozenset(),
) -> str:
    """An inline SVG bar chart: one bar per day, ``series`` stacked (or side by side).

    Days in ``faded`` (incomplete ones) are drawn lighter."""
    width, height = 960, 260
    left, right, top, bottom = 72, 12, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(days), 1)
    if stacked:
        peak = max((sum(s.values[i] for s in series) for i in range(len(days))), default=0.0)
    else:
        peak = max((v for s in series for v in s.values), default=0.0)
    ceiling = _nice_ceiling(peak)
    slot = plot_w / n
    parts = [
        f'<svg class="chart" id="{chart_id}" data-chart="{chart_id}" role="img" '
        f'aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(ceiling * k / 4))}</text>"
        )
    every = max(1, -(-len(days) // 12))  # at most 12 day labels
    for i, day in enumerate(days):
        x0 = left + i * slot
        if i % every == 0:
            parts.append(
                f'<text x="{x0 + slot / 2:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle">{escape(_day_label(day))}</text>'
            )
        bar_w = max(slot * 0.78, 1.0)
        if stacked:
            y = top + plot_h
            for s in series:
                value = s.values[i]
                if value <= 0:
                    continue
                h = plot_h * value / ceiling
                y -= h
                x = x0 + (slot - bar_w) / 2
                parts.append(_bar(x, y, bar_w, h, s, day, value, fmt, day in faded))
        else:
            each = bar_w / max(len(series), 1)
            for j, s in enumerate(series):
                value = s.values[i]
                if value <= 0:
                    continue
                h = plot_h * value / ceiling
                x = x0 + (slot - bar_w) / 2 + j * each
                parts.append(_bar(x, top + plot_h - h, each, h, s, day, value, fmt, day in faded))
    parts.append("</svg>")
    return "".join(parts)


def _bar(
    x: float,
    y: float,
    w: float,
    h: float,
    s: Series,
    day: int,
    value: float,
    fmt: Callable[[float], str],
    faded: bool = False,
) -> str:
    tip = f"{_day_label(day, year=True)}{' (incomplete)' if faded else ''}, {s.name}: {fmt(value)}"
    opacity = ' fill-opacity="0.4"' if faded else ""
    return (
        f'<rect class="bar" data-series="{escape(s.name)}" data-day="{day}" data-value="{value!r}" '
        f'x="{x:.2f}" y="{y:.2f}"{opacity} '
        f'width="{w:.2f}" height="{max(h, 0.5):.2f}" fill="{s.color}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _table(
    table_id: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    text_columns: int = 1,
    classes: Sequence[str] = (),
    footer: Sequence[str] | None = None,
) -> str:
    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(
            f'<{tag} class="{"text" if i < text_columns else "num"}">{escape(v)}</{tag}>'
            for i, v in enumerate(values)
        )

    body = "".join(
        f'<tr class="{escape(classes[i]) if i < len(classes) else ""}">{cells(r, "td")}</tr>'
        for i, r in enumerate(rows)
    )
    foot = f'<tr class="total">{cells(footer, "td")}</tr>' if footer is not None else ""
    return (
        f'<table id="{table_id}"><thead><tr>{cells(header, "th")}</tr></thead>'
        f"<tbody>{body}{foot}</tbody></table>"
    )


# --- the sections ---------------------------------------------------------------------------


def _days(report: UsageReport) -> list[int]:
    seen = [r.day for r in report.daily if r.day is not None]
    if not seen:
        return []
    first, last = min(seen), max(seen)
    if report.since is not None:
        first = min(first, int(report.since) // DAY * DAY)
    if report.until is not None:
        last = max(last, (int(report.until) - 1) // DAY * DAY)
    return list(range(first, last + DAY, DAY))


def _customer_series(
    report: UsageReport, days: Sequence[int], value: Callable[[ReportRow], float]
) -> list[Series]:
    per_customer = regroup(report.rows, "customer")
    ranked = sorted(
        per_customer, key=lambda r: (-(r.cost or 0.0), -r.total_tokens, r.customer or "")
    )
    named = [r.customer or "" for r in ranked[:MAX_SERIES]]
    index = {d: i for i, d in enumerate(days)}
    values = {name: [0.0] * len(days) for name in named}
    other = [0.0] * len(days)
    for row in report.daily:
        if row.day is None or row.day not in index:
            continue
        target = values.get(row.customer or "", other)
        target[index[row.day]] += value(row)
    series = [Series(name, values[name], PALETTE[i % len(PALETTE)]) for i, name in enumerate(named)]
    if any(other):
        series.append(Series(f"other ({len(ranked) - len(named)} customers)", other, OTHER_COLOR))
    return series


def _cards(report: UsageReport) -> str:
    t = report.total
    customers = len({r.customer for r in report.rows})
    models = len({r.model for r in report.rows})
    cards = [
        ("Calls", f"{t.calls:,}"),
        ("Total tokens", f"{t.total_tokens:,}"),
        (f"Estimated cost ({report.prices.currency})", format_cost(t.cost)),
        ("Customers / models", f"{customers:,} / {models:,}"),
        ("Cached share of input", _share(t.cached_input_tokens, t.input_tokens)),
        ("Estimated share of calls", _share(t.estimated_calls, t.calls)),
        ("Failed calls", f"{t.failed_calls:,} ({_share(t.failed_calls, t.calls)})"),
        ("Unpriced calls", f"{t.unpriced_calls:,}"),
    ]
    return (
        '<div class="cards" id="summary">'
        + "".join(
            f'<div class="card"><div class="label">{escape(k)}</div>'
            f'<div class="value" data-card="{escape(k)}">{escape(v)}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )


def _usage_charts(report: UsageReport) -> str:
    days = _days(report)
    if not days:
        return ""
    currency = report.prices.currency
    cost_series = _customer_series(report, days, lambda r: r.cost or 0.0)
    token_series = _customer_series(report, days, lambda r: float(r.total_tokens))
    cost_label = f"Estimated cost per day ({currency})"
    return (
        "<section><h2>Usage over time, per customer</h2>"
        f"<figure>{bar_chart('cost-by-customer', cost_label, days, cost_series, format_cost)}"
        f"<figcaption>Estimated cost per UTC day ({escape(currency)}), stacked by customer."
        f"</figcaption>{_legend(cost_series)}</figure>"
        f"<figure>{bar_chart('tokens-by-customer', 'Tokens per day', days, token_series, _integer)}"
        "<figcaption>Total tokens per UTC day, stacked by customer.</figcaption>"
        f"{_legend(token_series)}</figure></section>"
    )


def _top_tables(report: UsageReport) -> str:
    t = report.total
    customers = sorted(
        regroup(report.rows, "customer"),
        key=lambda r: (-(r.cost or 0.0), -r.total_tokens, r.customer or ""),
    )
    models = sorted(
        regroup(report.rows, "model"),
        key=lambda r: (-(r.cost or 0.0), -r.total_tokens, r.model or ""),
    )
    currency = report.prices.currency
    customer_rows = [
        [
            r.customer or "",
            f"{r.calls:,}",
            f"{r.total_tokens:,}",
            _share(r.cached_input_tokens, r.input_tokens),
            f"{r.estimated_calls:,}",
            f"{r.failed_calls:,}",
            format_cost(r.cost),
            _share(r.cost or 0.0, t.cost or 0.0),
        ]
        for r in customers[:TOP]
    ]
    model_rows = [
        [
            r.model or "",
            f"{r.calls:,}",
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            _share(r.cached_input_tokens, r.input_tokens),
            format_cost(r.cost),
        ]
        for r in models[:TOP]
    ]
    more_c = f" (top {TOP} of {len(customers)})" if len(customers) > TOP else ""
    more_m = f" (top {TOP} of {len(models)})" if len(models) > TOP else ""
    return (
        f"<section><h2>Top customers{more_c}</h2>"
        + _table(
            "top-customers",
            [
                "Customer",
                "Calls",
                "Tokens",
                "Cached",
                "Estimated",
                "Failed",
                f"Cost ({currency})",
                "Share",
            ],
            customer_rows,
        )
        + f"</section><section><h2>Top models{more_m}</h2>"
        + _table(
            "top-models",
            ["Model", "Calls", "Input", "Output", "Cached", f"Cost ({currency})"],
            model_rows,
        )
        + "</section>"
    )


def _usage_table(report: UsageReport) -> str:
    """The text report's table: the same rows, columns and formatting."""

    def cells(row: ReportRow, labels: list[str]) -> list[str]:
        money = format_cost(row.cost) + ("*" if row.unpriced_calls and row.cost is not None else "")
        return [*labels, *(f"{n:,}" for n in row.counts()), money]

    header = [
        "Customer",
        "Model",
        *(heading for _, heading in COUNT_COLUMNS),
        f"Cost ({report.prices.currency})",
    ]
    body = [cells(r, [r.customer or "", r.model or ""]) for r in report.rows]
    footer = cells(total(report.rows), ["TOTAL", ""])
    return (
        "<section><h2>Usage per customer and model</h2>"
        + _table("usage", header, body, text_columns=2, footer=footer)
        + "</section>"
    )


def _iso_day(stamp: object, *, end: bool = False) -> int | None:
    """The UTC day of an ISO time (``end``: of the moment just before it, for an end bound)."""
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = int(moment.timestamp()) - (1 if end else 0)
    return seconds // DAY * DAY


def _sums_per_day(document: Mapping[str, Any]) -> tuple[dict[int, dict[str, float]], set[int]]:
    """The rows of ``reconcile --json`` summed per UTC day (``metered_requests``,
    ``billed_cost``, ...), and the days that hold an incomplete bucket."""
    per_day: dict[int, dict[str, float]] = {}
    incomplete: set[int] = set()

    def days_of(key: str) -> Iterator[tuple[Mapping[str, Any], dict[str, float]]]:
        """The well-formed rows of ``document[key]``, each with the sums of its day."""
        for row in document.get(key, []):
            if isinstance(row, dict) and isinstance(row.get("start_time"), int):
                day = row["start_time"] // DAY * DAY
                if row.get("complete") is False:
                    incomplete.add(day)
                yield row, per_day.setdefault(day, {})

    def add(into: dict[str, float], name: str, value: object) -> None:
        if isinstance(value, int | float):
            into[name] = into.get(name, 0.0) + value

    for row, into in days_of("rows"):
        for side in ("metered", "billed"):
            found = row.get(side)
            units: Mapping[str, Any] = found if isinstance(found, dict) else {}
            for unit in ("requests", "input_tokens", "output_tokens"):
                add(into, f"{side}_{unit}", units.get(unit, 0))
    for row, into in days_of("cost_rows"):
        for side in ("metered", "billed"):
            add(into, f"{side}_cost", row.get(side))
    for stamp in document.get("incomplete_buckets", []):
        day = _iso_day(stamp)
        if day is not None:
            incomplete.add(day)
    return per_day, incomplete


def _reconciliation(document: Mapping[str, Any]) -> str:
    """Metered vs billed per UTC day, from ``reconcile --json``."""
    per_day, incomplete = _sums_per_day(document)
    costs = document.get("costs_compared") is True
    first, last = _iso_day(document.get("since")), _iso_day(document.get("until"), end=True)
    if first is None or last is None or not first <= last:
        if not per_day:
            return ""
        first, last = min(per_day), max(per_day)
    days = list(range(first, last + DAY, DAY))
    unit, label, fmt = (
        ("cost", "cost (USD)", format_cost) if costs else ("requests", "requests", _integer)
    )
    series = [
        Series(
            "metered", [per_day.get(d, {}).get(f"metered_{unit}", 0.0) for d in days], METERED_COLOR
        ),
        Series(
            "billed by OpenAI",
            [per_day.get(d, {}).get(f"billed_{unit}", 0.0) for d in days],
            BILLED_COLOR,
        ),
    ]
    chart = bar_chart(
        "metered-vs-billed",
        f"Metered vs billed {label} per day",
        days,
        series,
        fmt,
        stacked=False,
        faded=frozenset(incomplete),
    )

    def pair(values: Mapping[str, float], name: str, show: Callable[[float], str]) -> list[str]:
        return [show(values.get(f"metered_{name}", 0.0)), show(values.get(f"billed_{name}", 0.0))]

    rows, classes = [], []
    for d in days:
        values = per_day.get(d, {})
        line = [_day_label(d, year=True) + (" (incomplete)" if d in incomplete else "")]
        line += pair(values, "requests", _integer)
        line.append(_share(values.get("metered_requests", 0.0), values.get("billed_requests", 0.0)))
        line += pair(values, "input_tokens", _integer) + pair(values, "output_tokens", _integer)
        if costs:
            line += pair(values, "cost", format_cost)
        rows.append(line)
        classes.append("incomplete" if d in incomplete else "")
    header = ["Day (UTC)", "Requests metered", "billed", "Coverage", "Input metered", "billed"]
    header += ["Output metered", "billed"] + (["Cost metered", "billed"] if costs else [])
    coverage = document.get("coverage", {})
    summary = []
    for name in ("requests", "input_tokens", "output_tokens", "cost"):
        item = coverage.get(name) if isinstance(coverage, dict) else None
        if isinstance(item, dict) and item.get("coverage_pct") is not None:
            summary.append(f"{name.replace('_', ' ')} {float(item['coverage_pct']):.2f}%")
    unmetered = document.get("unmetered_cost", {})
    value = unmetered.get("value") if isinstance(unmetered, dict) else None
    text = "Coverage over complete buckets: " + (", ".join(summary) or "nothing billed") + "."
    if isinstance(value, int | float):
        text += f" Unmetered cost (estimate): {format_cost(float(value))} USD."
    scope = document.get("scope", {})
    where = scope.get("description") if isinstance(scope, dict) else None
    return (
        "<section><h2>Metered vs billed by OpenAI</h2>"
        f'<p class="meta">{escape(text)} Compared with {escape(str(where or "OpenAI"))}, '
        f"{escape(str(document.get('since', '')))} to {escape(str(document.get('until', '')))}, "
        f"{escape(str(document.get('bucket', '')))} buckets.</p>"
        f"<figure>{chart}<figcaption>Metered vs billed {escape(label)} per UTC day."
        f"</figcaption>{_legend(series)}</figure>"
        + _table("reconciliation", header, rows, classes=classes)
        + "</section>"
    )


def render(
    report: UsageReport,
    reconciled: Mapping[str, Any] | None = None,
    *,
    title_period: str,
    generated: float | None = None,
) -> str:
    """The whole page."""
    now = (
        datetime.now(timezone.utc)
        if generated is None
        else datetime.fromtimestamp(generated, tz=timezone.utc)
    )
    who = f", customer {report.customer}" if report.customer is not None else ""
    prices = report.prices
    source = f"OpenAI list prices as of {prices.version}"
    if prices.override_file:
        source += f", with {prices.override_file} merged over them"
    t = report.total
    notes = [f"Costs are estimates from {source}: not your bill."]
    if t.unpriced_calls:
        notes.append(
            f"No price for {t.unpriced_calls:,} call(s) to {', '.join(t.unpriced_models)}: "
            "not in the cost (a cost marked * leaves some calls out)."
        )
    notes.append(
        "Estimated: calls whose usage the API did not report (counted locally). "
        "Failed: calls that errored. Cached: input tokens served from cache, part of input."
    )
    body = [
        "<h1>Usage report</h1>",
        f'<p class="meta">{escape(title_period)}{escape(who)}. '
        f"Ledger {escape(str(report.ledger))}. "
        f"Generated {escape(now.strftime('%Y-%m-%d %H:%M UTC'))} by cmdrdata-autotrack "
        f"{escape(__version__)}.</p>",
    ]
    if not report.rows:
        body.append('<p class="note" id="empty">No usage in this period.</p>')
    else:
        body += [_cards(report), _usage_charts(report), _top_tables(report)]
    if reconciled is not None:
        body.append(_reconciliation(reconciled))
    if report.rows:
        body.append(_usage_table(report))
    body.append("".join(f'<p class="note">{escape(n)}</p>' for n in notes))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Usage report, {escape(title_period)}</title>"
        f"<style>{STYLE}</style></head>"
        f'<body data-ready="0">{"".join(body)}<script>{SCRIPT}</script></body></html>\n'
    )
