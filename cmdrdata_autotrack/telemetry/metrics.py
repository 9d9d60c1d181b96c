"""The agent's own counters: cheap, thread-safe, readable at any time.

Counters are plain integers behind one lock; :func:`snapshot` reads them all.
"""

from __future__ import annotations

import threading
from collections import Counter

from .. import forksafe

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
    "calls_metered_direct": "direct client.post() calls to a billable path, metered by path",
    "calls_metered_generic": "direct calls to an unknown path whose JSON answer had a usage object",
    "calls_unmetered_generic_stream": "direct calls to unknown paths with a streamed body (unread)",
    "calls_unmetered_with_usage": "direct calls reporting usage under an unmetered OpenAI path",
    "instrumentation_errors": "internal errors swallowed by the instrumentation",
    "events_accepted": "usage events written to this process's journal",
    "events_spooled": "usage events moved from journals into the spool or ledger",
    "events_delivered": "usage events acknowledged by the events API",
    "events_retried": "delivery attempts that will be retried",
    "events_dead_lettered": "usage events refused for good by the events API",
    "events_dropped": "usage events dropped (journal or spool full)",
    "events_malformed": "unreadable journal lines skipped",
    "metered_unrecorded": "delivered usage events the metered record could not take (flagged)",
    "pipeline_errors": "internal errors of the delivery threads",
    "limits_exceeded": "calls made while their customer was over a warn limit (flagged)",
    "limits_blocked": "calls refused before they were sent: their customer was over a block limit",
    "limits_fail_open": "calls let through unchecked: the limits counter store could not be read",
    "limits_store_errors": "failed syncs of the limits counters with their store (SQLite, Redis)",
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


forksafe.register(_after_fork_in_child)
