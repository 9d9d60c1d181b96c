"""Work whose usage comes later: who asked for it, until some process sees it finished.

A background response, an Assistants run or a batch is billed when it ends, which may
be long after the call that started it, in another worker process, or after a restart.
The call that starts it records its attribution here (the customer, the metadata, the
model), keyed by the work's id (``response:resp_1``, ``run:run_1``, ``batch:batch_1``);
the process that first sees the work finished reads it back, so the usage event goes to
the customer of the ``create`` call.

One SQLite file (``pending.sqlite3``) beside the spool, shared by every process of the
app (WAL, private permissions). Rows expire (``CMDRDATA_PENDING_TTL_DAYS``, 30 days by
default) and the table is bounded; ``seen`` records each work id's terminal sighting
once (``INSERT OR IGNORE``), so ``cmdrdata-autotrack doctor`` can list what was started
and never seen finished. Exactly-once billing does not depend on it: the event id of a
finished unit is derived from its work id, so a second sighting anywhere is the same
event, which the spool, the ledger and the events API keep once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .sqlite import connect, run_script

PENDING_FILE = "pending.sqlite3"
DEFAULT_TTL_S = 30 * 86400.0
MAX_ROWS = 200_000  # beyond this the oldest rows go first (a runaway app stays bounded)
MAX_ATTRS_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    work_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    attrs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_expiry ON pending (expires_at);
CREATE TABLE IF NOT EXISTS seen (
    work_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_at);
"""


class PendingStore:
    """The pending work of every process sharing ``path``; one connection per thread."""

    def __init__(self, path: Path, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._local = threading.local()
        self._writes = 0

    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():  # a forked child opens its own
            conn: sqlite3.Connection = held[1]
            return conn
        conn = connect(self.path)
        run_script(conn, self.path, _SCHEMA)
        self._local.conn = (os.getpid(), conn)
        return conn

    def remember(self, work_id: str, kind: str, attrs: dict[str, Any]) -> None:
        """Record who started ``work_id`` (the first record wins: a re-sighting keeps it)."""
        text = json.dumps(attrs, separators=(",", ":"), default=str)
        if len(text) > MAX_ATTRS_BYTES:
            text = json.dumps({k: v for k, v in attrs.items() if not k.startswith("cmdrdata.m")})
        now = time.time()
        conn = self._conn()
        conn.execute(
            "INSERT OR IGNORE INTO pending (work_id, kind, created_at, expires_at, attrs)"
            " VALUES (?, ?, ?, ?, ?)",
            (work_id, kind, now, now + self.ttl_s, text),
        )
        self._writes += 1
        if self._writes % 512 == 1:
            self.prune(now)

    def lookup(self, work_id: str) -> dict[str, Any] | None:
        row = (
            self._conn()
            .execute("SELECT attrs FROM pending WHERE work_id = ?", (work_id,))
            .fetchone()
        )
        if row is None:
            return None
        try:
            found = json.loads(row[0])
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def claim(self, work_id: str) -> bool:
        """Record the terminal sighting of ``work_id``: True for the first one anywhere."""
        now = time.time()
        cursor = self._conn().execute(
            "INSERT OR IGNORE INTO seen (work_id, seen_at, expires_at) VALUES (?, ?, ?)",
            (work_id, now, now + self.ttl_s),
        )
        return cursor.rowcount == 1

    def claim_many(self, work_ids: list[str]) -> set[str]:
        """:meth:`claim` for many ids in one transaction: the ids claimed first here."""
        now = time.time()
        conn = self._conn()
        first: set[str] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for work_id in work_ids:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO seen (work_id, seen_at, expires_at) VALUES (?, ?, ?)",
                    (work_id, now, now + self.ttl_s),
                )
                if cursor.rowcount == 1:
                    first.add(work_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return first

    def unseen(self, kinds: tuple[str, ...] = ("response", "run", "batch")) -> list[dict[str, Any]]:
        """Work started and never seen finished (not expired), oldest first."""
        marks = ",".join("?" for _ in kinds)
        rows = (
            self._conn()
            .execute(
                f"SELECT work_id, kind, created_at FROM pending WHERE kind IN ({marks})"
                " AND expires_at > ? AND work_id NOT IN (SELECT work_id FROM seen)"
                " ORDER BY created_at",
                (*kinds, time.time()),
            )
            .fetchall()
        )
        return [{"work_id": r[0], "kind": r[1], "created_at": r[2]} for r in rows]

    def prune(self, now: float | None = None) -> None:
        """Drop expired rows, and the oldest ones beyond :data:`MAX_ROWS`."""
        now = time.time() if now is None else now
        conn = self._conn()
        for table in ("pending", "seen"):
            conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
        conn.execute(
            "DELETE FROM pending WHERE work_id IN (SELECT work_id FROM pending"
            " ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
            (MAX_ROWS,),
        )

    def close(self) -> None:
        held = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None and held[0] == os.getpid():
            held[1].close()


_stores: dict[Path, PendingStore] = {}
_stores_lock = threading.Lock()


def store_for(spool_dir: Path, ttl_s: float = DEFAULT_TTL_S) -> PendingStore:
    """The process's store for the spool folder ``spool_dir`` (rows kept ``ttl_s``, the
    ``CMDRDATA_PENDING_TTL_DAYS`` of the settings that first open it)."""
    path = spool_dir / PENDING_FILE
    with _stores_lock:
        found = _stores.get(path)
        if found is None:
            found = _stores[path] = PendingStore(path, ttl_s)
        return found


def summary(spool_dir: Path) -> tuple[int, str] | None:
    """For ``doctor``: how much started work was never seen finished, and the oldest."""
    path = spool_dir / PENDING_FILE
    if not path.exists():
        return None
    found = PendingStore(path)
    try:
        unseen = found.unseen()
    finally:
        found.close()
    if not unseen:
        return 0, "no background work waiting to be seen finished"
    oldest = ", ".join(item["work_id"] for item in unseen[:5])
    more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
    return len(unseen), (
        f"{len(unseen)} started and not seen finished yet (billed when the app retrieves "
        f"them): {oldest}{more}"
    )
