"""Instructions per call, counted by valgrind: ``python benchmarks/instructions.py``.

``run.py`` times candidates with CPU clocks, which a shared machine moves by hundreds
of microseconds from round to round. This counts machine instructions instead
(``valgrind --tool=callgrind``): the same code on the same inputs gives nearly the
same count whatever else the machine is doing, so a ratio of the agent's added cost to
the official instrumentation's can be judged on any machine, in one run.

Each candidate runs in a worker process under callgrind. The worker makes the
candidate as ``worker.py`` does, warms every workload up and flushes, then runs each
workload's calls, and then its flush (delivery of the usage, or export of the spans).
Between those steps it calls ``os.getpgid``, which nothing else in the process calls;
callgrind dumps its counters as that function is entered, so every step gets a count
of its own. Two runs per candidate: one counts every thread together, the other
(``--separate-threads=yes``) the calling thread alone. Added instructions are the
candidate's less the baseline's (the SDK with no instrumentation), per call. The
candidate ``baseline-usage`` is the SDK alone asking for stream usage itself, as the
agent asks for it: what the SDK's own parsing of the extra usage fields costs, which the
agent's per-chunk figure includes.

Estimated microseconds divide by the baseline's own rate on this machine
(instructions per µs of CPU, from a native run of the same calls): the agent's code is
Python run by the same interpreter as the SDK's, so the rate carries over roughly; the
figure is an estimate and the tables say so.

Under valgrind the process runs some 50 times slower, so events wait in the agent's
0.2 s batch window (and the importer's 50 ms one) for fewer calls than natively:
delivery goes in smaller requests than at full speed, which counts against the agent,
never for it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CANDIDATES = ("baseline", "baseline-usage", "agent", "agent-ledger", "otel-v2", "openllmetry")
WORKLOADS = ("chat", "stream20", "stream200", "responses", "embeddings")
LABELS = {
    "baseline-usage": "the SDK alone, asking for stream usage (as the agent does)",
    "agent": "cmdrdata-autotrack (default)",
    "agent-ledger": "cmdrdata-autotrack (no API key: local ledger)",
    "otel-v2": "opentelemetry-instrumentation-openai-v2 (official)",
    "openllmetry": "opentelemetry-instrumentation-openai (OpenLLMetry)",
    "cmdrdata-openai": "cmdrdata-openai 0.2.1 TrackedOpenAI",
}
MARK = "getpgid"  # the C function whose entry makes callgrind dump its counters


# --- in the measured process -------------------------------------------------------------------


def child(plan: dict[str, Any]) -> None:
    import worker

    candidate = worker.make_candidate(
        plan["candidate"], plan["openai"], plan["ingest"], plan["spool"]
    )
    calls = {w: worker.make_call(candidate, w) for w in plan["workloads"]}
    for call in calls.values():
        for _ in range(plan["warmup"]):
            call()
    candidate.flush()
    mark = os.getpgid
    native: dict[str, float] = {}
    mark(0)  # the start, imports and warm-up end here
    for workload, call in calls.items():
        cpu = time.process_time()
        for _ in range(plan["calls"]):
            call()
        native[workload] = (time.process_time() - cpu) / plan["calls"] * 1e6
        mark(0)  # the calls
        candidate.flush()
        mark(0)  # their flush
    if plan.get("out"):
        Path(plan["out"]).write_text(json.dumps(native))


# --- the orchestrator --------------------------------------------------------------------------


def totals(folder: Path, pid: int, calling: bool) -> list[int]:
    """The dumps' instruction totals in order (the calling thread's when ``calling``)."""
    pattern = re.compile(rf"cg\.{pid}\.(\d+)" + (r"-01$" if calling else r"$"))
    found: dict[int, int] = {}
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match:
            text = path.read_text(errors="replace")
            total = re.search(r"^totals:\s*(\d+)", text, re.M) or re.search(
                r"^summary:\s*(\d+)", text, re.M
            )
            found[int(match.group(1))] = int(total.group(1)) if total else 0
    return [found[k] for k in sorted(found)]


def worker_plan(
    candidate: str, urls: tuple[str, str], args: argparse.Namespace, scratch: Path, calls: int
) -> dict[str, Any]:
    """What ``child`` runs: the candidate, the fakes, the workloads and the counts."""
    spool = scratch / "spool"
    spool.mkdir()
    return {
        "candidate": candidate,
        "openai": urls[0],
        "ingest": urls[1],
        "spool": str(spool),
        "workloads": list(args.workloads),
        "warmup": args.warmup,
        "calls": calls,
    }


def measure(
    python: Path, candidate: str, urls: tuple[str, str], args: argparse.Namespace, calling: bool
) -> dict[str, Any]:
    from run import clean_env

    scratch = Path(tempfile.mkdtemp(prefix=f"cg-{candidate}-"))
    plan = worker_plan(candidate, urls, args, scratch, args.calls)
    env = clean_env(scratch)
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--dump-before={MARK}",
        f"--callgrind-out-file={scratch}/cg.%p",
        *(["--separate-threads=yes"] if calling else []),
        str(python),
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(plan),
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if process.returncode != 0:
        tail = "\n".join(process.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{candidate} failed under valgrind ({process.returncode}):\n{tail}")
    pid = int(re.search(r"==(\d+)==", process.stderr).group(1))  # type: ignore[union-attr]
    counts = totals(scratch, pid, calling)
    shutil.rmtree(scratch, ignore_errors=True)
    # dumps: the start, then (calls, flush) per workload
    steps = counts[1 : 1 + 2 * len(args.workloads)]
    if len(steps) != 2 * len(args.workloads):
        raise SystemExit(f"{candidate}: expected {2 * len(args.workloads)} dumps, got {counts}")
    out: dict[str, Any] = {}
    for index, workload in enumerate(args.workloads):
        calls, flush = steps[2 * index], steps[2 * index + 1]
        per = calls if calling else calls + flush
        out[workload] = per / args.calls
    return out


def native_rate(python: Path, urls: tuple[str, str], args: argparse.Namespace) -> dict[str, float]:
    """The baseline's CPU µs per call, natively (median of three runs), for the estimate."""
    from run import clean_env

    runs: list[dict[str, float]] = []
    for _ in range(3):
        scratch = Path(tempfile.mkdtemp(prefix="cg-native-"))
        plan = worker_plan("baseline", urls, args, scratch, args.calls * 10)
        plan["out"] = str(scratch / "native.json")
        subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--child", json.dumps(plan)],
            env=clean_env(scratch),
            check=True,
            capture_output=True,
            timeout=600,
        )
        runs.append(json.loads((scratch / "native.json").read_text()))
        shutil.rmtree(scratch, ignore_errors=True)
    return {w: statistics.median(r[w] for r in runs) for w in args.workloads}


def report(
    counts: dict[str, dict[str, dict[str, float]]], micros: dict[str, float], workloads: list[str]
) -> str:
    from run import fmt, table

    base = counts["baseline"]
    rate = {w: base["all"][w] / micros[w] for w in workloads}  # instructions per µs
    others = [name for name in counts if name != "baseline"]

    def added(name: str, scope: str, workload: str) -> float:
        return counts[name][scope][workload] - base[scope][workload]

    def cell(name: str, scope: str, workload: str) -> str:
        extra = added(name, scope, workload)
        return f"{fmt(extra / 1000)}k (≈ {fmt(extra / rate[workload])} µs)"

    parts: list[str] = []
    for scope, title in (("all", "every thread, delivery included"), ("calling", "calling thread")):
        rows = [
            [LABELS.get(name, name)] + [cell(name, scope, w) for w in workloads] for name in others
        ]
        parts.append(
            f"**Added instructions per call, {title}** (thousands; ≈ µs at the baseline's "
            "rate on this machine)\n\n" + table(["candidate", *workloads], rows)
        )
    rows = [
        ["baseline (the SDK alone)"]
        + [f"{fmt(base['all'][w] / 1000)}k, {fmt(micros[w])} µs" for w in workloads]
    ]
    parts.append(
        "**The baseline: instructions per call, and CPU µs per call natively**\n\n"
        + table(["", *workloads], rows)
    )
    official = counts.get("otel-v2")
    ratios = []
    for name in ("agent", "agent-ledger"):
        if name in counts and official is not None:
            row = [LABELS[name]]
            for w in workloads:
                theirs = added("otel-v2", "all", w)
                row.append(fmt(added(name, "all", w) / theirs, 2) if theirs > 0 else "n/a")
            ratios.append(row)
    if ratios:
        parts.append(
            "**Added instructions, every thread, as a ratio to the official instrumentation's**"
            " (its responses figure measures nothing: it leaves responses untraced)\n\n"
            + table(["candidate", *workloads], ratios)
        )
    if "stream20" in workloads and "stream200" in workloads:
        rows = []
        for name in others:
            row = [LABELS.get(name, name)]
            for scope in ("all", "calling"):
                slope = (added(name, scope, "stream200") - added(name, scope, "stream20")) / 180
                row += [fmt(slope), fmt(slope / rate["stream200"], 2)]
            rows.append(row)
        headers = ["candidate", "every thread", "≈ µs", "calling thread", "≈ µs"]
        parts.append(
            "**Added instructions per chunk** (the slope between 20 and 200 chunks)\n\n"
            + table(headers, rows)
        )
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--calls", type=int, default=40, help="measured calls per workload")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--venv", type=Path, help="benchmark virtualenv (default: run.py's)")
    parser.add_argument("--output", type=Path, help="also write the tables and counts here")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    args.workloads = [w for w in args.workloads.split(",") if w]
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    from run import DEFAULT_VENV, ensure_venv, fakes, log

    python = ensure_venv(args.venv or DEFAULT_VENV, args.venv is None)
    names = ["baseline", *(c for c in args.candidates.split(",") if c and c != "baseline")]
    counts: dict[str, dict[str, dict[str, float]]] = {}
    with fakes() as servers:
        urls = (servers.openai_url, servers.ingest_url)
        micros = native_rate(python, urls, args)
        jobs = [(name, scope) for name in names for scope in ("all", "calling")]

        def run(job: tuple[str, str]) -> dict[str, Any]:
            log(f"{job[0]}: {job[1]} under callgrind")
            return measure(python, job[0], urls, args, job[1] == "calling")

        # instruction counts do not depend on what else runs: use every core
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for (name, scope), result in zip(jobs, pool.map(run, jobs), strict=True):
                counts.setdefault(name, {})[scope] = result
    text = report(counts, micros, args.workloads)
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "instructions.md").write_text(text + "\n")
        data = {"counts": counts, "native_us": micros, "calls": args.calls}
        (args.output / "instructions.json").write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
