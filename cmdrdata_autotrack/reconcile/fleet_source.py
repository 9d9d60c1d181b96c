"""Metered usage from the fleet ledger (``CMDRDATA_LEDGER_URL``): every process's, keyed or not.

The fleet ledger keeps usage per UTC hour (for ``CMDRDATA_LEDGER_RETENTION``)
and the events themselves for a short window (:mod:`..export.fleet_ledger`).
:meth:`FleetSource.calls` reads it summed per bucket of the reconciliation:
hours and days from the hourly rows, minutes from the events the window keeps
(past it, an hour's usage is timed at the start of its hour). Each summary is
read by the same :class:`~.metered.CallReader` as an event, and stands for the
calls it sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from ..export.fleet_ledger import HOUR, REFUSED_CALLS, FleetStore, Summary, UsageSummaries
from ..usage.units import BY_NAME
from .metered import KEY_SUFFIX_FIELD, PROJECT_FIELD, CallReader, MeteredCall


class SummedSource:
    """Metered usage read from a store of sums (:class:`~..export.fleet_ledger.UsageSummaries`),
    in ``resolution``-second buckets (the reconciliation's bucket width)."""

    def __init__(self, store: UsageSummaries, resolution: int = HOUR) -> None:
        self.store = store
        self.resolution = resolution
        self.unreadable = 0  # rows that could not be read (kept for LedgerSource's interface)

    def describe(self) -> str:
        return self.store.where

    def calls(self, reader: CallReader, since: float, until: float) -> Iterator[MeteredCall]:
        """Every metered call in ``[since, until)``, summed per bucket and group."""
        for summary in self.store.summaries(since, until, width=self.resolution):
            billed = summary.calls - int(summary.quantities.get(REFUSED_CALLS, 0))
            if billed <= 0:
                continue  # requests OpenAI refused: not billed
            call = reader.read(summary_event(summary))
            if call is not None:
                yield replace(call, units=replace(call.units, requests=billed))


class FleetSource(SummedSource):
    """The fleet ledger as a :class:`~.metered.MeteredSource`."""

    def __init__(self, store: FleetStore, resolution: int = HOUR) -> None:
        super().__init__(store, resolution)
        self.fleet = store

    def describe(self) -> str:
        return f"the fleet ledger ({self.store.where})"

    def events(self, since: float, until: float) -> Iterator[Mapping[str, Any]]:
        """The events the raw window keeps in ``[since, until)`` (older usage is known per
        hour only: read it with :meth:`calls`)."""
        return self.fleet.events(since, until)


def summary_event(summary: Summary) -> dict[str, Any]:
    """A usage event carrying the sums of ``summary`` (timed at the start of its bucket)."""
    group = summary.group
    top: dict[str, Any] = {}
    units: dict[str, Any] = dict(group.descriptor_values())
    for name, value in summary.quantities.items():
        unit = BY_NAME.get(name)
        if unit is not None:
            (top if unit.top_level else units)[name] = value
    event: dict[str, Any] = {
        "timestamp": summary.start or 0,
        "customer_id": group.customer_id,
        "model": group.model,
        "operation": group.operation,
        "endpoint": group.endpoint,
        "service_tier": group.service_tier,
        "usage_estimated": group.estimated,
        "request": {"success": True},
        "units": units,
        **top,
    }
    if group.key_suffix is not None:
        event[KEY_SUFFIX_FIELD] = group.key_suffix
    if group.project_id is not None:
        event[PROJECT_FIELD] = group.project_id
    return event
