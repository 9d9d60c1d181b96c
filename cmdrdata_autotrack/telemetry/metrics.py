"""The agent's own counters: cheap, thread-safe, readable at any time.

Counters are plain integers behind one lock; :func:`snapshot` reads them all.
They are exported as OpenTelemetry and Prometheus metrics by the export layer.
"""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counters: Counter[str] = Counter()

# What each counter means (shown by `doctor` and in the metrics docs).
DESCRIPTIONS = {
    "calls_metered": "OpenAI calls whose metering span ended",
    "spans_metered": "metered spans seen by the metering span processor",
    "calls_unattributed": "calls metered with no customer (warning)",
    "customer_id_invalid": "calls whose customer id was rejected by validation",
    "usage_estimated": "calls whose usage was estimated (stream ended without usage)",
    "instrumentation_errors": "internal errors swallowed by the instrumentation",
}


def increment(name: str, value: int = 1) -> None:
    with _lock:
        _counters[name] += value


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counters)


def reset() -> None:
    """Zero every counter (tests, and after fork in the child)."""
    with _lock:
        _counters.clear()
