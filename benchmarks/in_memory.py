"""The calling thread's CPU per chat call, answered in memory: ``python benchmarks/in_memory.py``.

``run.py`` measures the calling thread over loopback, beside a fake API in another
process and, for the agent, beside its own importer and senders. This takes the socket
and the other process away: the SDK's ``httpx`` client is answered in its own process
(``pairs.py``'s memory transport), and each candidate runs in a fresh process that
times single calls on the calling thread's CPU clock. Candidates:

* ``baseline``: the SDK alone;
* ``agent``: the agent as it runs (its importer and senders started; the events API is
  a closed port, so the senders mostly wait);
* ``agent-alone``: the agent with its threads never started (the journal keeps what
  the calls write), so what is left is its own work on the app's thread;
* ``otel-v2``: the official instrumentation, an SDK tracer provider with a batch span
  processor and an exporter that discards spans (as in ``run.py``).

The gap between ``agent`` and ``agent-alone`` is what the agent's background threads
cost the app's thread by running in its process (turns at the GIL, memory that moves
between the cores). Each process gives the lower quartile of its calls (a shared VM
slows single calls in spells; the quartile leaves most of them out); the table gives
the median over rounds of those, and what each adds to the baseline's.

Run it with the benchmark virtualenv's interpreter (``run.py`` makes it):
``benchmarks/.venv-peers/bin/python benchmarks/in_memory.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = ("baseline", "agent", "agent-alone", "otel-v2")


def child(candidate: str, calls: int, warmup: int) -> float:
    """The lower quartile of ``calls`` chat calls' calling-thread CPU, in µs."""
    sys.path.insert(0, HERE)
    import httpx
    import openai
    from pairs import memory_transport

    kwargs: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if candidate.startswith("agent"):
        import cmdrdata_autotrack
        from cmdrdata_autotrack import agent

        folder = tempfile.mkdtemp(prefix="cmdrdata-in-memory-")
        cmdrdata_autotrack.instrument(
            api_key="tk-benchmark-0123456789",
            endpoint="https://127.0.0.1:9/api/events",  # a closed port: the senders wait
            spool_dir=folder,
            ledger_path=os.path.join(folder, "ledger.sqlite3"),
            shutdown_timeout=0.1,
        )
        running = agent.get()
        if running is None or running.pipeline is None:
            raise RuntimeError("the agent did not start")
        if candidate == "agent-alone":
            running.pipeline._threads = [object()]  # type: ignore[list-item]  # none ever runs
        kwargs["customer_id"] = "acme"
    elif candidate == "otel-v2":
        from opentelemetry import trace
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from worker import _Discard

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Discard()))  # type: ignore[arg-type]
        trace.set_tracer_provider(provider)
        OpenAIInstrumentor().instrument(tracer_provider=provider)
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-benchmark",
        max_retries=0,
        http_client=httpx.Client(transport=memory_transport()),
    )
    create = client.chat.completions.create
    for _ in range(warmup):
        create(**kwargs)
    clock = time.thread_time_ns
    spent = []
    for _ in range(calls):
        started = clock()
        create(**kwargs)
        spent.append(clock() - started)
    spent.sort()
    return spent[len(spent) // 4] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="processes per candidate")
    parser.add_argument("--child", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child, args.calls, args.warmup), flush=True)
        os._exit(0)  # nothing flushed: the scratch spool is left to the system's tmp
    quartiles: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    for round_index in range(args.rounds):
        order = CANDIDATES[round_index % 4 :] + CANDIDATES[: round_index % 4]
        for candidate in order:
            command = [sys.executable, __file__, "--child", candidate]
            command += ["--calls", str(args.calls), "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            quartiles[candidate].append(float(done.stdout.split()[-1]))
    base = statistics.median(quartiles["baseline"])
    print("| candidate | calling thread µs a chat call (median of lower quartiles) | added |")
    print("| --- | --- | --- |")
    for candidate in CANDIDATES:
        value = statistics.median(quartiles[candidate])
        added = "" if candidate == "baseline" else f"{value - base:+.0f}"
        print(f"| {candidate} | {value:.0f} | {added} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
