"""Where the agent keeps its files: the user's cache folder (spool) and data folder (ledger)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

APP = "cmdrdata-autotrack"


def cache_dir() -> Path:
    """The per-user cache folder (XDG on Linux, Caches on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / APP


def data_dir() -> Path:
    """The per-user data folder, for files that are records rather than caches."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / APP


def spool_dir(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else cache_dir()


def ledger_path(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else data_dir() / "ledger.sqlite3"


@dataclass(frozen=True)
class Locations:
    """Every file of the agent's for one configuration."""

    spool_dir: Path
    journal_dir: Path
    spool_path: Path
    ledger_path: Path


def locations(spool: str | None, ledger: str | None) -> Locations:
    directory = spool_dir(spool)
    return Locations(
        directory, directory / "journal", directory / "spool.sqlite3", ledger_path(ledger)
    )
