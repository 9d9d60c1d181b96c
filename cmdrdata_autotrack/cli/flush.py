"""``cmdrdata-autotrack flush`` and ``dead-letters``: deliver the spool now; inspect refusals."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ..config import Settings
from ..export import fleet_ledger
from ..export.backoff import MAX_TIMEOUT_S, clamp
from ..export.client import safe_extract
from ..export.identity import describe_counts
from ..export.pipeline import ImportTargets, Pipeline, owner_is_dead
from ..export.spool import Spool
from ..export.sqlite import DamagedDatabase, is_damage
from ..paths import locations
from ..telemetry import metrics
from ..telemetry.logging import register_secret

DEFAULT_TIMEOUT_S = 300.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "flush",
        help="deliver what is spooled now (or record it in the ledger), with progress",
        description="Import every journal left by this machine's processes (keyless usage "
        "into its ledger, keyed usage into the spool), then deliver the events of this key "
        "and endpoint until none is left, none is due, or the timeout passes. Events of "
        "other keys or endpoints are counted, never sent.",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default 300)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def add_dead_letters_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "dead-letters",
        help="list events the API refused for good, or queue them again",
        description="Events the events API refused with a non-retryable status.",
    )
    parser.add_argument(
        "--resend", nargs="*", metavar="EVENT_ID", help="queue again (all, or these)"
    )
    parser.add_argument("--json", action="store_true", help="write JSON")
    parser.set_defaults(func=run_dead_letters)


def progress(out: TextIO, done: int, total: int, width: int = 30) -> None:
    total = max(total, done, 1)
    filled = int(width * done / total)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} delivered")
    out.flush()


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pipeline = Pipeline(settings)
    try:
        if pipeline.mode == "ledger":
            return _record(pipeline)
        if pipeline.problem:
            print(f"Not delivering: {pipeline.problem}.", file=sys.stderr)
            return 1
        return _deliver(pipeline, args)
    except (DamagedDatabase, sqlite3.DatabaseError) as exc:
        if not is_damage(exc):
            raise
        damage = exc if isinstance(exc, DamagedDatabase) else None
        damage = damage or DamagedDatabase(pipeline.spool_path, str(exc))  # found mid-way
        print(f"cmdrdata-autotrack: {damage}: {damage.advice}.", file=sys.stderr)
        return 1


def _record(pipeline: Pipeline) -> int:
    """No key: record keyless usage in its ledger; keyed usage waits in the spool."""
    store = pipeline.open_store()
    try:
        if pipeline.spool_path.exists():
            store.spool()  # a damaged spool is reported before anything is moved
        pipeline.import_journal(store)
        waiting = store.fleet_waiting()
        if store.fleet is not None:  # CMDRDATA_LEDGER_URL
            where = fleet_ledger.describe(store.fleet.store.url)
            print(f"Recorded {store.fleet.recorded} event(s) in the fleet ledger {where}.")
            if waiting:
                print(f"{waiting} event(s) wait in {store.fleet.outbox_path} for it to answer.")
        else:
            print(f"Recorded {store.recorded} event(s) in the ledger {pipeline.ledger_path}.")
        if pipeline.spool_path.exists():
            _print_others(store.spool(), pipeline)
    finally:
        store.close()
    # a damaged ledger (the warning said what to do), or the fleet ledger did not answer
    return 1 if store.kept or waiting else 0


def _print_others(spool: Spool, pipeline: Pipeline) -> None:
    """Events waiting for another identity: safe to show (fingerprints), not ours to send."""
    others = {
        fingerprint: count
        for fingerprint, (count, _) in spool.waiting_by_identity().items()
        if fingerprint not in pipeline.serves
    }
    if others:
        print(
            f"{sum(others.values())} event(s) wait for another key or endpoint "
            f"({describe_counts(others)}); only a process with those settings delivers them."
        )


SETTLE_S = 1.0  # how long an empty spool is watched for events another importer adds


def _arrive_within(spool: Spool, serves: Sequence[str], seconds: float) -> bool:
    """Whether events of ``serves`` appear in the spool within ``seconds`` (polled)."""
    until = time.monotonic() + seconds
    while True:
        if spool.stats(serves).depth:
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.05)


def _deliver(pipeline: Pipeline, args: argparse.Namespace) -> int:
    out = sys.stderr
    serves = pipeline.serves  # this key and endpoint's events (and unknown ones), no others'
    timeout = clamp(args.timeout, 0.0, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S)  # nan: the default
    spool = Spool(pipeline.spool_path)
    store = ImportTargets(
        pipeline.spool_path,
        spool,
        fleet=pipeline.fleet_recorder(),
        metered=pipeline.metered_recorder(),
    )
    try:
        pipeline.import_journal(store)
        spool.reclaim(owner_is_dead)  # leases of processes that died while sending
        before = metrics.snapshot()
        deadline = time.monotonic() + timeout

        def done() -> tuple[int, int]:
            """Events this run delivered, and those it delivered or dead-lettered."""
            now = metrics.snapshot()
            delivered, refused = (
                now.get(name, 0) - before.get(name, 0)
                for name in ("events_delivered", "events_dead_lettered")
            )
            return delivered, delivered + refused

        def show(waiting: int) -> None:
            if not args.quiet:
                handled = done()[1]
                progress(out, handled, handled + waiting)

        # the pipeline's own senders, concurrent and coalescing, with prompt retries; again
        # while events keep arriving: another process may hold a journal segment that it is
        # importing into this spool right now, and its events land within an import round
        while pipeline.drain(spool, deadline, show) and _arrive_within(
            spool, serves, min(SETTLE_S, max(0.0, deadline - time.monotonic()))
        ):
            pass
        pipeline.shutdown(0)
        stats = spool.stats(serves)
        show(stats.depth)
        if not args.quiet:
            out.write("\n")
        print(
            f"{done()[0]} delivered, {stats.depth} still spooled, "
            f"{stats.dead_letters} dead letter(s)."
        )
        if store.recorded:  # keyless usage of other processes: recorded, never sent
            print(f"Recorded {store.recorded} keyless event(s) in their ledger.")
        _print_others(spool, pipeline)
    finally:
        pipeline.shutdown(0)
        store.close()
        spool.close()
    return 0 if stats.depth == 0 and not store.kept else 1


def run_dead_letters(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    where = locations(settings.spool_dir, settings.ledger_path)
    if not where.spool_path.exists():
        print("No spool yet: no dead letters.")
        return 0
    spool = Spool(where.spool_path)
    try:
        if args.resend is not None:
            count = spool.resend_dead_letters(args.resend or None)
            print(f"{count} event(s) queued again; run `cmdrdata-autotrack flush` to send now.")
            return 0
        rows = spool.dead_letters(limit=1000)
    finally:
        spool.close()
    # reasons quote the API's answers: mask any secret in them, even in rows stored by older
    # versions, and keep control characters off the terminal
    register_secret(settings.api_key)
    for row in rows:
        row["reason"] = safe_extract(str(row["reason"]), limit=10_000)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No dead letters.")
    else:
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(str(row["failed_at"]))))
            print(f"{row['event_id']}  {when}Z  HTTP {row['status']}  {row['reason']}")
    return 0
