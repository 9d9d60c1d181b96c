"""Resolve the customer of one call, in order: argument, context, baggage, process default."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage

from ..telemetry import metrics
from ..telemetry.logging import warn_once
from ..usage import attributes as A
from .context import current_scope

MAX_CUSTOMER_ID_LENGTH = 256
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 1024


def customer_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid customer id, or ``None`` when it is one."""
    if not isinstance(value, str):
        return f"customer id must be a string, got {type(value).__name__}"
    if not value:
        return "customer id is empty"
    if len(value) > MAX_CUSTOMER_ID_LENGTH:
        return f"customer id is {len(value)} characters long (at most {MAX_CUSTOMER_ID_LENGTH})"
    if not value.isprintable():
        return "customer id contains non-printable characters"
    return None


@dataclass(frozen=True, slots=True)
class Attribution:
    customer_id: str | None
    source: str | None  # argument | context | baggage | env
    metadata: Mapping[str, Any]
    problem: str | None = None

    def to_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.customer_id is not None:
            attrs[A.CUSTOMER_ID] = self.customer_id
            attrs[A.CUSTOMER_SOURCE] = self.source
        else:
            attrs[A.UNATTRIBUTED] = True
            if self.problem:
                attrs[A.CUSTOMER_PROBLEM] = self.problem
        for key, value in self.metadata.items():
            attrs[A.METADATA_PREFIX + key] = value
        return attrs


def metadata_value(value: Any) -> str | int | float | bool:
    """A span-attribute-safe scalar: scalars as they are, anything else as bounded JSON."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        out = value
    else:
        try:
            out = json.dumps(value, default=repr, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            out = repr(value)
    return out[:MAX_METADATA_VALUE]


def clean_metadata(*sources: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge metadata mappings (later wins) into bounded, attribute-safe key/values."""
    merged: dict[str, Any] = {}
    for source in sources:
        if not source:
            continue
        if not isinstance(source, Mapping):
            warn_once(
                "metadata-type",
                "tracking_metadata must be a mapping, got %s; ignored",
                type(source).__name__,
            )
            continue
        for key, value in source.items():
            if len(merged) >= MAX_METADATA_KEYS:
                warn_once(
                    "metadata-keys",
                    "tracking metadata has over %d keys; rest ignored",
                    MAX_METADATA_KEYS,
                )
                return merged
            name = "".join(c for c in str(key) if c.isprintable())[:128]
            if name:
                merged[name] = metadata_value(value)
    return merged


def resolve(
    argument: Any = None,
    tracking_metadata: Mapping[str, Any] | None = None,
    default_customer: str | None = None,
) -> Attribution:
    """Who the call belongs to. Invalid ids are reported, never used, never guessed around."""
    scope = current_scope()
    metadata = clean_metadata(scope.metadata if scope else None, tracking_metadata)
    candidate: Any = None
    source: str | None = None
    if argument is not None:
        candidate, source = argument, "argument"
    elif scope is not None and scope.customer_id is not None:
        candidate, source = scope.customer_id, "context"
    else:
        from_baggage = baggage.get_baggage(A.BAGGAGE_CUSTOMER_ID)
        if from_baggage is not None:
            candidate, source = from_baggage, "baggage"
        elif default_customer is not None:
            candidate, source = default_customer, "env"
    if candidate is None:
        metrics.increment("calls_unattributed")
        return Attribution(None, None, metadata)
    problem = customer_id_problem(candidate)
    if problem is not None:
        metrics.increment("calls_unattributed")
        metrics.increment("customer_id_invalid")
        warn_once(
            "customer:" + problem,
            "cmdrdata: %s (from %s); the call is metered as unattributed",
            problem,
            source,
        )
        return Attribution(None, source, metadata, problem)
    return Attribution(candidate, source, metadata)
