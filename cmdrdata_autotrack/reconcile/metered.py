"""What the agent metered: usage events from a source, read as calls in OpenAI's terms.

A *source* yields the usage events (``docs/usage-event.schema.json``) whose
time falls in a range: the local ledger (where usage goes when no
``CMDRDATA_API_KEY`` is set). With a key, the metered record's hourly sums
(:mod:`.metered_source`) stand in; with ``CMDRDATA_LEDGER_URL``, the fleet
ledger's (:mod:`.fleet_source`).

Which OpenAI key made a call is read from the event's ``openai_key_suffix``
(the key's last four characters, the way OpenAI's admin API shows a redacted
key), and its project from ``openai_project_id``; each may also be given in the
event's ``metadata`` under the same name. Events without them are still
compared: reconcile then cannot scope OpenAI's numbers to the app's own keys.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..pricing import ModelPrice, PriceTable, cost
from ..usage.event import KEY_SUFFIX_FIELD as KEY_SUFFIX_FIELD
from ..usage.event import PROJECT_FIELD as PROJECT_FIELD
from .buckets import floor_to
from .model import API_TYPE_ENDPOINTS, OPERATION_ENDPOINTS, Units

SUFFIX_LENGTH = 4
_SAFE_SUFFIX = re.compile(r"[A-Za-z0-9_-]+")
_CONSUMED = ("input_tokens", "output_tokens", "images", "characters", "seconds", "sessions")


class MeteredSource(Protocol):
    """Where metered usage events come from."""

    def describe(self) -> str:
        """A short phrase naming the source, for the output (``the local ledger PATH``)."""
        ...

    def events(self, since: float, until: float) -> Iterator[Mapping[str, Any]]:
        """The usage events timed in ``[since, until)`` (Unix seconds), each exactly once."""
        ...


class LedgerSource:
    """The local ledger (``export/ledger.py``), opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unreadable = 0  # rows whose event is not a JSON object (skipped)

    def describe(self) -> str:
        return f"the local ledger {self.path}"

    def exists(self) -> bool:
        return self.path.is_file()

    def events(self, since: float, until: float) -> Iterator[Mapping[str, Any]]:
        if not self.path.is_file():
            return
        conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10.0)
        try:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
            ).fetchone()
            if not has_table:
                return
            rows = conn.execute(
                "SELECT event FROM usage WHERE timestamp >= ? AND timestamp < ? ORDER BY timestamp",
                (since, until),
            )
            for (text,) in rows:
                try:
                    event = json.loads(text)
                except (TypeError, ValueError):
                    event = None
                if isinstance(event, dict):
                    yield event
                else:
                    self.unreadable += 1
        finally:
            conn.close()


@dataclass
class MeteredCall:
    """One metered call, in the units OpenAI's usage endpoints report."""

    timestamp: float
    endpoint: str | None  # the usage endpoint that bills it (None: none known)
    model: str
    key_suffix: str | None
    project_id: str | None
    service_tier: str | None
    units: Units = field(default_factory=Units)
    cost: float | None = None  # estimated at list prices; None when the model has no price
    estimated: bool = False  # its usage was counted locally (the API reported none)


def key_suffix(value: object) -> str | None:
    """The last four characters of a key (or of a suffix already cut), if they are safe."""
    if not isinstance(value, str):
        return None
    tail = value.strip()[-SUFFIX_LENGTH:]
    return tail if len(tail) == SUFFIX_LENGTH and _SAFE_SUFFIX.fullmatch(tail) else None


def _field(event: Mapping[str, Any], name: str) -> object:
    value = event.get(name)
    if value is None:
        metadata = event.get("metadata")
        if isinstance(metadata, Mapping):
            value = metadata.get(name)
    return value


def _count(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if value == value and 0 <= value < 1e15 else 0.0


def _timestamp(event: Mapping[str, Any]) -> float | None:
    millis = event.get("timestamp_ms")
    if isinstance(millis, int | float) and not isinstance(millis, bool):
        return float(millis) / 1000
    seconds = event.get("timestamp")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return float(seconds)
    return None


class CallReader:
    """Turns usage events into :class:`MeteredCall`, pricing each with ``prices``."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._price: dict[str, ModelPrice | None] = {}

    def read(self, event: Mapping[str, Any]) -> MeteredCall | None:
        """The call, or ``None`` for an event that billed nothing (a refused request)."""
        when = _timestamp(event)
        if when is None:
            return None
        raw_units = event.get("units")
        units_in: Mapping[str, Any] = raw_units if isinstance(raw_units, Mapping) else {}
        input_tokens = _count(event.get("input_tokens"))
        output_tokens = _count(event.get("output_tokens"))
        request = event.get("request")
        success = not isinstance(request, Mapping) or request.get("success") is not False
        units = Units(
            requests=1,
            input_tokens=input_tokens,
            cached_input_tokens=min(_count(event.get("cached_input_tokens")), input_tokens),
            output_tokens=output_tokens,
            audio_tokens=_count(units_in.get("input_audio_tokens"))
            + _count(units_in.get("output_audio_tokens")),
            images=_count(units_in.get("image_count")),
            characters=_count(units_in.get("input_characters")),
            seconds=_count(units_in.get("audio_seconds")),
            sessions=_count(units_in.get("code_interpreter_sessions")),
        )
        # A failed call counts only if it consumed something (a stream cut short): a request
        # OpenAI refused is not a billed request.
        if not success and all(units.get(u) == 0 for u in _CONSUMED):
            return None
        model = str(event.get("model") or "unknown").strip().lower() or "unknown"
        operation, api_type = event.get("operation"), event.get("endpoint")
        endpoint = OPERATION_ENDPOINTS.get(operation) if isinstance(operation, str) else None
        if endpoint is None and isinstance(api_type, str):
            endpoint = API_TYPE_ENDPOINTS.get(api_type)
        tier = event.get("service_tier")
        project = _field(event, PROJECT_FIELD)
        return MeteredCall(
            timestamp=when,
            endpoint=endpoint,
            model=model,
            key_suffix=key_suffix(_field(event, KEY_SUFFIX_FIELD)),
            project_id=project if isinstance(project, str) and project else None,
            service_tier=tier.strip().lower() if isinstance(tier, str) and tier.strip() else None,
            units=units,
            cost=self._cost(model, event, units_in),
            estimated=event.get("usage_estimated") is True,
        )

    def _cost(self, model: str, event: Mapping[str, Any], units: Mapping[str, Any]) -> float | None:
        if model not in self._price:
            self._price[model] = self.prices.for_model(model)
        price = self._price[model]
        if price is None:
            return None
        return cost(
            price,
            input_tokens=_count(event.get("input_tokens")),
            cached_input_tokens=_count(event.get("cached_input_tokens")),
            output_tokens=_count(event.get("output_tokens")),
            reasoning_tokens=_count(event.get("reasoning_tokens")),
            units=units,
        )


def aggregate(calls: Iterable[MeteredCall], width: int) -> list[MeteredCall]:
    """The calls summed per ``width``-second bucket and everything else they are compared by.

    Each result stands for the calls it sums (``units.requests`` of them), timed at the
    start of their bucket: a bucket of 1 m, 1 h or 1 d lies inside one UTC day, so the
    daily cost comparison finds each call in its own day still.
    """
    summed: dict[tuple[Any, ...], MeteredCall] = {}
    for call in calls:
        start = floor_to(call.timestamp, width)
        key = (
            start,
            call.endpoint,
            call.model,
            call.key_suffix,
            call.project_id,
            call.service_tier,
            call.estimated,
        )
        into = summed.get(key)
        if into is None:
            summed[key] = replace(call, timestamp=float(start), units=replace(call.units))
            continue
        into.units.add(call.units)
        into.cost = None if into.cost is None or call.cost is None else into.cost + call.cost
    return list(summed.values())
