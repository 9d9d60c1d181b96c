"""Time buckets aligned the way OpenAI's Usage API aligns them.

OpenAI's buckets are whole UTC minutes, hours or days counted from the Unix
epoch (a UTC day starts at a multiple of 86400 s: Unix time has no leap
seconds). When asked for a range that does not start on a boundary, the API
answers a first bucket that starts at the requested time and ends at the next
boundary, so the range is widened to whole buckets before asking: each bucket
then means the same span of time on both sides.

A bucket is *complete* once it has ended (and, with a settling margin, once that
margin has passed too): OpenAI is still counting the current one, and its usage
data can lag the calls by a few minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTHS: dict[str, int] = {"1m": 60, "1h": 3600, "1d": 86400}
DAY = WIDTHS["1d"]
# Buckets per page the Usage API accepts (its maximum ``limit`` for each width).
MAX_PAGE: dict[str, int] = {"1m": 1440, "1h": 168, "1d": 31}
# A range of more buckets than this is refused (a typo such as --since 10y with 1m buckets).
MAX_BUCKETS = 50_000


def floor_to(moment: float, width: int) -> int:
    """The start of the bucket ``moment`` (Unix seconds) falls in."""
    return math.floor(moment / width) * width


def ceil_to(moment: float, width: int) -> int:
    """The first bucket boundary at or after ``moment``."""
    return math.ceil(moment / width) * width


@dataclass(frozen=True)
class Window:
    """Whole buckets of ``width`` seconds from ``start`` (inclusive) to ``end`` (exclusive)."""

    start: int
    end: int
    width: int
    name: str  # "1m", "1h" or "1d"
    now: float
    settle: float = 0.0  # seconds after a bucket ends before it counts as complete

    @classmethod
    def around(
        cls, since: float, until: float, bucket: str, *, now: float, settle: float = 0.0
    ) -> Window:
        """The smallest window of whole ``bucket`` buckets that holds ``[since, until)``."""
        if bucket not in WIDTHS:
            raise ValueError(f"bucket must be one of {', '.join(WIDTHS)}, not {bucket!r}")
        if not since < until:
            raise ValueError("the start of the range must be before its end")
        width = WIDTHS[bucket]
        start, end = floor_to(since, width), ceil_to(until, width)
        if (end - start) // width > MAX_BUCKETS:
            raise ValueError(
                f"{(end - start) // width:,} buckets of {bucket} is too many "
                f"(at most {MAX_BUCKETS:,}): use a shorter range or wider buckets"
            )
        return cls(start, end, width, bucket, now, max(settle, 0.0))

    def starts(self) -> range:
        return range(self.start, self.end, self.width)

    def bucket_of(self, moment: float) -> int | None:
        """The start of the bucket holding ``moment``, or ``None`` outside the window."""
        if not self.start <= moment < self.end:
            return None
        return floor_to(moment, self.width)

    def is_complete(self, bucket_start: int) -> bool:
        return bucket_start + self.width + self.settle <= self.now

    def days(self) -> Window:
        """The whole UTC days that hold this window (the Costs API has daily buckets only)."""
        return Window(
            floor_to(self.start, DAY), ceil_to(self.end, DAY), DAY, "1d", self.now, self.settle
        )
