"""``cmdrdata-autotrack flush`` and ``dead-letters``: deliver the spool now; inspect refusals."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from ..config import Settings
from ..export.pipeline import Pipeline, owner_is_dead
from ..export.spool import Spool
from ..paths import locations


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "flush",
        help="deliver what is spooled now (or record it in the ledger), with progress",
        description="Import every journal left by this machine's processes, then deliver "
        "the spool until it is empty, nothing is due, or the timeout passes.",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
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
    out = sys.stderr
    if pipeline.mode == "ledger":
        store = pipeline.open_store()
        try:
            moved = pipeline.import_journal(store)
        finally:
            store.close()
        print(f"Recorded {moved} event(s) in the ledger {pipeline.ledger_path}.")
        return 0
    if pipeline.problem:
        print(f"Not delivering: {pipeline.problem}.", file=out)
        return 1
    spool = Spool(pipeline.spool_path)
    client = pipeline.new_client()
    try:
        pipeline.import_journal(spool)
        spool.reclaim(owner_is_dead)  # leases of processes that died while sending
        spool.make_due()  # "now": skip any backoff the events were waiting out
        total = spool.stats().depth
        start_depth, deadline = total, time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if not pipeline.breaker.allow():
                time.sleep(min(pipeline.breaker.wait_time(), max(0.0, deadline - time.monotonic())))
                continue
            sent = pipeline.send_round(spool, client)
            stats = spool.stats()
            if not args.quiet:
                progress(out, start_depth - stats.depth, total)
            if sent:
                continue
            if stats.depth == 0:
                break
            due_in = spool.next_due_in()  # retries scheduled by this run, or leases held
            if due_in is None or time.monotonic() + due_in >= deadline:
                break
            time.sleep(max(due_in, 0.01))
        stats = spool.stats()
    finally:
        client.close()
        spool.close()
    if not args.quiet:
        out.write("\n")
    print(
        f"{start_depth - stats.depth} delivered, {stats.depth} still spooled, "
        f"{stats.dead_letters} dead letter(s)."
    )
    return 0 if stats.depth == 0 else 1


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
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No dead letters.")
    else:
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(str(row["failed_at"]))))
            print(f"{row['event_id']}  {when}Z  HTTP {row['status']}  {row['reason']}")
    return 0
