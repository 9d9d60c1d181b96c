"""The journal: where a usage event is written the moment its call ends.

Appending one line to a file this process owns costs a few microseconds, never
waits for another process, and survives the process being killed (the bytes
are in the operating system's page cache once ``write`` returns). A background
thread then moves journal segments into the shared spool (or the ledger).

Each process writes its own segment file ``<pid>-<nanos>.jsonl`` and holds an
exclusive ``flock`` on it while it is open, so a segment whose lock can be
taken is either closed (rotated) or was left by a process that died: either
way it is ready to import. After ``fork`` the child starts its own segment (a
hook of :mod:`..forksafe`, run in the child before any of its code).

A segment's first line is a header that says whose usage it holds (the
identity of :mod:`.identity`): whoever imports the segment routes its events by
it, whatever that importer's own settings. The folder is 0700 and segments are
0600, whatever the umask.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import forksafe
from ..paths import make_private_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to process liveness
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".jsonl"
HEADER_KEY = "cmdrdata_journal"  # a line with this key is a segment's header, not an event


class Journal:
    def __init__(
        self, directory: Path, max_bytes: int, header: Mapping[str, Any] | None = None
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        fields = {HEADER_KEY: 1, **(header or {})}
        self._header = (json.dumps(fields, separators=(",", ":")) + "\n").encode()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0  # bytes in this process's segments that are not imported yet
        self._segment_bytes = 0  # of them, in the open segment
        self._closed: dict[Path, int] = {}  # this process's closed segments, with their size
        forksafe.register(self.after_fork_in_child)

    # --- the app's side: append ----------------------------------------------------------

    def append(self, line: bytes) -> bool:
        """Write one event line; ``False`` when it could not be written (journal full, disk)."""
        with self._lock:
            if self._written + len(line) > self.max_bytes:
                return False
            fd = self._fd if self._fd is not None else self._open()
            os.write(fd, line)
            self._written += len(line)
            self._segment_bytes += len(line)
            return True

    def _open(self) -> int:
        make_private_dir(self.directory, tighten=True)
        path = self.directory / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, self._header)  # before any event: the segment says whose it is
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path = fd, path
        self._written += len(self._header)
        self._segment_bytes += len(self._header)
        return fd

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's segment is the parent's. Start afresh (the lock
        too: a parent's thread may have held it)."""
        self._lock = threading.Lock()
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor keeps its lock
        self._fd, self._path, self._written, self._segment_bytes = None, None, 0, 0
        self._closed = {}

    # --- the background side: rotate and read ----------------------------------------------

    def rotate(self) -> None:
        """Close the current segment (releasing its lock) so it can be imported."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                if self._path is not None:
                    self._closed[self._path] = self._segment_bytes
                self._fd, self._path, self._segment_bytes = None, None, 0

    def ready_segments(self) -> Iterator[tuple[Path, int]]:
        """Segments nobody is writing, each with an open locked descriptor (caller closes)."""
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.suffix != SUFFIX or path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not _try_lock(fd, path):
                os.close(fd)
                continue
            yield path, fd

    def imported(self, path: Path, fd: int) -> None:
        """A segment's events are safely in the spool: remove it."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
        with self._lock:
            own = self._closed.pop(path, None)
            if own is not None:
                self._written = max(0, self._written - own)

    def reconcile(self) -> None:
        """Credit this process's segments that another process imported."""
        with self._lock:
            for path in [p for p in self._closed if not p.exists()]:
                self._written = max(0, self._written - self._closed.pop(path))

    def pending_bytes(self) -> int:
        return self._written


def _try_lock(fd: int, path: Path) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    pid = path.name.split("-", 1)[0]  # pragma: no cover - Windows
    return not pid.isdigit() or not _alive(int(pid))  # pragma: no cover


def _alive(pid: int) -> bool:  # pragma: no cover - Windows
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def read_segment(fd: int) -> tuple[dict[str, Any] | None, list[bytes]]:
    """A segment's header (``None`` if it has none: an older version wrote it) and event lines."""
    lines = read_lines(fd)
    if lines and lines[0].startswith(b'{"' + HEADER_KEY.encode() + b'"'):
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if isinstance(header, dict):
            return header, lines[1:]
    return None, lines


def read_lines(fd: int) -> list[bytes]:
    """All complete lines of a segment (a torn last line is skipped)."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    lines = data.split(b"\n")
    return [line for line in lines[:-1] if line]
