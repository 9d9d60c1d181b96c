"""A reconciliation as a table for people, JSON or CSV for machines."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from .compare import Coverage, Reconciliation, Row
from .model import UNIT_LABELS, UNITS

SHOWN_IN_DIFFERENCES = ("requests", "input_tokens", "output_tokens")
MAX_CELL = 36


@dataclass
class Context:
    """What the comparison was made of and decided, besides the numbers."""

    base_url: str
    metered_source: str
    scope: str
    api_key_ids: tuple[str, ...]
    project_ids: tuple[str, ...]
    prices_version: str
    price_currency: str
    fail_below: float | None
    failed: list[Coverage]
    metered_calls: int
    notes: list[str] = field(default_factory=list)
    top: int = 10


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown_time(seconds: float, width: int) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d" if width >= 86400 else "%Y-%m-%d %H:%M")


def amount(value: float, unit: str) -> str:
    if unit == "cost":
        return f"{value:,.4f}"
    if unit == "seconds":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def signed(value: float, unit: str) -> str:
    text = amount(abs(value), unit)
    return ("+" if value > 0 else "-" if value < 0 else "") + text


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _table(header: list[str], body: list[list[str]], left: int) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        cells = [
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(b) for b in body)]


def _dim_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "batch" if value else "not batch"
    return _cut(str(value))


def _shown_units(result: Reconciliation) -> list[Coverage]:
    return [c for c in result.coverage() if c.unit == "requests" or c.metered or c.billed]


def render_table(result: Reconciliation, ctx: Context) -> str:
    w = result.window
    out: list[str] = []
    incomplete = result.incomplete_buckets()
    head = (
        f"Metered vs billed, {shown_time(w.start, 0)} to {shown_time(w.end, 0)} UTC, "
        f"{w.name} buckets ({result.complete_buckets():,} complete"
    )
    if incomplete:
        shown = ", ".join(shown_time(s, w.width) for s in incomplete[:3])
        more = f" and {len(incomplete) - 3} more" if len(incomplete) > 3 else ""
        head += f"; {shown}{more} incomplete, not compared"
    out.append(head + ")")
    estimated = f", {result.estimated_calls:,} estimated" if result.estimated_calls else ""
    out.append(f"Metered: {ctx.metered_source} ({ctx.metered_calls:,} calls{estimated})")
    out.append(f"Billed:  OpenAI at {ctx.base_url}, {ctx.scope}")
    out.append("")

    body = []
    for c in _shown_units(result):
        label = UNIT_LABELS[c.unit] + (f" ({result.currency.upper()})" if c.unit == "cost" else "")
        body.append(
            [
                label,
                amount(c.metered, c.unit),
                amount(c.billed, c.unit),
                signed(c.metered - c.billed, c.unit),
                percent(c.percent),
            ]
        )
    out += _table(["UNIT", "METERED", "BILLED", "DIFFERENCE", "COVERAGE"], body, 1)
    if result.costs_compared:
        out.append(
            "cost: metered is estimated at list prices, billed is OpenAI's costs "
            f"(whole UTC days, {shown_time(result.days.start, 86400)} to "
            f"{shown_time(result.days.end - 1, 86400)})."
        )
    out.append("")
    unmetered = f"Unmetered cost: {result.unmetered_cost():,.4f} {ctx.price_currency}"
    out.append(unmetered + " (what OpenAI billed beyond what was metered, at list prices)")
    if result.unpriced_models:
        out.append(f"  not priced (no list price): {', '.join(result.unpriced_models)}")

    models = [r for r in result.by_model() if not (r.metered.is_zero() and r.billed.is_zero())]
    if models:
        out += ["", "Per model:"]
        body = [
            [
                r.endpoint,
                _cut(r.model or "-"),
                *(
                    f"{amount(r.metered.get(u), u)} / {amount(r.billed.get(u), u)}"
                    for u in SHOWN_IN_DIFFERENCES
                ),
                percent(Coverage("requests", r.metered.requests, r.billed.requests).percent),
                "-" if r.unmetered_cost is None else f"{r.unmetered_cost:,.4f}",
            ]
            for r in models
        ]
        header = ["ENDPOINT", "MODEL", "REQUESTS M / B", "INPUT M / B", "OUTPUT M / B"]
        out += _table([*header, "REQ COVERAGE", "UNMETERED COST"], body, 2)

    differing = result.largest_differences(ctx.top)
    out.append("")
    if differing:
        out.append("Buckets that differ most (M: metered, B: billed):")
        dims = list(result.group_by)
        body = [
            [
                shown_time(r.start, w.width),
                r.endpoint,
                _cut(r.model or "-"),
                *(_dim_text(r.dims.get(d)) for d in dims),
                *(
                    f"{amount(r.metered.get(u), u)} / {amount(r.billed.get(u), u)}"
                    for u in SHOWN_IN_DIFFERENCES
                ),
                "-" if r.unmetered_cost is None else f"{r.unmetered_cost:,.4f}",
            ]
            for r in differing
        ]
        header = ["BUCKET (UTC)", "ENDPOINT", "MODEL", *(d.upper() for d in dims)]
        header += ["REQUESTS M / B", "INPUT M / B", "OUTPUT M / B", "UNMETERED COST"]
        out += _table(header, body, 3 + len(dims))
    else:
        out.append("Every complete bucket agrees.")

    if result.storage_peak_bytes:
        out += [
            "",
            f"Vector store storage: up to {result.storage_peak_bytes:,} bytes "
            "(billed by OpenAI; storage is not metered by the agent).",
        ]
    notes = ctx.notes
    if notes:
        out += ["", "Notes:"]
        out += [f"- {n}" for n in notes]
    if ctx.fail_below is not None:
        out.append("")
        if ctx.failed:
            failed = ", ".join(f"{UNIT_LABELS[c.unit]} {percent(c.percent)}" for c in ctx.failed)
            out.append(f"FAIL: coverage below {ctx.fail_below:g}%: {failed}.")
        else:
            out.append(f"OK: coverage of every unit checked is at least {ctx.fail_below:g}%.")
    return "\n".join(out) + "\n"


def _row_dict(row: Row, group_by: Sequence[str]) -> dict[str, Any]:
    out = row.to_dict(group_by)
    out = {"start": iso(row.start), "end": iso(row.end), **out}
    return out


def document(result: Reconciliation, ctx: Context) -> dict[str, Any]:
    w = result.window
    unpriced = list(result.unpriced_models)
    return {
        "since": iso(w.start),
        "until": iso(w.end),
        "bucket": w.name,
        "settle_seconds": w.settle,
        "generated_at": iso(w.now),
        "base_url": ctx.base_url,
        "metered_source": ctx.metered_source,
        "metered_calls": ctx.metered_calls,
        "estimated_calls": result.estimated_calls,
        "scope": {
            "description": ctx.scope,
            "api_key_ids": list(ctx.api_key_ids),
            "project_ids": list(ctx.project_ids),
        },
        "group_by": ["model", *result.group_by],
        "complete_buckets": result.complete_buckets(),
        "incomplete_buckets": [iso(s) for s in result.incomplete_buckets()],
        "coverage": {c.unit: c.to_dict() for c in result.coverage()},
        "costs_compared": result.costs_compared,
        "cost_days": {"since": iso(result.days.start), "until": iso(result.days.end)},
        "currency": result.currency.upper(),
        "unmetered_cost": {
            "value": round(result.unmetered_cost(), 8),
            "currency": ctx.price_currency,
            "estimated": True,
            "unpriced": unpriced,
        },
        "prices_version": ctx.prices_version,
        "vector_store_peak_bytes": result.storage_peak_bytes,
        "by_model": [_row_dict(r, ()) for r in result.by_model()],
        "largest_differences": [
            _row_dict(r, result.group_by) for r in result.largest_differences(ctx.top)
        ],
        "rows": [_row_dict(r, result.group_by) for r in result.rows],
        "cost_rows": [
            {"start": iso(c.start), "end": iso(c.end), **c.to_dict()} for c in result.cost_rows
        ],
        "notes": list(ctx.notes),
        "fail_below": ctx.fail_below,
        "failed_units": [c.unit for c in ctx.failed],
        "passed": not ctx.failed,
    }


def render_json(result: Reconciliation, ctx: Context) -> str:
    return json.dumps(document(result, ctx), indent=2, ensure_ascii=False) + "\n"


def write_csv(result: Reconciliation, out: TextIO) -> None:
    """One line per usage row and per cost row (``endpoint`` ``costs``)."""
    dims = list(result.group_by)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "start",
            "end",
            "complete",
            "endpoint",
            "model",
            *dims,
            *(f"{side}_{u}" for u in UNITS for side in ("metered", "billed")),
            "metered_cost",
            "billed_cost",
            "unmetered_cost",
        ]
    )

    def money(value: float | None) -> str:
        return "" if value is None else f"{value:.8f}".rstrip("0").rstrip(".")

    def num(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")

    for r in result.rows:
        writer.writerow(
            [
                iso(r.start),
                iso(r.end),
                str(r.complete).lower(),
                r.endpoint,
                r.model or "",
                *(
                    ""
                    if r.dims.get(d) is None
                    else str(r.dims.get(d)).lower()
                    if isinstance(r.dims.get(d), bool)
                    else r.dims.get(d)
                    for d in dims
                ),
                *(num(getattr(side, u)) for u in UNITS for side in (r.metered, r.billed)),
                money(r.metered_cost),
                "",
                money(r.unmetered_cost),
            ]
        )
    for c in result.cost_rows:
        writer.writerow(
            [
                iso(c.start),
                iso(c.end),
                str(c.complete).lower(),
                "costs",
                c.model or "",
                *((c.project_id or "") if d == "project_id" else "" for d in dims),
                *("" for _ in UNITS for _side in (0, 1)),
                money(c.metered),
                money(c.billed),
                "",
            ]
        )
