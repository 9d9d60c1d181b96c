"""Shared counters, cached in the process: checks read memory, a thread syncs the store.

Every counter is one number in a shared store (SQLite on one machine, Redis for a
fleet) under a key that names the customer, what is counted and the window. A
check reads the process's cached total, in memory: the total the store had at
the last sync, plus what this process added since. A background thread syncs
every ``interval`` seconds: it adds this process's new usage to the store and
reads back the totals, which include every other process's.

So each process sees the others' usage at most one interval late. That is the
overshoot bound: past a limit, the others can still admit what they admit in
one interval (docs/limits.md). A counter the process has not cached yet is read
from the store on the spot, once per window.

When the store fails, the cache says so (:attr:`CounterCache.healthy` is false)
and the engine lets calls through unchecked; usage keeps being counted here and
is added to the store once it answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from .. import forksafe
from ..telemetry import metrics
from ..telemetry.logging import logger

DEFAULT_INTERVAL = 0.2  # seconds between two syncs: the overshoot bound (docs/limits.md)
IDLE_SECONDS = 10.0  # a counter not checked for this long leaves the cache (read again if used)
MAX_BACKOFF = 5.0  # longest pause between two attempts to reach a failing store


class Store(Protocol):
    """Where the counters of every process live."""

    name: str  # for messages: "SQLite /path/limits.sqlite3", "Redis localhost:6379"

    def sync(
        self, deltas: Mapping[str, int], expires: Mapping[str, float], read: Collection[str]
    ) -> dict[str, int]:
        """Add each delta (its key expires at ``expires[key]``), and return the totals of
        the keys of ``deltas`` and ``read``, atomically per key. Raises on failure."""
        ...

    def scan(self, now: float) -> dict[str, int]:
        """Every live counter (for ``cmdrdata-autotrack limits``)."""
        ...

    def after_fork(self) -> None: ...

    def close(self) -> None: ...


class _Entry:
    __slots__ = ("base", "expires", "inflight", "loaded", "pending", "used")

    def __init__(self, expires: float, now: float) -> None:
        self.base = 0  # the store's total at the last sync (our flushed usage included)
        self.inflight = 0  # ours, being added to the store right now
        self.pending = 0  # ours, not sent yet
        self.expires = expires  # when the window ends (the key is useless after)
        self.loaded = False  # base came from the store
        self.used = now


class CounterCache:
    """The process's view of the shared counters."""

    def __init__(
        self,
        store: Store,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval = interval
        self.clock = clock
        self.healthy = True
        self._entries: dict[str, _Entry] = {}
        self._init_threading()
        forksafe.register(self._after_fork)

    def _init_threading(self) -> None:
        self._lock = threading.Lock()  # the entries
        self._sync_lock = threading.Lock()  # one sync at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    # --- the request path ----------------------------------------------------------------

    def totals(self, keys: list[tuple[str, float]]) -> list[int | None]:
        """The current total of each ``(key, expires)``: ``None`` where it is not known
        (the store could not be read). Reads the store only for keys not cached yet."""
        now = self.clock()
        entries = self._entries
        missing = []  # not cached, or counted here before its total was read (after idling)
        for key, expires in keys:
            entry = entries.get(key)
            if entry is None or not entry.loaded:
                missing.append((key, expires))
        if missing and self.healthy:
            self._load(missing, now)
        out: list[int | None] = []
        with self._lock:
            for key, _ in keys:
                entry = entries.get(key)
                if entry is None or not entry.loaded:
                    out.append(None)
                else:
                    entry.used = now
                    out.append(entry.base + entry.inflight + entry.pending)
        return out

    def add(self, key: str, amount: int, expires: float) -> None:
        """Count ``amount`` (negative to give a reservation back) under ``key``."""
        self.add_many([(key, amount, expires)])

    def add_many(self, amounts: list[tuple[str, int, float]]) -> None:
        """Count each ``(key, amount, expires)``, under one lock."""
        if not amounts:
            return
        entries = self._entries
        with self._lock:
            for key, amount, expires in amounts:
                entry = entries.get(key)
                if entry is None:
                    entry = entries[key] = _Entry(expires, self.clock())
                entry.pending += amount
        if self._thread is None:
            self._start()

    def _load(self, missing: list[tuple[str, float]], now: float) -> None:
        try:
            found = self.store.sync({}, {}, [k for k, _ in missing])
        except Exception as exc:
            self._failed(exc)
            return
        with self._lock:
            for key, expires in missing:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry(expires, now)
                if not entry.loaded:  # a sync may have been quicker: its total is newer
                    entry.base = found.get(key, 0)
                    entry.loaded = True
        if self._thread is None:
            self._start()

    # --- the background ------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="cmdrdata-limits", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._pause()):
            try:
                self.sync()
            except Exception:  # never let the thread die: the next round tries again
                metrics.increment("pipeline_errors")
                logger.exception("cmdrdata: limits counter sync failed")

    def _pause(self) -> float:
        if self._failures == 0:
            return self.interval
        return float(min(MAX_BACKOFF, self.interval * 2 ** min(self._failures, 10)))

    def sync(self) -> bool:
        """Add this process's new usage to the store and read the totals back, now.

        Returns ``False`` when the store failed (the usage is kept for the next try)."""
        with self._sync_lock:
            now = self.clock()
            deltas: dict[str, int] = {}
            expires: dict[str, float] = {}
            read: list[str] = []
            with self._lock:
                for key, entry in list(self._entries.items()):
                    if entry.pending:
                        deltas[key] = entry.pending
                        expires[key] = entry.expires
                        entry.inflight, entry.pending = entry.pending, 0
                    elif entry.expires <= now or now - entry.used > IDLE_SECONDS:
                        del self._entries[key]  # its window is over, or nobody checks it
                    else:
                        read.append(key)
            if not deltas and not read:
                return True
            try:
                totals = self.store.sync(deltas, expires, read)
            except Exception as exc:
                with self._lock:
                    for key in deltas:
                        failed = self._entries.get(key)
                        if failed is not None:
                            failed.pending += failed.inflight
                            failed.inflight = 0
                self._failed(exc)
                return False
            with self._lock:
                for key, total in totals.items():
                    synced = self._entries.get(key)
                    if synced is not None:
                        synced.base, synced.inflight, synced.loaded = total, 0, True
            self._recovered()
            return True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        metrics.increment("limits_store_errors")
        if self.healthy:
            self.healthy = False
            logger.warning(
                "cmdrdata: the limits counter store (%s) cannot be reached (%s); calls go "
                "through unchecked until it answers again",
                self.store.name,
                _reason(exc),
            )

    def _recovered(self) -> None:
        self._failures = 0
        if not self.healthy:
            self.healthy = True
            logger.warning("cmdrdata: the limits counter store (%s) answers again", self.store.name)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and add what is left to the store (at exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.healthy:
            try:
                self.sync()
            except Exception:
                metrics.increment("limits_store_errors")
        self.store.close()

    def _after_fork(self) -> None:
        # The parent adds what it counted; the child starts from the parent's totals.
        self._init_threading()
        for entry in self._entries.values():
            entry.base += entry.inflight + entry.pending
            entry.inflight = entry.pending = 0
        self.store.after_fork()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
