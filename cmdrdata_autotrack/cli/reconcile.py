"""``cmdrdata-autotrack reconcile``: did we meter everything OpenAI billed us for?

Reads OpenAI's organization Usage and Costs APIs with an admin key and sets
them against the usage the agent metered, per time bucket and model. See
docs/reconciliation.md for the method and its limits.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import Settings
from ..export import fleet_ledger, metered_store
from ..export.spool import Spool
from ..paths import ledger_path, locations
from ..pricing import load_prices
from ..reconcile import metered, scope
from ..reconcile.buckets import WIDTHS, Window
from ..reconcile.compare import Coverage, compare
from ..reconcile.fleet_source import FleetSource, SummedSource
from ..reconcile.metered import CallReader, LedgerSource, MeteredCall
from ..reconcile.metered_source import MeteredRecordSource
from ..reconcile.model import DIMENSION_ALIASES, ENDPOINTS, UNITS, UsageRecord
from ..reconcile.render import Context, render_json, render_table, write_csv
from ..reconcile.usage_api import (
    ADMIN_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    AdminAPI,
    AdminAPIError,
    base_url_problem,
)
from .report import PRICES_ENV, parse_time

EXIT_BELOW = 1  # coverage under --fail-below
EXIT_ERROR = 2
CHECKABLE = (*UNITS, "cost")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NOT_BY_KEY = ("code_interpreter_sessions", "vector_stores")  # they take no api_key_ids filter

DESCRIPTION = """\
Compare the usage the agent metered with what OpenAI's organization Usage and
Costs APIs say was billed, per time bucket and model: requests, input, cached,
output and audio tokens, images, speech characters, transcribed seconds, code
interpreter sessions, and cost. Needs an organization admin key in
$OPENAI_ADMIN_KEY (never printed)."""
EPILOG = """\
times (--since, --until):
  ISO dates or date-times (UTC unless an offset is given), a time ago (30m, 24h, 7d)
  or "now". The range is widened to whole UTC buckets, as OpenAI aligns them. The
  bucket still being filled (and any that ended less than --settle ago) is shown
  as incomplete and never counted as a gap.

coverage:
  metered / billed, per unit, over the complete buckets (cost: over whole UTC days,
  the Costs API's only bucket). The unmetered cost prices, at list prices, what
  OpenAI billed beyond what was metered in each bucket and model.

scope:
  OpenAI reports the whole organization. When every metered call records the last
  four characters of the OpenAI key it used, reconcile asks about those keys only;
  else about the calls' project; else the whole organization (and says so).
  --api-key-id / --project set the scope, --all-keys turns it off.

exit status:
  0 compared (and coverage at least --fail-below), 1 coverage below --fail-below,
  2 could not compare (no admin key, API or ledger error, bad option).

examples:
  OPENAI_ADMIN_KEY=... cmdrdata-autotrack reconcile --since 7d
  cmdrdata-autotrack reconcile --since 2d --bucket 1h --by project --json
  cmdrdata-autotrack reconcile --since 1d --settle 1h --fail-below 99.5
"""


def parse_duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        if text.strip() == "0":
            return 0.0
        raise ValueError(f"{text!r} is not a duration (30s, 15m, 1h, 1d)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


def _dimensions(text: str) -> list[str]:
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part or part == "model":
            continue
        if part not in DIMENSION_ALIASES:
            raise argparse.ArgumentTypeError(
                f"cannot group by {part!r} (choose from project, api_key, batch, service_tier)"
            )
        out.append(DIMENSION_ALIASES[part])
    return out


def _units(text: str) -> list[str]:
    units = [u.strip() for u in text.split(",") if u.strip()]
    unknown = [u for u in units if u not in CHECKABLE]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown unit(s) {', '.join(unknown)} (choose from {', '.join(CHECKABLE)})"
        )
    return units


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``reconcile`` (its handler is :func:`run`)."""
    p = subparsers.add_parser(
        "reconcile",
        help="compare metered usage with OpenAI's own usage and cost data",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", metavar="T", default="7d", help="from time T (default: 7d)")
    p.add_argument("--until", metavar="T", default="now", help="up to time T (default: now)")
    p.add_argument(
        "--bucket", choices=tuple(WIDTHS), default="1d", help="bucket width (default: 1d)"
    )
    p.add_argument(
        "--settle",
        metavar="DURATION",
        type=_duration_arg,
        default=0.0,
        help="treat buckets that ended less than this long ago as incomplete, as OpenAI's "
        "usage data lags (e.g. 1h; default: 0)",
    )
    p.add_argument(
        "--by",
        metavar="DIMS",
        type=_dimensions,
        default=[],
        help="also group by these, comma-separated: project, api_key, batch, service_tier",
    )
    p.add_argument("--project", metavar="ID", action="append", default=[], help="only project ID")
    p.add_argument(
        "--api-key-id", metavar="ID", action="append", default=[], help="only API key ID (key_...)"
    )
    p.add_argument(
        "--all-keys", action="store_true", help="compare with the whole organization's usage"
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the OpenAI API (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    p.add_argument("--no-costs", action="store_true", help="do not read the Costs API")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="write JSON")
    fmt.add_argument("--csv", action="store_true", help="write CSV, one line per row")
    p.add_argument(
        "--fail-below",
        metavar="PCT",
        type=_percent_arg,
        help="exit 1 when the coverage of a unit is below PCT percent",
    )
    p.add_argument(
        "--fail-on",
        metavar="UNITS",
        type=_units,
        help="the units --fail-below checks, comma-separated (default: every unit OpenAI "
        f"billed; units: {', '.join(CHECKABLE)})",
    )
    p.add_argument("--top", metavar="N", type=int, default=10, help="differing buckets shown")
    p.add_argument("--ledger", metavar="PATH", help="the ledger file (as for report)")
    p.add_argument(
        "--prices", metavar="FILE", help=f"prices merged over the shipped ones (${PRICES_ENV})"
    )
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"cmdrdata-autotrack reconcile: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _read_calls(
    source: LedgerSource | SummedSource, reader: CallReader, days: Window
) -> Iterator[MeteredCall]:
    if isinstance(source, SummedSource):  # summed per bucket already
        yield from source.calls(reader, days.start, days.end)
        return
    for event in source.events(days.start, days.end):
        call = reader.read(event)
        if call is not None:
            yield call


def _gap_notes(spool_path: Path, window: Window) -> list[str]:
    """What the spool's state says the metered record missed in ``window`` (a write failed)."""
    if not spool_path.is_file():
        return []
    try:
        spool = Spool(spool_path)
        try:
            gap = metered_store.gap_in(spool.state())
        finally:
            spool.close()
    except Exception:  # a damaged spool is doctor's to report: the comparison stands
        return []
    if gap is None or not gap.overlaps(window.start, window.end):
        return []
    return [
        f"{gap.events:,} metered event(s) between {_utc(gap.first)} and {_utc(gap.last)} are "
        f"missing from the metered record ({gap.reason}); they were delivered to cmdrdata, "
        "but the coverage here leaves them out."
    ]


def _utc(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def run(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since, until = parse_time(args.since, now), parse_time(args.until, now)
        window = Window.around(since, until, args.bucket, now=now, settle=args.settle)
    except ValueError as exc:
        return _error(str(exc))

    admin_key = os.environ.get(ADMIN_KEY_ENV, "")
    if not admin_key.strip():
        return _error(
            f"{ADMIN_KEY_ENV} is not set: reconcile reads OpenAI's organization usage with an "
            "admin key (platform.openai.com, Organization settings, Admin keys); it is never "
            "printed or logged"
        )
    base_url = args.base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    problem = base_url_problem(base_url)
    if problem:
        return _error(f"{problem}; the admin key is not sent")

    settings = Settings.from_env()
    prices_file = args.prices or os.environ.get(PRICES_ENV, "").strip() or None
    try:
        prices = load_prices(prices_file)
    except (OSError, ValueError) as exc:
        return _error(f"cannot use the prices file: {exc}")

    fleet_url, retention = fleet_ledger.configured(settings)
    where = locations(settings.spool_dir, settings.ledger_path)
    record = metered_store.metered_path(where.spool_dir)
    source: LedgerSource | SummedSource
    if fleet_url and not args.ledger:  # every process's usage, keyed or not
        store = fleet_ledger.FleetStore(fleet_url, retention_days=retention)
        source = FleetSource(store, resolution=window.width)
    elif settings.api_key and not args.ledger and record.is_file():  # delivered usage
        kept = metered_store.MeteredStore(record, retention_days=retention, read_only=True)
        source = MeteredRecordSource(kept, resolution=window.width)
    else:
        source = LedgerSource(ledger_path(args.ledger or settings.ledger_path))
    notes: list[str] = []
    try:
        calls = metered.aggregate(
            _read_calls(source, CallReader(prices), window.days()), window.width
        )
    except (sqlite3.Error, OSError) as exc:  # a locked or damaged file, not a database
        return _error(f"cannot read {source.describe()}: {exc}")
    except fleet_ledger.FleetUnavailable as exc:
        return _error(f"cannot read the fleet ledger ({exc})")
    finally:
        if isinstance(source, SummedSource):
            source.store.close()
    calls_count = sum(int(c.units.requests) for c in calls)
    if not calls:
        notes.append(f"No metered usage in this range ({source.describe()}).")
    if source.unreadable:
        notes.append(f"{source.unreadable:,} ledger row(s) could not be read and were skipped.")
    if settings.api_key and isinstance(source, LedgerSource):
        if args.ledger:
            why = f"with --ledger, the metered record {record} is not read"
        else:
            why = (
                f"the metered record {record}, where the agent keeps the usage it delivers, "
                "does not exist yet"
            )
        if not calls:
            return _error(
                "CMDRDATA_API_KEY is set, so usage is delivered to cmdrdata and the local ledger "
                f"({source.path}) holds none for this range; {why}"
            )
        notes.append(
            f"CMDRDATA_API_KEY is set: only the usage in the local ledger was compared ({why})."
        )
    if isinstance(source, MeteredRecordSource):
        notes += _gap_notes(where.spool_path, window)

    group_by = list(dict.fromkeys(args.by))
    try:
        with AdminAPI(base_url, admin_key) as api:
            decided = scope.decide(
                calls,
                api_key_ids=args.api_key_id,
                project_ids=args.project,
                all_keys=args.all_keys,
                list_keys=api.project_keys,
                need_key_names="api_key_id" in group_by,
            )
            notes = decided.notes + notes
            admitted = [c for c in calls if decided.admits(c)]
            left_out = calls_count - sum(int(c.units.requests) for c in admitted)
            if left_out:
                notes.append(f"{left_out:,} metered call(s) used other keys or projects: left out.")
            usage: list[UsageRecord] = []
            for endpoint in ENDPOINTS:
                if decided.api_key_ids and endpoint.name in NOT_BY_KEY:
                    notes.append(f"OpenAI cannot scope {endpoint.name} to API keys: not compared.")
                    continue
                usage += api.usage(
                    endpoint,
                    window,
                    group_by=["model", *group_by],
                    project_ids=decided.project_ids,
                    api_key_ids=decided.api_key_ids,
                )
            costs = None
            if not args.no_costs:
                cost_groups = ["line_item", *(["project_id"] if "project_id" in group_by else [])]
                try:
                    costs = api.costs(
                        window.days(),
                        group_by=cost_groups,
                        project_ids=decided.project_ids,
                        api_key_ids=decided.api_key_ids,
                    )
                except AdminAPIError as exc:
                    notes.append(f"Costs not compared: {exc}")
    except AdminAPIError as exc:
        return _error(str(exc))

    result = compare(
        admitted,
        usage,
        costs,
        window=window,
        group_by=group_by,
        prices=prices,
        key_ids=decided.key_ids,
    )
    if result.other_calls:
        notes.append(
            f"{result.other_calls:,} metered call(s) are of an operation no OpenAI usage "
            "endpoint is known to report (endpoint 'other')."
        )
    if "project_id" in group_by and any(c.project_id is None for c in admitted):
        notes.append(
            "Metered calls that do not record their project are grouped under project '-'."
        )
    if "api_key_id" in group_by and any(c.key_suffix is None for c in admitted):
        notes.append("Metered calls that do not record their key are grouped under key '-'.")
    if result.costs_compared and result.currency.upper() != prices.currency.upper():
        notes.append(
            f"OpenAI's costs are in {result.currency.upper()}, the price table in "
            f"{prices.currency}: the cost coverage compares different currencies."
        )

    failed = _below(result.coverage(), args.fail_below, args.fail_on)
    ctx = Context(
        base_url=base_url,
        metered_source=source.describe(),
        scope=decided.description,
        api_key_ids=decided.api_key_ids,
        project_ids=decided.project_ids,
        prices_version=prices.version,
        price_currency=prices.currency,
        fail_below=args.fail_below,
        failed=failed,
        metered_calls=sum(
            int(c.units.requests) for c in admitted if window.bucket_of(c.timestamp) is not None
        ),
        notes=notes,
        top=max(args.top, 0),
    )
    if args.json:
        sys.stdout.write(render_json(result, ctx))
    elif args.csv:
        write_csv(result, sys.stdout)
    else:
        sys.stdout.write(render_table(result, ctx))
    if failed:
        shown = ", ".join(f"{c.unit} {c.percent:.2f}%" for c in failed if c.percent is not None)
        print(
            f"cmdrdata-autotrack reconcile: coverage below {args.fail_below:g}%: {shown}",
            file=sys.stderr,
        )
        return EXIT_BELOW
    return 0


def _below(
    coverage: Sequence[Coverage], threshold: float | None, units: Sequence[str] | None
) -> list[Coverage]:
    """The units whose coverage is under ``threshold`` (only units OpenAI billed)."""
    if threshold is None:
        return []
    wanted = set(units) if units else None
    return [
        c
        for c in coverage
        if (wanted is None or c.unit in wanted) and c.percent is not None and c.percent < threshold
    ]
