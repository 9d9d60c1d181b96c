"""The local ledger: where usage goes when there is no cmdrdata API key.

One SQLite table, one row per usage event, keyed by ``event_id`` (so an event
written twice is stored once). ``cmdrdata-autotrack report`` reads it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .sqlite import connect, run_script

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
    event TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (timestamp);
CREATE INDEX IF NOT EXISTS usage_by_customer ON usage (customer_id, timestamp);
"""

_INSERT = """
INSERT OR IGNORE INTO usage VALUES (
    :event_id, :timestamp, :customer_id, :attributed, :model, :provider, :operation,
    :endpoint, :input_tokens, :cached_input_tokens, :output_tokens, :reasoning_tokens,
    :total_tokens, :estimated, :success, :units, :metadata, :event
)
"""


def open_ledger(path: Path) -> sqlite3.Connection:
    """Open (or create) the ledger; raises ``DamagedDatabase`` if the file is not one."""
    conn = connect(path)
    run_script(conn, path, SCHEMA)
    return conn


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
