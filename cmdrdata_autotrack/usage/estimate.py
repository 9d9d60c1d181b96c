"""Token estimates for calls whose response carries no usage.

Used only when a stream ended without a usage report (interrupted, the host
gives none, injection disabled). The estimate is deliberately simple and
documented: about four characters of English text per token, the rule of
thumb OpenAI publishes, and one token per streamed content delta (OpenAI sends
one token per delta). Estimated usage is always marked as such on the span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4
# Chat formatting adds a few tokens per message (role markers, separators).
TOKENS_PER_MESSAGE = 4
_MAX_WALK = 10_000  # parts looked at, so a huge request costs bounded time


def tokens_for_chars(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def _text_chars(value: Any, budget: list[int]) -> int:
    """Characters of text in a prompt-like value: str, list of parts, message dicts."""
    if budget[0] <= 0:
        return 0
    budget[0] -= 1
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        total = 0
        for key in ("content", "text", "input", "output", "arguments", "instructions"):
            if key in value:
                total += _text_chars(value[key], budget)
        return total
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, int) for v in value[:8]):
            return len(value) * CHARS_PER_TOKEN  # already tokens
        return sum(_text_chars(v, budget) for v in value)
    return 0


def estimate_input_tokens(kwargs: Mapping[str, Any]) -> int:
    """Estimate of the prompt tokens of a request, from its keyword arguments."""
    budget = [_MAX_WALK]
    messages = kwargs.get("messages")
    if isinstance(messages, list | tuple):  # never iterate a generator the SDK still needs
        chars = sum(_text_chars(m, budget) for m in messages)
        return tokens_for_chars(chars) + TOKENS_PER_MESSAGE * len(messages)
    total = 0
    for key in ("input", "prompt", "instructions"):
        if key in kwargs:
            total += tokens_for_chars(_text_chars(kwargs[key], budget))
    return total
