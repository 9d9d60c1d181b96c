"""The calling thread's own added instructions per call: ``python benchmarks/call_cost.py``.

``instructions.py`` counts a whole process, whose background threads (the importer, the
senders) change what the calling thread does from run to run (GIL hand-offs, who opens
the next journal segment), so its calling-thread counts repeat to about ±5 %. This counts
the agent's own work on the app's thread alone: one process, the SDK answered in memory
(``pairs.py --transport memory``), the agent's threads never started (the journal keeps
what the calls write), ``N`` unmetered calls (``track_usage=False``) and then ``N``
metered ones, each run counted by callgrind between marks (``marked.py``). The difference
per call repeats to a few tenths of a percent, so a change of 1 % can be told.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it):
``benchmarks/.venv-peers/bin/python benchmarks/call_cost.py --workload chat``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from marked import counted, mark  # beside this script, on its path

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("chat", "responses", "embeddings", "stream20", "stream200")


def child(workload: str, calls: int) -> None:
    """The counted process: warm up, then the unmetered and the metered calls, marked."""
    sys.path.insert(0, HERE)
    import httpx
    import openai
    from pairs import _calls, memory_transport

    import cmdrdata_autotrack
    from cmdrdata_autotrack import agent

    folder = tempfile.mkdtemp(prefix="cmdrdata-call-cost-")
    cmdrdata_autotrack.instrument(
        api_key="tk-benchmark-0123456789",
        endpoint="https://127.0.0.1:9/api/events",  # never reached: nothing is sent
        spool_dir=folder,
        ledger_path=os.path.join(folder, "ledger.sqlite3"),
        stream_usage="always",  # as run.py's agent
        shutdown_timeout=0.1,
    )
    running = agent.get()
    if running is None or running.pipeline is None:
        raise RuntimeError("the agent did not start")
    pipeline = running.pipeline
    pipeline._threads = [object()]  # type: ignore[list-item]  # "started": none ever runs
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-benchmark",
        max_retries=0,
        http_client=httpx.Client(transport=memory_transport()),
    )
    call = _calls(client)[workload]
    for _ in range(50):
        call(True)
        call(False)
    pipeline.journal.prepare()  # the next segment ready, as the importer leaves it
    mark()
    for _ in range(calls):
        call(False)
    mark()
    for _ in range(calls):
        call(True)
    mark()
    os._exit(0)  # nothing flushed: the journal is left in the scratch folder, removed below


def count(workload: str, calls: int) -> tuple[float, float]:
    """Instructions per unmetered and per metered call, counted by callgrind."""
    args = ["--child", "--workload", workload, "--calls", str(calls)]
    plain, metered = counted(__file__, args, marks=3)
    return plain / calls, metered / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=100, help="calls of each kind, counted")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workload[0], args.calls)
        return 0
    print("| workload | unmetered, per call | metered, per call | added by the agent |")
    print("| --- | --- | --- | --- |")
    for workload in args.workload or ["chat"]:
        plain, metered = count(workload, args.calls)
        print(f"| {workload} | {plain:,.0f} | {metered:,.0f} | {metered - plain:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
