"""Retry timing: exponential backoff with full jitter, ``Retry-After``, and a circuit breaker.

Settings reach here already checked (see :mod:`cmdrdata_autotrack.config`), but
timing code that gets a NaN, an infinity or a negative number anyway must not
freeze (a NaN comparison is always false), overflow or sleep for ever: every
input is clamped to a finite range first.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable

MAX_RETRY_AFTER_S = 24 * 3600.0
MAX_COOLDOWN_S = 24 * 3600.0  # the breaker probes at least once a day, whatever it is told
DEFAULT_COOLDOWN_S = 30.0  # CMDRDATA_BREAKER_COOLDOWN's default
DEFAULT_MAX_COOLDOWN_S = 600.0
MAX_TIMEOUT_S = 30 * 24 * 3600.0  # an explicit flush or shutdown timeout, at most (inf: this)


def clamp(value: object, low: float, high: float, fallback: float) -> float:
    """``value`` as a float in ``[low, high]``; ``fallback`` when it is not a number (or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return fallback
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        return fallback
    return min(max(number, low), high)


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]`` (0: the first retry)."""
    cap = clamp(cap, 0.0, MAX_RETRY_AFTER_S, 60.0)
    base = clamp(base, 0.0, cap, min(0.5, cap))
    exponent = int(clamp(attempt, 0, 62, 0))  # 2**62 * base is finite; min() caps it anyway
    ceiling = min(cap, base * float(2**exponent))
    return clamp(rand(), 0.0, 1.0, 1.0) * ceiling


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None if math.isnan(seconds) else clamp(seconds, 0.0, MAX_RETRY_AFTER_S, 0.0)


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open after a cooldown.

    Half-open lets one probe through: success closes the circuit, failure opens it
    again with the cooldown doubled (up to ``max_cooldown``). It recovers by itself,
    whatever numbers it was given: the cooldown is always finite.

    While someone waits for delivery (a flush, :meth:`hurry`), the cooldown is at
    most the cap given and does not double: the breaker still spares a failing API
    a burst of requests, but probes it promptly. Safe to share between threads.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        max_cooldown: float = DEFAULT_MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = int(clamp(threshold, 1, 1_000_000, 5))
        self.base_cooldown = clamp(cooldown, 0.0, MAX_COOLDOWN_S, DEFAULT_COOLDOWN_S)
        self.max_cooldown = max(
            self.base_cooldown, clamp(max_cooldown, 0.0, MAX_COOLDOWN_S, DEFAULT_MAX_COOLDOWN_S)
        )
        self.clock = clock
        self.state = self.CLOSED
        self.failures = 0
        self.cooldown = self.base_cooldown
        self.opened_at = 0.0
        self.hurry_cap: float | None = None  # set while a flush waits
        self._lock = threading.Lock()

    def hurry(self, cap: float | None) -> None:
        """Probe at least every ``cap`` seconds, without doubling (``None``: as configured)."""
        with self._lock:
            self.hurry_cap = None if cap is None else clamp(cap, 0.0, MAX_COOLDOWN_S, 1.0)

    def _current_cooldown(self) -> float:
        cap = self.hurry_cap
        return self.cooldown if cap is None else min(self.cooldown, cap)

    def _elapsed(self) -> float:
        # a clock that jumps back (or answers NaN) counts as "the cooldown is over"
        elapsed = self.clock() - self.opened_at
        return elapsed if elapsed >= 0.0 else math.inf

    def allow(self) -> bool:
        """May a request go now? (Moves open → half-open once the cooldown is over.)"""
        with self._lock:
            if self.state == self.OPEN and not self._elapsed() < self._current_cooldown():
                self.state = self.HALF_OPEN
            return self.state != self.OPEN

    def wait_time(self) -> float:
        with self._lock:
            if self.state != self.OPEN:
                return 0.0
            cooldown = self._current_cooldown()
            return clamp(cooldown - self._elapsed(), 0.0, cooldown, 0.0)

    def success(self) -> None:
        with self._lock:
            self.state, self.failures, self.cooldown = self.CLOSED, 0, self.base_cooldown

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.state == self.HALF_OPEN:
                if self.hurry_cap is None:  # a flush retries promptly: no doubling meanwhile
                    self.cooldown = min(self.cooldown * 2, self.max_cooldown)
                self._open()
            elif self.failures >= self.threshold and self.state == self.CLOSED:
                self._open()

    def _open(self) -> None:
        self.state, self.opened_at = self.OPEN, self.clock()
