"""Which provider serves a client: ``gen_ai.provider.name``, so bills of hosts never mix.

The ``openai`` SDK talks to many hosts: OpenAI itself, Azure, Bedrock, Vertex, and
OpenAI-compatible APIs (OpenRouter, Groq, Together, DeepSeek, a local vLLM...). The
provider is told, in this order, by

1. the client: ``AzureOpenAI`` is Azure, ``BedrockOpenAI`` Bedrock, and a client made
   with one of the SDK's provider factories (3.x: ``provider=bedrock(...)`` or
   ``vertex(...)``) says which one it is;
2. the host of its base URL, for the hosts listed below;
3. otherwise ``openai_compatible``: an OpenAI-compatible server the agent cannot name
   (a local vLLM, a gateway). Its calls are never labelled ``openai``; the event's
   ``server_address`` tells such hosts apart.

Names follow the OpenTelemetry GenAI conventions where they define one (``openai``,
``azure.ai.openai``, ``aws.bedrock``, ``gcp.vertex_ai``, ``gcp.gemini``, ``groq``,
``deepseek``, ``x_ai``, ``mistral_ai``, ``perplexity``, ``cohere``...); the others are
lower-case names of the same style (``openrouter``, ``together_ai``, ``fireworks_ai``).
"""

from __future__ import annotations

from typing import Any

OPENAI = "openai"
COMPATIBLE = "openai_compatible"

# Client classes (by name, anywhere in the MRO) that say their provider.
_CLASSES: dict[str, str] = {
    "AzureOpenAI": "azure.ai.openai",
    "AsyncAzureOpenAI": "azure.ai.openai",
    "BedrockOpenAI": "aws.bedrock",
    "AsyncBedrockOpenAI": "aws.bedrock",
}
# The SDK's provider factories (openai 3.x: client._provider_runtime.name).
_RUNTIMES: dict[str, str] = {"bedrock": "aws.bedrock", "vertex": "gcp.vertex_ai"}
# Exact hosts.
_HOSTS: dict[str, str] = {
    "api.openai.com": OPENAI,
    "eu.api.openai.com": OPENAI,
    "us.api.openai.com": OPENAI,
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.mistral.ai": "mistral_ai",
    "api.perplexity.ai": "perplexity",
    "api.cohere.ai": "cohere",
    "api.cohere.com": "cohere",
    "openrouter.ai": "openrouter",
    "api.together.xyz": "together_ai",
    "api.together.ai": "together_ai",
    "api.fireworks.ai": "fireworks_ai",
    "generativelanguage.googleapis.com": "gcp.gemini",
}
# Host suffixes (a dot before them, or the whole host).
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("openai.azure.com", "azure.ai.openai"),
    ("cognitiveservices.azure.com", "azure.ai.openai"),
    ("services.ai.azure.com", "azure.ai.inference"),
    ("models.inference.ai.azure.com", "azure.ai.inference"),
)
_VERTEX = "aiplatform.googleapis.com"


def _from_host(host: str) -> str | None:
    host = host.rstrip(".").lower()
    known = _HOSTS.get(host)
    if known is not None:
        return known
    for suffix, name in _SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return name
    # Vertex: aiplatform.googleapis.com, <location>-aiplatform.googleapis.com
    if host == _VERTEX or host.endswith(("-" + _VERTEX, "." + _VERTEX)):
        return "gcp.vertex_ai"
    # Bedrock: bedrock-runtime.<region>.amazonaws.com, bedrock-mantle.<region>.api.aws...
    if host.startswith(("bedrock-runtime.", "bedrock-runtime-fips.", "bedrock-mantle.")):
        return "aws.bedrock"
    return None


def provider_name(client: Any, host: str | None) -> str:
    """The provider of ``client``, whose base URL's host is ``host`` (see the module)."""
    for cls in type(client).__mro__:
        name = _CLASSES.get(cls.__name__)
        if name is not None:
            return name
    runtime = getattr(client, "_provider_runtime", None)  # never a property: a plain slot
    if runtime is not None:
        name = _RUNTIMES.get(str(getattr(runtime, "name", "")))
        if name is not None:
            return name
    if host:
        known = _from_host(host)
        if known is not None:
            return known
    return COMPATIBLE
