"""The calling thread's own added instructions per call: ``python benchmarks/call_cost.py``.

``instructions.py`` counts a whole process, whose background threads (the importer, the
senders) change what the calling thread does from run to run (GIL hand-offs, who opens
the next journal segment), so its calling-thread counts repeat to about ±5 %. This counts
the agent's own work on the app's thread alone: one process, the SDK answered in memory
(``pairs.py --transport memory``), the agent's threads never started (the journal keeps
what the calls write), ``N`` unmetered calls (``track_usage=False``) and then ``N``
metered ones, each run counted by callgrind between marks (``marked.py``). The difference
per call repeats to a few tenths of a percent, so a change of 1 % can be told.

``--inside module:Qual.name`` (repeatable) also counts, per metered call, the
instructions spent inside that function (what it calls included; a call made from inside
itself counted once): where the added instructions go. ``stream1`` (one content chunk)
is what a stream costs besides its chunks.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it):
``benchmarks/.venv-peers/bin/python benchmarks/call_cost.py --workload chat``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from marked import counted, counted_all, mark  # beside this script, on its path

HERE = os.path.dirname(os.path.abspath(__file__))
STREAMS = {"stream1": 1, "stream20": 20, "stream200": 200}  # content chunks
WORKLOADS = ("chat", "responses", "embeddings", *STREAMS)


def mark_inside(spec: str) -> Callable[[], None]:
    """Make ``spec`` (``module:Qual.name``) mark its outermost entries and exits; returns
    what turns the marks on."""
    import importlib

    module, _, qualname = spec.partition(":")
    owner: Any = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    if isinstance(original, staticmethod | classmethod):
        raise SystemExit(f"--inside {spec}: a static or class method is not counted")
    depth, armed = [0], [False]

    def counting(*args: Any, **kwargs: Any) -> Any:
        if not armed[0]:
            return original(*args, **kwargs)
        depth[0] += 1
        if depth[0] == 1:
            mark()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                mark()

    setattr(owner, name, counting)
    return lambda: armed.__setitem__(0, True)


def child(workload: str, calls: int, inside: str | None = None) -> None:
    """The counted process: warm up, then the unmetered and the metered calls, marked
    (with ``inside``: the metered calls alone, and that function's entries and exits)."""
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
    call = _calls(client, STREAMS)[workload]
    arm = mark_inside(inside) if inside else None
    for _ in range(50):
        call(True)
        call(False)
    pipeline.journal.prepare()  # the next segment ready, as the importer leaves it
    if arm is not None:
        arm()
        mark()
        for _ in range(calls):
            call(True)
        mark()
        os._exit(0)
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


def count_inside(workload: str, calls: int, spec: str) -> tuple[float, float]:
    """Entries of ``spec`` and the instructions inside it, per metered call."""
    args = ["--child", "--workload", workload, "--calls", str(calls), "--inside", spec]
    # the marks: start, then an entry and an exit for each outermost call, then the end
    spans = counted_all(__file__, args)
    entered = spans[1::2]
    return len(entered) / calls, sum(entered) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=100, help="calls of each kind, counted")
    parser.add_argument(
        "--inside",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="also count the instructions inside this function per metered call",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workload[0], args.calls, args.inside[0] if args.inside else None)
        return 0
    print("| workload | unmetered, per call | metered, per call | added by the agent |")
    print("| --- | --- | --- | --- |")
    workloads = args.workload or ["chat"]
    added: dict[str, float] = {}
    for workload in workloads:
        plain, metered = count(workload, args.calls)
        added[workload] = metered - plain
        print(f"| {workload} | {plain:,.0f} | {metered:,.0f} | {metered - plain:,.0f} |")
    if args.inside:
        print()
        print("| workload | inside | entered a call | instructions inside, a call | of the added |")
        print("| --- | --- | --- | --- | --- |")
    for workload in workloads:
        for spec in args.inside:
            entered, spent = count_inside(workload, args.calls, spec)
            share = spent / added[workload] if added[workload] > 0 else float("nan")
            print(f"| {workload} | `{spec}` | {entered:.2f} | {spent:,.0f} | {share:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
