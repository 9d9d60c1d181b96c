"""The usage event: what one metered call is billed as, built from its span's attributes only.

The event keeps every field the ``cmdrdata-openai`` client sent (so the events
API accepts it as it is) and adds what billing needs to be exact: an
``event_id`` (the idempotency key), the operation, cached and reasoning tokens,
the other billable units, the service tier, whether usage was estimated, and
the trace and span ids. Schema: ``docs/usage-event.schema.json``.

Every value is sanitised here: strings are bounded and stripped of control
characters, counts must be sane non-negative integers, metadata is flattened
to bounded JSON scalars. A hostile or malformed span gives a clean event, never
an exception.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from typing import Any

from .._version import __version__
from ..limits import BLOCKED_ATTRIBUTE, EXCEEDED_ATTRIBUTE
from . import attributes as A
from .fields import count, seconds
from .model import USAGE_PROBLEMS
from .units import BY_ATTRIBUTE, MAX_ID, Unit
from .work import event_id_override

SCHEMA_VERSION = "1.3"
USAGE_SOURCES = frozenset({"response", "estimate", "request", "none"})
# Event ids are derived from the span's identity: the same span always gives the same id.
EVENT_ID_NAMESPACE = uuid.UUID("0b7b5f7e-3c55-4c8e-9d52-6f1d4c3a2e10")
MAX_STRING = 256
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 1024
# Fields that tell which OpenAI key and project made the call (reconcile scopes by them).
KEY_SUFFIX_FIELD = "openai_key_suffix"
PROJECT_FIELD = "openai_project_id"


def clean_text(value: Any, limit: int = MAX_STRING) -> str | None:
    """A printable, bounded string, or ``None``."""
    if type(value) is str and value.isprintable():  # the usual case: as it is
        return value[:limit] or None
    if value is None:
        return None
    try:
        text = str.__str__(value) if isinstance(value, str) else str(value)
    except Exception:  # an object whose str() fails: nothing to say
        return None
    if not isinstance(text, str):
        return None
    if not text.isprintable():
        text = "".join(c for c in text if c.isprintable())
    return text[:limit] or None


def clean_scalar(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return clean_text(value, MAX_METADATA_VALUE)


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def event_id_for(trace_id: int, span_id: int) -> str:
    """``uuid5(EVENT_ID_NAMESPACE, trace id + span id in hex)``, as text; computed directly
    (the same digest and bits as :func:`uuid.uuid5`, without its objects: it runs per event)."""
    digest = hashlib.sha1(
        _NAMESPACE_BYTES + f"{trace_id:032x}{span_id:016x}".encode(), usedforsecurity=False
    ).digest()
    # version 5 in the high nibble of byte 6, the RFC 4122 variant in the top bits of byte 8
    raw = (
        digest[:6]
        + bytes((digest[6] & 0x0F | 0x50,))
        + digest[7:8]
        + bytes((digest[8] & 0x3F | 0x80,))
        + digest[9:16]
    )
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _metadata_and_units(attributes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The event's ``metadata`` (the span's metadata attributes, flattened) and its
    ``units`` (the span's unit attributes that are not top-level fields), in one pass."""
    metadata: dict[str, Any] = {}
    units: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str):
            continue
        unit = BY_ATTRIBUTE.get(key)
        if unit is not None:
            if not unit.top_level:
                kept = unit_value(unit, value)
                if kept is not None:
                    units[unit.name] = kept
        elif key.startswith(A.METADATA_PREFIX) and len(metadata) < MAX_METADATA_KEYS:
            name = clean_text(key[len(A.METADATA_PREFIX) :], 128)
            if name:
                if isinstance(value, list | tuple):
                    value = ",".join(clean_text(v, MAX_METADATA_VALUE) or "" for v in value)
                metadata[name] = clean_scalar(value)
    return metadata, units


def _usage_source(attributes: Mapping[str, Any], input_tokens: int, output_tokens: int) -> str:
    """Where the counts come from: the span says; a span from elsewhere is read for it."""
    source = attributes.get(A.USAGE_SOURCE)
    if isinstance(source, str) and source in USAGE_SOURCES:
        return source
    if attributes.get(A.USAGE_ESTIMATED) is True:
        return "estimate"
    return "response" if input_tokens or output_tokens else "none"


def _usage_problem(attributes: Mapping[str, Any]) -> str | None:
    problem = attributes.get(A.USAGE_PROBLEM)
    return problem if isinstance(problem, str) and problem in USAGE_PROBLEMS else None


def _first_text(attributes: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        text = clean_text(attributes.get(key))
        if text:
            return text
    return None


def unit_value(unit: Unit, value: Any) -> Any:
    """A unit's value as the event carries it, or ``None`` when it is not a valid one."""
    kind = unit.kind
    if kind == "count":
        return count(value)
    if kind == "seconds":
        return seconds(value)
    if kind == "text":
        return clean_text(value, unit.limit)
    if isinstance(value, list | tuple):  # ids
        ids = [i for i in (clean_text(v, MAX_ID) for v in value[: unit.limit]) if i]
        return ids or None
    return None


def build_event(
    attributes: Mapping[str, Any],
    *,
    trace_id: int,
    span_id: int,
    start_ns: int,
    end_ns: int,
    ok: bool,
    unattributed_customer: str = "unattributed",
) -> dict[str, Any]:
    """The usage event of one finished span (any span following the GenAI conventions)."""
    a = attributes
    customer = clean_text(a.get(A.CUSTOMER_ID))
    attributed = customer is not None
    input_tokens = count(a.get(A.INPUT_TOKENS)) or 0
    output_tokens = count(a.get(A.OUTPUT_TOKENS)) or 0
    total = count(a.get(A.TOTAL_TOKENS))
    if total is None or total < input_tokens + output_tokens:
        total = input_tokens + output_tokens
    start_s, end_s = start_ns / 1e9, end_ns / 1e9
    ttfc = seconds(a.get(A.RESPONSE_TIME_TO_FIRST_CHUNK))
    error_type = clean_text(a.get(A.ERROR_TYPE), 128)
    status_code = count(a.get(A.HTTP_STATUS_CODE))
    metadata, units = _metadata_and_units(a)
    success = ok and error_type is None
    finish = a.get(A.RESPONSE_FINISH_REASONS)
    over = a.get(EXCEEDED_ATTRIBUTE)
    return {
        # --- the cmdrdata-openai format ---------------------------------------------------
        "customer_id": customer
        if attributed
        else (clean_text(unattributed_customer) or "unattributed"),
        "model": _first_text(a, A.RESPONSE_MODEL, A.REQUEST_MODEL) or "unknown",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": total,
        "provider": _first_text(a, A.PROVIDER_NAME, A.SYSTEM) or "openai",
        "metadata": metadata,
        "timestamp": int(end_s),
        "version": __version__,
        "latency": {
            "request_start_time": int(start_s),
            "request_end_time": int(end_s),
            "duration_ms": max(0, (end_ns - start_ns) // 1_000_000),
            "time_to_first_token_ms": int(ttfc * 1000) if ttfc is not None else None,
        },
        "error": {
            "occurred": not success,
            "type": error_type,
            "code": str(status_code) if status_code is not None else None,
            "message": None,  # error messages may quote the prompt: never sent
        },
        "request": {
            "id": clean_text(a.get(A.OPENAI_REQUEST_ID), 128),
            "streaming": a.get(A.REQUEST_STREAM) is True,
            "retry_count": count(a.get(A.HTTP_RESEND_COUNT)) or 0,
            "success": success,
        },
        # --- added by cmdrdata-autotrack (schema 1.0) --------------------------------------
        "event_id": event_id_override(a) or event_id_for(trace_id, span_id),
        "schema_version": SCHEMA_VERSION,
        "timestamp_ms": end_ns // 1_000_000,
        "operation": clean_text(a.get(A.OPERATION_NAME), 64),
        "endpoint": clean_text(a.get(A.OPENAI_API_TYPE), 64),
        "request_model": clean_text(a.get(A.REQUEST_MODEL)),
        "response_id": clean_text(a.get(A.RESPONSE_ID)),
        "cached_input_tokens": count(a.get(A.CACHE_READ_INPUT_TOKENS)) or 0,
        "reasoning_tokens": count(a.get(A.REASONING_OUTPUT_TOKENS)) or 0,
        "units": units,
        "service_tier": clean_text(a.get(A.OPENAI_RESPONSE_SERVICE_TIER), 64),
        "usage_estimated": a.get(A.USAGE_ESTIMATED) is True,
        # --- added in schema 1.1 ------------------------------------------------------------
        "usage_source": _usage_source(a, input_tokens, output_tokens),
        "usage_problem": _usage_problem(a),
        "metering_degraded": a.get(A.METERING_DEGRADED) is True,
        "finish_reasons": [r for r in (clean_text(x, 64) for x in finish) if r][:16]
        if isinstance(finish, list | tuple)
        else [],
        "attributed": attributed,
        "customer_source": clean_text(a.get(A.CUSTOMER_SOURCE), 16) if attributed else None,
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "server_address": clean_text(a.get(A.SERVER_ADDRESS)),
        # --- added in schema 1.2 ------------------------------------------------------------
        "limit_exceeded": [n for n in (clean_text(x, 64) for x in over) if n][:16]
        if isinstance(over, list | tuple)
        else [],
        "blocked": a.get(BLOCKED_ATTRIBUTE) is True,
        # --- added in schema 1.3 ------------------------------------------------------------
        KEY_SUFFIX_FIELD: clean_text(a.get(A.OPENAI_KEY_SUFFIX), 4),
        PROJECT_FIELD: clean_text(a.get(A.OPENAI_PROJECT_ID), 128),
    }
