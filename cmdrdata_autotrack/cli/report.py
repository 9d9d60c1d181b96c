"""``cmdrdata-autotrack report``: usage and estimated cost per customer, from the local ledger.

Reads the SQLite ledger the agent writes when no cmdrdata API key is set (it
never creates or changes it), sums calls and tokens per customer and model, and
prices them with :mod:`cmdrdata_autotrack.pricing` (OpenAI list prices: an
estimate, not a bill). Output: an aligned table (default), JSON or CSV.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from ..config import Settings
from ..paths import ledger_path
from ..pricing import ModelPrice, PriceTable, cost, load_prices

PRICES_ENV = "CMDRDATA_PRICES_FILE"
GROUPINGS = ("customer,model", "customer", "model")
MAX_TABLE_TEXT = 40  # widest customer/model cell in the table (JSON and CSV are never cut)
MAX_NAMED_MODELS = 8  # models without a price named in the table's footer

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Rows whose units may carry a non-token price (images, audio minutes, speech characters).
_UNIT_KEYS = ("image_count", "audio_seconds", "input_characters")

DESCRIPTION = """\
Usage and estimated cost per customer and model, from the local ledger
(where usage goes when no CMDRDATA_API_KEY is set)."""
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
"""


# --- the numbers --------------------------------------------------------------------------


@dataclass
class ReportRow:
    """Usage of one customer and/or model (``None`` when the report is not grouped by it)."""

    customer: str | None
    model: str | None
    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    estimated_calls: int = 0
    failed_calls: int = 0
    cost: float | None = None  # estimated cost of the priced calls; None if none has a price
    unpriced_calls: int = 0  # calls to models without a price (not in ``cost``)
    unpriced_models: tuple[str, ...] = field(default=())

    def add(self, other: ReportRow) -> None:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.total_tokens += other.total_tokens
        self.estimated_calls += other.estimated_calls
        self.failed_calls += other.failed_calls
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
        self.unpriced_calls += other.unpriced_calls
        self.unpriced_models = tuple(sorted({*self.unpriced_models, *other.unpriced_models}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.customer is not None:
            out["customer"] = self.customer
        if self.model is not None:
            out["model"] = self.model
        out.update(
            calls=self.calls,
            input_tokens=self.input_tokens,
            cached_input_tokens=self.cached_input_tokens,
            output_tokens=self.output_tokens,
            reasoning_tokens=self.reasoning_tokens,
            total_tokens=self.total_tokens,
            estimated_calls=self.estimated_calls,
            failed_calls=self.failed_calls,
            estimated_cost=None if self.cost is None else round(self.cost, 8),
            unpriced_calls=self.unpriced_calls,
            unpriced_models=list(self.unpriced_models),
        )
        return out


_TOTALS_SQL = """
SELECT customer_id, model, COUNT(*),
    SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens), SUM(reasoning_tokens),
    SUM(total_tokens), SUM(estimated != 0), SUM(success = 0),
    SUM(MAX(input_tokens, 0)),
    SUM(MAX(MIN(cached_input_tokens, input_tokens), 0)),
    SUM(MAX(output_tokens, 0)),
    SUM(MAX(MIN(reasoning_tokens, output_tokens), 0))
FROM usage {where}
GROUP BY customer_id, model
"""

_UNITS_SQL = """
SELECT customer_id, model, units FROM usage {where} AND ({units})
"""


def summarize(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    customer: str | None,
    prices: PriceTable,
    *,
    by: str = "customer,model",
) -> list[ReportRow]:
    """Usage rows of the ledger in ``[since, until)`` (unix seconds), grouped ``by``.

    ``by`` is ``"customer,model"``, ``"customer"`` or ``"model"``. Rows are sorted by
    customer, then model. Each call is priced by its model (see
    :meth:`PriceTable.for_model`); calls to models without a price are counted in
    ``unpriced_calls`` and left out of ``cost``.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    clauses: list[str] = ["1 = 1"]
    params: list[str | float] = []
    if since is not None:
        clauses.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        clauses.append("timestamp < ?")
        params.append(until)
    if customer is not None:
        clauses.append("customer_id = ?")
        params.append(customer)
    where = "WHERE " + " AND ".join(clauses)

    base: dict[tuple[str, str], ReportRow] = {}
    model_prices: dict[str, ModelPrice | None] = {}
    for r in conn.execute(_TOTALS_SQL.format(where=where), params):
        customer_id, model = str(r[0]), str(r[1])
        counts = [int(v or 0) for v in r[2:10]]
        row = ReportRow(
            customer_id,
            model,
            calls=counts[0],
            input_tokens=counts[1],
            cached_input_tokens=counts[2],
            output_tokens=counts[3],
            reasoning_tokens=counts[4],
            total_tokens=counts[5],
            estimated_calls=counts[6],
            failed_calls=counts[7],
        )
        price = model_prices[model] = prices.for_model(model)
        if price is None:
            row.unpriced_calls, row.unpriced_models = row.calls, (model,)
        else:
            row.cost = cost(
                price,
                input_tokens=r[10] or 0,
                cached_input_tokens=r[11] or 0,
                output_tokens=r[12] or 0,
                reasoning_tokens=r[13] or 0,
                units={},
            )
        base[customer_id, model] = row

    # Images, audio minutes and speech characters: priced call by call (size, quality vary).
    units_sql = " OR ".join("units LIKE ?" for _ in _UNIT_KEYS)
    units_params = [*params, *(f'%"{key}"%' for key in _UNIT_KEYS)]
    for customer_id, model, units_text in conn.execute(
        _UNITS_SQL.format(where=where, units=units_sql), units_params
    ):
        priced = base.get((str(customer_id), str(model)))
        price = model_prices.get(str(model))
        if priced is None or price is None or priced.cost is None:
            continue
        try:
            units = json.loads(units_text)
        except (TypeError, ValueError):
            continue
        if isinstance(units, dict):
            priced.cost += cost(
                price,
                input_tokens=0,
                cached_input_tokens=0,
                output_tokens=0,
                reasoning_tokens=0,
                units=units,
            )

    if by == "customer,model":
        rows = list(base.values())
    else:
        grouped: dict[str, ReportRow] = {}
        for (customer_id, model), row in base.items():
            key = customer_id if by == "customer" else model
            if key not in grouped:
                grouped[key] = ReportRow(
                    customer_id if by == "customer" else None,
                    model if by == "model" else None,
                )
            grouped[key].add(row)
        rows = list(grouped.values())
    rows.sort(key=lambda r: (r.customer or "", r.model or ""))
    return rows


def total(rows: Iterable[ReportRow]) -> ReportRow:
    """The sum of ``rows`` (customer and model ``None``)."""
    out = ReportRow(None, None)
    for row in rows:
        out.add(row)
    return out


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


def format_cost(value: float | None) -> str:
    """4 decimals (6 below a tenth of a cent, so small amounts do not read as zero)."""
    if value is None:
        return "-"
    if 0 < value < 0.001:
        return f"{value:.6f}"
    return f"{value:,.4f}"


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
        "CALLS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "TOTAL TOKENS",
        "ESTIMATED",
        "FAILED",
        f"COST ({prices.currency})",
    ]

    def cells(row: ReportRow, labels: list[str]) -> list[str]:
        money = format_cost(row.cost)
        if row.unpriced_calls and row.cost is not None:
            money += "*"
        elif partial:
            money += " "  # keep the digits aligned with the starred ones
        numbers = (
            row.calls,
            row.input_tokens,
            row.cached_input_tokens,
            row.output_tokens,
            row.reasoning_tokens,
            row.total_tokens,
            row.estimated_calls,
            row.failed_calls,
        )
        return [*labels, *(f"{n:,}" for n in numbers), money]

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
    ledger: Path,
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
    )
    for r in rows:
        writer.writerow(
            [
                *((r.customer if k == "customer" else r.model) for k in keys),
                r.calls,
                r.input_tokens,
                r.cached_input_tokens,
                r.output_tokens,
                r.reasoning_tokens,
                r.total_tokens,
                r.estimated_calls,
                r.failed_calls,
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
        help="usage and estimated cost per customer and model, from the local ledger",
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
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        help="the ledger file (default: $CMDRDATA_LEDGER_PATH, else ledger.sqlite3 "
        "in the user's data folder)",
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
    path = ledger_path(getattr(args, "ledger", None) or settings.ledger_path)
    prices_file = getattr(args, "prices", None) or os.environ.get(PRICES_ENV, "").strip() or None
    try:
        prices = load_prices(prices_file)
    except (OSError, ValueError) as exc:
        source = f" ({PRICES_ENV})" if not getattr(args, "prices", None) else ""
        return _error(f"cannot use the prices file{source}: {exc}")

    rows: list[ReportRow] | None = None
    if path.is_file():
        try:
            conn = sqlite3.connect(str(path), timeout=10.0)
        except sqlite3.Error as exc:
            return _error(f"cannot open the ledger {path}: {exc}")
        try:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
            ).fetchone()
            if has_table and conn.execute("SELECT 1 FROM usage LIMIT 1").fetchone():
                rows = summarize(conn, since, until, customer, prices, by=by)
        except sqlite3.Error as exc:
            return _error(f"cannot read the ledger {path}: {exc}")
        finally:
            conn.close()

    out = sys.stdout
    if rows is None:
        message = f"No usage has been recorded yet (ledger: {path})."
        if settings.api_key:
            message += " CMDRDATA_API_KEY is set, so usage is sent to cmdrdata instead."
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
