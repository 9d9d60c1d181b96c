"""What an event costs the spool and the metered record once they have run for a while:
``python benchmarks/spool_age.py``.

``run.py``'s delivery section drains a fresh spool. In service, the spool also holds the
ids it delivered (its ``delivered`` table), which each event's import looks up and each
acknowledgement writes into, and the metered record the ids it summed (``recorded``),
which each import looks up and writes into: at a random place, the ids being hashes. Up
to 0.7.2 the spool kept every id a week and the record 48 hours. Since then both keep
deferred work's ids that long and any other only while a journal segment may still hold
it: the last few minutes' worth (``Spool.prune_delivered``, ``MeteredStore.forget_ids``).

For each rate of events per second this fills fresh files with as many ids as each rule
keeps at that rate, then times, on this thread's CPU clock, 500 events at a time:

* the spool: events spooled already leased to this process (the importer's hand-off),
  then acknowledged (``put_leased`` and ``ack``);
* the metered record: the same events summed into it, 64 at a time (``put``), as the
  importer does a slice of a segment.

The ids are inserted in order, which packs the tables' pages fuller than the random
order of real ones does, and the files stay in the OS's cache.

Run it with any interpreter that imports this repository (``run.py``'s virtualenv
does): ``benchmarks/.venv-peers/bin/python benchmarks/spool_age.py --rate 1 --rate 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker import sample_record  # beside this script, on its path

WEEK_S = 7 * 24 * 3600
TWO_DAYS_S = 2 * 24 * 3600
BATCH = 500  # events per round: what a sender posts at once by default
SLICE = 64  # events per metered write: the importer's slice
FILL_CHUNK = 100_000


def kept(rate: float, rule: str) -> tuple[int, int]:
    """How many ids ``rule`` keeps at ``rate`` events per second: (spool, metered record)."""
    from cmdrdata_autotrack.export.journal import JOURNAL_MARGIN_S
    from cmdrdata_autotrack.export.metered_store import FORGET_EVERY_S
    from cmdrdata_autotrack.export.pipeline import PRUNE_DELIVERED_EVERY_S

    if rule == "old":
        return int(rate * WEEK_S), int(rate * TWO_DAYS_S)
    spool = JOURNAL_MARGIN_S + PRUNE_DELIVERED_EVERY_S
    record = JOURNAL_MARGIN_S + FORGET_EVERY_S + 120  # (and the minute's rounding, twice)
    return int(rate * spool), int(rate * record)


@contextmanager
def _writing(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    yield
    conn.execute("COMMIT")


def fill(conn: sqlite3.Connection, table: str, keys: Callable[[], Any], rows: int, at: int) -> None:
    ordered = sorted(keys() for _ in range(rows))
    for start in range(0, rows, FILL_CHUNK):
        with _writing(conn):
            conn.executemany(
                f"INSERT INTO {table} VALUES (?, ?)",
                [(key, at) for key in ordered[start : start + FILL_CHUNK]],
            )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def events(template: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    made = []
    for _ in range(BATCH):
        event = {**template, "event_id": str(uuid.uuid4())}
        made.append((event["event_id"], json.dumps(event), event))
    return made


def measure(spool_rows: int, record_rows: int, rounds: int, folder: Path) -> dict[str, float]:
    """CPU µs per event of a spool round and of the metered record's writes, with the
    given ids in their tables; and the files' sizes."""
    from cmdrdata_autotrack.export.metered_store import MeteredStore
    from cmdrdata_autotrack.export.pipeline import journal_line
    from cmdrdata_autotrack.export.processor import span_record_to_event
    from cmdrdata_autotrack.export.spool import Spool

    now = time.time()
    spool = Spool(folder / "spool.sqlite3")
    record = MeteredStore(folder / "metered.sqlite3")
    try:
        fill(spool.conn, "delivered", lambda: str(uuid.uuid4()), spool_rows, int(now))
        fill(record._connection(), "recorded", lambda: os.urandom(16), record_rows, int(now))
        template = json.loads(journal_line(span_record_to_event(sample_record(0), "unattributed")))
        in_spool: list[float] = []
        in_record: list[float] = []
        for _ in range(rounds):
            batch = events(template)
            started = time.process_time()
            _, _, leased = spool.put_leased(batch, 1 << 40, "drop-newest", lease=("me", now + 60))
            spool.ack([item.event_id for item in leased])
            in_spool.append((time.process_time() - started) / BATCH * 1e6)
            started = time.process_time()
            for start in range(0, BATCH, SLICE):
                record.put(batch[start : start + SLICE])
            in_record.append((time.process_time() - started) / BATCH * 1e6)
        sizes = [
            (folder / name).stat().st_size / 1e6 for name in ("spool.sqlite3", "metered.sqlite3")
        ]
    finally:
        spool.close()
        record.close()
    return {
        "spool_us": statistics.median(in_spool),
        "record_us": statistics.median(in_record),
        "spool_mb": sizes[0],
        "record_mb": sizes[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="events per second")
    parser.add_argument("--rounds", type=int, default=40, help=f"rounds of {BATCH} events")
    args = parser.parse_args()
    print(
        "| events/s | ids kept | ids: spool / record | CPU µs per event: spool / record "
        "| files: spool / record |"
    )
    print("| --- | --- | --- | --- | --- |")
    rules = (("old", "a week / 48 hours (up to 0.7.2)"), ("new", "while a segment may hold them"))
    for rate in args.rate or [1.0, 5.0]:
        for rule, label in rules:
            spool_rows, record_rows = kept(rate, rule)
            folder = Path(tempfile.mkdtemp(prefix="cmdrdata-spool-age-"))
            try:
                r = measure(spool_rows, record_rows, args.rounds, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(
                f"| {rate:g} | {label} | {spool_rows:,} / {record_rows:,} | "
                f"{r['spool_us']:.1f} / {r['record_us']:.1f} | "
                f"{r['spool_mb']:.1f} / {r['record_mb']:.1f} MB |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
