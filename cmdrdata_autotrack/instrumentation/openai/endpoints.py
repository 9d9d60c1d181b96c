"""The billable methods of the ``openai`` SDK, as data.

Each row names a resource module, its sync and async classes, a method and what
that method is: a *call* (one HTTP request, one span) or a *stream helper*
(``.stream()``, which calls ``create`` later, when its manager is entered: it
opens no span of its own, it only carries the call's attribution to ``create``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...usage import extract

Role = Literal["call", "stream_helper"]


@dataclass(frozen=True)
class Endpoint:
    modules: tuple[str, ...]  # where the classes are defined (differs across SDK versions)
    classes: tuple[str, str]  # (sync, async)
    method: str
    operation: str  # gen_ai.operation.name
    api_type: str  # openai.api.type
    family: str  # how to read usage: see usage.extract
    role: Role = "call"
    injects_stream_usage: bool = False  # chat/legacy completions: stream_options.include_usage
    output_type: str | None = None  # gen_ai.output.type when the request does not say

    @property
    def extractor(self) -> extract.Extractor:
        return _EXTRACTORS[self.family]


_EXTRACTORS: dict[str, extract.Extractor] = {
    "chat": extract.extract_chat,
    "completions": extract.extract_chat,
    "responses": extract.extract_responses,
    "embeddings": extract.extract_embeddings,
    "images": extract.extract_images,
    "audio_text": extract.extract_audio_text,
    "speech": extract.extract_nothing,
    "moderation": extract.extract_moderation,
}

_CHAT = ("openai.resources.chat.completions.completions", "openai.resources.chat.completions")
_BETA_CHAT = ("openai.resources.beta.chat.completions",)
_RESPONSES = ("openai.resources.responses.responses",)
_PAIR_CHAT = ("Completions", "AsyncCompletions")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        _CHAT,
        _PAIR_CHAT,
        "create",
        "chat",
        "chat_completions",
        "chat",
        injects_stream_usage=True,
        output_type="text",
    ),
    Endpoint(_CHAT, _PAIR_CHAT, "parse", "chat", "chat_completions", "chat", output_type="json"),
    Endpoint(_CHAT, _PAIR_CHAT, "stream", "chat", "chat_completions", "chat", role="stream_helper"),
    Endpoint(
        _BETA_CHAT, _PAIR_CHAT, "parse", "chat", "chat_completions", "chat", output_type="json"
    ),
    Endpoint(
        _BETA_CHAT, _PAIR_CHAT, "stream", "chat", "chat_completions", "chat", role="stream_helper"
    ),
    Endpoint(
        _RESPONSES,
        ("Responses", "AsyncResponses"),
        "create",
        "chat",
        "responses",
        "responses",
        output_type="text",
    ),
    Endpoint(
        _RESPONSES,
        ("Responses", "AsyncResponses"),
        "parse",
        "chat",
        "responses",
        "responses",
        output_type="json",
    ),
    Endpoint(
        _RESPONSES,
        ("Responses", "AsyncResponses"),
        "stream",
        "chat",
        "responses",
        "responses",
        role="stream_helper",
    ),
    Endpoint(
        ("openai.resources.completions",),
        _PAIR_CHAT,
        "create",
        "text_completion",
        "completions",
        "completions",
        injects_stream_usage=True,
        output_type="text",
    ),
    Endpoint(
        ("openai.resources.embeddings",),
        ("Embeddings", "AsyncEmbeddings"),
        "create",
        "embeddings",
        "embeddings",
        "embeddings",
    ),
    Endpoint(
        ("openai.resources.images",),
        ("Images", "AsyncImages"),
        "generate",
        "image_generation",
        "images",
        "images",
        output_type="image",
    ),
    Endpoint(
        ("openai.resources.images",),
        ("Images", "AsyncImages"),
        "edit",
        "image_edit",
        "images",
        "images",
        output_type="image",
    ),
    Endpoint(
        ("openai.resources.images",),
        ("Images", "AsyncImages"),
        "create_variation",
        "image_variation",
        "images",
        "images",
        output_type="image",
    ),
    Endpoint(
        ("openai.resources.audio.transcriptions",),
        ("Transcriptions", "AsyncTranscriptions"),
        "create",
        "audio_transcription",
        "audio",
        "audio_text",
        output_type="text",
    ),
    Endpoint(
        ("openai.resources.audio.translations",),
        ("Translations", "AsyncTranslations"),
        "create",
        "audio_translation",
        "audio",
        "audio_text",
        output_type="text",
    ),
    Endpoint(
        ("openai.resources.audio.speech",),
        ("Speech", "AsyncSpeech"),
        "create",
        "audio_speech",
        "audio",
        "speech",
        output_type="speech",
    ),
    Endpoint(
        ("openai.resources.moderations",),
        ("Moderations", "AsyncModerations"),
        "create",
        "moderation",
        "moderations",
        "moderation",
    ),
)

# Where the SDK turns an HTTP response into what the caller gets: one hook sees every
# billable response whichever entry point made it (plain, raw, streaming response).
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
