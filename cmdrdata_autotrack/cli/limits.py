"""``cmdrdata-autotrack limits``: each customer's usage against its limits, now.

Reads the limits file and the shared counters (this machine's SQLite file, or
Redis when ``CMDRDATA_LIMITS_REDIS_URL`` is set), as the running apps see them
at their last sync. Customers appear once they have made a call in a current
window, or when the file names them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import unquote

from ..config import Settings
from ..limits import engine as E
from ..limits import setup
from ..limits.rules import NANO_USD, Limit, LimitsError, Rules, load_file
from ..limits.windows import Clock


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "limits",
        help="show each customer's usage against its limits",
        description="Each customer's usage in the current minute, day and month against "
        "the limits of the limits file ($CMDRDATA_LIMITS_FILE), read from the counters "
        "the app's processes share (SQLite in the spool folder, or "
        "$CMDRDATA_LIMITS_REDIS_URL).",
    )
    parser.add_argument("--file", metavar="PATH", help="the limits file (default: the variable)")
    parser.add_argument("--customer", metavar="ID", help="only this customer")
    parser.add_argument("--json", action="store_true", help="write JSON")
    parser.set_defaults(func=run)


def _plans(counters: dict[str, int], month_id: str) -> dict[str, str]:
    """Each customer's plan this month: the one most of its calls named."""
    seen: dict[str, tuple[int, str]] = {}
    for key, count in counters.items():
        parsed = E.parse_key(key)
        if parsed is None or not parsed[1].startswith(E.PLAN_METRIC) or parsed[2] != month_id:
            continue
        customer, metric, _ = parsed
        plan = unquote(metric[len(E.PLAN_METRIC) :])
        if count > seen.get(customer, (0, ""))[0]:
            seen[customer] = (count, plan)
    return {customer: plan for customer, (_, plan) in seen.items()}


def rows(rules: Rules, counters: dict[str, int], now: float) -> list[dict[str, Any]]:
    """One row per customer and limit: what is used in the current window."""
    clock = Clock()
    month_id = clock.window("month", now)[0]
    plans = _plans(counters, month_id)
    customers = set(rules.customers)
    for key in counters:
        parsed = E.parse_key(key)
        if parsed is not None:
            customers.add(parsed[0])
    out: list[dict[str, Any]] = []
    for customer in sorted(customers):
        plan = plans.get(customer)
        limits: tuple[Limit, ...] = rules.for_customer(customer, plan)
        for limit in limits:
            window_id, resets = clock.window(limit.window, now)
            used = counters.get(E.counter_key(customer, limit.metric, window_id), 0)
            out.append(
                {
                    "customer_id": customer,
                    "plan": plan,
                    "limit": limit.name,
                    "used": used / NANO_USD if limit.metric == "cost" else used,
                    "value": limit.value / NANO_USD if limit.metric == "cost" else limit.value,
                    "percent": round(100 * used / limit.value, 1) if limit.value else None,
                    "exceeded": used >= limit.value,
                    "action": limit.action,
                    "from": limit.scope,
                    "resets_at": int(resets),
                    "_shown": (limit.amount(used), limit.amount(limit.value)),
                }
            )
    return out


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    path = args.file or getattr(settings, "limits_file", None) or os.environ.get(setup.FILE_ENV)
    if not path:
        print(
            f"No limits file: set {setup.FILE_ENV} or pass --file (see docs/limits.md).",
            file=sys.stderr,
        )
        return 2
    try:
        rules = load_file(os.path.expanduser(path))
    except LimitsError as exc:
        print(f"cmdrdata-autotrack: {exc}", file=sys.stderr)
        return 2
    store = setup.open_store(settings)
    now = time.time()
    try:
        counters = store.scan(now)
    except Exception as exc:
        print(
            f"cmdrdata-autotrack: cannot read the counters in {store.name}: {exc}", file=sys.stderr
        )
        return 1
    finally:
        store.close()
    table = rows(rules, counters, now)
    if args.customer is not None:
        table = [r for r in table if r["customer_id"] == args.customer]
    if args.json:
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in table]
        print(json.dumps({"file": path, "store": store.name, "limits": public}, indent=2))
        return 0
    print(f"Limits from {path}; counters in {store.name}.")
    if not table:
        print("No customer has used anything in the current windows.")
        return 0
    header = ("customer", "plan", "limit", "used", "of", "%", "action", "resets (UTC)", "from")
    lines = [header]
    for r in table:
        used, value = r["_shown"]
        percent = "-" if r["percent"] is None else f"{r['percent']:g}%"
        mark = " over" if r["exceeded"] else ""
        lines.append(
            (
                r["customer_id"],
                r["plan"] or "-",
                r["limit"],
                used,
                value,
                percent + mark,
                r["action"],
                time.strftime("%m-%d %H:%M:%S", time.gmtime(r["resets_at"])),
                r["from"],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0
