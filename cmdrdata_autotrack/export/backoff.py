"""Retry timing: exponential backoff with full jitter, ``Retry-After``, and a circuit breaker."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]`` (0: the first retry)."""
    ceiling: float = min(cap, base * float(2 ** min(attempt, 30)))
    return rand() * ceiling


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
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, 24 * 3600.0)) if seconds == seconds else None


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open after a cooldown.

    Half-open lets one probe through: success closes the circuit, failure opens it
    again with the cooldown doubled (up to ``max_cooldown``). It recovers by itself.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        max_cooldown: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.base_cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown)
        self.clock = clock
        self.state = self.CLOSED
        self.failures = 0
        self.cooldown = cooldown
        self.opened_at = 0.0

    def allow(self) -> bool:
        """May a request go now? (Moves open → half-open once the cooldown is over.)"""
        if self.state == self.OPEN and self.clock() - self.opened_at >= self.cooldown:
            self.state = self.HALF_OPEN
        return self.state != self.OPEN

    def wait_time(self) -> float:
        if self.state != self.OPEN:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def success(self) -> None:
        self.state, self.failures, self.cooldown = self.CLOSED, 0, self.base_cooldown

    def failure(self) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open()
        elif self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.state, self.opened_at = self.OPEN, self.clock()
