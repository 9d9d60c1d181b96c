"""The numbers of ``report`` from the fleet ledger (``CMDRDATA_LEDGER_URL``).

The same rows as :mod:`.usage_query` builds from the local ledger (so every
output reads them alike), from the fleet ledger's summaries per customer, model
and the descriptive units (image size and quality): each summary is priced as
one call of the summed amounts, which is what pricing each call and adding up
gives (prices are per unit). Whole hours come from the hourly rows; a range that
starts or ends mid-hour reads that hour's events while the raw window keeps
them (see :meth:`~..export.fleet_ledger.FleetStore.summaries`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..export.fleet_ledger import CALLS, FAILED_CALLS, Summary, UsageSummaries
from ..pricing import ModelPrice, PriceTable, cost
from ..usage.units import BY_NAME
from .usage_query import DAY, GROUPINGS, ReportRow, UsageReport, regroup


def _rows(summaries: Iterable[Summary], prices: PriceTable) -> list[ReportRow]:
    found: dict[str, ModelPrice | None] = {}
    rows: list[ReportRow] = []
    for summary in summaries:
        group, amounts = summary.group, summary.quantities
        calls = int(amounts.get(CALLS, 0))
        row = ReportRow(
            group.customer_id,
            group.model,
            calls=calls,
            input_tokens=int(amounts.get("input_tokens", 0)),
            cached_input_tokens=int(amounts.get("cached_input_tokens", 0)),
            output_tokens=int(amounts.get("output_tokens", 0)),
            reasoning_tokens=int(amounts.get("reasoning_tokens", 0)),
            total_tokens=int(amounts.get("total_tokens", 0)),
            estimated_calls=calls if group.estimated else 0,
            failed_calls=int(amounts.get(FAILED_CALLS, 0)),
            day=summary.start,
        )
        if group.model not in found:
            found[group.model] = prices.for_model(group.model)
        price = found[group.model]
        if price is None:
            row.unpriced_calls, row.unpriced_models = calls, (group.model,)
        else:
            units: dict[str, object] = dict(group.descriptor_values())
            for name, value in amounts.items():
                unit = BY_NAME.get(name)
                if unit is not None and not unit.top_level:
                    units[name] = value
            row.cost = cost(
                price,
                input_tokens=amounts.get("input_tokens", 0),
                cached_input_tokens=amounts.get("cached_input_tokens", 0),
                output_tokens=amounts.get("output_tokens", 0),
                reasoning_tokens=amounts.get("reasoning_tokens", 0),
                units=units,
            )
        rows.append(row)
    return rows


def load_fleet_report(
    store: UsageSummaries,  # the fleet ledger, or the metered record
    since: float | None,
    until: float | None,
    customer: str | None,
    prices: PriceTable,
    *,
    per_day: bool = False,
) -> UsageReport | None:
    """The report of the fleet ledger, or ``None`` when it holds no usage at all.

    Raises :class:`~..export.fleet_ledger.FleetUnavailable` when it cannot be read."""
    summaries = store.summaries(since, until, width=None, customer=customer)
    if not summaries and not store.has_usage():
        return None
    rows = regroup(_rows(summaries, prices), GROUPINGS[0])
    daily: list[ReportRow] = []
    if per_day:
        by_day = store.summaries(since, until, width=DAY, customer=customer)
        daily = regroup(_rows(by_day, prices), "customer")
    return UsageReport(store.where, since, until, customer, prices, rows, daily)
