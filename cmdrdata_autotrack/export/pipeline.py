"""The delivery pipeline: journal → spool → cmdrdata (or the local ledger), in the background.

* The app's thread only appends the event to this process's journal
  (:meth:`Pipeline.submit`): microseconds, no locks shared with other processes,
  durable once it returns.
* The *importer* thread moves closed journal segments into the shared spool (or
  the ledger) and deletes them. Each segment names whose usage it holds (its
  identity, :mod:`.identity`): keyed usage goes to the spool under that
  identity, keyless usage to the ledger, whichever process imports it.
* The *sender* thread leases due events of its own identity from the spool and
  posts them with their ``Idempotency-Key``; acknowledged events leave the
  spool, failed ones are retried with backoff and jitter behind a circuit
  breaker, refused ones go to the dead letters.

Threads start with the first event (or at start-up when an earlier process left
events behind). At exit and on SIGTERM the pipeline delivers what it can within
``CMDRDATA_SHUTDOWN_TIMEOUT``; the rest stays spooled for the next process.
After ``fork`` the child gets fresh threads, locks, journal and connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import paths
from ..config import Settings
from ..telemetry import metrics
from ..telemetry.logging import error_once, warn_once
from . import identity as identities
from . import ledger as ledger_db
from .backoff import CircuitBreaker, backoff_delay
from .client import CONNECT_TIMEOUT, DeliveryClient, Result, endpoints_problem, key_problem
from .journal import Journal, read_segment
from .processor import span_record_to_event
from .spool import Leased, Spool
from .sqlite import DamagedDatabase, is_damage

logger = logging.getLogger("cmdrdata_autotrack.delivery")

IMPORT_BATCH_WINDOW_S = 0.05  # gather events this long before closing a journal segment
IDLE_WAIT_S = 1.0
SINGLE_MODE_LEASE = 8
LEASE_MARGIN_S = 10.0
DAMAGED_RETRY_S = 5.0  # how often the importer tries a damaged spool or ledger again


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
        # whose usage this process meters: its events are delivered (or recorded) under it
        self.identity = identities.of(
            settings.api_key, settings.endpoint, settings.batch_endpoint, str(self.ledger_path)
        )
        self.serves = self.identity.serves()  # the spool rows this process's sender delivers
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
        self.owner = lease_owner()
        self.batch_size = max(1, settings.batch_size)
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown)
        self._init_runtime_state()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _init_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._wake_import = threading.Event()
        self._wake_send = threading.Event()
        self._stopping = threading.Event()
        self._stop_import = threading.Event()
        self._deadline = float("inf")
        self._threads: list[threading.Thread] = []
        self.produced = 0
        self.refusal: str | None = None  # why the API last refused the set-up (key, endpoint)

    # --- the app's side -------------------------------------------------------------------

    def submit(self, event: dict[str, Any]) -> None:
        """Accept one usage event or span record: journal it now, deliver it in the
        background. Never raises."""
        try:
            line = json.dumps(event, separators=(",", ":")) + "\n"
            if self.journal.append(line.encode()):
                metrics.increment("events_accepted")
            else:
                metrics.increment("events_dropped")
                warn_once("journal-full", "cmdrdata: the usage journal is full; events dropped")
                return
        except (OSError, ValueError):
            metrics.increment("events_dropped")
            error_once("journal-write", "cmdrdata: could not journal a usage event")
            return
        self.produced += 1
        if not self._threads:
            self.start()
        self._wake_import.set()

    # --- threads --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._threads or self._stop_import.is_set():
                return
            importer = threading.Thread(
                target=self._guarded(self._import_loop), name="cmdrdata-import", daemon=True
            )
            self._threads.append(importer)
            if self.mode == "deliver" and not self.problem:
                sender = threading.Thread(
                    target=self._guarded(self._send_loop), name="cmdrdata-send", daemon=True
                )
                self._threads.append(sender)
            for thread in self._threads:
                thread.start()

    def start_if_leftovers(self) -> None:
        """Start when an earlier process left events to import or deliver."""
        journal_dir = self.spool_dir / "journal"
        try:
            leftovers = any(journal_dir.iterdir()) if journal_dir.exists() else False
        except OSError:
            leftovers = False
        if leftovers or (self.mode == "deliver" and self.spool_path.exists()):
            self.start()

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
        try:
            while True:
                self._wake_import.wait(IDLE_WAIT_S)
                stopping = self._stop_import.is_set()
                if not stopping:
                    self._stop_import.wait(IMPORT_BATCH_WINDOW_S)
                self._wake_import.clear()
                self.import_journal(store)
                if stopping:
                    return
        finally:
            store.close()

    def open_store(self) -> ImportTargets:
        """Where the importer puts events: the spool, or a ledger (opened when first needed)."""
        return ImportTargets(self.spool_path)

    def import_journal(self, store: ImportTargets | Spool | None = None) -> int:
        """Move every ready journal segment into the spool or a ledger, each by the identity
        it was metered under; returns events moved. A segment whose store is damaged stays."""
        if isinstance(store, ImportTargets):
            targets = store
        else:  # a spool of the caller's (or none yet): ledgers open for this call only
            targets = ImportTargets(store.path if store else self.spool_path, store)
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
                events: list[tuple[str, str, dict[str, Any] | None]] = []
                for line in lines:
                    try:
                        event = json.loads(line)
                        if "a" in event and "event_id" not in event:  # a span record
                            event = span_record_to_event(event, unattributed)
                            raw = json.dumps(event, separators=(",", ":"), allow_nan=False)
                        else:
                            raw = line.decode()
                        events.append((event["event_id"], raw, event))
                    except (ValueError, KeyError, TypeError):
                        metrics.increment("events_malformed")
                        warn_once("journal-garbage", "cmdrdata: skipped a malformed journal line")
                added, dropped = targets.put(
                    owner, events, self.max_bytes, self.settings.spool_overflow, self.ledger_path
                )
            except DamagedDatabase as damage:
                os.close(fd)  # the segment stays in the journal until the file is fixed
                self.damaged(damage)
                continue
            except Exception:
                os.close(fd)
                raise
            self.journal.imported(path, fd)
            moved += added
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
        if targets.spooled > spooled_before:
            self._wake_send.set()
        return moved

    def new_client(self) -> DeliveryClient:
        return DeliveryClient(
            self.settings.endpoint,
            self.settings.batch_endpoint,
            self.settings.api_key or "",
            self.settings.timeout,
        )

    def _send_loop(self) -> None:
        spool = Spool(self.spool_path)
        client = self.new_client()
        pruned_at = compacted_at = 0.0
        last_call = False
        try:
            spool.reclaim(owner_is_dead)
            while True:
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    return
                if self._stopping.is_set() and not last_call:
                    last_call = True
                    spool.make_due(self.serves)  # one more try for events in a backoff
                if not self.breaker.allow():
                    self._publish_state(spool)
                    if self._stopping.is_set():
                        return
                    self._wake_send.wait(min(self.breaker.wait_time(), IDLE_WAIT_S * 5))
                    self._wake_send.clear()
                    continue
                if self.send_round(spool, client):
                    continue
                due_in = spool.next_due_in(self.serves)  # other identities are not ours
                if self._stopping.is_set():
                    # a retry due before the deadline is still worth waiting for
                    if due_in is None or time.monotonic() + due_in >= self._deadline:
                        return  # what is left waits for the next process
                    self._wake_send.wait(due_in)
                    continue
                wait = IDLE_WAIT_S if due_in is None else min(max(due_in, 0.01), IDLE_WAIT_S)
                self._wake_send.wait(wait)
                self._wake_send.clear()
                spool.reclaim(owner_is_dead)
                now = time.time()
                if now - pruned_at > 3600:  # idle: housekeeping
                    spool.prune_delivered()
                    pruned_at = now
                if now - compacted_at > 60:
                    spool.compact()
                    compacted_at = now
        finally:
            client.close()
            spool.close()

    def send_round(self, spool: Spool, client: DeliveryClient) -> int:
        """Lease what is due and deliver it; returns how many events were attempted."""
        limit = self.batch_size if self.batch_size > 1 else SINGLE_MODE_LEASE
        if self.breaker.state != CircuitBreaker.CLOSED:
            limit = 1  # half-open: one probe
        # long enough to try every leased request once, timeouts included
        lease_s = (CONNECT_TIMEOUT + self.settings.timeout) * (1 if self.batch_size > 1 else limit)
        # only this process's own identity's events (and those of unknown identity)
        leased = spool.lease(self.owner, limit, lease_s + LEASE_MARGIN_S, self.serves)
        if leased:
            if any(item.identity == identities.UNKNOWN for item in leased):
                warn_once(
                    "unknown-identity",
                    "cmdrdata: delivering events spooled by an older version, which did not "
                    "record their key, with this process's key and endpoint",
                )
            if self.batch_size > 1 and len(leased) > 1:
                self._deliver_batch(spool, client, leased)
            else:
                self._deliver_each(spool, client, leased)
            self._publish_state(spool)
        return len(leased)

    # --- delivery ---------------------------------------------------------------------------

    def _deliver_each(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        delivered: list[str] = []
        for index, item in enumerate(leased):
            if not self.breaker.allow() or (
                self._stopping.is_set() and time.monotonic() >= self._deadline
            ):
                spool.release([x.event_id for x in leased[index:]])
                break
            started = time.monotonic()
            result = client.send_one(item.event_id, item.body)
            metrics.observe("delivery_seconds", time.monotonic() - started)
            if result.outcome == "delivered":
                delivered.append(item.event_id)
                self.breaker.success()
                self.refusal = None
            else:
                self._handle_failure(spool, item, result)
        if delivered:
            spool.ack(delivered)
            metrics.increment("events_delivered", len(delivered))

    def _deliver_batch(self, spool: Spool, client: DeliveryClient, leased: list[Leased]) -> None:
        started = time.monotonic()
        overall, per_event = client.send_batch([(x.event_id, x.body) for x in leased])
        metrics.observe("delivery_seconds", time.monotonic() - started)
        if overall.outcome == "delivered":
            self.breaker.success()
            self.refusal = None
            delivered = []
            for item in leased:
                result = per_event.get(item.event_id)
                if result is None or result.outcome == "delivered":
                    delivered.append(item.event_id)
                else:
                    self._handle_failure(spool, item, result, count_breaker=False)
            spool.ack(delivered)
            metrics.increment("events_delivered", len(delivered))
        elif overall.status in (404, 405):
            warn_once(
                "no-batch-endpoint",
                "cmdrdata: the batch endpoint %s answered 404; sending one event per request",
                client.batch_endpoint,
            )
            self.batch_size = 1
            spool.release([x.event_id for x in leased])
        elif overall.outcome == "refused":
            # One bad event must not sink its batch: find it by sending each on its own.
            spool.extend_lease(
                [x.event_id for x in leased],
                (CONNECT_TIMEOUT + self.settings.timeout) * len(leased) + LEASE_MARGIN_S,
            )
            self._deliver_each(spool, client, leased)
        else:
            for item in leased:
                self._handle_failure(spool, item, overall, count_breaker=False)
            self.breaker.failure()

    def _handle_failure(
        self, spool: Spool, item: Leased, result: Result, count_breaker: bool = True
    ) -> None:
        extra = {"event_id": item.event_id, "trace_id": _trace_id(item.body)}
        if result.outcome == "refused":
            spool.dead_letter(item.event_id, result.reason, result.status)
            metrics.increment("events_dead_lettered")
            logger.warning(
                "cmdrdata: event refused (%s); moved to dead letters", result.reason, extra=extra
            )
            if count_breaker:
                self.breaker.success()  # the API answered: it is up
            return
        if result.outcome in ("unauthorized", "misconfigured"):
            self.refusal = result.reason
            error_once(result.outcome, "cmdrdata: %s; events stay spooled", result.reason)
            delay = self.settings.retry_max_delay
        else:
            delay = backoff_delay(
                item.attempts, self.settings.retry_base_delay, self.settings.retry_max_delay
            )
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
        spool.retry(item.event_id, delay, result.reason)
        metrics.increment("events_retried")
        logger.info(
            "cmdrdata: delivery failed (%s); retry in %.2fs", result.reason, delay, extra=extra
        )
        if count_breaker:
            self.breaker.failure()

    def _publish_state(self, spool: Spool) -> None:
        with contextlib.suppress(Exception):  # doctor's view only: never worth failing for
            spool.set_state(breaker=self.breaker.state, breaker_pid=os.getpid(), at=time.time())

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
        """Import the journal and wait until the spool holds nothing of this process's due
        (or ``timeout``). Other identities' events are theirs to deliver. Never raises for
        a damaged spool or ledger: the events stay in the journal and it returns ``False``."""
        deadline = time.monotonic() + timeout
        store = self.open_store()
        try:
            self.import_journal(store)
            if self.mode == "ledger":
                return store.kept == 0
            if self.problem:
                return False
            self.start()
            self._wake_send.set()
            while time.monotonic() < deadline:
                stats = store.spool().stats(self.serves)
                if stats.due == 0 and (stats.depth == 0 or not self._threads):
                    return bool(stats.depth == 0) and store.kept == 0
                self._wake_send.set()
                self._stopping.wait(min(0.02, max(0.0, deadline - time.monotonic())))
            return False
        except DamagedDatabase as damage:
            self.damaged(damage)
            return False
        finally:
            store.close()

    def shutdown(self, timeout: float | None = None) -> None:
        """Deliver what can be delivered within the deadline, then stop the threads."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if not self._threads or self._stop_import.is_set():
            return
        self._deadline = time.monotonic() + (timeout if self.produced else 0.0)
        importer, senders = self._threads[0], self._threads[1:]
        self._stop_import.set()  # first: the last journal lines reach the spool ...
        self._wake_import.set()
        importer.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
        self._stopping.set()  # ... then the sender's last pass sends them
        self._wake_send.set()
        for thread in senders:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)

    def _after_fork_in_child(self) -> None:
        self._init_runtime_state()
        self.journal.after_fork_in_child()
        self.owner = lease_owner()
        self.breaker = CircuitBreaker(
            self.settings.breaker_threshold, self.settings.breaker_cooldown
        )


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


class ImportTargets:
    """Where imported events go, by the identity they were metered under.

    Keyed usage goes to the spool, where it waits for a sender of that identity;
    keyless usage goes to the ledger its segment names. Connections open when
    first needed and stay open while the importer runs. A damaged file is not
    tried again for a few seconds: its segments stay in the journal meanwhile.
    """

    def __init__(self, spool_path: Path, spool: Spool | None = None) -> None:
        self.spool_path = spool_path
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
    ) -> tuple[int, int]:
        """Store one segment's events; returns ``(added, dropped)``. Raises
        :class:`DamagedDatabase` when their store is damaged."""
        keyless, target = self.check(owner, default_ledger)
        try:
            if keyless:
                conn = self._ledgers.get(target) or ledger_db.open_ledger(target)
                self._ledgers[target] = conn
                added = ledger_db.record(conn, [(e, raw) for _, raw, e in events if e is not None])
                self.recorded += added
                return added, 0
            added, dropped = self.spool().put(events, max_bytes, policy, owner.fingerprint)
            self.spooled += added
            return added, dropped
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

    def close(self) -> None:
        if self._spool is not None and not self._borrowed:
            self._spool.close()
        for conn in self._ledgers.values():
            conn.close()
        self._ledgers.clear()
