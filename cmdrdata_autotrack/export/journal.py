"""The journal: where a usage event is written the moment its call ends.

Appending one line to a file this process owns costs a microsecond or two, never
waits for another process, and survives the process being killed: the segment
is a file mapped into memory (``MAP_SHARED``), so a line copied into it is in the
operating system's page cache at once, as it would be after ``write``, without a
system call per line (a ``write`` that grows a file also updates its inode in the
filesystem's journal, which costs ten times the copy). Its space is reserved on
disk beforehand (``posix_fallocate``), so a full disk refuses the segment, never a
line (a write to a mapped page without space would kill the process); where that
is not possible, segments are plain files appended with ``write``. A line's
newline is copied last: a line cut short by a kill has none and is skipped. The
background thread prepares the next segment ahead of time, closes the segments
written (a full one is only set aside by the app's thread), and moves closed
journal segments into the shared spool (or the ledger).

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

import contextlib
import json
import mmap
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
SEGMENT_BYTES = 1 << 20  # a mapped segment's reserved size; a longer line gets its own
_MAPPABLE = hasattr(os, "posix_fallocate") and hasattr(mmap, "MAP_SHARED")
# How long before the oldest segment's start an id delivered or recorded is still kept
# (``Journal.oldest_start``): a clock set back by less than this cannot make an id look
# older than the segment it came from.
JOURNAL_MARGIN_S = 300.0


class _Segment:
    """One open segment of this process: locked, its header written, lines appended at ``pos``."""

    __slots__ = ("capacity", "fd", "map", "path", "pos")

    def __init__(self, fd: int, path: Path, pos: int, capacity: int, mapped: mmap.mmap | None):
        self.fd, self.path, self.pos, self.capacity, self.map = fd, path, pos, capacity, mapped

    def room(self, size: int) -> bool:
        return self.map is None or self.pos + size <= self.capacity

    def write(self, line: bytes) -> None:
        mapped = self.map
        if mapped is None:
            os.write(self.fd, line)
            self.pos += len(line)
            return
        end = self.pos + len(line)
        mapped[self.pos : end - 1] = memoryview(line)[:-1]
        mapped[end - 1] = line[-1]  # the newline last: a line cut short has none
        self.pos = end

    def touch(self, size: int) -> None:
        """Fault in the pages of its first ``size`` bytes, past what it holds (writing zeros
        where zeros are: nothing a reader sees changes)."""
        mapped = self.map
        if mapped is None:
            return
        page = mmap.PAGESIZE
        if self.pos < self.capacity:
            mapped[self.pos] = 0  # the page the next line starts in
        for offset in range((self.pos // page + 1) * page, min(size, self.capacity), page):
            mapped[offset] = 0

    def close(self) -> None:
        """Close it, cut to what it holds (so readers see no reserved space), lock released."""
        try:
            if self.map is not None:
                self.map.close()
                os.ftruncate(self.fd, self.pos)
        finally:
            fd, self.fd = self.fd, -1  # closed: a child forked from now on has no copy
            os.close(fd)

    def remove(self) -> None:
        """Delete it (a segment that holds no event) and close it."""
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
        finally:
            self.close()

    def forget(self) -> None:
        """In a forked child: let go of the parent's segment without touching its file."""
        if self.map is not None:
            self.map.close()  # the child's mapping only; the parent's stays
        if self.fd >= 0:  # (the parent's thread may have been closing it at the fork)
            with contextlib.suppress(OSError):
                os.close(self.fd)  # the parent's descriptor keeps the lock


class Journal:
    def __init__(
        self, directory: Path, max_bytes: int, header: Mapping[str, Any] | None = None
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        fields = {HEADER_KEY: 1, **(header or {})}
        self._header = (json.dumps(fields, separators=(",", ":")) + "\n").encode()
        self._lock = threading.Lock()
        self._segment: _Segment | None = None  # the one lines go to
        self._spare: _Segment | None = None  # the next one, prepared off the app's thread
        # Segments no longer written and not closed yet. Closing one (unmapping and cutting
        # it) takes hundreds of microseconds, so it is done by rotate() without the lock
        # every line takes: the app's thread only sets a full segment aside.
        self._retired: list[_Segment] = []
        self._closing: list[_Segment] = []  # being closed by a rotate() right now
        self._written = 0  # bytes in this process's segments that are not imported yet
        self._closed: dict[Path, int] = {}  # this process's closed segments, with their size
        self._paths: set[Path] = set()  # the open and the spare segment: never ready to import
        self._writes = False  # this process has written lines (so it will write more)
        self._last_size = 0  # bytes the last closed segment held (how much the next may take)
        forksafe.register(self.after_fork_in_child)

    # --- the app's side: append ----------------------------------------------------------

    def append(self, line: bytes) -> bool:
        """Write one event line; ``False`` when it could not be written (journal full, disk)."""
        with self._lock:
            size = len(line)
            if self._written + size > self.max_bytes:
                return False
            segment = self._segment
            if segment is None or not segment.room(size):
                segment = self._next_segment(size)
                self._writes = True
            segment.write(line)
            self._written += size
            return True

    def _next_segment(self, size: int) -> _Segment:
        """The segment for a line of ``size`` bytes: the spare, or a new one (lock held)."""
        self._retire_segment()  # full: closed by the next rotate(), off this thread
        segment, self._spare = self._spare, None
        if segment is None or not segment.room(size):
            if segment is not None:
                self._discard(segment)
            segment = self._open(size)
        self._segment = segment
        return segment

    def _open(self, size: int = 0) -> _Segment:
        """A new segment, counted (lock held)."""
        return self._track(self._create(size))

    def _create(self, size: int = 0) -> _Segment:
        """A new segment file: locked, its header written, its space reserved (no lock needed)."""
        make_private_dir(self.directory, tighten=True)
        path = self.directory / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, self._header)  # before any event: the segment says whose it is
        except OSError:
            os.close(fd)
            raise
        pos = len(self._header)
        capacity = max(SEGMENT_BYTES, mmap.PAGESIZE * (1 + (pos + size) // mmap.PAGESIZE))
        mapped = _map(fd, pos, capacity) if _MAPPABLE else None
        return _Segment(fd, path, pos, capacity, mapped)

    def _track(self, segment: _Segment) -> _Segment:
        self._written += len(self._header)
        self._paths.add(segment.path)
        return segment

    def _retire_segment(self) -> None:
        """Set the current segment aside for rotate() to close (lock held)."""
        if self._segment is not None:
            self._retired.append(self._segment)
            self._segment = None

    def _discard(self, segment: _Segment) -> None:
        """A spare that holds no event: removed, its header no longer counted."""
        self._paths.discard(segment.path)
        self._written = max(0, self._written - len(self._header))
        segment.remove()

    def prepare(self) -> None:
        """Open the next segment now (the importer's thread), so the app's thread finds one
        ready: opening, locking and reserving a segment costs far more than a line. Only
        while this process writes lines (an importer of others' segments needs none)."""
        if self._spare is not None or not self._writes:
            return
        try:
            segment = self._create()
            # Touch the pages the app is likely to fill (twice what the last segment took):
            # a first write to a page of a mapped file faults, which costs the app's thread
            # far more than the copy. Pages past what is filled are cut off at rotation,
            # before the kernel would write them.
            segment.touch(max(4 * mmap.PAGESIZE, 2 * self._last_size))
        except OSError:  # the app's thread tries again when it needs one
            return
        with self._lock:
            if self._spare is None:
                self._spare = self._track(segment)
                return
        segment.remove()  # another thread prepared one meanwhile

    def discard_spare(self) -> None:
        """At shutdown: the prepared segment holds no event; it is not left behind."""
        with self._lock:
            spare, self._spare = self._spare, None
            if spare is not None:
                self._discard(spare)

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's segments are the parent's. Start afresh (the lock
        too: a parent's thread may have held it)."""
        self._lock = threading.Lock()
        for segment in (self._segment, self._spare, *self._retired, *self._closing):
            if segment is not None:
                segment.forget()
        self._segment = self._spare = None
        self._retired, self._closing = [], []
        self._written, self._writes = 0, False
        self._closed, self._paths = {}, set()

    # --- the background side: rotate and read ----------------------------------------------

    def rotate(self) -> None:
        """Close the current segment and those set aside full (releasing their locks) so
        they can be imported. They are closed outside the lock: the app's thread may
        append meanwhile, to the spare or a new segment."""
        with self._lock:
            self._retire_segment()
            closing, self._retired = self._retired, []
            self._closing += closing
        failure: Exception | None = None
        for segment in closing:
            try:
                segment.close()
            except Exception as exc:  # the others are closed all the same
                failure = failure or exc
            with self._lock:
                self._closing.remove(segment)
                self._paths.discard(segment.path)
                self._closed[segment.path] = segment.pos
                self._last_size = segment.pos
        if failure is not None:
            raise failure

    def ready_segments(self) -> Iterator[tuple[Path, int]]:
        """Segments nobody is writing, each with an open locked descriptor (caller closes)."""
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.suffix != SUFFIX or path in self._paths:
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

    def oldest_start(self) -> float | None:
        """When the oldest segment in the folder (any process's, open or not) was started, in
        seconds since the epoch, by its name; now when there is none, ``None`` when a name
        does not say. Every event in the folder was written after it."""
        oldest = time.time()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return oldest
        except OSError:
            return None
        for name in names:
            if name.endswith(SUFFIX):
                started = segment_start(name)
                if started is None:
                    return None
                oldest = min(oldest, started)
        return oldest

    def pending_bytes(self) -> int:
        return self._written

    def unimported(self) -> list[Path]:
        """This process's closed segments still in the journal (another importer, or this
        process's own thread, may be moving them right now)."""
        with self._lock:
            closed = [*self._closed, *(s.path for s in (*self._retired, *self._closing))]
        return [path for path in closed if path.exists()]


def segment_start(name: str) -> float | None:
    """When the segment named ``name`` (``<pid>-<nanoseconds>.jsonl``) was started, in seconds."""
    pid, _, nanos = name[: -len(SUFFIX)].partition("-")
    if not (pid.isascii() and pid.isdigit() and nanos.isascii() and nanos.isdigit()):
        return None
    return int(nanos) / 1e9


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


def _map(fd: int, used: int, capacity: int) -> mmap.mmap | None:
    """The segment's file mapped for writing, its space reserved; ``None``: write to it.

    ``used``: the bytes it holds (its header). Whatever fails leaves the file at that size,
    so lines written after it follow the header directly.
    """
    try:
        os.posix_fallocate(fd, 0, capacity)
        return mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):  # no space to reserve, or a filesystem that cannot map
        with contextlib.suppress(OSError):
            os.ftruncate(fd, used)
        return None


def read_lines(fd: int) -> list[bytes]:
    """All complete lines of a segment (a torn last line, and reserved space, are skipped)."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    lines = data.split(b"\n")
    return [line for line in lines[:-1] if line]
