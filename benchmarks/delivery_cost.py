"""What delivery costs per event: ``python benchmarks/delivery_cost.py``.

A sender leases due events from the spool (a ``SELECT`` and an ``UPDATE``), posts them
to the events API as one batch request, and acknowledges them (a ``DELETE``, and the ids
into ``delivered``). ``run.py``'s delivery section times that with every thread of a
started pipeline; this runs the same rounds on this thread alone, against the loopback
ingest server of ``fakes.py`` (in a process of its own, so its work is not counted),
and gives:

* the CPU per event (this thread's clock), the median of ``--rounds`` fresh spools,
  with its share in the spool's statements (lease, acknowledgement) and in the request;
* with ``--instructions``, the machine instructions per event of one drain, counted by
  ``valgrind --tool=callgrind`` between two marks (``marked.py``), which a shared
  machine cannot move;
* with ``--syscalls``, the spool's reads, writes and syncs of the file system per event
  of one drain, counted by ``strace`` between the same marks: half of a drain's CPU is
  spent in the kernel, which callgrind does not see.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it):
``benchmarks/.venv-peers/bin/python benchmarks/delivery_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from marked import add_counting, counted, mark  # beside this script, on its path

HERE = os.path.dirname(os.path.abspath(__file__))


@contextmanager
def ingest_server() -> Iterator[str]:
    """The loopback events API, served by ``fakes.py`` from a process of its own."""
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fakes.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        yield f"http://127.0.0.1:{ports['ingest']}"
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)


def drain_once(ingest: str, events: int, batch: int, marked: bool) -> dict[str, float]:
    """Spool ``events`` chat events, then deliver them all in rounds on this thread:
    this thread's CPU seconds in all and in each part."""
    from worker import TRACKER_KEY, sample_record

    from cmdrdata_autotrack.config import Settings
    from cmdrdata_autotrack.export.pipeline import Pipeline, journal_line

    folder = tempfile.mkdtemp(prefix="cmdrdata-delivery-")
    try:
        pipeline = Pipeline(
            Settings(
                api_key=TRACKER_KEY,
                endpoint=ingest + "/api/events",
                batch_size=batch,
                spool_dir=folder,
                ledger_path=os.path.join(folder, "ledger.sqlite3"),
            )
        )
        for index in range(events):  # what Pipeline.submit writes
            if not pipeline.journal.append(journal_line(sample_record(index)).encode()):
                raise RuntimeError("the journal refused an event")
        store = pipeline.open_store()
        if pipeline.import_journal(store) != events:
            raise RuntimeError("the import lost events")
        store.close()
        spool = pipeline._open_spool()
        client = pipeline.new_client()
        parts = {"lease": 0.0, "ack": 0.0, "request": 0.0}

        def timed(part: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                started = time.thread_time()
                try:
                    return method(*args, **kwargs)
                finally:
                    parts[part] += time.thread_time() - started

            return run

        if not marked:  # (under callgrind the count is of the rounds as they are)
            spool.lease = timed("lease", spool.lease)  # type: ignore[method-assign]
            spool.ack = timed("ack", spool.ack)  # type: ignore[method-assign]
            client.send_batch = timed("request", client.send_batch)  # type: ignore[method-assign]
        if marked:
            mark()
        started = time.thread_time()
        sent = 0
        while True:
            attempted = pipeline.send_round(spool, client).attempted
            if not attempted:
                break
            sent += attempted
        spent = time.thread_time() - started
        if marked:
            mark()
        left = spool.stats().depth
        spool.close()
        client.close()
        if sent != events or left:
            raise RuntimeError(f"delivered {sent} of {events} events ({left} left)")
        return {"all": spent, **parts}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per drain")
    parser.add_argument("--batch", type=int, default=500, help="CMDRDATA_BATCH_SIZE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--syscalls",
        type=int,
        default=0,
        metavar="EVENTS",
        help="also count file reads, writes and syncs under strace, draining this many",
    )
    add_counting(parser, "draining this many events")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    with ingest_server() as ingest:
        if args.child:
            drain_once(ingest, args.events, args.batch, marked=True)
            return 0
        drain_once(ingest, min(args.events, 500), args.batch, marked=False)  # warm-up
        rounds = [
            drain_once(ingest, args.events, args.batch, marked=False) for _ in range(args.rounds)
        ]
    per_event = {
        part: statistics.median(r[part] for r in rounds) / args.events * 1e6 for part in rounds[0]
    }
    spread = sorted(r["all"] / args.events * 1e6 for r in rounds)
    print(
        f"delivery CPU per event: {per_event['all']:.1f} µs (median of {args.rounds} drains "
        f"of {args.events:,} events, batch {args.batch}; {spread[0]:.1f} to {spread[-1]:.1f} "
        f"µs): lease {per_event['lease']:.1f}, acknowledgement {per_event['ack']:.1f}, "
        f"request {per_event['request']:.1f}"
    )
    if args.instructions:
        (drained,) = counted(
            __file__,
            ["--child", "--events", str(args.instructions), "--batch", str(args.batch)],
            marks=2,
        )
        print(
            f"delivery instructions per event: {drained / args.instructions:,.0f} "
            f"({args.instructions} events)"
        )
    if args.syscalls:
        calls = syscalls(["--child", "--events", str(args.syscalls), "--batch", str(args.batch)])
        print(
            "file system calls per event: "
            + ", ".join(f"{name} {count / args.syscalls:.2f}" for name, count in calls.items())
            + f" ({args.syscalls} events)"
        )
    return 0


FILE_CALLS = ("pwrite64", "pread64", "fdatasync")


def syscalls(args: list[str]) -> dict[str, int]:
    """Run this script with ``args`` under strace: each of :data:`FILE_CALLS` made by any
    thread between its two marks."""
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace is not installed (Debian: apt-get install strace)")
    folder = tempfile.mkdtemp(prefix="cmdrdata-strace-")
    try:
        out = os.path.join(folder, "trace")
        command = [sys.executable, __file__, *args]
        subprocess.run(
            [strace, "-f", "-e", "trace=getpgid," + ",".join(FILE_CALLS), "-o", out, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        counts = dict.fromkeys(FILE_CALLS, 0)
        marks = 0
        with open(out) as lines:
            for line in lines:
                fields = line.split(None, 1)  # "PID call(args) = result"
                name = fields[1].split("(", 1)[0] if len(fields) == 2 else ""
                if name == "getpgid":
                    marks += 1
                elif marks == 1 and name in counts:
                    counts[name] += 1
        if marks < 2:
            raise RuntimeError("strace saw no marks")
        return counts
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
