"""``cmdrdata-autotrack doctor``, ``dead-letters`` and the command's wiring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmdrdata_autotrack.cli import main as cli
from cmdrdata_autotrack.export.spool import Spool

from ingest_server import IngestServer

KEY = "tk-cli-test-0123456789"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CMDRDATA_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CMDRDATA_LEDGER_PATH", str(tmp_path / "ledger.sqlite3"))
    monkeypatch.delenv("CMDRDATA_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY) as server:
        yield server


def test_doctor_on_a_fresh_machine_is_happy(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["doctor", "--no-network"]) == 0
    out = capsys.readouterr().out
    assert "local ledger at" in out and "All good." in out
    assert "CMDRDATA_SPOOL_DIR" in out  # the configuration is shown


def test_doctor_masks_the_key_and_checks_the_endpoint(
    state: Path,
    ingest: IngestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CMDRDATA_API_KEY", KEY)
    monkeypatch.setenv("CMDRDATA_ENDPOINT", ingest.url)
    assert cli.main(["doctor", "--json"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text)
    assert KEY not in text
    assert report["configuration"]["CMDRDATA_API_KEY"] == "tk-c…"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["endpoint reachable"]["status"] == "ok"
    assert checks["tracker key"]["status"] == "ok"


def test_doctor_fails_on_unreachable_insecure_or_dead_letters(
    state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMDRDATA_API_KEY", KEY)
    monkeypatch.setenv("CMDRDATA_ENDPOINT", "http://127.0.0.1:9/api/events")  # nothing listens
    assert cli.main(["doctor"]) == 1
    assert "[fail] endpoint reachable" in capsys.readouterr().out

    monkeypatch.setenv("CMDRDATA_ENDPOINT", "http://api.cmdrdata.ai/api/events")
    assert cli.main(["doctor", "--no-network"]) == 1
    assert "must use https" in capsys.readouterr().out

    monkeypatch.setenv("CMDRDATA_ENDPOINT", "https://api.cmdrdata.ai/api/events")
    spool = Spool(state / "spool" / "spool.sqlite3")
    spool.put([("e1", "{}", None)], 10**6, "drop-newest")
    spool.dead_letter("e1", "HTTP 400: bad", 400)
    spool.close()
    assert cli.main(["doctor", "--no-network"]) == 1
    out = capsys.readouterr().out
    assert "[fail] dead letters: 1 event(s)" in out


def test_dead_letters_list_and_resend(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead-letters"]) == 0
    assert "No spool yet" in capsys.readouterr().out
    spool = Spool(state / "spool" / "spool.sqlite3")
    spool.put([("e1", '{"event_id":"e1"}', None), ("e2", "{}", None)], 10**6, "drop-newest")
    spool.dead_letter("e1", "HTTP 422: unknown model", 422)
    assert cli.main(["dead-letters"]) == 0
    assert "e1" in capsys.readouterr().out and "HTTP 422" in spool.dead_letters()[0]["reason"]
    assert cli.main(["dead-letters", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == 422
    assert cli.main(["dead-letters", "--resend"]) == 0
    assert "1 event(s) queued again" in capsys.readouterr().out
    assert spool.stats().depth == 2 and spool.stats().dead_letters == 0


def test_flush_without_a_key_records_in_the_ledger(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["flush"]) == 0
    assert "Recorded 0 event(s) in the ledger" in capsys.readouterr().out


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("cmdrdata-autotrack ")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("report", "doctor", "flush", "dead-letters"):
        assert command in out
