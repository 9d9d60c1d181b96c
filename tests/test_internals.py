"""Small pieces: paths, log formats, the import hook, the breaker, Retry-After."""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from cmdrdata_autotrack import paths
from cmdrdata_autotrack.export.backoff import CircuitBreaker, backoff_delay, retry_after_seconds
from cmdrdata_autotrack.import_hook import when_imported
from cmdrdata_autotrack.telemetry import logging as agent_logging

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_paths_per_platform(platform: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    cache, data = paths.cache_dir(), paths.data_dir()
    assert cache.name in ("cmdrdata-autotrack", "Cache") and "cmdrdata-autotrack" in str(cache)
    assert "cmdrdata-autotrack" in str(data) and cache != data
    where = paths.locations(None, None)
    assert where.spool_path == where.spool_dir / "spool.sqlite3"
    assert where.ledger_path.name == "ledger.sqlite3"
    assert paths.locations("~/x", "~/l.db").spool_dir == Path("~/x").expanduser()


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "cmdrdata_autotrack.delivery",
        logging.WARNING,
        __file__,
        1,
        "key %s",
        ("tk-abcdefgh123456",),
        None,
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_log_lines_carry_ids_and_hide_secrets() -> None:
    line = agent_logging.JsonFormatter().format(_record(event_id="e-1", trace_id="t-1"))
    payload = json.loads(line)
    assert payload["event_id"] == "e-1" and payload["trace_id"] == "t-1"
    assert payload["level"] == "warning" and "tk-abcdefgh123456" not in line
    text = agent_logging.RedactingFormatter("%(message)s").format(_record(event_id="e-2"))
    assert text.endswith("event_id=e-2") and "abcdefgh123456" not in text


def test_configure_switches_format_and_survives_bad_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    agent_logging.configure("not-a-level", "json")
    assert agent_logging._handler is not None
    monkeypatch.setattr(agent_logging._handler, "stream", stream)
    logging.getLogger("cmdrdata_autotrack.test").warning(
        "hello %s", "Authorization: Bearer tk-secret-value-1"
    )
    agent_logging.configure("warning", "text")
    payload = json.loads(stream.getvalue())
    assert payload["message"].startswith("hello") and "tk-secret-value-1" not in stream.getvalue()


def test_when_imported_runs_after_the_module_executes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "late_module_xyz.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    when_imported("late_module_xyz", lambda m: seen.append(m.VALUE))
    assert seen == []
    import late_module_xyz  # noqa: F401

    assert seen == [42]
    already = types.ModuleType("already_there_xyz")
    monkeypatch.setitem(sys.modules, "already_there_xyz", already)
    when_imported("already_there_xyz", lambda m: seen.append(0))
    assert seen == [42, 0]


def test_breaker_cycle_with_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, max_cooldown=30, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow() and breaker.wait_time() == 10
    now[0] = 10
    assert breaker.allow() and breaker.state == "half-open"
    breaker.failure()  # the probe failed: open again, cooldown doubled
    assert breaker.state == "open" and breaker.cooldown == 20
    now[0] = 40
    assert breaker.allow()
    breaker.failure()
    assert breaker.cooldown == 30  # capped
    now[0] = 80
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.cooldown == 10


def test_backoff_and_retry_after() -> None:
    assert backoff_delay(0, 0.5, 60, rand=lambda: 1.0) == 0.5
    assert backoff_delay(10, 0.5, 60, rand=lambda: 1.0) == 60
    assert backoff_delay(3, 0.5, 60, rand=lambda: 0.0) == 0
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("-4") == 0.0
