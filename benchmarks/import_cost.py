"""What the importer costs per event: ``python benchmarks/import_cost.py``.

The importer thread moves each journaled span record into the spool and the metered
record: it parses the journal line, reads the response copy's usage, builds the usage
event, writes its JSON, and stores it in both SQLite files. Per event that is the
agent's largest cost after the calling thread's own, and it is spent while the app runs.

This journals span records as the agent writes them for chat calls (``worker.py``'s
``sample_record``), then imports them on this thread, and gives:

* the CPU per event (this thread's clock), the median of ``--rounds`` fresh pipelines;
* with ``--instructions``, the machine instructions per event of one import, counted
  by ``valgrind --tool=callgrind`` between two marks (``marked.py``), which a shared
  machine cannot move.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it):
``benchmarks/.venv-peers/bin/python benchmarks/import_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from marked import add_counting, counted, mark  # beside this script, on its path

WARM_UP = 64  # span records imported first, into the same stores


def import_once(events: int, marked: bool) -> float:
    """Import ``events`` span records into a fresh spool; returns this thread's CPU seconds."""
    from worker import TRACKER_KEY, sample_record

    from cmdrdata_autotrack.config import Settings
    from cmdrdata_autotrack.export.pipeline import Pipeline, journal_line

    folder = tempfile.mkdtemp(prefix="cmdrdata-import-")
    try:
        pipeline = Pipeline(
            Settings(
                api_key=TRACKER_KEY,
                endpoint="https://127.0.0.1:9/api/events",  # never reached: nothing is sent
                spool_dir=folder,
                ledger_path=os.path.join(folder, "ledger.sqlite3"),
            )
        )
        store = pipeline.open_store()

        def journal(first: int, count: int) -> None:
            for index in range(first, first + count):  # what Pipeline.submit writes
                if not pipeline.journal.append(journal_line(sample_record(index)).encode()):
                    raise RuntimeError("the journal refused an event")

        journal(0, WARM_UP)  # the stores' files and statements made, outside the count
        pipeline.import_journal(store)
        journal(WARM_UP, events)
        if marked:
            mark()
        started = time.thread_time()
        moved = pipeline.import_journal(store)
        spent = time.thread_time() - started
        if marked:
            mark()
        store.close()
        if moved != events:
            raise RuntimeError(f"imported {moved} of {events} events")
        return spent
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def count_instructions(events: int) -> float:
    """Instructions per event of one import, counted by callgrind in a child process."""
    (imported,) = counted(__file__, ["--child", "--events", str(events)], marks=2)
    return imported / events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="span records per import")
    parser.add_argument("--rounds", type=int, default=5)
    add_counting(parser, "importing this many span records")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.child:
        import_once(args.events, marked=True)
        return 0
    import_once(min(args.events, 200), marked=False)  # warm-up: imports, first queries
    rounds = [
        import_once(args.events, marked=False) / args.events * 1e6 for _ in range(args.rounds)
    ]
    print(
        f"import CPU per event: {statistics.median(rounds):.1f} µs (median of {args.rounds} "
        f"rounds of {args.events:,} events; {min(rounds):.1f} to {max(rounds):.1f} µs)"
    )
    if args.instructions:
        per_event = count_instructions(args.instructions)
        print(f"import instructions per event: {per_event:,.0f} ({args.instructions} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
