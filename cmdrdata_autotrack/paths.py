"""Where the agent keeps its files, and the rules that keep them private.

By default the spool lives in the user's cache folder and the ledger in the
user's data folder. Every folder the agent creates is 0700 and every file 0600,
whatever the umask. A folder that other users can write to (or that belongs to
another user) is refused, as is a missing or unwritable home folder: the agent
then uses a private folder of its own in the temporary folder,
``<tmp>/cmdrdata-autotrack-<uid>``, and says so once. Resolving a location
never raises: a process with no home directory is still metered.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

APP = "cmdrdata-autotrack"
SPOOL_FILE = "spool.sqlite3"
LEDGER_FILE = "ledger.sqlite3"
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_PRIVATE_DIR = 0o700
_NO_HOME = "there is no home directory"
_ALONE: dict[Path, Path] = {}  # refused fallback folder -> this process's own instead


class NoHome(Exception):
    """The process has no usable home folder (no ``HOME`` and no passwd entry)."""


def _home() -> Path:
    try:
        return Path.home()
    except (RuntimeError, KeyError, OSError) as exc:  # no HOME, and no passwd entry
        raise NoHome(str(exc)) from None


def cache_dir() -> Path:
    """The per-user cache folder (XDG on Linux, Caches on macOS, LOCALAPPDATA on Windows).

    Raises :class:`NoHome` when it depends on a home folder there is none of.
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(_home() / "AppData" / "Local")
        return Path(base) / APP / "Cache"
    if sys.platform == "darwin":
        return _home() / "Library" / "Caches" / APP
    return Path(os.environ.get("XDG_CACHE_HOME") or _home() / ".cache") / APP


def data_dir() -> Path:
    """The per-user data folder, for files that are records rather than caches."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(_home() / "AppData" / "Local")
        return Path(base) / APP
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support" / APP
    return Path(os.environ.get("XDG_DATA_HOME") or _home() / ".local" / "share") / APP


# --- private folders and files ---------------------------------------------------------------


def _checks_owners() -> bool:
    return hasattr(os, "geteuid")  # POSIX; on Windows access is ACLs, not mode bits


def make_private_dir(path: Path, tighten: bool = False) -> None:
    """Create ``path`` and every missing parent, each 0700 whatever the umask.

    Parents that exist are left as they are. ``tighten``: ``path`` is the agent's
    own folder, so an existing one that is open to others is made 0700 too.
    """
    try:
        found = os.stat(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if tighten and _checks_owners() and _ours_and_open(found):
            with contextlib.suppress(OSError):
                os.chmod(path, _PRIVATE_DIR)
        return
    missing = [path]
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, _PRIVATE_DIR)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(folder, _PRIVATE_DIR)  # the umask only ever removes bits: put them back


def make_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist; make an existing one of ours 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten_file(path)
        return
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def tighten_file(path: Path) -> None:
    """Make a file of ours that others may read or write 0600 (a file an older version made)."""
    if not _checks_owners():
        return
    try:
        if _ours_and_open(os.stat(path)):
            os.chmod(path, 0o600)
    except OSError:
        pass


def _ours_and_open(found: os.stat_result) -> bool:
    return found.st_uid == os.geteuid() and bool(stat.S_IMODE(found.st_mode) & 0o077)


def folder_problem(path: Path, entries: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` may not hold the agent's files, or ``None`` (also when it does not exist).

    Refused: a folder of another user, and one others can write to, unless its
    sticky bit is set (as on ``/tmp``: others cannot then rename or delete what
    the agent puts there) and each of ``entries`` that exists in it is the agent's own.
    """
    if not _checks_owners():
        return None
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # not there yet: the agent makes it, private
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if not stat.S_ISDIR(found.st_mode):
        return "is not a folder"
    if found.st_uid != os.geteuid():
        return f"belongs to another user (uid {found.st_uid})"
    if found.st_mode & _OTHERS_WRITE:
        if not found.st_mode & stat.S_ISVTX:
            return "is writable by other users"
        for name in entries:
            try:
                entry = os.lstat(path / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                return f"has an entry {name} that cannot be examined ({exc.strerror})"
            if entry.st_uid != os.geteuid() or stat.S_ISLNK(entry.st_mode):
                return f"is writable by other users and its {name} is not the agent's own"
    return None


def _creatable(path: Path) -> bool:
    """Can this process create ``path``? (Its nearest existing ancestor is a writable folder.)"""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def private_temp_dir() -> Path:
    """``<tmp>/cmdrdata-autotrack-<uid>``: the folder used when the usual ones cannot be."""
    suffix = f"-{os.geteuid()}" if _checks_owners() else ""
    return Path(tempfile.gettempdir()) / f"{APP}{suffix}"


def _fallback(reason: str) -> tuple[Path, str]:
    """The private temporary folder (created 0700, checked), with the note that explains it."""
    try:
        folder = private_temp_dir()
    except OSError:  # no usable temporary folder at all
        folder = Path(os.sep, "tmp", APP)
    try:
        make_private_dir(folder, tighten=True)
        problem = folder_problem(folder)
        if problem is None and _checks_owners():
            found = os.lstat(folder)
            if stat.S_ISLNK(found.st_mode) or stat.S_IMODE(found.st_mode) & 0o077:
                problem = "is not private"
    except OSError as exc:
        problem = f"cannot be made ({exc.strerror})"
    if problem is None:
        return folder, f"{reason}; using {folder} instead"
    alone = _ALONE.get(folder)
    if alone is None:
        try:  # someone else holds the name: a folder of this process only (one for all)
            alone = _ALONE[folder] = Path(tempfile.mkdtemp(prefix=f"{folder.name}-"))
        except OSError as exc:  # nowhere to write: journal writes fail, are counted and logged
            return folder, f"{reason}, and no private folder can be made ({exc.strerror})"
    return alone, f"{reason}, and {folder} {problem}; using {alone} for this process only"


def _expand(configured: str) -> Path:
    return Path(configured).expanduser()  # raises RuntimeError for "~" without a home


def spool_location(configured: str | None) -> tuple[Path, str | None]:
    """The spool folder, and a note when it is not the one configured or usual."""
    try:
        folder = _expand(configured) if configured else cache_dir()
    except (NoHome, RuntimeError, KeyError):
        return _fallback(_NO_HOME)
    problem = folder_problem(folder, ("journal", SPOOL_FILE))
    if problem is None and not configured and not _creatable(folder):
        problem = "cannot be created (is the home folder writable?)"
    if problem is not None:
        return _fallback(f"the spool folder {folder} {problem}")
    return folder, None


def ledger_location(configured: str | None) -> tuple[Path, str | None]:
    """The ledger file, and a note when it is not the one configured or usual."""
    try:
        path = _expand(configured) if configured else data_dir() / LEDGER_FILE
    except (NoHome, RuntimeError, KeyError):
        folder, note = _fallback(_NO_HOME)
        return folder / LEDGER_FILE, note
    problem = folder_problem(path.parent, (path.name,))
    if problem is None and not configured and not _creatable(path.parent):
        problem = "cannot be created (is the home folder writable?)"
    if problem is not None:
        folder, note = _fallback(f"the ledger's folder {path.parent} {problem}")
        return folder / LEDGER_FILE, note
    return path, None


def spool_dir(configured: str | None) -> Path:
    return spool_location(configured)[0]


def ledger_path(configured: str | None) -> Path:
    return ledger_location(configured)[0]


@dataclass(frozen=True)
class Locations:
    """Every file of the agent's for one configuration."""

    spool_dir: Path
    journal_dir: Path
    spool_path: Path
    ledger_path: Path
    notes: tuple[str, ...] = ()  # why a folder is not the configured or usual one
    own_spool_dir: bool = True  # the agent's own folder (the default), not one configured


def locations(spool: str | None, ledger: str | None) -> Locations:
    directory, spool_note = spool_location(spool)
    ledger_file, ledger_note = ledger_location(ledger)
    notes = tuple(dict.fromkeys(note for note in (spool_note, ledger_note) if note))  # once
    return Locations(
        directory,
        directory / "journal",
        directory / SPOOL_FILE,
        ledger_file,
        notes,
        own_spool_dir=not spool or spool_note is not None,
    )
