"""The billable surfaces of the ``openai`` SDK, as data: one row per method.

Each row names where the method is defined (a resource module, its sync and async
classes, the method), what it is (a *call*: one HTTP request, one span; or a *stream
helper*: ``.stream()``, which calls ``create`` later, when its manager is entered: it
opens no span of its own, it only carries the call's attribution to ``create``), the
HTTP request it makes (so a direct ``client.post(path)`` is metered too), how to read
the usage of its response (its extractor) and of its event stream (its stream kind
and terminal events), and which billable units its request alone tells.

Everything else is derived from these rows, once, at import: the modules to hook, the
path routes of direct calls, the terminal stream event types. Adding a surface is
adding a row (see ``docs/adding-an-endpoint.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ...usage import extract
from ...usage.model import Usage
from . import request as R

Role = Literal["call", "stream_helper"]
RequestUnits = Callable[[Mapping[str, Any]], Usage | None]


@dataclass(frozen=True)
class Endpoint:
    modules: tuple[str, ...]  # where the classes are defined (differs across SDK versions)
    classes: tuple[str, str]  # (sync, async)
    method: str
    operation: str  # gen_ai.operation.name
    api_type: str  # openai.api.type
    extractor: extract.Extractor  # reads usage from its response (SDK object or JSON)
    # The HTTP method and path (after the client's base URL) of its request: a direct
    # client.post() to that path is metered as this endpoint. None: not routed by path.
    http: tuple[str, str] | None = None
    # How its server-sent events are read (a key of usage.extract.STREAM_READERS), and the
    # event types that end its stream (besides `data: [DONE]`). None: it never streams.
    stream: str | None = None
    terminal_events: tuple[str, ...] = ()
    role: Role = "call"
    # Every successful response reports token usage: one without it is flagged and estimated.
    reports_usage: bool = False
    estimates_output: bool = True  # an estimate also counts output tokens (not embeddings)
    injects_stream_usage: bool = False  # chat/legacy completions: stream_options.include_usage
    output_type: str | None = None  # gen_ai.output.type when the request does not say
    request_units: RequestUnits | None = None  # units known from the request alone
    # Units estimated from the request when the response reports no usage at all.
    fallback: RequestUnits | None = None
    text_body: bool = False  # a text/* body is read by the extractor (whisper's text formats)
    # Reserved for surfaces whose usage arrives after the call returns (background
    # responses, batches, runs): their rows will say where the usage is read later.
    usage_later: bool = False
    # Which reader of ``usage.snapshot`` copies its parsed response for the importer thread
    # to read (the app's thread then only copies). None: read on the app's thread.
    reader: str | None = None

    @property
    def family(self) -> str:
        """The stream kind, as the SSE observer takes it."""
        return self.stream or ""


_CHAT = ("openai.resources.chat.completions.completions", "openai.resources.chat.completions")
_BETA_CHAT = ("openai.resources.beta.chat.completions",)
_RESPONSES = ("openai.resources.responses.responses",)
_BETA_RESPONSES = ("openai.resources.beta.responses.responses",)
_PAIR_CHAT = ("Completions", "AsyncCompletions")
_PAIR_RESPONSES = ("Responses", "AsyncResponses")
_RESPONSE_END = ("response.completed", "response.incomplete", "response.failed")


def _chat(modules: tuple[str, ...], method: str, **row: Any) -> Endpoint:
    return Endpoint(
        modules,
        _PAIR_CHAT,
        method,
        "chat",
        "chat_completions",
        extract.extract_chat,
        http=("POST", "/chat/completions"),
        stream="chat",
        reports_usage=True,
        request_units=R.chat_request_units,
        reader="chat",
        **row,
    )


def _responses(modules: tuple[str, ...], method: str, **row: Any) -> Endpoint:
    return Endpoint(
        modules,
        _PAIR_RESPONSES,
        method,
        "chat",
        "responses",
        extract.extract_responses,
        http=("POST", "/responses"),
        stream="responses",
        terminal_events=_RESPONSE_END,
        reports_usage=True,
        reader="responses",
        **row,
    )


def _compact(modules: tuple[str, ...]) -> Endpoint:
    return Endpoint(
        modules,
        _PAIR_RESPONSES,
        "compact",
        "compaction",
        "responses",
        extract.extract_responses,
        http=("POST", "/responses/compact"),
        reports_usage=True,
        reader="responses",
    )


def _images(method: str, operation: str, path: str, stream: str | None) -> Endpoint:
    return Endpoint(
        ("openai.resources.images",),
        ("Images", "AsyncImages"),
        method,
        operation,
        "images",
        extract.extract_images,
        http=("POST", path),
        stream="images" if stream else None,
        terminal_events=(stream,) if stream else (),
        output_type="image",
        request_units=R.image_request_units,
    )


def _audio_text(module: str, classes: tuple[str, str], operation: str, path: str) -> Endpoint:
    streams = operation == "audio_transcription"
    return Endpoint(
        (module,),
        classes,
        "create",
        operation,
        "audio",
        extract.extract_audio_text,
        http=("POST", path),
        stream="audio_text" if streams else None,
        terminal_events=("transcript.text.done",) if streams else (),
        output_type="text",
        text_body=True,
    )


ENDPOINTS: tuple[Endpoint, ...] = (
    _chat(_CHAT, "create", injects_stream_usage=True, output_type="text"),
    _chat(_CHAT, "parse", output_type="json"),
    _chat(_CHAT, "stream", role="stream_helper"),
    _chat(_BETA_CHAT, "parse", output_type="json"),
    _chat(_BETA_CHAT, "stream", role="stream_helper"),
    _responses(_RESPONSES, "create", output_type="text"),
    _responses(_RESPONSES, "parse", output_type="json"),
    _responses(_RESPONSES, "stream", role="stream_helper"),
    _compact(_RESPONSES),
    _responses(_BETA_RESPONSES, "create", output_type="text"),
    _compact(_BETA_RESPONSES),
    Endpoint(
        ("openai.resources.completions",),
        _PAIR_CHAT,
        "create",
        "text_completion",
        "completions",
        extract.extract_chat,
        http=("POST", "/completions"),
        stream="completions",
        reports_usage=True,
        injects_stream_usage=True,
        output_type="text",
        reader="chat",
    ),
    Endpoint(
        ("openai.resources.embeddings",),
        ("Embeddings", "AsyncEmbeddings"),
        "create",
        "embeddings",
        "embeddings",
        extract.extract_embeddings,
        http=("POST", "/embeddings"),
        reports_usage=True,
        estimates_output=False,
        reader="embeddings",
    ),
    _images("generate", "image_generation", "/images/generations", "image_generation.completed"),
    _images("edit", "image_edit", "/images/edits", "image_edit.completed"),
    _images("create_variation", "image_variation", "/images/variations", None),
    _audio_text(
        "openai.resources.audio.transcriptions",
        ("Transcriptions", "AsyncTranscriptions"),
        "audio_transcription",
        "/audio/transcriptions",
    ),
    _audio_text(
        "openai.resources.audio.translations",
        ("Translations", "AsyncTranslations"),
        "audio_translation",
        "/audio/translations",
    ),
    Endpoint(
        ("openai.resources.audio.speech",),
        ("Speech", "AsyncSpeech"),
        "create",
        "audio_speech",
        "audio",
        extract.extract_nothing,
        http=("POST", "/audio/speech"),
        stream="speech",
        terminal_events=("speech.audio.done",),
        output_type="speech",
        request_units=R.speech_request_units,
        fallback=R.speech_token_estimate,
    ),
    Endpoint(
        ("openai.resources.moderations",),
        ("Moderations", "AsyncModerations"),
        "create",
        "moderation",
        "moderations",
        extract.extract_moderation,
        http=("POST", "/moderations"),
    ),
    Endpoint(
        ("openai.resources.decisions",),
        ("Decisions", "AsyncDecisions"),
        "create",
        "decision",
        "decisions",
        extract.extract_decision,
        http=("POST", "/decisions"),
        reports_usage=True,
    ),
)

# A direct call to a path no row knows whose JSON answer has a usage object: tokens only.
GENERIC = Endpoint(
    (),
    ("", ""),
    "post",
    "unknown",
    "generic",
    extract.extract_generic,
)

# --- derived once -------------------------------------------------------------------------

# (HTTP method, path) -> the row a direct call to it is metered as (the first call row).
ROUTES: dict[tuple[str, str], Endpoint] = {}
for _row in ENDPOINTS:
    if _row.http is not None and _row.role == "call":
        ROUTES.setdefault(_row.http, _row)
# The first path segments of OpenAI's own API: a direct call under one of them that no row
# routes (a retrieval, a cancel, a batch, a run...) is never metered generically (its usage
# is a stored call's, or another surface's); one whose answer carries usage is counted.
OPENAI_ROOTS: frozenset[str] = frozenset(
    {row.http[1].split("/")[1] for row in ENDPOINTS if row.http is not None}
    | {
        "admin",
        "assistants",
        "batches",
        "beta",
        "chatkit",
        "containers",
        "conversations",
        "evals",
        "files",
        "fine_tuning",
        "live",
        "models",
        "organization",
        "realtime",
        "skills",
        "threads",
        "uploads",
        "vector_stores",
        "videos",
    }
)
# Every event type that ends a stream of some endpoint.
TERMINAL_EVENT_TYPES: tuple[str, ...] = tuple(
    dict.fromkeys(name for row in ENDPOINTS for name in row.terminal_events)
)

# Where the SDK turns an HTTP response into what the caller gets: one hook sees every
# billable response whichever entry point made it (plain, raw, streaming response), and
# every direct client.post() too.
BASE_CLIENT_MODULE = "openai._base_client"
PROCESS_RESPONSE = (("SyncAPIClient", "_process_response"), ("AsyncAPIClient", "_process_response"))

SUPPORTED_MIN = (1, 40)
SUPPORTED_MAX_EXCLUSIVE = (4, 0)


def all_modules() -> list[str]:
    seen: dict[str, None] = {}
    for endpoint in ENDPOINTS:
        for module in endpoint.modules:
            seen.setdefault(module, None)
    return list(seen)
