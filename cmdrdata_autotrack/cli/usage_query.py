"""The numbers of ``report``: usage and estimated cost from the local ledger, one query layer.

The text table, JSON, CSV and HTML outputs all read the rows built here, so
they cannot disagree. Calls and tokens are summed per customer and model (and
per UTC day for the charts) in SQLite; each group is priced with
:mod:`cmdrdata_autotrack.pricing` (OpenAI list prices: an estimate, not a bill).
The ledger is only read: never created or changed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pricing import ModelPrice, PriceTable, cost

GROUPINGS = ("customer,model", "customer", "model")
DAY = 86400
# Rows whose units may carry a non-token price (images, audio minutes, speech characters).
_UNIT_KEYS = ("image_count", "audio_seconds", "input_characters")
# The counted columns of every output (table, HTML, CSV, JSON), in this order: the
# ReportRow field (the CSV and JSON name) and the heading of the text and HTML tables.
COUNT_COLUMNS = (
    ("calls", "Calls"),
    ("input_tokens", "Input"),
    ("cached_input_tokens", "Cached"),
    ("output_tokens", "Output"),
    ("reasoning_tokens", "Reasoning"),
    ("total_tokens", "Total tokens"),
    ("estimated_calls", "Estimated"),
    ("failed_calls", "Failed"),
)


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
    day: int | None = None  # start of the UTC day (Unix seconds) of a per-day row

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

    def counts(self) -> tuple[int, ...]:
        """The calls and tokens, in the order of :data:`COUNT_COLUMNS`."""
        return tuple(getattr(self, name) for name, _ in COUNT_COLUMNS)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.day is not None:
            out["day"] = self.day
        if self.customer is not None:
            out["customer"] = self.customer
        if self.model is not None:
            out["model"] = self.model
        out.update(zip((name for name, _ in COUNT_COLUMNS), self.counts(), strict=True))
        out.update(
            estimated_cost=None if self.cost is None else round(self.cost, 8),
            unpriced_calls=self.unpriced_calls,
            unpriced_models=list(self.unpriced_models),
        )
        return out


_TOTALS_SQL = """
SELECT {day}, customer_id, model, COUNT(*),
    SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens), SUM(reasoning_tokens),
    SUM(total_tokens), SUM(estimated != 0), SUM(success = 0),
    SUM(MAX(input_tokens, 0)),
    SUM(MAX(MIN(cached_input_tokens, input_tokens), 0)),
    SUM(MAX(output_tokens, 0)),
    SUM(MAX(MIN(reasoning_tokens, output_tokens), 0))
FROM usage {where}
GROUP BY 1, customer_id, model
"""

_UNITS_SQL = """
SELECT {day}, customer_id, model, units FROM usage {where} AND ({units})
"""
_BY_DAY = f"CAST(timestamp / {DAY} AS INTEGER) * {DAY}"  # ledger times are never negative


def _where(
    since: float | None, until: float | None, customer: str | None
) -> tuple[str, list[str | float]]:
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
    return "WHERE " + " AND ".join(clauses), params


def _base_rows(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    customer: str | None,
    prices: PriceTable,
    *,
    per_day: bool,
) -> list[ReportRow]:
    """One priced row per customer and model (and UTC day when ``per_day``)."""
    where, params = _where(since, until, customer)
    day_sql = _BY_DAY if per_day else "NULL"
    base: dict[tuple[int | None, str, str], ReportRow] = {}
    model_prices: dict[str, ModelPrice | None] = {}
    for r in conn.execute(_TOTALS_SQL.format(day=day_sql, where=where), params):
        day = None if r[0] is None else int(r[0])
        customer_id, model = str(r[1]), str(r[2])
        counts = [int(v or 0) for v in r[3:11]]
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
            day=day,
        )
        price = model_prices[model] = prices.for_model(model)
        if price is None:
            row.unpriced_calls, row.unpriced_models = row.calls, (model,)
        else:
            row.cost = cost(
                price,
                input_tokens=r[11] or 0,
                cached_input_tokens=r[12] or 0,
                output_tokens=r[13] or 0,
                reasoning_tokens=r[14] or 0,
                units={},
            )
        base[day, customer_id, model] = row

    # Images, audio minutes and speech characters: priced call by call (size, quality vary).
    units_sql = " OR ".join("units LIKE ?" for _ in _UNIT_KEYS)
    units_params = [*params, *(f'%"{key}"%' for key in _UNIT_KEYS)]
    for day, customer_id, model, units_text in conn.execute(
        _UNITS_SQL.format(day=day_sql, where=where, units=units_sql), units_params
    ):
        key = (None if day is None else int(day), str(customer_id), str(model))
        priced = base.get(key)
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
    return list(base.values())


def regroup(rows: Iterable[ReportRow], by: str) -> list[ReportRow]:
    """``rows`` summed per ``by`` (``"customer,model"``, ``"customer"`` or ``"model"``),
    keeping days apart; sorted by day, customer, model."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    grouped: dict[tuple[int | None, str | None, str | None], ReportRow] = {}
    for row in rows:
        customer = row.customer if "customer" in by else None
        model = row.model if "model" in by.split(",") else None
        key = (row.day, customer, model)
        if key not in grouped:
            grouped[key] = ReportRow(customer, model, day=row.day)
        grouped[key].add(row)
    out = list(grouped.values())
    out.sort(key=lambda r: (r.day or 0, r.customer or "", r.model or ""))
    return out


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
    return regroup(_base_rows(conn, since, until, customer, prices, per_day=False), by)


def format_cost(value: float | None) -> str:
    """4 decimals (6 below a tenth of a cent, so small amounts do not read as zero)."""
    if value is None:
        return "-"
    if 0 < value < 0.001:
        return f"{value:.6f}"
    return f"{value:,.4f}"


def total(rows: Iterable[ReportRow]) -> ReportRow:
    """The sum of ``rows`` (customer and model ``None``)."""
    out = ReportRow(None, None)
    for row in rows:
        out.add(row)
    return out


@dataclass
class UsageReport:
    """Everything the outputs show: rows per customer and model, and per day and customer."""

    ledger: Path | str  # the ledger file, or where the fleet ledger is
    since: float | None
    until: float | None
    customer: str | None
    prices: PriceTable
    rows: list[ReportRow]  # per customer and model
    daily: list[ReportRow]  # per UTC day and customer (model None)

    def by(self, grouping: str) -> list[ReportRow]:
        return regroup(self.rows, grouping)

    @property
    def total(self) -> ReportRow:
        return total(self.rows)


class LedgerProblem(Exception):
    """The ledger exists but cannot be read (the message names it)."""


def load_report(
    path: Path,
    since: float | None,
    until: float | None,
    customer: str | None,
    prices: PriceTable,
    *,
    per_day: bool = False,
) -> UsageReport | None:
    """The report of the ledger at ``path``, or ``None`` when it holds no usage at all.

    ``per_day`` also reads the per-day rows (for the HTML charts). Raises
    :class:`LedgerProblem` when the file cannot be opened or read.
    """
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(str(path), timeout=10.0)
    except sqlite3.Error as exc:
        raise LedgerProblem(f"cannot open the ledger {path}: {exc}") from None
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
        ).fetchone()
        if not (has_table and conn.execute("SELECT 1 FROM usage LIMIT 1").fetchone()):
            return None
        rows = regroup(
            _base_rows(conn, since, until, customer, prices, per_day=False), GROUPINGS[0]
        )
        daily: list[ReportRow] = []
        if per_day:
            daily = regroup(
                _base_rows(conn, since, until, customer, prices, per_day=True), "customer"
            )
    except sqlite3.Error as exc:
        raise LedgerProblem(f"cannot read the ledger {path}: {exc}") from None
    finally:
        conn.close()
    return UsageReport(path, since, until, customer, prices, rows, daily)


def days_between(first: int, last: int) -> Sequence[int]:
    """Every UTC day start from ``first`` to ``last`` (both day starts), inclusive."""
    return range(first, last + DAY, DAY)
