"""The units both sides are counted in, and OpenAI's usage endpoints that report them.

Each of OpenAI's usage endpoints reports a few units of one kind of call; the
agent's usage events are mapped onto the same endpoints (by their operation) so
that a unit is only ever compared with the same unit: the requests, text tokens
and audio tokens of completions, the images of the images endpoint, and so on.

OpenAI's ``input_tokens`` and ``output_tokens`` of completions are *text* tokens
(cached ones included in input); audio tokens are reported apart. The API's own
usage report (what the agent meters) counts audio tokens inside the prompt and
completion totals, so the agent's audio tokens are taken out of its text counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The units compared, in the order they are shown.
UNITS: tuple[str, ...] = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "audio_tokens",
    "images",
    "characters",
    "seconds",
    "sessions",
)
UNIT_LABELS: dict[str, str] = {
    "requests": "requests",
    "input_tokens": "input tokens",
    "cached_input_tokens": "cached input tokens",
    "output_tokens": "output tokens",
    "audio_tokens": "audio tokens",
    "images": "images",
    "characters": "speech characters",
    "seconds": "transcribed seconds",
    "sessions": "code interpreter sessions",
    "cost": "cost",
}

# What a result can be grouped by, beyond the model (the Usage API's group_by names).
DIMENSIONS: tuple[str, ...] = ("project_id", "api_key_id", "batch", "service_tier")
DIMENSION_ALIASES: dict[str, str] = {
    "project": "project_id",
    "project_id": "project_id",
    "key": "api_key_id",
    "api_key": "api_key_id",
    "api_key_id": "api_key_id",
    "batch": "batch",
    "tier": "service_tier",
    "service_tier": "service_tier",
}


@dataclass
class Units:
    """Amounts of every unit (zero when not used)."""

    requests: float = 0
    input_tokens: float = 0
    cached_input_tokens: float = 0
    output_tokens: float = 0
    audio_tokens: float = 0
    images: float = 0
    characters: float = 0
    seconds: float = 0
    sessions: float = 0

    def add(self, other: Units) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def get(self, unit: str) -> float:
        value: float = getattr(self, unit)
        return value

    def is_zero(self) -> bool:
        return all(getattr(self, f.name) == 0 for f in fields(self))

    def to_dict(self) -> dict[str, int | float]:
        return {f.name: number(getattr(self, f.name)) for f in fields(self)}


def number(value: float) -> int | float:
    """An integral amount as an int (JSON and CSV read ``12``, not ``12.0``)."""
    if float(value).is_integer():
        return int(value)
    return round(value, 6)


@dataclass(frozen=True)
class UsageEndpoint:
    """One of ``GET /v1/organization/usage/{name}``: what it reports and can be grouped by."""

    name: str
    group_fields: tuple[str, ...]  # accepted in group_by
    # unit -> the result fields summed into it
    unit_fields: tuple[tuple[str, tuple[str, ...]], ...]
    by_model: bool = True

    @property
    def result_object(self) -> str:
        return f"organization.usage.{self.name}.result"

    def dimensions(self) -> tuple[str, ...]:
        return tuple(d for d in DIMENSIONS if d in self.group_fields)


_PER_CALL = ("project_id", "user_id", "api_key_id", "model")
ENDPOINTS: tuple[UsageEndpoint, ...] = (
    UsageEndpoint(
        "completions",
        (*_PER_CALL, "batch", "service_tier"),
        (
            ("requests", ("num_model_requests",)),
            ("input_tokens", ("input_tokens",)),
            ("cached_input_tokens", ("input_cached_tokens",)),
            ("output_tokens", ("output_tokens",)),
            ("audio_tokens", ("input_audio_tokens", "output_audio_tokens")),
        ),
    ),
    UsageEndpoint(
        "embeddings",
        _PER_CALL,
        (("requests", ("num_model_requests",)), ("input_tokens", ("input_tokens",))),
    ),
    UsageEndpoint(
        "moderations",
        _PER_CALL,
        (("requests", ("num_model_requests",)), ("input_tokens", ("input_tokens",))),
    ),
    UsageEndpoint(
        "images",
        (*_PER_CALL, "size", "source"),
        (("requests", ("num_model_requests",)), ("images", ("images",))),
    ),
    UsageEndpoint(
        "audio_speeches",
        _PER_CALL,
        (("requests", ("num_model_requests",)), ("characters", ("characters",))),
    ),
    UsageEndpoint(
        "audio_transcriptions",
        _PER_CALL,
        (("requests", ("num_model_requests",)), ("seconds", ("seconds",))),
    ),
    UsageEndpoint(
        "code_interpreter_sessions",
        ("project_id",),
        (("sessions", ("num_sessions",)),),
        by_model=False,
    ),
    # Storage, not calls: shown for information, never compared (the agent meters calls).
    UsageEndpoint("vector_stores", ("project_id",), (), by_model=False),
)
ENDPOINTS_BY_NAME: dict[str, UsageEndpoint] = {e.name: e for e in ENDPOINTS}

# The agent's operations (gen_ai.operation.name) and the usage endpoint that bills them.
OPERATION_ENDPOINTS: dict[str, str] = {
    "chat": "completions",
    "text_completion": "completions",
    "embeddings": "embeddings",
    "moderation": "moderations",
    "image_generation": "images",
    "image_edit": "images",
    "image_variation": "images",
    "audio_speech": "audio_speeches",
    "audio_transcription": "audio_transcriptions",
    "audio_translation": "audio_transcriptions",
}
# The same from the event's ``endpoint`` (openai.api.type), for events without an operation.
API_TYPE_ENDPOINTS: dict[str, str] = {
    "chat_completions": "completions",
    "responses": "completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "moderations": "moderations",
    "images": "images",
}

Key = tuple[str | bool | None, ...]  # the values of the grouped dimensions, in DIMENSIONS order


@dataclass
class UsageRecord:
    """One result of one bucket of the Usage API."""

    endpoint: str
    start: int
    end: int
    model: str | None
    dims: dict[str, str | bool | None] = field(default_factory=dict)
    units: Units = field(default_factory=Units)
    storage_bytes: int | None = None  # vector stores only


@dataclass
class CostRecord:
    """One result of one (daily) bucket of the Costs API."""

    start: int
    end: int
    amount: float
    currency: str
    line_item: str | None
    project_id: str | None
    api_key_id: str | None

    @property
    def model(self) -> str | None:
        """The model a line item bills (``"gpt-4o-mini-2024-07-18, input"``), if it names one."""
        if not self.line_item:
            return None
        head, sep, _ = self.line_item.partition(",")
        return head.strip().lower() if sep else self.line_item.strip().lower()
