"""The limits themselves: how much each customer may use, read from TOML or given from code.

A limits file has a ``[default]`` table, ``[plans.NAME]`` tables (the ``plan=``
metadata of ``customer_context`` / ``tracking_metadata``) and
``[customers."ID"]`` tables. Each names some limits and may name an ``action``.
A customer's limits are resolved limit by limit: its own table wins over its
plan's, which wins over the default. Each limit acts as the table it comes from
says, and a table that names no action takes the next broader table's (the
plan's, then the default's, then ``warn``).

Everything here is pure: parsing never touches the counters, and an invalid file
is a :class:`LimitsError` naming the file, the line and the key.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .windows import Window

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has tomli (a dependency there)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

Metric = Literal["requests", "tokens", "input_tokens", "output_tokens", "cost"]
Action = Literal["warn", "block"]
ACTIONS: tuple[Action, ...] = ("warn", "block")
NANO_USD = 1_000_000_000  # cost is counted in billionths of a dollar: exact integer sums

# Every limit a table may set: (what it counts, the window it counts in).
LIMIT_KEYS: dict[str, tuple[Metric, Window]] = {
    "requests_per_minute": ("requests", "minute"),
    "tokens_per_minute": ("tokens", "minute"),
    "tokens_per_day": ("tokens", "day"),
    "tokens_per_month": ("tokens", "month"),
    "input_tokens_per_minute": ("input_tokens", "minute"),
    "input_tokens_per_day": ("input_tokens", "day"),
    "input_tokens_per_month": ("input_tokens", "month"),
    "output_tokens_per_minute": ("output_tokens", "minute"),
    "output_tokens_per_day": ("output_tokens", "day"),
    "output_tokens_per_month": ("output_tokens", "month"),
    "cost_per_month_usd": ("cost", "month"),
}
TABLE_KEYS = (*LIMIT_KEYS, "action")
TOP_LEVEL = ("default", "plans", "customers")
MAX_COUNT = 10**15
MAX_COST_USD = 10**9
MAX_CUSTOMER_ID = 256
_UNITS = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}


class LimitsError(ValueError):
    """An invalid limits file or mapping: one line naming where and what."""

    def __init__(self, source: str, line: int | None, key: str | None, problem: str) -> None:
        where = source + (f", line {line}" if line else "") + (f", key {key}" if key else "")
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Limit:
    """One resolved limit of one customer."""

    name: str  # a key of LIMIT_KEYS, e.g. "tokens_per_minute"
    metric: Metric
    window: Window
    value: int  # in counter units: requests, tokens, or billionths of a dollar
    action: Action
    scope: str  # the table it comes from: default, plans.pro, customers."acme"

    def amount(self, used: int) -> str:
        """``used`` in this limit's unit, for people: ``1,200 tokens``, ``$4.20``."""
        if self.metric == "cost":
            dollars = used / NANO_USD
            return f"${dollars:,.2f}" if dollars >= 1 or dollars == 0 else f"${dollars:.4f}"
        return f"{used:,} {_UNITS[self.metric]}"

    def describe(self) -> str:
        """``10,000 tokens per minute``, ``$50.00 per month``."""
        return f"{self.amount(self.value)} per {self.window}"


@dataclass(frozen=True, slots=True)
class _Table:
    values: Mapping[str, int] = field(default_factory=dict)
    action: Action | None = None


class Rules:
    """A parsed set of limits; :meth:`for_customer` resolves one customer's."""

    def __init__(
        self,
        source: str,
        default: _Table,
        plans: Mapping[str, _Table],
        customers: Mapping[str, _Table],
    ) -> None:
        self.source = source
        self.default = default
        self.plans = dict(plans)
        self.customers = dict(customers)
        tables = [default, *self.plans.values(), *self.customers.values()]
        self.has_cost = any("cost_per_month_usd" in t.values for t in tables)
        self.empty = not any(t.values for t in tables)

    def for_customer(self, customer: str, plan: str | None) -> tuple[Limit, ...]:
        """The customer's limits: its own table, then its plan's, then the default, by limit."""
        default_action: Action = self.default.action or "warn"
        layers: list[tuple[str, _Table, Action]] = []
        own = self.customers.get(customer)
        plan_table = self.plans.get(plan) if plan is not None else None
        plan_action = (plan_table.action if plan_table else None) or default_action
        if own is not None:
            layers.append((f"customers.{_quoted(customer)}", own, own.action or plan_action))
        if plan_table is not None:
            layers.append((f"plans.{_quoted(plan or '')}", plan_table, plan_action))
        layers.append(("default", self.default, default_action))
        limits: list[Limit] = []
        for name, (metric, window) in LIMIT_KEYS.items():
            for scope, table, action in layers:
                value = table.values.get(name)
                if value is not None:
                    limits.append(Limit(name, metric, window, value, action, scope))
                    break
        return tuple(limits)

    def summary(self) -> str:
        return (
            f"{len(self.customers)} customer table(s), {len(self.plans)} plan table(s), "
            f"default {'set' if self.default.values else 'empty'}"
        )


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


# --- reading ------------------------------------------------------------------------------


def load_file(path: str) -> Rules:
    """The rules of the TOML file at ``path``; :class:`LimitsError` when it cannot be used."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise LimitsError(path, None, None, f"cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LimitsError(path, None, None, "is not UTF-8 text") from None
    return parse_text(text, path)


def parse_text(text: str, source: str) -> Rules:
    """The rules of a TOML document; errors name ``source``, the line and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _error_line(str(exc))
        problem = re.sub(r"\s*\(at .*?\)\s*$", "", str(exc)) or "invalid TOML"
        key = _key_on_line(text, line)
        raise LimitsError(source, line, key, f"invalid TOML: {problem}") from None
    return _parse(data, source, text)


def from_mapping(data: Mapping[str, Any], source: str = "set_limits()") -> Rules:
    """The rules of a mapping shaped like the file (``{"default": {...}, "customers": ...}``)."""
    if not isinstance(data, Mapping):
        raise LimitsError(source, None, None, f"expected a mapping, got {type(data).__name__}")
    return _parse(data, source, None)


def _parse(data: Mapping[str, Any], source: str, text: str | None) -> Rules:
    def fail(path: tuple[str, ...], key: str | None, problem: str) -> LimitsError:
        dotted = ".".join(_quoted(p) for p in (*path, *([key] if key else [])))
        return LimitsError(source, _locate(text, path, key), dotted or None, problem)

    for key in data:
        if key not in TOP_LEVEL:
            raise fail((), str(key), _unknown(str(key), TOP_LEVEL, "table"))

    def table(path: tuple[str, ...], value: Any) -> _Table:
        if not isinstance(value, Mapping):
            raise fail(path, None, f"expected a table, got {_kind(value)}")
        values: dict[str, int] = {}
        action: Action | None = None
        for key, item in value.items():
            if key == "action":
                text_value = item.strip().lower() if isinstance(item, str) else None
                if text_value not in ACTIONS:
                    raise fail(path, key, f'expected "warn" or "block", got {_shown(item)}')
                action = "block" if text_value == "block" else "warn"
            elif key in LIMIT_KEYS:
                try:
                    values[key] = _limit_value(key, item)
                except ValueError as exc:
                    raise fail(path, key, str(exc)) from None
            else:
                raise fail(path, str(key), _unknown(str(key), TABLE_KEYS, "key"))
        return _Table(values, action)

    def tables(name: str, what: str) -> dict[str, _Table]:
        group = data.get(name, {})
        if not isinstance(group, Mapping):
            raise fail((name,), None, f"expected a table of {what} tables, got {_kind(group)}")
        out: dict[str, _Table] = {}
        for key, value in group.items():
            if not isinstance(key, str) or not key or not key.isprintable():
                raise fail((name,), str(key), f"a {what} name must be printable text")
            if len(key) > MAX_CUSTOMER_ID:
                raise fail((name,), key[:40] + "...", f"longer than {MAX_CUSTOMER_ID} characters")
            out[key] = table((name, key), value)
        return out

    default = table(("default",), data["default"]) if "default" in data else _Table()
    return Rules(source, default, tables("plans", "plan"), tables("customers", "customer"))


def _limit_value(key: str, value: Any) -> int:
    """The limit in counter units; ``ValueError`` saying what is wrong with it."""
    cost = LIMIT_KEYS[key][0] == "cost"
    expected = "a number of dollars, 0 or more" if cost else "a whole number, 0 or more"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected {expected}, got {_shown(value)}")
    if value < 0 or (not cost and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected {expected}, got {_shown(value)}")
    high = MAX_COST_USD if cost else MAX_COUNT
    if value > high:
        raise ValueError(f"at most {high:.0e} is accepted, got {_shown(value)}")
    return round(value * NANO_USD) if cost else int(value)


def _unknown(key: str, known: tuple[str, ...], what: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
    return f"unknown {what}{hint}"


def _kind(value: Any) -> str:
    return {
        str: "text",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
    }.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- finding the line of a key --------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[(?!\[)\s*(.*?)\s*\]\s*(?:#.*)?$")
_PART = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _dotted(text: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ``("a", "b.c", "d")``."""
    parts = re.findall(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^.\s]+)\s*(?:\.|$)""", text)
    out = []
    for part in parts:
        if part[:1] == '"':
            part = part[1:-1].encode("utf-8").decode("unicode_escape", "replace")
        elif part[:1] == "'":
            part = part[1:-1]
        out.append(part)
    return tuple(out)


def _locate(text: str | None, path: tuple[str, ...], key: str | None) -> int | None:
    """The line (1-based) where ``key`` of the table at ``path`` is written, if it can be found."""
    if text is None:
        return None
    if key is None and path:  # a table that is not a table: find where it is named
        path, key = path[:-1], path[-1]
    current: tuple[str, ...] = ()
    fallback: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = _dotted(header.group(1))
            target = (*path, *([key] if key else []))
            if current[: len(target)] == target:
                return number  # the table (or one inside it) is what is wrong
            continue
        if key is None:
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        written = current + _dotted(match.group(1))
        if written == (*path, key):
            return number
        if fallback is None and written[-1:] == (key,):
            fallback = number
    if key is not None and fallback is None and text is not None:
        for number, line in enumerate(text.splitlines(), 1):  # an inline table, say
            if re.search(rf"(?<![\w-])[\"']?{re.escape(key)}[\"']?\s*=", line):
                return number
    return fallback


def _error_line(message: str) -> int | None:
    found = re.search(r"at line (\d+)", message)
    return int(found.group(1)) if found else None


def _key_on_line(text: str, line: int | None) -> str | None:
    """The dotted key written on ``line``, with its table: ``customers.acme.tokens_per_minute``."""
    lines = text.splitlines()
    if not line or line > len(lines):
        return None
    table: tuple[str, ...] = ()
    for previous in lines[: line - 1]:
        header = _HEADER.match(previous)
        if header:
            table = _dotted(header.group(1))
    match = _KEY.match(lines[line - 1])
    if match is None:
        return None
    return ".".join(_quoted(part) for part in (*table, *_dotted(match.group(1))))
