"""The counters of one machine: a SQLite file in the spool folder, shared by its processes.

Each sync is one write transaction that adds every delta and reads the totals
back, so two processes never lose each other's increments. Reads for counters
not cached yet use a second connection: in WAL mode they never wait for a writer.
Counters whose window ended are deleted now and then.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from ..paths import make_private_dir, make_private_file

FILE_NAME = "limits.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""
_ADD = (
    "INSERT INTO counters (key, value, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value, "
    "expires = max(expires, excluded.expires)"
)
_CHUNK = 500  # keys per SELECT ... IN (...)
_PURGE_EVERY = 300  # syncs between two deletions of ended windows


class LocalStore:
    """Counters in ``<spool dir>/limits.sqlite3``."""

    def __init__(
        self, path: Path, busy_timeout_s: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.clock = clock
        self.name = f"SQLite {path}"
        self.busy_timeout_s = busy_timeout_s
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the writer
        self._read_lock = threading.Lock()
        self._syncs = 0
        self._abandoned: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        make_private_dir(self.path.parent)
        make_private_file(self.path)
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,  # each is used under its own lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # counters, not records: no fsync
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def sync(
        self, deltas: Mapping[str, int], expires: Mapping[str, float], read: Collection[str]
    ) -> dict[str, int]:
        if not deltas:
            with self._read_lock:
                if self._reader is None:
                    self._reader = self._connect()
                return _select(self._reader, list(read))
        with self._lock:
            if self._writer is None:
                self._writer = self._connect()
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_ADD, [(k, d, expires[k]) for k, d in deltas.items()])
                totals = _select(conn, [*deltas, *read])
                self._syncs += 1
                if self._syncs % _PURGE_EVERY == 1:
                    conn.execute("DELETE FROM counters WHERE expires < ?", (self.clock(),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return totals

    def scan(self, now: float) -> dict[str, int]:
        with self._read_lock:
            if self._reader is None:
                self._reader = self._connect()
            rows = self._reader.execute(
                "SELECT key, value FROM counters WHERE expires > ?", (now,)
            ).fetchall()
        return {str(k): int(v) for k, v in rows}

    def after_fork(self) -> None:
        # A connection must not be used across fork; closing it in the child could disturb
        # the parent's locks, so it is kept unused (one per fork, at most two).
        self._abandoned = [c for c in (self._writer, self._reader) if c is not None]
        self._writer = self._reader = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def close(self) -> None:
        for attr in ("_writer", "_reader"):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


def _select(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for key, value in conn.execute(
            f"SELECT key, value FROM counters WHERE key IN ({marks})", chunk
        ):
            out[str(key)] = int(value)
    for key in keys:
        out.setdefault(key, 0)
    return out
