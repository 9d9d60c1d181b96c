"""A local fake of the OpenAI REST API, for tests that drive the real ``openai`` SDK.

The server listens on 127.0.0.1 (a free port) and answers the endpoints the
agent meters with bodies shaped like the real API's (chat completions, legacy
completions, responses, embeddings, images, audio, moderations), including the
exact SSE framing of streams.  Usage numbers are deterministic and scriptable
through :attr:`FakeOpenAI.usage`, and faults (HTTP errors, delays, dropped
connections, cut streams, hosts that give no usage, ...) can be queued with
:meth:`FakeOpenAI.enqueue`.

Typical use::

    with FakeOpenAI() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        server.usage.prompt_tokens = 1234
        server.enqueue(status(429, headers={"retry-after-ms": "1"}))
        ...
        assert server.requests[-1].json["model"] == "gpt-4o-mini"

Routing matches on the path's suffix, so Azure-style paths such as
``/openai/deployments/{deployment}/chat/completions?api-version=...`` work too
(use :attr:`FakeOpenAI.root_url` as ``azure_endpoint``).

Only the standard library is used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import select
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "DEFAULT_REPLY_WORDS",
    "DEFAULT_TRANSCRIPT",
    "NON_STREAM_COMPLETION_TOKENS",
    "PNG_B64",
    "PNG_BYTES",
    "SPEECH_BYTES",
    "FakeOpenAI",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "UploadedFile",
    "UsageScript",
    "delay",
    "drop_connection",
    "iter_sse",
    "no_usage",
    "raw",
    "reject_stream_options",
    "split_words",
    "sse_error",
    "start_server",
    "status",
    "stream_cut",
]

Json = Any

#: The default reply: one streamed chunk per element, joined for non-streamed answers.
DEFAULT_REPLY_WORDS: tuple[str, ...] = ("Hello", " from", " the", " fake", " server.")
#: The default text of transcriptions and translations.
DEFAULT_TRANSCRIPT = "The quick brown fox jumps over the lazy dog."
#: Completion/output tokens of non-streamed answers (unless ``usage.completion_tokens`` is set).
NON_STREAM_COMPLETION_TOKENS = 9
#: The body answered by ``/audio/speech`` (whatever the requested format).
SPEECH_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4

SYSTEM_FINGERPRINT = "fp_5e7fa4c0de"
DEFAULT_DATE_SUFFIX = "-2024-07-18"
DEFAULT_MODEL_ALIASES: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4": "gpt-4-0613",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-instruct": "gpt-3.5-turbo-instruct-0914",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
}
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")

_MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_IMAGE_CAPABLE_CATEGORIES = frozenset(
    {
        "self-harm",
        "self-harm/instructions",
        "self-harm/intent",
        "sexual",
        "violence",
        "violence/graphic",
    }
)
_SPEECH_CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def split_words(text: str) -> list[str]:
    """Split ``text`` into stream chunks: each word with the whitespace before it."""
    return re.findall(r"\s*\S+|\s+$", text)


def _tiny_png() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x10\x20\x30\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


#: The image every image endpoint answers with (a valid 1x1 PNG), raw and base64.
PNG_BYTES = _tiny_png()
PNG_B64 = base64.b64encode(PNG_BYTES).decode("ascii")


# --------------------------------------------------------------------------- scripting


@dataclass
class UsageScript:
    """The usage numbers the server reports; every field may be changed by a test.

    ``total_tokens`` is always the sum of the parts it totals.  Nothing else is
    cross-checked: the numbers are reported exactly as set.
    """

    # chat completions, legacy completions, responses (input/output), embeddings (prompt)
    prompt_tokens: int = 17
    #: ``None``: streams report the number of generated chunks (content or tool
    #: argument deltas, over all choices); non-streamed answers report
    #: :data:`NON_STREAM_COMPLETION_TOKENS` (9).
    completion_tokens: int | None = None
    cached_tokens: int = 5
    reasoning_tokens: int = 3
    prompt_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    # images with gpt-image-* models (DALL-E models report no usage)
    image_text_tokens: int = 13
    image_image_tokens: int = 21
    image_output_tokens: int = 272
    # transcriptions with gpt-4o(-mini)-transcribe ("type": "tokens")
    transcription_text_tokens: int = 4
    transcription_audio_tokens: int = 23
    transcription_output_tokens: int = 11
    # transcriptions with whisper-1 ("type": "duration") and verbose_json durations
    audio_seconds: float = 7.0
    # text-to-speech with stream_format="sse"
    speech_input_tokens: int = 8
    speech_output_tokens: int = 40
    # prompt cache writes (``cache_write_tokens``: always in Responses and decisions usage, as
    # the openai 2.x/3.x types require; in chat usage when not 0); the TTL breakdown
    # (``cache_write_tokens_details``) when either part is set
    cache_write_tokens: int = 0
    cache_write_30m_tokens: int | None = None
    cache_write_12h_tokens: int | None = None
    # SVG images (``output_format="svg"``): the authoring model's ``svg_usage``
    svg_input_tokens: int = 120
    svg_output_tokens: int = 900
    svg_reasoning_tokens: int = 300
    #: hosted tool calls (web search, file search, ...) answered per hosted tool requested
    hosted_tool_calls: int = 1

    def cache_writes(self) -> dict[str, Any]:
        """The cache-write part of a Responses input details object."""
        details: dict[str, Any] = {"cache_write_tokens": self.cache_write_tokens}
        if self.cache_write_30m_tokens is not None or self.cache_write_12h_tokens is not None:
            details["cache_write_tokens_details"] = {
                "ttl_30m_tokens": self.cache_write_30m_tokens or 0,
                "ttl_12h_tokens": self.cache_write_12h_tokens or 0,
            }
        return details

    def completion(self, generated: int | None) -> int:
        """Completion tokens to report; ``generated``: streamed chunks (None: not streamed)."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return NON_STREAM_COMPLETION_TOKENS if generated is None else generated


FaultKind = Literal[
    "status",
    "delay",
    "drop_connection",
    "iter_sse",
    "stream_cut",
    "no_usage",
    "reject_stream_options",
    "sse_error",
    "raw",
]


@dataclass(frozen=True)
class Fault:
    """A behaviour for the next request(s) whose path ends with ``path`` (any path when None).

    Build them with :func:`status`, :func:`delay`, :func:`drop_connection`,
    :func:`stream_cut`, :func:`no_usage`, :func:`reject_stream_options` and
    :func:`sse_error`.  A fault applies to ``times`` matching requests (``None``:
    every one until :meth:`FakeOpenAI.reset`), in the order they were queued.
    """

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    status_code: int = 500
    error_type: str | None = None
    message: str | None = None
    error_code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0
    after_chunks: int = 0
    body_chunks: tuple[bytes, ...] = ()
    content_type: str = "application/json"

    def matches(self, path: str) -> bool:
        return self.path is None or path.rstrip("/").endswith(self.path.rstrip("/"))


def status(
    code: int,
    error_type: str | None = None,
    message: str | None = None,
    *,
    error_code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
    times: int | None = 1,
) -> Fault:
    """Answer HTTP ``code`` with an OpenAI error body ``{"error": {message, type, param, code}}``.

    ``error_type``, ``message`` and ``error_code`` default to what OpenAI sends
    for that status (e.g. 429: ``requests`` / ``rate_limit_exceeded``); ``headers``
    are added to the response (e.g. ``{"retry-after": "1"}`` or ``{"x-should-retry": "false"}``).
    """
    return Fault(
        "status",
        path=path,
        times=times,
        status_code=code,
        error_type=error_type,
        message=message,
        error_code=error_code,
        param=param,
        headers=dict(headers) if headers else None,
    )


def delay(seconds: float, *, path: str | None = None, times: int | None = 1) -> Fault:
    """Wait ``seconds``, then answer normally (cut short by ``stop()`` or by the client leaving)."""
    return Fault("delay", path=path, times=times, seconds=seconds)


def drop_connection(*, path: str | None = None, times: int | None = 1) -> Fault:
    """Read the request, then close the socket without any response."""
    return Fault("drop_connection", path=path, times=times)


def stream_cut(after_chunks: int = 1, *, path: str | None = None, times: int | None = 1) -> Fault:
    """Send the first ``after_chunks`` SSE events, then close the connection (no ``[DONE]``).

    For a non-streamed answer the headers and half of the body are sent before closing.
    """
    return Fault("stream_cut", path=path, times=times, after_chunks=after_chunks)


def no_usage(*, path: str | None = None, times: int | None = 1) -> Fault:
    """Answer normally but without usage, like an OpenAI-compatible host that reports none.

    JSON bodies have no ``usage`` key; chat/legacy streams send no usage chunk
    (and no ``"usage": null`` fields) even when ``include_usage`` was asked; the
    responses API reports ``"usage": null``; transcription/image events omit it.
    """
    return Fault("no_usage", path=path, times=times)


def reject_stream_options(*, path: str | None = None, times: int | None = 1) -> Fault:
    """Answer 400 if the body has ``stream_options`` (like some proxies and old Azure APIs)."""
    return Fault("reject_stream_options", path=path, times=times)


def sse_error(
    message: str = "The server had an error while processing your request.",
    *,
    path: str | None = None,
    times: int | None = 1,
) -> Fault:
    """Stream one normal event, then an error event, then end the stream.

    Chat, legacy, transcription and image streams send ``data: {"error": {...}}``
    (the SDK raises ``openai.APIError``); the responses API sends its real
    ``event: error`` / ``{"type": "error", ...}`` event, which the SDK yields.
    """
    return Fault("sse_error", path=path, times=times, message=message)


def raw(
    body: bytes | list[bytes] | tuple[bytes, ...],
    *,
    content_type: str = "application/json",
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
    times: int | None = 1,
) -> Fault:
    """Answer with exactly these bytes (a hostile or malformed server).

    A list is sent as that many HTTP chunks (chunked transfer encoding), each
    flushed on its own, so a test controls where the client's reads split.
    """
    chunks = (body,) if isinstance(body, bytes) else tuple(body)
    return Fault(
        "raw",
        path=path,
        times=times,
        status_code=status_code,
        headers=dict(headers) if headers else None,
        body_chunks=chunks,
        content_type=content_type,
    )


_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: (
        "invalid_request_error",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_api_key",
    ),
    403: ("invalid_request_error", "You are not allowed to make this request.", None),
    404: (
        "invalid_request_error",
        "The model `{model}` does not exist or you do not have access to it.",
        "model_not_found",
    ),
    409: ("invalid_request_error", "The request conflicted with another request.", None),
    422: ("invalid_request_error", "The request could not be processed.", None),
    429: (
        "requests",
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_exceeded",
    ),
    500: (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
        None,
    ),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The server is overloaded or not ready yet.", None),
    504: ("server_error", "Gateway timeout.", None),
}


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart/form-data request."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One request the server received.

    ``json`` holds the parsed body of JSON requests; ``form`` the fields of
    multipart/form-data requests (``str`` for plain fields, :class:`UploadedFile`
    for files; a list when a name repeats, and always for names ending in ``[]``
    such as ``image[]``, ``include[]`` or ``timestamp_granularities[]``).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Json = None
    form: dict[str, Any] | None = None
    #: The ``x-request-id`` the server answered with.
    request_id: str = ""

    @property
    def params(self) -> dict[str, Any]:
        """The request's parameters: the JSON object or the form fields ({} otherwise)."""
        if isinstance(self.json, dict):
            return self.json
        return self.form or {}

    @property
    def retry_count(self) -> int | None:
        value = self.headers.get("x-stainless-retry-count")
        return int(value) if value is not None and value.isdigit() else None


# --------------------------------------------------------------------------- request parsing


def _parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError("multipart body without boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, Any] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, _, data = part.partition(b"\r\n\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            header, _, header_value = line.partition(":")
            headers[header.strip().lower()] = header_value.strip()
        disposition = headers.get("content-disposition", "")
        name_match = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        if name_match is None:
            continue
        file_match = re.search(r'(?:^|;)\s*filename="([^"]*)"', disposition)
        value: Any
        if file_match is not None:
            value = UploadedFile(file_match.group(1), headers.get("content-type"), data)
        elif headers.get("content-type", "").startswith("application/octet-stream"):
            value = UploadedFile(None, headers["content-type"], data)
        else:
            value = data.decode("utf-8", "replace")
        name = name_match.group(1)
        if name.endswith("[]"):
            fields.setdefault(name, []).append(value)
        elif name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = value
    return fields


def _form_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _form_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value]
        return parsed if isinstance(parsed, list) else [parsed]
    return [value]


# --------------------------------------------------------------------------- replies


class _ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body: dict[str, Any] = {
            "error": {"message": message, "type": error_type, "param": param, "code": code}
        }


@dataclass
class _Event:
    data: str
    event: str | None = None

    def encode(self) -> bytes:
        prefix = f"event: {self.event}\n" if self.event else ""
        return f"{prefix}data: {self.data}\n\n".encode()


def _dumps(value: Json) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class _Reply:
    status: int = 200
    payload: Json = None
    raw: bytes | None = None
    content_type: str = "application/json"
    events: list[_Event] | None = None
    #: How an ``sse_error`` fault reports its error after the first event.
    error_style: Literal["data", "responses"] = "data"
    headers: dict[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return (json.dumps(self.payload, indent=2) + "\n").encode()


@dataclass
class _Call:
    """Everything a handler needs, snapshotted when the request arrived."""

    request: RecordedRequest
    params: dict[str, Any]
    usage: UsageScript
    words: list[str]
    words_are_default: bool
    transcript: str
    with_usage: bool
    azure_mode: bool
    call_tools: bool
    aliases: dict[str, str]
    root_url: str

    def dated(self, model: str) -> str:
        if model in self.aliases:
            return self.aliases[model]
        if _DATED.search(model):
            return model
        return model + DEFAULT_DATE_SUFFIX

    def require(self, name: str) -> Any:
        value = self.params.get(name)
        if value is None or value == "":
            raise _ApiError(
                400,
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
        return value


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _sse_error_event(style: Literal["data", "responses"], message: str) -> _Event:
    if style == "responses":
        error = {
            "type": "error",
            "code": "server_error",
            "message": message,
            "param": None,
            "sequence_number": 1,
        }
        return _Event(_dumps(error), event="error")
    return _Event(
        _dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    )


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(
            400, f"Invalid value for '{name}': expected an integer.", param=name
        ) from None


def _truncate(words: list[str], limit: int | None) -> tuple[list[str], bool]:
    if limit is not None and limit < len(words):
        return words[: max(limit, 0)], True
    return words, False


# ----- structured output samples


def _sample_from_schema(schema: Any, root: Mapping[str, Any], depth: int = 0) -> Json:
    """A value valid for a (strict, OpenAI-style) JSON schema, deterministic and simple."""
    if not isinstance(schema, Mapping) or depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for segment in ref[2:].split("/"):
            target = target.get(segment) if isinstance(target, Mapping) else None
        return _sample_from_schema(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            preferred = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return _sample_from_schema((preferred or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _sample_from_schema(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        if depth > 8:
            return []
        count = max(1, int(schema.get("minItems") or 0))
        return [
            _sample_from_schema(schema.get("items") or {}, root, depth + 1) for _ in range(count)
        ]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    formats = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "fake@example.com",
        "uri": "https://example.com",
    }
    return formats.get(str(schema.get("format")), "fake")


def _sample_json(schema: Any) -> str:
    root = schema if isinstance(schema, Mapping) else {}
    return _dumps(_sample_from_schema(schema, root))


def _reply_words(call: _Call, schema: Any) -> list[str]:
    """The reply chunks: for structured output a schema-valid JSON sample, unless one was set."""
    if schema is not None and call.words_are_default:
        return split_words(_sample_json(schema))
    return list(call.words)


def _argument_pieces(arguments: str) -> list[str]:
    return [arguments[i : i + 8] for i in range(0, len(arguments), 8)] or [""]


# ----- chat completions


def _chat_usage(call: _Call, generated: int | None) -> dict[str, Any]:
    u = call.usage
    completion = u.completion(generated)
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": u.prompt_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "audio_tokens": u.prompt_audio_tokens,
            **({"cache_write_tokens": u.cache_write_tokens} if u.cache_write_tokens else {}),
        },
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": u.completion_audio_tokens,
            "accepted_prediction_tokens": u.accepted_prediction_tokens,
            "rejected_prediction_tokens": u.rejected_prediction_tokens,
        },
    }


def _service_tier(params: Mapping[str, Any]) -> str:
    tier = params.get("service_tier")
    return tier if tier in ("flex", "priority", "scale") else "default"


def _chat_tool(call: _Call) -> Mapping[str, Any] | None:
    """The function to call: there are function tools and the last message is no tool result."""
    params = call.params
    tools = [
        t
        for t in params.get("tools") or []
        if isinstance(t, Mapping) and t.get("type") == "function"
    ]
    choice = params.get("tool_choice", "auto")
    if not tools or choice == "none" or (not call.call_tools and choice != "required"):
        return None
    messages = params.get("messages") or []
    if (
        messages
        and isinstance(messages[-1], Mapping)
        and messages[-1].get("role") in ("tool", "function")
    ):
        return None
    functions = [t.get("function") or {} for t in tools]
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        return next((f for f in functions if f.get("name") == wanted), functions[0])
    return functions[0]


def _chat_schema(params: Mapping[str, Any]) -> Any:
    response_format = params.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or {}
    return None


_FILTER_RESULTS: dict[str, Any] = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}


def _chat_completions(call: _Call) -> _Reply:
    params = call.params
    model = call.require("model")
    messages = call.require("messages")
    if not isinstance(messages, list):
        raise _ApiError(400, "Invalid type for 'messages': expected an array.", param="messages")
    stream = bool(params.get("stream"))
    if params.get("stream_options") is not None and not stream:
        raise _ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    n = _int_param(params, "n", 1)
    limit_value = params.get("max_completion_tokens", params.get("max_tokens"))
    limit = None if limit_value is None else int(limit_value)
    tool = _chat_tool(call)
    words, truncated = _truncate(_reply_words(call, _chat_schema(params)), limit)
    finish = "tool_calls" if tool is not None else "length" if truncated else "stop"
    arguments = _sample_json(tool.get("parameters") or {}) if tool is not None else ""
    tool_name = str(tool.get("name")) if tool is not None else ""
    completion_id = _new_id("chatcmpl-")
    created = int(time.time())
    dated = call.dated(str(model))
    tier = _service_tier(params)
    if not stream:
        choices: list[dict[str, Any]] = []
        for index in range(n):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(words),
                "refusal": None,
            }
            if tool is not None:
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": _new_id("call_")[:29],
                        "type": "function",
                        "function": {"name": tool_name, "arguments": arguments},
                    }
                ]
            message["annotations"] = []
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
            if call.azure_mode:
                choice["content_filter_results"] = _FILTER_RESULTS
            choices.append(choice)
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": dated,
            "choices": choices,
        }
        if call.with_usage:
            payload["usage"] = _chat_usage(call, None)
        payload["service_tier"] = tier
        payload["system_fingerprint"] = SYSTEM_FINGERPRINT
        if call.azure_mode:
            payload["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}
            ]
        return _Reply(payload=payload)

    stream_options = params.get("stream_options")
    include_usage = bool(
        isinstance(stream_options, Mapping) and stream_options.get("include_usage")
    )
    include_usage = include_usage and call.with_usage

    def chunk(choices: list[dict[str, Any]], usage: Json = None) -> _Event:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": dated,
            "service_tier": tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return _Event(_dumps(body))

    def delta(
        index: int, content: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}

    events: list[_Event] = []
    if call.azure_mode:
        events.append(
            _Event(
                _dumps(
                    {
                        "choices": [],
                        "created": 0,
                        "id": "",
                        "model": "",
                        "object": "",
                        "prompt_filter_results": [
                            {"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}
                        ],
                    }
                )
            )
        )
    generated = 0
    if tool is not None:
        pieces = _argument_pieces(arguments)
        for index in range(n):
            events.append(
                chunk([delta(index, {"role": "assistant", "content": None, "refusal": None})])
            )
            call_head = {
                "index": 0,
                "id": _new_id("call_")[:29],
                "type": "function",
                "function": {"name": tool_name, "arguments": ""},
            }
            events.append(chunk([delta(index, {"tool_calls": [call_head]})]))
            for piece in pieces:
                events.append(
                    chunk(
                        [
                            delta(
                                index,
                                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                            )
                        ]
                    )
                )
                generated += 1
    else:
        for index in range(n):
            events.append(
                chunk([delta(index, {"role": "assistant", "content": "", "refusal": None})])
            )
        for word in words:
            for index in range(n):
                events.append(chunk([delta(index, {"content": word})]))
                generated += 1
    for index in range(n):
        events.append(chunk([delta(index, {}, finish)]))
    if include_usage:
        events.append(chunk([], _chat_usage(call, generated)))
    events.append(_Event("[DONE]"))
    return _Reply(events=events)


# ----- legacy completions


def _legacy_usage(call: _Call, generated: int | None) -> dict[str, Any]:
    completion = call.usage.completion(generated)
    prompt = call.usage.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completions(call: _Call) -> _Reply:
    params = call.params
    model = call.require("model")
    if params.get("prompt") is None:
        raise _ApiError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    stream = bool(params.get("stream"))
    if params.get("stream_options") is not None and not stream:
        raise _ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    n = _int_param(params, "n", 1)
    limit_value = params.get("max_tokens", 16)
    words, truncated = _truncate(
        list(call.words), None if limit_value is None else int(limit_value)
    )
    finish = "length" if truncated else "stop"
    completion_id = _new_id("cmpl-")
    created = int(time.time())
    dated = call.dated(str(model))
    if not stream:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": dated,
            "choices": [
                {"text": "".join(words), "index": i, "logprobs": None, "finish_reason": finish}
                for i in range(n)
            ],
        }
        if call.with_usage:
            payload["usage"] = _legacy_usage(call, None)
        return _Reply(payload=payload)
    stream_options = params.get("stream_options")
    include_usage = bool(
        isinstance(stream_options, Mapping) and stream_options.get("include_usage")
    )
    include_usage = include_usage and call.with_usage

    def chunk(choices: list[dict[str, Any]], usage: Json = None) -> _Event:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "choices": choices,
            "model": dated,
            "system_fingerprint": None,
        }
        if include_usage:
            body["usage"] = usage
        return _Event(_dumps(body))

    events: list[_Event] = []
    generated = 0
    for word in words:
        for index in range(n):
            events.append(
                chunk([{"text": word, "index": index, "logprobs": None, "finish_reason": None}])
            )
            generated += 1
    for index in range(n):
        events.append(
            chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": finish}])
        )
    if include_usage:
        events.append(chunk([], _legacy_usage(call, generated)))
    events.append(_Event("[DONE]"))
    return _Reply(events=events)


# ----- responses


def _responses_usage(call: _Call, generated: int | None) -> dict[str, Any]:
    u = call.usage
    output = u.completion(generated)
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, **u.cache_writes()},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + output,
    }


# Hosted (built-in) tools of a Responses request, and the output item type of their calls.
HOSTED_TOOL_ITEMS: dict[str, str] = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",
    "image_generation": "image_generation_call",
    "computer_use_preview": "computer_call",
    "computer": "computer_call",
    "mcp": "mcp_call",
}


def _hosted_tool_items(call: _Call) -> list[dict[str, Any]]:
    """The calls of the request's hosted tools, completed (``usage.hosted_tool_calls`` each).

    One auto container serves all code interpreter calls of a response; a tool naming its
    container (``"container": "cntr_..."``) runs in that one.
    """
    items: list[dict[str, Any]] = []
    auto_container = _new_id("cntr_")
    for tool in call.params.get("tools") or []:
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        item_type = HOSTED_TOOL_ITEMS.get(str(kind))
        if item_type is None:
            continue
        for _ in range(call.usage.hosted_tool_calls):
            item: dict[str, Any] = {"id": _new_id(item_type[:2] + "_"), "type": item_type}
            if item_type == "web_search_call":
                item.update(status="completed", action={"type": "search", "query": "fake"})
            elif item_type == "file_search_call":
                item.update(status="completed", queries=["fake"], results=None)
            elif item_type == "code_interpreter_call":
                container = tool.get("container")
                item.update(
                    status="completed",
                    code="print(1)",
                    container_id=container if isinstance(container, str) else auto_container,
                    outputs=None,
                )
            elif item_type == "image_generation_call":
                item.update(
                    status="completed",
                    result=PNG_B64,
                    action="generate",
                    background="opaque",
                    output_format="png",
                    quality=str(tool.get("quality") or "medium"),
                    size=str(tool.get("size") or "1024x1024"),
                    revised_prompt="A fake image.",
                )
            elif item_type == "computer_call":
                item.update(
                    call_id=_new_id("call_")[:29],
                    status="completed",
                    pending_safety_checks=[],
                    action={"type": "screenshot"},
                )
            else:  # mcp_call
                item.update(
                    arguments="{}",
                    name="fake_tool",
                    server_label=str(tool.get("server_label") or "fake"),
                    output="ok",
                    status="completed",
                )
            items.append(item)
    return items


def _responses_tool(call: _Call) -> Mapping[str, Any] | None:
    params = call.params
    tools = [
        t
        for t in params.get("tools") or []
        if isinstance(t, Mapping) and t.get("type") == "function"
    ]
    choice = params.get("tool_choice", "auto")
    if not tools or choice == "none" or (not call.call_tools and choice != "required"):
        return None
    items = params.get("input")
    if isinstance(items, list) and items:
        last = items[-1]
        if isinstance(last, Mapping) and last.get("type") == "function_call_output":
            return None
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
    return tools[0]


def _responses(call: _Call) -> _Reply:
    params = call.params
    model = str(call.require("model"))
    if params.get("input") is None and params.get("prompt") is None:
        raise _ApiError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    stream = bool(params.get("stream"))
    raw_text = params.get("text")
    text_config: Mapping[str, Any] = raw_text if isinstance(raw_text, Mapping) else {}
    text_format = text_config.get("format") or {"type": "text"}
    schema = (text_format.get("schema") or {}) if text_format.get("type") == "json_schema" else None
    limit_value = params.get("max_output_tokens")
    tool = _responses_tool(call)
    words, truncated = _truncate(
        _reply_words(call, schema), None if limit_value is None else int(limit_value)
    )
    if tool is not None:
        truncated = False
    response_id = _new_id("resp_")
    created = int(time.time())
    reasoning_param = (
        params.get("reasoning") if isinstance(params.get("reasoning"), Mapping) else None
    )
    with_reasoning = reasoning_param is not None or bool(_REASONING_MODEL.match(model))
    stream_options = params.get("stream_options")
    obfuscate = not (
        isinstance(stream_options, Mapping) and stream_options.get("include_obfuscation") is False
    )

    reasoning_item: dict[str, Any] = {"id": _new_id("rs_"), "type": "reasoning", "summary": []}
    item_id = _new_id("fc_" if tool is not None else "msg_")
    call_id = _new_id("call_")[:29]
    arguments = _sample_json(tool.get("parameters") or {}) if tool is not None else ""
    text = "".join(words)

    def main_item(state: str) -> dict[str, Any]:
        if tool is not None:
            return {
                "id": item_id,
                "type": "function_call",
                "status": state,
                "arguments": arguments if state != "in_progress" else "",
                "call_id": call_id,
                "name": tool.get("name"),
            }
        content = [] if state == "in_progress" else [_output_text(text)]
        return {
            "id": item_id,
            "type": "message",
            "status": state,
            "content": content,
            "role": "assistant",
        }

    final_state = "incomplete" if truncated else "completed"

    def response(
        state: str, output: list[dict[str, Any]], usage: Json, tier: str
    ) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": state,
            "background": bool(params.get("background", False)),
            "completed_at": int(time.time()) if state in ("completed", "incomplete") else None,
            "error": None,
            "frequency_penalty": 0.0,
            "incomplete_details": {"reason": "max_output_tokens"}
            if state == "incomplete"
            else None,
            "instructions": params.get("instructions"),
            "max_output_tokens": limit_value,
            "max_tool_calls": params.get("max_tool_calls"),
            "model": call.dated(model),
            "output": output,
            "parallel_tool_calls": params.get("parallel_tool_calls", True),
            "presence_penalty": 0.0,
            "previous_response_id": params.get("previous_response_id"),
            "prompt_cache_key": params.get("prompt_cache_key"),
            "prompt_cache_retention": "in_memory",
            "reasoning": {"effort": (reasoning_param or {}).get("effort"), "summary": None},
            "safety_identifier": params.get("safety_identifier"),
            "service_tier": tier,
            "store": params.get("store", True),
            "temperature": params.get("temperature", 1.0),
            "text": {"format": text_format, "verbosity": text_config.get("verbosity", "medium")},
            "tool_choice": params.get("tool_choice", "auto"),
            "tools": params.get("tools") or [],
            "top_logprobs": params.get("top_logprobs", 0),
            "top_p": params.get("top_p", 1.0),
            "truncation": params.get("truncation", "disabled"),
            "usage": usage,
            "user": params.get("user"),
            "metadata": params.get("metadata") or {},
        }

    hosted = _hosted_tool_items(call)
    final_output = ([reasoning_item] if with_reasoning else []) + hosted + [main_item(final_state)]
    if not stream:
        usage = _responses_usage(call, None) if call.with_usage else None
        return _Reply(payload=response(final_state, final_output, usage, _service_tier(params)))

    events: list[_Event] = []

    def emit(kind: str, body: dict[str, Any]) -> None:
        events.append(
            _Event(_dumps({"type": kind, **body, "sequence_number": len(events)}), event=kind)
        )

    requested_tier = str(params.get("service_tier") or "auto")
    emit("response.created", {"response": response("in_progress", [], None, requested_tier)})
    emit("response.in_progress", {"response": response("in_progress", [], None, requested_tier)})
    index = 0
    if with_reasoning:
        emit("response.output_item.added", {"item": reasoning_item, "output_index": index})
        emit("response.output_item.done", {"item": reasoning_item, "output_index": index})
        index += 1
    for item in hosted:
        emit(
            "response.output_item.added",
            {"item": {**item, "status": "in_progress"}, "output_index": index},
        )
        emit("response.output_item.done", {"item": item, "output_index": index})
        index += 1
    emit("response.output_item.added", {"item": main_item("in_progress"), "output_index": index})
    generated = 0
    if tool is not None:
        for piece in _argument_pieces(arguments):
            body: dict[str, Any] = {"delta": piece, "item_id": item_id}
            if obfuscate:
                body["obfuscation"] = "fake"
            emit("response.function_call_arguments.delta", {**body, "output_index": index})
            generated += 1
        emit(
            "response.function_call_arguments.done",
            {
                "arguments": arguments,
                "item_id": item_id,
                "name": tool.get("name"),
                "output_index": index,
            },
        )
    else:
        place = {"content_index": 0, "item_id": item_id, "output_index": index}
        emit("response.content_part.added", {**place, "part": _output_text("")})
        for word in words:
            body = {"content_index": 0, "delta": word, "item_id": item_id, "logprobs": []}
            if obfuscate:
                body["obfuscation"] = "fake"
            emit("response.output_text.delta", {**body, "output_index": index})
            generated += 1
        emit("response.output_text.done", {**place, "logprobs": [], "text": text})
        emit("response.content_part.done", {**place, "part": _output_text(text)})
    emit("response.output_item.done", {"item": main_item(final_state), "output_index": index})
    usage = _responses_usage(call, generated) if call.with_usage else None
    emit(
        f"response.{final_state}",
        {"response": response(final_state, final_output, usage, _service_tier(params))},
    )
    return _Reply(events=events, error_style="responses")


def _compact(call: _Call) -> _Reply:
    """``responses.compact``: one compaction item, and the usage of the compaction pass.

    (The API also echoes the input's user messages; they are left out here because the
    SDK's ``CompactedResponse`` types its output as output items, which they are not.)
    """
    params = call.params
    call.require("model")
    if params.get("input") is None and params.get("previous_response_id") is None:
        raise _ApiError(400, "Missing required parameter: 'input'.", param="input")
    compaction = {
        "id": _new_id("cmp_"),
        "type": "compaction",
        "encrypted_content": base64.b64encode(b"fake compaction").decode("ascii"),
    }
    payload: dict[str, Any] = {
        "id": _new_id("resp_"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [compaction],
        "usage": _responses_usage(call, None) if call.with_usage else None,
    }
    return _Reply(payload=payload)


def _decision_answer(question: Any) -> dict[str, Any]:
    kind = question.get("type") if isinstance(question, Mapping) else None
    name = question.get("name") if isinstance(question, Mapping) else None
    if kind == "predicate":
        return {"type": "predicate", "name": name, "probability": 0.9}
    if kind == "choice":
        values = [c.get("value") for c in question.get("choices") or [] if isinstance(c, Mapping)]
        values = values or ["fake"]
        share = round(1 / len(values), 6)
        return {
            "type": "choice",
            "name": name,
            "choice": values[0],
            "confidence": share,
            "probabilities": [{"probability": share, "value": v} for v in values],
        }
    if kind == "score":
        levels = [lv.get("label") for lv in question.get("levels") or [] if isinstance(lv, Mapping)]
        levels = levels or ["fake"]
        share = round(1 / len(levels), 6)
        return {
            "type": "score",
            "name": name,
            "score": 0.0,
            "confidence": share,
            "probabilities": [
                {"label": str(label), "probability": share, "value": i}
                for i, label in enumerate(levels)
            ],
        }
    raise _ApiError(400, "Invalid question type.", param="questions")


def _decisions(call: _Call) -> _Reply:
    """``decisions.create`` (openai 3.x): one answer per question, in order, and usage."""
    model = str(call.require("model"))
    call.require("input")
    questions = call.require("questions")
    if not isinstance(questions, list) or not 1 <= len(questions) <= 400:
        raise _ApiError(400, "Ask 1 to 400 questions.", param="questions")
    u = call.usage
    output = u.completion(None)
    payload: dict[str, Any] = {
        "answers": [_decision_answer(q) for q in questions],
        "model": call.dated(model),
    }
    if call.with_usage:
        payload["usage"] = {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {
                "cache_write_tokens": u.cache_write_tokens,
                "cached_tokens": u.cached_tokens,
            },
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.prompt_tokens + output,
        }
    return _Reply(payload=payload)


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


# ----- embeddings


def _embedding_vector(item: int, dimensions: int) -> list[float]:
    # k/1024 values are exact in float32, so base64 and float answers decode to the same numbers.
    return [((item * 31 + j * 17) % 64 - 32) / 1024 for j in range(dimensions)]


def _embeddings(call: _Call) -> _Reply:
    params = call.params
    model = str(call.require("model"))
    raw_input = call.require("input")
    if isinstance(raw_input, list) and raw_input and not all(isinstance(x, int) for x in raw_input):
        count = len(raw_input)
    else:
        count = 1
    default_dimensions = 3072 if "3-large" in model else 1536
    dimensions = _int_param(params, "dimensions", default_dimensions)
    as_base64 = params.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    for index in range(count):
        vector = _embedding_vector(index, dimensions)
        embedding: Json = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if call.with_usage:
        payload["usage"] = {
            "prompt_tokens": call.usage.prompt_tokens,
            "total_tokens": call.usage.prompt_tokens,
        }
    return _Reply(payload=payload)


# ----- images


def _image_usage(call: _Call) -> dict[str, Any]:
    u = call.usage
    input_tokens = u.image_text_tokens + u.image_image_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "text_tokens": u.image_text_tokens,
            "image_tokens": u.image_image_tokens,
        },
        "output_tokens": u.image_output_tokens,
        "total_tokens": input_tokens + u.image_output_tokens,
    }


def _images(call: _Call, operation: Literal["generations", "edits", "variations"]) -> _Reply:
    params = call.params
    if operation != "variations":
        call.require("prompt")
    if operation != "generations" and params.get("image") is None and params.get("image[]") is None:
        raise _ApiError(
            400,
            "Missing required parameter: 'image'.",
            param="image",
            code="missing_required_parameter",
        )
    model = str(params.get("model") or "dall-e-2")
    n = _int_param(params, "n", 1)
    created = int(time.time())
    gpt_image = model.startswith("gpt-image")
    size = str(params.get("size") or "1024x1024")
    size = "1024x1024" if size == "auto" else size
    quality = str(params.get("quality") or ("medium" if gpt_image else "standard"))
    quality = "medium" if quality == "auto" else quality
    output_format = str(params.get("output_format") or "png")
    background = str(params.get("background") or "opaque")
    background = "opaque" if background == "auto" else background
    svg = output_format == "svg"
    if svg and (n != 1 or _form_bool(params.get("stream"))):
        raise _ApiError(400, "SVG output requires n=1 and does not support streaming.")
    if gpt_image and _form_bool(params.get("stream")):
        prefix = "image_generation" if operation == "generations" else "image_edit"
        common = {
            "b64_json": PNG_B64,
            "background": background,
            "created_at": created,
            "output_format": output_format,
            "quality": quality,
            "size": size,
        }
        events: list[_Event] = []
        for index in range(_int_param(params, "partial_images", 0)):
            kind = f"{prefix}.partial_image"
            events.append(
                _Event(_dumps({"type": kind, **common, "partial_image_index": index}), event=kind)
            )
        kind = f"{prefix}.completed"
        done: dict[str, Any] = {"type": kind, **common}
        if call.with_usage:
            done["usage"] = _image_usage(call)
        events.append(_Event(_dumps(done), event=kind))
        return _Reply(events=events)
    as_url = not gpt_image and params.get("response_format", "url") != "b64_json"
    data: list[dict[str, Any]] = []
    for index in range(n):
        image: dict[str, Any] = (
            {"url": f"{call.root_url}/fake-images/{uuid.uuid4().hex}-{index}.png"}
            if as_url
            else {"b64_json": SVG_B64 if svg else PNG_B64}
        )
        if model == "dall-e-3":
            image["revised_prompt"] = f"A revised prompt: {params.get('prompt')}"
        data.append(image)
    payload: dict[str, Any] = {"created": created, "data": data}
    if gpt_image:
        payload.update(
            background=background, output_format=output_format, quality=quality, size=size
        )
        if call.with_usage:
            payload["usage"] = _image_usage(call)
            if svg:
                payload["svg_usage"] = _svg_usage(call)
    return _Reply(payload=payload)


SVG_TEXT = '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
SVG_B64 = base64.b64encode(SVG_TEXT.encode()).decode("ascii")


def _svg_usage(call: _Call) -> dict[str, Any]:
    """Tokens of the model that authored the SVG (``svg.model``, JSON or ``svg[model]`` form)."""
    params = call.params
    options = params.get("svg")
    model = options.get("model") if isinstance(options, Mapping) else params.get("svg[model]")
    u = call.usage
    return {
        "input_tokens": u.svg_input_tokens,
        "model": str(model or "gpt-5"),
        "output_tokens": u.svg_output_tokens,
        "reasoning_tokens": u.svg_reasoning_tokens,
        "total_tokens": u.svg_input_tokens + u.svg_output_tokens,
    }


# ----- audio


def _is_token_billed_transcriber(model: str) -> bool:
    return "transcribe" in model


def _transcription_usage(call: _Call) -> dict[str, Any]:
    u = call.usage
    input_tokens = u.transcription_text_tokens + u.transcription_audio_tokens
    return {
        "type": "tokens",
        "input_tokens": input_tokens,
        "input_token_details": {
            "text_tokens": u.transcription_text_tokens,
            "audio_tokens": u.transcription_audio_tokens,
        },
        "output_tokens": u.transcription_output_tokens,
        "total_tokens": input_tokens + u.transcription_output_tokens,
    }


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _audio_text(call: _Call, task: Literal["transcribe", "translate"]) -> _Reply:
    params = call.params
    model = str(call.require("model"))
    if not isinstance(params.get("file"), UploadedFile):
        raise _ApiError(
            400,
            "Missing required parameter: 'file'.",
            param="file",
            code="missing_required_parameter",
        )
    text = call.transcript
    seconds = call.usage.audio_seconds
    response_format = str(params.get("response_format") or "json")
    tokens_model = _is_token_billed_transcriber(model)
    if task == "transcribe" and _form_bool(params.get("stream")):
        if not tokens_model:
            raise _ApiError(
                400, f"Streaming is not supported for the model {model}.", param="stream"
            )
        events = [
            _Event(_dumps({"type": "transcript.text.delta", "delta": word}))
            for word in split_words(text)
        ]
        done: dict[str, Any] = {"type": "transcript.text.done", "text": text}
        if call.with_usage:
            done["usage"] = _transcription_usage(call)
        events.append(_Event(_dumps(done)))
        return _Reply(events=events)
    if response_format == "text":
        return _Reply(raw=text.encode(), content_type="text/plain; charset=utf-8")
    if response_format == "srt":
        srt = f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n"
        return _Reply(raw=srt.encode(), content_type="text/plain; charset=utf-8")
    if response_format == "vtt":
        vtt = f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n"
        return _Reply(raw=vtt.encode(), content_type="text/plain; charset=utf-8")
    duration_usage = {"type": "duration", "seconds": seconds}
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": seconds,
            "text": text,
            "tokens": list(range(50364, 50364 + len(split_words(text)))),
            "temperature": 0.0,
            "avg_logprob": -0.25,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }
        payload: dict[str, Any] = {
            "task": task,
            "language": "english",
            "duration": seconds,
            "text": text,
            "segments": [segment],
        }
        granularities = _form_list(
            params.get("timestamp_granularities[]", params.get("timestamp_granularities"))
        )
        if task == "transcribe" and "word" in granularities:
            words = [w.strip() for w in split_words(text)]
            step = seconds / max(len(words), 1)
            payload["words"] = [
                {"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)}
                for i, w in enumerate(words)
            ]
        if task == "transcribe" and call.with_usage:
            payload["usage"] = duration_usage
        return _Reply(payload=payload)
    payload = {"text": text}
    if task == "transcribe" and call.with_usage:
        payload["usage"] = _transcription_usage(call) if tokens_model else duration_usage
    return _Reply(payload=payload)


def _speech(call: _Call) -> _Reply:
    params = call.params
    call.require("model")
    call.require("input")
    call.require("voice")
    if params.get("stream_format") == "sse":
        audio = base64.b64encode(SPEECH_BYTES).decode("ascii")
        events = [_Event(_dumps({"type": "speech.audio.delta", "audio": audio}))]
        done: dict[str, Any] = {"type": "speech.audio.done"}
        if call.with_usage:
            u = call.usage
            done["usage"] = {
                "input_tokens": u.speech_input_tokens,
                "output_tokens": u.speech_output_tokens,
                "total_tokens": u.speech_input_tokens + u.speech_output_tokens,
            }
        events.append(_Event(_dumps(done)))
        return _Reply(events=events)
    content_type = _SPEECH_CONTENT_TYPES.get(
        str(params.get("response_format") or "mp3"), "audio/mpeg"
    )
    return _Reply(raw=SPEECH_BYTES, content_type=content_type)


# ----- moderations


def _moderation_result(kinds: set[str]) -> dict[str, Any]:
    applied = {
        name: sorted(kinds) if name in _IMAGE_CAPABLE_CATEGORIES else sorted(kinds & {"text"})
        for name in _MODERATION_CATEGORIES
    }
    return {
        "flagged": False,
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": {
            name: round(1e-6 * (i + 1), 8) for i, name in enumerate(_MODERATION_CATEGORIES)
        },
        "category_applied_input_types": applied,
    }


def _moderations(call: _Call) -> _Reply:
    params = call.params
    raw_input = call.require("input")
    model = str(params.get("model") or "omni-moderation-latest")
    results: list[dict[str, Any]]
    if isinstance(raw_input, list) and raw_input and all(isinstance(x, Mapping) for x in raw_input):
        kinds = {"image" if x.get("type") == "image_url" else "text" for x in raw_input}
        results = [_moderation_result(kinds)]
    elif isinstance(raw_input, list):
        results = [_moderation_result({"text"}) for _ in raw_input]
    else:
        results = [_moderation_result({"text"})]
    payload = {"id": _new_id("modr-"), "model": call.dated(model), "results": results}
    return _Reply(payload=payload)


_ROUTES: tuple[tuple[str, Callable[[_Call], _Reply]], ...] = (
    ("/chat/completions", _chat_completions),
    ("/completions", _completions),
    ("/responses/compact", _compact),
    ("/responses", _responses),
    ("/decisions", _decisions),
    ("/embeddings", _embeddings),
    ("/images/generations", lambda call: _images(call, "generations")),
    ("/images/edits", lambda call: _images(call, "edits")),
    ("/images/variations", lambda call: _images(call, "variations")),
    ("/audio/transcriptions", lambda call: _audio_text(call, "transcribe")),
    ("/audio/translations", lambda call: _audio_text(call, "translate")),
    ("/audio/speech", _speech),
    ("/moderations", _moderations),
)


def _route(method: str, path: str) -> Callable[[_Call], _Reply] | None:
    if method != "POST":
        return None
    trimmed = path.rstrip("/")
    for suffix, handler in _ROUTES:
        if trimmed.endswith(suffix):
            return handler
    return None


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # answer at once on keep-alive connections (no 40 ms stall)
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        started = time.monotonic()
        fake = self.server.fake
        body = self._read_body()
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            request_id=_new_id("req_"),
        )
        parse_error: _ApiError | None = None
        content_type = headers.get("content-type", "")
        try:
            if content_type.startswith("multipart/form-data"):
                request.form = _parse_multipart(body, content_type)
            elif body and "json" in content_type:
                request.json = json.loads(body)
        except ValueError:
            parse_error = _ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)",
            )
        fault = fake._receive(request)
        kind = fault.kind if fault is not None else None

        if fault is not None and kind == "delay" and not self._wait(fault.seconds):
            self._abort()
            return
        if kind == "drop_connection":
            self._abort()
            return
        if fault is not None and kind == "raw":
            self._send_raw(fault, request, started)
            return

        reply: _Reply
        if fault is not None and kind == "status":
            reply = _fault_reply(fault, request)
        elif parse_error is not None:
            reply = _error_reply(parse_error)
        elif (
            kind == "reject_stream_options"
            and isinstance(request.json, dict)
            and "stream_options" in request.json
        ):
            reply = _error_reply(
                _ApiError(
                    400,
                    "Unrecognized request argument supplied: stream_options",
                    param="stream_options",
                )
            )
        else:
            handler = _route(self.command, split.path)
            if handler is None:
                reply = _error_reply(_ApiError(404, f"Invalid URL ({self.command} {split.path})"))
            else:
                call = fake._call(request, with_usage=kind != "no_usage")
                try:
                    reply = handler(call)
                except _ApiError as error:
                    reply = _error_reply(error)
                except Exception as error:  # a bug of the fake: say so instead of hanging up
                    reply = _error_reply(
                        _ApiError(500, f"fake_openai failed: {error!r}", error_type="server_error")
                    )
        self._send(reply, request, fault, started)

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the server stops or the client goes away meanwhile."""
        deadline = time.monotonic() + seconds
        stopping = self.server.fake._stopping
        while (remaining := deadline - time.monotonic()) > 0:
            if stopping.wait(min(remaining, 0.05)) or self._peer_closed():
                return False
        return True

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- response

    def _start(self, reply: _Reply, request: RecordedRequest, started: float) -> None:
        self.send_response(reply.status)
        self.send_header("x-request-id", request.request_id)
        self.send_header(
            "openai-processing-ms", str(max(1, int((time.monotonic() - started) * 1000)))
        )
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-organization", "fake-org")
        self.send_header("x-ratelimit-limit-requests", "10000")
        self.send_header("x-ratelimit-limit-tokens", "200000")
        self.send_header("x-ratelimit-remaining-requests", "9999")
        self.send_header("x-ratelimit-remaining-tokens", "199983")
        self.send_header("x-ratelimit-reset-requests", "8.64s")
        self.send_header("x-ratelimit-reset-tokens", "5ms")
        for name, value in reply.headers.items():
            self.send_header(name, value)

    def _send_raw(self, fault: Fault, request: RecordedRequest, started: float) -> None:
        reply = _Reply(status=fault.status_code, headers=dict(fault.headers or {}))
        try:
            self._start(reply, request, started)
            self.send_header("Content-Type", fault.content_type)
            if len(fault.body_chunks) == 1:
                self.send_header("Content-Length", str(len(fault.body_chunks[0])))
                self.end_headers()
                self.wfile.write(fault.body_chunks[0])
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for data in fault.body_chunks:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _send(
        self, reply: _Reply, request: RecordedRequest, fault: Fault | None, started: float
    ) -> None:
        kind = fault.kind if fault is not None else None
        cut = fault.after_chunks if fault is not None and kind == "stream_cut" else None
        try:
            if reply.events is None:
                body = reply.body_bytes()
                self._start(reply, request, started)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[: len(body) // 2])
                    self._abort()
                    return
                self.wfile.write(body)
                return
            events = reply.events
            if fault is not None and kind == "sse_error":
                events = [
                    *events[:1],
                    _sse_error_event(reply.error_style, fault.message or "Stream error."),
                ]
            if cut is not None:
                events = [e for e in events if e.data != "[DONE]"][:cut]
            self._start(reply, request, started)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events:
                data = event.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            if cut is not None:
                self._abort()
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


def _error_reply(error: _ApiError, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status=error.status_code, payload=error.body, headers=dict(headers or {}))


def _fault_reply(fault: Fault, request: RecordedRequest) -> _Reply:
    default_type, default_message, default_code = _ERROR_DEFAULTS.get(
        fault.status_code,
        (
            "server_error" if fault.status_code >= 500 else "invalid_request_error",
            "Fake error.",
            None,
        ),
    )
    model = request.params.get("model")
    message = fault.message or default_message.replace("{model}", str(model or "unknown"))
    error = _ApiError(
        fault.status_code,
        message,
        error_type=fault.error_type or default_type,
        param=fault.param,
        code=fault.error_code or default_code,
    )
    return _error_reply(error, fault.headers)


# --------------------------------------------------------------------------- the server


class FakeOpenAI:
    """A fake OpenAI API server on 127.0.0.1; a context manager (``start()`` / ``stop()``).

    Attributes a test may set at any time (each request uses the values current
    when it arrives):

    * ``usage`` -- a :class:`UsageScript` with the numbers reported;
    * ``reply_words`` -- the assistant reply, one stream chunk per element
      (``reply_text`` reads/sets it as one string);
    * ``transcript_text`` -- the text of transcriptions and translations;
    * ``call_tools`` -- with ``tool_choice`` "auto", answer requests that have
      function tools (and whose last message is not a tool result) with a tool call;
    * ``azure_mode`` -- add Azure's content-filter fields, including the leading
      ``"choices": []`` chunk Azure sends first in chat streams;
    * ``model_aliases`` -- request model -> reported model (others get "-2024-07-18"
      appended unless they already end with a date).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.usage = UsageScript()
        self.reply_words: list[str] = list(DEFAULT_REPLY_WORDS)
        self.transcript_text = DEFAULT_TRANSCRIPT
        self.call_tools = True
        self.azure_mode = False
        self.model_aliases: dict[str, str] = dict(DEFAULT_MODEL_ALIASES)
        self._faults: list[tuple[Fault, int | None]] = []
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeOpenAI:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for ``AzureOpenAI(azure_endpoint=...)``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (for ``OpenAI(base_url=...)``)."""
        return f"{self.root_url}/v1"

    # -- scripting

    @property
    def reply_text(self) -> str:
        return "".join(self.reply_words)

    @reply_text.setter
    def reply_text(self, text: str) -> None:
        self.reply_words = split_words(text)

    def enqueue(self, fault: Fault) -> None:
        """Give the next request matching ``fault.path`` this behaviour (faults apply FIFO)."""
        with self._lock:
            self._faults.append((fault, fault.times))

    def reset(self) -> None:
        """Forget requests and queued faults; restore the default usage, replies and settings."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.usage = UsageScript()
            self.reply_words = list(DEFAULT_REPLY_WORDS)
            self.transcript_text = DEFAULT_TRANSCRIPT
            self.call_tools = True
            self.azure_mode = False
            self.model_aliases = dict(DEFAULT_MODEL_ALIASES)

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return [fault for fault, _ in self._faults]

    def requests_to(self, suffix: str) -> list[RecordedRequest]:
        """The recorded requests whose path ends with ``suffix``."""
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith(suffix.rstrip("/"))]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self.requests:
                raise LookupError("the fake OpenAI server has received no request")
            return self.requests[-1]

    # -- used by the handler threads

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests were received (False on timeout)."""
        with self._received:
            return self._received.wait_for(lambda: len(self.requests) >= count, timeout)

    def _receive(self, request: RecordedRequest) -> Fault | None:
        with self._received:
            self.requests.append(request)
            self._received.notify_all()
            for position, (fault, remaining) in enumerate(self._faults):
                if fault.matches(request.path):
                    if remaining is None:
                        pass
                    elif remaining <= 1:
                        del self._faults[position]
                    else:
                        self._faults[position] = (fault, remaining - 1)
                    return fault
        return None

    def _call(self, request: RecordedRequest, *, with_usage: bool) -> _Call:
        with self._lock:
            words = list(self.reply_words)
            return _Call(
                request=request,
                params=request.params,
                usage=replace(self.usage),
                words=words,
                words_are_default=tuple(words) == DEFAULT_REPLY_WORDS,
                transcript=self.transcript_text,
                with_usage=with_usage,
                azure_mode=self.azure_mode,
                call_tools=self.call_tools,
                aliases=dict(self.model_aliases),
                root_url=self.root_url,
            )


def start_server(host: str = "127.0.0.1", port: int = 0) -> FakeOpenAI:
    """Start a :class:`FakeOpenAI` and return it; call ``stop()`` when done (or use ``with``)."""
    return FakeOpenAI(host, port).start()


def iter_sse(body: bytes) -> Iterator[tuple[str | None, str]]:
    """Split a raw SSE body into ``(event, data)`` pairs (for tests that read raw streams)."""
    for block in body.decode().split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            yield event, "\n".join(data)
