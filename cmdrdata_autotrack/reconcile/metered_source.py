"""Metered usage from the metered record (``metered.sqlite3`` in the spool folder).

With ``CMDRDATA_API_KEY`` set, usage is delivered to cmdrdata and the importer
sums what it spools into the metered record (:mod:`..export.metered_store`): per
UTC hour for ``CMDRDATA_LEDGER_RETENTION``, per minute for two days. Read the
way the fleet ledger is (:class:`~.fleet_source.SummedSource`): each sum is read
by the same :class:`~.metered.CallReader` as an event and stands for the calls
it sums.
"""

from __future__ import annotations

from ..export.fleet_ledger import HOUR
from ..export.metered_store import MeteredStore
from .fleet_source import SummedSource


class MeteredRecordSource(SummedSource):
    """The metered record as a :class:`~.metered.MeteredSource` (opened read-only)."""

    def __init__(self, store: MeteredStore, resolution: int = HOUR) -> None:
        super().__init__(store, resolution)
        self.path = store.path

    def describe(self) -> str:
        return f"the metered record {self.path}"
