"""Callgrind's instruction counts between marks: what ``call_cost.py`` and ``import_cost.py``
count with.

The counted script calls ``os.getpgid(0)`` (which nothing else calls) between the steps
it wants counted; callgrind, run with ``--dump-before=getpgid``, dumps its counters each
time, so dump ``n`` holds what ran between mark ``n - 1`` and mark ``n``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile


def mark() -> None:
    """Where the counted script's steps meet: callgrind dumps its counters here."""
    os.getpgid(0)


def add_counting(parser: argparse.ArgumentParser, what: str) -> None:
    """A counted script's options: ``--instructions N`` (``what``: of the N), and the
    hidden ``--child`` under which it runs the counted steps between its marks."""
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="EVENTS",
        help=f"also count instructions under callgrind, {what}",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def counted(script: str, args: list[str], marks: int) -> list[int]:
    """Run ``script`` with ``args`` under callgrind; the instructions between each pair of
    its ``marks`` marks (``marks - 1`` counts)."""
    spans = counted_all(script, args)
    if len(spans) != marks - 1:
        raise RuntimeError(f"{script} made {len(spans) + 1} marks, not {marks}")
    return spans


def counted_all(script: str, args: list[str]) -> list[int]:
    """Run ``script`` with ``args`` under callgrind; the instructions between each pair of
    its marks, however many it made."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    folder = tempfile.mkdtemp(prefix="cmdrdata-callgrind-")
    try:
        subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--dump-before=getpgid",
                f"--callgrind-out-file={folder}/out",
                sys.executable,
                script,
                *args,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": folder},  # what the script leaves goes with the dumps
        )
        # out.N: from mark N - 1 to mark N (out.1 from the start); "out": the rest, to the exit
        dumps = (re.fullmatch(r"out\.(\d+)", name) for name in os.listdir(folder))
        parts = sorted(int(match.group(1)) for match in dumps if match)
        return [_total(os.path.join(folder, f"out.{part}")) for part in parts[1:]]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _total(dump: str) -> int:
    with open(dump) as lines:
        for line in lines:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"callgrind's dump {dump} has no total")
