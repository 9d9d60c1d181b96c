"""Pure functions that read billable usage out of OpenAI responses.

Every function takes a response as the SDK parsed it (a pydantic model) *or* as
plain JSON (a dict), so the same code serves parsed results, raw HTTP bodies and
server-sent events. None of them raises on an unexpected shape: a missing or
malformed field is "not reported" (``None``), never zero, and a usage object that
is there but malformed is marked so (``Usage.problem``) for the caller to flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .model import MALFORMED_USAGE, ResponseInfo, Usage

# Counts beyond this are not usage but garbage (2**40 tokens is ~1 TB of text).
MAX_COUNT = 2**40


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` for objects; ``None`` when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def count(value: Any) -> int | None:
    """A non-negative integer count, or ``None`` for anything else (bools, NaN, negatives)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return count(int(value))
    return None


def seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= MAX_COUNT else None


def text(value: Any, limit: int = 256) -> str | None:
    if isinstance(value, str) and value:
        return value[:limit]
    return None


# --- usage objects ----------------------------------------------------------------------
#
# A usage object that is present is checked: a count that is there but not a sane
# non-negative integer, a part of the wrong type, or a usage object without the counts its
# endpoint always reports makes it ``malformed_usage`` (the valid counts are kept). Details
# that are simply not there (no ``completion_tokens_details``) are "not reported": fine.

_NOT_RECORDS = (str, bytes, bytearray, int, float, list, tuple, set, frozenset)


def is_record(obj: Any) -> bool:
    """A JSON object or an SDK model, as opposed to a scalar or a list."""
    return isinstance(obj, Mapping) or not isinstance(obj, _NOT_RECORDS)


class _Reader:
    """Reads the counts of one usage object, noting any that are present but invalid."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad = False

    def part(self, obj: Any, *names: str) -> Any:
        """The first present sub-object ``names`` of ``obj``; a non-object is malformed."""
        for name in names:
            value = field(obj, name)
            if value is not None:
                if is_record(value):
                    return value
                self.bad = True
        return None

    def count(self, obj: Any, name: str) -> int | None:
        value = field(obj, name)
        if value is None:
            return None
        number = count(value)
        if number is None:
            self.bad = True
        return number

    def seconds(self, obj: Any, name: str) -> float | None:
        value = field(obj, name)
        if value is None:
            return None
        number = seconds(value)
        if number is None:
            self.bad = True
        return number

    def finish(self, usage: Usage, *required: int | float | None) -> Usage:
        if self.bad or any(value is None for value in required):
            usage.problem = MALFORMED_USAGE
        return usage


def _malformed() -> Usage:
    return Usage(problem=MALFORMED_USAGE)


def usage_from_completion_tokens(usage: Any) -> Usage | None:
    """Chat and legacy completions: ``prompt_tokens`` / ``completion_tokens`` and details."""
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    r = _Reader()
    prompt = r.part(usage, "prompt_tokens_details")
    completion = r.part(usage, "completion_tokens_details")
    result = Usage(
        input_tokens=r.count(usage, "prompt_tokens"),
        output_tokens=r.count(usage, "completion_tokens"),
        total_tokens=r.count(usage, "total_tokens"),
        cached_input_tokens=r.count(prompt, "cached_tokens"),
        input_audio_tokens=r.count(prompt, "audio_tokens"),
        reasoning_tokens=r.count(completion, "reasoning_tokens"),
        output_audio_tokens=r.count(completion, "audio_tokens"),
        accepted_prediction_tokens=r.count(completion, "accepted_prediction_tokens"),
        rejected_prediction_tokens=r.count(completion, "rejected_prediction_tokens"),
    )
    return r.finish(result, result.input_tokens, result.output_tokens)


def usage_from_io_tokens(usage: Any) -> Usage | None:
    """Responses, images and transcriptions: ``input_tokens`` / ``output_tokens`` and details."""
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    r = _Reader()
    if field(usage, "type") == "duration":
        result = Usage(audio_seconds=r.seconds(usage, "seconds"))
        return r.finish(result, result.audio_seconds)
    # Responses and images say input_tokens_details; transcriptions say input_token_details.
    inp = r.part(usage, "input_tokens_details", "input_token_details")
    out = r.part(usage, "output_tokens_details", "output_token_details")
    result = Usage(
        input_tokens=r.count(usage, "input_tokens"),
        output_tokens=r.count(usage, "output_tokens"),
        total_tokens=r.count(usage, "total_tokens"),
        cached_input_tokens=r.count(inp, "cached_tokens"),
        input_text_tokens=r.count(inp, "text_tokens"),
        input_image_tokens=r.count(inp, "image_tokens"),
        input_audio_tokens=r.count(inp, "audio_tokens"),
        reasoning_tokens=r.count(out, "reasoning_tokens"),
        output_image_tokens=r.count(out, "image_tokens"),
    )
    return r.finish(result, result.input_tokens, result.output_tokens)


def usage_from_embedding_tokens(usage: Any) -> Usage | None:
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    r = _Reader()
    result = Usage(
        input_tokens=r.count(usage, "prompt_tokens"),
        total_tokens=r.count(usage, "total_tokens"),
    )
    return r.finish(result, result.input_tokens)


# --- whole responses --------------------------------------------------------------------


def _choices_finish_reasons(response: Any) -> list[str]:
    reasons: list[str] = []
    choices = field(response, "choices")
    if isinstance(choices, list | tuple):
        for choice in choices:
            reason = text(field(choice, "finish_reason"), 64)
            if reason:
                reasons.append(reason)
    return reasons


def _info(response: Any, finish_reasons: list[str] | None = None) -> ResponseInfo:
    return ResponseInfo(
        model=text(field(response, "model")),
        id=text(field(response, "id")),
        finish_reasons=finish_reasons or [],
        service_tier=text(field(response, "service_tier"), 64),
        system_fingerprint=text(field(response, "system_fingerprint"), 128),
    )


Extracted = tuple[Usage | None, ResponseInfo]


def extract_chat(response: Any) -> Extracted:
    """``chat.completion`` and ``text_completion`` objects (and their stream chunks)."""
    usage = usage_from_completion_tokens(field(response, "usage"))
    return usage, _info(response, _choices_finish_reasons(response))


def responses_finish_reasons(response: Any) -> list[str]:
    status = field(response, "status")
    if status == "incomplete":
        reason = text(field(field(response, "incomplete_details"), "reason"), 64)
        return [reason or "incomplete"]
    if status == "failed":
        return ["error"]
    if status != "completed":
        return []
    output = field(response, "output")
    if isinstance(output, list | tuple) and any(
        field(item, "type") == "function_call" for item in output
    ):
        return ["tool_calls"]
    return ["stop"]


def extract_responses(response: Any) -> Extracted:
    """Responses API ``response`` objects."""
    usage = usage_from_io_tokens(field(response, "usage"))
    return usage, _info(response, responses_finish_reasons(response))


def extract_embeddings(response: Any) -> Extracted:
    return usage_from_embedding_tokens(field(response, "usage")), _info(response)


def extract_images(response: Any) -> Extracted:
    usage = usage_from_io_tokens(field(response, "usage")) or Usage()
    data = field(response, "data")
    if isinstance(data, list | tuple):
        usage.image_count = len(data)
    usage.image_size = text(field(response, "size"), 32)
    usage.image_quality = text(field(response, "quality"), 32)
    return usage, _info(response)


def extract_audio_text(response: Any) -> Extracted:
    """Transcriptions and translations: token usage, duration usage, or a verbose duration."""
    usage = usage_from_io_tokens(field(response, "usage"))
    if usage is None or usage.is_empty():
        duration = seconds(field(response, "duration"))
        if duration is not None:
            usage = Usage(audio_seconds=duration, problem=usage.problem if usage else None)
    return usage, _info(response)


def extract_moderation(response: Any) -> Extracted:
    return None, _info(response)


def extract_nothing(response: Any) -> Extracted:
    return None, ResponseInfo()


Extractor = Callable[[Any], Extracted]

# Families whose every successful response reports token usage: a response without it is
# flagged (``missing_usage``) and estimated. The others legitimately may carry none:
# moderations, speech, DALL-E images and variations, whisper's text formats.
REPORTS_USAGE = frozenset({"chat", "completions", "responses", "embeddings"})


def extract_stream_event(family: str, event: Mapping[str, Any]) -> Extracted:
    """Usage and facts carried by one server-sent event of a stream of ``family``."""
    inner = event.get("response")
    if isinstance(inner, Mapping):  # response.created / .completed / .incomplete / .failed
        usage, info = extract_responses(inner)
        return usage, info
    if family in ("chat", "completions"):
        return extract_chat(event)
    if family == "images":  # image_generation.completed / image_edit.completed
        usage = usage_from_io_tokens(event.get("usage"))
        if usage is not None:
            usage.image_count = 1
            usage.image_size = text(event.get("size"), 32)
            usage.image_quality = text(event.get("quality"), 32)
        return usage, ResponseInfo()
    return usage_from_io_tokens(event.get("usage")), ResponseInfo()
