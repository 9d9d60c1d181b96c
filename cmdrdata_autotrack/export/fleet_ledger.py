"""The fleet ledger: one PostgreSQL database holding the usage of every process of a fleet.

OpenAI bills the organization, not one pod: ``report`` and ``reconcile`` must see
what every process on every machine metered. With ``CMDRDATA_LEDGER_URL`` set
(``postgresql://...``; the ``postgres`` extra installs psycopg 3), each process's
importer thread writes the usage it imports here, one transaction per journal
segment. The tables, created (and migrated) by the first process that connects:

* ``cmdrdata_event_ids``: each event id recorded, with its hour, kept for the
  retention. An event counts only if its id is new here (``INSERT ... ON CONFLICT
  (event_id) DO NOTHING RETURNING``): a second process importing the same event,
  or a journal replayed after a crash, changes nothing.
* ``cmdrdata_usage_hourly``: per UTC hour and *group* (customer, model, and what
  reconcile tells apart: operation, API type, service tier, the OpenAI key's last
  four characters, project, estimated or not, the descriptive units such as image
  size and quality), one row per unit with its summed quantity; kept for the
  retention (``CMDRDATA_LEDGER_RETENTION``, 35 days). Added to in the same
  transaction as the ids, for the new ids only.
* ``cmdrdata_usage_events``: the events themselves (their JSON), kept for a short
  window (48 hours): minute buckets for reconcile, and something to audit.
* ``cmdrdata_meta``: the schema version, and the *raw horizon*: every event timed
  at or after it is in ``cmdrdata_usage_events`` (before it, only the hourly rows
  hold its usage). Pruning moves it forward, by whole hours.

Readers (:meth:`FleetStore.summaries`) sum usage per group and bucket: whole
hours from the hourly rows, the partial hours at the ends of a range from the
events (within the raw window; past it an hour counts when it starts in the
range). Each write and each read is one transaction, so a reader never sees half
a segment nor a half-done prune.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard
from urllib.parse import urlsplit

from ..usage.event import KEY_SUFFIX_FIELD, PROJECT_FIELD
from ..usage.fields import count, seconds
from ..usage.units import NUMERIC, UNITS

if TYPE_CHECKING:
    from psycopg import Connection, Cursor

URL_ENV = "CMDRDATA_LEDGER_URL"
RETENTION_ENV = "CMDRDATA_LEDGER_RETENTION"
HOUR = 3600
DEFAULT_RETENTION_DAYS = 35.0
MAX_RETENTION_DAYS = 3650.0
RAW_WINDOW_S = 48 * HOUR
PRUNE_EVERY_S = 600.0  # fleet-wide: a process prunes only if no one did for this long
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 30_000
WRITE_CHUNK = 2_000  # events per write transaction (each commits its ids, events and sums)
SCHEMA_VERSION = 1
_MIGRATE_LOCK = 0x636D_6472_0001  # a pg advisory lock key ("cmdr", 1)
_PRUNE_CHUNK = 10_000  # rows deleted per transaction
_MAX_ID_BYTES = 200  # longer (hostile) ids are stored as their hash: an index entry stays small
_MAX_TEXT = 512
_T_MIN, _T_MAX = -(2**62), 2**62  # an open end of a range

# Counters of calls kept beside the units (never a unit's name: a test checks it).
CALLS = "calls"
FAILED_CALLS = "failed_calls"  # the request did not succeed
REFUSED_CALLS = "refused_calls"  # ... and consumed nothing: not a billed request
COUNTERS = (CALLS, FAILED_CALLS, REFUSED_CALLS)
_TEXT_UNITS = tuple(u.name for u in UNITS if u.kind == "text")
# What a failed call must have consumed to be billed (reconcile's CallReader: _CONSUMED).
_CONSUMING = (
    "input_tokens",
    "output_tokens",
    "image_count",
    "input_characters",
    "audio_seconds",
    "code_interpreter_sessions",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS cmdrdata_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS cmdrdata_event_ids (
    event_id text PRIMARY KEY,
    hour bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS cmdrdata_event_ids_by_hour ON cmdrdata_event_ids (hour);
CREATE TABLE IF NOT EXISTS cmdrdata_usage_events (
    event_id text PRIMARY KEY,
    ts double precision NOT NULL,
    customer_id text NOT NULL,
    model text NOT NULL,
    identity text NOT NULL,
    recorded_at double precision NOT NULL,
    event text NOT NULL
);
CREATE INDEX IF NOT EXISTS cmdrdata_usage_events_by_time ON cmdrdata_usage_events (ts);
CREATE TABLE IF NOT EXISTS cmdrdata_usage_hourly (
    hour bigint NOT NULL,
    group_id text NOT NULL,
    unit text NOT NULL,
    quantity numeric NOT NULL,
    customer_id text NOT NULL,
    model text NOT NULL,
    operation text,
    endpoint text,
    service_tier text,
    key_suffix text,
    project_id text,
    estimated boolean NOT NULL,
    descriptors text NOT NULL,
    PRIMARY KEY (hour, group_id, unit)
);
INSERT INTO cmdrdata_meta VALUES ('raw_horizon', '-4611686018427387904') ON CONFLICT DO NOTHING;
INSERT INTO cmdrdata_meta VALUES ('pruned_at', '0') ON CONFLICT DO NOTHING;
"""

_INSERT_IDS = """
INSERT INTO cmdrdata_event_ids (event_id, hour)
SELECT * FROM unnest(%s::text[], %s::bigint[]) AS t (event_id, hour) ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_INSERT_EVENTS = """
INSERT INTO cmdrdata_usage_events
    (event_id, ts, customer_id, model, identity, recorded_at, event)
SELECT * FROM unnest(
    %s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[])
ON CONFLICT (event_id) DO NOTHING
"""
# Sorted, so that two writers lock shared rows in the same order (no deadlock).
_ADD_HOURLY = """
INSERT INTO cmdrdata_usage_hourly AS h (hour, group_id, unit, quantity, customer_id, model,
    operation, endpoint, service_tier, key_suffix, project_id, estimated, descriptors)
SELECT t.hour, t.group_id, t.unit, t.quantity::numeric, t.customer_id, t.model, t.operation,
    t.endpoint, t.service_tier, t.key_suffix, t.project_id, t.estimated, t.descriptors
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[])
    AS t (hour, group_id, unit, quantity, customer_id, model, operation, endpoint,
        service_tier, key_suffix, project_id, estimated, descriptors)
ORDER BY t.hour, t.group_id, t.unit
ON CONFLICT (hour, group_id, unit) DO UPDATE SET quantity = h.quantity + EXCLUDED.quantity
"""
_GROUP_COLUMNS = (
    "customer_id, model, operation, endpoint, service_tier, key_suffix, project_id, "
    "estimated, descriptors"
)


class FleetUnavailable(Exception):
    """The fleet ledger cannot be used now (unreachable, refused, not installed)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def describe(url: str) -> str:
    """``PostgreSQL host:port/db``: where the ledger is, without credentials."""
    if "://" not in url:
        return "PostgreSQL (connection string)"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port
    except ValueError:
        return "PostgreSQL (unreadable URL)"
    database = parts.path.lstrip("/")
    return f"PostgreSQL {host}{f':{port}' if port else ''}{f'/{database}' if database else ''}"


def password_of(url: str) -> str | None:
    """The URL's password (to be masked in logs), if it has one."""
    try:
        return urlsplit(url).password if "://" in url else None
    except ValueError:
        return None


def configured(settings: object) -> tuple[str | None, float]:
    """The fleet ledger's URL (``None``: not configured) and retention in days, from the
    settings (``ledger_url``, ``ledger_retention``), else from their variables."""
    url = getattr(settings, "ledger_url", None) or os.environ.get(URL_ENV, "")
    url = url.strip() if isinstance(url, str) else ""
    retention = getattr(settings, "ledger_retention", None)
    if not isinstance(retention, int | float) or isinstance(retention, bool):
        try:
            retention = float(os.environ.get(RETENTION_ENV, "") or DEFAULT_RETENTION_DAYS)
        except ValueError:
            retention = DEFAULT_RETENTION_DAYS
    if not 1 <= retention <= MAX_RETENTION_DAYS:
        retention = DEFAULT_RETENTION_DAYS
    return url or None, float(retention)


# --- what one event adds -----------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """What usage is summed by, beside time (the hourly rows' key, with the unit)."""

    customer_id: str
    model: str
    operation: str | None = None
    endpoint: str | None = None  # the event's API type (``chat``, ``responses``, ...)
    service_tier: str | None = None
    key_suffix: str | None = None
    project_id: str | None = None
    estimated: bool = False
    descriptors: str = "{}"  # the event's text units, as a canonical JSON object

    @property
    def group_id(self) -> str:
        fields = [
            self.customer_id,
            self.model,
            self.operation,
            self.endpoint,
            self.service_tier,
            self.key_suffix,
            self.project_id,
            self.estimated,
            self.descriptors,
        ]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]

    def descriptor_values(self) -> dict[str, str]:
        found = json.loads(self.descriptors)
        return found if isinstance(found, dict) else {}


@dataclass
class Summary:
    """The usage of one group in one bucket (``start`` ``None``: the whole range)."""

    start: int | None
    group: Group
    quantities: dict[str, int | float] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return int(self.quantities.get(CALLS, 0))

    def add(self, quantities: Mapping[str, int | float]) -> None:
        for unit, value in quantities.items():
            self.quantities[unit] = self.quantities.get(unit, 0) + value


def _text(value: object, limit: int = _MAX_TEXT) -> str | None:
    """A string PostgreSQL takes (no NUL, valid UTF-8), bounded; ``None`` for anything else."""
    if not isinstance(value, str) or not value:
        return None
    clean = value.replace("\x00", "")[:limit]
    clean = clean.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    return clean or None


def is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object (a dict, the usual case, is told without asking the ABC)."""
    return type(value) is dict or isinstance(value, Mapping)


def _named(event: Mapping[str, Any], name: str) -> object:
    """A top-level field of the event, else the same name in its metadata."""
    value = event.get(name)
    if value is None:
        metadata = event.get("metadata")
        if is_object(metadata):
            value = metadata.get(name)
    return value


def event_time(event: Mapping[str, Any], default: float) -> float:
    """The event's time in Unix seconds (``default`` when it has no usable one)."""
    for name, scale in (("timestamp_ms", 1000.0), ("timestamp", 1.0)):
        value = event.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            moment = float(value) / scale
            if math.isfinite(moment) and abs(moment) < 2**40:
                return moment
    return default


_GROUPS: dict[tuple[Any, ...], Group] = {}  # the events' raw group fields -> their group
_MAX_GROUPS = 4096


def group_of(event: Mapping[str, Any]) -> Group:
    """The group an event's usage is summed in (cached: most events share a few groups).

    Equal raw fields always make the same group (text is taken as it is, anything else
    is none), so the cache is keyed by them as they are.
    """
    units = event.get("units")
    units = units if is_object(units) else {}
    raw = (
        event.get("customer_id"),
        event.get("model"),
        event.get("operation"),
        event.get("endpoint"),
        event.get("service_tier"),
        _named(event, KEY_SUFFIX_FIELD),
        _named(event, PROJECT_FIELD),
        event.get("usage_estimated") is True,
        *(units.get(n) for n in _TEXT_UNITS),
    )
    try:
        found = _GROUPS.get(raw)
    except TypeError:  # an unhashable value: worked out each time
        return _group_of(event, units)
    if found is None:
        found = _group_of(event, units)
        if len(_GROUPS) >= _MAX_GROUPS:
            _GROUPS.clear()
        _GROUPS[raw] = found
    return found


def _group_of(event: Mapping[str, Any], units: Mapping[str, Any]) -> Group:
    from ..reconcile.metered import key_suffix

    descriptors = {n: t for n in _TEXT_UNITS if (t := _text(units.get(n), 256)) is not None}
    return Group(
        customer_id=_text(event.get("customer_id")) or "unattributed",
        model=_text(event.get("model")) or "unknown",
        operation=_text(event.get("operation"), 64),
        endpoint=_text(event.get("endpoint"), 64),
        service_tier=_text(event.get("service_tier"), 64),
        key_suffix=key_suffix(_named(event, KEY_SUFFIX_FIELD)),
        project_id=_text(_named(event, PROJECT_FIELD), 256),
        estimated=event.get("usage_estimated") is True,
        descriptors=json.dumps(descriptors, sort_keys=True, separators=(",", ":")),
    )


# The numeric units an event carries at its top level, and those under "units" (by name).
_TOP_LEVEL = tuple((u.name, u.kind == "count") for u in NUMERIC if u.top_level)
_NESTED = {u.name: u.kind == "count" for u in NUMERIC if not u.top_level}


def quantities_of(event: Mapping[str, Any]) -> dict[str, int | float]:
    """The event's numeric units (zeros left out), and its call counters."""
    units = event.get("units")
    out: dict[str, int | float] = {CALLS: 1}
    for name, counted in _TOP_LEVEL:
        raw = event.get(name)
        if raw:
            value = count(raw) if counted else seconds(raw)
            if value:
                out[name] = value
    if is_object(units):  # only the units it has: most calls report a few
        for name, raw in units.items():
            nested = _NESTED.get(name) if isinstance(name, str) else None
            if nested is not None and raw:
                value = count(raw) if nested else seconds(raw)
                if value:
                    out[name] = value
    request = event.get("request")
    if is_object(request) and request.get("success") is False:
        out[FAILED_CALLS] = 1
        if not any(out.get(name) for name in _CONSUMING):
            out[REFUSED_CALLS] = 1
    return out


def _event_id(value: str) -> str:
    """The id as stored: itself, or (too long, or not valid text) its hash."""
    clean = _text(value, len(value))
    if clean == value and len(value.encode()) <= _MAX_ID_BYTES:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def floor_to(moment: float, width: int) -> int:
    return math.floor(moment / width) * width


def _number(value: Decimal | int | float) -> int | float:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class UsageSummaries(Protocol):
    """A store of usage summed per group and time (the fleet ledger, the metered record):
    what ``report`` and ``reconcile`` read."""

    @property
    def where(self) -> str:
        """Where it is, for the output (never a password)."""
        ...

    def summaries(
        self,
        since: float | None,
        until: float | None,
        *,
        width: int | None,
        customer: str | None = None,
    ) -> list[Summary]:
        """Usage in ``[since, until)`` per group and ``width``-second bucket (``None``: one)."""
        ...

    def has_usage(self) -> bool:
        """Whether any usage is recorded (in the retention)."""
        ...

    def close(self) -> None: ...


# --- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    raw_events: int
    hourly_rows: int
    event_ids: int
    raw_horizon: int


class FleetStore:
    """One connection to the fleet ledger (one per thread); connects when first used.

    Every failure to reach or use the database is raised as :class:`FleetUnavailable`
    and drops the connection (the next call connects again).
    """

    def __init__(
        self,
        url: str,
        *,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        raw_window_s: float = RAW_WINDOW_S,
        connect_timeout_s: int = CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.where = describe(url)
        self.retention_s = max(float(retention_days), 1 / 24) * 86400
        self.raw_window_s = min(max(float(raw_window_s), HOUR), self.retention_s)
        self.connect_timeout_s = connect_timeout_s
        self._conn: Connection[Any] | None = None

    # --- the connection ---------------------------------------------------------------------

    def _connection(self) -> Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            import psycopg
            from psycopg import conninfo
        except ImportError:
            raise FleetUnavailable(
                self.where, "needs psycopg: pip install 'cmdrdata-autotrack[postgres]'"
            ) from None
        try:
            params = conninfo.conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise FleetUnavailable(self.where, f"not a PostgreSQL URL ({exc})") from None
        params.setdefault("connect_timeout", str(self.connect_timeout_s))
        params.setdefault("application_name", "cmdrdata-autotrack")
        try:
            # no server-side prepared statements: works behind transaction-mode poolers
            conn = psycopg.connect(
                conninfo.make_conninfo("", **params), autocommit=True, prepare_threshold=None
            )
        except psycopg.Error as exc:
            raise FleetUnavailable(self.where, _reason(exc)) from None
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _migrate(self, conn: Connection[Any]) -> None:
        """Create or upgrade the tables; one process at a time (others wait, then see it)."""
        import psycopg

        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                cur.execute(SCHEMA)
                cur.execute(
                    "INSERT INTO cmdrdata_meta VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO NOTHING RETURNING value",
                    (str(SCHEMA_VERSION),),
                )
                if cur.fetchone() is None:
                    found = _meta(cur, "schema_version", SCHEMA_VERSION)
                    if found > SCHEMA_VERSION and _meta(cur, "writers_from", 1) > SCHEMA_VERSION:
                        raise FleetUnavailable(
                            self.where,
                            f"its schema (version {found}) is newer than this version of "
                            "cmdrdata-autotrack writes: upgrade it",
                        )
                    # version 1 is the first: later versions upgrade from `found` here
        except psycopg.Error as exc:
            raise FleetUnavailable(self.where, _reason(exc)) from None

    def _run(self, work: Any, *, read: bool = False, attempts: int = 3) -> Any:
        """``work(cursor)`` in one transaction (``read``: a read-only snapshot), bounded by
        a statement timeout set in it (``SET LOCAL``: poolers pass it on, and other
        clients of a pooled connection keep theirs). A deadlock or serialization failure
        is retried, anything else drops the connection and raises :class:`FleetUnavailable`."""
        for attempt in range(attempts):
            conn = self._connection()  # FleetUnavailable without psycopg, before importing it
            import psycopg
            from psycopg import errors

            try:
                with conn.transaction(), conn.cursor() as cur:
                    if read:  # one snapshot for every query of the read
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    cur.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                    return work(cur)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == attempts - 1:
                    self._drop()
                    raise FleetUnavailable(self.where, "the write kept conflicting") from None
            except psycopg.Error as exc:
                self._drop()
                raise FleetUnavailable(self.where, _reason(exc)) from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to close
                conn.close()

    def close(self) -> None:
        self._drop()

    def ping(self) -> None:
        """Raises :class:`FleetUnavailable` unless the ledger answers."""
        self._run(lambda cur: cur.execute("SELECT 1"))

    # --- writing ----------------------------------------------------------------------------

    def put(
        self,
        events: Iterable[tuple[str, str, Mapping[str, Any] | None]],
        max_bytes: int = 0,
        policy: str = "",
        identity: str = "",
    ) -> tuple[int, int]:
        """Record ``(event_id, json, event)`` items metered under ``identity``; returns
        ``(added, 0)``: how many were new (the others were recorded already). The
        spool's interface: the ledger has no byte bound (its retention bounds it),
        so ``max_bytes`` and ``policy`` do not apply and nothing is dropped."""
        now = time.time()
        fresh: dict[str, tuple[float, Mapping[str, Any], str]] = {}
        for event_id, raw, event in events:
            if event is None:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
            if not is_object(event) or not isinstance(event_id, str):
                continue
            stored = _event_id(event_id)
            if stored not in fresh:  # the first of an id repeated in one call wins
                fresh[stored] = (event_time(event, now), event, raw)
        added = 0
        ordered = sorted(fresh)
        for start in range(0, len(ordered), WRITE_CHUNK):  # a huge segment: several commits
            added += self._write(ordered[start : start + WRITE_CHUNK], fresh, identity, now)
        return added, 0

    def _write(
        self,
        ids: list[str],
        fresh: Mapping[str, tuple[float, Mapping[str, Any], str]],
        identity: str,
        now: float,
    ) -> int:
        """One transaction: the new ids among ``ids``, their events and hourly sums."""
        hours = [floor_to(fresh[i][0], HOUR) for i in ids]

        def write(cur: Cursor[Any]) -> int:
            cur.execute(_INSERT_IDS, (ids, hours))
            new = [row[0] for row in cur.fetchall()]
            if not new:
                return 0
            horizon = _meta(cur, "raw_horizon", _T_MIN)
            items = [(i, *fresh[i], group_of(fresh[i][1])) for i in new]
            kept = [item for item in items if item[1] >= horizon]  # older: hourly rows only
            if kept:
                cur.execute(_INSERT_EVENTS, _event_columns(kept, identity, now))
            cur.execute(_ADD_HOURLY, _hourly_columns(items))
            return len(new)

        added: int = self._run(write)
        return added

    def prune(self, now: float | None = None, *, every_s: float = PRUNE_EVERY_S) -> Pruned | None:
        """Delete the events past the raw window, and the hourly rows and ids past the
        retention (whole hours), a chunk per transaction. ``None`` when another process
        pruned less than ``every_s`` ago (or prunes now)."""
        moment = time.time() if now is None else now
        raw_horizon = floor_to(moment - self.raw_window_s, HOUR)
        kept_from = floor_to(moment - self.retention_s, HOUR)

        def claim(cur: Cursor[Any]) -> int | None:
            cur.execute(
                "UPDATE cmdrdata_meta SET value = %s WHERE key = 'pruned_at' "
                "AND value::float8 <= %s RETURNING value",
                (repr(moment), moment - every_s),
            )
            if cur.fetchone() is None:
                return None
            # The horizon moves first: readers then take what is deleted next from the
            # hourly rows, never from a half-deleted hour of events.
            cur.execute(
                "UPDATE cmdrdata_meta SET value = greatest(value::bigint, %s)::text "
                "WHERE key = 'raw_horizon' RETURNING value",
                (raw_horizon,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else raw_horizon

        horizon: int | None = self._run(claim)
        if horizon is None:
            return None
        return Pruned(
            raw_events=self._delete_before("cmdrdata_usage_events", "ts", horizon),
            hourly_rows=self._delete_before("cmdrdata_usage_hourly", "hour", kept_from),
            event_ids=self._delete_before("cmdrdata_event_ids", "hour", kept_from),
            raw_horizon=horizon,
        )

    def _delete_before(self, table: str, column: str, bound: int) -> int:
        """Delete the rows of ``table`` with ``column < bound``, in short transactions."""
        statement = (
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {column} < %s LIMIT {_PRUNE_CHUNK}))"
        )

        def chunk(cur: Cursor[Any]) -> int:
            cur.execute(statement, (bound,))
            return int(cur.rowcount)

        deleted = 0
        while True:
            done: int = self._run(chunk)
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

        Whole hours come from the hourly rows. With a ``width`` under an hour, the hours
        the raw window keeps come from the events; and the partial hours at either end
        of the range too. Past the raw window a partial hour counts when it starts in
        the range (its usage is known per hour only)."""
        low = _T_MIN if since is None else since
        high = _T_MAX if until is None else until
        fine = width is not None and width < HOUR

        def read(cur: Cursor[Any]) -> list[Summary]:
            horizon = _meta(cur, "raw_horizon", _T_MIN)
            hourly, raw = plan(low, high, horizon, fine=fine)
            found: dict[tuple[int | None, Group], Summary] = {}
            for start, end in hourly:
                _sum_hourly(cur, start, end, width, customer, found)
            for low_t, high_t in raw:
                for event in _raw_events(cur, low_t, high_t, customer):
                    when = event_time(event, low_t)
                    bucket = None if width is None else floor_to(when, width)
                    group = group_of(event)
                    key = (bucket, group)
                    if key not in found:
                        found[key] = Summary(bucket, group)
                    found[key].add(quantities_of(event))
            return list(found.values())

        result: list[Summary] = self._run(read, read=True)
        return result

    def events(self, since: float, until: float) -> Iterator[dict[str, Any]]:
        """The events the raw window keeps in ``[since, until)``, oldest first."""

        def read(cur: Cursor[Any]) -> list[dict[str, Any]]:
            horizon = _meta(cur, "raw_horizon", _T_MIN)
            return list(_raw_events(cur, max(since, horizon), until, None))

        events: list[dict[str, Any]] = self._run(read, read=True)
        return iter(events)

    def has_usage(self) -> bool:
        """Whether any usage is recorded (in the retention)."""
        found: bool = self._run(
            lambda cur: cur.execute(
                "SELECT EXISTS (SELECT 1 FROM cmdrdata_usage_hourly)"
            ).fetchone()[0]
        )
        return found

    def raw_horizon(self) -> int:
        """Events timed from here on are kept one by one; before, per hour only."""
        value: int = self._run(lambda cur: _meta(cur, "raw_horizon", _T_MIN))
        return value


def plan(
    since: float, until: float, horizon: float, *, fine: bool
) -> tuple[list[tuple[int, int]], list[tuple[float, float]]]:
    """Where each part of ``[since, until)`` is read from: ``(hourly, raw)`` ranges.

    Whole hours from the hourly rows (``fine``: only those before ``horizon``, the
    rest from the raw events); a partial hour at either end from the raw events when
    it is at or after ``horizon``, else its hourly row when the hour starts in the
    range."""
    hourly: list[tuple[int, int]] = []
    raw: list[tuple[float, float]] = []
    if since >= until:
        return hourly, raw
    if fine and until > horizon:
        raw.append((max(since, horizon), until))
        until = min(until, horizon)
        if since >= until:
            return hourly, raw
    first, last = -floor_to(-since, HOUR), floor_to(until, HOUR)  # whole hours: [first, last)
    if first < last:
        hourly.append((first, last))
    if first > last:  # both ends inside one hour
        edges = [(since, until)]
    else:
        edges = [(a, b) for a, b in ((since, float(first)), (float(last), until)) if a < b]
    for start, end in edges:
        hour = floor_to(start, HOUR)
        if hour >= horizon:
            raw.append((start, end))
        elif since <= hour:
            hourly.append((hour, hour + HOUR))
    return hourly, raw


def _meta(cur: Cursor[Any], key: str, default: int | float) -> int:
    cur.execute("SELECT value FROM cmdrdata_meta WHERE key = %s", (key,))
    row = cur.fetchone()
    try:
        return int(float(row[0])) if row else int(default)
    except (TypeError, ValueError):
        return int(default)


# One new event: its stored id, time, the event, its JSON, and its group.
_Item = tuple[str, float, Mapping[str, Any], str, Group]


def _event_columns(items: list[_Item], identity: str, now: float) -> tuple[list[Any], ...]:
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for event_id, moment, _, raw, group in items:
        values = (
            event_id,
            moment,
            group.customer_id,
            group.model,
            identity,
            now,
            raw.replace("\x00", ""),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def summed(
    items: Iterable[tuple[float, Mapping[str, Any], Group]],
    width: int,
    known: dict[int, dict[str, int | float]] | None = None,
) -> dict[tuple[int, Group], dict[str, int | float]]:
    """``(time, event, group)`` items summed per ``width``-second bucket and group: the
    quantities of :func:`quantities_of` (what the fleet ledger and the metered record keep).

    ``known``: quantities already worked out, by ``id`` of the event (filled as it goes),
    for a caller that sums the same events at two widths."""
    sums: dict[tuple[int, Group], dict[str, int | float]] = {}
    for moment, event, group in items:
        into = sums.setdefault((floor_to(moment, width), group), {})
        quantities = known.get(id(event)) if known is not None else None
        if quantities is None:
            quantities = quantities_of(event)
            if known is not None:
                known[id(event)] = quantities
        for unit, value in quantities.items():
            into[unit] = into.get(unit, 0) + value
    return sums


def _hourly_columns(items: list[_Item]) -> tuple[list[Any], ...]:
    """The new events summed per hour, group and unit: one row each, as columns."""
    hourly = summed(((moment, event, group) for _, moment, event, _, group in items), HOUR)
    columns: tuple[list[Any], ...] = tuple([] for _ in range(13))
    for (hour, group), quantities in hourly.items():
        for unit, value in quantities.items():
            values = (
                hour,
                group.group_id,
                unit,
                repr(value),  # exact as numeric: no float rounding in the database
                group.customer_id,
                group.model,
                group.operation,
                group.endpoint,
                group.service_tier,
                group.key_suffix,
                group.project_id,
                group.estimated,
                group.descriptors,
            )
            for column, item in zip(columns, values, strict=True):
                column.append(item)
    return columns


def _sum_hourly(
    cur: Cursor[Any],
    start: int,
    end: int,
    width: int | None,
    customer: str | None,
    into: dict[tuple[int | None, Group], Summary],
) -> None:
    bucket = "NULL::bigint"
    if width is not None:
        bucket = f"(floor(hour / {int(width)}::float8) * {int(width)})::bigint"
    where = "hour >= %s AND hour < %s" + (" AND customer_id = %s" if customer is not None else "")
    params: list[Any] = [start, end] + ([customer] if customer is not None else [])
    cur.execute(
        f"SELECT {bucket}, {_GROUP_COLUMNS}, unit, sum(quantity) FROM cmdrdata_usage_hourly "
        f"WHERE {where} GROUP BY 1, {_GROUP_COLUMNS}, unit",
        params,
    )
    for row in cur.fetchall():
        group = Group(*row[1:10])
        key = (None if row[0] is None else int(row[0]), group)
        if key not in into:
            into[key] = Summary(key[0], group)
        into[key].add({str(row[10]): _number(row[11])})


def _raw_events(
    cur: Cursor[Any], start: float, end: float, customer: str | None
) -> Iterator[dict[str, Any]]:
    where = "ts >= %s AND ts < %s" + (" AND customer_id = %s" if customer is not None else "")
    params: list[Any] = [start, end] + ([customer] if customer is not None else [])
    cur.execute(f"SELECT event FROM cmdrdata_usage_events WHERE {where} ORDER BY ts", params)
    for (text,) in cur:
        try:
            event = json.loads(text)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _reason(exc: Exception) -> str:
    """The first line of what PostgreSQL or libpq said (never the URL's password)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"
