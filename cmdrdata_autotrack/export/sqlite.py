"""Opening the agent's SQLite files: WAL mode, a busy timeout, private permissions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
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
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn
