"""What one call consumed, and what the response said about itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import attributes as A
from .units import BY_NAME, NAMES

# Why a call's usage is flagged: the response had no usage report although its endpoint
# reports one; it had one that is not valid (wrong type, negative, NaN, absurd, wrong shape);
# its body was not JSON at all (an HTML error page from a proxy, with status 200).
MISSING_USAGE = "missing_usage"
MALFORMED_USAGE = "malformed_usage"
NON_JSON_BODY = "non_json_body"
USAGE_PROBLEMS = (MISSING_USAGE, MALFORMED_USAGE, NON_JSON_BODY)


class Usage:
    """Billable units of one API call, by unit name. ``None`` means "not reported", never zero.

    The units are the rows of :mod:`.units`: ``Usage(input_tokens=17, web_search_calls=2)``,
    ``usage.input_tokens``, ``usage.image_count = 3``. Only the units that were reported are
    stored (:attr:`values`), so every operation costs what the call reported, not what the
    table holds.
    """

    __slots__ = ("estimated", "problem", "values")
    values: dict[str, Any]
    estimated: bool
    # Why the reported usage could not be taken as it is (see USAGE_PROBLEMS), or None.
    problem: str | None

    def __init__(self, *, estimated: bool = False, problem: str | None = None, **units: Any):
        values: dict[str, Any] = {}
        for name, value in units.items():
            if value is not None:
                if name not in NAMES:
                    raise TypeError(f"Usage has no unit {name!r} (see usage/units.py)")
                values[name] = value
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "estimated", estimated)
        object.__setattr__(self, "problem", problem)

    @classmethod
    def of(
        cls, values: dict[str, Any], *, estimated: bool = False, problem: str | None = None
    ) -> Usage:
        """A Usage holding ``values`` (unit name -> value, no ``None``), taken as they are."""
        usage = object.__new__(cls)
        object.__setattr__(usage, "values", values)
        object.__setattr__(usage, "estimated", estimated)
        object.__setattr__(usage, "problem", problem)
        return usage

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots: a unit not reported is None.
        if name in NAMES:
            return self.values.get(name)
        raise AttributeError(f"Usage has no unit {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in NAMES:
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = value
        elif name in Usage.__slots__:
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"Usage has no unit {name!r} (see usage/units.py)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return (self.values, self.estimated, self.problem) == (
            other.values,
            other.estimated,
            other.problem,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        parts = [f"{name}={value!r}" for name, value in self.values.items()]
        if self.estimated:
            parts.append("estimated=True")
        if self.problem is not None:
            parts.append(f"problem={self.problem!r}")
        return f"Usage({', '.join(parts)})"

    def is_empty(self) -> bool:
        """No unit reported, or only zero counts."""
        return all(value in (None, False) for value in self.values.values())

    def merge(self, other: Usage) -> None:
        """Fill the units this one lacks from ``other`` (which wins on conflicts)."""
        self.values.update(other.values)
        if other.problem is not None:
            object.__setattr__(self, "problem", other.problem)
        object.__setattr__(self, "estimated", self.estimated or other.estimated)

    def to_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {BY_NAME[name].attribute: v for name, v in self.values.items()}
        if self.estimated:
            attrs[A.USAGE_ESTIMATED] = True
        if self.problem is not None:
            attrs[A.USAGE_PROBLEM] = self.problem
        return attrs


@dataclass(slots=True)
class ResponseInfo:
    """Descriptive facts of a response: which model answered, with which id, and why it stopped."""

    model: str | None = None
    id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    service_tier: str | None = None
    system_fingerprint: str | None = None

    def merge(self, other: ResponseInfo) -> None:
        self.model = other.model or self.model
        self.id = other.id or self.id
        self.service_tier = other.service_tier or self.service_tier
        self.system_fingerprint = other.system_fingerprint or self.system_fingerprint
        if other.finish_reasons:
            self.finish_reasons = other.finish_reasons

    def to_attributes(self) -> dict[str, str | list[str]]:
        attrs: dict[str, str | list[str]] = {}
        if self.model:
            attrs[A.RESPONSE_MODEL] = self.model
        if self.id:
            attrs[A.RESPONSE_ID] = self.id
        if self.finish_reasons:
            attrs[A.RESPONSE_FINISH_REASONS] = list(self.finish_reasons)
        if self.service_tier:
            attrs[A.OPENAI_RESPONSE_SERVICE_TIER] = self.service_tier
        if self.system_fingerprint:
            attrs[A.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] = self.system_fingerprint
        return attrs
