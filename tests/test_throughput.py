"""Delivery keeps up: coalesced requests, several in flight, prompt flushes.

A real ingest server on 127.0.0.1, given a latency (a distant API) or a share of
failures; the pipeline in this process or ``cmdrdata-autotrack flush`` in real
subprocesses. Every check is on what the server received (no timing
assertions, only generous bounded waits): every event exactly once, in far
fewer requests than events.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_delivery import KEY, event, settings_for

from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export.client import batch_key
from cmdrdata_autotrack.export.pipeline import HELP_AFTER_ROUNDS, Pipeline
from cmdrdata_autotrack.export.spool import Spool

from ingest_server import BATCH_PATH, EVENTS_PATH, IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

CLI = str(Path(sys.executable).parent / "cmdrdata-autotrack")


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY, seed=8) as server:
        yield server


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    made: list[Pipeline] = []
    yield made
    for pipeline in made:
        pipeline.shutdown(0)


def defaults_for(tmp_path: Path, ingest: IngestServer, **overrides: Any) -> Settings:
    """The shipped delivery settings (batch size, linger, breaker, retries), on loopback."""
    return Settings(
        api_key=KEY,
        endpoint=ingest.url,
        spool_dir=str(tmp_path / "spool"),
        ledger_path=str(tmp_path / "ledger.sqlite3"),
        **overrides,
    )


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment that gives ``cmdrdata-autotrack`` these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMDRDATA_")}
    for name, value in settings.masked().items():
        if value is not None and name.startswith("CMDRDATA_"):
            env[name] = str(value)
    env["CMDRDATA_API_KEY"] = settings.api_key or ""
    return env


def journal(settings: Settings, count: int) -> list[str]:
    """Journal ``count`` events as an app process with ``settings`` would (its segment
    closed, ready for any process to import), without delivering them."""
    pipeline = Pipeline(settings)
    events = [event(f"c{i % 7}") for i in range(count)]
    for item in events:
        assert pipeline.journal.append((json.dumps(item, separators=(",", ":")) + "\n").encode())
    pipeline.journal.rotate()
    return [item["event_id"] for item in events]


def flush(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "flush", "--quiet", *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sent_ids(ingest: IngestServer) -> list[str]:
    """Every event id the server received, once per time it was sent."""
    return [event_id for request in ingest.requests for event_id in request.event_ids]


# --- a distant API: coalesced and concurrent ------------------------------------------------


def test_a_50ms_api_keeps_up_with_a_burst_of_2000_events(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """Issue 8, break 14: one request per event at 50 ms could not keep up (~20 events/s)."""
    ingest.latency = 0.05
    pipeline = Pipeline(defaults_for(tmp_path, ingest))
    pipelines.append(pipeline)
    events = [event(f"c{i % 5}") for i in range(2000)]
    for item in events:
        pipeline.submit(item)
    assert ingest.wait_for_events(2000, timeout=20), f"{len(ingest.accepted_ids())} arrived"
    assert ingest.accepted_ids() == {item["event_id"] for item in events}
    ids = sent_ids(ingest)
    assert len(ids) == len(set(ids)) == 2000  # none sent twice
    assert ingest.duplicates() == 0
    assert len(ingest.requests) <= 100  # coalesced: far fewer requests than events
    batches = [r for r in ingest.requests if r.path == BATCH_PATH]
    assert batches and all(r.idempotency_key == batch_key(r.event_ids) for r in batches)
    assert Spool(pipeline.spool_path).stats().depth == 0 or pipeline.flush(5)


def test_events_arriving_one_by_one_share_requests(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    pipeline = Pipeline(defaults_for(tmp_path, ingest))
    pipelines.append(pipeline)
    ids = []
    for i in range(300):  # a steady trickle, the importer's 50 ms rounds apart at most
        item = event(f"c{i % 3}")
        pipeline.submit(item)
        ids.append(item["event_id"])
        if i % 30 == 29:
            assert ingest.wait_for_events(i - 28, timeout=10)  # and it keeps flowing
    assert ingest.wait_for_events(300, timeout=20)
    assert ingest.accepted_ids() == set(ids)
    assert len(ingest.requests) < 300 / 2
    assert ingest.duplicates() == 0


def test_single_event_mode_sends_several_requests_at_once(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    ingest.latency = 0.05
    settings = defaults_for(tmp_path, ingest, batch_size=1, max_in_flight=4)
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    events = [event() for _ in range(120)]
    for item in events:
        pipeline.submit(item)
    assert ingest.wait_for_events(120, timeout=30)
    assert all(r.path == EVENTS_PATH for r in ingest.requests)
    assert ingest.duplicates() == 0 and len(sent_ids(ingest)) == 120
    # several requests were held by the server at the same moment
    assert max(_overlaps(ingest)) > 1


def test_a_fast_api_that_stalls_for_two_rounds_gets_no_helpers(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """Helpers pay against an API that is slow round after round; against a fast one
    they only take turns at the GIL and the spool (and empty each other's page cache)."""
    settings = defaults_for(tmp_path, ingest, batch_size=10)
    ids = journal(settings, 100)
    ingest.slow(0.2, times=HELP_AFTER_ROUNDS - 1)
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    assert pipeline.flush(20)
    assert ingest.accepted_ids() == set(ids) and ingest.duplicates() == 0
    # one sender: each request read after the one before it was answered
    reads = [r.time for r in ingest.requests]
    assert len(reads) == 10 and reads == sorted(reads)


def test_a_batch_api_slow_round_after_round_gets_helpers(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    ingest.latency = 0.05
    settings = defaults_for(tmp_path, ingest, batch_size=10)
    ids = journal(settings, 300)
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    assert pipeline.flush(20)
    assert ingest.accepted_ids() == set(ids) and ingest.duplicates() == 0
    assert max(_overlaps(ingest)) > 1


def _overlaps(ingest: IngestServer) -> list[int]:
    """For each request, how many requests the server had read within its latency window."""
    times = sorted(r.time for r in ingest.requests)
    return [sum(1 for t in times if 0 <= t - start < ingest.latency / 2) for start in times]


def test_a_batch_refused_as_a_whole_is_halved_not_sent_event_by_event(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """A refusal of the whole batch (413, say) used to send its events one per request."""
    settings = defaults_for(tmp_path, ingest)
    ids = journal(settings, 64)
    ingest.fail(413, times=1, body={"error": "payload too large"})
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    assert pipeline.flush(20)
    assert ingest.accepted_ids() == set(ids)
    assert [len(r.event_ids) for r in ingest.requests] == [64, 32, 32]
    assert Spool(pipeline.spool_path).stats().dead_letters == 0


# --- the batch endpoint is missing: probed once, for every process ----------------------------


def test_a_missing_batch_endpoint_is_probed_once_across_processes(
    tmp_path: Path, ingest: IngestServer
) -> None:
    settings = defaults_for(tmp_path, ingest, batch_endpoint=ingest.root_url + "/api/no-batch")
    first = journal(settings, 1100)  # more than a batch: several senders want to probe at once
    result = flush(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1100 delivered, 0 still spooled" in result.stdout
    second = journal(settings, 50)
    result = flush(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ingest.accepted_ids() == set(first + second)
    probes = [r for r in ingest.requests if r.path == "/api/no-batch"]
    assert len(probes) == 1 and probes[0].status == 404
    assert ingest.duplicates() == 0
    spool = Spool(tmp_path / "spool" / "spool.sqlite3")
    assert spool.no_batch_since(ingest.root_url + "/api/no-batch") is not None


def test_a_batch_endpoint_that_works_again_is_used_again(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    settings = defaults_for(tmp_path, ingest)
    spool = Spool(tmp_path / "spool" / "spool.sqlite3")
    spool.remember_no_batch(ingest.batch_url, 404)
    # a day ago: the API may have one now
    spool.conn.execute("UPDATE meta SET value = json_set(value, '$.at', 0) WHERE key LIKE 'no-b%'")
    pipeline = Pipeline(settings)
    pipelines.append(pipeline)
    events = [event() for _ in range(20)]
    for item in events:
        pipeline.submit(item)
    ids = [item["event_id"] for item in events]
    assert pipeline.flush(10)
    assert ingest.accepted_ids() == set(ids)
    assert any(r.path == BATCH_PATH for r in ingest.requests)
    assert spool.no_batch_since(ingest.batch_url) is None  # new processes need not ask


# --- flush drains whenever the API accepts at least half of the requests ---------------------


@pytest.mark.parametrize("fail_ratio", [0.5, 0.6])
def test_flush_drains_an_api_that_fails_most_requests(
    fail_ratio: float, tmp_path: Path, ingest: IngestServer
) -> None:
    """Issue 8, break 14: with 60% failures a flush of 148 events took 400 s (the breaker's
    cooldown kept doubling). The shipped breaker and retry settings, a 30 s flush."""
    ingest.latency = 0.05
    ingest.fail_ratio = fail_ratio
    settings = defaults_for(tmp_path, ingest)
    ids = journal(settings, 148)
    result = flush(settings, "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "148 delivered, 0 still spooled" in result.stdout
    assert ingest.accepted_ids() == set(ids)
    assert any(r.status == 503 for r in ingest.requests)  # the failures were real


def test_flush_in_the_app_drains_an_api_that_fails_most_requests(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    ingest.fail_ratio = 0.6
    pipeline = Pipeline(defaults_for(tmp_path, ingest))
    pipelines.append(pipeline)
    events = [event() for _ in range(148)]
    for item in events:
        pipeline.submit(item)
    assert pipeline.flush(30)
    assert ingest.accepted_ids() == {item["event_id"] for item in events}
    assert pipeline.breaker.hurry_cap is None  # the flush is over: the breaker as configured


# --- exactly once, whatever the processes do ---------------------------------------------------


def test_two_processes_draining_one_spool_send_each_event_once(
    tmp_path: Path, ingest: IngestServer
) -> None:
    ingest.latency = 0.05
    settings = defaults_for(tmp_path, ingest, batch_size=5)
    ids = journal(settings, 600)
    env = cli_env(settings)
    runs = [
        subprocess.Popen(
            [CLI, "flush", "--quiet", "--timeout", "60"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    delivered = [int(out.split(" delivered")[0].split()[-1]) for out, _ in outputs]
    assert sum(delivered) == 600
    assert ingest.accepted_ids() == set(ids)
    sent = sent_ids(ingest)
    assert len(sent) == len(set(sent)) == 600 and ingest.duplicates() == 0


def test_kill_9_mid_batch_then_restart_delivers_each_event_once(
    tmp_path: Path, ingest: IngestServer
) -> None:
    settings = defaults_for(tmp_path, ingest)
    ids = journal(settings, 200)
    ingest.slow(2.0, times=1)  # the batch is held: the sender is killed while it waits
    process = subprocess.Popen(
        [CLI, "flush", "--quiet", "--timeout", "30"],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert ingest.wait_for_arrivals(1, timeout=30)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert Spool(tmp_path / "spool" / "spool.sqlite3").stats().depth == 200  # not acked
    result = flush(settings, "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ingest.wait_for_requests(2, timeout=10)
    assert ingest.accepted_ids() == set(ids)  # each once; the API deduplicated the resend
    batches = [r for r in ingest.requests if r.path == BATCH_PATH]
    # sent again with the same ids, and (the same set of events) the same batch key
    assert {r.idempotency_key for r in batches} == {batch_key(ids)}
    assert all(sorted(r.event_ids) == sorted(ids) for r in batches)


# --- explicit timeouts of any value ------------------------------------------------------------


def test_shutdown_with_a_huge_timeout_does_not_raise(
    tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """``join`` raised OverflowError for a timeout beyond what a lock can wait."""
    pipeline = Pipeline(settings_for(tmp_path, ingest))
    pipelines.append(pipeline)
    pipeline.submit(event())
    pipeline.shutdown(1e300)
    assert len(ingest.accepted_ids()) == 1


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 10**400])
def test_flush_with_an_odd_timeout_still_delivers(
    timeout: Any, tmp_path: Path, ingest: IngestServer, pipelines: list[Pipeline]
) -> None:
    """flush(nan) returned at once without delivering (nan: the default 5 s)."""
    pipeline = Pipeline(settings_for(tmp_path, ingest))
    pipelines.append(pipeline)
    items = [event() for _ in range(3)]
    for item in items:
        pipeline.submit(item)
    ids = [item["event_id"] for item in items]
    if timeout == -1.0:  # nothing to wait for: it may return early, then delivers anyway
        pipeline.flush(timeout)
        assert pipeline.flush(10)
    else:
        assert pipeline.flush(timeout)
    assert ingest.accepted_ids() == set(ids)


def test_flush_command_with_timeout_nan_delivers(tmp_path: Path, ingest: IngestServer) -> None:
    settings = defaults_for(tmp_path, ingest)
    ids = journal(settings, 5)
    result = flush(settings, "--timeout", "nan")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 delivered, 0 still spooled" in result.stdout
    assert ingest.accepted_ids() == set(ids)
