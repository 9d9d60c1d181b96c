"""``cmdrdata-autotrack report``: usage and estimated cost per customer, from what was metered.

Reads the SQLite ledger the agent writes when no cmdrdata API key is set, or
with a key the metered record of what was delivered (``metered.sqlite3`` in the
spool folder), or the fleet ledger (``CMDRDATA_LEDGER_URL``); it never creates
or changes them. Sums calls and tokens per customer and model, and
prices them with :mod:`cmdrdata_autotrack.pricing` (OpenAI list prices: an
estimate, not a bill). Output: an aligned table (default), JSON, CSV or an HTML
page; every output reads the same rows (:mod:`.usage_query`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from ..config import Settings
from ..export import fleet_ledger, metered_store
from ..paths import ledger_path, spool_dir
from ..pricing import PriceTable, load_prices
from . import html_report
from .fleet_query import load_fleet_report
from .usage_query import (
    COUNT_COLUMNS,
    GROUPINGS,
    LedgerProblem,
    ReportRow,
    UsageReport,
    format_cost,
    load_report,
    summarize,
    total,
)

__all__ = [
    "GROUPINGS",
    "ReportRow",
    "add_parser",
    "format_cost",
    "parse_time",
    "run",
    "summarize",
    "total",
]

PRICES_ENV = "CMDRDATA_PRICES_FILE"
MAX_TABLE_TEXT = 40  # widest customer/model cell in the table (JSON and CSV are never cut)
MAX_NAMED_MODELS = 8  # models without a price named in the table's footer

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

DESCRIPTION = """\
Usage and estimated cost per customer and model, from the local ledger
(where usage goes when no CMDRDATA_API_KEY is set); with a key, from the
metered record of what was delivered (metered.sqlite3 in the spool folder);
with CMDRDATA_LEDGER_URL, from the fleet ledger."""
EPILOG = """\
times (--since, --until):
  ISO dates or date-times, UTC unless an offset is given: 2026-11-01, 2026-11-01T12:00,
  2026-11-01T12:00+02:00; or a time ago: 30m, 24h, 7d, 2w (s/m/h/d/w); or "now".
  --since is inclusive, --until exclusive: --since 2026-11-01 --until 2026-11-02 is Nov 1.

columns:
  calls, input, cached (input tokens served from cache, part of input), output,
  reasoning (part of output), total tokens, estimated (calls whose usage was counted
  locally because the API reported none), failed (calls that errored), estimated cost.

output:
  table  aligned columns and a TOTAL row (default).
  --json one object: {"rows": [...], "total": {...}, "currency", "prices_version",
         "prices_file", "since", "until", "ledger", "by"}; each row has customer
         and/or model, calls, input_tokens, cached_input_tokens, output_tokens,
         reasoning_tokens, total_tokens, estimated_calls, failed_calls,
         estimated_cost (null when the model has no price), unpriced_calls,
         unpriced_models.
  --csv  a header and one line per row (no total line); estimated_cost is empty when
         the model has no price.
  --html FILE
         one self-contained page (no network): usage and cost per day and customer,
         the top customers and models, cached and estimated shares, failed calls, and
         the table above; with --reconcile FILE (from reconcile --json), metered vs
         billed per day. Printable.

costs:
  Estimates from the shipped table of OpenAI list prices, not your bill. --prices FILE
  (default: $CMDRDATA_PRICES_FILE) is a JSON file shaped like the shipped prices.json,
  {"models": {"MODEL": {"input": ..., "cached_input": ..., "output": ...}}} with prices
  per 1M tokens; each model it names replaces the shipped entry. Dated snapshots
  (gpt-4o-mini-2024-07-18) use the price of their model (gpt-4o-mini).

examples:
  cmdrdata-autotrack report
  cmdrdata-autotrack report --since 7d --by customer
  cmdrdata-autotrack report --since 2026-11-01 --until 2026-12-01 --customer acme --csv
  cmdrdata-autotrack report --since 30d --html usage.html
"""


# --- times ----------------------------------------------------------------------------------


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds of ``text``: ISO date/date-time (UTC unless an offset is given),
    a time ago (``30m``, ``24h``, ``7d``, ``2w``, ``90s``) or ``now``."""
    value = text.strip()
    current = time.time() if now is None else now
    if value.lower() == "now":
        return current
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        return current - amount * _SECONDS[unit]
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or date-time (2026-11-01, "
            "2026-11-01T12:00, UTC unless an offset is given), a time ago (30m, 24h, 7d, 2w) "
            "or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_time(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    if moment.second or moment.microsecond:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return (moment - timedelta(microseconds=moment.microsecond)).isoformat()


# --- output ---------------------------------------------------------------------------------


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TABLE_TEXT else text[: MAX_TABLE_TEXT - 1] + "…"


def render_table(
    rows: Sequence[ReportRow],
    by: str,
    prices: PriceTable,
    *,
    heading: str = "",
) -> str:
    keys = by.split(",")
    summed = total(rows)
    partial = any(r.unpriced_calls and r.cost is not None for r in (*rows, summed))
    header = [
        *(k.upper() for k in keys),
        *(heading.upper() for _, heading in COUNT_COLUMNS),
        f"COST ({prices.currency})",
    ]

    def cells(row: ReportRow, labels: list[str]) -> list[str]:
        money = format_cost(row.cost)
        if row.unpriced_calls and row.cost is not None:
            money += "*"
        elif partial:
            money += " "  # keep the digits aligned with the starred ones
        return [*labels, *(f"{n:,}" for n in row.counts()), money]

    body = [
        cells(r, [_cut((r.customer if k == "customer" else r.model) or "") for k in keys])
        for r in rows
    ]
    footer = cells(summed, ["TOTAL", *([""] * (len(keys) - 1))])
    widths = [max(len(line[i]) for line in [header, *body, footer]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if i < len(keys) else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [heading] if heading else []
    out += [line(header), rule, *(line(b) for b in body), rule, line(footer), ""]
    source = f"OpenAI list prices as of {prices.version}"
    if prices.override_file:
        out.append(f"Costs are estimates from {source},")
        out.append(f"with {prices.override_file} merged over them.")
    else:
        out.append(f"Costs are estimates from the shipped table of {source};")
        out.append(f"override with --prices FILE or ${PRICES_ENV}.")
    if summed.unpriced_calls:
        names = summed.unpriced_models
        models = ", ".join(names[:MAX_NAMED_MODELS])
        if len(names) > MAX_NAMED_MODELS:
            models += f" and {len(names) - MAX_NAMED_MODELS} more"
        mark = "* " if partial else ""
        out.append(f"{mark}No price for {summed.unpriced_calls:,} call(s) to {models}:")
        out.append("  not in the cost (add them to a --prices file).")
    if summed.estimated_calls:
        out.append("ESTIMATED: calls whose usage the API did not report (counted locally).")
    return "\n".join(out) + "\n"


def render_json(
    rows: Sequence[ReportRow],
    by: str,
    prices: PriceTable,
    *,
    since: float | None,
    until: float | None,
    ledger: Path | str,
) -> str:
    document = {
        "rows": [r.to_dict() for r in rows],
        "total": total(rows).to_dict(),
        "currency": prices.currency,
        "prices_version": prices.version,
        "prices_file": prices.override_file,
        "since": _iso(since),
        "until": _iso(until),
        "ledger": str(ledger),
        "by": by,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_csv(rows: Sequence[ReportRow], by: str, prices: PriceTable, out: TextIO) -> None:
    keys = by.split(",")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            *keys,
            *(name for name, _ in COUNT_COLUMNS),
            "estimated_cost",
            "currency",
            "unpriced_calls",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                *((r.customer if k == "customer" else r.model) for k in keys),
                *r.counts(),
                "" if r.cost is None else f"{r.cost:.8f}".rstrip("0").rstrip("."),
                prices.currency,
                r.unpriced_calls,
            ]
        )


# --- the command ----------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``report`` (its handler is :func:`run`, also set as ``func``)."""
    parser = subparsers.add_parser(
        "report",
        help="usage and estimated cost per customer and model, from what was metered",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--since", metavar="T", type=_time_arg, help="from time T (inclusive; see times)"
    )
    parser.add_argument(
        "--until", metavar="T", type=_time_arg, help="up to time T (exclusive; see times)"
    )
    parser.add_argument("--customer", metavar="ID", help="only this customer_id")
    parser.add_argument(
        "--by",
        choices=GROUPINGS,
        default="customer,model",
        metavar="{customer,model|customer|model}",
        help="one row per customer and model (default), per customer or per model",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="write JSON (see output)")
    fmt.add_argument("--csv", action="store_true", help="write CSV (see output)")
    fmt.add_argument(
        "--html", metavar="FILE", help="write a self-contained HTML page to FILE (see output)"
    )
    parser.add_argument(
        "--reconcile",
        metavar="FILE",
        help="with --html: add metered vs billed per day from FILE "
        "(the output of cmdrdata-autotrack reconcile --json)",
    )
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        help="read this ledger file, whatever the key or CMDRDATA_LEDGER_URL (default: "
        "$CMDRDATA_LEDGER_PATH, else ledger.sqlite3 in the user's data folder)",
    )
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help=f"JSON prices merged over the shipped ones (default: ${PRICES_ENV})",
    )
    parser.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"cmdrdata-autotrack report: error: {message}", file=sys.stderr)
    return 2


def _period(since: float | None, until: float | None) -> str:
    if since is None and until is None:
        return "all time"
    start = format_time(since) if since is not None else "the first call"
    end = format_time(until) if until is not None else "now"
    return f"{start} to {end}"


def run(args: argparse.Namespace) -> int:
    since: float | None = getattr(args, "since", None)
    until: float | None = getattr(args, "until", None)
    customer: str | None = getattr(args, "customer", None)
    by: str = getattr(args, "by", None) or "customer,model"
    as_json = bool(getattr(args, "json", False))
    as_csv = bool(getattr(args, "csv", False))
    if since is not None and until is not None and since >= until:
        return _error("--since must be before --until")

    settings = Settings.from_env()
    fleet_url, retention = fleet_ledger.configured(settings)
    if getattr(args, "ledger", None):  # a local ledger file named: it wins
        fleet_url = None
    # where the sums are read from (None: the local ledger): the fleet ledger, or with a
    # key, the metered record of what was delivered
    sums: fleet_ledger.UsageSummaries | None = None
    record = metered_store.metered_path(spool_dir(settings.spool_dir))
    if fleet_url:
        sums = fleet_ledger.FleetStore(fleet_url, retention_days=retention)
    elif settings.api_key and not getattr(args, "ledger", None) and record.is_file():
        sums = metered_store.MeteredStore(record, retention_days=retention, read_only=True)
    local = ledger_path(getattr(args, "ledger", None) or settings.ledger_path)
    path: Path | str = local if sums is None else sums.where
    prices_file = getattr(args, "prices", None) or os.environ.get(PRICES_ENV, "").strip() or None
    try:
        prices = load_prices(prices_file)
    except (OSError, ValueError) as exc:
        source = f" ({PRICES_ENV})" if not getattr(args, "prices", None) else ""
        return _error(f"cannot use the prices file{source}: {exc}")

    html_file: str | None = getattr(args, "html", None)
    reconciled: dict[str, object] | None = None
    reconcile_file: str | None = getattr(args, "reconcile", None)
    if reconcile_file and not html_file:
        return _error("--reconcile goes with --html")
    if reconcile_file:
        try:
            reconciled = html_report.load_reconciliation(Path(reconcile_file))
        except (OSError, ValueError) as exc:
            return _error(f"cannot use the reconciliation {reconcile_file}: {exc}")

    try:
        if sums is not None:
            report = load_fleet_report(
                sums, since, until, customer, prices, per_day=bool(html_file)
            )
        else:
            report = load_report(local, since, until, customer, prices, per_day=bool(html_file))
    except LedgerProblem as exc:
        return _error(str(exc))
    except fleet_ledger.FleetUnavailable as exc:
        return _error(f"cannot read the fleet ledger ({exc})")
    except sqlite3.Error as exc:  # the metered record: locked, damaged, not a database
        return _error(f"cannot read the metered record {path}: {exc}")
    finally:
        if sums is not None:
            sums.close()
    rows: list[ReportRow] | None = None if report is None else report.by(by)

    if html_file:
        if report is None:
            report = UsageReport(path, since, until, customer, prices, [], [])
        page = html_report.render(report, reconciled, title_period=_period(since, until))
        try:
            Path(html_file).write_text(page, encoding="utf-8")
        except OSError as exc:
            return _error(f"cannot write {html_file}: {exc}")
        print(f"Wrote the report to {html_file}.")
        return 0

    out = sys.stdout
    if rows is None:
        message = f"No usage has been recorded yet (ledger: {path})."
        if settings.api_key and sums is None:
            message += " CMDRDATA_API_KEY is set, so usage is sent to cmdrdata instead" + (
                " (with --ledger, the metered record is not read)."
                if getattr(args, "ledger", None)
                else f"; the metered record {record} that keeps it does not exist yet."
            )
        if not (as_json or as_csv):
            print(message, file=out)
            return 0
        # JSON and CSV stay parseable (no rows); the message goes to stderr.
        print(message, file=sys.stderr)
        rows = []

    if as_json:
        out.write(render_json(rows, by, prices, since=since, until=until, ledger=path))
    elif as_csv:
        write_csv(rows, by, prices, out)
    elif not rows:
        who = f" for customer {customer!r}" if customer is not None else ""
        out.write(f"No usage{who}, {_period(since, until)} (ledger: {path}).\n")
    else:
        who = f", customer {customer!r}" if customer is not None else ""
        heading = f"Usage in {path}, {_period(since, until)}{who}:"
        out.write(render_table(rows, by, prices, heading=heading))
    return 0
