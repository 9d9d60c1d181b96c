"""What one call consumed, and what the response said about itself."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from . import attributes as A

# Billable units beyond the common token counts, and the span attribute of each
# (the usage event's ``units`` use the same names).
UNIT_COUNTERS: tuple[tuple[str, str], ...] = (
    ("input_audio_tokens", A.INPUT_AUDIO_TOKENS),
    ("input_text_tokens", A.INPUT_TEXT_TOKENS),
    ("input_image_tokens", A.INPUT_IMAGE_TOKENS),
    ("output_audio_tokens", A.OUTPUT_AUDIO_TOKENS),
    ("output_image_tokens", A.OUTPUT_IMAGE_TOKENS),
    ("accepted_prediction_tokens", A.ACCEPTED_PREDICTION_TOKENS),
    ("rejected_prediction_tokens", A.REJECTED_PREDICTION_TOKENS),
    ("image_count", A.IMAGE_COUNT),
    ("input_characters", A.INPUT_CHARACTERS),
)
# Every billable counter and the span attribute it is written to.
_COUNTER_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("input_tokens", A.INPUT_TOKENS),
    ("output_tokens", A.OUTPUT_TOKENS),
    ("total_tokens", A.TOTAL_TOKENS),
    ("cached_input_tokens", A.CACHE_READ_INPUT_TOKENS),
    ("reasoning_tokens", A.REASONING_OUTPUT_TOKENS),
    *UNIT_COUNTERS,
)


# Why a call's usage is flagged: the response had no usage report although its endpoint
# reports one; it had one that is not valid (wrong type, negative, NaN, absurd, wrong shape);
# its body was not JSON at all (an HTML error page from a proxy, with status 200).
MISSING_USAGE = "missing_usage"
MALFORMED_USAGE = "malformed_usage"
NON_JSON_BODY = "non_json_body"
USAGE_PROBLEMS = (MISSING_USAGE, MALFORMED_USAGE, NON_JSON_BODY)
_FLAGS = frozenset({"estimated", "problem"})


@dataclass(slots=True)
class Usage:
    """Billable units of one API call. ``None`` means "not reported", never zero."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    input_text_tokens: int | None = None
    input_image_tokens: int | None = None
    output_audio_tokens: int | None = None
    output_image_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    image_count: int | None = None
    image_size: str | None = None
    image_quality: str | None = None
    audio_seconds: float | None = None
    input_characters: int | None = None
    estimated: bool = False
    # Why the reported usage could not be taken as it is (see USAGE_PROBLEMS), or None.
    problem: str | None = None

    def is_empty(self) -> bool:
        return all(
            getattr(self, f.name) in (None, False) for f in fields(self) if f.name not in _FLAGS
        )

    def merge(self, other: Usage) -> None:
        """Fill the units this one lacks from ``other`` (which wins on conflicts)."""
        for f in fields(self):
            value = getattr(other, f.name)
            if value is not None and f.name != "estimated":
                setattr(self, f.name, value)
        self.estimated = self.estimated or other.estimated

    def to_attributes(self) -> dict[str, int | float | str | bool]:
        attrs: dict[str, int | float | str | bool] = {}
        for name, key in _COUNTER_ATTRIBUTES:
            value = getattr(self, name)
            if value is not None:
                attrs[key] = value
        if self.audio_seconds is not None:
            attrs[A.AUDIO_SECONDS] = self.audio_seconds
        if self.image_size is not None:
            attrs[A.IMAGE_SIZE] = self.image_size
        if self.image_quality is not None:
            attrs[A.IMAGE_QUALITY] = self.image_quality
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
