"""The durable spool: a SQLite queue of usage events waiting for cmdrdata to acknowledge them.

Several processes (gunicorn workers, a ``cmdrdata-autotrack flush``) share one
spool. A sender *leases* the events it is about to send, so no two processes
send the same event at once; a lease left by a crashed process expires and
another process sends the event again, with the same idempotency key.

* ``events``: waiting, keyed by ``event_id`` (an event spooled twice is kept once).
* ``delivered``: ids acknowledged recently, so an event read again from a
  journal after a crash is not sent again (kept for a week).
* ``dead_letters``: events the API refused for good, with the reason.
* ``meta``: running byte total (kept by triggers) and the senders' shared state
  (circuit breaker, last error, last success) for ``doctor``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt_at, lease_until);
CREATE TABLE IF NOT EXISTS delivered (
    event_id TEXT PRIMARY KEY,
    delivered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('bytes', '0');
CREATE TRIGGER IF NOT EXISTS events_bytes_in AFTER INSERT ON events BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + NEW.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS events_bytes_out AFTER DELETE ON events BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) - OLD.size WHERE key = 'bytes';
END;
"""

DELIVERED_KEEP_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Leased:
    event_id: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Stats:
    depth: int
    bytes: int
    due: int
    dead_letters: int
    oldest_age_s: float | None


class Spool:
    """One connection to the spool (use one per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection = connect(path)
        self.conn.executescript(SCHEMA)

    def compact(self) -> None:
        """Return free pages to the file system (cheap; run when the queue is idle)."""
        self.conn.executescript("PRAGMA incremental_vacuum;")  # runs it to the end

    def close(self) -> None:
        self.conn.close()

    def _write(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # --- in ---------------------------------------------------------------------------------

    def put(
        self, events: Iterable[tuple[str, str, object]], max_bytes: int, policy: str
    ) -> tuple[int, int]:
        """Spool ``(event_id, body, _)`` items; returns ``(added, dropped)`` (refused or evicted).

        Ids already waiting, delivered or dead-lettered are skipped. Past
        ``max_bytes``, ``drop-newest`` refuses new events and ``drop-oldest`` makes
        room by deleting the oldest waiting ones.
        """
        conn = self.conn
        now = time.time()
        added = dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            total = self._bytes()
            for event_id, body, _ in events:
                known = conn.execute(
                    "SELECT 1 FROM events WHERE event_id = ?1 UNION ALL "
                    "SELECT 1 FROM delivered WHERE event_id = ?1 UNION ALL "
                    "SELECT 1 FROM dead_letters WHERE event_id = ?1 LIMIT 1",
                    (event_id,),
                ).fetchone()
                if known:
                    continue
                size = len(body)
                if total + size > max_bytes:
                    if policy == "drop-oldest":
                        freed, evicted = self._evict_oldest(total + size - max_bytes)
                        total -= freed
                        dropped += evicted
                    if total + size > max_bytes:
                        dropped += 1
                        continue
                conn.execute(
                    "INSERT INTO events (event_id, body, size, created_at) VALUES (?, ?, ?, ?)",
                    (event_id, body, size, now),
                )
                total += size
                added += 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added, dropped

    def _bytes(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()
        return int(row[0]) if row else 0

    def _evict_oldest(self, need: int) -> tuple[int, int]:
        """Delete the oldest waiting events until ``need`` bytes are free: (freed, evicted)."""
        freed = evicted = 0
        rows = self.conn.execute("SELECT seq, size FROM events ORDER BY seq").fetchall()
        for seq, size in rows:
            if freed >= need:
                break
            self.conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
            freed += size
            evicted += 1
        return freed, evicted

    # --- out --------------------------------------------------------------------------------

    def lease(self, owner: str, limit: int, lease_s: float) -> list[Leased]:
        """Claim up to ``limit`` due events for ``lease_s`` seconds, oldest first."""
        now = time.time()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT seq, event_id, body, attempts FROM events "
                "WHERE next_attempt_at <= ?1 AND lease_until <= ?1 ORDER BY seq LIMIT ?2",
                (now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE events SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                    [(owner, now + lease_s, row[0]) for row in rows],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [Leased(event_id, body, attempts) for _, event_id, body, attempts in rows]

    def ack(self, event_ids: Sequence[str]) -> None:
        now = time.time()
        statements: list[tuple[str, Sequence[object]]] = []
        for event_id in event_ids:
            statements.append(("DELETE FROM events WHERE event_id = ?", (event_id,)))
            statements.append(("INSERT OR REPLACE INTO delivered VALUES (?, ?)", (event_id, now)))
        if statements:
            self._write(statements)

    def retry(self, event_id: str, delay_s: float, error: str) -> None:
        self._write(
            [
                (
                    "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, "
                    "lease_owner = NULL, lease_until = 0, last_error = ? WHERE event_id = ?",
                    (time.time() + delay_s, error[:500], event_id),
                )
            ]
        )

    def reclaim(self, is_dead: Callable[[str], bool]) -> int:
        """Free the leases of owners that are gone (a process killed while sending)."""
        now = time.time()
        owners = [
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT lease_owner FROM events WHERE lease_until > ? "
                "AND lease_owner IS NOT NULL",
                (now,),
            ).fetchall()
        ]
        dead = [owner for owner in owners if is_dead(owner)]
        if dead:
            self._write(
                [
                    (
                        "UPDATE events SET lease_owner = NULL, lease_until = 0 "
                        "WHERE lease_owner = ?",
                        (owner,),
                    )
                    for owner in dead
                ]
            )
        return len(dead)

    def extend_lease(self, event_ids: Sequence[str], lease_s: float) -> None:
        until = time.time() + lease_s
        self._write(
            [
                ("UPDATE events SET lease_until = ? WHERE event_id = ?", (until, i))
                for i in event_ids
            ]
        )

    def make_due(self) -> None:
        """Every waiting, unleased event is due now (a last attempt before the process exits)."""
        self._write(
            [("UPDATE events SET next_attempt_at = 0 WHERE lease_until <= ?", (time.time(),))]
        )

    def release(self, event_ids: Sequence[str]) -> None:
        """Give leased events back without counting an attempt (shutdown, breaker open)."""
        self._write(
            [
                ("UPDATE events SET lease_owner = NULL, lease_until = 0 WHERE event_id = ?", (i,))
                for i in event_ids
            ]
        )

    def dead_letter(self, event_id: str, reason: str, status: int | None) -> None:
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO dead_letters "
                    "SELECT event_id, body, ?, ?, attempts + 1, ? FROM events WHERE event_id = ?",
                    (reason[:500], status, time.time(), event_id),
                ),
                ("DELETE FROM events WHERE event_id = ?", (event_id,)),
            ]
        )

    def resend_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back into the queue (all, or the ids given)."""
        where, params = (
            ("", ())
            if event_ids is None
            else (
                f"WHERE event_id IN ({','.join('?' * len(event_ids))})",
                tuple(event_ids),
            )
        )
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                f"SELECT event_id, body FROM dead_letters {where}", params
            ).fetchall()
            now = time.time()
            for event_id, body in rows:
                conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, body, size, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (event_id, body, len(body), now),
                )
                conn.execute("DELETE FROM dead_letters WHERE event_id = ?", (event_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    def dead_letters(self, limit: int = 100) -> list[dict[str, object]]:
        rows = self.conn.execute(
            "SELECT event_id, reason, status, attempts, failed_at FROM dead_letters "
            "ORDER BY failed_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("event_id", "reason", "status", "attempts", "failed_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def prune_delivered(self, keep_s: float = DELIVERED_KEEP_S) -> None:
        self._write([("DELETE FROM delivered WHERE delivered_at < ?", (time.time() - keep_s,))])

    def next_due_in(self) -> float | None:
        """Seconds until the next event is due (0 if one is due now), ``None`` if empty."""
        row = self.conn.execute(
            "SELECT MIN(MAX(next_attempt_at, lease_until)) FROM events"
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, float(row[0]) - time.time())

    def stats(self) -> Stats:
        now = time.time()
        depth, due, oldest = self.conn.execute(
            "SELECT COUNT(*), SUM(next_attempt_at <= ?1 AND lease_until <= ?1), MIN(created_at) "
            "FROM events",
            (now,),
        ).fetchone()
        dead = self.conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return Stats(
            depth=int(depth),
            bytes=self._bytes(),
            due=int(due or 0),
            dead_letters=int(dead),
            oldest_age_s=(now - oldest) if oldest is not None else None,
        )

    # --- shared state for doctor ------------------------------------------------------------

    def set_state(self, **values: object) -> None:
        self._write(
            [
                ("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"state.{k}", json.dumps(v)))
                for k, v in values.items()
            ]
        )

    def state(self) -> dict[str, object]:
        rows = self.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'state.%'").fetchall()
        return {key[len("state.") :]: json.loads(value) for key, value in rows}
