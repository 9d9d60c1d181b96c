"""Pure functions that read billable usage out of OpenAI responses.

Every function takes a response as the SDK parsed it (a pydantic model) *or* as
plain JSON (a dict), so the same code serves parsed results, raw HTTP bodies and
server-sent events. None of them raises on an unexpected shape: a missing or
malformed field is "not reported" (``None``), never zero, and a usage object that
is there but malformed is marked so (``Usage.problem``) for the caller to flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .estimate import estimate_audio_seconds
from .fields import MAX_COUNT as MAX_COUNT
from .fields import as_fields
from .fields import count as count
from .fields import field as field
from .fields import seconds as seconds
from .fields import text as text
from .model import MALFORMED_USAGE, ResponseInfo, Usage
from .units import TOOL_COUNTERS

# --- usage objects ----------------------------------------------------------------------
#
# A usage object that is present is checked: a count that is there but not a sane
# non-negative integer, a part of the wrong type, or a usage object without the counts its
# endpoint always reports makes it ``malformed_usage`` (the valid counts are kept). Details
# that are simply not there (no ``completion_tokens_details``) are "not reported": fine.

_NOT_RECORDS = (str, bytes, bytearray, int, float, list, tuple, set, frozenset)


def is_record(obj: Any) -> bool:
    """A JSON object or an SDK model, as opposed to a scalar or a list."""
    return type(obj) is dict or isinstance(obj, Mapping) or not isinstance(obj, _NOT_RECORDS)


class _Reader:
    """Reads the counts of one usage object into unit values, noting invalid ones."""

    __slots__ = ("bad", "values")

    def __init__(self) -> None:
        self.bad = False
        self.values: dict[str, Any] = {}

    def part(self, obj: Any, *names: str) -> Any:
        """The first present sub-object ``names`` of ``obj``; a non-object is malformed."""
        for name in names:
            value = field(obj, name)
            if value is not None:
                if is_record(value):
                    return as_fields(value)
                self.bad = True
        return None

    def count(self, unit: str, obj: Any, name: str) -> None:
        """Unit ``unit`` from ``obj.name``, when present (an invalid count is malformed)."""
        self._read(unit, obj, name, count)

    def counts(self, obj: Any, pairs: tuple[tuple[str, str], ...]) -> None:
        """``count`` for each (unit, field name) pair of ``obj``, inline for exact ints."""
        values, get = self.values, (obj.get if type(obj) is dict else None)
        for unit, name in pairs:
            value = get(name) if get is not None else field(obj, name)
            if value is None:
                continue
            if type(value) is int and 0 <= value <= MAX_COUNT:
                values[unit] = value
            else:
                self._read(unit, obj, name, count)

    def seconds(self, unit: str, obj: Any, name: str) -> None:
        """Unit ``unit`` from ``obj.name`` in seconds, when present (invalid ones: malformed)."""
        self._read(unit, obj, name, seconds)

    def _read(self, unit: str, obj: Any, name: str, valid: Callable[[Any], float | None]) -> None:
        """``obj.name`` as ``valid`` reads it, when present (``valid`` says ``None``: malformed)."""
        value = field(obj, name)
        if value is None:
            return
        number = valid(value)
        if number is None:
            self.bad = True
        else:
            self.values[unit] = number

    def finish(self, *required: str) -> Usage:
        """The usage read; malformed when a value was invalid or a ``required`` unit absent."""
        values = self.values
        bad = self.bad or any(name not in values for name in required)
        return Usage.of(values, problem=MALFORMED_USAGE if bad else None)


def _malformed() -> Usage:
    return Usage(problem=MALFORMED_USAGE)


def usage_from_completion_tokens(usage: Any) -> Usage | None:
    """Chat and legacy completions: ``prompt_tokens`` / ``completion_tokens`` and details."""
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    usage = as_fields(usage)
    r = _Reader()
    prompt = r.part(usage, "prompt_tokens_details")
    completion = r.part(usage, "completion_tokens_details")
    r.counts(usage, _CHAT_COUNTS)
    if prompt is not None:
        r.counts(prompt, _CHAT_PROMPT_COUNTS)
    if completion is not None:
        r.counts(completion, _CHAT_COMPLETION_COUNTS)
    return r.finish("input_tokens", "output_tokens")


# (unit, field) pairs: chat's usage object and its details
_CHAT_COUNTS = (
    ("input_tokens", "prompt_tokens"),
    ("output_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
)
_CHAT_PROMPT_COUNTS = (
    ("cached_input_tokens", "cached_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
    ("input_audio_tokens", "audio_tokens"),
    ("input_text_tokens", "text_tokens"),
    ("input_image_tokens", "image_tokens"),
)
_CHAT_COMPLETION_COUNTS = (
    ("reasoning_tokens", "reasoning_tokens"),
    ("output_audio_tokens", "audio_tokens"),
    ("output_text_tokens", "text_tokens"),
    ("accepted_prediction_tokens", "accepted_prediction_tokens"),
    ("rejected_prediction_tokens", "rejected_prediction_tokens"),
)


def usage_from_io_tokens(usage: Any) -> Usage | None:
    """Responses, decisions, images, transcriptions: ``input_tokens`` / ``output_tokens``."""
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    usage = as_fields(usage)
    r = _Reader()
    if field(usage, "type") == "duration":
        r.seconds("audio_seconds", usage, "seconds")
        return r.finish("audio_seconds")
    # Responses and images say input_tokens_details; transcriptions say input_token_details.
    inp = r.part(usage, "input_tokens_details", "input_token_details")
    out = r.part(usage, "output_tokens_details", "output_token_details")
    r.counts(usage, _IO_COUNTS)
    if inp is not None:
        r.counts(inp, _IO_INPUT_COUNTS)
        ttl = r.part(inp, "cache_write_tokens_details")
        if ttl is not None:
            r.count("cache_write_30m_tokens", ttl, "ttl_30m_tokens")
            r.count("cache_write_12h_tokens", ttl, "ttl_12h_tokens")
    if out is not None:
        r.counts(out, _IO_OUTPUT_COUNTS)
    return r.finish("input_tokens", "output_tokens")


# (unit, field) pairs: the usage object of responses (and the others) and its details
_IO_COUNTS = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("total_tokens", "total_tokens"),
)
_IO_INPUT_COUNTS = (
    ("cached_input_tokens", "cached_tokens"),
    ("input_text_tokens", "text_tokens"),
    ("input_image_tokens", "image_tokens"),
    ("input_audio_tokens", "audio_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
)
_IO_OUTPUT_COUNTS = (
    ("reasoning_tokens", "reasoning_tokens"),
    ("output_image_tokens", "image_tokens"),
    ("output_text_tokens", "text_tokens"),
)


def usage_from_embedding_tokens(usage: Any) -> Usage | None:
    if usage is None:
        return None
    if not is_record(usage):
        return _malformed()
    usage = as_fields(usage)
    r = _Reader()
    r.count("input_tokens", usage, "prompt_tokens")
    r.count("total_tokens", usage, "total_tokens")
    return r.finish("input_tokens")


def add_svg_usage(usage: Usage, svg: Any) -> None:
    """SVG authoring (``svg_usage``): tokens of another model, added to what ``usage`` holds."""
    if svg is None:
        return
    if not is_record(svg):
        usage.problem = MALFORMED_USAGE
        return
    r = _Reader()
    r.count("svg_input_tokens", svg, "input_tokens")
    r.count("svg_output_tokens", svg, "output_tokens")
    r.count("svg_reasoning_tokens", svg, "reasoning_tokens")
    values = usage.values
    for unit, value in r.values.items():
        values[unit] = values.get(unit, 0) + value
    model = text(field(svg, "model"))
    if model and "svg_model" not in values:
        values["svg_model"] = model
    if r.bad:
        usage.problem = MALFORMED_USAGE


# --- built-in tools ---------------------------------------------------------------------
#
# Hosted tools appear as items of a Responses ``output``; each item is one call of its tool
# (counted whatever its status: a call that ran is billed). The units table says which item
# type each tool unit counts.

_ITEM_UNITS: dict[str, str] = {u.item_type: u.name for u in TOOL_COUNTERS if u.item_type}
MAX_ITEMS = 4096  # output items looked at: a huge output costs bounded time
MAX_CONTAINERS = 16


def _counted(item: Any, kind: str) -> bool:
    """Whether an item of a counted type is billed as a hosted tool call."""
    if kind == "shell_call":  # only in a hosted container (a local one runs on the client)
        return bool(field(field(item, "environment"), "type") == "container_reference")
    if kind == "tool_search_call":
        return bool(field(item, "execution") == "server")
    return True


def add_tool_calls(usage: Usage, output: Any) -> None:
    """Count the hosted tool calls of a Responses ``output`` into ``usage``."""
    if not isinstance(output, list | tuple):
        return
    counts: dict[str, int] = {}
    containers: dict[str, None] = {}
    sizes: set[Any] = set()
    qualities: set[Any] = set()
    for item in output[:MAX_ITEMS]:
        kind = field(item, "type")
        unit = _ITEM_UNITS.get(kind) if isinstance(kind, str) else None
        if unit is None or not _counted(item, kind):
            continue
        counts[unit] = counts.get(unit, 0) + 1
        if kind == "code_interpreter_call":
            container = text(field(item, "container_id"), 128)
            if container:
                containers.setdefault(container, None)
        elif kind == "image_generation_call":
            sizes.add(field(item, "size"))
            qualities.add(field(item, "quality"))
            add_svg_usage(usage, field(item, "svg_usage"))
    if not counts:
        return
    values = usage.values
    values.update(counts)
    if containers:
        values["code_interpreter_sessions"] = len(containers)
        values["code_interpreter_container_ids"] = list(containers)[:MAX_CONTAINERS]
    size, quality = text(sizes.pop(), 32) if len(sizes) == 1 else None, None
    if len(qualities) == 1:
        quality = text(qualities.pop(), 32)
    if size:
        values["image_generation_size"] = size
    if quality:
        values["image_generation_quality"] = quality


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
    """Responses API ``response`` objects (also beta, and ``response.compaction``)."""
    usage = usage_from_io_tokens(field(response, "usage"))
    output = field(response, "output")
    if output and isinstance(output, list | tuple) and _has_tool_items(output):
        usage = usage or Usage()
        add_tool_calls(usage, output)
    return usage, _info(response, responses_finish_reasons(response))


def _has_tool_items(output: list[Any] | tuple[Any, ...]) -> bool:
    """Whether an output may hold a hosted tool call (messages and reasoning do not)."""
    for item in output[:MAX_ITEMS]:
        kind = field(item, "type")
        if kind != "message" and kind != "reasoning" and kind in _ITEM_UNITS:
            return True
    return False


def extract_decision(response: Any) -> Extracted:
    """``decisions.create``: a ``Decision`` (answers, model, usage)."""
    return usage_from_io_tokens(field(response, "usage")), _info(response)


def extract_embeddings(response: Any) -> Extracted:
    return usage_from_embedding_tokens(field(response, "usage")), _info(response)


def extract_images(response: Any) -> Extracted:
    usage = usage_from_io_tokens(field(response, "usage")) or Usage()
    data = field(response, "data")
    if isinstance(data, list | tuple):
        usage.image_count = len(data)
    usage.image_size = text(field(response, "size"), 32)
    usage.image_quality = text(field(response, "quality"), 32)
    add_svg_usage(usage, field(response, "svg_usage"))
    return usage, _info(response)


def extract_audio_text(response: Any) -> Extracted:
    """Transcriptions and translations: token usage, duration usage, or a verbose duration.

    A ``str`` is the body of whisper's text, srt and vtt formats, which report nothing:
    its audio seconds are estimated (see :func:`.estimate.estimate_audio_seconds`).
    """
    if isinstance(response, str):
        estimate = estimate_audio_seconds(response)
        if estimate is None:
            return None, ResponseInfo()
        return Usage(audio_seconds=estimate, estimated=True), ResponseInfo()
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


def extract_generic(response: Any) -> Extracted:
    """Any JSON body with a ``usage`` object (an endpoint the agent does not know): tokens only."""
    usage_obj = field(response, "usage")
    if usage_obj is None or not is_record(usage_obj):
        return None, ResponseInfo()
    if field(usage_obj, "prompt_tokens") is not None:
        found = usage_from_completion_tokens(usage_obj)
    elif field(usage_obj, "input_tokens") is not None:
        found = usage_from_io_tokens(usage_obj)
    else:
        return None, ResponseInfo()
    usage = None
    if found is not None:  # tokens only: the other units of an unknown shape mean nothing here
        usage = Usage(
            input_tokens=found.input_tokens,
            output_tokens=found.output_tokens,
            total_tokens=found.total_tokens,
            cached_input_tokens=found.cached_input_tokens,
            reasoning_tokens=found.reasoning_tokens,
            problem=found.problem,
        )
    return usage, _info(response)


Extractor = Callable[[Any], Extracted]


# --- stream events ----------------------------------------------------------------------


def _image_event(event: Mapping[str, Any]) -> Extracted:
    """``image_generation.completed`` / ``image_edit.completed``: one image and its usage."""
    usage = usage_from_io_tokens(event.get("usage"))
    if usage is not None:
        usage.image_count = 1
        usage.image_size = text(event.get("size"), 32)
        usage.image_quality = text(event.get("quality"), 32)
    return usage, ResponseInfo()


def _io_event(event: Mapping[str, Any]) -> Extracted:
    """Transcription and speech events: their ``usage`` (``transcript.text.done``...)."""
    return usage_from_io_tokens(event.get("usage")), ResponseInfo()


# How the events of each kind of stream are read (an endpoint row names its kind).
STREAM_READERS: dict[str, Callable[[Mapping[str, Any]], Extracted]] = {
    "chat": extract_chat,
    "completions": extract_chat,
    "responses": _io_event,  # its events carry their usage in "response", read first
    "images": _image_event,
    "audio_text": _io_event,
    "speech": _io_event,
}


def extract_stream_event(family: str, event: Mapping[str, Any]) -> Extracted:
    """Usage and facts carried by one server-sent event of a stream of kind ``family``."""
    inner = event.get("response")
    if isinstance(inner, Mapping):  # response.created / .completed / .incomplete / .failed
        return extract_responses(inner)
    return STREAM_READERS.get(family, _io_event)(event)
