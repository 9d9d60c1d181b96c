"""Pure functions that read billable usage out of WebSocket server events.

The Realtime API reports a response's usage in its ``response.done`` event and a
transcription's in ``conversation.item.input_audio_transcription.completed``; the
Responses API over a WebSocket reports it as over HTTP, in ``response.completed``
(``.incomplete``, ``.failed``). Events are plain JSON (dicts), as they came off the
socket. As in :mod:`.extract`, nothing here raises: a count that is absent is
"not reported" (``None``), and a usage report that is there but not valid is
marked ``malformed_usage`` (its valid counts are kept), one that is absent
``missing_usage``: flagged, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .extract import extract_responses, is_record, usage_from_io_tokens
from .fields import count, field, text
from .model import MALFORMED_USAGE, MISSING_USAGE, ResponseInfo, Usage
from .units import NAMES

# The server events that carry billable usage, by protocol.
RESPONSE_DONE = "response.done"
TRANSCRIPTION_COMPLETED = "conversation.item.input_audio_transcription.completed"
RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Cached input by modality (each priced apart): units of the table once it has rows for them,
# span attributes of these names until then.
CACHED_BY_MODALITY = tuple(
    (f"cached_input_{modality}_tokens", f"cmdrdata.usage.cached_input_{modality}_tokens", modality)
    for modality in ("text", "audio", "image")
)


class _Counts:
    """Reads the counts of one usage object, noting any that are present but invalid."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad = False

    def part(self, obj: Any, name: str) -> Any:
        value = field(obj, name)
        if value is not None and not is_record(value):
            self.bad = True
            return None
        return value

    def count(self, obj: Any, name: str) -> int | None:
        value = field(obj, name)
        if value is None:
            return None
        number = count(value)
        if number is None:
            self.bad = True
        return number


def realtime_usage(usage: Any) -> Usage:
    """A Realtime ``response.usage``: totals, and input and output split by modality.

    ``input_tokens`` includes the cached ones, and ``input_token_details`` breaks both
    down by text, audio and image (``cached_tokens_details``); output is text and audio.
    """
    if usage is None:
        return Usage(problem=MISSING_USAGE)
    if not is_record(usage):
        return Usage(problem=MALFORMED_USAGE)
    r = _Counts()
    inp = r.part(usage, "input_token_details")
    cached = r.part(inp, "cached_tokens_details")
    out = r.part(usage, "output_token_details")
    result = Usage(
        input_tokens=r.count(usage, "input_tokens"),
        output_tokens=r.count(usage, "output_tokens"),
        total_tokens=r.count(usage, "total_tokens"),
        cached_input_tokens=r.count(inp, "cached_tokens"),
        input_text_tokens=r.count(inp, "text_tokens"),
        input_audio_tokens=r.count(inp, "audio_tokens"),
        input_image_tokens=r.count(inp, "image_tokens"),
        output_text_tokens=r.count(out, "text_tokens"),
        output_audio_tokens=r.count(out, "audio_tokens"),
    )
    for name, _, modality in CACHED_BY_MODALITY:
        value = r.count(cached, f"{modality}_tokens")
        if name in NAMES:
            setattr(result, name, value)
    if r.bad or result.input_tokens is None or result.output_tokens is None:
        result.problem = MALFORMED_USAGE
    return result


def cached_by_modality(usage: Any) -> dict[str, int]:
    """Span attributes of the cached input by modality that the units table has no rows for."""
    cached = field(field(usage, "input_token_details"), "cached_tokens_details")
    attrs: dict[str, int] = {}
    for name, attribute, modality in CACHED_BY_MODALITY:
        value = count(field(cached, f"{modality}_tokens")) if is_record(cached) else None
        if value is not None and name not in NAMES:
            attrs[attribute] = value
    return attrs


def realtime_finish_reasons(response: Any) -> list[str]:
    """``completed`` is ``stop``; otherwise the status's reason (``turn_detected``...)."""
    status = text(field(response, "status"), 64)
    if status is None or status == "in_progress":
        return []
    if status == "completed":
        return ["stop"]
    if status == "failed":
        return ["error"]
    reason = text(field(field(response, "status_details"), "reason"), 64)
    return [reason or status]


def extract_response_done(event: Mapping[str, Any]) -> tuple[Usage, ResponseInfo, dict[str, int]]:
    """The usage, facts and cached-by-modality attributes of a Realtime ``response.done``.

    There is always a usage, maybe flagged: a ``response.done`` is a billed response.
    """
    response = event.get("response")
    if not isinstance(response, Mapping):
        return Usage(problem=MALFORMED_USAGE), ResponseInfo(), {}
    info = ResponseInfo(
        id=text(response.get("id")), finish_reasons=realtime_finish_reasons(response)
    )
    usage = response.get("usage")
    return realtime_usage(usage), info, cached_by_modality(usage)


def extract_transcription(event: Mapping[str, Any]) -> Usage:
    """A transcription's usage: tokens (``type: tokens``) or audio seconds (``duration``)."""
    usage = usage_from_io_tokens(event.get("usage"))
    return usage if usage is not None else Usage(problem=MISSING_USAGE)


def extract_responses_final(event: Mapping[str, Any]) -> tuple[Usage, ResponseInfo]:
    """The usage and facts of a Responses ``response.completed`` (``.incomplete``, ``.failed``)."""
    response = event.get("response")
    if not isinstance(response, Mapping):
        return Usage(problem=MALFORMED_USAGE), ResponseInfo()
    usage, info = extract_responses(response)
    return (usage if usage is not None else Usage(problem=MISSING_USAGE)), info


def session_facts(session: Any) -> tuple[str | None, str | None, str | None]:
    """``(session id, model, transcription model)`` of a ``session`` object (GA or beta)."""
    transcription = field(field(field(session, "audio"), "input"), "transcription")
    if transcription is None:  # the beta protocol
        transcription = field(session, "input_audio_transcription")
    return (
        text(field(session, "id")),
        text(field(session, "model")),
        text(field(transcription, "model")),
    )
