"""The billable units, as data: one row per unit drives everything that carries it.

A row names the unit once, and from it come the :class:`~.model.Usage` field of that
name, the span attribute (:attr:`Unit.attribute`), the usage event's field (a
top-level field for the token counts, a key of ``units`` for the others), the
ledger column, the ``report`` column (:attr:`Unit.header`), how the price table
prices it (:attr:`Unit.price`, see :mod:`cmdrdata_autotrack.pricing`) and its entry
in ``docs/usage-event.schema.json`` (:func:`event_schema_units`, checked by a test).

Adding a billable unit is adding a row here (and, when its price is not of a kind
pricing already knows, its rule in ``pricing.cost``); an extractor then sets it by
name. See ``docs/adding-an-endpoint.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import attributes as A

# count: a non-negative integer; seconds: a non-negative number; text: a bounded string;
# ids: a bounded list of bounded strings (a string[] span attribute).
Kind = Literal["count", "seconds", "text", "ids"]
# How a unit is priced (keys of a model's entry in prices.json, or of its "tools" section):
#   input / cached_input / output / reasoning   the main token prices (per 1M tokens)
#   cache_write / cache_write_12h / input_audio / input_image / output_audio
#                                               a breakdown priced at its own rate when the
#                                               model names one (else at its total's rate)
#   svg          tokens of the model that authored an SVG, at that model's prices
#   per_image / per_minute / per_1m_characters  the model's non-token prices
#   tool         a built-in tool's fee: the "tools" entry of the same name
#   None         not priced itself (a descriptor of another unit, or tokens-only)
Price = str | None


@dataclass(frozen=True)
class Unit:
    name: str  # Usage field, event key, ledger column
    attribute: str  # span attribute
    kind: Kind
    description: str  # for the docs and the JSON Schema
    header: str | None = None  # report column; None: not a column (a descriptor)
    part_of: str | None = None  # a breakdown of this other unit (already counted in it)
    price: Price = None
    top_level: bool = False  # its own event field (the main token counts), else in `units`
    limit: int = 0  # text: characters; ids: items (each at most 128 characters)
    group: str = "tokens"  # tokens | images | audio | tools: for the report's layout
    item_type: str | None = None  # tools: the Responses output item type it counts


def _tool(name: str, item_type: str, header: str, description: str, price: Price = "tool") -> Unit:
    return Unit(
        name,
        f"cmdrdata.usage.{name}",
        "count",
        description,
        header,
        price=price,
        group="tools",
        item_type=item_type,
    )


UNITS: tuple[Unit, ...] = (
    # --- tokens --------------------------------------------------------------------------
    Unit(
        "input_tokens",
        A.INPUT_TOKENS,
        "count",
        "Input (prompt) tokens; includes cached_input_tokens and cache_write_tokens.",
        "input",
        price="input",
        top_level=True,
    ),
    Unit(
        "cached_input_tokens",
        A.CACHE_READ_INPUT_TOKENS,
        "count",
        "Input tokens served from OpenAI's prompt cache (prompt_tokens_details.cached_tokens /"
        " input_tokens_details.cached_tokens); part of input_tokens.",
        "cached",
        part_of="input_tokens",
        price="cached_input",
        top_level=True,
    ),
    Unit(
        "cache_write_tokens",
        A.CACHE_CREATION_INPUT_TOKENS,
        "count",
        "Input tokens written to the prompt cache (input_tokens_details.cache_write_tokens /"
        " prompt_tokens_details.cache_write_tokens); part of input_tokens.",
        "cache write",
        part_of="input_tokens",
        price="cache_write",
    ),
    Unit(
        "cache_write_30m_tokens",
        "cmdrdata.usage.cache_write_30m_tokens",
        "count",
        "Cache writes with 30-minute retention (cache_write_tokens_details.ttl_30m_tokens);"
        " part of cache_write_tokens.",
        part_of="cache_write_tokens",
    ),
    Unit(
        "cache_write_12h_tokens",
        "cmdrdata.usage.cache_write_12h_tokens",
        "count",
        "Cache writes with 12-hour retention (cache_write_tokens_details.ttl_12h_tokens);"
        " part of cache_write_tokens.",
        part_of="cache_write_tokens",
        price="cache_write_12h",
    ),
    Unit(
        "input_text_tokens",
        A.INPUT_TEXT_TOKENS,
        "count",
        "Text input tokens, a breakdown of input_tokens (input_tokens_details.text_tokens:"
        " images, transcriptions; prompt_tokens_details.text_tokens).",
        part_of="input_tokens",
    ),
    Unit(
        "input_audio_tokens",
        A.INPUT_AUDIO_TOKENS,
        "count",
        "Audio input tokens, a breakdown of input_tokens (prompt_tokens_details.audio_tokens /"
        " input_token_details.audio_tokens).",
        part_of="input_tokens",
        price="input_audio",
    ),
    Unit(
        "input_image_tokens",
        A.INPUT_IMAGE_TOKENS,
        "count",
        "Image input tokens, a breakdown of input_tokens (input_tokens_details.image_tokens:"
        " images; prompt_tokens_details.image_tokens).",
        part_of="input_tokens",
        price="input_image",
    ),
    Unit(
        "output_tokens",
        A.OUTPUT_TOKENS,
        "count",
        "Output (completion) tokens; includes reasoning_tokens.",
        "output",
        price="output",
        top_level=True,
    ),
    Unit(
        "reasoning_tokens",
        A.REASONING_OUTPUT_TOKENS,
        "count",
        "Reasoning tokens; part of output_tokens.",
        "reasoning",
        part_of="output_tokens",
        price="reasoning",
        top_level=True,
    ),
    Unit(
        "output_text_tokens",
        "cmdrdata.usage.output_text_tokens",
        "count",
        "Text output tokens, a breakdown of output_tokens (output_tokens_details.text_tokens"
        " of images; completion_tokens_details.text_tokens).",
        part_of="output_tokens",
    ),
    Unit(
        "output_audio_tokens",
        A.OUTPUT_AUDIO_TOKENS,
        "count",
        "Audio output tokens, a breakdown of output_tokens (completion_tokens_details."
        "audio_tokens).",
        part_of="output_tokens",
        price="output_audio",
    ),
    Unit(
        "output_image_tokens",
        A.OUTPUT_IMAGE_TOKENS,
        "count",
        "Image output tokens, a breakdown of output_tokens (output_tokens_details.image_tokens).",
        part_of="output_tokens",
    ),
    Unit(
        "accepted_prediction_tokens",
        A.ACCEPTED_PREDICTION_TOKENS,
        "count",
        "Predicted Outputs: prediction tokens accepted (completion_tokens_details."
        "accepted_prediction_tokens).",
        part_of="output_tokens",
    ),
    Unit(
        "rejected_prediction_tokens",
        A.REJECTED_PREDICTION_TOKENS,
        "count",
        "Predicted Outputs: prediction tokens rejected (completion_tokens_details."
        "rejected_prediction_tokens); billed as output, and part of output_tokens.",
        part_of="output_tokens",
    ),
    Unit(
        "total_tokens",
        A.TOTAL_TOKENS,
        "count",
        "Total tokens as reported (input plus output).",
        "total",
        top_level=True,
    ),
    Unit(
        "svg_input_tokens",
        "cmdrdata.usage.svg_input_tokens",
        "count",
        "SVG images: input tokens of the model that authored the SVG (svg_usage.input_tokens),"
        " billed at svg_model's prices, in addition to the image's own usage.",
        "svg input",
        price="svg",
    ),
    Unit(
        "svg_output_tokens",
        "cmdrdata.usage.svg_output_tokens",
        "count",
        "SVG images: output tokens of the SVG author model (svg_usage.output_tokens); includes"
        " svg_reasoning_tokens.",
        "svg output",
        price="svg",
    ),
    Unit(
        "svg_reasoning_tokens",
        "cmdrdata.usage.svg_reasoning_tokens",
        "count",
        "SVG images: reasoning tokens of the SVG author model; part of svg_output_tokens.",
        part_of="svg_output_tokens",
        price="svg",
    ),
    Unit(
        "svg_model",
        "cmdrdata.usage.svg_model",
        "text",
        "SVG images: the model that authored the SVG (svg_usage.model).",
        limit=256,
    ),
    # --- images --------------------------------------------------------------------------
    Unit(
        "image_count",
        A.IMAGE_COUNT,
        "count",
        "Images generated (items in the response's data; 1 per completed image of a streamed"
        " generation).",
        "images",
        price="per_image",
        group="images",
    ),
    Unit(
        "image_size",
        A.IMAGE_SIZE,
        "text",
        "Image size: the response's size (gpt-image models), else the request's.",
        limit=32,
        group="images",
    ),
    Unit(
        "image_quality",
        A.IMAGE_QUALITY,
        "text",
        "Image quality: the response's quality, else the request's.",
        limit=32,
        group="images",
    ),
    # --- audio ---------------------------------------------------------------------------
    Unit(
        "audio_seconds",
        A.AUDIO_SECONDS,
        "seconds",
        'Seconds of audio billed by duration (usage.seconds when usage.type is "duration",'
        " else the verbose response's duration; estimated from the text of whisper's"
        " text/srt/vtt formats, with usage_estimated set).",
        "audio s",
        price="per_minute",
        group="audio",
    ),
    Unit(
        "input_characters",
        A.INPUT_CHARACTERS,
        "count",
        "Characters of the text-to-speech input (len(input) of audio.speech.create).",
        "characters",
        price="per_1m_characters",
        group="audio",
    ),
    # --- built-in tools (Responses output items; web_search_options on chat) ---------------
    _tool(
        "web_search_calls",
        "web_search_call",
        "web searches",
        "Web search tool calls: web_search_call items of a Responses output, or 1 for a chat"
        " completion made with web_search_options.",
    ),
    _tool(
        "file_search_calls",
        "file_search_call",
        "file searches",
        "File search tool calls (file_search_call items).",
    ),
    _tool(
        "code_interpreter_calls",
        "code_interpreter_call",
        "code runs",
        "Code interpreter tool calls (code_interpreter_call items); billed per container"
        " session, see code_interpreter_sessions.",
        price=None,
    ),
    Unit(
        "code_interpreter_sessions",
        "cmdrdata.usage.code_interpreter_sessions",
        "count",
        "Code interpreter container sessions: the distinct container_id values of the call's"
        " code_interpreter_call items. A container used by several calls appears in each of"
        " them: count distinct code_interpreter_container_ids to count sessions across calls.",
        "containers",
        price="tool",
        group="tools",
    ),
    Unit(
        "code_interpreter_container_ids",
        "cmdrdata.usage.code_interpreter_container_ids",
        "ids",
        "The distinct container ids behind code_interpreter_sessions (at most 16).",
        limit=16,
        group="tools",
    ),
    _tool(
        "image_generation_calls",
        "image_generation_call",
        "image gen calls",
        "Image generation tool calls (image_generation_call items), priced per image by"
        " image_generation_size and image_generation_quality.",
    ),
    Unit(
        "image_generation_size",
        "cmdrdata.usage.image_generation_size",
        "text",
        "The size of the call's image_generation_call items, when they all agree.",
        limit=32,
        group="tools",
    ),
    Unit(
        "image_generation_quality",
        "cmdrdata.usage.image_generation_quality",
        "text",
        "The quality of the call's image_generation_call items, when they all agree.",
        limit=32,
        group="tools",
    ),
    _tool(
        "computer_calls",
        "computer_call",
        "computer calls",
        "Computer use tool calls (computer_call items); billed through the model's tokens.",
        price=None,
    ),
    _tool(
        "mcp_calls",
        "mcp_call",
        "mcp calls",
        "Remote MCP tool calls (mcp_call items); billed through the model's tokens.",
        price=None,
    ),
    _tool(
        "shell_calls",
        "shell_call",
        "hosted shell calls",
        "Shell tool calls run in a hosted container (shell_call items whose environment is a"
        " container_reference).",
        price=None,
    ),
    _tool(
        "tool_search_calls",
        "tool_search_call",
        "tool searches",
        "Tool search calls executed by the server (tool_search_call items with execution"
        ' "server").',
        price=None,
    ),
)

BY_NAME: dict[str, Unit] = {unit.name: unit for unit in UNITS}
BY_ATTRIBUTE: dict[str, Unit] = {unit.attribute: unit for unit in UNITS}
NAMES: frozenset[str] = frozenset(BY_NAME)
# The units of the usage event's `units` object (the others are top-level event fields).
EVENT_UNITS: tuple[Unit, ...] = tuple(u for u in UNITS if not u.top_level)
# The numeric units: a ledger column each, summed by the report.
NUMERIC: tuple[Unit, ...] = tuple(u for u in UNITS if u.kind in ("count", "seconds"))
# Report columns, in order (units without a header describe another unit).
REPORT_COLUMNS: tuple[Unit, ...] = tuple(u for u in UNITS if u.header)
TOOL_UNITS: tuple[Unit, ...] = tuple(u for u in UNITS if u.price == "tool")
# The units that count a kind of Responses output item (hosted tool calls).
TOOL_COUNTERS: tuple[Unit, ...] = tuple(u for u in UNITS if u.item_type)
MAX_ID = 128


def event_schema_units() -> dict[str, Any]:
    """The JSON Schema ``properties`` of the usage event's ``units`` object, from the table."""
    properties: dict[str, Any] = {}
    for unit in EVENT_UNITS:
        entry: dict[str, Any] = {"description": unit.description}
        if unit.kind == "count":
            entry["$ref"] = "#/$defs/count"
        elif unit.kind == "seconds":
            entry.update(type="number", minimum=0)
        elif unit.kind == "text":
            entry.update(type="string", minLength=1, maxLength=unit.limit)
        else:
            entry.update(
                type="array",
                maxItems=unit.limit,
                items={"type": "string", "minLength": 1, "maxLength": MAX_ID},
            )
        properties[unit.name] = entry
    return properties


def ledger_columns() -> tuple[tuple[str, str], ...]:
    """``(column, SQL declaration)`` of the ledger's unit columns (the top-level ones aside)."""
    columns: list[tuple[str, str]] = []
    for unit in EVENT_UNITS:
        if unit.kind == "count":
            columns.append((unit.name, "INTEGER NOT NULL DEFAULT 0"))
        elif unit.kind == "seconds":
            columns.append((unit.name, "REAL NOT NULL DEFAULT 0"))
        else:
            columns.append((unit.name, "TEXT"))
    return tuple(columns)
