"""The agent's own counters: cheap, thread-safe, readable at any time.

Counters are plain integers behind one lock; :func:`snapshot` reads them all.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

_lock = threading.Lock()
_counters: Counter[str] = Counter()

# What each counter means (shown by `doctor` and in the metrics docs).
DESCRIPTIONS = {
    "calls_metered": "OpenAI calls whose metering span ended",
    "spans_metered": "metered spans seen by the metering span processor",
    "calls_unattributed": "calls metered with no customer named",
    "customer_id_invalid": "calls whose customer id was rejected by validation",
    "usage_estimated": "calls whose usage was estimated (stream ended without usage)",
    "usage_missing": "calls whose response had no usage report although its endpoint reports one",
    "usage_malformed": "calls whose response reported usage that is not valid (flagged, estimated)",
    "usage_non_json_body": "calls answered 2xx with a body that is not JSON (an HTML error page)",
    "metadata_dropped": "tracking metadata values left out because they cannot be recorded",
    "metering_parts_dropped": "parts of a call's record left out because odd input spoiled them",
    "metering_degraded": "calls metered with a minimal span after an unexpected failure",
    "instrumentation_errors": "internal errors swallowed by the instrumentation",
    "events_accepted": "usage events written to this process's journal",
    "events_spooled": "usage events moved from journals into the spool or ledger",
    "events_delivered": "usage events acknowledged by the events API",
    "events_retried": "delivery attempts that will be retried",
    "events_dead_lettered": "usage events refused for good by the events API",
    "events_dropped": "usage events dropped (journal or spool full)",
    "events_malformed": "unreadable journal lines skipped",
    "pipeline_errors": "internal errors of the delivery threads",
}


def increment(name: str, value: int = 1) -> None:
    with _lock:
        _counters[name] += value


_observations: dict[str, list[float]] = {}  # name -> [count, sum, max]


def observe(name: str, value: float) -> None:
    """Record one measurement (count, sum and max are kept)."""
    with _lock:
        stats = _observations.setdefault(name, [0.0, 0.0, 0.0])
        stats[0] += 1
        stats[1] += value
        stats[2] = max(stats[2], value)


def observations() -> dict[str, dict[str, float]]:
    with _lock:
        return {name: {"count": c, "sum": s, "max": m} for name, (c, s, m) in _observations.items()}


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counters)


def reset() -> None:
    """Zero every counter (tests)."""
    with _lock:
        _counters.clear()
        _observations.clear()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
