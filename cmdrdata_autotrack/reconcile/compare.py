"""Metered against billed, per time bucket and model (and the dimensions asked for).

Pure: it takes the calls the agent metered and the results OpenAI's Usage and
Costs APIs answered, and sets them side by side. A row is one bucket of one
usage endpoint, one model and one value of each grouped dimension; it holds
both sides' units (zero on a side that has none). Only *complete* buckets count
in the totals, the coverage and the differences: the bucket OpenAI is still
filling (and any inside the settling margin) is shown, marked, never a gap.

Coverage of a unit is metered / billed over the complete buckets. The
*unmetered cost* prices what OpenAI billed beyond what was metered (row by row,
each unit's excess) at the list prices of :mod:`cmdrdata_autotrack.pricing`: an
estimate. OpenAI's own costs (daily, per line item) are compared with the
metered calls' estimated cost as a unit of their own, ``cost``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..pricing import ModelPrice, PriceTable, cost
from .buckets import Window
from .metered import MeteredCall
from .model import (
    DIMENSIONS,
    ENDPOINTS_BY_NAME,
    UNITS,
    CostRecord,
    Key,
    Units,
    UsageRecord,
    number,
)

OTHER_ENDPOINT = "other"  # metered calls of an operation no usage endpoint is known to bill
SESSIONS_ENDPOINT = "code_interpreter_sessions"
TOKEN_UNITS = ("input_tokens", "output_tokens")


@dataclass
class Row:
    """One bucket x usage endpoint x model x dimensions."""

    start: int
    end: int
    complete: bool
    endpoint: str
    model: str | None
    dims: dict[str, str | bool | None]
    metered: Units = field(default_factory=Units)
    billed: Units = field(default_factory=Units)
    metered_cost: float | None = 0.0  # estimate of the metered calls; None if one is unpriced
    unmetered_cost: float | None = 0.0  # billed beyond metered, priced; None if unpriced
    difference_cost: float = 0.0  # |billed - metered| priced: how much the bucket differs

    def differs(self) -> bool:
        return any(self.metered.get(u) != self.billed.get(u) for u in UNITS)

    def to_dict(self, group_by: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start_time": self.start,
            "end_time": self.end,
            "complete": self.complete,
            "endpoint": self.endpoint,
            "model": self.model,
        }
        out.update({d: self.dims.get(d) for d in group_by})
        out["metered"] = self.metered.to_dict()
        out["billed"] = self.billed.to_dict()
        out["metered_cost"] = _money(self.metered_cost)
        out["unmetered_cost"] = _money(self.unmetered_cost)
        return out


@dataclass
class CostRow:
    """One day x model (named by OpenAI's line item) x project, in the Costs API's currency."""

    start: int
    end: int
    complete: bool
    model: str | None
    project_id: str | None
    billed: float = 0.0
    metered: float = 0.0  # estimate of the metered calls
    unpriced_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_time": self.start,
            "end_time": self.end,
            "complete": self.complete,
            "model": self.model,
            "project_id": self.project_id,
            "billed": _money(self.billed),
            "metered": _money(self.metered),
            "unpriced_calls": self.unpriced_calls,
        }


@dataclass
class Coverage:
    unit: str
    metered: float
    billed: float

    @property
    def percent(self) -> float | None:
        """metered / billed in percent; ``None`` when OpenAI billed none of it."""
        if self.billed <= 0:
            return None
        return 100.0 * self.metered / self.billed

    def to_dict(self) -> dict[str, Any]:
        pct = self.percent
        return {
            "metered": number(self.metered) if self.unit != "cost" else _money(self.metered),
            "billed": number(self.billed) if self.unit != "cost" else _money(self.billed),
            "coverage_pct": None if pct is None else round(pct, 4),
        }


@dataclass
class Reconciliation:
    window: Window
    days: Window
    group_by: tuple[str, ...]
    rows: list[Row]
    cost_rows: list[CostRow]
    costs_compared: bool
    currency: str
    storage_peak_bytes: int | None
    estimated_calls: int
    unpriced_models: tuple[str, ...]
    other_calls: int  # metered calls no usage endpoint is known to bill

    @property
    def complete_rows(self) -> list[Row]:
        return [r for r in self.rows if r.complete]

    def complete_buckets(self) -> int:
        return sum(1 for s in self.window.starts() if self.window.is_complete(s))

    def incomplete_buckets(self) -> list[int]:
        return [s for s in self.window.starts() if not self.window.is_complete(s)]

    def coverage(self) -> list[Coverage]:
        """Each unit over the complete buckets (``cost``: the complete days), in UNITS order."""
        out = []
        for unit in UNITS:
            metered = sum(r.metered.get(unit) for r in self.complete_rows)
            billed = sum(r.billed.get(unit) for r in self.complete_rows)
            out.append(Coverage(unit, metered, billed))
        if self.costs_compared:
            complete = [c for c in self.cost_rows if c.complete]
            out.append(
                Coverage("cost", sum(c.metered for c in complete), sum(c.billed for c in complete))
            )
        return out

    def unmetered_cost(self) -> float:
        return sum(r.unmetered_cost or 0.0 for r in self.complete_rows)

    def largest_differences(self, limit: int = 10) -> list[Row]:
        differing = [r for r in self.complete_rows if r.differs()]
        differing.sort(key=_difference_rank, reverse=True)
        return differing[:limit]

    def by_model(self) -> list[Row]:
        """The complete rows summed per endpoint and model (dimensions dropped)."""
        summed: dict[tuple[str, str | None], Row] = {}
        for r in self.complete_rows:
            key = (r.endpoint, r.model)
            if key not in summed:
                summed[key] = Row(self.window.start, self.window.end, True, r.endpoint, r.model, {})
            _add_row(summed[key], r)
        return sorted(summed.values(), key=lambda r: (r.endpoint, r.model or ""))


def _difference_rank(row: Row) -> tuple[float, float, float]:
    tokens = sum(abs(row.billed.get(u) - row.metered.get(u)) for u in TOKEN_UNITS)
    return (row.difference_cost, tokens, abs(row.billed.requests - row.metered.requests))


def _add_row(into: Row, row: Row) -> None:
    into.metered.add(row.metered)
    into.billed.add(row.billed)
    into.metered_cost = _sum_or_none(into.metered_cost, row.metered_cost)
    into.unmetered_cost = _sum_or_none(into.unmetered_cost, row.unmetered_cost)
    into.difference_cost += row.difference_cost


def _sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 8)


def _excess_cost(price: ModelPrice, over: Units, under: Units) -> float:
    """What ``over`` has beyond ``under``, unit by unit, at ``price``."""

    def excess(unit: str) -> float:
        return max(over.get(unit) - under.get(unit), 0.0)

    inp = excess("input_tokens")
    return cost(
        price,
        input_tokens=inp,
        cached_input_tokens=min(excess("cached_input_tokens"), inp),
        output_tokens=excess("output_tokens"),
        units={
            "image_count": excess("images"),
            "audio_seconds": excess("seconds"),
            "input_characters": excess("characters"),
        },
    )


def _dims(
    endpoint: str, group_by: Sequence[str], values: Mapping[str, str | bool | None]
) -> dict[str, str | bool | None]:
    spec = ENDPOINTS_BY_NAME.get(endpoint)
    allowed = spec.dimensions() if spec is not None else ()
    return {d: (values.get(d) if d in allowed else None) for d in group_by}


def compare(
    calls: Iterable[MeteredCall],
    usage: Sequence[UsageRecord],
    costs: Sequence[CostRecord] | None,
    *,
    window: Window,
    group_by: Sequence[str] = (),
    prices: PriceTable,
    key_ids: Mapping[str, str] | None = None,
) -> Reconciliation:
    """Set metered ``calls`` against billed ``usage`` (and ``costs``, when read).

    ``key_ids`` maps a key suffix (last four characters) to the OpenAI API key id it
    belongs to, so calls can be grouped by ``api_key_id`` like OpenAI's results.
    ``costs`` is ``None`` when the Costs API was not read.
    """
    group = tuple(d for d in DIMENSIONS if d in group_by)
    days = window.days()
    rows: dict[tuple[int, str, str | None, Key], Row] = {}
    cost_rows: dict[tuple[int, str | None, str | None], CostRow] = {}
    estimated = other = 0
    price_of: dict[str, ModelPrice | None] = {}

    def row_for(start: int, endpoint: str, model: str | None, dims: dict[str, Any]) -> Row:
        key = (start, endpoint, model, tuple(dims.get(d) for d in group))
        found = rows.get(key)
        if found is None:
            found = rows[key] = Row(
                start, start + window.width, window.is_complete(start), endpoint, model, dims
            )
        return found

    def cost_row_for(start: int, model: str | None, project: str | None) -> CostRow:
        key = (start, model, project if "project_id" in group else None)
        found = cost_rows.get(key)
        if found is None:
            found = cost_rows[key] = CostRow(
                start, start + days.width, days.is_complete(start), model, key[2]
            )
        return found

    # --- the metered side --------------------------------------------------------------------
    for call in calls:
        day = days.bucket_of(call.timestamp)
        if day is None:
            continue
        if costs is not None:
            daily = cost_row_for(day, call.model, call.project_id)
            if call.cost is None:
                daily.unpriced_calls += int(call.units.requests)
            else:
                daily.metered += call.cost
        start = window.bucket_of(call.timestamp)
        if start is None:
            continue
        estimated += int(call.units.requests) if call.estimated else 0
        values: dict[str, str | bool | None] = {
            "project_id": call.project_id,
            "api_key_id": (key_ids or {}).get(call.key_suffix or "")
            or (f"...{call.key_suffix}" if call.key_suffix else None),
            "batch": False,  # the agent meters the app's own calls, never Batch API jobs
            "service_tier": call.service_tier,
        }
        endpoint = call.endpoint or OTHER_ENDPOINT
        other += int(call.units.requests) if endpoint == OTHER_ENDPOINT else 0
        units = call.units
        if units.sessions:
            # Code interpreter sessions are billed on their own endpoint, per project only.
            sessions = row_for(
                start, SESSIONS_ENDPOINT, None, _dims(SESSIONS_ENDPOINT, group, values)
            )
            sessions.metered.sessions += units.sessions
            units = replace(units, sessions=0)
        row = row_for(start, endpoint, call.model, _dims(endpoint, group, values))
        row.metered.add(units)
        row.metered_cost = _sum_or_none(row.metered_cost, call.cost)

    # --- the billed side ---------------------------------------------------------------------
    storage: int | None = None
    for record in usage:
        if record.endpoint == "vector_stores":
            if record.storage_bytes is not None:
                storage = max(storage or 0, record.storage_bytes)
            continue
        start = window.bucket_of(record.start)
        if start is None:
            continue
        spec = ENDPOINTS_BY_NAME[record.endpoint]
        model = (record.model or "unknown").lower() if spec.by_model else None
        row = row_for(start, record.endpoint, model, _dims(record.endpoint, group, record.dims))
        row.billed.add(record.units)

    currency = "usd"
    for item in costs or ():
        day = days.bucket_of(item.start)
        if day is None:
            continue
        currency = item.currency
        cost_row_for(day, item.model, item.project_id).billed += item.amount

    # --- what the differences cost -----------------------------------------------------------
    unpriced: set[str] = set()
    for row in rows.values():
        if row.model is None:  # code interpreter sessions: no price in the table
            if row.billed.sessions > row.metered.sessions:
                unpriced.add("code interpreter sessions")
                row.unmetered_cost = None
            continue
        if row.model not in price_of:
            price_of[row.model] = prices.for_model(row.model)
        price = price_of[row.model]
        if price is None:
            if row.differs():
                unpriced.add(row.model)
                row.unmetered_cost = None
            continue
        row.unmetered_cost = _excess_cost(price, row.billed, row.metered)
        row.difference_cost = row.unmetered_cost + _excess_cost(price, row.metered, row.billed)

    return Reconciliation(
        window=window,
        days=days,
        group_by=group,
        rows=sorted(rows.values(), key=_row_order),
        cost_rows=sorted(
            cost_rows.values(), key=lambda c: (c.start, c.model or "", c.project_id or "")
        ),
        costs_compared=costs is not None,
        currency=currency,
        storage_peak_bytes=storage,
        estimated_calls=estimated,
        unpriced_models=tuple(sorted(unpriced)),
        other_calls=other,
    )


def _row_order(row: Row) -> tuple[Any, ...]:
    return (row.start, row.endpoint, row.model or "", tuple(str(v) for v in row.dims.values()))
