"""Opening the agent's SQLite files: WAL mode, a busy timeout, private permissions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path


def connect(path: Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection for one thread; several processes may share the file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = not path.exists()
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)
    if fresh:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
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
    return conn
