"""The metered record: what was metered with a key, kept locally for ``report`` and ``reconcile``.

With ``CMDRDATA_API_KEY`` set, usage events go to cmdrdata and leave the spool once
acknowledged; the local ledger never sees them. So that ``report`` and
``reconcile`` still have the numbers, the importer also sums what it spools here:
``metered.sqlite3`` in the spool folder (0600, like the spool), written one
transaction per journal segment. It holds sums, never the events themselves:

* ``usage_hourly``: per UTC hour and *group* (customer, model, and what reconcile
  tells apart: operation, API type, service tier, the OpenAI key's last four
  characters, project, estimated or not, the descriptive units such as image size),
  a column per billable unit of :mod:`..usage.units` and the call counters; kept
  for ``CMDRDATA_LEDGER_RETENTION`` days (35). The same sums as the fleet ledger's
  hourly rows (:func:`.fleet_ledger.summed`).
* ``usage_minutely``: the same per minute, for 48 hours: ``reconcile --bucket 1m``,
  and ranges that start or end mid-hour. The *minute horizon* (in ``meta``) says
  from when on they are complete; pruning moves it forward by whole hours.
* ``groups``: what each group is (a row id stands for it in the sums).
* ``recorded``: a 16-byte hash of each event id recorded, with the minute it was
  recorded in (the column is named ``hour``: it held the hour up to 0.7.2, and an
  older version's pruning compares it the same way). An event counts only if its id
  is new here, checked and added in the write transaction (SQLite's write lock makes
  two importers take turns): a journal segment imported again after a crash
  (spooled, not yet deleted) or the same event imported twice changes nothing.
  Deferred work's ids (``lasting``: the same event at each sighting) are kept 48
  hours from when they were recorded. Any other id is kept while a journal segment
  may still hold it (:meth:`MeteredStore.forget_ids`, the spool's rule). A segment
  left by a crash is imported by the next import pass of any process sharing the
  spool folder, and pruning runs only after a pass, so however long the machine was
  down the ids it needs are there.

Failing to write (a damaged or read-only file, a full disk) never holds up
delivery: :class:`MeteredRecorder` logs it once, counts the events
(``metered_unrecorded``) and flags the gap in the spool's state for ``reconcile``
and ``doctor``; it tries the file again after 30 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..telemetry import metrics
from ..telemetry.logging import warn_once
from ..usage.units import NUMERIC
from .fleet_ledger import (
    COUNTERS,
    DEFAULT_RETENTION_DAYS,
    HOUR,
    RAW_WINDOW_S,
    Group,
    Summary,
    event_time,
    floor_to,
    group_of,
    is_object,
    plan,
    summed,
)
from .journal import JOURNAL_MARGIN_S
from .sqlite import DamagedDatabase, connect, is_damage, run_script

if TYPE_CHECKING:
    from .spool import Spool

logger = logging.getLogger("cmdrdata_autotrack.delivery")

METERED_FILE = "metered.sqlite3"
MINUTE = 60
MINUTE_WINDOW_S = RAW_WINDOW_S  # minute sums: as long as the fleet ledger keeps events
DEDUP_WINDOW_S = RAW_WINDOW_S  # event ids, from when they were recorded
PRUNE_EVERY_S = 600.0  # shared by the processes of a spool folder (``pruned_at`` in meta)
FORGET_EVERY_S = 60.0  # how often an importer forgets the ids no journal segment holds
RETRY_S = 30.0  # after a failure, the file is tried again this much later
BUSY_TIMEOUT_S = 5.0  # the importer waits at most this long for another writer
WRITE_CHUNK = 2_000  # events per write transaction
SCHEMA_VERSION = 1
GAP_STATE = "metered_gap"  # the spool state that flags events missing from the record
_PRUNE_CHUNK = 10_000  # rows deleted per transaction
_IN_CHUNK = 500  # ids per ``IN (...)`` list
_T_MIN = -(2**62)

# The summed columns: the call counters, then every numeric unit (a new unit is a new column,
# added to an existing file when it is opened for writing).
COLUMNS: tuple[tuple[str, str], ...] = (
    *((name, "INTEGER NOT NULL DEFAULT 0") for name in COUNTERS),
    *(
        (u.name, "INTEGER NOT NULL DEFAULT 0" if u.kind == "count" else "REAL NOT NULL DEFAULT 0")
        for u in NUMERIC
    ),
)
NAMES = tuple(name for name, _ in COLUMNS)
_GROUP_FIELDS = (
    "customer_id",
    "model",
    "operation",
    "endpoint",
    "service_tier",
    "key_suffix",
    "project_id",
    "estimated",
    "descriptors",
)
_SUMS = {"usage_hourly": "hour", "usage_minutely": "minute"}  # table -> its time column


def _sums_table(table: str, column: str) -> str:
    units = "".join(f",\n    {name} {decl}" for name, decl in COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {column} INTEGER NOT NULL,\n"
        f"    group_ref INTEGER NOT NULL{units},\n    PRIMARY KEY ({column}, group_ref)\n"
        ") WITHOUT ROWID;\n"
        f"CREATE INDEX IF NOT EXISTS {table}_by_group ON {table} (group_ref);\n"
    )


SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
INSERT OR IGNORE INTO meta VALUES ('minute_horizon', '-4611686018427387904');
INSERT OR IGNORE INTO meta VALUES ('pruned_at', '0');
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    model TEXT NOT NULL,
    operation TEXT,
    endpoint TEXT,
    service_tier TEXT,
    key_suffix TEXT,
    project_id TEXT,
    estimated INTEGER NOT NULL,
    descriptors TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_by_customer ON groups (customer_id);
CREATE TABLE IF NOT EXISTS recorded (id BLOB PRIMARY KEY, hour INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recorded_by_hour ON recorded (hour);
CREATE TABLE IF NOT EXISTS lasting (id BLOB PRIMARY KEY) WITHOUT ROWID;
"""
    + _sums_table("usage_hourly", "hour")
    + _sums_table("usage_minutely", "minute")
)


def metered_path(spool_dir: Path) -> Path:
    return spool_dir / METERED_FILE


def _id_key(event_id: str) -> bytes:
    """The id as recorded: 16 bytes of its SHA-256 (any id, however long or odd)."""
    return hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).digest()[:16]


@dataclass(frozen=True)
class Pruned:
    minute_rows: int
    hourly_rows: int
    event_ids: int
    groups: int
    minute_horizon: int


class MeteredStore:
    """One connection to the metered record (one per thread); opens when first used.

    ``read_only``: for ``report`` and ``reconcile``, which never create or change it
    (SQLite errors are raised as they are). Writing raises :class:`DamagedDatabase`
    for a file that is not a database, else SQLite's own errors.
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        read_only: bool = False,
        minute_window_s: float = MINUTE_WINDOW_S,
        dedup_window_s: float = DEDUP_WINDOW_S,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.retention_s = max(float(retention_days), 1 / 24) * 86400
        self.minute_window_s = min(max(float(minute_window_s), HOUR), self.retention_s)
        self.dedup_window_s = max(float(dedup_window_s), HOUR)
        self._conn: sqlite3.Connection | None = None
        self._columns: dict[str, tuple[str, ...]] = {}  # what the file's sums tables have

    @property
    def where(self) -> str:
        return str(self.path)

    # --- the connection ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.read_only:
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10.0
            )
            conn.isolation_level = None
        else:
            conn = connect(self.path, BUSY_TIMEOUT_S)
            run_script(conn, self.path, SCHEMA)
        try:
            if _meta(conn, "schema", 0) > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} was written by a newer version of cmdrdata-autotrack "
                    f"(schema {_meta(conn, 'schema', 0)}); upgrade to use it"
                )
            if not self.read_only:
                self._add_missing_columns(conn)
            self._columns = {table: _columns(conn, table) for table in _SUMS}
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not self.read_only and is_damage(exc):
                raise DamagedDatabase(self.path, str(exc)) from None
            raise
        self._conn = conn
        return conn

    def _add_missing_columns(self, conn: sqlite3.Connection) -> None:
        """Columns for units added since the file was made (several processes may race)."""
        if all(set(NAMES) <= set(_columns(conn, table)) for table in _SUMS):
            return
        with _transaction(conn):
            for table in _SUMS:
                existing = set(_columns(conn, table))
                for name, declaration in COLUMNS:
                    if name not in existing:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- writing ----------------------------------------------------------------------------

    def put(
        self,
        events: Iterable[tuple[str, str, Mapping[str, Any] | None]],
        now: float | None = None,
        lasting: Collection[str] = (),
    ) -> int:
        """Sum ``(event_id, json, event)`` items into the record; returns how many were new
        (the others were recorded already, or are not usage events). ``lasting``: the ids
        a later sighting may give again (deferred work's), kept the whole dedup window."""
        moment = time.time() if now is None else now
        fresh: dict[bytes, tuple[float, Mapping[str, Any]]] = {}
        for event_id, raw, event in events:
            if event is None:
                try:
                    event = json.loads(raw)
                except (TypeError, ValueError):
                    continue
            if not is_object(event) or not isinstance(event_id, str):
                continue
            key = _id_key(event_id)
            if key not in fresh:  # the first of an id repeated in one call wins
                fresh[key] = (event_time(event, moment), event)
        ordered = sorted(fresh)
        again = {_id_key(event_id) for event_id in lasting}
        added = 0
        for start in range(0, len(ordered), WRITE_CHUNK):
            added += self._write(ordered[start : start + WRITE_CHUNK], fresh, moment, again)
        return added

    def _write(
        self,
        ids: list[bytes],
        fresh: Mapping[bytes, tuple[float, Mapping[str, Any]]],
        now: float,
        lasting: set[bytes],
    ) -> int:
        """One transaction: the new ids among ``ids``, and their sums per hour and minute."""
        conn = self._connection()
        with _transaction(conn):
            known = _known(conn, ids)
            new = [i for i in ids if i not in known]
            if not new:
                return 0
            conn.executemany(
                "INSERT INTO recorded VALUES (?, ?)", [(i, floor_to(now, MINUTE)) for i in new]
            )
            if lasting:
                kept = [(i,) for i in new if i in lasting]
                conn.executemany("INSERT OR IGNORE INTO lasting VALUES (?)", kept)
            items = [(fresh[i][0], fresh[i][1], group_of(fresh[i][1])) for i in new]
            horizon = _meta(conn, "minute_horizon", _T_MIN)
            refs = _group_refs(conn, {group for _, _, group in items})
            worked_out: dict[int, dict[str, int | float]] = {}  # each event's quantities, once
            self._add(conn, "usage_hourly", summed(items, HOUR, worked_out), refs)
            recent = [item for item in items if item[0] >= horizon]  # older: per hour only
            self._add(conn, "usage_minutely", summed(recent, MINUTE, worked_out), refs)
        return len(new)

    def _add(
        self,
        conn: sqlite3.Connection,
        table: str,
        sums: Mapping[tuple[int, Group], Mapping[str, int | float]],
        refs: Mapping[Group, int],
    ) -> None:
        if not sums:
            return
        column = _SUMS[table]
        keys = [(start, refs[group]) for start, group in sums]
        conn.executemany(f"INSERT OR IGNORE INTO {table} ({column}, group_ref) VALUES (?, ?)", keys)
        # one statement for every row: each adds its own quantities (zeros where it has none)
        sets = ", ".join(f"{name} = {name} + ?" for name in NAMES)
        conn.executemany(
            f"UPDATE {table} SET {sets} WHERE {column} = ? AND group_ref = ?",
            [
                (*(quantities.get(name, 0) for name in NAMES), start, ref)
                for (start, ref), quantities in zip(keys, sums.values(), strict=True)
            ],
        )

    def prune(self, now: float | None = None, *, every_s: float = PRUNE_EVERY_S) -> Pruned | None:
        """Delete the minute sums past the minute window, the hourly sums past the
        retention and the ids past the dedup window (whole hours), a chunk per
        transaction. ``None`` when another process pruned less than ``every_s`` ago."""
        moment = time.time() if now is None else now
        conn = self._connection()
        with _transaction(conn):
            if _meta(conn, "pruned_at", 0) > moment - every_s:
                return None
            _set_meta(conn, "pruned_at", moment)
            # The horizon moves first: readers then take what is deleted next from the
            # hourly sums, never from a half-deleted hour of minutes.
            horizon = max(
                _meta(conn, "minute_horizon", _T_MIN),
                floor_to(moment - self.minute_window_s, HOUR),
            )
            _set_meta(conn, "minute_horizon", horizon)
        minute_rows = self._delete_before("usage_minutely", "minute", horizon)
        hourly_rows = self._delete_before(
            "usage_hourly", "hour", floor_to(moment - self.retention_s, HOUR)
        )
        event_ids = self._delete_before(
            "recorded", "hour", floor_to(moment - self.dedup_window_s, HOUR)
        )
        with _transaction(conn):  # a deferred work's id goes with its recorded id
            conn.execute("DELETE FROM lasting WHERE id NOT IN (SELECT id FROM recorded)")
        groups = 0
        if minute_rows or hourly_rows:  # a group left without sums goes too (each looked up)
            with _transaction(conn):
                groups = conn.execute(
                    "DELETE FROM groups WHERE NOT EXISTS (SELECT 1 FROM usage_hourly "
                    "WHERE group_ref = groups.id) AND NOT EXISTS (SELECT 1 FROM usage_minutely "
                    "WHERE group_ref = groups.id)"
                ).rowcount
        if minute_rows or hourly_rows or event_ids:
            conn.executescript("PRAGMA incremental_vacuum;")  # the freed pages, to the end
        return Pruned(minute_rows, hourly_rows, event_ids, groups, horizon)

    def forget_ids(
        self, journal_start: float | None, now: float | None = None, limit: int = _PRUNE_CHUNK
    ) -> int:
        """Forget up to ``limit`` recorded ids no journal segment can give again, but deferred
        work's, in one transaction; returns how many (``limit``: there may be more).

        ``journal_start``: when the journal folder's oldest segment was started (``None``:
        not known, nothing is forgotten). As the spool's ``prune_delivered``: an event is
        recorded after its segment was started, so an id recorded a whole minute before
        ``journal_start`` (less the clock margin) is in no segment left. Kept 48 hours, a
        busy app's ids made this table millions of rows, each import a random write into
        it."""
        if journal_start is None:
            return 0
        moment = time.time() if now is None else now
        # recorded in the minute m: at m + 59 s at the latest, so forgotten once m + 60 s is
        # at or before the horizon. A time on a whole hour may be an hour an older version
        # wrote (recorded up to 59 minutes later): it waits an hour more.
        horizon = floor_to(min(journal_start, moment) - JOURNAL_MARGIN_S, MINUTE)
        bound_minute, bound_hour = horizon - MINUTE, horizon - HOUR
        conn = self._connection()
        with _transaction(conn):
            return int(
                conn.execute(
                    "DELETE FROM recorded WHERE id IN (SELECT id FROM recorded WHERE hour < ? "
                    "AND (hour % 3600 != 0 OR hour < ?) "
                    "AND id NOT IN (SELECT id FROM lasting) LIMIT ?)",
                    (bound_minute, bound_hour, limit),
                ).rowcount
            )

    def _delete_before(self, table: str, column: str, bound: int) -> int:
        """Delete the rows of ``table`` with ``column < bound``, in short transactions."""
        key = "id" if table == "recorded" else f"{column}, group_ref"
        statement = (
            f"DELETE FROM {table} WHERE ({key}) IN "
            f"(SELECT {key} FROM {table} WHERE {column} < ? LIMIT {_PRUNE_CHUNK})"
        )
        conn = self._connection()
        deleted = 0
        while True:
            with _transaction(conn):
                done = conn.execute(statement, (bound,)).rowcount
            deleted += done
            if done < _PRUNE_CHUNK:
                return deleted

    # --- reading ----------------------------------------------------------------------------

    def summaries(
        self,
        since: float | None,
        until: float | None,
        *,
        width: int | None,
        customer: str | None = None,
    ) -> list[Summary]:
        """Usage in ``[since, until)`` (Unix seconds, ``None``: open) per group and bucket
        of ``width`` seconds (``None``: one bucket for the whole range).

        Whole hours come from the hourly sums; with a ``width`` under an hour the hours
        the minute window keeps come from the minute sums, and so do the partial hours
        at either end of the range. A partial minute (or, past the minute window, a
        partial hour) counts when it starts in the range."""
        low = _T_MIN if since is None else since
        high = -_T_MIN if until is None else until
        fine = width is not None and width < HOUR
        conn = self._connection()
        if not self._columns.get("usage_hourly"):
            return []  # made, but never written to
        found: dict[tuple[int | None, Group], Summary] = {}
        with _reading(conn):  # one snapshot: the horizon and the sums agree
            horizon = _meta(conn, "minute_horizon", _T_MIN)
            hourly, minutes = plan(low, high, horizon, fine=fine)
            for first, last in hourly:
                self._sum(conn, "usage_hourly", first, last, width, customer, found)
            for start, end in minutes:
                self._sum(conn, "usage_minutely", start, end, width, customer, found)
        return list(found.values())

    def _sum(
        self,
        conn: sqlite3.Connection,
        table: str,
        start: float,
        end: float,
        width: int | None,
        customer: str | None,
        into: dict[tuple[int | None, Group], Summary],
    ) -> None:
        column, names = _SUMS[table], self._columns.get(table, ())
        if not names:
            return
        bucket = "NULL"
        if width is not None:  # floor division, negative times included
            w, c = int(width), f"s.{column}"
            bucket = f"(CASE WHEN {c} >= 0 THEN {c} / {w} ELSE ({c} - {w - 1}) / {w} END) * {w}"
        where = f"s.{column} >= ? AND s.{column} < ?"
        params: list[Any] = [start, end]
        if customer is not None:
            where += " AND g.customer_id = ?"
            params.append(customer)
        fields = ", ".join(f"g.{name}" for name in _GROUP_FIELDS)
        sums = ", ".join(f"SUM(s.{name})" for name in names)
        rows = conn.execute(
            f"SELECT {bucket}, {fields}, {sums} FROM {table} s JOIN groups g ON g.id = s.group_ref "
            f"WHERE {where} GROUP BY 1, s.group_ref",
            params,
        )
        count = len(_GROUP_FIELDS)
        for row in rows:
            values = list(row[1 : 1 + count])
            values[7] = bool(values[7])  # estimated
            group = Group(*values)
            key = (None if row[0] is None else int(row[0]), group)
            if key not in into:
                into[key] = Summary(key[0], group)
            into[key].add(
                {name: value for name, value in zip(names, row[1 + count :], strict=True) if value}
            )

    def has_usage(self) -> bool:
        """Whether any usage is recorded (in the retention)."""
        conn = self._connection()
        if not self._columns.get("usage_hourly"):
            return False
        return conn.execute("SELECT 1 FROM usage_hourly LIMIT 1").fetchone() is not None

    def extent(self) -> tuple[int, int] | None:
        """The first and last hour holding usage (``None``: none)."""
        conn = self._connection()
        if not self._columns.get("usage_hourly"):
            return None
        first, last = conn.execute("SELECT MIN(hour), MAX(hour) FROM usage_hourly").fetchone()
        return None if first is None else (int(first), int(last))


def _meta(conn: sqlite3.Connection, key: str, default: int | float) -> int:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no meta table: a file made but never written
        return int(default)
    try:
        return int(float(row[0])) if row else int(default)
    except (TypeError, ValueError):
        return int(default)


def _set_meta(conn: sqlite3.Connection, key: str, value: float) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, repr(value)))


def _columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The summed columns ``table`` has (none when it does not exist)."""
    found = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    return tuple(name for name in NAMES if name in found)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (IMMEDIATE: the write lock up front, so importers take turns)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _reading(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")


def _known(conn: sqlite3.Connection, ids: Sequence[bytes]) -> set[bytes]:
    known: set[bytes] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id FROM recorded WHERE id IN ({marks})", chunk)
        known.update(bytes(row[0]) for row in rows)
    return known


def _group_refs(conn: sqlite3.Connection, groups: Iterable[Group]) -> dict[Group, int]:
    """The row id of each group (added when new), inside the caller's transaction."""
    refs: dict[Group, int] = {}
    for group in groups:
        key = group.group_id
        conn.execute(
            f"INSERT OR IGNORE INTO groups (key, {', '.join(_GROUP_FIELDS)}) "
            f"VALUES (?, {', '.join('?' * len(_GROUP_FIELDS))})",
            (
                key,
                group.customer_id,
                group.model,
                group.operation,
                group.endpoint,
                group.service_tier,
                group.key_suffix,
                group.project_id,
                1 if group.estimated else 0,
                group.descriptors,
            ),
        )
        refs[group] = int(conn.execute("SELECT id FROM groups WHERE key = ?", (key,)).fetchone()[0])
    return refs


# --- the importer's side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """Metered events the record could not take (kept in the spool's state)."""

    events: int
    first: float  # the earliest and latest event time among them
    last: float
    reason: str
    at: float  # when the last of them was missed

    def overlaps(self, since: float, until: float) -> bool:
        return self.first < until and self.last >= since


def gap_in(state: Mapping[str, object]) -> Gap | None:
    """The gap a spool's state flags, if any."""
    found = state.get(GAP_STATE)
    if not isinstance(found, Mapping):
        return None
    try:
        return Gap(
            int(found["events"]),
            float(found["first"]),
            float(found["last"]),
            str(found["reason"]),
            float(found.get("at", found["last"])),
        )
    except (KeyError, TypeError, ValueError):
        return None


class MeteredRecorder:
    """Writes the keyed events the importer spools into the metered record. Never raises.

    One per importer (it holds a connection). The file is opened when the first
    keyed events arrive: a process that imports none never makes it.
    """

    def __init__(self, spool_dir: Path, *, retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        self.path = metered_path(spool_dir)
        self.store = MeteredStore(self.path, retention_days=retention_days)
        self._retry_at = 0.0
        self._reason = ""
        self._pruned_at = self._forgot_at = -math.inf
        self._used = False
        self.recorded = 0  # events new to the record, through this recorder
        self.missed = 0  # events it could not record

    def record(
        self,
        events: Sequence[tuple[str, str, Mapping[str, Any] | None]],
        spool: Spool | None = None,
        lasting: Collection[str] = (),
    ) -> int:
        """Sum one segment's events into the record; returns how many were new (``lasting``:
        deferred work's ids, :meth:`MeteredStore.put`). On failure the events are counted,
        logged once and flagged in ``spool``'s state."""
        if not events:
            return 0
        if time.monotonic() < self._retry_at:  # failed a moment ago: not yet again
            self._missed(events, spool)
            return 0
        self._used = True
        try:
            added = self.store.put(events, lasting=lasting)
        except Exception as exc:  # the record is a convenience: delivery goes on regardless
            self._failed(exc)
            self._missed(events, spool)
            return 0
        self.recorded += added
        return added

    def tick(
        self, journal_start: Callable[[], float | None] | None = None, now: float | None = None
    ) -> None:
        """After an import pass: forget the ids no journal segment can give again once a
        minute (``journal_start``: :meth:`.Journal.oldest_start`), prune now and then
        (never before the first pass is done: a segment replayed after a crash is checked
        against the ids it needs first)."""
        moment = time.monotonic() if now is None else now
        if not self._used or time.monotonic() < self._retry_at:
            return
        try:
            # a chunk a pass: a record an older version filled is caught up pass by pass
            if (
                journal_start is not None
                and moment - self._forgot_at >= FORGET_EVERY_S
                and self.store.forget_ids(journal_start(), limit=_PRUNE_CHUNK) < _PRUNE_CHUNK
            ):
                self._forgot_at = moment
            if moment - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = moment
                self.store.prune()
        except Exception as exc:
            self._failed(exc)

    def close(self) -> None:
        self.store.close()

    def _failed(self, exc: Exception) -> None:
        self.store.close()  # a repaired file is opened afresh
        self._retry_at = time.monotonic() + RETRY_S
        if isinstance(exc, DamagedDatabase) or is_damage(exc):
            damage = (
                exc if isinstance(exc, DamagedDatabase) else DamagedDatabase(self.path, str(exc))
            )
            self._reason = f"{damage}: {damage.advice}"
        else:
            self._reason = f"{self.path}: {type(exc).__name__}: {exc}"
        warn_once(
            "metered-record:" + str(self.path),
            "cmdrdata: cannot write the metered record (%s); usage is delivered all the same, "
            "but report and reconcile will not count what is imported meanwhile",
            self._reason,
        )

    def _missed(
        self, events: Sequence[tuple[str, str, Mapping[str, Any] | None]], spool: Spool | None
    ) -> None:
        self.missed += len(events)
        metrics.increment("metered_unrecorded", len(events))
        if spool is None:
            return
        now = time.time()
        times = [event_time(e, now) for _, _, e in events if isinstance(e, Mapping)]
        if not times:
            return
        with contextlib.suppress(Exception):  # the flag is best effort: never worth failing for
            previous = gap_in(spool.state())
            first, last, count = min(times), max(times), len(events)
            if previous is not None and previous.at >= now - self.store.retention_s:
                first, last = min(first, previous.first), max(last, previous.last)
                count += previous.events
            value = {"events": count, "first": first, "last": last, "reason": self._reason}
            spool.set_state(**{GAP_STATE: {**value, "at": now}})
