"""Token estimates for calls whose response carries no (valid) usage.

Used only when usage was not reported or not usable: a stream that ended without
a usage report (interrupted, the host gives none, injection disabled), a
response whose usage is missing or malformed, whisper's text/srt/vtt formats
(no duration) and speech models billed by tokens that answer with bare audio.
The estimates are deliberately simple and documented: about four characters of
English text per token, the rule of thumb OpenAI publishes; one token per
streamed content delta (OpenAI sends one token per delta); speech at 150 words a
minute. Estimated usage is always marked as such on the span.

The request is the caller's own object: it is only read, with bounded effort
(parts and depth), and never with methods a subclass could override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .fields import field

CHARS_PER_TOKEN = 4
# Chat formatting adds a few tokens per message (role markers, separators).
TOKENS_PER_MESSAGE = 4
_MAX_WALK = 10_000  # parts looked at, so a huge request costs bounded time
_MAX_DEPTH = 32  # nesting followed, so a deeply nested value cannot exhaust the stack
_TEXT_KEYS = ("content", "text", "input", "output", "arguments", "instructions")
# Speech: about 150 words a minute (2.5 a second), the usual rate of narration and TTS.
WORDS_PER_SECOND = 2.5
# Speech models billed by tokens: audio output tokens per character of input. OpenAI puts
# gpt-4o-mini-tts at about $0.015 a minute of audio, at $12 per 1M audio output tokens:
# 1250 tokens a minute; 150 words of 5.9 characters (a space included) are ~880 characters.
AUDIO_TOKENS_PER_SPEECH_CHAR = 1.4
_CUE_END = re.compile(r"--> *(\d{1,3}):(\d{2}):(\d{2})[.,](\d{3})")
_WORD = re.compile(r"\S+")


def tokens_for_chars(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def _text_chars(value: Any, budget: list[int], depth: int = 0) -> int:
    """Characters of text in a prompt-like value: str, list of parts, message dicts."""
    if budget[0] <= 0 or depth > _MAX_DEPTH:
        return 0
    budget[0] -= 1
    if isinstance(value, str):
        return str.__len__(value)  # a str subclass's own __len__ is not trusted
    if isinstance(value, Mapping):
        total = 0
        for key in _TEXT_KEYS:
            if key in value:
                total += _text_chars(value[key], budget, depth + 1)
        return total
    if isinstance(value, list | tuple):
        if value and all(type(v) is int for v in value[:8]):
            return len(value) * CHARS_PER_TOKEN  # already tokens
        return sum(_text_chars(v, budget, depth + 1) for v in value)
    return 0


def estimate_input_tokens(kwargs: Mapping[str, Any]) -> int:
    """Estimate of the prompt tokens of a request, from its keyword arguments (0 if unreadable)."""
    budget = [_MAX_WALK]
    try:
        messages = kwargs.get("messages")
        if isinstance(messages, list | tuple):  # never iterate a generator the SDK still needs
            chars = sum(_text_chars(m, budget) for m in messages)
            return tokens_for_chars(chars) + TOKENS_PER_MESSAGE * len(messages)
        total = 0
        for key in ("input", "prompt", "instructions"):
            if key in kwargs:
                total += tokens_for_chars(_text_chars(kwargs[key], budget))
        return total
    except Exception:  # an odd object in the request: no estimate rather than no event
        return 0


def _items(value: Any) -> list[Any]:
    return list(value[:256]) if isinstance(value, list | tuple) else []


def _chars(value: Any) -> int:
    return str.__len__(value) if isinstance(value, str) else 0


def output_text_chars(response: Any) -> int:
    """Characters of generated text in a response (parsed SDK object or JSON)."""
    total = 0
    for choice in _items(field(response, "choices")):  # chat and legacy completions
        total += _chars(field(choice, "text"))
        message = field(choice, "message")
        total += _chars(field(message, "content")) + _chars(field(message, "refusal"))
        for call in _items(field(message, "tool_calls")):
            total += _chars(field(field(call, "function"), "arguments"))
    for item in _items(field(response, "output")):  # the Responses API
        total += _chars(field(item, "arguments"))
        for part in _items(field(item, "content")):
            total += _chars(field(part, "text")) + _chars(field(part, "refusal"))
    return total


def estimate_output_tokens(response: Any) -> int | None:
    """Estimate of the tokens generated in ``response``, or ``None`` when it has no text."""
    try:
        chars = output_text_chars(response)
    except Exception:
        return None
    return tokens_for_chars(chars) if chars else None


def estimate_audio_seconds(transcript: str) -> float | None:
    """Seconds of audio behind a text, srt or vtt transcript (``None`` for an empty one).

    Subtitles: the end of their last cue (where speech ends, a little before the audio
    does); plain text: its words at :data:`WORDS_PER_SECOND`.
    """
    if not isinstance(transcript, str) or not transcript.strip():
        return None
    cues = _CUE_END.findall(transcript[-4096:])
    if cues:
        hours, minutes, secs, millis = (int(g) for g in cues[-1])
        return hours * 3600 + minutes * 60 + secs + millis / 1000
    words = sum(1 for _ in _WORD.finditer(transcript[:1_000_000]))
    return round(words / WORDS_PER_SECOND, 3)


def estimate_speech_tokens(characters: int) -> tuple[int, int]:
    """(text input tokens, audio output tokens) of speaking ``characters`` characters."""
    return tokens_for_chars(characters), round(characters * AUDIO_TOKENS_PER_SPEECH_CHAR)
