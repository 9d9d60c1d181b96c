"""The check on the request path: admit a call, or refuse it before it is sent.

:meth:`Engine.admit` resolves the customer's limits, reads their counters from
the process's cache and either refuses the call (a ``block`` limit is used up:
:class:`~.errors.CustomerLimitExceeded`) or admits it and counts the request.
The :class:`Reservation` it returns is settled once, when the call's usage is
known: its tokens and cost are added then. A stream reserves an estimate of its
input tokens when it starts, and the settlement replaces it with what it used.

A limit is used up when its window's usage has reached it: the call that
crosses a token or cost limit completes and is counted, the next one is
refused (``block``) or flagged (``warn``: one log line per window and limit,
the ``limits_exceeded`` metric, ``limit_exceeded`` on the usage event).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from .. import tunables
from ..telemetry import metrics
from ..telemetry.logging import logger, warn_once
from .counters import CounterCache
from .rules import NANO_USD, Limit, Metric, Rules
from .windows import Clock

if TYPE_CHECKING:
    from ..pricing import ModelPrice, PriceTable
    from ..usage.model import Usage
    from .errors import CustomerLimitExceeded

KEY_PREFIX = "cmdrdata:limits:"
PLAN_METRIC = "plan."  # + the plan's name: see plan_key
PRICES_ENV = "CMDRDATA_PRICES_FILE"
_MAX_WARNED = 4_096
_INPUT_METRICS: tuple[Metric, ...] = ("tokens", "input_tokens")


def counter_key(customer: str, metric: Metric, window_id: str) -> str:
    """``cmdrdata:limits:{acme}:tokens:m29012345``: the customer in a Redis hash tag."""
    return f"{KEY_PREFIX}{{{quote(customer, safe='')}}}:{metric}:{window_id}"


def plan_key(customer: str, plan: str, month_id: str) -> str:
    """The counter of the customer's calls made under ``plan`` this month: it tells
    ``cmdrdata-autotrack limits`` which plan's limits the customer has."""
    return (
        f"{KEY_PREFIX}{{{quote(customer, safe='')}}}:{PLAN_METRIC}{quote(plan, safe='')}:{month_id}"
    )


def parse_key(key: str) -> tuple[str, str, str] | None:
    """``(customer, metric, window id)`` of a counter key, or ``None``."""
    if not key.startswith(KEY_PREFIX + "{"):
        return None
    customer, sep, rest = key[len(KEY_PREFIX) + 1 :].partition("}:")
    metric, sep2, window_id = rest.partition(":")
    if not sep or not sep2:
        return None
    return unquote(customer), metric, window_id


Keyed = tuple[str, float]  # a counter key and when its window ends


class _Windowed:
    """One customer's limits with their counter keys for the current minute (every window
    changes at a minute boundary, so the keys are worked out once a minute)."""

    __slots__ = ("by_metric", "checks", "minute", "pairs", "requests")

    def __init__(self, customer: str, limits: tuple[Limit, ...], now: float, clock: Clock) -> None:
        self.minute = int(now // 60)
        checks: list[tuple[Limit, str, float]] = []
        by_metric: dict[Metric, list[Keyed]] = {}
        for limit in limits:
            window_id, resets = clock.window(limit.window, now)
            key = counter_key(customer, limit.metric, window_id)
            checks.append((limit, key, resets))
            by_metric.setdefault(limit.metric, []).append((key, resets))
        self.checks = checks
        self.pairs = [(key, resets) for _, key, resets in checks]
        self.by_metric = by_metric
        # what every admitted call adds: one request, and one call under its plan
        self.requests = [(key, 1, resets) for key, resets in by_metric.get("requests", ())]


class Reservation:
    """What one admitted call counted; :meth:`settle` adds its usage, exactly once."""

    __slots__ = ("_counters", "_engine", "_keys", "_reserved", "_settled", "exceeded", "model")

    def __init__(
        self,
        engine: Engine,
        keys: dict[Metric, list[Keyed]],
        model: str | None,
        exceeded: tuple[str, ...],
    ) -> None:
        self._engine = engine
        self._counters = engine.counters
        self._keys = keys
        self._reserved: dict[Metric, int] | None = None
        self._settled = False
        self.model = model
        self.exceeded = exceeded  # the warn limits the customer was over when the call began

    def reserve(self, input_tokens: int) -> None:
        """Count an estimate of a stream's tokens now, so concurrent calls see them."""
        if input_tokens <= 0:
            return
        adds = []
        reserved = self._reserved = {}
        for metric in _INPUT_METRICS:
            for key, expires in self._keys.get(metric, ()):
                reserved[metric] = input_tokens
                adds.append((key, input_tokens, expires))
        self._counters.add_many(adds)

    def settle(self, usage: Usage | None, response_model: str | None = None) -> None:
        """The call ended: count its usage (``None``: it used nothing), giving back the estimate."""
        if self._settled:  # the call's end is reported once; this guards a second report
            return
        self._settled = True
        used: dict[Metric, int] = {}
        if usage is not None:
            inp, out = usage.input_tokens or 0, usage.output_tokens or 0
            total = usage.total_tokens if usage.total_tokens is not None else inp + out
            used = {"tokens": max(total, inp + out), "input_tokens": inp, "output_tokens": out}
            if "cost" in self._keys:
                used["cost"] = self._engine.cost_of(usage, response_model or self.model)
        reserved = self._reserved or {}
        adds = []
        for metric, keys in self._keys.items():
            if metric != "requests":
                amount = used.get(metric, 0) - reserved.get(metric, 0)
                if amount:
                    adds += [(key, amount, expires) for key, expires in keys]
        self._counters.add_many(adds)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call that must not be sent: the ``block`` limit that refuses it."""

    customer_id: str
    limit: Limit
    used: int
    resets_at: float
    now: float
    exceeded: tuple[str, ...]  # every limit the customer is over, this one included

    def error(self, url: str | None = None) -> CustomerLimitExceeded:
        """The exception the caller gets (it loads the SDK: only a refusal needs it)."""
        from .errors import CustomerLimitExceeded

        error = CustomerLimitExceeded(
            self.customer_id, self.limit, self.used, self.resets_at, self.now, url=url
        )
        error.exceeded = self.exceeded
        return error


class Engine:
    """The limits of this process: rules, counters and the check."""

    def __init__(
        self,
        rules: Rules,
        counters: CounterCache,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.rules = rules
        self.counters = counters
        self.clock = clock or counters.clock
        self._windows = Clock()
        self._resolved: dict[tuple[str, str | None], tuple[Limit, ...]] = {}
        self._keyed: dict[tuple[str, str | None], _Windowed] = {}
        self._warned: dict[str, float] = {}  # counter key -> when its window resets
        self._prices: PriceTable | None = None
        self._price_of: dict[str, ModelPrice | None] = {}  # model -> its price (prefix lookup)

    def replace_rules(self, rules: Rules) -> None:
        self._resolved, self._keyed = {}, {}
        self.rules = rules

    def limits_for(self, customer: str, plan: str | None) -> tuple[Limit, ...]:
        resolved = self._resolved.get((customer, plan))
        if resolved is None:
            resolved = self.rules.for_customer(customer, plan)
            if len(self._resolved) >= tunables.CACHE_SIZE:
                self._resolved = {}
            self._resolved[(customer, plan)] = resolved
        return resolved

    def admit(
        self,
        customer: str | None,
        plan: str | None,
        model: str | None = None,
        estimate: Callable[[], int] | None = None,
    ) -> Reservation | Refusal | None:
        """Admit a call of ``customer``: its :class:`Reservation`, a :class:`Refusal`, or
        ``None`` when no limit applies. ``estimate`` gives a stream's input tokens."""
        if customer is None:
            return None
        now = self.clock()
        windowed = self._keyed.get((customer, plan))
        if windowed is None or windowed.minute != int(now // 60):
            limits = self.limits_for(customer, plan)
            if not limits:
                return None
            windowed = _Windowed(customer, limits, now, self._windows)
            if plan is not None and self.rules.plans:
                month_id, month_end = self._windows.window("month", now)
                windowed.requests.append((plan_key(customer, plan, month_id), 1, month_end))
            if len(self._keyed) >= tunables.CACHE_SIZE:
                self._keyed = {}
            self._keyed[(customer, plan)] = windowed
        keyed = windowed.checks
        exceeded: list[str] = []
        refusal: tuple[Limit, int, float] | None = None
        unchecked = not self.counters.healthy  # the store is not answering: fail open
        if not unchecked:
            totals = self.counters.totals(windowed.pairs)
            for (limit, key, resets), used in zip(keyed, totals, strict=True):
                if used is None:  # the store failed while this counter was read
                    unchecked = True
                elif used >= limit.value:
                    exceeded.append(limit.name)
                    if limit.action == "block":
                        if refusal is None or resets > refusal[2]:
                            refusal = (limit, used, resets)  # the latest reset: when it passes
                    else:
                        self._warn(customer, limit, used, key, resets, now)
            if unchecked:
                exceeded, refusal = [], None  # the others were read, but not all: let it go
        if unchecked:
            metrics.increment("limits_fail_open")
        if refusal is not None:
            metrics.increment("limits_blocked")
            return Refusal(customer, *refusal, now, tuple(exceeded))
        if exceeded:
            metrics.increment("limits_exceeded")
        keys = windowed.by_metric
        reservation = Reservation(self, keys, model, tuple(exceeded))
        self.counters.add_many(windowed.requests)
        if estimate is not None and ("tokens" in keys or "input_tokens" in keys):
            reservation.reserve(estimate())
        return reservation

    def _warn(
        self, customer: str, limit: Limit, used: int, key: str, resets: float, now: float
    ) -> None:
        """One log line per customer, limit and window."""
        if key in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned = {k: r for k, r in list(self._warned.items()) if r > now}
            if len(self._warned) >= _MAX_WARNED:
                return
        self._warned[key] = resets
        logger.warning(
            "cmdrdata: customer %r is over its limit of %s (%s used, from %s); its calls go "
            "on (action = warn) and are flagged limit_exceeded until the limit resets at %s",
            customer,
            limit.describe(),
            limit.amount(used),
            limit.scope,
            time.strftime("%H:%M:%S UTC", time.gmtime(resets)),
        )

    # --- cost ------------------------------------------------------------------------------

    def cost_of(self, usage: Usage, model: str | None) -> int:
        """The call's list-price cost in billionths of a dollar (0 when the model has no price)."""
        from ..pricing import cost

        price = self._price(model) if model else None
        if price is None:
            warn_once(
                f"limits-price:{model}",
                "cmdrdata: no price known for model %r: its calls do not count toward "
                "cost_per_month_usd limits (add it to a prices file, $%s)",
                model,
                PRICES_ENV,
            )
            return 0
        units = {
            name: getattr(usage, name)
            for name in ("image_count", "image_size", "image_quality", "audio_seconds")
        }
        units["input_characters"] = usage.input_characters
        dollars = cost(
            price,
            input_tokens=usage.input_tokens or 0,
            cached_input_tokens=usage.cached_input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            reasoning_tokens=usage.reasoning_tokens or 0,
            units=units,
        )
        return round(dollars * NANO_USD)

    def _price(self, model: str) -> ModelPrice | None:
        memo = self._price_of
        if model in memo:
            return memo[model]
        price = (self._prices or self._load_prices()).for_model(model)
        if len(memo) >= tunables.CACHE_SIZE:
            memo.clear()
        memo[model] = price
        return price

    def _load_prices(self) -> PriceTable:
        from ..pricing import load_prices

        path = os.environ.get(PRICES_ENV, "").strip() or None
        try:
            self._prices = load_prices(path)
        except (OSError, ValueError) as exc:
            logger.error(
                "cmdrdata: prices file not used for cost limits (%s); using the shipped prices",
                exc,
            )
            self._prices = load_prices()
        return self._prices

    # --- reading ---------------------------------------------------------------------------

    def usage(
        self, customer: str, plan: str | None = None
    ) -> list[tuple[Limit, int | None, float]]:
        """Each of the customer's limits with its current usage and reset time."""
        now = self.clock()
        rows = []
        for limit in self.limits_for(customer, plan):
            window_id, resets = self._windows.window(limit.window, now)
            key = counter_key(customer, limit.metric, window_id)
            rows.append((limit, self.counters.totals([(key, resets)])[0], resets))
        return rows

    def flush(self) -> bool:
        """Sync the counters with the store now (tests, exit)."""
        return self.counters.sync()

    def close(self) -> None:
        self.counters.close()
