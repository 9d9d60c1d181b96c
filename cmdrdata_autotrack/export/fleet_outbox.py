"""The importer's way into the fleet ledger, which never holds up the journal.

The importer hands each journal segment's events to a :class:`FleetRecorder`.
While the fleet ledger (:mod:`.fleet_ledger`) answers, they are written straight
in. When it does not (down, unreachable, psycopg missing), they go to the
*outbox*, a SQLite file in the spool folder (``fleet-outbox.sqlite3``), with one
warning, and the segment is done with: keyed usage is delivered to cmdrdata
all the same, and the journal never fills up waiting for a database.

The ledger is tried again after 1 s, then 2 s, ... up to 30 s; once it answers,
the outbox goes in, oldest first, by whichever process sharing the spool folder
gets there first. The ledger counts each event id once however often it is
written, so two processes draining at once, or a crash after a write and before
the outbox forgot it, change nothing. Like the spool, the outbox holds at most
``CMDRDATA_SPOOL_MAX_MB``; past it, ``CMDRDATA_SPOOL_OVERFLOW`` decides what is
dropped (counted and logged by the importer).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..telemetry.logging import register_secret, warn_once
from .fleet_ledger import DEFAULT_RETENTION_DAYS, FleetStore, FleetUnavailable, password_of
from .sqlite import DamagedDatabase, connect, is_damage, run_script

logger = logging.getLogger("cmdrdata_autotrack.delivery")

OUTBOX_FILE = "fleet-outbox.sqlite3"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
DRAIN_BATCH = 500  # events per ledger transaction when the outbox goes in
DRAIN_MOST = 20_000  # per import pass, so that the journal keeps moving meanwhile
PRUNE_EVERY_S = 600.0  # how often this process asks the ledger to prune

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    identity TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS outbox_bytes_in AFTER INSERT ON outbox BEGIN
    UPDATE meta SET value = value + NEW.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS outbox_bytes_out AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - OLD.size WHERE key = 'bytes';
END;
"""


class Outbox:
    """The events waiting for the fleet ledger (one connection; one per thread)."""

    def __init__(self, path: Path) -> None:
        """Open (or create) it; raises ``DamagedDatabase`` if the file is not a database."""
        self.path = path
        self.conn = connect(path)
        run_script(self.conn, path, OUTBOX_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def put(
        self, events: Iterable[tuple[str, str]], identity: str, max_bytes: int, policy: str
    ) -> tuple[int, int]:
        """Keep ``(event_id, json)`` items; returns ``(added, dropped)``. An id already
        waiting is kept once; past ``max_bytes`` the policy drops the newest (these) or
        the oldest waiting events."""
        conn, now = self.conn, time.time()
        added = dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            total = self._bytes()
            for event_id, body in events:
                size = len(body)
                if total + size > max_bytes and policy == "drop-oldest":
                    freed, evicted = self._evict(total + size - max_bytes)
                    total, dropped = total - freed, dropped + evicted
                if total + size > max_bytes:
                    dropped += 1
                    continue
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO outbox (event_id, identity, body, size, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (event_id, identity, body, size, now),
                )
                if cursor.rowcount:
                    total, added = total + size, added + 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added, dropped

    def _bytes(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()
        return int(row[0]) if row else 0

    def _evict(self, need: int) -> tuple[int, int]:
        freed = evicted = 0
        for seq, size in self.conn.execute("SELECT seq, size FROM outbox ORDER BY seq"):
            if freed >= need:
                break
            self.conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            freed, evicted = freed + size, evicted + 1
        return freed, evicted

    def oldest(self, limit: int) -> list[tuple[int, str, str, str]]:
        """Up to ``limit`` waiting events, oldest first: ``(seq, event_id, identity, json)``."""
        rows = self.conn.execute(
            "SELECT seq, event_id, identity, body FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def forget(self, seqs: list[int]) -> None:
        """The ledger has them: out of the outbox."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def waiting(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def outbox_path(spool_dir: Path) -> Path:
    return spool_dir / OUTBOX_FILE


def waiting_in(spool_dir: Path) -> int:
    """Events the outbox of ``spool_dir`` holds (0 when there is none)."""
    path = outbox_path(spool_dir)
    if not path.exists():
        return 0
    outbox = Outbox(path)
    try:
        return outbox.waiting()
    finally:
        outbox.close()


class FleetRecorder:
    """Writes imported events to the fleet ledger, or to the outbox while it cannot.

    One per importer (it holds a database connection and an outbox connection).
    Raises only ``DamagedDatabase`` (a damaged outbox file): the segment then stays
    in the journal, as for a damaged spool.
    """

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        store: FleetStore | None = None,
    ) -> None:
        register_secret(password_of(url))
        self.store = store or FleetStore(url, retention_days=retention_days)
        self.outbox_path = outbox_path(spool_dir)
        self._outbox: Outbox | None = None
        self._maybe_waiting = self.outbox_path.exists()  # an earlier process left some?
        self._retry_at = 0.0
        self._delay = 0.0
        self._pruned_at = -PRUNE_EVERY_S
        self.recorded = 0  # events new to the ledger, through this recorder
        self.deferred = 0  # events put in the outbox

    @property
    def where(self) -> str:
        return self.store.where

    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(self.outbox_path)
        return self._outbox

    def record(
        self,
        events: Sequence[tuple[str, str, Mapping[str, Any] | None]],
        identity: str,
        max_bytes: int,
        policy: str,
    ) -> tuple[int, int]:
        """Record one segment's events: ``(added, dropped)``. ``added`` counts the events
        new to the ledger, or kept in the outbox; ``dropped`` those a full outbox refused."""
        if not events:
            return 0, 0
        if self.usable():
            try:
                added, _ = self.store.put(events, identity=identity)
            except FleetUnavailable as exc:
                self._failed(exc)
            else:
                self._answered()
                self.recorded += added
                return added, 0
        try:
            added, dropped = self.outbox().put(
                [(event_id, raw) for event_id, raw, _ in events], identity, max_bytes, policy
            )
        except sqlite3.DatabaseError as exc:
            self._forget_outbox()
            if is_damage(exc):
                raise DamagedDatabase(self.outbox_path, str(exc)) from None
            raise
        self._maybe_waiting = True
        self.deferred += added
        return added, dropped

    def tick(self, now: float | None = None) -> int:
        """Between imports: put the outbox into the ledger (when it answers), and prune
        now and then. Returns the events the outbox handed over."""
        moved = self.drain()
        moment = time.monotonic() if now is None else now
        if self.usable() and moment - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = moment
            try:
                self.store.prune()
            except FleetUnavailable as exc:
                self._failed(exc)
        return moved

    def drain(self) -> int:
        """Move what the outbox holds into the ledger, oldest first (a bounded amount)."""
        moved = 0
        while self._maybe_waiting and self.usable() and moved < DRAIN_MOST:
            waiting = self.outbox().oldest(DRAIN_BATCH)
            if not waiting:
                self._maybe_waiting = False
                break
            by_identity: dict[str, list[tuple[str, str, None]]] = {}
            for _, event_id, identity, body in waiting:
                by_identity.setdefault(identity, []).append((event_id, body, None))
            try:
                for identity, events in by_identity.items():
                    added, _ = self.store.put(events, identity=identity)
                    self.recorded += added
            except FleetUnavailable as exc:
                self._failed(exc)
                break
            self.outbox().forget([seq for seq, *_ in waiting])
            self._answered()
            moved += len(waiting)
        if moved:
            logger.info("cmdrdata: %d waiting events recorded in the fleet ledger", moved)
        return moved

    def waiting(self) -> int:
        """Events in the outbox (this process's and others' sharing the spool folder)."""
        if not self.outbox_path.exists():
            return 0
        return self.outbox().waiting()

    def usable(self) -> bool:
        """Whether to try the ledger now (not while waiting out a failure)."""
        return time.monotonic() >= self._retry_at

    def _failed(self, exc: FleetUnavailable) -> None:
        self._delay = min(max(self._delay * 2, RETRY_FIRST_S), RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._delay
        warn_once(
            "fleet-ledger:" + exc.where,
            "cmdrdata: cannot write to the fleet ledger (%s); usage waits in %s and is "
            "recorded when it answers",
            exc,
            self.outbox_path,
        )

    def _answered(self) -> None:
        self._delay = 0.0
        self._retry_at = 0.0

    def _forget_outbox(self) -> None:
        """Drop the outbox connection (a damaged file is opened afresh once repaired)."""
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            with contextlib.suppress(Exception):
                outbox.close()

    def close(self) -> None:
        self.store.close()
        self._forget_outbox()
