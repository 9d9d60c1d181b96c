"""The fixed UTC windows limits are counted in: the minute, the day and the calendar month.

Windows are fixed, not sliding: a per-minute limit allows its full amount in each
clock minute (UTC), and every process and machine agrees on which minute a call
falls in without talking to the others. A window is named by a short id that
sorts and never repeats (``m29012345``, ``d2025-03-14``, ``M2025-03``); it resets
at the start of the next one.
"""

from __future__ import annotations

import calendar
import time
from typing import Literal

Window = Literal["minute", "day", "month"]
WINDOWS: tuple[Window, ...] = ("minute", "day", "month")
_DAY = 86_400


def _month_of_day(day: int) -> tuple[str, float]:
    """The id and reset time of the month that holds UTC day number ``day``."""
    year, month = time.gmtime(day * _DAY)[:2]
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    resets = float(calendar.timegm((next_year, next_month, 1, 0, 0, 0)))
    return f"M{year:04d}-{month:02d}", resets


class Clock:
    """Window ids and reset times for a moment; the day and month are worked out once a day."""

    __slots__ = ("_days",)

    def __init__(self) -> None:
        # (day number, day id, (month id, month reset)): one tuple, so threads never mix days
        self._days: tuple[int, str, tuple[str, float]] = (-1, "", ("", 0.0))

    def window(self, kind: Window, now: float) -> tuple[str, float]:
        """``(id, resets_at)`` of the ``kind`` window that holds ``now`` (Unix seconds)."""
        if kind == "minute":
            minute = int(now // 60)
            return f"m{minute}", (minute + 1) * 60.0
        day = int(now // _DAY)
        days = self._days
        if days[0] != day:
            day_id = "d" + time.strftime("%Y-%m-%d", time.gmtime(day * _DAY))
            days = self._days = (day, day_id, _month_of_day(day))
        if kind == "day":
            return days[1], (day + 1) * float(_DAY)
        return days[2]


def window(kind: Window, now: float) -> tuple[str, float]:
    """``(id, resets_at)`` of the ``kind`` window that holds ``now`` (a one-off lookup)."""
    return Clock().window(kind, now)
