"""Benchmark suite of cmdrdata-autotrack: ``python benchmarks/run.py [--quick] [--only ...]``.

Sections (``--only`` takes a comma-separated list; all by default):

* ``overhead``: what the agent adds to each OpenAI call (chat, chat streams of 20 and
  200 chunks, responses, embeddings): wall time on the calling thread and CPU time
  over all threads, delivery of the usage event to a loopback ingest server included.
* ``peers``: the same workload, same run, with the official OpenTelemetry OpenAI
  instrumentation, OpenLLMetry's, and the ``cmdrdata-openai`` client.
* ``delivery``: events per second drained from the spool, and CPU per event, by batch size.
* ``outage``: many calls with the tracker unreachable: RSS, spool size, latency.
* ``startup``: ``cmdrdata-run python -c pass`` and the first ``import openai``.

Every candidate runs in a worker process of its own (``worker.py``) in a virtualenv
this script makes (``benchmarks/.venv-peers``: ``requirements.txt`` plus this
repository, editable). The per-call section keeps one worker per candidate running and
takes, round after round, one block of each workload from each candidate, back to back
(A B C, B C A, ...); tables give medians over rounds of per-round differences against
the baseline.
The script prints the tables, writes ``benchmarks/results/latest.json`` and
``latest.md``, and exits non-zero only when something could not run: it asserts no
timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "worker.py"
FAKES = HERE / "fakes.py"
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_VENV = HERE / ".venv-peers"
RESULTS = HERE / "results"
SECTIONS = ("overhead", "peers", "delivery", "outage", "startup")

# The targets of issue 10: side by side in one run, medians of interleaved rounds, default
# settings unless said. CPU figures count every thread and the delivery of the usage event.
VS_PEER = 0.5  # added CPU at most half the official instrumentation's, or the cheapest peer's
CALLING_THREAD_CPU_US = 40.0  # added CPU on the calling thread, per non-streaming call
CHUNK_CPU_US = 1.0  # added CPU per stream chunk (slope between 20 and 200 chunks)
DELIVERY_CPU_US = 30.0  # CPU per event delivered, default batch size, steady state
DELIVERY_EPS = 20_000.0  # events per second drained, default batch size
STARTUP_RATIO = 1.6  # cmdrdata-run python -c pass against python -c pass
IMPORT_OPENAI_MS = 15.0  # what the agent adds to the first import openai
RSS_GROWTH_MB = 5.0  # RSS flat over the outage runs, tracker up and down
RSS_CALLS = 100_000  # the number of calls the RSS target is over
TIMES = "\u00d7"  # the multiplication sign, spelled out: ruff flags it as confusable
# CMDRDATA_BATCH_SIZE's default when the measured package cannot tell (see default_batch_size).
DEFAULT_BATCH_SIZE = 500
# The official instrumentation: chat and streams are compared with it alone.
OFFICIAL = "otel-v2"
# Responses and embeddings are compared with the cheapest of these that records the call (the
# official instrumentation leaves responses untraced: its figure there measures nothing).
PEERS = ("otel-v2", "openllmetry", "cmdrdata-openai")
# Budgets apply to the agent as it ships: CMDRDATA_BATCH_SIZE=50 is measured for scale only.
BUDGETED_AGENTS = ("agent", "agent-ledger")

CANDIDATE_LABELS = {
    "baseline": "baseline (no instrumentation)",
    "agent": "cmdrdata-autotrack (default: coalesced delivery)",
    "agent-batch50": "cmdrdata-autotrack (CMDRDATA_BATCH_SIZE=50)",
    "agent-ledger": "cmdrdata-autotrack (no API key: local ledger)",
    "otel-v2": "opentelemetry-instrumentation-openai-v2 (official)",
    "openllmetry": "opentelemetry-instrumentation-openai (OpenLLMetry)",
    "cmdrdata-openai": "cmdrdata-openai 0.2.1 TrackedOpenAI",
}
WORKLOAD_LABELS = {
    "chat": "chat",
    "stream20": "chat stream, 20 chunks",
    "stream200": "chat stream, 200 chunks",
    "responses": "responses",
    "embeddings": "embeddings",
}
NON_STREAMING = ("chat", "responses", "embeddings")


@dataclass(frozen=True)
class Sizes:
    """How much each section does (``--quick`` divides most of it)."""

    rounds: int  # of the per-call section: one block of each workload from each candidate
    warmup: int
    calls: dict[str, int]
    cmdrdata_openai_scale: float
    delivery_rounds: int
    delivery_single: int
    delivery_batch: int
    batch_sizes: tuple[int, ...]
    outage_calls: int
    outage_sample: int
    startup_rounds: int


FULL = Sizes(
    rounds=20,
    warmup=30,
    calls={"chat": 300, "stream20": 150, "stream200": 40, "responses": 300, "embeddings": 300},
    cmdrdata_openai_scale=0.1,
    delivery_rounds=3,
    delivery_single=3000,
    delivery_batch=20000,
    batch_sizes=(1, 10, 50, 100, 500),
    outage_calls=100_000,
    outage_sample=1000,
    startup_rounds=15,
)
QUICK = Sizes(
    rounds=3,
    warmup=15,
    calls={"chat": 150, "stream20": 60, "stream200": 15, "responses": 150, "embeddings": 150},
    cmdrdata_openai_scale=0.1,
    delivery_rounds=1,
    delivery_single=600,
    delivery_batch=4000,
    batch_sizes=(1, 10, 50, 100, 500),
    outage_calls=10_000,
    outage_sample=500,
    startup_rounds=5,
)


class CouldNotRun(Exception):
    """A section (or the set-up) failed: the run exits non-zero."""


# --- small helpers -----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float], digits: int = 0) -> str:
    if len(values) < 2:
        return ""
    return f" ({fmt(min(values), digits)} to {fmt(max(values), digits)})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "MISS")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rotate(items: Sequence[str], by: int) -> list[str]:
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


# --- environment -------------------------------------------------------------------------------


def clean_env(home: Path) -> dict[str, str]:
    """The environment of every process measured: none of the agent's or peers' settings,
    and the user's cache and data folders moved to a scratch folder."""
    drop = ("CMDRDATA_", "OTEL_", "OPENAI_", "TRACELOOP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("PYTHONPATH", None)
    # As on a user's machine: compiled modules are written and reused (pip compiles at
    # install; the editable package and anything uv installed are compiled by the first,
    # untimed, run). Without them every start compiles from source, agent and app alike.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["XDG_CACHE_HOME"] = str(home / "cache")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def machine(measured: Target) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "commit": measured.commit,
        "load_before": os.getloadavg(),
        "tree": measured.state,
        "package_hash_before": package_fingerprint(measured.source),
    }


def package_fingerprint(source: Path) -> str:
    """A hash of the package's source files: the run measures the working tree, so a
    change during the run (someone editing) makes its figures a mix of two versions."""
    digest = hashlib.sha256()
    for path in sorted((source / "cmdrdata_autotrack").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json"):
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


@dataclass(frozen=True)
class Target:
    """The package version measured: the working tree, or a commit exported from git."""

    source: Path
    venv: Path
    commit: str
    state: str


def target(ref: str | None, venv: Path | None) -> Target:
    """``ref`` None: the working tree, in ``benchmarks/.venv-peers``. Otherwise the commit
    ``ref`` exported (``git archive``) to ``benchmarks/.venv-snapshots/SHA``, installed in
    ``benchmarks/.venv-peers-SHA``: a frozen version, however the tree changes meanwhile."""
    if ref is None:
        try:
            commit = git("rev-parse", "--short", "HEAD")
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
        return Target(REPO, venv or DEFAULT_VENV, commit, tree_state())
    try:
        sha = git("rev-parse", "--short=10", ref + "^{commit}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise CouldNotRun(f"{ref!r} is not a commit of this repository") from exc
    source = HERE / ".venv-snapshots" / sha
    if not (source / "pyproject.toml").exists():
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", sha],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(source, filter="data")
            else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
                tar.extractall(source)  # our own repository's archive
    return Target(source, venv or HERE / f".venv-peers-{sha}", sha, f"commit {ref} exported")


def tree_state() -> str:
    """``clean`` or the package files with uncommitted changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "cmdrdata_autotrack",
                "pyproject.toml",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        changed = [line[3:] for line in out if line.strip()]
        return "clean" if not changed else f"uncommitted changes in {len(changed)} files"
    return "unknown"


def ensure_venv(venv: Path, install: bool, source: Path = REPO) -> Path:
    """Make (or refresh) the benchmark virtualenv, with ``source`` installed editable;
    returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".bench-stamp"
    digest = hashlib.sha256(
        REQUIREMENTS.read_bytes()
        + str(source).encode()
        + (source / "pyproject.toml").read_bytes()
        # installed as a copy (bin/cmdrdata-run), not linked like an editable package
        + (
            (source / "scripts" / "cmdrdata-run").read_bytes()
            if (source / "scripts").exists()
            else b""
        )
        # the version is read from here at install: a new one needs the metadata remade
        + (source / "cmdrdata_autotrack" / "_version.py").read_bytes()
    ).hexdigest()
    if python.exists() and (not install or (stamp.exists() and stamp.read_text() == digest)):
        return python
    if not install:
        raise CouldNotRun(f"{python} does not exist (and --no-install was given)")
    uv = shutil.which("uv")
    log(f"setting up {venv} ({'uv' if uv else 'venv + pip'})")
    try:
        if uv:
            if not python.exists():
                subprocess.run(
                    [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
                )
            subprocess.run(
                [
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--compile-bytecode",
                    "--python",
                    str(python),
                    "-r",
                    str(REQUIREMENTS),
                    "-e",
                    str(source),
                ],
                check=True,
            )
        else:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    str(REQUIREMENTS),
                    "-e",
                    str(source),
                ],
                check=True,
            )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CouldNotRun(f"could not set up the benchmark virtualenv: {exc}") from exc
    stamp.write_text(digest)
    return python


@dataclass
class Fakes:
    """The fake OpenAI API and ingest server, served by a process of their own."""

    process: subprocess.Popen[str]
    openai_port: int
    ingest_port: int

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.openai_port}/v1"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"


@contextlib.contextmanager
def fakes() -> Iterator[Fakes]:
    process = subprocess.Popen(
        [sys.executable, str(FAKES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise CouldNotRun("the fake servers did not start")
        ports = json.loads(line)
        yield Fakes(process, int(ports["openai"]), int(ports["ingest"]))
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Context:
    python: Path
    sizes: Sizes
    fakes: Fakes
    scratch: Path
    env: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    retries: list[str] = field(default_factory=list)

    def worker(self, mode: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
        """Run ``worker.py MODE ARGS`` and return its JSON result (one retry on failure)."""
        try:
            return self._worker(mode, args, timeout)
        except (CouldNotRun, subprocess.TimeoutExpired) as exc:
            log(f"retrying once: {exc}")
            self.retries.append(str(exc).splitlines()[0])
            return self._worker(mode, args, timeout)

    def _worker(self, mode: str, args: list[str], timeout: float) -> dict[str, Any]:
        out = Path(tempfile.mkstemp(dir=self.scratch, suffix=".json")[1])
        command = [str(self.python), str(WORKER), mode, "--out", str(out), *args]
        result = subprocess.run(
            command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 or not out.stat().st_size:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise CouldNotRun(f"worker {mode} {args[:2]} failed ({result.returncode}):\n{tail}")
        data: dict[str, Any] = json.loads(out.read_text())
        out.unlink()
        if "versions" in data and not self.versions:
            self.versions = data["versions"]
        return data

    def spool(self, name: str) -> str:
        path = Path(tempfile.mkdtemp(prefix=name + "-", dir=self.scratch))
        return str(path)


# --- overhead and peers --------------------------------------------------------------------------


class Served:
    """A candidate's worker kept running (``worker.py calls --answers``), measuring a block
    of a workload whenever asked, so that every candidate's block of a workload runs back
    to back with the others' rather than a minute apart."""

    def __init__(self, ctx: Context, candidate: str, plan: dict[str, Any]) -> None:
        self.candidate = candidate
        self.errors = Path(tempfile.mkstemp(dir=ctx.scratch, suffix=".err")[1])
        self.out = Path(tempfile.mkstemp(dir=ctx.scratch, suffix=".json")[1])
        answers, theirs = os.pipe()
        command = [str(ctx.python), str(WORKER), "calls", "--out", str(self.out)]
        command += ["--plan", json.dumps(plan), "--answers", str(theirs)]
        with self.errors.open("w") as errors:
            self.process = subprocess.Popen(
                command,
                env=ctx.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,  # the peers' logs
                stderr=errors,
                text=True,
                pass_fds=(theirs,),
            )
        os.close(theirs)
        self.answers = os.fdopen(answers)
        ready = self._answer()
        if "versions" in ready and not ctx.versions:
            ctx.versions = ready["versions"]

    def block(self, workload: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(workload + "\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it has ended: _answer says why
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.answers.readline()
        if not line:
            self.process.wait(60)
            tail = "\n".join(self.errors.read_text().strip().splitlines()[-15:])
            raise CouldNotRun(
                f"worker calls {self.candidate} failed ({self.process.returncode}):\n{tail}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()  # the end of its input: it writes its result, exits
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.answers.close()


def run_calls(ctx: Context, candidates: list[str]) -> dict[str, Any]:
    """Every candidate's worker started and warmed up (one at a time), then rounds: in each,
    for each workload, one block of each candidate, back to back, in an order that turns
    from one round to the next. Started once, the workers leave time for many rounds:
    on a shared VM a round's differences spread by hundreds of microseconds (the
    machine's slow spells are shorter than a round), and only their median over many
    rounds holds still from one run to the next."""
    sizes = ctx.sizes
    workloads = list(sizes.calls)
    served: dict[str, Served] = {}
    try:
        for candidate in candidates:
            counts = dict(sizes.calls)
            if candidate == "cmdrdata-openai":
                counts = {
                    w: max(5, int(n * sizes.cmdrdata_openai_scale)) for w, n in counts.items()
                }
            plan = {
                "candidate": candidate,
                "openai": ctx.fakes.openai_url,
                "ingest": ctx.fakes.ingest_url,
                "spool": ctx.spool(candidate),
                "workloads": counts,
                "warmup": sizes.warmup,
            }
            started = time.monotonic()
            served[candidate] = Served(ctx, candidate, plan)
            log(f"calls: {candidate} ready ({time.monotonic() - started:.0f} s)")
        rounds = sizes.rounds
        raw: dict[str, list[dict[str, list[dict[str, Any]]]]] = {c: [] for c in candidates}
        for round_index in range(rounds):
            started = time.monotonic()
            for c in candidates:
                raw[c].append({w: [] for w in workloads})
            for offset, workload in enumerate(workloads):
                for candidate in rotate(candidates, round_index + offset):
                    block = served[candidate].block(workload)
                    raw[candidate][round_index][workload].append(block)
            log(f"calls: round {round_index + 1}/{rounds} ({time.monotonic() - started:.0f} s)")
    finally:
        for worker in served.values():
            worker.close()
    return summarize_calls(raw, candidates, workloads)


def summarize_calls(
    raw: dict[str, list[dict[str, Any]]], candidates: list[str], workloads: list[str]
) -> dict[str, Any]:
    metrics = (
        "wall_median_us",
        "cpu_total_us",
        "cpu_calls_us",
        "cpu_calling_us",
        "cpu_calling_calls_us",
        "events_per_call",
    )
    # per_round[c][w][metric] = [value of round 0, round 1, ...] (median over the blocks)
    per_round: dict[str, dict[str, dict[str, list[float]]]] = {}
    for c in candidates:
        per_round[c] = {}
        for w in workloads:
            per_round[c][w] = {
                m: [median([b[m] for b in rounds[w]]) for rounds in raw[c]] for m in metrics
            }
    summary: dict[str, Any] = {"candidates": candidates, "workloads": workloads, "by": {}}
    base = per_round["baseline"]
    for c in candidates:
        summary["by"][c] = {}
        for w in workloads:
            row: dict[str, Any] = {}
            for m in metrics:
                values = per_round[c][w][m]
                row[m] = median(values)
                if m != "events_per_call":
                    added = [v - b for v, b in zip(values, base[w][m], strict=False)]
                    ratios = [v / b for v, b in zip(values, base[w][m], strict=False) if b]
                    row[m + "_added"] = median(added)
                    row[m + "_added_rounds"] = added
                    row[m + "_ratio"] = median(ratios)
            summary["by"][c][w] = row
        if "stream20" in workloads and "stream200" in workloads:
            for m in ("wall_median_us", "cpu_total_us"):
                a20 = summary["by"][c]["stream20"][m + "_added_rounds"]
                a200 = summary["by"][c]["stream200"][m + "_added_rounds"]
                slopes = [(y - x) / 180 for x, y in zip(a20, a200, strict=False)]
                fixed = [x - 20 * s for x, s in zip(a20, slopes, strict=False)]
                summary["by"][c][f"per_chunk_{m}"] = median(slopes)
                summary["by"][c][f"per_chunk_{m}_rounds"] = slopes
                summary["by"][c][f"per_stream_{m}"] = median(fixed)
    summary["raw"] = raw
    return summary


def overhead_report(summary: dict[str, Any], agents: list[str]) -> tuple[str, list[dict[str, Any]]]:
    by = summary["by"]
    out: list[str] = []
    for agent in agents:
        rows = []
        for w in summary["workloads"]:
            b, a = by["baseline"][w], by[agent][w]
            rows.append(
                [
                    WORKLOAD_LABELS[w],
                    fmt(b["wall_median_us"]),
                    fmt(a["wall_median_us_added"]) + spread(a["wall_median_us_added_rounds"]),
                    fmt(a["wall_median_us_ratio"], 2),
                    fmt(b["cpu_total_us"]),
                    fmt(a["cpu_total_us_added"]) + spread(a["cpu_total_us_added_rounds"]),
                    fmt(a["cpu_calling_us_added"]),
                    fmt(a["cpu_calling_calls_us_added"]),
                    fmt(a["cpu_total_us_ratio"], 2),
                    fmt(a["events_per_call"], 2),
                ]
            )
        out.append(f"**{CANDIDATE_LABELS[agent]}**\n")
        out.append(
            table(
                [
                    "workload",
                    "baseline wall µs",
                    "added wall µs (rounds' range)",
                    "wall ratio",
                    "baseline CPU µs",
                    "added CPU µs, all threads, delivery incl. (range)",
                    "of which calling thread µs",
                    "calling thread µs, the calls alone (no flush)",
                    "CPU ratio",
                    "events/call",
                ],
                rows,
            )
        )
        if "per_chunk_wall_median_us" in by[agent]:
            a = by[agent]
            out.append(
                f"\nStreams: {fmt(a['per_chunk_wall_median_us'], 2)} µs wall and "
                f"{fmt(a['per_chunk_cpu_total_us'], 2)} µs CPU added per chunk (slope between "
                f"20 and 200 chunks), plus {fmt(a['per_stream_wall_median_us'])} µs wall and "
                f"{fmt(a['per_stream_cpu_total_us'])} µs CPU per stream.\n"
            )
    return "\n".join(out), call_budgets(summary, agents)


def recorded(summary: dict[str, Any], candidate: str, workload: str) -> bool:
    """Whether ``candidate`` ran ``workload`` in this run and recorded (or exported) the call:
    a peer that leaves a call untraced adds next to nothing, and no limit comes from that."""
    row = summary["by"].get(candidate, {}).get(workload)
    return row is not None and row["events_per_call"] > 0


def reference_peer(summary: dict[str, Any], workload: str) -> tuple[str, float] | None:
    """The peer the agent's added CPU on ``workload`` is held against, and its added CPU:
    the official instrumentation for chat and streams, the cheapest peer that records the
    call for responses and embeddings. None when none recorded it in this run."""
    candidates = [OFFICIAL] if workload not in ("responses", "embeddings") else list(PEERS)
    found = [
        (c, summary["by"][c][workload]["cpu_total_us_added"])
        for c in candidates
        if recorded(summary, c, workload)
    ]
    return min(found, key=lambda cv: cv[1]) if found else None


def vs_peer_budget(
    summary: dict[str, Any], label: str, workload: str, value: float
) -> dict[str, Any]:
    """Added CPU (all threads, delivery included) ≤ half the reference peer's, same run."""
    whom = (
        "the official instrumentation's"
        if workload not in ("responses", "embeddings")
        else "the cheapest peer that records the call"
    )
    what = f"{workload}: added CPU, all threads, delivery incl. ≤ {VS_PEER}{TIMES} {whom}"
    reference = reference_peer(summary, workload)
    if reference is None:
        return {
            "who": label,
            "what": what,
            "measured": f"{fmt(value)} µs",
            "budget": "n/a: no peer recorded it",
            "value": value,
            "limit": None,
            "ok": None,
        }
    peer, peer_cpu = reference
    return _budget(
        label,
        f"{what} ({peer} +{fmt(peer_cpu)} µs)",
        value,
        VS_PEER * peer_cpu,
        "µs",
    )


def call_budgets(summary: dict[str, Any], agents: list[str]) -> list[dict[str, Any]]:
    by = summary["by"]
    budgets: list[dict[str, Any]] = []
    for agent in agents:
        if agent not in BUDGETED_AGENTS:
            continue
        label = CANDIDATE_LABELS[agent]
        for w in NON_STREAMING:
            if w not in by[agent]:
                continue
            a = by[agent][w]
            budgets.append(vs_peer_budget(summary, label, w, a["cpu_total_us_added"]))
            budgets.append(
                _budget(
                    label,
                    f"{w}: added CPU on the calling thread ≤ {fmt(CALLING_THREAD_CPU_US)} µs "
                    "(the calls alone, not the block's flush)",
                    a["cpu_calling_calls_us_added"],
                    CALLING_THREAD_CPU_US,
                    "µs",
                )
            )
        if "per_chunk_cpu_total_us" in by[agent]:
            budgets.append(
                _budget(
                    label,
                    f"streams: added CPU per chunk ≤ {fmt(CHUNK_CPU_US)} µs "
                    "(slope between 20 and 200 chunks)",
                    by[agent]["per_chunk_cpu_total_us"],
                    CHUNK_CPU_US,
                    "µs",
                    2,
                )
            )
        if "stream20" in by[agent]:
            budgets.append(
                vs_peer_budget(
                    summary, label, "stream20", by[agent]["stream20"]["cpu_total_us_added"]
                )
            )
    return budgets


def _budget(
    who: str,
    what: str,
    value: float,
    limit: float,
    unit: str,
    digits: int = 0,
    at_least: bool = False,
) -> dict[str, Any]:
    ok = None if value != value else (value >= limit if at_least else value <= limit)
    sign = "≥" if at_least else "≤"
    gap = "" if unit == TIMES else " "  # a ratio reads 2.54x, a time 30 µs
    return {
        "who": who,
        "what": what,
        "measured": f"{fmt(value, digits)}{gap}{unit}",
        "budget": f"{sign} {fmt(limit, digits)}{gap}{unit}",
        "value": value,
        "limit": limit,
        "ok": ok,
    }


def peers_report(summary: dict[str, Any]) -> str:
    by = summary["by"]
    workloads = summary["workloads"]
    candidates = [c for c in summary["candidates"] if c != "baseline"]
    parts = []
    for metric, title in (
        ("cpu_total_us", "Added CPU per call, all threads, delivery/export included (µs)"),
        ("wall_median_us", "Added wall time per call on the calling thread (µs, medians)"),
    ):
        rows = [
            [CANDIDATE_LABELS[c]] + [fmt(by[c][w][metric + "_added"]) for w in workloads]
            for c in candidates
        ]
        parts.append(f"**{title}**\n\n" + table(["candidate", *workloads], rows))
    rows = [
        [CANDIDATE_LABELS[c]] + [fmt(by[c][w]["cpu_total_us_ratio"], 2) for w in workloads]
        for c in candidates
    ]
    parts.append(
        "**CPU per call, ratio to the baseline**\n\n" + table(["candidate", *workloads], rows)
    )
    rows = [
        [CANDIDATE_LABELS[c]] + [fmt(by[c][w]["events_per_call"], 2) for w in workloads]
        for c in candidates
    ]
    parts.append(
        "**Usage events delivered (or spans exported) per call** (0: the call is not metered)"
        "\n\n" + table(["candidate", *workloads], rows)
    )
    return "\n\n".join(parts)


# --- delivery ----------------------------------------------------------------------------------


def default_batch_size(ctx: Context) -> int:
    """``CMDRDATA_BATCH_SIZE``'s default in the package measured (the delivery targets are at
    default settings), or ``DEFAULT_BATCH_SIZE`` when that version cannot say."""
    probe = (
        "from cmdrdata_autotrack.config import Settings; print(Settings.from_env({}).batch_size)"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(
            [str(ctx.python), "-c", probe],
            capture_output=True,
            text=True,
            env=ctx.env,
            timeout=60,
            check=True,
        ).stdout
        return int(out.strip())
    return DEFAULT_BATCH_SIZE


def run_delivery(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    default = default_batch_size(ctx)
    batch_sizes = sorted({*sizes.batch_sizes, default})
    runs: dict[int, list[dict[str, Any]]] = {b: [] for b in batch_sizes}
    for round_index in range(sizes.delivery_rounds):
        for batch in rotate([str(b) for b in batch_sizes], round_index):
            size = int(batch)
            events = sizes.delivery_single if size == 1 else sizes.delivery_batch
            result = ctx.worker(
                "delivery",
                [
                    "--ingest",
                    ctx.fakes.ingest_url,
                    "--spool",
                    ctx.spool(f"delivery{size}"),
                    "--batch",
                    batch,
                    "--events",
                    str(events),
                ],
            )
            runs[size].append(result)
            log(
                f"delivery: round {round_index + 1}/{sizes.delivery_rounds} batch {size}: "
                f"{events / result['drain_s']:,.0f} events/s"
            )
    summary: dict[str, Any] = {"default_batch": default, "by_batch": {}}
    for size, results in runs.items():
        eps = [r["events"] / r["drain_s"] for r in results]
        summary["by_batch"][str(size)] = {
            "events": results[0]["events"],
            "journal_line_bytes": results[0]["journal_line_bytes"],
            "drain_eps": median(eps),
            "drain_eps_rounds": eps,
            "drain_cpu_us_per_event": median(
                [r["drain_cpu_s"] / r["events"] * 1e6 for r in results]
            ),
            "import_eps": median([r["events"] / r["import_s"] for r in results]),
            "import_cpu_us_per_event": median(
                [r["import_cpu_s"] / r["events"] * 1e6 for r in results]
            ),
            "requests": median([r["requests"] for r in results]),
            "requests_import_cpu_ms": median(
                [r.get("requests_import_cpu_s", 0.0) * 1e3 for r in results]
            ),
        }
    summary["raw"] = runs
    return summary


def delivery_report(summary: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    default = str(summary.get("default_batch", DEFAULT_BATCH_SIZE))
    rows = []
    for size, s in summary["by_batch"].items():
        rows.append(
            [
                size + (" (default)" if size == default else ""),
                fmt(s["events"]),
                fmt(s["drain_eps"]) + spread(s["drain_eps_rounds"]),
                fmt(s["drain_cpu_us_per_event"]),
                fmt(s["requests"]),
                fmt(s["import_eps"]),
                fmt(s.get("import_cpu_us_per_event")),
            ]
        )
    text = table(
        [
            "CMDRDATA_BATCH_SIZE",
            "events",
            "drained events/s (rounds' range)",
            "CPU µs per event",
            "requests",
            "journal → spool events/s",
            "journal → spool CPU µs per event",
        ],
        rows,
    )
    once = [s["requests_import_cpu_ms"] for s in summary["by_batch"].values()]
    if any(once):
        text += (
            f"\n\nNot in the figures above: the senders import `requests` once a process, "
            f"on their first request ({fmt(median(once), 1)} ms of CPU here, the median of "
            "the workers); each worker takes that before its drain."
        )
    label = "delivery (spool → loopback events API)"
    budgets = []
    if default in summary["by_batch"]:
        d = summary["by_batch"][default]
        # The whole drain of a spool holding every event: the threads' start (the spool
        # opened, the session made, the first connection) is spread over thousands of
        # events, and requests is imported before it (once a process, reported apart), so
        # this is the steady-state cost.
        budgets.append(
            _budget(
                label,
                f"CPU per event delivered ≤ {fmt(DELIVERY_CPU_US)} µs "
                f"(default settings: batch size {default})",
                d["drain_cpu_us_per_event"],
                DELIVERY_CPU_US,
                "µs",
                1,
            )
        )
        budgets.append(
            _budget(
                label,
                f"drained ≥ {fmt(DELIVERY_EPS)} events/s (default settings: batch size {default})",
                d["drain_eps"],
                DELIVERY_EPS,
                "events/s",
                at_least=True,
            )
        )
    return text, budgets


# --- outage ------------------------------------------------------------------------------------


def run_outage(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    runs: dict[str, dict[str, Any]] = {}
    for mode in ("down", "up"):
        ingest = ctx.fakes.ingest_url if mode == "up" else f"http://127.0.0.1:{closed_port()}"
        started = time.monotonic()
        runs[mode] = ctx.worker(
            "outage",
            [
                "--mode",
                mode,
                "--openai",
                ctx.fakes.openai_url,
                "--ingest",
                ingest,
                "--spool",
                ctx.spool(f"outage-{mode}"),
                "--calls",
                str(sizes.outage_calls),
                "--sample",
                str(sizes.outage_sample),
            ],
            timeout=3600,
        )
        log(
            f"outage: tracker {mode}, {sizes.outage_calls:,} calls "
            f"({time.monotonic() - started:.0f} s)"
        )
    for run in runs.values():
        samples = run["samples"]
        first = samples[1] if len(samples) > 1 else samples[0]  # after the first sample's calls
        run["rss_start_mb"] = first["rss_kb"] / 1024
        run["rss_end_mb"] = samples[-1]["rss_kb"] / 1024
        run["rss_max_mb"] = max(s["rss_kb"] for s in samples) / 1024
        run["rss_growth_mb"] = run["rss_max_mb"] - run["rss_start_mb"]
        run["spool_end_mb"] = samples[-1]["spool_bytes"] / 1024 / 1024
    return runs


def outage_report(runs: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for mode in ("up", "down"):
        r = runs[mode]
        rows.append(
            [
                "tracker up" if mode == "up" else "tracker unreachable",
                fmt(r["calls"]),
                fmt(r["elapsed_s"], 1),
                fmt(r["p50_us"]),
                fmt(r["p99_us"]),
                fmt(min(r["window_p99_us"])) + " to " + fmt(max(r["window_p99_us"])),
                fmt(r["p999_us"]),
                fmt(r["max_us"]),
                fmt(r["rss_start_mb"], 1),
                fmt(r["rss_max_mb"], 1),
                fmt(r["rss_growth_mb"], 1),
                fmt(r["spool_end_mb"], 1),
                fmt(r.get("spool_free_pages_share", float("nan")) * 100),
                fmt(r["spool_depth_end"]),
            ]
        )
    text = table(
        [
            "run",
            "calls",
            "seconds",
            "p50 µs",
            "p99 µs",
            "p99 per 10% window",
            "p99.9 µs",
            "max µs",
            "RSS after 1st sample MB",
            "RSS max MB",
            "RSS growth MB",
            "spool MB at end",
            "free pages in spool file %",
            "events waiting at end",
        ],
        rows,
    )
    # RSS and spool over time, a few points.
    down, up = runs["down"]["samples"], runs["up"]["samples"]
    step = max(1, (len(down) - 1) // 10)
    points = []
    for i in range(0, len(down), step):
        u = up[i] if i < len(up) else up[-1]
        points.append(
            [
                fmt(down[i]["call"]),
                fmt(u["rss_kb"] / 1024, 1),
                fmt(down[i]["rss_kb"] / 1024, 1),
                fmt(down[i]["spool_bytes"] / 1024 / 1024, 1),
            ]
        )
    text += "\n\n" + table(
        ["calls so far", "RSS MB (tracker up)", "RSS MB (unreachable)", "spool MB (unreachable)"],
        points,
    )
    d, u = runs["down"], runs["up"]
    budgets = []
    for mode, r in (("up", u), ("down", d)):
        calls = fmt(r["calls"])
        # A --quick or --outage-calls run is shorter than the issue's: the row says so.
        short = "" if r["calls"] >= RSS_CALLS else f" (target over {fmt(RSS_CALLS)})"
        budgets.append(
            _budget(
                "outage (tracker up)" if mode == "up" else "outage (tracker unreachable)",
                f"RSS flat: growth ≤ {fmt(RSS_GROWTH_MB)} MB over {calls} calls{short}",
                r["rss_growth_mb"],
                RSS_GROWTH_MB,
                "MB",
                1,
            )
        )
    # "Indistinguishable": the outage's p99 is within 10% of the tracker-up p99, or within
    # the spread of the tracker-up run's own per-window p99s.
    tolerance = max(0.10 * u["p99_us"], max(u["window_p99_us"]) - min(u["window_p99_us"]))
    budgets.append(
        _budget(
            "outage (tracker unreachable)",
            f"p99 indistinguishable from tracker up ({fmt(u['p99_us'])} µs ± {fmt(tolerance)})",
            d["p99_us"],
            u["p99_us"] + tolerance,
            "µs",
        )
    )
    return text, budgets


# --- start-up ----------------------------------------------------------------------------------


def run_startup(ctx: Context) -> dict[str, Any]:
    python = str(ctx.python)
    launcher = str(ctx.python.parent / "cmdrdata-run")
    bootstrap = subprocess.run(
        [python, "-c", "from cmdrdata_autotrack.launcher.cli import BOOTSTRAP_DIR as d; print(d)"],
        capture_output=True,
        text=True,
        env=ctx.env,
        check=True,
    ).stdout.strip()
    first_use = (
        "import openai; c = openai.OpenAI(api_key='sk-x'); "
        "c.chat.completions; c.responses; c.embeddings"
    )
    env_boot = {**ctx.env, "PYTHONPATH": bootstrap}
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([python, "-c", "pass"], ctx.env),
        "cmdrdata-run python -c pass": ([launcher, python, "-c", "pass"], ctx.env),
        "bootstrap only (PYTHONPATH) python -c pass": ([python, "-c", "pass"], env_boot),
        "python -c 'import openai'": ([python, "-c", "import openai"], ctx.env),
        "cmdrdata-run python -c 'import openai'": (
            [launcher, python, "-c", "import openai"],
            ctx.env,
        ),
        "python -c '<first use of openai>'": ([python, "-c", first_use], ctx.env),
        "cmdrdata-run python -c '<first use of openai>'": (
            [launcher, python, "-c", first_use],
            ctx.env,
        ),
    }
    names = list(commands)
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # one untimed run each: warm the page cache and bytecode
        subprocess.run(commands[name][0], env=commands[name][1], check=True, capture_output=True)
    for round_index in range(ctx.sizes.startup_rounds):
        for name in rotate(names, round_index):
            command, env = commands[name]
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            times[name].append((time.perf_counter() - started) * 1000)
    log(f"startup: {ctx.sizes.startup_rounds} rounds of {len(names)} commands")
    # What the app's thread waits for at its first `import openai` (the agent's own start
    # goes on in the background, and only an early call, a fork or the exit waits for it).
    timed_import = (
        "import time; t = time.perf_counter(); import openai; "
        "print((time.perf_counter() - t) * 1000)"
    )
    on_thread: dict[str, list[float]] = {"plain": [], "agent": []}
    for round_index in range(ctx.sizes.startup_rounds):
        for name in rotate(["plain", "agent"], round_index):
            command = [python, "-c", timed_import]
            if name == "agent":
                command = [launcher, *command]
            out = subprocess.run(command, env=ctx.env, check=True, capture_output=True, text=True)
            on_thread[name].append(float(out.stdout.strip().splitlines()[-1]))
    probe = subprocess.run(
        [launcher, python, "-c", "import sys; print('openai' in sys.modules)"],
        capture_output=True,
        text=True,
        env=ctx.env,
        check=True,
    ).stdout.strip()
    return {
        "ms": {n: median(v) for n, v in times.items()},
        "rounds": times,
        "import_on_thread_ms": on_thread,
        "openai_imported_by_agent": probe != "False",
        "probe_output": probe,
        "importtime": importtime(python, launcher, ctx.env),
    }


def _importtime_once(command: list[str], env: dict[str, str]) -> dict[str, tuple[int, int]]:
    stderr = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
    modules: dict[str, tuple[int, int]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (p.strip() for p in line.split(":", 1)[1].split("|"))
        modules[name] = (int(self_us), int(cumulative))
    return modules


def importtime(python: str, launcher: str, env: dict[str, str]) -> dict[str, Any]:
    """Modules the agent adds at start-up, and their import time (``-X importtime``)."""
    runs = 5
    plain = [_importtime_once([python, "-X", "importtime", "-c", "pass"], env) for _ in range(runs)]
    agent = [
        _importtime_once([launcher, python, "-X", "importtime", "-c", "pass"], env)
        for _ in range(runs)
    ]
    extra = set(agent[0]) - set(plain[0])
    self_us = {m: median([r[m][0] for r in agent if m in r]) for m in extra}
    by_package: dict[str, float] = {}
    for module, us in self_us.items():
        top = module.split(".")[0]
        by_package[top] = by_package.get(top, 0.0) + us
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])
    return {
        "modules_added": len(extra),
        "self_ms_total": sum(self_us.values()) / 1000,
        "by_package_ms": [(k, v / 1000) for k, v in ranked],
        "openai_modules": sorted(m for m in extra if m.split(".")[0] == "openai"),
    }


def startup_report(result: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    ms = result["ms"]
    pairs = [
        ("python -c pass", "cmdrdata-run python -c pass"),
        ("python -c pass", "bootstrap only (PYTHONPATH) python -c pass"),
        ("python -c 'import openai'", "cmdrdata-run python -c 'import openai'"),
        ("python -c '<first use of openai>'", "cmdrdata-run python -c '<first use of openai>'"),
    ]
    rows = []
    for base, agent in pairs:
        added = [
            a - b for a, b in zip(result["rounds"][agent], result["rounds"][base], strict=False)
        ]
        rows.append(
            [agent, fmt(ms[base], 1), fmt(ms[agent], 1), fmt(median(added), 1) + spread(added, 1)]
        )
    text = table(["command", "without agent ms", "with agent ms", "added ms (rounds' range)"], rows)
    it = result["importtime"]
    top = ", ".join(f"{name} {value:.1f}" for name, value in it["by_package_ms"][:8])
    text += (
        f"\n\n`-X importtime`: the agent adds {it['modules_added']} modules at start-up, "
        f"{it['self_ms_total']:.1f} ms of import time in all; by package (ms): {top}. "
        f"`openai` modules imported by the agent alone: {len(it['openai_modules'])}."
    )
    label = "start-up"
    rounds = result["rounds"]
    plain_pass, agent_pass = rounds["python -c pass"], rounds["cmdrdata-run python -c pass"]
    plain_import = rounds["python -c 'import openai'"]
    agent_import = rounds["cmdrdata-run python -c 'import openai'"]
    # Per round (the commands of a round run back to back): the launcher's cost as a ratio,
    # and what importing openai costs more under the agent than without it, the agent's
    # own start-up taken out (that is the ratio's).
    ratio = median([a / b for a, b in zip(agent_pass, plain_pass, strict=False) if b])
    import_added = median(
        [
            (ai - ap) - (pi - pp)
            for ai, ap, pi, pp in zip(
                agent_import, agent_pass, plain_import, plain_pass, strict=False
            )
        ]
    )
    on_thread = result["import_on_thread_ms"]
    thread_added = median(
        [a - p for a, p in zip(on_thread["agent"], on_thread["plain"], strict=False)]
    )
    text += (
        f"\n\nThe app's thread waits {fmt(thread_added, 1)} ms more at its first "
        f"`import openai` under the agent ({fmt(median(on_thread['agent']), 1)} against "
        f"{fmt(median(on_thread['plain']), 1)} ms, timed around the statement in the app). "
        f"The whole process takes {fmt(import_added, 1)} ms more (per round: added ms for "
        "`import openai` less added ms for `pass`): the agent's start, which runs on a "
        "background thread, is waited for at exit."
    )
    budgets = [
        _budget(
            label,
            f"cmdrdata-run python -c pass ≤ {STARTUP_RATIO}{TIMES} python -c pass "
            f"({fmt(ms['cmdrdata-run python -c pass'], 1)} against "
            f"{fmt(ms['python -c pass'], 1)} ms)",
            ratio,
            STARTUP_RATIO,
            TIMES,
            2,
        ),
        _budget(
            label,
            f"first import openai under the agent adds ≤ {fmt(IMPORT_OPENAI_MS)} ms "
            "(on the app's thread)",
            thread_added,
            IMPORT_OPENAI_MS,
            "ms",
            1,
        ),
        {
            "who": label,
            "what": "openai not imported by the agent",
            "measured": f"'openai' in sys.modules: {result['probe_output']}",
            "budget": "False",
            "value": None,
            "limit": None,
            "ok": not result["openai_imported_by_agent"],
        },
    ]
    return text, budgets


# --- main --------------------------------------------------------------------------------------


def budgets_table(budgets: list[dict[str, Any]]) -> str:
    rows = [[b["who"], b["what"], b["measured"], b["budget"], verdict(b["ok"])] for b in budgets]
    return table(["", "budget", "measured (median)", "limit", ""], rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmarks of cmdrdata-autotrack (prints tables; asserts no timing)."
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}"
    )
    parser.add_argument("--rounds", type=int, help="rounds of the overhead/peers section")
    parser.add_argument("--outage-calls", type=int, help="calls of each outage run")
    parser.add_argument(
        "--ref",
        help="benchmark this commit (exported with git archive) instead of the working tree",
    )
    parser.add_argument("--venv", type=Path, help="benchmark virtualenv (default: made here)")
    parser.add_argument(
        "--no-install", action="store_true", help="use --venv as it is (do not create or update it)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    if args.outage_calls:
        sizes = Sizes(**{**sizes.__dict__, "outage_calls": args.outage_calls})
    started = time.monotonic()
    try:
        measured = target(args.ref, args.venv)
        python = ensure_venv(measured.venv, not args.no_install, measured.source)
    except (CouldNotRun, OSError, subprocess.SubprocessError) as exc:
        print(f"could not run: {exc}", file=sys.stderr)
        return 2
    info = machine(measured)
    failures: list[str] = []
    report: list[str] = []
    budgets: list[dict[str, Any]] = []
    results: dict[str, Any] = {"machine": info, "quick": args.quick, "sizes": sizes.__dict__}
    with tempfile.TemporaryDirectory(prefix="cmdrdata-bench-") as tmp, fakes() as servers:
        scratch = Path(tmp)
        ctx = Context(python, sizes, servers, scratch, clean_env(scratch))
        try:
            ctx.worker("versions", [])
        except CouldNotRun as exc:
            print(f"could not run: {exc}", file=sys.stderr)
            return 2

        def section(name: str, body: Callable[[], None]) -> None:
            if name not in args.sections:
                return
            log(f"section {name}")
            try:
                body()
            except (CouldNotRun, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
                failures.append(f"{name}: {exc}")
                log(f"section {name} could not run: {exc}")

        def calls() -> None:
            candidates = ["baseline", "agent", "agent-batch50", "agent-ledger", "otel-v2"]
            if "peers" in args.sections:
                candidates += ["openllmetry", "cmdrdata-openai"]
            summary = run_calls(ctx, candidates)
            results["calls"] = summary
            if "overhead" in args.sections:
                text, found = overhead_report(summary, ["agent", "agent-batch50", "agent-ledger"])
                report.append("## Per-call overhead\n\n" + text)
                budgets.extend(found)
            if "peers" in args.sections:
                report.append("## Side by side with peers\n\n" + peers_report(summary))

        def delivery() -> None:
            summary = run_delivery(ctx)
            results["delivery"] = summary
            text, found = delivery_report(summary)
            report.append("## Delivery throughput\n\n" + text)
            budgets.extend(found)

        def outage() -> None:
            runs = run_outage(ctx)
            results["outage"] = runs
            text, found = outage_report(runs)
            report.append("## Outage\n\n" + text)
            budgets.extend(found)

        def startup() -> None:
            result = run_startup(ctx)
            results["startup"] = result
            text, found = startup_report(result)
            report.append("## Start-up\n\n" + text)
            budgets.extend(found)

        if "overhead" in args.sections or "peers" in args.sections:
            section("overhead" if "overhead" in args.sections else "peers", calls)
        section("delivery", delivery)
        section("outage", outage)
        section("startup", startup)
        results["versions"] = ctx.versions
    info["load_after"] = os.getloadavg()
    info["package_hash_after"] = package_fingerprint(measured.source)
    changed = info["package_hash_after"] != info["package_hash_before"]
    if changed:
        log("WARNING: the package's source changed during the run")
    info["seconds"] = round(time.monotonic() - started)
    header = (
        f"# cmdrdata-autotrack benchmarks{' (--quick)' if args.quick else ''}\n\n"
        f"{info['date']} · {info['nproc']} CPUs ({info['cpu']}) · {info['memory']} · "
        f"Linux {info['kernel']} · commit {info['commit']} ({info['tree']}, package hash "
        f"{info['package_hash_before']}) · "
        + " · ".join(f"{k} {v}" for k, v in ctx.versions.items())
        + f" · load average before/after {info['load_before'][0]:.2f}/"
        f"{info['load_after'][0]:.2f} · {info['seconds']} s\n"
    )
    markdown = header
    if changed:
        markdown += (
            "\n**Warning: the package's source changed during the run** (hash "
            f"{info['package_hash_after']} at the end): its figures mix two versions.\n"
        )
    if ctx.retries:
        markdown += "\nWorkers retried once: " + "; ".join(ctx.retries) + "\n"
    if budgets:
        markdown += "\n## Budgets\n\n" + budgets_table(budgets) + "\n"
    markdown += "\n" + "\n\n".join(report) + "\n"
    if failures:
        markdown += "\n## Could not run\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    results["budgets"] = budgets
    results["failures"] = failures
    results["retries"] = ctx.retries
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.output / "latest.md").write_text(markdown)
    print(markdown)
    log(f"wrote {args.output / 'latest.md'} and latest.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
