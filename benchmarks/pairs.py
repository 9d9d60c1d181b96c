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

``--cold MB`` writes that much memory before each call, outside the timed part, so
that both calls of a pair start with cold caches, as a call does after a real
request's wait on the network (here the loopback server answers in microseconds, and
the caches stay warm from one call to the next).

``--transport memory`` gives the SDK's ``httpx`` client a transport that answers in
this process, from the fake's own answers, chunk by chunk as the loopback server
sends them: no socket, no other process between the two calls of a pair, so what is
left is what the agent costs in the process. The streams (``stream20``,
``stream200``) give the added CPU per chunk as the slope of their medians.

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
WORKLOADS = ("chat", "responses", "embeddings", "stream20", "stream200")
STREAM_CHUNKS = {"stream20": 20, "stream200": 200}  # content chunks (the fake's max_tokens)


def _calls(
    client: Any, streams: dict[str, int] = STREAM_CHUNKS
) -> dict[str, Callable[[bool], Any]]:
    messages = [{"role": "user", "content": "hi"}]

    def stream(chunks: int) -> Callable[[bool], None]:
        def call(track: bool) -> None:
            for _ in client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                max_tokens=chunks,
                customer_id="acme",
                track_usage=track,
            ):
                pass

        return call

    return {
        **{name: stream(chunks) for name, chunks in streams.items()},
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


def memory_transport() -> Any:
    """An ``httpx`` transport serving the fake OpenAI API's answers in this process."""
    import httpx

    sys.path.insert(0, str(HERE))
    import fakes

    answer = fakes.FakeOpenAI.answers()

    class Chunks(httpx.SyncByteStream):
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def __iter__(self) -> Any:
            return iter(self.chunks)

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        status, body, kind, chunked = answer("POST", path, dict(request.headers), request.read())
        headers = {"content-type": kind}
        if chunked:  # as the loopback server sends it: one read per HTTP chunk
            return httpx.Response(status, headers=headers, stream=Chunks(fakes.http_chunks(body)))
        return httpx.Response(status, headers=headers, content=body)

    return httpx.MockTransport(handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=3000, help="pairs per workload")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--ledger", action="store_true", help="no API key: the local ledger")
    parser.add_argument(
        "--cold",
        type=int,
        default=0,
        metavar="MB",
        help="write this many MB of memory before each call (untimed): caches start cold, "
        "as after a real request's wait on the network",
    )
    parser.add_argument(
        "--transport",
        choices=("loopback", "memory"),
        default="loopback",
        help="how the SDK reaches the fake API: a loopback server, or in this process",
    )
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
        http: dict[str, Any] = {}
        if args.transport == "memory":
            import httpx

            http["http_client"] = httpx.Client(transport=memory_transport())
        client = openai.OpenAI(base_url=base_url, api_key="sk-benchmark", max_retries=0, **http)
        calls = _calls(client)
        clock = time.thread_time_ns
        junk = bytearray(args.cold << 20)
        zeros = bytes(len(junk) // 64)

        def chill() -> None:
            if junk:
                junk[::64] = zeros  # a byte in every cache line

        print("| workload | pairs | median µs | 25th percentile | 75th percentile |")
        print("| --- | --- | --- | --- | --- |")
        medians: dict[str, float] = {}
        for name in args.workload or WORKLOADS:
            call = calls[name]
            for _ in range(args.warmup):
                call(True)
                call(False)
            added = []
            for n in range(args.calls):
                first = bool(n & 1)  # metered first in every other pair: order cancels
                chill()
                start = clock()
                call(first)
                middle = clock()
                chill()
                resumed = clock()
                call(not first)
                end = clock()
                tracked, untracked = (middle - start, end - resumed)[:: 1 if first else -1]
                added.append(tracked - untracked)
            added.sort()
            quartile = len(added) // 4
            medians[name] = statistics.median(added) / 1000
            print(
                f"| {name} | {len(added)} | {statistics.median(added) / 1000:.1f} "
                f"| {added[quartile] / 1000:.1f} | {added[-quartile - 1] / 1000:.1f} |"
            )
        if STREAM_CHUNKS.keys() <= medians.keys():
            slope = (medians["stream200"] - medians["stream20"]) / (
                STREAM_CHUNKS["stream200"] - STREAM_CHUNKS["stream20"]
            )
            print(f"\nstreams: {slope:.2f} µs per chunk (the medians' slope, 20 to 200 chunks)")
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
