"""Where the agent's CPU goes: ``python benchmarks/profile_agent.py [--workload chat]``.

Runs one worker (``worker.py calls``) with its CPU-weighted sampler on: after the
warm-up, every millisecond it takes each thread's stack and charges it the CPU time the
thread used since the previous sample (the thread's own CPU clock), so a thread waiting
for the network, a lock or the GIL weighs nothing. Each sample is then attributed:

* samples of the agent's own threads (``cmdrdata-import``, ``cmdrdata-send``) are the
  agent's;
* on other threads, walking from the innermost frame outwards past the standard
  library and the agent's dependencies (OpenTelemetry, wrapt, requests, urllib3), the
  first frame of either the agent (``cmdrdata_autotrack``) or the app's side (the
  ``openai`` SDK, httpx, pydantic, the worker) decides, so the SDK's own work inside
  the agent's call wrapper or body tap is not charged to the agent.

It prints the agent's CPU per call by thread, by agent function (the innermost
``cmdrdata_autotrack`` frame, what it calls included) and by innermost function.
The sampler itself costs CPU on another thread (not counted) and takes the GIL a
thousand times a second, so the run is slower than the benchmark's: read shares.
"""

from __future__ import annotations

import argparse
import json
import pstats
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from run import WORKER, clean_env, ensure_venv, fakes, table, target

AGENT = "cmdrdata_autotrack"
APP = frozenset(
    {
        "openai",
        "httpx",
        "httpcore",
        "h11",
        "pydantic",
        "pydantic_core",
        "anyio",
        "sniffio",
        "jiter",
        "distro",
        "benchmarks",
    }
)
AGENT_THREADS = ("cmdrdata-import", "cmdrdata-send")


def parse_frame(frame: str) -> tuple[str, str, str]:
    """``"Session.post (requests/sessions.py:575)"`` -> (function, file, line)."""
    if frame.endswith(")") and " (" in frame:
        function, _, where = frame[:-1].rpartition(" (")
        path, _, line = where.rpartition(":")
        return function, path, line
    return frame, "", ""


def package(where: str) -> str:
    top = where.split("/", 1)[0]
    if where.startswith("<") or top.removesuffix(".py") in sys.stdlib_module_names:
        return "stdlib"
    return top


def analyse(collapsed: Path, calls: int, top: int) -> str:
    total_ns = agent_ns = 0
    by_thread: Counter[str] = Counter()
    all_threads: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    calling_by_function: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack_text, _, ns_text = line.rpartition(" ")
        if not stack_text:
            continue
        ns = int(ns_text)
        thread, *frames = stack_text.split(";")
        parsed = [parse_frame(f) for f in frames]
        if not parsed:
            continue
        own_thread = thread.startswith(AGENT_THREADS)
        role = thread if own_thread else ("calling" if thread == "MainThread" else thread)
        total_ns += ns
        all_threads[role] += ns
        ours = own_thread
        if not ours:
            for _function, where, _line in reversed(parsed):
                pkg = package(where)
                if pkg == AGENT:
                    ours = True
                    break
                if pkg in APP:
                    break
        if not ours:
            continue
        agent_ns += ns
        by_thread[role] += ns
        frame = next((f for f in reversed(parsed) if package(f[1]) == AGENT), None)
        if frame is None:
            innermost = "(no agent frame)"
        else:
            innermost = f"{frame[1].removeprefix(AGENT + '/')}:{frame[0]}"
            by_line[f"{frame[1].removeprefix(AGENT + '/')}:{frame[2]} ({frame[0]})"] += ns
        by_function[innermost] += ns
        if not own_thread:
            calling_by_function[innermost] += ns
        leaf_function, leaf_where, _ = parsed[-1]
        by_leaf[f"{leaf_where}:{leaf_function}"] += ns

    def rows(counter: Counter[str], whole: int) -> list[list[str]]:
        return [
            [name, f"{ns / 1000 / calls:.1f}", f"{ns / max(whole, 1) * 100:.1f}%"]
            for name, ns in counter.most_common(top)
        ]

    share = "share of the agent's CPU"
    return "\n\n".join(
        [
            f"CPU sampled: {total_ns / 1000 / calls:.0f} µs per call over {calls} calls; "
            f"the agent's: {agent_ns / 1000 / calls:.0f} µs per call "
            f"({agent_ns / max(total_ns, 1) * 100:.1f}%).",
            "**Every thread's CPU (µs per call)**\n\n"
            + table(["thread", "µs per call", "share of all CPU"], rows(all_threads, total_ns)),
            "**The agent's CPU by thread**\n\n"
            + table(["thread", "µs per call", share], rows(by_thread, agent_ns)),
            "**By agent function** (innermost cmdrdata_autotrack frame, callees included)\n\n"
            + table(["function", "µs per call", share], rows(by_function, agent_ns)),
            "**Calling thread only, by agent function**\n\n"
            + table(["function", "µs per call", share], rows(calling_by_function, agent_ns)),
            "**By line of the innermost agent frame**\n\n"
            + table(["line", "µs per call", share], rows(by_line, agent_ns)),
            "**By innermost function** (self time, any package)\n\n"
            + table(["function", "µs per call", share], rows(by_leaf, agent_ns)),
        ]
    )


def deterministic_report(path: Path, calls: int, top: int) -> str:
    """The agent's functions on the calling thread, by cumulative time (cProfile)."""
    stats = pstats.Stats(str(path))
    entries: dict[tuple[str, int, str], tuple[int, float, float]] = {}
    total = 0.0
    for (filename, line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        calls_made, _, own, cumulative, _ = row
        total += own
        entries[(filename, line, function)] = (calls_made, own, cumulative)

    def short(filename: str) -> str:
        marker = f"/{AGENT}/"
        return AGENT + "/" + filename.split(marker, 1)[1] if marker in filename else filename

    agent = [(k, v) for k, v in entries.items() if f"/{AGENT}/" in k[0]]
    rows = [
        [
            f"{short(k[0]).removeprefix(AGENT + '/')}:{k[2]}",
            f"{v[0] / calls:.1f}",
            f"{v[2] * 1e6 / calls:.1f}",
            f"{v[1] * 1e6 / calls:.1f}",
        ]
        for k, v in sorted(agent, key=lambda kv: -kv[1][2])[:top]
    ]
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, own, _) in entries.items():
        if f"/{AGENT}/" in filename:
            name = AGENT
        elif "site-packages/" in filename:
            name = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        else:
            name = "stdlib and builtins"
        by_package[name] = by_package.get(name, 0.0) + own
    packages = [
        [name, f"{own * 1e6 / calls:.1f}", f"{own / total * 100:.1f}%"]
        for name, own in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    ]
    return "\n\n".join(
        [
            f"cProfile of the calling thread: {total * 1e6 / calls:.0f} µs per call (inflated "
            "by the profiler: compare shares, not absolute times).",
            "**Own time by package**\n\n" + table(["package", "µs per call", "share"], packages),
            "**Agent functions by cumulative time** (wrappers include the SDK call they wrap)"
            "\n\n" + table(["function", "calls per API call", "cumulative µs", "own µs"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="agent", help="worker candidate (default agent)")
    parser.add_argument("--workload", default="chat", help="chat, stream20, stream200, ...")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between samples")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--ref", help="profile this commit (see run.py --ref)")
    parser.add_argument("--venv", type=Path)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the collapsed stacks in this file")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="cProfile the calling thread instead (every call counted, each inflated)",
    )
    args = parser.parse_args(argv)
    measured = target(args.ref, args.venv)
    python = ensure_venv(measured.venv, not args.no_install, measured.source)
    with tempfile.TemporaryDirectory(prefix="cmdrdata-profile-") as tmp, fakes() as servers:
        scratch = Path(tmp)
        collapsed = args.keep or scratch / "stacks.txt"
        spool = scratch / "spool"
        spool.mkdir()
        plan = {
            "candidate": args.candidate,
            "openai": servers.openai_url,
            "ingest": servers.ingest_url,
            "spool": str(spool),
            "workloads": {args.workload: args.calls},
            "blocks": 1,
            "warmup": 50,
        }
        if args.deterministic:
            plan["cprofile"] = str(scratch / "calling.prof")
        else:
            plan["profile"] = str(collapsed)
            plan["profile_interval"] = args.interval
        out = scratch / "result.json"
        command = [str(python), str(WORKER), "calls", "--out", str(out), "--plan", json.dumps(plan)]
        done = subprocess.run(command, env=clean_env(scratch), capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 2
        block = json.loads(out.read_text())["blocks"][args.workload][0]
        threads = ", ".join(f"{k} {v:.0f}" for k, v in block["cpu_threads_us"].items())
        print(
            f"# Profile: {args.candidate}, {args.workload} (commit {measured.commit}, "
            f"{measured.state})\n\n"
            f"Measured in the same run (profiler on): {block['wall_median_us']:.0f} µs wall "
            f"(median), {block['cpu_total_us']:.0f} µs CPU per call over all threads, "
            f"delivery included; by thread (µs per call): {threads}.\n"
        )
        if args.deterministic:
            print(deterministic_report(scratch / "calling.prof", args.calls, args.top))
        else:
            print(analyse(collapsed, args.calls, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
