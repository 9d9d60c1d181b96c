"""What each piece of a stream chunk's path costs, counted by valgrind.

``benchmarks/.venv-peers/bin/python benchmarks/chunk_pieces.py``

The stream tap runs for every chunk of every stream, so its pieces are counted one by
one, on one chunk of the benchmark's chat stream: each statement runs ``--repeat``
times in a process under ``valgrind --tool=callgrind`` and once zero times, and the
difference per run is its count. ``PYTHONHASHSEED`` is fixed, so the two processes
do the same work but for the loop: the counts repeat to the instruction. The SDK's
rows are what it spends on one chunk's JSON with and without the ``"usage": null``
member the agent's ``include_usage`` brings and its tap takes out again.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PIECES = {
    "the loop alone": "pass",  # first: taken off the others
    "tap: the fast path's read (feed)": "feed(chunk)",
    "tap: feed and the usage: null member in one step (hand_on)": "hand_on(chunk)",
    "tap: the usage: null member taken out": "without_null_usage(chunk)",
    "tap: the empty-array search": "empty_array(chunk)",
    "tap: the event-end check": "chunk.endswith(ends)",
    "SDK: a chunk's JSON with usage: null": "sdk(chunk)",
    "SDK: the same without it": "sdk(stripped)",
}

SETUP = """
import json, sys
sys.path[:0] = [{here!r}, {root!r}]
from fakes import chat_stream
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk
from cmdrdata_autotrack.instrumentation.openai import observers

stream = chat_stream(8, True).split(b"\\n\\n")  # as HTTP chunks: each event from its data
events = [e[e.index(b"data:"):] + b"\\n\\n" for e in stream if b"data:" in e]
chunk = events[3]  # a content chunk, as OpenAI writes it with include_usage
stripped = observers.without_null_usage(chunk)
ends = observers._ENDS_AT_EVENT_LF
empty_array = observers._EMPTY_ARRAY
without_null_usage = observers.without_null_usage

def sdk(data):
    construct_type(type_=ChatCompletionChunk, value=json.loads(data[6:]))

observers.SSEObserver.TAIL_LIMIT = 1 << 40  # never trimmed, as in a stream of a few hundred chunks
observer = observers.SSEObserver("chat", hide_usage_chunk=True)
for event in events[:2]:
    observer.feed(event)  # past the first event: the reads that follow
feed = observer.feed
hand_on = observer.hand_on
"""


def count(statement: str, times: int) -> int:
    program = SETUP.format(here=str(HERE), root=str(HERE.parent))
    program += f"for _ in range({times}):\n    {statement}\n"
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    done = subprocess.run(
        [*command, sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"{statement!r} failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    loop = 0.0
    print("| piece, on one chat chunk | instructions (the loop's own taken off) |")
    print("| --- | --- |")
    for label, statement in PIECES.items():
        added = (count(statement, args.repeat) - count(statement, 0)) / args.repeat - loop
        if statement == "pass":
            loop = added
            continue
        print(f"| {label} | {added:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
