"""Reading values out of responses: parsed SDK objects and plain JSON alike.

None of these raises on an unexpected shape: a missing or invalid value is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_COUNT", "count", "field", "seconds", "text"]

# Counts beyond this are not usage but garbage (2**40 tokens is ~1 TB of text).
MAX_COUNT = 2**40


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` for objects; ``None`` when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def count(value: Any) -> int | None:
    """A non-negative integer count, or ``None`` for anything else (bools, NaN, negatives)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return count(int(value))
    return None


def seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= MAX_COUNT else None


def text(value: Any, limit: int = 256) -> str | None:
    if isinstance(value, str) and value:
        return value[:limit]
    return None
