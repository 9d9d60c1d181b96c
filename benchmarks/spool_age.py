"""What an event costs the spool once it has run for a while: ``python benchmarks/spool_age.py``.

``run.py``'s delivery section drains a fresh spool. A spool in service also holds the
ids it delivered (the ``delivered`` table), which every event's import looks up and
every acknowledgement writes into, at a random place (the ids are hashes). Kept a
week, as up to 0.7.2, that table holds a week of a busy app's events; since then only
deferred work's ids are kept the week and the others only while a journal segment
may still hold them (``Spool.prune_delivered``): the last few minutes' worth.

For each rate of events per second this fills a fresh spool's ``delivered`` table
with as many ids as each rule keeps at that rate, then times what the importer and
the senders do to the spool per event at steady state: spool events already leased to
this process (the importer's hand-off), acknowledge them (``put_leased`` and ``ack``,
500 at a time), on this thread's CPU clock. The ids are inserted in order, which packs
the table's pages fuller than the random order of real acknowledgements does.

Run it with any interpreter that imports this repository (``run.py``'s virtualenv
does): ``benchmarks/.venv-peers/bin/python benchmarks/spool_age.py --rate 1 --rate 5``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from worker import sample_record  # beside this script, on its path

WEEK_S = 7 * 24 * 3600
BATCH = 500  # events per round: what a sender posts at once by default
FILL_CHUNK = 100_000


def kept_rows(rate: float, rule: str) -> int:
    """How many delivered ids ``rule`` keeps at ``rate`` events per second."""
    from cmdrdata_autotrack.export.pipeline import PRUNE_DELIVERED_EVERY_S
    from cmdrdata_autotrack.export.spool import JOURNAL_MARGIN_S

    window = WEEK_S if rule == "week" else JOURNAL_MARGIN_S + PRUNE_DELIVERED_EVERY_S
    return int(rate * window)


def measure(rows: int, rounds: int, folder: Path) -> dict[str, float]:
    """CPU µs per event of a spool round (spooled leased, then acknowledged) with ``rows``
    delivered ids in the table, and the spool file's size."""
    from cmdrdata_autotrack.export.pipeline import journal_line
    from cmdrdata_autotrack.export.processor import span_record_to_event
    from cmdrdata_autotrack.export.spool import Spool

    spool = Spool(folder / "spool.sqlite3")
    try:
        now = time.time()
        ids = sorted(str(uuid.uuid4()) for _ in range(rows))
        for start in range(0, rows, FILL_CHUNK):
            with spool._transaction():
                spool.conn.executemany(
                    "INSERT INTO delivered VALUES (?, ?)",
                    [(i, now) for i in ids[start : start + FILL_CHUNK]],
                )
        del ids
        spool.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        body = json.loads(journal_line(span_record_to_event(sample_record(0), "unattributed")))
        per_event: list[float] = []
        for _ in range(rounds):
            items = []
            for _ in range(BATCH):
                event = {**body, "event_id": str(uuid.uuid4())}
                items.append((event["event_id"], json.dumps(event), event))
            started = time.process_time()
            _, _, leased = spool.put_leased(items, 1 << 40, "drop-newest", lease=("me", now + 60))
            spool.ack([item.event_id for item in leased])
            per_event.append((time.process_time() - started) / BATCH * 1e6)
        size = (folder / "spool.sqlite3").stat().st_size
    finally:
        spool.close()
    return {"cpu_us": statistics.median(per_event), "spool_mb": size / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="events per second")
    parser.add_argument("--rounds", type=int, default=40, help=f"rounds of {BATCH} events")
    args = parser.parse_args()
    print(
        "| events/s | delivered ids kept | ids in the table | spool CPU µs per event | spool file |"
    )
    print("| --- | --- | --- | --- | --- |")
    for rate in args.rate or [1.0, 5.0]:
        for rule, label in (
            ("week", "a week (up to 0.7.2)"),
            ("journal", "while a segment may hold them"),
        ):
            rows = kept_rows(rate, rule)
            folder = Path(tempfile.mkdtemp(prefix="cmdrdata-spool-age-"))
            try:
                result = measure(rows, args.rounds, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(
                f"| {rate:g} | {label} | {rows:,} | {result['cpu_us']:.1f} | "
                f"{result['spool_mb']:.1f} MB |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
