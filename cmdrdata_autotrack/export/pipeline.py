"""The delivery pipeline: journal → spool → cmdrdata (or the local ledger), in the background.

* The app's thread only appends the event to this process's journal
  (:meth:`Pipeline.submit`): microseconds, no locks shared with other processes,
  durable once it returns.
* The *importer* thread moves closed journal segments into the shared spool (or
  the ledger) and deletes them. Each segment names whose usage it holds (its
  identity, :mod:`.identity`): keyed usage goes to the spool under that
  identity, keyless usage to the ledger, whichever process imports it.
* The *sender* threads lease due events of their own identity from the spool and
  post what has accumulated as one request to the batch endpoint (*coalesced*
  delivery; one event per request when the API has no batch endpoint, which is
  remembered in the spool for a day, or with ``CMDRDATA_BATCH_SIZE=1``).
  Acknowledged events leave the spool, failed ones are retried with backoff and
  jitter behind a circuit breaker (a failed batch as one batch), refused ones
  go to the dead letters. The lead sender waits up to ``CMDRDATA_BATCH_LINGER``
  after a request so that events arriving one by one share the next one; while
  more is due than one request takes, up to ``CMDRDATA_MAX_IN_FLIGHT`` senders
  send at once, each with its own lease.

Threads start with the first event (or at start-up when an earlier process left
events behind). At exit and on SIGTERM the pipeline delivers what it can within
``CMDRDATA_SHUTDOWN_TIMEOUT``; the rest stays spooled for the next process. A
flush (:meth:`Pipeline.flush`, ``cmdrdata-autotrack flush``) delivers at once:
no linger, retries within a second, a breaker that probes at least every second.
After ``fork`` the child gets fresh threads, locks, journal, breaker and
connections (:mod:`..forksafe`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

from .. import forksafe, paths, tunables
from ..config import Settings
from ..telemetry import metrics
from ..telemetry.logging import error_once, warn_once
from ..usage import snapshot
from ..usage.work import is_deferred_work
from . import fleet_ledger, fleet_outbox, jsontext, metered_store
from . import identity as identities
from . import ledger as ledger_db
from .backoff import MAX_TIMEOUT_S, CircuitBreaker, backoff_delay, clamp
from .client import (
    CONNECT_TIMEOUT,
    DeliveryClient,
    Result,
    batch_url,
    endpoints_problem,
    key_problem,
)
from .journal import Journal, read_segment
from .processor import resolved_attributes, span_record_to_event
from .spool import PRUNE_CHUNK, Leased, Spool
from .sqlite import DamagedDatabase, is_damage

logger = logging.getLogger("cmdrdata_autotrack.delivery")

IMPORT_BATCH_WINDOW_S = 0.05  # gather events at least this long before closing a segment
IMPORT_SLICE = 64  # journal lines made into events and stored in one transaction
IDLE_WAIT_S = 1.0
# How often a lead sender forgets delivered ids: the table holds about this long's ids
# (and the journal's margin's), so an acknowledgement writes into a small table.
PRUNE_DELIVERED_EVERY_S = 60.0
# A journal line, compact, its encoder made once (see jsontext). Records are flat JSON
# made by the processor, never circular: no check needed. A response copy in a span
# record's line holds the SDK's objects (usage.snapshot).
_journal_text = jsontext.compact_encoder(snapshot.fields_of, skipkeys=True)
# An event's body as spooled and sent: no NaN passes (the events API would refuse it).
# Built by usage.event from plain values, never circular.
_event_body = jsontext.compact_encoder(allow_nan=False)
# A journal line is UTF-8 (the journal writes it so): decoded as that, not sniffed per
# line, and scanned as the one value it is.
_decode_line = jsontext.line_decoder()
HELPER_IDLE_S = 5.0  # a helper sender with no backlog to help with checks for a stop this often
SINGLE_MODE_LEASE = 8
LEASE_MARGIN_S = 10.0
DAMAGED_RETRY_S = 5.0  # how often the importer tries a damaged spool or ledger again
MAX_BATCH_BYTES = 1_000_000  # of event bodies in one batch request (at least one event)
NO_BATCH_RECHECK_S = 24 * 3600.0  # a batch endpoint that answered 404/405 is tried again after
FLUSH_MAX_DELAY_S = 1.0  # while a flush waits: the longest retry delay (Retry-After aside) ...
FLUSH_COOLDOWN_S = 1.0  # ... and the longest breaker cooldown
FLUSH_POLL_S = 0.05
DEFAULT_FLUSH_TIMEOUT_S = 5.0  # flush(nan): what flush() waits by default
STATE_EVERY_S = 1.0  # the breaker's state for doctor: written on change, else this often
# Helpers join in when the lead spends at least this share of a full round waiting for the
# API's answers: concurrency pays against a slow API; against a fast one the round is CPU
# (SQLite, JSON), and more senders would only take turns at the GIL and the spool's lock
# (and empty each other's page caches: 5 to 6 us more an event on loopback). A slow API is
# slow round after round; one round's wait can be a moment's stall of a fast one.
HELP_WHEN_WAITING = 0.5
HELP_AFTER_ROUNDS = 3  # full rounds in a row, each waiting that much

# What a forked child inherits from its parent's pipelines and must never use, close or
# free: a connection whose lock or socket a parent's thread held mid-request. Kept here.
_PARKED: list[object] = []

BATCH_UNKNOWN, BATCH_YES, BATCH_NO = "unknown", "yes", "no"


def journal_line(record: dict[str, Any]) -> str:
    """A span record or event as its journal line (a line of JSON, newline included).

    A response copy the encoder cannot write out (nested past the recursion limit, a
    circular model an app built) is read on this thread instead, into the attributes,
    so the event is kept. Raises what the encoder raises for anything else.
    """
    try:
        return _journal_text(record) + "\n"
    except (ValueError, RecursionError, TypeError):
        pending = record.get("x")
        if pending is None:
            raise
    plain = {key: value for key, value in record.items() if key != "x"}
    plain["a"] = resolved_attributes(record)
    return _journal_text(plain) + "\n"


def _events_of(
    lines: list[bytes], unattributed: str
) -> tuple[list[tuple[str, str, dict[str, Any] | None]], set[str]]:
    """Journal lines as ``(event_id, body, event)``: a span record made into its event.
    Also the ids a later sighting may give again, which the spool and the metered record
    remember for their whole window: deferred work's, and those of lines that are events
    already (which do not say)."""
    events: list[tuple[str, str, dict[str, Any] | None]] = []
    lasting: set[str] = set()
    for line in lines:
        try:
            text = line.decode()
            event = _decode_line(text)
            if "a" in event and "event_id" not in event:  # a span record
                again = is_deferred_work(event["a"])
                event = span_record_to_event(event, unattributed)
                raw = _event_body(event)
            else:  # an event already: its line is its body
                again, raw = True, text
            events.append((event["event_id"], raw, event))
            if again:
                lasting.add(event["event_id"])
        except (ValueError, KeyError, TypeError):
            metrics.increment("events_malformed")
            warn_once("journal-garbage", "cmdrdata: skipped a malformed journal line")
    return events, lasting


class Round(NamedTuple):
    """What one sender's round did."""

    attempted: int  # events
    full: bool  # as many as one request takes: more may be due
    waiting: float  # the share of the round spent waiting for the API's answers


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        where = paths.locations(settings.spool_dir, settings.ledger_path)
        self.spool_dir, self.spool_path, self.ledger_path = (
            where.spool_dir,
            where.spool_path,
            where.ledger_path,
        )
        for note in where.notes:
            warn_once("location:" + note, "cmdrdata: %s", note)
        if where.own_spool_dir and where.spool_dir.exists():
            with contextlib.suppress(OSError):  # made by an older version, maybe 0755
                paths.make_private_dir(where.spool_dir, tighten=True)
        self.max_bytes = int(settings.spool_max_mb * 1024 * 1024)
        self.mode = "deliver" if settings.api_key else "ledger"
        # the fleet ledger (CMDRDATA_LEDGER_URL): every process's usage, keyed or not
        self.fleet_url, self.fleet_retention = fleet_ledger.configured(settings)
        # whose usage this process meters: its events are delivered (or recorded) under it
        self.identity = identities.of(
            settings.api_key, settings.endpoint, settings.batch_endpoint, str(self.ledger_path)
        )
        self.serves = self.identity.serves()  # the spool rows this process's senders deliver
        header = {**self.identity.header(), "unattributed": settings.unattributed_customer}
        self.journal = Journal(where.journal_dir, self.max_bytes, header)
        self.problem: str | None = None
        if self.mode == "deliver":
            self.problem = endpoints_problem(settings.endpoint, settings.batch_endpoint)
            if self.problem:
                logger.error(
                    "cmdrdata: %s; usage is kept in the spool and not delivered", self.problem
                )
            if settings.api_key and (bad := key_problem(settings.api_key)):
                logger.warning("cmdrdata: %s", bad)
        self.batch_size = max(1, settings.batch_size)
        self.max_in_flight = max(1, settings.max_in_flight)
        self.linger = settings.batch_linger
        # events gather this long in the journal before they are imported (and then sent):
        # one import round, one segment and one request per window, not per event
        self.import_window = max(IMPORT_BATCH_WINDOW_S, self.linger)
        self.batch_endpoint = batch_url(settings.endpoint, settings.batch_endpoint)
        self._init_runtime_state()
        forksafe.register(self._after_fork_in_child)

    def _init_runtime_state(self) -> None:
        """Everything that belongs to this process's threads (again in a forked child)."""
        self.owner = lease_owner()
        self.breaker = CircuitBreaker(
            self.settings.breaker_threshold, self.settings.breaker_cooldown
        )
        self._lock = threading.Lock()
        self._wake_import = threading.Event()
        self._wake_send = threading.Event()
        self._backlog = threading.Event()  # more is due than one request takes: helpers help
        self._stopping = threading.Event()
        self._stop_import = threading.Event()
        self._deadline = float("inf")
        self._threads: list[threading.Thread] = []
        self._held: list[object] = []  # the threads' spool connections and client (for fork)
        self._client: DeliveryClient | None = None
        self._client_users = 0
        # one batch request at a time until the endpoint is known (re-entered when a refused
        # batch is halved)
        self._probe = threading.RLock()
        self._batch = BATCH_UNKNOWN
        self._no_batch_until = 0.0
        self._remembered_no_batch = False
        self._urgent = 0  # flushes waiting now
        self._fresh = 0  # events spooled since the lead last leased (when to stop lingering)
        self._lingering = False  # the lead waits for more: wake it only for a full batch
        self._published: tuple[str, float] = ("", 0.0)
        # events this process imported, already leased to its senders: (lease until, event)
        self._handoff: collections.deque[tuple[float, Leased]] = collections.deque()
        self._handoff_lock = threading.Lock()
        self._spool_due = True  # the spool may hold due events not in the handoff
        self._spool_leased_at = -math.inf  # when a sender last leased from the spool
        self._waited = threading.local()  # seconds a sender's round spent waiting for answers
        self._sending = 0  # rounds of this process's senders with a lease in flight now
        self.produced = 0
        self.refusal: str | None = None  # why the API last refused the set-up (key, endpoint)

    # --- the app's side -------------------------------------------------------------------

    def submit(self, event: dict[str, Any]) -> None:
        """Accept one usage event or span record: journal it now, deliver it in the
        background. Never raises."""
        try:
            if self.journal.append(journal_line(event).encode()):
                metrics.increment("events_accepted")
            else:
                metrics.increment("events_dropped")
                warn_once("journal-full", "cmdrdata: the usage journal is full; events dropped")
                return
        except (OSError, ValueError, RecursionError, TypeError):
            metrics.increment("events_dropped")
            error_once("journal-write", "cmdrdata: could not journal a usage event")
            return
        self.produced += 1
        if not self._threads:
            self.start()
        if not self._wake_import.is_set():  # the app's thread: no lock when already set
            self._wake_import.set()

    # --- threads --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._threads or self._stop_import.is_set():
                return
            loops: list[tuple[Callable[[], None], str]] = [(self._import_loop, "cmdrdata-import")]
            if self.mode == "deliver" and not self.problem:
                loops.append((self._send_loop, "cmdrdata-send"))
                loops += [
                    (self._help_loop, f"cmdrdata-send-{n}")
                    for n in range(2, self.max_in_flight + 1)
                ]
            forksafe.watch_imports()  # the senders import requests lazily
            for loop, name in loops:
                thread = threading.Thread(target=self._guarded(loop), name=name, daemon=True)
                self._threads.append(thread)
            for thread in self._threads:
                thread.start()

    def start_if_leftovers(self) -> None:
        """Start when an earlier process left events to import or deliver."""
        journal_dir = self.spool_dir / "journal"
        try:
            leftovers = any(journal_dir.iterdir()) if journal_dir.exists() else False
        except OSError:
            leftovers = False
        if self.fleet_url and self._fleet_waiting():  # the fleet ledger was down
            leftovers = True
        if leftovers or (self.mode == "deliver" and self.spool_path.exists()):
            self.start()

    def _fleet_waiting(self) -> int:
        try:
            return fleet_outbox.waiting_in(self.spool_dir)
        except (sqlite3.Error, DamagedDatabase):
            return 0

    def fleet_recorder(self) -> fleet_outbox.FleetRecorder | None:
        """The importer's way into the fleet ledger (``None`` without one)."""
        if not self.fleet_url:
            return None
        return fleet_outbox.FleetRecorder(
            self.fleet_url, self.spool_dir, retention_days=self.fleet_retention
        )

    def metered_recorder(self) -> metered_store.MeteredRecorder | None:
        """The importer's way into the metered record (``None`` with a fleet ledger instead)."""
        if self.fleet_url:
            return None
        return metered_store.MeteredRecorder(self.spool_dir, retention_days=self.fleet_retention)

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        """Run ``loop``; after an internal error, log it and start it again (with a pause)."""

        def run() -> None:
            pause = 0.5
            while True:
                try:
                    loop()
                    return
                except Exception as exc:
                    metrics.increment("pipeline_errors")
                    if is_damage(exc):  # the sender's spool: say what to do, not a traceback
                        self.damaged(
                            exc
                            if isinstance(exc, DamagedDatabase)
                            else DamagedDatabase(self.spool_path, str(exc))
                        )
                    else:
                        error_once("loop:" + loop.__name__, "cmdrdata: delivery thread failed")
                if self._stopping.is_set() or self._stop_import.wait(pause):
                    return
                pause = min(pause * 2, 30.0)

        return run

    def damaged(self, damage: DamagedDatabase) -> None:
        """Warn once per file: usage stays in the journal until the file is moved aside."""
        warn_once(
            "damaged:" + str(damage.path),
            "cmdrdata: %s; usage stays in the journal: %s",
            damage,
            damage.advice,
        )

    def _import_loop(self) -> None:
        store = self.open_store()
        self._held.append(store)
        try:
            while True:
                self._wake_import.wait(IDLE_WAIT_S)
                if not self._stop_import.is_set():
                    self._stop_import.wait(self.import_window)
                # a stop that came during the window: this pass is the last (not one idle
                # wait later, which a short shutdown deadline may not leave)
                stopping = self._stop_import.is_set()
                self._wake_import.clear()
                self.import_journal(store)
                if stopping:
                    return
                self.journal.prepare()  # the app's next line finds its segment open
        finally:
            self.journal.discard_spare()
            self._let_go(store)
            store.close()

    def open_store(self) -> ImportTargets:
        """Where the importer puts events: the spool, or a ledger (opened when first needed)."""
        return ImportTargets(
            self.spool_path, fleet=self.fleet_recorder(), metered=self.metered_recorder()
        )

    def import_journal(self, store: ImportTargets | Spool | None = None) -> int:
        """Move every ready journal segment into the spool or a ledger, each by the identity
        it was metered under; returns events moved. A segment whose store is damaged stays."""
        if isinstance(store, ImportTargets):
            targets = store
        else:  # a spool of the caller's (or none yet): ledgers open for this call only
            targets = ImportTargets(
                store.path if store else self.spool_path,
                store,
                fleet=self.fleet_recorder(),
                metered=self.metered_recorder(),
            )
        try:
            return self._import_into(targets)
        finally:
            if targets is not store:
                targets.close()

    def _import_into(self, targets: ImportTargets) -> int:
        self.journal.rotate()
        moved, spooled_before = 0, targets.spooled
        for path, fd in self.journal.ready_segments():
            try:
                header, lines = read_segment(fd)
                owner = identities.from_header(header)
                targets.check(owner, self.ledger_path)  # a damaged store: before parsing
                # the writer's settings, not this importer's, say how its spans become events
                unattributed = (header or {}).get("unattributed")
                if not isinstance(unattributed, str):
                    unattributed = self.settings.unattributed_customer
                lease = self._handoff_lease(owner)
                added = dropped = 0
                # A slice at a time: a round's objects are what the C allocator's arena of
                # this thread grows to hold, and keeps (a stop or damage in between is safe:
                # the segment is imported again, and what was stored is skipped by its id).
                for start in range(0, len(lines), IMPORT_SLICE):
                    events, lasting = _events_of(lines[start : start + IMPORT_SLICE], unattributed)
                    stored, refused, handed = targets.put(
                        owner,
                        events,
                        self.max_bytes,
                        self.settings.spool_overflow,
                        self.ledger_path,
                        lease,
                        lasting,
                    )
                    del events  # freed before the next slice is made, not after
                    added, dropped = added + stored, dropped + refused
                    if handed and lease is not None:
                        with self._handoff_lock:
                            self._handoff.extend((lease[1], item) for item in handed)
                    elif stored and owner.fingerprint in self.serves:
                        self._spool_due = True  # spooled unleased: a sender leases them
            except DamagedDatabase as damage:
                os.close(fd)  # the segment stays in the journal until the file is fixed
                self.damaged(damage)
                continue
            except Exception:
                os.close(fd)
                raise
            self.journal.imported(path, fd)
            moved += added
            if owner.fingerprint in self.serves:
                self._fresh += added
            metrics.increment("events_spooled", added)
            if dropped:
                metrics.increment("events_dropped", dropped)
                logger.warning(
                    "cmdrdata: spool full (%s MB, policy %s): %d events dropped",
                    self.settings.spool_max_mb,
                    self.settings.spool_overflow,
                    dropped,
                )
        self.journal.reconcile()
        if targets.fleet is not None:  # what waited for the fleet ledger; pruning
            targets.fleet.tick()
        if targets.metered is not None:  # pruning, after the pass (see metered_store)
            targets.metered.tick(self.journal.oldest_start)
        if targets.spooled > spooled_before and (
            not self._lingering or self._fresh >= self.batch_size
        ):
            self._wake_send.set()  # (each wake-up costs: a lingering lead is left alone)
        return moved

    def new_client(self) -> DeliveryClient:
        return DeliveryClient(
            self.settings.endpoint,
            self.settings.batch_endpoint,
            self.settings.api_key or "",
            self.settings.timeout,
            max(self.max_in_flight, tunables.MAX_CONNECTIONS),
        )

    # --- the senders' resources: one client for all, a spool connection each ---------------

    def _use_client(self) -> DeliveryClient:
        with self._lock:
            if self._client is None:
                self._client = self.new_client()
                self._held.append(self._client)
            self._client_users += 1
            return self._client

    def _done_with_client(self) -> None:
        with self._lock:
            self._client_users -= 1
            client = self._client if self._client_users <= 0 else None
            if client is not None:
                self._client = None
                self._let_go(client)
        if client is not None:
            client.close()

    def _open_spool(self) -> Spool:
        spool = Spool(self.spool_path)
        self._held.append(spool)
        return spool

    def _close_spool(self, spool: Spool) -> None:
        self._let_go(spool)
        spool.close()

    def _let_go(self, thing: object) -> None:
        with contextlib.suppress(ValueError):
            self._held.remove(thing)

    # --- the senders ------------------------------------------------------------------------

    def _send_loop(self) -> None:
        """The lead sender: lingers, probes when the breaker is half-open, waits for
        retries, keeps the spool tidy; wakes the helpers when a backlog builds up."""
        spool = self._open_spool()
        try:
            client = self._use_client()
        except BaseException:
            self._close_spool(spool)
            raise
        pruned_at, compacted_at = -math.inf, 0.0  # (monotonic, wall clock)
        last_call = full = reclaimed = False
        last_request = -math.inf
        slow_rounds = 0
        try:
            self._recall_batch_support(spool)
            spool.reclaim(owner_is_dead)
            while True:
                stopping = self._stopping.is_set()
                if stopping and time.monotonic() >= self._deadline:
                    return
                if stopping and not last_call:
                    last_call = True
                    spool.make_due(self.serves)  # one more try for events in a backoff
                if not self.breaker.allow():
                    self._publish_state(spool)
                    if stopping:
                        return
                    self._wake_send.wait(min(self.breaker.wait_time(), IDLE_WAIT_S * 5))
                    self._wake_send.clear()
                    continue
                if not (full or stopping or self._urgent) and self._coalescing():
                    self._linger(last_request)
                self._fresh = 0
                started = time.monotonic()
                attempted, full, waiting = self.send_round(spool, client)
                slow_rounds = slow_rounds + 1 if full and waiting >= HELP_WHEN_WAITING else 0
                if slow_rounds >= HELP_AFTER_ROUNDS:
                    self._backlog.set()  # more is waiting: the helpers take their share
                if attempted:
                    last_request = started
                    self._publish_state(spool)
                    pruned_at = self._prune_delivered(spool, pruned_at)  # (a busy app too)
                    continue
                due_in = spool.next_due_in(self.serves)  # other identities are not ours
                if stopping:
                    if self._sending:  # a helper's request may fail and leave a retry to us
                        self._wake_send.wait(FLUSH_POLL_S)
                        self._wake_send.clear()
                        continue
                    # a retry due before the deadline is still worth waiting for
                    if due_in is None or time.monotonic() + due_in >= self._deadline:
                        if not reclaimed:  # a lease held by a process gone: send it now
                            reclaimed = True
                            if spool.reclaim(owner_is_dead):
                                continue
                        return  # what is left waits for the next process
                    self._wake_send.wait(due_in)
                    continue
                wait = IDLE_WAIT_S if due_in is None else min(max(due_in, 0.01), IDLE_WAIT_S)
                self._wake_send.wait(wait)
                self._wake_send.clear()
                spool.reclaim(owner_is_dead)
                pruned_at = self._prune_delivered(spool, pruned_at)
                now = time.time()
                if now - compacted_at > 60:  # idle: housekeeping
                    spool.compact()
                    compacted_at = now
        finally:
            self._release_handoff(spool)
            self._done_with_client()
            self._close_spool(spool)

    def _prune_delivered(self, spool: Spool, pruned_at: float) -> float:
        """Forget, once a minute, the delivered ids no journal segment can give again
        (:meth:`.Spool.prune_delivered`); returns when it last did. A table an older
        version filled is pruned a chunk a round, until it is done."""
        now = time.monotonic()
        if now - pruned_at < PRUNE_DELIVERED_EVERY_S:
            return pruned_at
        if spool.prune_delivered(self.journal.oldest_start(), limit=PRUNE_CHUNK) >= PRUNE_CHUNK:
            return pruned_at  # more to forget: again after the next round
        return now

    def _release_handoff(self, spool: Spool) -> None:
        """The lead stops: events handed over but never sent go back to the spool at once,
        for the other processes sharing it (not when their lease runs out)."""
        with self._handoff_lock:
            left = [item.event_id for _, item in self._handoff]
            self._handoff.clear()
        if left:
            with contextlib.suppress(Exception):  # else they wait out their lease
                spool.release(left, self.owner)

    def _help_loop(self) -> None:
        """A helper sender: sends its own lease of the backlog while there is one."""
        spool: Spool | None = None
        client: DeliveryClient | None = None
        try:
            while True:
                if not self._stopping.is_set():
                    self._backlog.wait(HELPER_IDLE_S)
                stopping = self._stopping.is_set()
                if stopping and time.monotonic() >= self._deadline:
                    return
                closed = self.breaker.state == CircuitBreaker.CLOSED  # else the lead probes
                if not stopping and not (closed and self._backlog.is_set()):
                    self._backlog.clear()
                    continue
                if stopping and not closed:
                    return
                if spool is None:
                    spool = self._open_spool()
                if client is None:
                    client = self._use_client()
                attempted, full, _ = self.send_round(spool, client)
                if stopping and not attempted:
                    return  # the last pass: nothing left for this helper
                if not full:
                    self._backlog.clear()
        finally:
            if client is not None:
                self._done_with_client()
            if spool is not None:
                self._close_spool(spool)

    def _linger(self, since: float) -> None:
        """Let events gather for the next request: until ``linger`` after the previous one
        started, unless a full batch has been spooled meanwhile or someone waits."""
        end = since + self.linger
        self._lingering = True
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0 or self._fresh >= self.batch_size:
                    return
                if self._stopping.is_set() or self._urgent:
                    return
                self._wake_send.wait(left)
                self._wake_send.clear()
        finally:
            self._lingering = False

    def _handoff_lease(self, owner: identities.Identity) -> tuple[str, float] | None:
        """The lease under which the importer spools ``owner``'s events for this process's
        own senders, or ``None`` (spooled unleased, for any sender of their identity): only
        this process's identity, while its senders run and keep up, coalescing, unbroken."""
        if owner.fingerprint != self.identity.fingerprint or not owner.keyed:
            return None
        if len(self._threads) < 2 or self._stopping.is_set() or not self._coalescing():
            return None
        if self.breaker.state != CircuitBreaker.CLOSED:
            return None
        if len(self._handoff) >= self.batch_size * self.max_in_flight:
            return None  # the senders are behind: the spool queues the rest
        request_s = CONNECT_TIMEOUT + self.settings.timeout
        return self.owner, time.time() + request_s + LEASE_MARGIN_S + self.linger + IDLE_WAIT_S

    def _take_handoff(self, limit: int, max_bytes: int) -> list[Leased]:
        """Up to ``limit`` handed-over events (``max_bytes`` of bodies, at least one) whose
        lease still covers a request; one whose lease is nearly over is left to the spool."""
        taken: list[Leased] = []
        if not self._handoff:
            return taken
        need = CONNECT_TIMEOUT + self.settings.timeout + 1.0
        size, now = 0, time.time()
        with self._handoff_lock:
            while self._handoff and len(taken) < limit:
                until, item = self._handoff[0]
                if until - now < need:
                    self._handoff.popleft()  # leased from the spool again once its lease ends
                    self._spool_due = True
                    continue
                if taken and size + len(item.body) > max_bytes:
                    break
                self._handoff.popleft()
                taken.append(item)
                size += len(item.body)
        return taken

    def _coalescing(self) -> bool:
        """Whether due events go together to the batch endpoint (else one per request)."""
        if self.batch_size <= 1:
            return False
        if self._batch == BATCH_NO and time.time() >= self._no_batch_until:
            self._batch = BATCH_UNKNOWN  # a day later: the API may have one now
        return self._batch != BATCH_NO

    def _recall_batch_support(self, spool: Spool) -> None:
        """What another process (or an earlier run) found about the batch endpoint."""
        if self.batch_size <= 1 or self._batch != BATCH_UNKNOWN:
            return
        since = spool.no_batch_since(self.batch_endpoint)
        if since is not None:
            self._remembered_no_batch = True
            if time.time() - since < NO_BATCH_RECHECK_S:
                self._batch, self._no_batch_until = BATCH_NO, since + NO_BATCH_RECHECK_S

    def send_round(self, spool: Spool, client: DeliveryClient) -> Round:
        """Lease what is due and deliver it: how many events were attempted, whether the
        lease was full (so more may be due), and how much of it was spent waiting."""
        started = time.monotonic()
        self._waited.seconds = 0.0
        coalesce = self._coalescing()
        limit = self.batch_size if coalesce else SINGLE_MODE_LEASE
        if self.breaker.state != CircuitBreaker.CLOSED:
            limit = 1  # half-open: one probe
        max_bytes = MAX_BATCH_BYTES if coalesce else 1 << 62
        leased = self._take_handoff(limit, max_bytes)  # imported here, leased already
        room, size = limit - len(leased), _bytes(leased)
        now = time.monotonic()
        if (
            room > 0
            and size < max_bytes
            and (
                not leased or self._spool_due or self._urgent or now - self._spool_leased_at >= 1.0
            )
        ):
            # long enough to try every leased request once, timeouts included
            lease_s = (CONNECT_TIMEOUT + self.settings.timeout) * (1 if coalesce else limit)
            # only this process's own identity's events (and those of unknown identity)
            more = spool.lease(
                self.owner,
                room,
                lease_s + LEASE_MARGIN_S,
                self.serves,
                max_bytes - size if coalesce else None,
            )
            self._spool_leased_at = now
            if len(more) < room:
                self._spool_due = False
            leased += more
        if not leased:
            return Round(0, False, 0.0)
        if any(item.identity == identities.UNKNOWN for item in leased):
            warn_once(
                "unknown-identity",
                "cmdrdata: delivering events spooled by an older version, which did not "
                "record their key, with this process's key and endpoint",
            )
        with self._lock:
            self._sending += 1
        try:
            if coalesce and len(leased) > 1:
                self._deliver_batch(spool, client, leased)
            else:
                self._deliver_each(spool, client, leased)
        finally:
            with self._lock:
                self._sending -= 1
            self._wake_send.set()  # a lead at its last pass waits for this round's outcome
        # full: as many as allowed, or cut short by the byte bound (more may be due)
        full = len(leased) >= limit or (coalesce and _bytes(leased) > MAX_BATCH_BYTES // 2)
        spent = time.monotonic() - started
        waiting = self._waited.seconds / spent if spent > 0 else 0.0
        return Round(len(leased), full or bool(self._handoff), waiting)

    def _answered(self, started: float, cpu: float) -> None:
        """A request sent at ``started`` (this thread's CPU clock then at ``cpu``) was
        answered (or failed): time it. The wait is what this thread did not work itself
        (encoding and sending the body, reading the answer)."""
        elapsed = time.monotonic() - started
        metrics.observe("delivery_seconds", elapsed)
        self._waited.seconds += max(0.0, elapsed - (time.thread_time() - cpu))

    # --- delivery ---------------------------------------------------------------------------

    def _past_deadline(self) -> bool:
        return self._stopping.is_set() and time.monotonic() >= self._deadline

    def _deliver_each(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        delivered: list[str] = []
        size = 0
        try:
            for index, item in enumerate(leased):
                if not self.breaker.allow() or self._past_deadline():
                    self._give_back(spool, leased[index:])
                    break
                started, cpu = time.monotonic(), time.thread_time()
                result = client.send_one(item.event_id, item.body)
                self._answered(started, cpu)
                if result.outcome == "delivered":
                    delivered.append(item.event_id)
                    size += len(item.body)
                    self.breaker.success()
                    self.refusal = None
                elif result.outcome == "refused":
                    self._dead_letter(spool, item, result)
                    self.breaker.success()  # the API answered: it is up
                else:
                    self._retry(spool, [item], result)
                    self.breaker.failure()
        finally:
            if delivered:
                spool.ack(delivered, size)
                metrics.increment("events_delivered", len(delivered))

    def _deliver_some(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        if len(leased) > 1:
            self._deliver_batch(spool, client, leased)
        else:
            self._deliver_each(spool, client, leased)

    def _deliver_batch(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        if self._batch == BATCH_YES:
            self._post_batch(spool, client, leased)
            return
        with self._probe:  # until the batch endpoint has answered, one probe at a time
            if self._batch == BATCH_NO:  # another sender found out meanwhile
                self._give_back(spool, leased)
                return
            self._post_batch(spool, client, leased)

    def _post_batch(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        started, cpu = time.monotonic(), time.thread_time()
        overall, failed = client.send_batch([(x.event_id, x.body) for x in leased])
        self._answered(started, cpu)
        if overall.outcome == "delivered":
            self.breaker.success()
            self.refusal = None
            self._batch_works(spool)
            done = [x for x in leased if x.event_id not in failed]
            spool.ack([x.event_id for x in done], sum(len(x.body) for x in done))
            metrics.increment("events_delivered", len(done))
            retries: dict[Result, list[Leased]] = {}
            for item in leased:
                result = failed.get(item.event_id)
                if result is None:
                    continue
                if result.outcome == "refused":
                    self._dead_letter(spool, item, result)
                else:  # retried together, like the batch they came in
                    retries.setdefault(result, []).append(item)
            for result, items in retries.items():
                self._retry(spool, items, result)
        elif overall.status in (404, 405):
            self._no_batch_endpoint(spool, overall.status)
            self._give_back(spool, leased)
        elif overall.outcome == "refused":
            # One bad event must not sink its batch: halve it until the bad one is alone.
            self.breaker.success()  # the API answered: it is up
            self._batch_works(spool)  # (and the batch endpoint is there)
            spool.extend_lease(
                [x.event_id for x in leased],
                (CONNECT_TIMEOUT + self.settings.timeout) * len(leased) + LEASE_MARGIN_S,
            )
            half = len(leased) // 2
            self._deliver_some(spool, client, leased[:half])
            self._deliver_some(spool, client, leased[half:])
        else:
            self._retry(spool, leased, overall)
            self.breaker.failure()

    def _batch_works(self, spool: Spool) -> None:
        if self._batch == BATCH_YES:
            return
        self._batch = BATCH_YES
        if self._remembered_no_batch:  # it answered 404 a day ago: not any more
            self._remembered_no_batch = False
            spool.forget_no_batch(self.batch_endpoint)

    def _no_batch_endpoint(self, spool: Spool, status: int | None) -> None:
        warn_once(
            "no-batch-endpoint:" + self.batch_endpoint,
            "cmdrdata: the batch endpoint %s answered %s; sending one event per request "
            "(for a day, by every process that shares this spool)",
            self.batch_endpoint,
            status,
        )
        self._batch, self._no_batch_until = BATCH_NO, time.time() + NO_BATCH_RECHECK_S
        self._remembered_no_batch = True
        spool.remember_no_batch(self.batch_endpoint, status)

    def _give_back(self, spool: Spool, leased: list[Leased]) -> None:
        """Release a lease without counting an attempt: the events are due in the spool."""
        spool.release([item.event_id for item in leased])
        self._spool_due = True

    def _dead_letter(self, spool: Spool, item: Leased, result: Result) -> None:
        extra = {"event_id": item.event_id, "trace_id": _trace_id(item.body)}
        spool.dead_letter(item.event_id, result.reason, result.status)
        metrics.increment("events_dead_lettered")
        logger.warning(
            "cmdrdata: event refused (%s); moved to dead letters", result.reason, extra=extra
        )

    def _retry(self, spool: Spool, items: list[Leased], result: Result) -> None:
        """Schedule the next attempt at ``items``, all at the same moment (one jittered
        delay), so that they are sent together again."""
        if result.outcome in ("unauthorized", "misconfigured"):
            self.refusal = result.reason
            error_once(result.outcome, "cmdrdata: %s; events stay spooled", result.reason)
            delay = self.settings.retry_max_delay
        else:
            cap = self.settings.retry_max_delay
            if self._urgent:  # someone waits: retry promptly, still with jitter
                cap = min(cap, FLUSH_MAX_DELAY_S)
            attempts = max(item.attempts for item in items)
            delay = backoff_delay(attempts, self.settings.retry_base_delay, cap)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
        spool.retry_many([item.event_id for item in items], delay, result.reason)
        self._spool_due = True  # due again later, from the spool
        metrics.increment("events_retried", len(items))
        if len(items) == 1:
            extra = {"event_id": items[0].event_id, "trace_id": _trace_id(items[0].body)}
            logger.info(
                "cmdrdata: delivery failed (%s); retry in %.2fs", result.reason, delay, extra=extra
            )
        else:
            logger.info(
                "cmdrdata: delivery failed (%s); %d events retry in %.2fs",
                result.reason,
                len(items),
                delay,
                extra={"event_id": items[0].event_id},
            )

    def _publish_state(self, spool: Spool) -> None:
        """The breaker's state for doctor: when it changes, else at most once a second."""
        state, now = self.breaker.state, time.monotonic()
        last_state, last_at = self._published
        if state == last_state and now - last_at < STATE_EVERY_S:
            return
        self._published = (state, now)
        with contextlib.suppress(Exception):  # doctor's view only: never worth failing for
            spool.set_state(breaker=state, breaker_pid=os.getpid(), at=time.time())

    # --- state for operators --------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        """Spool depth and size, dead letters, journal bytes (for /metrics)."""
        values: dict[str, float] = {"journal_bytes": float(self.journal.pending_bytes())}
        if self.mode == "deliver" and self.spool_path.exists():
            try:
                spool = Spool(self.spool_path)
            except DamagedDatabase as damage:
                self.damaged(damage)
                return values
            try:
                stats = spool.stats()
            finally:
                spool.close()
            values.update(
                spool_depth=stats.depth, spool_bytes=stats.bytes, dead_letters=stats.dead_letters
            )
        return values

    def readiness(self) -> tuple[bool, str]:
        """Can this process deliver usage right now? (for /readyz)"""
        if self.mode == "ledger" and self.fleet_url:
            return True, "ready: recording to the fleet ledger " + fleet_ledger.describe(
                self.fleet_url
            )
        if self.mode == "ledger":
            return True, f"ready: recording to the local ledger {self.ledger_path}"
        if self.problem:
            return False, f"not ready: {self.problem}"
        if self.refusal:
            return False, f"not ready: {self.refusal}"
        if self.breaker.state == CircuitBreaker.OPEN:
            return False, "not ready: the events API is failing (circuit breaker open)"
        return True, "ready"

    # --- flush and shutdown ---------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Import the journal and deliver until the spool holds nothing of this process's
        identity (or ``timeout``; NaN means the default, 5 s). Other identities' events
        are theirs to deliver. Never raises for a damaged spool or ledger: the events stay
        in the journal and it returns ``False``."""
        deadline = time.monotonic() + clamp(timeout, 0.0, MAX_TIMEOUT_S, DEFAULT_FLUSH_TIMEOUT_S)
        store = self.open_store()
        try:
            self.import_journal(store)
            imported = self._await_imports(store, deadline)
            if self.mode == "ledger":  # and nothing waits for the fleet ledger
                return imported and store.kept == 0 and store.fleet_waiting() == 0
            if self.problem:
                return False
            return self.drain(store.spool(), deadline) and imported and store.kept == 0
        except DamagedDatabase as damage:
            self.damaged(damage)
            return False
        finally:
            store.close()

    def _await_imports(self, store: ImportTargets, deadline: float) -> bool:
        """Segments of this process that another importer (this process's own thread, or
        another process) was moving when the flush looked, and so skipped: wait for them,
        so that what was metered before the flush is stored before it is drained (else the
        flush could find the spool empty and say all was delivered). ``False`` if some
        are still there at ``deadline``."""
        left = self.journal.unimported()
        while left and store.kept == 0 and time.monotonic() < deadline:
            if self._stopping.is_set():
                break
            self._stopping.wait(min(FLUSH_POLL_S, max(0.0, deadline - time.monotonic())))
            self.import_journal(store)  # any that importer let go of unfinished
            left = [path for path in left if path.exists()]
        return not left

    def drain(
        self, spool: Spool, deadline: float, progress: Callable[[int], None] | None = None
    ) -> bool:
        """Deliver every spooled event of this identity now: backoffs skipped, no linger,
        prompt retries. ``True`` once none is left; ``False`` at ``deadline`` (monotonic),
        or earlier when nothing left can be tried before it (a refused key's events wait
        ``CMDRDATA_RETRY_MAX_DELAY``). ``progress`` gets the number still waiting."""
        spool.make_due(self.serves)  # "now": skip any backoff the events were waiting out
        self._hurry(1)
        try:
            self.start()
            while True:
                state = spool.progress(self.serves)
                if progress is not None:
                    progress(state.depth)
                if state.depth == 0:
                    return True
                now = time.monotonic()
                if now >= deadline or self._stopping.is_set() or len(self._threads) < 2:
                    return False
                if state.leased == 0 and (
                    state.next_due_in is None or now + state.next_due_in >= deadline
                ):
                    return False
                self._wake_send.set()
                self._stopping.wait(min(FLUSH_POLL_S, deadline - now))
        finally:
            self._hurry(-1)

    def _hurry(self, change: int) -> None:
        """Count the flushes waiting; while there is one, the breaker probes every second."""
        with self._lock:
            self._urgent = max(0, self._urgent + change)
            self.breaker.hurry(FLUSH_COOLDOWN_S if self._urgent else None)

    def shutdown(self, timeout: float | None = None) -> None:
        """Deliver what can be delivered within the deadline, then stop the threads."""
        default = self.settings.shutdown_timeout
        timeout = default if timeout is None else clamp(timeout, 0.0, MAX_TIMEOUT_S, default)
        if not self._threads or self._stop_import.is_set():
            return
        self._deadline = time.monotonic() + (timeout if self.produced else 0.0)
        importer, senders = self._threads[0], self._threads[1:]
        self._stop_import.set()  # first: the last journal lines reach the spool ...
        self._wake_import.set()
        importer.join(_join_timeout(self._deadline))
        self._stopping.set()  # ... then the senders' last pass sends them
        self._wake_send.set()
        self._backlog.set()
        for thread in senders:
            thread.join(_join_timeout(self._deadline))

    def _after_fork_in_child(self) -> None:
        """In a forked child: none of the parent's threads runs here, and its locks,
        connections and client may have been in use by one of them. Start afresh; park
        what the parent's threads held (never used, closed or freed in the child)."""
        _PARKED.extend(self._held)
        self._init_runtime_state()


def _join_timeout(deadline: float) -> float:
    return min(max(0.0, deadline - time.monotonic()) + 0.5, threading.TIMEOUT_MAX)


def _bytes(leased: list[Leased]) -> int:
    return sum(len(item.body) for item in leased)


def _trace_id(body: str) -> str | None:
    try:
        value = json.loads(body).get("trace_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def lease_owner() -> str:
    """``host:pidns:pid:nonce``: which process holds a lease, and whether it can be alive."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """A lease owner in this host and pid namespace whose process no longer exists."""
    parts = owner.split(":")
    if len(parts) != 4:
        return False
    host, namespace, pid, _ = parts
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False  # another machine or container: let its lease expire
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _record_in_fleet(
    fleet: fleet_outbox.FleetRecorder,
    owner: identities.Identity,
    events: list[tuple[str, str, dict[str, Any] | None]],
    max_bytes: int,
    policy: str,
) -> None:
    """Keyed usage, delivered to cmdrdata, is written to the fleet ledger too."""
    _, unrecorded = fleet.record(events, owner.fingerprint, max_bytes, policy)
    if unrecorded:
        logger.warning(
            "cmdrdata: the fleet ledger's outbox is full: %d events not recorded in it "
            "(they are delivered to cmdrdata all the same)",
            unrecorded,
        )


class ImportTargets:
    """Where imported events go, by the identity they were metered under.

    Keyed usage goes to the spool, where it waits for a sender of that identity;
    keyless usage goes to the ledger its segment names. Connections open when
    first needed and stay open while the importer runs. A damaged file is not
    tried again for a few seconds: its segments stay in the journal meanwhile.
    """

    def __init__(
        self,
        spool_path: Path,
        spool: Spool | None = None,
        fleet: fleet_outbox.FleetRecorder | None = None,
        metered: metered_store.MeteredRecorder | None = None,
    ) -> None:
        self.spool_path = spool_path
        self.fleet = fleet  # with CMDRDATA_LEDGER_URL: the fleet ledger gets every event
        self.metered = metered  # else keyed usage is summed in the metered record
        self._spool = spool
        self._borrowed = spool is not None  # the caller's: not closed here
        self._ledgers: dict[Path, sqlite3.Connection] = {}
        self._damaged: dict[Path, tuple[float, DamagedDatabase]] = {}
        self.spooled = self.recorded = 0  # events added, since these targets were opened
        self.kept = 0  # segments left in the journal because their store is damaged

    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self.spool_path)
        return self._spool

    def check(self, owner: identities.Identity, default_ledger: Path) -> tuple[bool, Path]:
        """Whether ``owner``'s events are keyless, and their file; raises
        :class:`DamagedDatabase` while that file is known to be damaged."""
        keyless = owner.fingerprint == identities.LEDGER
        target = Path(owner.ledger_path or default_ledger) if keyless else self.spool_path
        retry_at, damage = self._damaged.get(target, (0.0, None))
        if damage is not None and time.monotonic() < retry_at:
            self.kept += 1
            raise damage
        return keyless, target

    def put(
        self,
        owner: identities.Identity,
        events: list[tuple[str, str, dict[str, Any] | None]],
        max_bytes: int,
        policy: str,
        default_ledger: Path,
        lease: tuple[str, float] | None = None,
        lasting: Collection[str] = (),
    ) -> tuple[int, int, list[Leased]]:
        """Store one segment's events; returns ``(added, dropped, leased)``: with ``lease``
        (owner, until), spooled events come back leased to it; ``lasting``: the ids the
        spool and the metered record keep their whole window (:meth:`.Spool.prune_delivered`,
        :meth:`.MeteredStore.forget_ids`). Raises
        :class:`DamagedDatabase` when their store is damaged."""
        keyless, target = self.check(owner, default_ledger)
        try:
            if keyless and self.fleet is not None:  # the fleet ledger instead of a local one
                added, dropped = self.fleet.record(events, owner.fingerprint, max_bytes, policy)
                self.recorded += added
                return added, dropped, []
            if keyless:
                conn = self._ledgers.get(target) or ledger_db.open_ledger(target)
                self._ledgers[target] = conn
                added = ledger_db.record(conn, [(e, raw) for _, raw, e in events if e is not None])
                self.recorded += added
                return added, 0, []
            added, dropped, leased = self.spool().put_leased(
                events, max_bytes, policy, owner.fingerprint, lease, lasting
            )
            self.spooled += added
            if self.fleet is not None:  # what was metered, for report and reconcile
                _record_in_fleet(self.fleet, owner, events, max_bytes, policy)
            elif self.metered is not None:  # the same, locally (never raises)
                self.metered.record(events, self.spool(), lasting)
            return added, dropped, leased
        except (sqlite3.DatabaseError, DamagedDatabase) as exc:
            if not is_damage(exc):
                raise
            damage = exc if isinstance(exc, DamagedDatabase) else DamagedDatabase(target, str(exc))
        self._forget(target)
        self._damaged[target] = (time.monotonic() + DAMAGED_RETRY_S, damage)
        self.kept += 1
        raise damage

    def _forget(self, target: Path) -> None:
        """Drop the connection to a damaged file, so that a repaired one is opened afresh."""
        with contextlib.suppress(Exception):
            if target == self.spool_path and self._spool is not None and not self._borrowed:
                self._spool.close()
                self._spool = None
            elif target in self._ledgers:
                self._ledgers.pop(target).close()

    def fleet_waiting(self) -> int:
        """Events waiting for the fleet ledger (in the outbox of the spool folder)."""
        return self.fleet.waiting() if self.fleet is not None else 0

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        if self.metered is not None:
            self.metered.close()
        if self._spool is not None and not self._borrowed:
            self._spool.close()
        for conn in self._ledgers.values():
            conn.close()
        self._ledgers.clear()
