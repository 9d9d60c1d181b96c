"""One candidate's measured loop, in a process of its own (``run.py`` starts it).

Instrumentations patch the ``openai`` SDK for good, so each candidate runs in a fresh
interpreter of the benchmark virtualenv. The worker talks to the fakes of ``fakes.py``
(served by another process, whose CPU is not charged here) and prints one JSON object
into the file named by ``--out`` (peers write logs to standard output).

Modes:

* ``calls``: per-call cost of one candidate over several workloads (blocks of calls),
  wall time per call on the calling thread and CPU time of the whole process
  (``time.process_time()``: every thread), the flush that delivers the block's usage
  included. With ``--answers`` it measures a block whenever ``run.py`` asks, so that
  every candidate's block of a workload runs back to back with the others'.
* ``delivery``: events per second drained from the agent's spool to the ingest server.
* ``outage``: many calls with the tracker up or unreachable: latency percentiles, RSS
  and spool size over time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import json
import os
import sqlite3
import statistics
import sys
import threading
import time
import urllib.request
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKER_KEY = "tk-bench-0123456789abcdef0123456789abcdef"
OPENAI_KEY = "sk-bench-0123456789abcdef"
CUSTOMER = "acme-corp"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]

# workload name -> (SDK entry point, keyword arguments); streams set the chunk count
# through max_tokens (the fake sends that many content chunks).
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("chat", {"model": "gpt-4o-mini", "messages": MESSAGES}),
    "stream20": (
        "chat",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "max_tokens": 20},
    ),
    "stream200": (
        "chat",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "max_tokens": 200},
    ),
    "responses": ("responses", {"model": "gpt-4o-mini", "input": "Say hello to the benchmark."}),
    "embeddings": ("embeddings", {"model": "text-embedding-3-small", "input": "hello world"}),
}


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": sys.version.split()[0]}
    for name in (
        "openai",
        "httpx",
        "pydantic",
        "cmdrdata-autotrack",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-openai-v2",
        "opentelemetry-instrumentation-openai",
        "cmdrdata-openai",
        "requests",
        "wrapt",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def http_json(url: str, method: str = "GET", timeout: float = 300.0) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def folder_bytes(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue
    return total


def thread_cpu_ns() -> dict[int, tuple[str, int]]:
    """CPU time of every live thread: ident -> (name, nanoseconds)."""
    out: dict[int, tuple[str, int]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            out[thread.ident] = (thread.name, time.clock_gettime_ns(clock))
        except (OSError, AttributeError):
            continue
    return out


def cpu_by_thread(before: dict[int, tuple[str, int]], calls: int) -> dict[str, float]:
    """µs of CPU per call spent by each thread since ``before``, by thread role."""
    out: dict[str, float] = {}
    for ident, (name, now) in thread_cpu_ns().items():
        spent = now - before[ident][1] if ident in before else now
        role = "calling" if name == "MainThread" else name.rstrip("0123456789_-")
        out[role] = out.get(role, 0.0) + spent / 1000 / calls
    return out


class CpuSampler:
    """A sampling profiler weighted by CPU time: every ``interval`` it takes each thread's
    stack and charges it the CPU time that thread used since the previous sample (its own
    CPU clock), so waiting threads weigh nothing. Writes collapsed stacks
    (``thread;frame;...;frame nanoseconds``), frames as ``qualname (file:line)``."""

    def __init__(self, interval: float) -> None:
        import sysconfig

        self.interval = interval
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        roots = {
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["stdlib"],
            str(Path(__file__).resolve().parent.parent),
        }
        spec = importlib.util.find_spec("cmdrdata_autotrack")
        if spec is not None and spec.origin:  # an editable install, maybe of a snapshot
            roots.add(str(Path(spec.origin).resolve().parent.parent))
        self._prefixes = sorted(roots, key=len, reverse=True)

    def start(self) -> None:
        # The sampler needs the GIL to look: with the default 5 ms switch interval it would
        # mostly look when the other threads release it for I/O, and charge their CPU to
        # the socket reads. A short interval lets it in at (nearly) any bytecode.
        sys.setswitchinterval(0.00005)
        self._thread.start()

    def stop(self, path: str) -> None:
        self._stop.set()
        self._thread.join()
        lines = [f"{stack} {ns}" for stack, ns in self.counts.items()]
        Path(path).write_text("\n".join(lines) + "\n")

    def _where(self, filename: str) -> str:
        for prefix in self._prefixes:
            if filename.startswith(prefix + os.sep):
                return filename[len(prefix) + 1 :]
        return filename

    def _run(self) -> None:
        me = threading.get_ident()
        last: dict[int, int] = {}
        while not self._stop.wait(self.interval):
            frames = sys._current_frames()
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in frames.items():
                if ident == me:
                    continue
                try:
                    now = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
                except OSError:
                    continue
                spent, last[ident] = now - last.get(ident, now), now
                if spent <= 0:
                    continue
                stack: list[str] = []
                current: Any = frame
                while current is not None:
                    code = current.f_code
                    name = getattr(code, "co_qualname", code.co_name)
                    where = self._where(code.co_filename)
                    stack.append(f"{name} ({where}:{current.f_lineno})")
                    current = current.f_back
                key = names.get(ident, "?") + ";" + ";".join(reversed(stack))
                self.counts[key] = self.counts.get(key, 0) + spent


# --- candidates ------------------------------------------------------------------------------


@dataclass
class Candidate:
    client: Any
    flush: Callable[[], None]
    # SDK entry points whose calls name the customer (``customer_id=``): those it meters.
    customer_on: frozenset[str] = frozenset()
    # What the candidate produced so far (events or spans), when the ingest server cannot tell.
    produced: Callable[[], int] | None = None
    # Parameters the candidate's streamed calls add (the SDK alone asking for stream usage).
    stream_kwargs: dict[str, Any] = field(default_factory=dict)


def _openai_client(base_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY, max_retries=0)


def _agent(base_url: str, ingest: str, spool: str, **settings: Any) -> Candidate:
    import cmdrdata_autotrack

    cmdrdata_autotrack.instrument(
        endpoint=ingest + "/api/events",
        spool_dir=spool,
        ledger_path=os.path.join(spool, "ledger.sqlite3"),
        stream_usage="always",  # as on OpenAI's own hosts: usage is asked for, and hidden
        shutdown_timeout=2,
        **settings,
    )

    def flush() -> None:
        if not cmdrdata_autotrack.flush(300):
            raise RuntimeError("cmdrdata_autotrack.flush() timed out")

    produced: Callable[[], int] | None = None
    if not settings.get("api_key"):  # the local ledger: count what it recorded
        ledger = os.path.join(spool, "ledger.sqlite3")

        def recorded() -> int:
            if not os.path.exists(ledger):
                return 0
            with contextlib.closing(sqlite3.connect(ledger)) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

        produced = recorded

    entries = frozenset(("chat", "responses", "embeddings"))
    return Candidate(_openai_client(base_url), flush, entries, produced)


class _Discard:
    """A span exporter that keeps nothing (export cost comparable across candidates)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _otel(base_url: str, module: str) -> Candidate:
    import importlib

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = _Discard()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    instrumentor = importlib.import_module(module).OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    def flush() -> None:
        if not provider.force_flush(300_000):
            raise RuntimeError("force_flush timed out")

    return Candidate(_openai_client(base_url), flush, produced=lambda: exporter.spans)


def _cmdrdata_openai(base_url: str, ingest: str) -> Candidate:
    from cmdrdata_openai import TrackedOpenAI

    client = TrackedOpenAI(
        api_key=OPENAI_KEY,
        tracker_key=TRACKER_KEY,
        tracker_endpoint=ingest + "/api/events",
        base_url=base_url,
        max_retries=0,
    )
    executor = client.get_tracker()._executor
    workers = executor._max_workers

    def flush() -> None:
        # The pool takes tasks in order: once every worker holds a barrier task,
        # everything submitted before them has finished.
        barrier = threading.Barrier(workers)
        futures = [executor.submit(barrier.wait, 300) for _ in range(workers)]
        for future in futures:
            future.result(timeout=300)

    # It wraps chat and embeddings (not responses, where customer_id would reach the SDK).
    return Candidate(client, flush, frozenset(("chat", "embeddings")))


def make_candidate(name: str, base_url: str, ingest: str, spool: str) -> Candidate:
    if name == "baseline":
        return Candidate(_openai_client(base_url), lambda: None)
    if name == "baseline-usage":  # the SDK alone, asking for the stream usage the agent asks for
        usage = {"stream_options": {"include_usage": True}}
        return Candidate(_openai_client(base_url), lambda: None, stream_kwargs=usage)
    if name == "agent":
        return _agent(base_url, ingest, spool, api_key=TRACKER_KEY)
    if name.startswith("agent-batch"):
        size = int(name.removeprefix("agent-batch"))
        return _agent(base_url, ingest, spool, api_key=TRACKER_KEY, batch_size=size)
    if name == "agent-ledger":
        return _agent(base_url, ingest, spool)
    if name == "otel-v2":
        return _otel(base_url, "opentelemetry.instrumentation.openai_v2")
    if name == "openllmetry":
        return _otel(base_url, "opentelemetry.instrumentation.openai")
    if name == "cmdrdata-openai":
        return _cmdrdata_openai(base_url, ingest)
    raise SystemExit(f"unknown candidate {name!r}")


def make_call(candidate: Candidate, workload: str) -> Callable[[], None]:
    entry, params = WORKLOADS[workload]
    kwargs = {**params, "customer_id": CUSTOMER} if entry in candidate.customer_on else params
    client = candidate.client
    if entry == "chat":
        create = client.chat.completions.create
        if kwargs.get("stream"):
            kwargs = {**kwargs, **candidate.stream_kwargs}

            def stream() -> None:
                for _ in create(**kwargs):
                    pass

            return stream
        return lambda: create(**kwargs)
    if entry == "responses":
        create = client.responses.create
        return lambda: create(**kwargs)
    create = client.embeddings.create
    return lambda: create(**kwargs)


# --- modes -----------------------------------------------------------------------------------


class CallsLoop:
    """One candidate made, warmed up and checked, and its blocks measured on demand."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.name = plan["candidate"]
        self.ingest = plan["ingest"]
        self.candidate = make_candidate(self.name, plan["openai"], self.ingest, plan["spool"])
        self.counts: dict[str, int] = plan["workloads"]
        self.calls = {w: make_call(self.candidate, w) for w in self.counts}
        start = self.delivered()
        for call in self.calls.values():
            for _ in range(plan["warmup"]):
                call()
        self.candidate.flush()
        if self.name != "baseline" and self.delivered() == start:
            # An agent that failed to start lets the app run on unmetered, by design: that
            # must fail the benchmark, not pass for a zero overhead.
            raise RuntimeError(f"{self.name} metered none of the warm-up calls")

    def delivered(self) -> int:
        if self.candidate.produced is not None:
            return self.candidate.produced()
        return int(http_json(self.ingest + "/stats")["events"])

    def block(self, workload: str) -> dict[str, Any]:
        """``counts[workload]`` calls, then the flush that delivers their usage, measured."""
        call, n = self.calls[workload], self.counts[workload]
        walls = array("d")
        gc.collect()
        before = self.delivered()
        threads = thread_cpu_ns()
        clock, perf = time.process_time, time.perf_counter
        calling0 = time.thread_time_ns()
        cpu0 = clock()
        for _ in range(n):
            started = perf()
            call()
            walls.append(perf() - started)
        cpu1 = clock()
        calling1 = time.thread_time_ns()  # the calls alone: what the app's thread pays
        flush_started = perf()
        self.candidate.flush()
        flush_wall = perf() - flush_started
        cpu2 = clock()
        by_thread = cpu_by_thread(threads, n)
        after = self.delivered()
        return {
            "calls": n,
            "wall_median_us": statistics.median(walls) * 1e6,
            "wall_mean_us": statistics.fmean(walls) * 1e6,
            "cpu_calls_us": (cpu1 - cpu0) / n * 1e6,
            "cpu_total_us": (cpu2 - cpu0) / n * 1e6,
            "flush_ms": flush_wall * 1e3,
            "events_per_call": (after - before) / n,
            "cpu_calling_us": by_thread.get("calling", 0.0),
            "cpu_calling_calls_us": (calling1 - calling0) / n / 1000,
            "cpu_threads_us": by_thread,
        }


def run_calls(args: argparse.Namespace) -> dict[str, Any]:
    plan = json.loads(args.plan)
    loop = CallsLoop(plan)
    if args.answers is not None:
        return serve_blocks(loop, args.answers)
    sampler = CpuSampler(plan.get("profile_interval", 0.001)) if plan.get("profile") else None
    if sampler is not None:
        sampler.start()
    deterministic = cProfile.Profile() if plan.get("cprofile") else None
    if deterministic is not None:  # the calling thread only
        deterministic.enable()
    results: dict[str, list[dict[str, Any]]] = {w: [] for w in loop.counts}
    for _ in range(plan["blocks"]):
        for workload in loop.counts:
            results[workload].append(loop.block(workload))
    if sampler is not None:
        sampler.stop(plan["profile"])
    if deterministic is not None:
        deterministic.disable()
        deterministic.dump_stats(plan["cprofile"])
    return {"candidate": plan["candidate"], "versions": versions(), "blocks": results}


def serve_blocks(loop: CallsLoop, answers: int) -> dict[str, Any]:
    """Blocks on demand, so that ``run.py`` can take every candidate's block of a workload
    back to back: a workload's name per line on standard input, a line of JSON per block
    on the ``answers`` descriptor (standard output is the peers' log). A first line says
    the candidate is ready; an empty line or the end of the input ends it."""
    with os.fdopen(answers, "w", buffering=1) as out:
        out.write(json.dumps({"ready": True, "versions": versions()}) + "\n")
        for line in sys.stdin:
            workload = line.strip()
            if not workload:
                break
            out.write(json.dumps(loop.block(workload)) + "\n")
    return {"candidate": loop.name, "served": True}


def sample_record(index: int) -> dict[str, Any]:
    """The span record the agent journals for a chat call with a meter-only span (the
    default): the span's attributes and a copy of the SDK's response, whose usage the
    importer reads (``usage.snapshot``). Made as the agent makes it, from the fake's own
    answer parsed by the SDK."""
    import fakes  # beside this script, on its path
    from openai.types.chat import ChatCompletion

    from cmdrdata_autotrack.usage import attributes as A
    from cmdrdata_autotrack.usage import snapshot

    response = ChatCompletion.model_validate_json(fakes.chat_completion())
    attributes: dict[str, Any] = {
        A.METERED_MARK: True,
        A.OPERATION_NAME: "chat",
        A.OPENAI_API_TYPE: "chat_completions",
        A.PROVIDER_NAME: "openai",
        A.SYSTEM: "openai",
        A.SERVER_ADDRESS: "api.openai.com",
        A.REQUEST_MODEL: "gpt-4o-mini",
        A.CUSTOMER_ID: CUSTOMER,
        A.CUSTOMER_SOURCE: "argument",
        A.OPENAI_KEY_SUFFIX: "abcd",
        A.OPENAI_REQUEST_ID: f"req_{index:016x}",
    }
    now = time.time_ns()
    return {
        "v": 1,
        "a": attributes,
        "t": (0x5EED << 96) + index + 1,
        "s": index + 1,
        "b": now - 800_000_000,
        "e": now,
        "ok": True,
        "x": ["chat", snapshot.take("chat", response), True, True],
    }


def run_delivery(args: argparse.Namespace) -> dict[str, Any]:
    from cmdrdata_autotrack.config import Settings
    from cmdrdata_autotrack.export.pipeline import Pipeline, journal_line

    ingest = args.ingest
    settings = Settings(
        api_key=TRACKER_KEY,
        endpoint=ingest + "/api/events",
        batch_size=args.batch,
        spool_dir=args.spool,
        ledger_path=os.path.join(args.spool, "ledger.sqlite3"),
        shutdown_timeout=2.0,
    )
    pipeline = Pipeline(settings)
    lines = [journal_line(sample_record(i)).encode() for i in range(args.events)]
    for line in lines:  # what Pipeline.submit writes, without starting the threads yet
        if not pipeline.journal.append(line):
            raise RuntimeError("the journal refused an event")
    base = int(http_json(ingest + "/stats")["events"])
    store = pipeline.open_store()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    moved = pipeline.import_journal(store)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    store.close()
    if moved != args.events:
        raise RuntimeError(f"imported {moved} of {args.events} events")
    requests0 = int(http_json(ingest + "/stats")["requests"])
    # The senders import requests on their first request, once a process: a start-up
    # cost (as long as a few thousand events' delivery), not a steady-state one. Taken
    # here, and reported on its own.
    cpu_import = time.process_time()
    import requests  # noqa: F401

    wall2, cpu2 = time.perf_counter(), time.process_time()
    pipeline.start()
    stats = http_json(f"{ingest}/wait?events={base + args.events}&timeout=600")
    wall3, cpu3 = time.perf_counter(), time.process_time()
    pipeline.shutdown(5)
    if int(stats["events"]) < base + args.events:
        raise RuntimeError("the ingest server did not get every event in time")
    return {
        "batch": args.batch,
        "events": args.events,
        "journal_line_bytes": statistics.fmean(len(line) for line in lines),
        "import_s": wall1 - wall0,
        "import_cpu_s": cpu1 - cpu0,
        "drain_s": wall3 - wall2,
        "drain_cpu_s": cpu3 - cpu2,
        "requests_import_cpu_s": cpu2 - cpu_import,
        "requests": int(stats["requests"]) - requests0,
        "versions": versions(),
    }


def run_outage(args: argparse.Namespace) -> dict[str, Any]:
    spool = Path(args.spool)
    candidate = _agent(args.openai, args.ingest, args.spool, api_key=TRACKER_KEY)
    call = make_call(candidate, "chat")
    for _ in range(200):
        call()
    latencies = array("d")
    samples: list[dict[str, float]] = []
    perf = time.perf_counter
    started = perf()
    cpu0 = time.process_time()
    for index in range(args.calls):
        if index % args.sample == 0:
            samples.append(
                {
                    "call": index,
                    "t": perf() - started,
                    "rss_kb": rss_kb(),
                    "spool_bytes": folder_bytes(spool),
                }
            )
        t0 = perf()
        call()
        latencies.append(perf() - t0)
    elapsed = perf() - started
    cpu = time.process_time() - cpu0
    samples.append(
        {"call": args.calls, "t": elapsed, "rss_kb": rss_kb(), "spool_bytes": folder_bytes(spool)}
    )
    drain_s = None
    if args.mode == "up":
        flush_started = perf()
        candidate.flush()
        drain_s = perf() - flush_started
    from cmdrdata_autotrack.export.spool import Spool
    from cmdrdata_autotrack.telemetry import metrics

    # Let the importer move what it holds, so the depth below is the whole backlog.
    time.sleep(0.3)
    store = Spool(spool / "spool.sqlite3")
    depth = store.stats().depth
    pages = int(store.conn.execute("PRAGMA page_count").fetchone()[0])
    free_pages = int(store.conn.execute("PRAGMA freelist_count").fetchone()[0])
    store.close()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    window = max(1, args.calls // 10)
    window_p99 = []
    for start in range(0, args.calls, window):
        part = sorted(latencies[start : start + window])
        window_p99.append(part[min(len(part) - 1, int(0.99 * len(part)))] * 1e6)
    return {
        "mode": args.mode,
        "calls": args.calls,
        "elapsed_s": elapsed,
        "cpu_per_call_us": cpu / args.calls * 1e6,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": ordered[-1] * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "window_p99_us": window_p99,
        "samples": samples,
        "spool_depth_end": depth,
        "spool_free_pages_share": free_pages / max(pages, 1),
        "drain_s": drain_s,
        "metrics": metrics.snapshot(),
        "versions": versions(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode_name", required=True)
    calls = modes.add_parser("calls")
    calls.add_argument("--plan", required=True, help="JSON: candidate, urls, workloads, ...")
    calls.add_argument(
        "--answers", type=int, help="serve blocks on demand, answering on this descriptor"
    )
    delivery = modes.add_parser("delivery")
    delivery.add_argument("--ingest", required=True)
    delivery.add_argument("--spool", required=True)
    delivery.add_argument("--batch", type=int, default=1)
    delivery.add_argument("--events", type=int, default=2000)
    outage = modes.add_parser("outage")
    outage.add_argument("--mode", choices=("up", "down"), required=True)
    outage.add_argument("--openai", required=True)
    outage.add_argument("--ingest", required=True, help="root URL of the events API")
    outage.add_argument("--spool", required=True)
    outage.add_argument("--calls", type=int, default=100_000)
    outage.add_argument("--sample", type=int, default=1000)
    only_versions = modes.add_parser("versions")
    for mode in (calls, delivery, outage, only_versions):
        mode.add_argument("--out", required=True, help="file the JSON result is written to")
    args = parser.parse_args(argv)
    runners: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "calls": run_calls,
        "delivery": run_delivery,
        "outage": run_outage,
        "versions": lambda _: {"versions": versions()},
    }
    result = runners[args.mode_name](args)
    Path(args.out).write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
