"""The calling thread's CPU per metered call, by pairs: ``python benchmarks/pairs.py``.

One process alternates a call with ``track_usage=False`` and the same call metered,
and takes the difference of the calling thread's CPU clock for each pair; the table
gives the median and quartiles of those differences. A pair's two calls are
microseconds apart, so the machine's drift (another tenant, the CPU's clock) that
makes ``run.py``'s per-block figures wander by hundreds of microseconds between
rounds on a noisy machine mostly cancels, and every other pair makes the metered call
first, so that going second (warmer caches) favours neither. What it does not count:
the importer and the senders (other threads), and the wrapper's own check of
``track_usage``, which both calls pay.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it; it holds
this repository, editable): ``benchmarks/.venv-peers/bin/python benchmarks/pairs.py``.
The fakes run in a process of their own; usage is delivered to the fake events API
(``--ledger``: recorded in the local ledger instead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVE = (
    "import sys; sys.path.insert(0, {here!r}); import fakes; "
    "api = fakes.FakeOpenAI().start(); ingest = fakes.FakeIngest().start(); "
    "print(api.base_url, ingest.url, flush=True); sys.stdin.read()"
)
WORKLOADS = ("chat", "responses", "embeddings")


def _calls(client: Any) -> dict[str, Callable[[bool], Any]]:
    messages = [{"role": "user", "content": "hi"}]
    return {
        "chat": lambda track: client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, customer_id="acme", track_usage=track
        ),
        "responses": lambda track: client.responses.create(
            model="gpt-4o-mini", input="hi", customer_id="acme", track_usage=track
        ),
        "embeddings": lambda track: client.embeddings.create(
            model="text-embedding-3-small", input="hi", customer_id="acme", track_usage=track
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=3000, help="pairs per workload")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--ledger", action="store_true", help="no API key: the local ledger")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(here=str(HERE))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url, ingest = server.stdout.readline().split()
        import openai

        import cmdrdata_autotrack

        spool = tempfile.mkdtemp(prefix="cmdrdata-pairs-")
        cmdrdata_autotrack.instrument(
            api_key=None if args.ledger else "tk-benchmark-0123456789",
            endpoint=ingest,
            spool_dir=spool,
            ledger_path=os.path.join(spool, "ledger.sqlite3"),
            stream_usage="always",  # as run.py's agent
            shutdown_timeout=2,
        )
        client = openai.OpenAI(base_url=base_url, api_key="sk-benchmark", max_retries=0)
        calls = _calls(client)
        clock = time.thread_time_ns
        print("| workload | pairs | median µs | 25th percentile | 75th percentile |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.workload or WORKLOADS:
            call = calls[name]
            for _ in range(args.warmup):
                call(True)
                call(False)
            added = []
            for n in range(args.calls):
                first = bool(n & 1)  # metered first in every other pair: order cancels
                start = clock()
                call(first)
                middle = clock()
                call(not first)
                end = clock()
                tracked, untracked = (middle - start, end - middle)[:: 1 if first else -1]
                added.append(tracked - untracked)
            added.sort()
            quartile = len(added) // 4
            print(
                f"| {name} | {len(added)} | {statistics.median(added) / 1000:.1f} "
                f"| {added[quartile] / 1000:.1f} | {added[-quartile - 1] / 1000:.1f} |"
            )
        if not cmdrdata_autotrack.flush(60):
            print("cmdrdata_autotrack.flush() timed out", file=sys.stderr)
            return 1
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
