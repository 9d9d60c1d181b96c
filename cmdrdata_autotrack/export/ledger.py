"""The local ledger: where usage goes when there is no cmdrdata API key.

One SQLite table, one row per usage event, keyed by ``event_id`` (so an event
written twice is stored once). ``cmdrdata-autotrack report`` reads it.

Besides the token counts, every billable unit of :mod:`cmdrdata_autotrack.usage.units`
has a column of its own (0 when the call did not report it; text units NULL; id lists
as a JSON array), so a report sums them in SQL. The ``units`` column keeps the event's
``units`` object as it was. A ledger made by an older version gets the missing columns
when it is opened, filled from the ``units`` it kept.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..usage.units import EVENT_UNITS, ledger_columns
from .sqlite import connect, run_script

# Columns added after the first version of the table (migrated in place).
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("service_tier", "TEXT"), *ledger_columns())
_UNIT_SQL = "".join(f",\n    {name} {decl}" for name, decl in ADDED_COLUMNS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    event_id TEXT PRIMARY KEY,
    timestamp REAL NOT NULL,
    customer_id TEXT NOT NULL,
    attributed INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT,
    operation TEXT,
    endpoint TEXT,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    success INTEGER NOT NULL,
    units TEXT NOT NULL,
    metadata TEXT NOT NULL,
    event TEXT NOT NULL{added}
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (timestamp);
CREATE INDEX IF NOT EXISTS usage_by_customer ON usage (customer_id, timestamp);
""".replace("{added}", _UNIT_SQL)

_BASE_COLUMNS = (
    "event_id",
    "timestamp",
    "customer_id",
    "attributed",
    "model",
    "provider",
    "operation",
    "endpoint",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "estimated",
    "success",
    "units",
    "metadata",
    "event",
)
COLUMNS = (*_BASE_COLUMNS, *(name for name, _ in ADDED_COLUMNS))
_INSERT = (
    f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(':' + name for name in COLUMNS)})"
)


def open_ledger(path: Path) -> sqlite3.Connection:
    """Open (or create) the ledger; raises ``DamagedDatabase`` if the file is not one."""
    conn = connect(path)
    run_script(conn, path, SCHEMA)
    _add_missing_columns(conn)
    return conn


def _existing_columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(usage)")}


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring an older ledger's table up to date (several processes may open it at once)."""
    if not set(COLUMNS) - _existing_columns(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        existing = _existing_columns(conn)  # again, now that no other writer can change it
        added = [(n, d) for n, d in ADDED_COLUMNS if n not in existing]
        for name, declaration in added:
            conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {declaration}")
        _backfill(conn, [name for name, _ in added])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _backfill(conn: sqlite3.Connection, names: list[str]) -> None:
    """Fill the new columns of the rows already there from what they kept, in one pass."""
    if not names:
        return
    sets = ", ".join(
        f"{name} = coalesce(json_extract({'event' if name == 'service_tier' else 'units'}, "
        f"'$.{name}'), {name})"
        for name in names
    )
    # An SQLite without JSON functions leaves them 0: the units JSON stays the reference.
    with contextlib.suppress(sqlite3.OperationalError):
        conn.execute(f"UPDATE usage SET {sets}")


def _unit_columns(units: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    found = units if isinstance(units, Mapping) else {}
    for unit in EVENT_UNITS:
        value = found.get(unit.name)
        if unit.kind == "count":
            values[unit.name] = value if type(value) is int and value >= 0 else 0
        elif unit.kind == "seconds":
            number = value if isinstance(value, int | float) else None
            ok = number is not None and not isinstance(number, bool) and number >= 0
            values[unit.name] = float(number) if ok and number is not None else 0.0
        elif unit.kind == "text":
            values[unit.name] = value if isinstance(value, str) and value else None
        else:
            values[unit.name] = json.dumps(list(value)) if isinstance(value, list) else None
    return values


def row(event: Mapping[str, Any], raw: str | None = None) -> dict[str, Any]:
    request = event.get("request") or {}
    return {
        "event_id": event["event_id"],
        "timestamp": (event.get("timestamp_ms") or event.get("timestamp", 0) * 1000) / 1000,
        "customer_id": event.get("customer_id") or "unattributed",
        "attributed": 1 if event.get("attributed", True) else 0,
        "model": event.get("model") or "unknown",
        "provider": event.get("provider"),
        "operation": event.get("operation"),
        "endpoint": event.get("endpoint"),
        "input_tokens": event.get("input_tokens") or 0,
        "cached_input_tokens": event.get("cached_input_tokens") or 0,
        "output_tokens": event.get("output_tokens") or 0,
        "reasoning_tokens": event.get("reasoning_tokens") or 0,
        "total_tokens": event.get("total_tokens") or 0,
        "estimated": 1 if event.get("usage_estimated") else 0,
        "success": 1 if request.get("success", True) else 0,
        "units": json.dumps(event.get("units") or {}, sort_keys=True),
        "metadata": json.dumps(event.get("metadata") or {}, sort_keys=True),
        "event": raw if raw is not None else json.dumps(event, sort_keys=True),
        "service_tier": event.get("service_tier"),
        **_unit_columns(event.get("units")),
    }


def record(conn: sqlite3.Connection, events: Iterable[tuple[Mapping[str, Any], str]]) -> int:
    """Store events (each with its JSON text); returns how many were new."""
    rows = [row(event, raw) for event, raw in events]
    if not rows:
        return 0
    before = conn.total_changes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before
