"""Opening the agent's SQLite files: WAL mode, a busy timeout, private permissions.

A file that is not a database any more (overwritten, truncated) is reported as
:class:`DamagedDatabase`, with what to do about it, instead of a traceback.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..paths import make_private_dir, make_private_file, tighten_file

_DAMAGE_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_DAMAGE_TEXTS = ("file is not a database", "database disk image is malformed")


class DamagedDatabase(Exception):
    """One of the agent's SQLite files cannot be read as a database."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a readable SQLite database ({reason})")
        self.path = path
        self.reason = reason

    @property
    def advice(self) -> str:
        """How to recover, in one sentence: nothing still in the journal is lost by it."""
        aside = self.path.with_name(self.path.name + ".damaged")
        return (
            f"move it aside (mv {self.path} {aside}) and run again; keep the journal "
            "folder: it holds the events not imported yet"
        )


def is_damage(exc: BaseException) -> bool:
    """Is ``exc`` SQLite saying the file itself is damaged (not busy, not full)?"""
    if isinstance(exc, DamagedDatabase):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name is not None:
        return name in _DAMAGE_CODES
    return any(text in str(exc) for text in _DAMAGE_TEXTS)


def connect(
    path: Path,
    busy_timeout_s: float = 10.0,
    *,
    page_size: int | None = None,
    cache_kib: int | None = None,
) -> sqlite3.Connection:
    """A connection for one thread; several processes may share the file.

    ``page_size``: for a file this makes (an existing file keeps its own);
    ``cache_kib``: this connection's page cache (:data:`CACHE_KIB` unless given).

    The folder is created 0700 and the file 0600 before SQLite opens it (SQLite
    gives its -wal and -shm files the database file's mode). Raises
    :class:`DamagedDatabase` when the file is not a database.
    """
    make_private_dir(path.parent)
    make_private_file(path)
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_s, isolation_level=None, cached_statements=STATEMENTS
    )
    try:
        _configure(conn, busy_timeout_s, page_size, cache_kib or CACHE_KIB)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_damage(exc):
            raise DamagedDatabase(path, str(exc)) from None
        raise
    for suffix in ("-wal", "-shm"):  # left by an older version, maybe readable by others
        tighten_file(path.with_name(path.name + suffix))
    return conn


CACHE_KIB = 256  # per connection
# Prepared statements kept per connection. The agent's queries with IN (...) lists have a
# text per list length: the default (128) would keep that many compiled plans a connection.
STATEMENTS = 16


def _configure(
    conn: sqlite3.Connection, busy_timeout_s: float, page_size: int | None, cache_kib: int
) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if page_size is not None:  # before the first write fixes it (a no-op on a made file)
        conn.execute(f"PRAGMA page_size = {int(page_size)}")
    # Before anything else touches a new file: delete-heavy queues give pages back to the
    # file system (`PRAGMA incremental_vacuum`) instead of growing a free list.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    # WAL persists in the file: only the first connection switches it (switching needs a
    # lock that other connections' busy handlers do not wait for).
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        for attempt in range(50):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.01 * (attempt + 1))
    conn.execute("PRAGMA synchronous = NORMAL")
    # A small page cache: the agent mostly appends, reads what it just wrote and deletes
    # it, and SQLite's default (2 MiB per connection, with a connection per thread and per
    # store) would be memory the app pays for. The spool asks for a little more (what one
    # lease changes, which its acknowledgement changes again).
    conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")


def run_script(conn: sqlite3.Connection, path: Path, script: str) -> None:
    """``executescript`` that reports a damaged file as :class:`DamagedDatabase`."""
    try:
        conn.executescript(script)
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            conn.close()
            raise DamagedDatabase(path, str(exc)) from None
        raise
