"""Resolve the customer of one call, in order: argument, context, baggage, process default."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
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
_MAX_ITEMS = MAX_METADATA_VALUE // 2  # items of a container that can show in 1024 characters
# Containers deeper or larger than this are left out before any encoder recurses into
# them: near the interpreter's recursion limit, a finalizer the GC runs on the app's
# thread (an unclosed event loop's, say) would fail with RecursionError of its own.
_MAX_DEPTH = 64
_MAX_NODES = 4096


def plain_str(value: str) -> str:
    """``value`` as an exact ``str``: a subclass's own methods (``__len__``...) are never run."""
    return value if type(value) is str else str.__str__(value)


def _problem(value: object) -> tuple[str, str] | None:
    """``(kind, message)`` of why ``value`` is not a valid customer id, or ``None``."""
    if not isinstance(value, str):
        return "type", f"customer id must be a string, got {type(value).__name__}"
    value = plain_str(value)
    if not value:
        return "empty", "customer id is empty"
    if len(value) > MAX_CUSTOMER_ID_LENGTH:
        return "length", (
            f"customer id is {len(value)} characters long (at most {MAX_CUSTOMER_ID_LENGTH})"
        )
    if not value.isprintable():
        return "unprintable", "customer id contains non-printable characters"
    return None


def customer_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid customer id, or ``None`` when it is one."""
    problem = _problem(value)
    return problem[1] if problem is not None else None


@dataclass(frozen=True, slots=True)
class Attribution:
    customer_id: str | None
    source: str | None  # argument | context | baggage | env
    metadata: Mapping[str, Any]
    problem: str | None = None
    metadata_dropped: bool = False  # some metadata could not be read and was left out

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
    """A span-attribute-safe scalar: scalars as they are, anything else as bounded JSON.

    Raises when ``value`` cannot be represented at all (its ``repr`` fails, or it nests
    too deep for any encoder); the caller drops it.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        number = int.__int__(value)  # a subclass's own arithmetic is never run
        return number if abs(number) < 2**63 else str(number)
    if isinstance(value, float):
        real = float.__float__(value)
        return real if math.isfinite(real) else str(real)
    if isinstance(value, str):
        out = plain_str(value)
    else:
        # Only the first 1024 characters are kept: a huge container is not encoded whole.
        if isinstance(value, list | tuple) and len(value) > _MAX_ITEMS:
            value = value[:_MAX_ITEMS]
        elif isinstance(value, dict) and len(value) > _MAX_ITEMS:
            value = dict(itertools.islice(value.items(), _MAX_ITEMS))
        _check_shape(value)
        try:
            out = json.dumps(value, default=repr, sort_keys=True, ensure_ascii=False)
        except Exception:  # unsortable keys, a raising repr inside, too deep
            out = repr(value)
            if not isinstance(out, str):
                raise TypeError("repr() did not return a string") from None
            out = plain_str(out)
    return out[:MAX_METADATA_VALUE]


def _check_shape(value: Any) -> None:
    """Raise ``ValueError`` for a container nested deeper than ``_MAX_DEPTH`` or holding
    more than ``_MAX_NODES`` containers and items, walked without recursion. A container
    met twice (a cycle) is walked once: the encoders report the cycle themselves."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    walked: set[int] = set()
    seen = 0
    while stack:
        node, depth = stack.pop()
        if id(node) in walked:
            continue
        children: Iterable[Any]
        # Subclasses too (an OrderedDict, a defaultdict), read through the base type's own
        # methods, so a subclass's overrides are never run.
        if isinstance(node, dict):
            count, children = dict.__len__(node), dict.values(node)
        elif isinstance(node, list):
            count, children = list.__len__(node), list.__iter__(node)
        elif isinstance(node, tuple):
            count, children = tuple.__len__(node), tuple.__iter__(node)
        else:
            continue
        if depth >= _MAX_DEPTH:
            raise ValueError(f"metadata value nested over {_MAX_DEPTH} levels deep")
        walked.add(id(node))
        seen += count
        if seen > _MAX_NODES:
            raise ValueError(f"metadata value holds over {_MAX_NODES} items")
        stack.extend((child, depth + 1) for child in children)


def _metadata_key(key: Any) -> str:
    text = plain_str(key) if isinstance(key, str) else str(key)
    if not isinstance(text, str):
        raise TypeError("str() did not return a string")
    return "".join(c for c in plain_str(text)[:512] if c.isprintable())[:128]


def _clean_metadata(sources: tuple[Mapping[str, Any] | None, ...]) -> tuple[dict[str, Any], int]:
    """Merged, bounded metadata and how many entries could not be read (left out)."""
    merged: dict[str, Any] = {}
    dropped = 0
    for source in sources:
        if source is None:
            continue
        if not isinstance(source, Mapping):
            warn_once(
                "metadata-type",
                "tracking_metadata must be a mapping, got %s; ignored",
                type(source).__name__,
            )
            dropped += 1
            continue
        try:
            for key, value in source.items():
                if len(merged) >= MAX_METADATA_KEYS:
                    warn_once(
                        "metadata-keys",
                        "tracking metadata has over %d keys; rest ignored",
                        MAX_METADATA_KEYS,
                    )
                    break
                try:
                    name = _metadata_key(key)
                    if name:
                        merged[name] = metadata_value(value)
                except Exception:  # RecursionError included: a value nested too deep
                    dropped += 1
        except Exception:  # a mapping that cannot be iterated: keep what was read
            dropped += 1
    if dropped:
        metrics.increment("metadata_dropped", dropped)
        warn_once(
            "metadata-unreadable",
            "cmdrdata: some tracking metadata cannot be recorded (not a mapping, a str/repr "
            "that fails, nested too deep); it is left out and the call metered without it",
        )
    return merged, dropped


def clean_metadata(*sources: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge metadata mappings (later wins) into bounded, attribute-safe key/values."""
    return _clean_metadata(sources)[0]


def resolve(
    argument: Any = None,
    tracking_metadata: Mapping[str, Any] | None = None,
    default_customer: str | None = None,
) -> Attribution:
    """Who the call belongs to. Invalid ids are reported, never used, never guessed around.

    Never raises: odd metadata is left out (counted in ``metadata_dropped``), an odd
    customer id makes the call unattributed with the reason.
    """
    scope = current_scope()
    metadata, dropped = _clean_metadata((scope.metadata if scope else None, tracking_metadata))
    candidate: Any = None
    source: str | None = None
    if argument is not None:
        candidate, source = argument, "argument"
    elif scope is not None and scope.customer_id is not None:
        candidate, source = scope.customer_id, "context"
    else:
        try:
            from_baggage = baggage.get_baggage(A.BAGGAGE_CUSTOMER_ID)
        except Exception:
            from_baggage = None
        if from_baggage is not None:
            candidate, source = from_baggage, "baggage"
        elif default_customer is not None:
            candidate, source = default_customer, "env"
    if candidate is None:
        metrics.increment("calls_unattributed")
        return Attribution(None, None, metadata, metadata_dropped=bool(dropped))
    problem = _problem(candidate)
    if problem is not None:
        kind, message = problem
        metrics.increment("calls_unattributed")
        metrics.increment("customer_id_invalid")
        # One warning per problem; lengths vary without end, so they share one.
        warn_once(
            f"customer:length:{source}" if kind == "length" else f"customer:{message}",
            "cmdrdata: %s (from %s); the call is metered as unattributed",
            message,
            source,
        )
        return Attribution(None, source, metadata, message, bool(dropped))
    return Attribution(plain_str(candidate), source, metadata, metadata_dropped=bool(dropped))
