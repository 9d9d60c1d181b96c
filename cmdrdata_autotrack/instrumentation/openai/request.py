"""Pure functions from a request's keyword arguments to span attributes and known usage.

The arguments are the caller's own objects: strings and numbers are copied as exact
``str``/``int``/``float`` (a subclass's methods are never run), and the caller's
request is never changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ...usage import attributes as A
from ...usage.estimate import estimate_speech_tokens
from ...usage.model import Usage

# Hosts that are OpenAI's own API: stream usage is requested there by default.
OPENAI_HOSTS = frozenset({"api.openai.com", "eu.api.openai.com", "us.api.openai.com"})
_SENTINELS = frozenset({"NotGiven", "Omit"})


def given(value: Any) -> bool:
    """False for ``None`` and the SDK's ``NOT_GIVEN`` / ``omit`` sentinels."""
    return value is not None and type(value).__name__ not in _SENTINELS


def arg(kwargs: Mapping[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return value if given(value) else None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return None


def _text(value: Any) -> str | None:
    """An exact ``str`` copy of a string argument, or ``None``."""
    if not isinstance(value, str):
        return None
    return value if type(value) is str else str.__str__(value)


def model_name(value: Any) -> str | None:
    name = _text(value)
    return name[:256] if name else None


def _output_type(kwargs: Mapping[str, Any], default: str | None) -> str | None:
    fmt = arg(kwargs, "response_format")
    if fmt is None:
        text = arg(kwargs, "text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, type):  # parse(response_format=PydanticModel)
        return "json"
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind in ("json_object", "json_schema"):
            return "json"
        if kind == "text":
            return "text"
    if isinstance(fmt, str) and fmt in ("json", "verbose_json", "diarized_json"):
        return "json"
    if isinstance(fmt, str) and fmt in ("text", "srt", "vtt"):
        return "text"
    return default


def request_attributes(kwargs: Mapping[str, Any], output_type: str | None) -> dict[str, Any]:
    """``gen_ai.request.*`` attributes for the parameters the caller set."""
    attrs: dict[str, Any] = {}
    model = model_name(arg(kwargs, "model"))
    if model:
        attrs[A.REQUEST_MODEL] = model
    for key, name in (
        (A.REQUEST_TEMPERATURE, "temperature"),
        (A.REQUEST_TOP_P, "top_p"),
        (A.REQUEST_PRESENCE_PENALTY, "presence_penalty"),
        (A.REQUEST_FREQUENCY_PENALTY, "frequency_penalty"),
        (A.REQUEST_SEED, "seed"),
    ):
        value = _number(arg(kwargs, name))
        if value is not None:
            attrs[key] = value
    for name in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
        value = _number(arg(kwargs, name))
        if value is not None:
            attrs[A.REQUEST_MAX_TOKENS] = value
            break
    n = _number(arg(kwargs, "n"))
    if n is not None and n != 1:
        attrs[A.REQUEST_CHOICE_COUNT] = n
    stop = arg(kwargs, "stop")
    if isinstance(stop, str):
        attrs[A.REQUEST_STOP_SEQUENCES] = [_text(stop)]
    elif isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop[:16]):
        attrs[A.REQUEST_STOP_SEQUENCES] = [_text(s) for s in stop[:16]]
    encoding = _text(arg(kwargs, "encoding_format"))
    if encoding is not None:
        attrs[A.REQUEST_ENCODING_FORMATS] = [encoding]
    tier = _text(arg(kwargs, "service_tier"))
    if tier is not None:
        attrs[A.OPENAI_REQUEST_SERVICE_TIER] = tier
    if arg(kwargs, "stream") is True:
        attrs[A.REQUEST_STREAM] = True
    out = _output_type(kwargs, output_type)
    if out:
        attrs[A.OUTPUT_TYPE] = out
    return attrs


def chat_request_units(kwargs: Mapping[str, Any]) -> Usage | None:
    """A chat completion made with ``web_search_options`` runs one web search."""
    return Usage(web_search_calls=1) if arg(kwargs, "web_search_options") is not None else None


def image_request_units(kwargs: Mapping[str, Any]) -> Usage | None:
    """The size and quality asked for (the response's win when it says)."""
    size, quality = _text(arg(kwargs, "size")), _text(arg(kwargs, "quality"))
    if not size and not quality:
        return None
    return Usage(
        image_size=size[:32] if size else None,
        image_quality=quality[:32] if quality else None,
    )


def speech_request_units(kwargs: Mapping[str, Any]) -> Usage | None:
    """Speech is billed by its input: its characters are known before the audio."""
    text = _text(arg(kwargs, "input"))
    return Usage(input_characters=len(text)) if text is not None else None


# Speech models billed per character of input; the others are billed by tokens.
CHARACTER_BILLED_SPEECH = ("tts-1",)


def speech_token_estimate(kwargs: Mapping[str, Any]) -> Usage | None:
    """Estimated tokens of a token-billed speech model that answered with bare audio.

    Without ``stream_format="sse"`` the answer is the audio alone, with no usage: the
    tokens are estimated from the input's characters (and flagged), so the call is not
    costed at zero. Character-billed models (``tts-1``, ``tts-1-hd``) need no estimate.
    """
    model = model_name(arg(kwargs, "model")) or ""
    text = _text(arg(kwargs, "input"))
    if text is None or model.lower().startswith(CHARACTER_BILLED_SPEECH):
        return None
    text_tokens, audio_tokens = estimate_speech_tokens(len(text))
    return Usage(
        input_tokens=text_tokens,
        input_text_tokens=text_tokens,
        output_tokens=audio_tokens,
        output_audio_tokens=audio_tokens,
        total_tokens=text_tokens + audio_tokens,
        estimated=True,
    )


def direct_kwargs(options: Any) -> dict[str, Any]:
    """The request parameters of a direct ``client.post(path, body=...)`` call, read-only."""
    body = getattr(options, "json_data", None)
    return dict(body) if isinstance(body, Mapping) else {}


def server_attributes(base_url: Any) -> dict[str, Any]:
    """``server.address`` / ``server.port`` from the client's base URL (port 443 omitted)."""
    try:
        parts = urlsplit(str(base_url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    attrs: dict[str, Any] = {}
    if host:
        attrs[A.SERVER_ADDRESS] = host
        if port is None:
            port = 80 if parts.scheme == "http" else 443
        if port != 443:
            attrs[A.SERVER_PORT] = port
    return attrs


def should_inject_stream_usage(mode: str, host: str | None, kwargs: Mapping[str, Any]) -> bool:
    """Whether to add ``stream_options.include_usage`` to this streaming request."""
    if mode == "never" or arg(kwargs, "stream") is not True:
        return False
    options = arg(kwargs, "stream_options")
    if options is not None and type(options) is not dict:
        return False  # not a plain dict: the caller's value is sent exactly as given
    if options is not None and "include_usage" in options:
        return False  # the caller decided
    return mode == "always" or host in OPENAI_HOSTS


def with_stream_usage(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``kwargs`` whose request also asks for ``stream_options.include_usage``.

    With no ``stream_options`` of the caller's, the option goes in ``extra_body``, which
    the SDK adds to the JSON body as it is: as a parameter it would go through the SDK's
    type-directed transform of the parameters, 11 to 15 µs more on the app's thread
    (openai 1.x, 3.x). An ``extra_body`` of the caller's that names ``stream_options``
    itself, or is not a plain dict, is left as it is (the SDK lays it over the parameters,
    so the caller's value still wins).
    """
    options = arg(kwargs, "stream_options")
    extra = arg(kwargs, "extra_body")
    if options is None and (
        extra is None or (type(extra) is dict and "stream_options" not in extra)
    ):
        return {
            **kwargs,
            "extra_body": {**(extra or {}), "stream_options": {"include_usage": True}},
        }
    return {**kwargs, "stream_options": {**(options or {}), "include_usage": True}}


def content_attributes(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Prompt content, only ever called when content capture is enabled."""
    attrs: dict[str, str] = {}
    for source, key in (
        ("messages", A.INPUT_MESSAGES),
        ("input", A.INPUT_MESSAGES),
        ("prompt", A.INPUT_MESSAGES),
        ("instructions", A.SYSTEM_INSTRUCTIONS),
    ):
        value = arg(kwargs, source)
        if value is not None and key not in attrs:
            try:
                text = json.dumps(value, default=str, ensure_ascii=False)
            except Exception:  # an object whose str() fails, a value nested too deep
                continue
            attrs[key] = text[:65536]
    return attrs
