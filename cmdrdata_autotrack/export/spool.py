"""The durable spool: a SQLite queue of usage events waiting for cmdrdata to acknowledge them.

Several processes (gunicorn workers, a ``cmdrdata-autotrack flush``) share one
spool. A sender *leases* the events it is about to send, so no two processes
send the same event at once; a lease left by a crashed process expires and
another process sends the event again, with the same idempotency key.

* ``events``: waiting, keyed by ``event_id`` (an event spooled twice is kept once).
* ``delivered``: ids acknowledged recently, so an event read again from a
  journal after a crash is not sent again: kept while a journal segment may still
  hold them, and a week for deferred work's events (``lasting_ids``), which a later
  sighting gives again (:meth:`Spool.prune_delivered`).
* ``dead_letters``: events the API refused for good, with the reason.
* ``meta``: running byte total (kept by the statements that add or remove events,
  in their transaction), the senders' shared state
  (circuit breaker, last error, last success) for ``doctor``, and which batch
  endpoints answered 404/405 (so that no process probes them again for a day).

Every statement that touches many events runs as one transaction with
``executemany`` (or ``IN`` lists): the per-event cost is SQLite's row work, not
Python's or a commit's.

Every waiting event and dead letter carries the identity (:mod:`.identity`) of
the process that metered it, and a sender leases only the events its own
identity serves: apps with different keys or endpoints can share one spool.
Rows of a spool made before identities existed get the unknown identity.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from .identity import UNKNOWN
from .journal import JOURNAL_MARGIN_S
from .sqlite import DamagedDatabase, connect, is_damage, run_script

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
    last_error TEXT,
    identity TEXT NOT NULL DEFAULT ''
);
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
-- a table of its own, so that dead_letters keeps the columns older versions insert
CREATE TABLE IF NOT EXISTS dead_letter_identities (
    event_id TEXT PRIMARY KEY,
    identity TEXT NOT NULL
) WITHOUT ROWID;
-- The ids of deferred work's events (a background response, a batch request): the work
-- may be sighted finished again at any time, so their delivered ids are kept the week.
CREATE TABLE IF NOT EXISTS lasting_ids (
    event_id TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('bytes', '0');
"""

# Versions up to 0.7.0 kept the byte total with these per-row triggers (a third of an
# event's SQLite cost in and out again). A spool opened by this version loses them and
# gets its total recounted; one an older version re-creates them in (a rolling upgrade)
# is counted by them alone until the next open, and the total is recounted when idle.
OLD_TRIGGERS = ("events_bytes_in", "events_bytes_out")
_RECOUNT = "UPDATE meta SET value = (SELECT COALESCE(SUM(size), 0) FROM events) WHERE key = 'bytes'"
_ADD_BYTES = "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'bytes'"

# After the migration, so that a spool made before identities existed has the column.
# Versions up to 0.7.2 also kept ``events_due`` (next_attempt_at, lease_until). No query
# of this version is planned with it (every lease, due time and count goes by identity,
# through ``events_by_identity``), yet each lease rewrote an entry of it per event: about
# an eighth of delivery's instructions. An older version sharing the spool makes it again
# when it opens, which changes no answer; this one drops it again.
INDEXES = """
CREATE INDEX IF NOT EXISTS events_by_identity ON events (identity, seq);
DROP INDEX IF EXISTS events_due;
"""

# Each page a transaction changes costs two writes to the write-ahead log and, at the
# checkpoint, a read and a write more: a lease or an acknowledgement of 500 events
# (1.2 kB each) changes about 170 pages of 4 kB, and delivery spent half its CPU in
# those system calls. Pages of 8 kB halve their count, and a cache that holds what a
# lease changed spares its acknowledgement reading it back (docs/performance.md has
# the counts). A spool an older version made keeps its 4 kB pages.
PAGE_SIZE = 8192
CACHE_KIB = 512

DELIVERED_KEEP_S = 7 * 24 * 3600
PRUNE_CHUNK = 20_000  # delivered ids deleted by one prune (one transaction)
_IN_CHUNK = 300  # ids per ``IN (...)`` list (three lists a query): under SQLite's old 999
_NO_BATCH = "no-batch:"  # meta key prefix: a batch endpoint that answered 404/405, and when
_INSERT = (
    "INSERT INTO events (event_id, body, size, created_at, identity, lease_owner, lease_until) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Leased(NamedTuple):
    """An event leased to a sender (a named tuple: one is made for every event sent, and a
    frozen dataclass costs three times as much to make)."""

    event_id: str
    body: str
    attempts: int
    identity: str = UNKNOWN


@dataclass(frozen=True)
class Progress:
    """Where a flush stands, for the events of some identities."""

    depth: int  # waiting (due, backing off or leased)
    leased: int  # of them, leased by a sender now (in flight)
    next_due_in: float | None  # seconds until the next unleased one is due (0: now)


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
        """Open (or create) the spool; raises :class:`DamagedDatabase` if it is not one."""
        self.path = path
        self.conn: sqlite3.Connection = connect(path, page_size=PAGE_SIZE, cache_kib=CACHE_KIB)
        run_script(self.conn, path, SCHEMA)
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if is_damage(exc):
                raise DamagedDatabase(path, str(exc)) from None
            raise
        run_script(self.conn, path, INDEXES)
        self._schema_version = -1
        self._triggers = False
        self._drop_old_triggers()

    def _migrate(self) -> None:
        """Give the events of a spool made before identities existed an identity column
        (unknown for the rows already there). Older versions' statements still work."""
        if self._has_identity():
            return
        conn = self.conn
        with self._transaction():  # one process migrates; the others see it done
            if not self._has_identity():
                conn.execute("ALTER TABLE events ADD COLUMN identity TEXT NOT NULL DEFAULT ''")

    def _drop_old_triggers(self) -> None:
        if not self._old_triggers():
            return
        with self._transaction():
            for name in OLD_TRIGGERS:
                self.conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            self.conn.execute(_RECOUNT)

    def _old_triggers(self) -> bool:
        """Whether an older version's byte triggers are there (they then keep the total);
        looked up again only when the schema changed."""
        version = self.conn.execute("PRAGMA schema_version").fetchone()[0]
        if version != self._schema_version:
            found = self.conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name IN (?, ?)",
                OLD_TRIGGERS,
            ).fetchone()[0]
            self._schema_version, self._triggers = version, bool(found)
        return self._triggers

    def _add_bytes(self, change: int) -> None:
        """Adjust the byte total (in the caller's transaction) unless triggers keep it."""
        if change and not self._old_triggers():
            self.conn.execute(_ADD_BYTES, (change,))

    def _forget_bytes_of(self, event_ids: Sequence[str]) -> None:
        """Take the waiting ``event_ids``' sizes off the total, before they are deleted."""
        if self._old_triggers():
            return
        for chunk, marks in _in_lists(event_ids):
            self.conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) - (SELECT COALESCE(SUM(size), 0) "
                f"FROM events WHERE event_id IN ({marks})) WHERE key = 'bytes'",
                chunk,
            )

    def _has_identity(self) -> bool:
        columns = self.conn.execute("PRAGMA table_info(events)").fetchall()
        return any(column[1] == "identity" for column in columns)

    def compact(self) -> None:
        """Return free pages to the file system, and recount the byte total (which an older
        version sharing the spool may have left behind): cheap, run when the queue is idle."""
        self._write([(_RECOUNT, ())])
        self.conn.executescript("PRAGMA incremental_vacuum;")  # runs it to the end

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, committed at the end of the block, rolled back if it raises
        (IMMEDIATE: the write lock is taken up front, never by upgrading a read lock)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _write(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        conn = self.conn
        with self._transaction():
            for sql, params in statements:
                conn.execute(sql, params)

    # --- in ---------------------------------------------------------------------------------

    def put(
        self,
        events: Iterable[tuple[str, str, object]],
        max_bytes: int,
        policy: str,
        identity: str = UNKNOWN,
    ) -> tuple[int, int]:
        """Spool ``(event_id, body, _)`` items metered under ``identity``; returns
        ``(added, dropped)`` (refused or evicted).

        Ids already waiting, delivered or dead-lettered are skipped. Past
        ``max_bytes``, ``drop-newest`` refuses new events and ``drop-oldest`` makes
        room by deleting the oldest waiting ones.
        """
        added, dropped, _ = self.put_leased(events, max_bytes, policy, identity)
        return added, dropped

    def put_leased(
        self,
        events: Iterable[tuple[str, str, object]],
        max_bytes: int,
        policy: str,
        identity: str = UNKNOWN,
        lease: tuple[str, float] | None = None,
        lasting: Collection[str] = (),
    ) -> tuple[int, int, list[Leased]]:
        """:meth:`put`, the rows already leased to ``lease`` (owner, until) when given:
        the importing process hands them to its own senders, with no lease to take.
        Also returns the events added (the ones now leased). ``lasting``: the ids among
        them that a later sighting may give again (deferred work, :meth:`prune_delivered`)."""
        conn = self.conn
        now = time.time()
        owner, until = lease if lease is not None else (None, 0.0)
        items = [(event_id, body) for event_id, body, _ in events]
        added = dropped = freed_all = 0
        rows: list[tuple[str, str, int, float, str, str | None, float]] = []
        with self._transaction():
            known = self._known([event_id for event_id, _ in items])
            fresh: dict[str, str] = {}
            for event_id, body in items:  # the first of an id repeated in one call wins
                if event_id not in known and event_id not in fresh:
                    fresh[event_id] = body
            total = self._bytes()
            inserted = rows
            if total + sum(len(body) for body in fresh.values()) <= max_bytes:
                rows += [(i, b, len(b), now, identity, owner, until) for i, b in fresh.items()]
            else:  # the bound applies: event by event, evicting or refusing
                inserted = []
                for event_id, body in fresh.items():
                    size = len(body)
                    if total + size > max_bytes and policy == "drop-oldest":
                        conn.executemany(_INSERT, rows)  # the oldest may be in this call
                        inserted += rows
                        rows = []
                        freed, evicted = self._evict_oldest(total + size - max_bytes)
                        total -= freed
                        freed_all += freed
                        dropped += evicted
                    if total + size > max_bytes:
                        dropped += 1
                        continue
                    rows.append((event_id, body, size, now, identity, owner, until))
                    total += size
                inserted += rows
            conn.executemany(_INSERT, rows)
            if lasting:
                conn.executemany(
                    "INSERT OR IGNORE INTO lasting_ids VALUES (?, ?)",
                    [(event_id, now + DELIVERED_KEEP_S) for event_id in lasting],
                )
            added = len(inserted)
            self._add_bytes(sum(row[2] for row in inserted) - freed_all)
        if lease is None:
            return added, dropped, []
        return added, dropped, [Leased(row[0], row[1], 0, identity) for row in inserted]

    def _known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` are waiting, delivered or dead-lettered already."""
        known: set[str] = set()
        for chunk, marks in _in_lists(event_ids):
            rows = self.conn.execute(
                f"SELECT event_id FROM events WHERE event_id IN ({marks}) UNION ALL "
                f"SELECT event_id FROM delivered WHERE event_id IN ({marks}) UNION ALL "
                f"SELECT event_id FROM dead_letters WHERE event_id IN ({marks})",
                (*chunk, *chunk, *chunk),
            ).fetchall()
            known.update(row[0] for row in rows)
        return known

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

    def lease(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        identities: Sequence[str] = (UNKNOWN,),
        max_bytes: int | None = None,
    ) -> list[Leased]:
        """Claim up to ``limit`` due events of ``identities`` for ``lease_s`` seconds,
        oldest first; with ``max_bytes``, no more than that many bytes of bodies (but at
        least one event)."""
        now = time.time()
        conn = self.conn
        where, params = _of(identities)
        with self._transaction():
            # One identity at a time: each is read in seq order from its index and stops
            # at ``limit``; with an IN list SQLite would sort every waiting row (bodies and
            # all) for each lease, a cost that grows with the backlog.
            rows: list[Any] = []
            for identity in identities:
                rows += conn.execute(
                    "SELECT seq, event_id, body, attempts, identity FROM events "
                    "WHERE next_attempt_at <= ? AND lease_until <= ? AND identity = ? "
                    "ORDER BY seq LIMIT ?",
                    (now, now, identity, limit),
                ).fetchall()
            if len(identities) > 1:
                rows.sort(key=itemgetter(0))  # seq
                del rows[limit:]
            if max_bytes is not None:
                rows = _within(rows, max_bytes)
            if rows:
                # One statement for them all: the rows taken are the first due ones by seq, so
                # the due rows up to the last one taken are exactly those (same transaction).
                conn.execute(
                    "UPDATE events SET lease_owner = ?, lease_until = ? "
                    f"WHERE seq <= ? AND next_attempt_at <= ? AND lease_until <= ? AND {where}",
                    (owner, now + lease_s, rows[-1][0], now, now, *params),
                )
        return [Leased(*row[1:]) for row in rows]

    def ack(self, event_ids: Sequence[str], size: int | None = None) -> None:
        """Acknowledged: out of the queue, remembered as delivered (one transaction).
        ``size``: the sum of their bodies' lengths, when the sender knows it (it holds the
        bodies), which spares reading the rows' sizes again before they go."""
        if not event_ids:
            return
        now = time.time()
        conn = self.conn
        with self._transaction():
            if size is None:
                self._forget_bytes_of(event_ids)
            deleted = conn.executemany(
                "DELETE FROM events WHERE event_id = ?", [(i,) for i in event_ids]
            ).rowcount
            if size is not None:
                if deleted == len(event_ids):
                    self._add_bytes(-size)
                elif not self._old_triggers():
                    # some were gone already (another sender's, after this lease ran out):
                    # which ones is not known, so the total is counted again
                    conn.execute(_RECOUNT)
            conn.executemany(
                "INSERT OR REPLACE INTO delivered VALUES (?, ?)", [(i, now) for i in event_ids]
            )

    def retry(self, event_id: str, delay_s: float, error: str) -> None:
        self.retry_many([event_id], delay_s, error)

    def retry_many(self, event_ids: Sequence[str], delay_s: float, error: str) -> None:
        """Count a failed attempt at each event; all are due again in ``delay_s`` (so that a
        batch that failed is retried as one batch)."""
        if not event_ids:
            return
        due, reason = time.time() + delay_s, error[:500]
        self._write_many(
            [
                (
                    "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, "
                    "lease_owner = NULL, lease_until = 0, last_error = ? WHERE event_id = ?",
                    [(due, reason, i) for i in event_ids],
                )
            ]
        )

    def _write_many(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        conn = self.conn
        with self._transaction():
            for sql, rows in statements:
                conn.executemany(sql, rows)

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
        self._write_many(
            [
                (
                    "UPDATE events SET lease_until = ? WHERE event_id = ?",
                    [(until, i) for i in event_ids],
                )
            ]
        )

    def make_due(self, identities: Sequence[str] | None = None) -> None:
        """Every waiting, unleased event (of ``identities``) is due now (a last attempt)."""
        where, params = _of(identities)
        self._write(
            [
                (
                    f"UPDATE events SET next_attempt_at = 0 WHERE lease_until <= ? AND {where}",
                    (time.time(), *params),
                )
            ]
        )

    def release(self, event_ids: Sequence[str], owner: str | None = None) -> None:
        """Give leased events back without counting an attempt (shutdown, breaker open).
        With ``owner``, only those still leased to it: a lease that ran out may be
        another sender's by now, and freeing that one could send its events twice."""
        if not event_ids:
            return
        sql = "UPDATE events SET lease_owner = NULL, lease_until = 0 WHERE event_id = ?"
        if owner is None:
            rows: list[tuple[str, ...]] = [(i,) for i in event_ids]
        else:
            sql += " AND lease_owner = ?"
            rows = [(i, owner) for i in event_ids]
        self._write_many([(sql, rows)])

    def dead_letter(self, event_id: str, reason: str, status: int | None) -> None:
        conn = self.conn
        with self._transaction():
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters "
                "SELECT event_id, body, ?, ?, attempts + 1, ? FROM events WHERE event_id = ?",
                (reason[:500], status, time.time(), event_id),
            )
            conn.execute(
                "INSERT OR REPLACE INTO dead_letter_identities "
                "SELECT event_id, identity FROM events WHERE event_id = ?",
                (event_id,),
            )
            self._forget_bytes_of([event_id])
            conn.execute("DELETE FROM events WHERE event_id = ?", (event_id,))

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
        with self._transaction():
            rows = conn.execute(
                "SELECT event_id, body, COALESCE(identity, '') FROM dead_letters "
                f"LEFT JOIN dead_letter_identities USING (event_id) {where}",
                params,
            ).fetchall()
            now, added = time.time(), 0
            for event_id, body, identity in rows:  # back to the sender of their own identity
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, body, size, created_at, identity) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (event_id, body, len(body), now, identity),
                )
                added += len(body) if cursor.rowcount == 1 else 0
                conn.execute("DELETE FROM dead_letters WHERE event_id = ?", (event_id,))
                conn.execute("DELETE FROM dead_letter_identities WHERE event_id = ?", (event_id,))
            self._add_bytes(added)
        return len(rows)

    def dead_letters(self, limit: int = 100) -> list[dict[str, object]]:
        rows = self.conn.execute(
            "SELECT event_id, reason, status, attempts, failed_at FROM dead_letters "
            "ORDER BY failed_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("event_id", "reason", "status", "attempts", "failed_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def prune_delivered(
        self,
        journal_start: float | None = None,
        keep_s: float = DELIVERED_KEEP_S,
        limit: int = PRUNE_CHUNK,
    ) -> int:
        """Forget up to ``limit`` delivered ids that no reading can give again; returns how
        many (``limit``: there may be more).

        An id is remembered so that its event, read again, is not sent again. It can be
        read again two ways: a journal segment imported a second time (a crash after its
        events were spooled, before the segment was deleted), and deferred work sighted
        finished again. The ids of deferred work (``lasting_ids``) are kept ``keep_s``.
        Any other id is kept only while a segment it may have come from is still in the
        journal: an event is delivered after its segment was started, so with
        ``journal_start`` (when the journal folder's oldest segment was started) the ids
        delivered before it, less :data:`JOURNAL_MARGIN_S`, are read from no segment.
        ``None`` (not known): kept ``keep_s``, as every id was before. Kept a week, the
        ids of a busy app grew this table to millions of rows, each acknowledgement a
        random write into it; ``limit`` bounds what one call deletes from such a table
        (a transaction, the write-ahead log's growth, the sender's pause).
        """
        now = time.time()
        week_ago = now - keep_s
        horizon = week_ago
        if journal_start is not None:
            horizon = max(week_ago, min(journal_start, now) - JOURNAL_MARGIN_S)
        conn = self.conn
        with self._transaction():
            forgotten = conn.execute(
                "DELETE FROM delivered WHERE event_id IN (SELECT event_id FROM delivered "
                "WHERE delivered_at < ? AND "
                "(delivered_at < ? OR event_id NOT IN (SELECT event_id FROM lasting_ids)) "
                "LIMIT ?)",
                (horizon, week_ago, limit),
            ).rowcount
            # a lasting id goes once its delivered id went (or it was never delivered and
            # is no longer waiting: dead-lettered, dropped)
            conn.execute(
                "DELETE FROM lasting_ids WHERE until < ? "
                "AND event_id NOT IN (SELECT event_id FROM delivered) "
                "AND event_id NOT IN (SELECT event_id FROM events)",
                (now,),
            )
        return forgotten

    def next_due_in(self, identities: Sequence[str] | None = None) -> float | None:
        """Seconds until the next event (of ``identities``) is due (0 if one is due now),
        ``None`` if there is none."""
        where, params = _of(identities)
        row = self.conn.execute(
            f"SELECT MIN(MAX(next_attempt_at, lease_until)) FROM events WHERE {where}", params
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, float(row[0]) - time.time())

    def progress(self, identities: Sequence[str] | None = None) -> Progress:
        """How many events (of ``identities``) wait, how many are in flight, and when the
        next one not in flight is due."""
        now = time.time()
        where, params = _of(identities)
        depth, leased, next_at = self.conn.execute(
            "SELECT COUNT(*), SUM(lease_until > ?1), MIN(CASE WHEN lease_until <= ?1 "
            f"THEN next_attempt_at END) FROM events WHERE {where}",
            (now, *params),
        ).fetchone()
        return Progress(
            depth=int(depth),
            leased=int(leased or 0),
            next_due_in=None if next_at is None else max(0.0, float(next_at) - now),
        )

    def stats(self, identities: Sequence[str] | None = None) -> Stats:
        """Counts for the events of ``identities`` (all events when ``None``)."""
        now = time.time()
        where, params = _of(identities)
        depth, due, oldest = self.conn.execute(
            "SELECT COUNT(*), SUM(next_attempt_at <= ? AND lease_until <= ?), MIN(created_at) "
            f"FROM events WHERE {where}",
            (now, now, *params),
        ).fetchone()
        dead = self.conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return Stats(
            depth=int(depth),
            bytes=self._bytes(),
            due=int(due or 0),
            dead_letters=int(dead),
            oldest_age_s=(now - oldest) if oldest is not None else None,
        )

    def waiting_by_identity(self) -> dict[str, tuple[int, float]]:
        """For each identity with waiting events: how many, and the oldest one's age in s."""
        now = time.time()
        rows = self.conn.execute(
            "SELECT identity, COUNT(*), MIN(created_at) FROM events GROUP BY identity"
        ).fetchall()
        return {identity: (int(count), now - float(oldest)) for identity, count, oldest in rows}

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

    def no_batch_since(self, url: str) -> float | None:
        """When a sender found that ``url`` is no batch endpoint (404/405), if one did."""
        row = self.conn.execute(
            "SELECT value FROM meta WHERE key = ?", (_NO_BATCH + url,)
        ).fetchone()
        try:
            found = json.loads(row[0])["at"] if row else None
        except (ValueError, TypeError, KeyError):
            return None
        return float(found) if isinstance(found, (int, float)) else None

    def remember_no_batch(self, url: str, status: int | None) -> None:
        """``url`` answered 404/405: senders use the single-event endpoint for a while."""
        value = json.dumps({"at": time.time(), "status": status})
        self._write([("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_NO_BATCH + url, value))])

    def forget_no_batch(self, url: str) -> None:
        """``url`` accepted a batch: let new processes use it straight away."""
        self._write([("DELETE FROM meta WHERE key = ?", (_NO_BATCH + url,))])


def _within(rows: list[tuple[object, ...]], max_bytes: int) -> list[tuple[object, ...]]:
    """The first ``rows`` whose bodies (column 2) fit in ``max_bytes``, at least one."""
    total = 0
    for index, row in enumerate(rows):
        total += len(str(row[2]))
        if total > max_bytes and index > 0:
            return rows[:index]
    return rows


def _in_lists(event_ids: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """``event_ids`` in chunks of ``_IN_CHUNK``, each with its ``?,?,...`` placeholders."""
    for start in range(0, len(event_ids), _IN_CHUNK):
        chunk = event_ids[start : start + _IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _of(identities: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """An SQL condition for "the event is one of these identities" (``None``: any)."""
    if identities is None:
        return "1", ()
    if not identities:
        return "0", ()
    return f"identity IN ({','.join('?' * len(identities))})", tuple(identities)
