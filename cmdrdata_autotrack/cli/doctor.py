"""``cmdrdata-autotrack doctor``: is the agent set up to meter and deliver? Non-zero when not."""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import Settings
from ..export import fleet_ledger, metered_store, pending
from ..export import identity as identities
from ..export.client import endpoints_problem, key_problem
from ..export.spool import Spool
from ..export.sqlite import DamagedDatabase, is_damage
from ..paths import locations
from ..telemetry.logging import redact

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str
    detail: str


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check configuration, endpoint, spool, dead letters and circuit breaker",
        description="Check the agent's set-up. Exit code 0: all good; 1: something is wrong.",
    )
    parser.add_argument("--json", action="store_true", help="write the report as JSON")
    parser.add_argument(
        "--no-network", action="store_true", help="skip the endpoint reachability check"
    )
    parser.set_defaults(func=run)


def _sdk() -> Check:
    try:
        from importlib.metadata import version

        installed = version("openai")
    except Exception:
        return Check("openai SDK", WARN, "not installed")
    from ..instrumentation.openai.endpoints import SUPPORTED_MAX_EXCLUSIVE, SUPPORTED_MIN
    from ..instrumentation.openai.instrumentor import parse_version

    supported = SUPPORTED_MIN <= parse_version(installed) < SUPPORTED_MAX_EXCLUSIVE
    return Check(
        "openai SDK",
        OK if supported else FAIL,
        f"{installed} ({'supported' if supported else 'outside the supported range'})",
    )


def _reachable(endpoint: str, timeout: float) -> Check:
    import requests

    started = time.monotonic()
    try:
        response = requests.get(endpoint, timeout=(3.05, timeout))
    except requests.RequestException as exc:
        return Check("endpoint reachable", FAIL, f"{endpoint}: {type(exc).__name__}")
    elapsed = (time.monotonic() - started) * 1000
    status = FAIL if response.status_code >= 500 else OK
    return Check("endpoint reachable", status, f"HTTP {response.status_code} in {elapsed:.0f} ms")


def checks(settings: Settings, network: bool) -> list[Check]:
    found = [_sdk()]
    if settings.disabled:
        found.append(Check("metering", WARN, "disabled (CMDRDATA_DISABLED)"))
    where = locations(settings.spool_dir, settings.ledger_path)
    if not settings.api_key:
        found.append(
            Check("mode", OK, f"local ledger at {where.ledger_path} (no CMDRDATA_API_KEY)")
        )
    else:
        problem = endpoints_problem(settings.endpoint, settings.batch_endpoint)
        found.append(Check("endpoint", FAIL if problem else OK, problem or settings.endpoint))
        bad_key = key_problem(settings.api_key)
        found.append(Check("tracker key", WARN if bad_key else OK, bad_key or "format looks right"))
        fingerprint = identities.of(
            settings.api_key, settings.endpoint, settings.batch_endpoint, str(where.ledger_path)
        ).fingerprint
        found.append(
            Check(
                "identity",
                OK,
                f"{fingerprint} (a fingerprint of the key and endpoints; this process "
                "delivers only the events metered with the same)",
            )
        )
        if network and not problem:
            found.append(_reachable(settings.endpoint, settings.timeout))
    for note in where.notes:
        found.append(Check("folders", WARN, note))
    journal = where.journal_dir
    waiting = len(list(journal.glob("*.jsonl"))) if journal.exists() else 0
    found.append(Check("journal", OK, f"{waiting} segment(s) waiting to be imported in {journal}"))
    if where.spool_path.exists():
        own = identities.of(
            settings.api_key, settings.endpoint, settings.batch_endpoint, str(where.ledger_path)
        )
        try:
            found.extend(_spool_checks(where.spool_path, own))
        except (DamagedDatabase, sqlite3.DatabaseError) as exc:
            if not is_damage(exc):
                raise
            damage = exc if isinstance(exc, DamagedDatabase) else None
            damage = damage or DamagedDatabase(where.spool_path, str(exc))  # found mid-way
            found.append(Check("spool", FAIL, f"{damage}: {damage.advice}"))
    else:
        found.append(Check("spool", OK, f"empty (none yet at {where.spool_path})"))
    if settings.api_key and not fleet_ledger.configured(settings)[0]:
        found.append(_metered_check(where.spool_dir, where.spool_path, settings))
    waiting_work = pending.summary(where.journal_dir.parent)
    if waiting_work is not None:
        found.append(Check("deferred work", WARN if waiting_work[0] else OK, waiting_work[1]))
    return found


def _spool_checks(path: Path, own: identities.Identity) -> list[Check]:
    spool = Spool(path)
    try:
        everything, state = spool.stats(), spool.state()
        stats = spool.stats(own.serves()) if own.keyed else everything
        waiting = spool.waiting_by_identity()
    finally:
        spool.close()
    found: list[Check] = []
    age = f", oldest {stats.oldest_age_s:.0f} s old" if stats.oldest_age_s is not None else ""
    backlog = stats.depth and (not own.keyed or (stats.oldest_age_s or 0) > 3600)
    whose = " for this key and endpoint" if own.keyed else ""
    found.append(
        Check(
            "spool",
            WARN if backlog else OK,
            f"{stats.depth} event(s) waiting{whose} ({everything.bytes} bytes in all), "
            f"{stats.due} due{age}",
        )
    )
    others = {fp: n for fp, (n, _) in waiting.items() if fp not in own.serves()}
    if others and own.keyed:  # keyless: the spool line above already counts them all
        stale = any(age_s > 3600 for fp, (_, age_s) in waiting.items() if fp in others)
        found.append(
            Check(
                "other identities",
                WARN if stale else OK,
                f"{sum(others.values())} event(s) wait for another key or endpoint "
                f"({identities.describe_counts(others)}); only a process with those "
                "settings delivers them",
            )
        )
    elif others:
        found.append(
            Check(
                "other identities",
                WARN,
                f"the spool's events wait for a process with a key "
                f"({identities.describe_counts(others)}); this one has none",
            )
        )
    found.append(
        Check(
            "dead letters",
            FAIL if everything.dead_letters else OK,
            f"{everything.dead_letters} event(s) refused by the API"
            + (" (see: cmdrdata-autotrack dead-letters)" if everything.dead_letters else ""),
        )
    )
    breaker = str(state.get("breaker", "closed"))
    seen = state.get("at")
    when = (
        f", reported {time.time() - float(seen):.0f} s ago" if isinstance(seen, int | float) else ""
    )
    found.append(Check("circuit breaker", OK if breaker == "closed" else WARN, breaker + when))
    return found


def _metered_check(spool_dir: Path, spool_path: Path, settings: Settings) -> Check:
    """The metered record: what report and reconcile read of the delivered usage."""
    path = metered_store.metered_path(spool_dir)
    retention = fleet_ledger.configured(settings)[1]
    gap = _metered_gap(spool_path)
    if gap is not None and gap.at < time.time() - retention * 86400:
        gap = None  # long ago: what it missed is past the retention
    missed = (
        f"; {gap.events} delivered event(s) could not be recorded in it ({gap.reason}): "
        "report and reconcile undercount them"
        if gap is not None
        else ""
    )
    if path.exists() and not path.is_file():
        return Check("metered record", WARN, f"{path} is not a file{missed}")
    if not path.is_file():
        detail = f"none yet at {path} (written as usage is delivered)"
        return Check("metered record", WARN if gap else OK, detail + missed)
    store = metered_store.MeteredStore(path, retention_days=retention, read_only=True)
    try:
        extent = store.extent()
    except sqlite3.Error as exc:
        aside = path.with_name(path.name + ".damaged")
        return Check(
            "metered record",
            WARN,
            f"{path} cannot be read ({exc}); delivery is not affected, but report and "
            f"reconcile cannot use it: move it aside (mv {path} {aside}){missed}",
        )
    finally:
        store.close()
    held = "no usage yet"
    if extent is not None:
        held = "usage per hour since " + time.strftime("%Y-%m-%d %H:00 UTC", time.gmtime(extent[0]))
    detail = f"{path}: {held}, kept {retention:g} days"
    return Check("metered record", WARN if gap else OK, detail + missed)


def _metered_gap(spool_path: Path) -> metered_store.Gap | None:
    """What the spool's state says the metered record missed (a write failed)."""
    if not spool_path.is_file():
        return None
    try:
        spool = Spool(spool_path)
        try:
            return metered_store.gap_in(spool.state())
        finally:
            spool.close()
    except (DamagedDatabase, sqlite3.Error):
        return None  # the spool check says so


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    found = checks(settings, network=not args.no_network)
    config = {k: (None if v is None else redact(str(v))) for k, v in settings.masked().items()}
    failed = any(c.status == FAIL for c in found)
    if args.json:
        print(
            json.dumps(
                {
                    "version": __version__,
                    "python": platform.python_version(),
                    "ok": not failed,
                    "configuration": config,
                    "checks": [asdict(c) for c in found],
                },
                indent=2,
            )
        )
        return 1 if failed else 0
    print(f"cmdrdata-autotrack {__version__} on Python {platform.python_version()}")
    print("\nConfiguration (secrets masked):")
    width = max(len(k) for k in config)
    for key, value in config.items():
        print(f"  {key:<{width}}  {value if value is not None else '-'}")
    print("\nChecks:")
    for check in found:
        print(f"  [{check.status:>4}] {check.name}: {check.detail}")
    print("\n" + ("Something is wrong: see the [fail] lines." if failed else "All good."))
    sys.stdout.flush()
    return 1 if failed else 0
