"""Reading values out of responses: parsed SDK objects and plain JSON alike.

None of these raises on an unexpected shape: a missing or invalid value is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_COUNT", "as_fields", "count", "field", "seconds", "text"]

# Counts beyond this are not usage but garbage (2**40 tokens is ~1 TB of text).
MAX_COUNT = 2**40


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` for objects; ``None`` when absent."""
    if type(obj) is dict:  # JSON, and SDK models seen through as_fields: the common case
        return obj.get(name)
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def as_fields(obj: Any) -> Any:
    """An SDK model's fields as one dict (declared and extra ones), read once; else ``obj``.

    Reading a dozen counts of a usage object then costs a dict lookup each instead of
    an attribute lookup through pydantic. Fields a newer API added and an older SDK does
    not declare are among the extra ones, so they are read all the same.
    """
    if type(obj) is dict or obj is None:
        return obj
    try:
        if not hasattr(type(obj), "model_fields"):
            return obj
        declared = obj.__dict__
        extra = obj.__pydantic_extra__
    except Exception:  # an odd object: read it field by field
        return obj
    if type(declared) is not dict:
        return obj
    if extra:
        return {**declared, **extra} if type(extra) is dict else obj
    return declared


def count(value: Any) -> int | None:
    """A non-negative integer count, or ``None`` for anything else (bools, NaN, negatives)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_COUNT else None
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
