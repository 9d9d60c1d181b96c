"""Work whose usage comes later: the span attributes that say how its event is keyed.

A background response, an Assistants run or a batch request is one billed unit however
many times, and in however many processes, the app sees it finished. Its event id is
derived from the work's own id (``response:resp_1``), not from the span that saw it, so
every sighting gives the same event, which every store downstream keeps once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

# The work id a span's event id is derived from (instead of the trace and span ids).
ID_KEY = "cmdrdata.event.id_key"
# What a span of deferred work is: "pending" (not finished yet: no event), "billed" (its
# first terminal sighting), "repeat" (seen finished before: the same event again), or
# "not_billable" (a stored object billed by its own call, a failed read: no event).
STATE = "cmdrdata.deferred.state"
NO_EVENT_STATES = frozenset({"pending", "not_billable"})
# Where the attribution of a finished unit came from: "pending" (its create call), or
# "context" (the create was not seen by the agent: the sighting's own context).
ATTRIBUTION_FROM = "cmdrdata.deferred.attribution"
WORK_NAMESPACE = uuid.UUID("5d0b8c1e-7a44-4f0e-9b1f-2f6a3c9e8d71")
MAX_KEY = 512


def work_event_id(key: str) -> str:
    return str(uuid.uuid5(WORK_NAMESPACE, key[:MAX_KEY]))


def _work_key(attributes: Mapping[str, Any]) -> str | None:
    """The work id a span's event is keyed by, or ``None`` (not deferred work)."""
    key = attributes.get(ID_KEY)
    return str.__str__(key) if isinstance(key, str) and key else None


def event_id_override(attributes: Mapping[str, Any]) -> str | None:
    """The event id of a span of deferred work, or ``None`` (the span's own identity)."""
    key = _work_key(attributes)
    return work_event_id(key) if key is not None else None


def is_deferred_work(attributes: object) -> bool:
    """Whether a span's attributes are deferred work's (its event is keyed by the work)."""
    return isinstance(attributes, dict) and _work_key(attributes) is not None


def makes_no_event(attributes: Mapping[str, Any]) -> bool:
    """A span of deferred work that bills nothing (yet): it stays in traces only."""
    state = attributes.get(STATE)
    return isinstance(state, str) and state in NO_EVENT_STATES
