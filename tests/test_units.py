"""The units table and what it drives: Usage, span attributes, events, ledger, prices, schema.

Pure tests (no SDK call): the table is consistent; every unit reaches the span, the
event, the ledger and the price; the units the agent used to drop or misprice are read
and priced (cache writes, SVG authoring, hosted tool calls, whisper's text formats,
token-billed speech, service tiers).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack.export import ledger
from cmdrdata_autotrack.instrumentation.openai import endpoints, observers, providers
from cmdrdata_autotrack.instrumentation.openai import request as R
from cmdrdata_autotrack.instrumentation.openai.direct import relative_path
from cmdrdata_autotrack.pricing import ModelPrice, PriceTable, cost, load_prices, unpriced_units
from cmdrdata_autotrack.usage import attributes as A
from cmdrdata_autotrack.usage import extract, units
from cmdrdata_autotrack.usage.estimate import estimate_audio_seconds
from cmdrdata_autotrack.usage.event import build_event
from cmdrdata_autotrack.usage.model import Usage

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "usage-event.schema.json").read_text())

# --- the table ------------------------------------------------------------------------------


def test_the_table_is_consistent() -> None:
    names = [u.name for u in units.UNITS]
    attributes = [u.attribute for u in units.UNITS]
    assert len(set(names)) == len(names) and len(set(attributes)) == len(attributes)
    for unit in units.UNITS:
        assert unit.part_of is None or unit.part_of in units.BY_NAME, unit.name
        assert unit.kind in ("count", "seconds", "text", "ids")
        assert unit.kind not in ("text", "ids") or unit.limit > 0, unit.name
        assert unit.price in (
            None,
            "input",
            "cached_input",
            "output",
            "reasoning",
            "cache_write",
            "cache_write_12h",
            "input_audio",
            "input_image",
            "output_audio",
            "svg",
            "per_image",
            "per_minute",
            "per_1m_characters",
            "tool",
        ), unit.name
    # the top-level units are the event's own token fields
    top = {u.name for u in units.UNITS if u.top_level}
    assert top == {
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "total_tokens",
    }
    # the attribute constants of usage.attributes are the table's
    for name in ("INPUT_TOKENS", "CACHE_CREATION_INPUT_TOKENS", "IMAGE_COUNT", "AUDIO_SECONDS"):
        assert getattr(A, name) in units.BY_ATTRIBUTE


def test_the_schema_units_are_generated_from_the_table() -> None:
    """docs/usage-event.schema.json lists exactly the table's units (regenerate it if not)."""
    assert SCHEMA["properties"]["units"]["properties"] == units.event_schema_units()


def test_every_unit_is_in_the_span_reference() -> None:
    spans_md = (ROOT / "docs" / "spans.md").read_text()
    missing = [
        u.name for u in units.UNITS if u.name not in spans_md and u.attribute not in spans_md
    ]
    assert missing == []


def test_every_tool_price_is_a_tool_unit() -> None:
    table = load_prices()
    assert set(table.tools) <= {u.name for u in units.TOOL_UNITS}
    # every priced tool unit has a shipped price
    assert {u.name for u in units.TOOL_UNITS} == set(table.tools)


def test_usage_takes_only_units_of_the_table() -> None:
    usage = Usage(input_tokens=3, web_search_calls=2, image_size=None)
    assert usage.values == {"input_tokens": 3, "web_search_calls": 2}
    assert usage.web_search_calls == 2 and usage.file_search_calls is None
    usage.file_search_calls = 1
    usage.input_tokens = None
    assert usage == Usage(web_search_calls=2, file_search_calls=1)
    with pytest.raises(TypeError):
        Usage(web_searches=1)
    with pytest.raises(AttributeError):
        usage.web_searches = 1
    with pytest.raises(AttributeError):
        _ = usage.web_searches
    assert usage.to_attributes() == {
        "cmdrdata.usage.web_search_calls": 2,
        "cmdrdata.usage.file_search_calls": 1,
    }
    assert Usage(input_tokens=0, output_tokens=0).is_empty()
    assert not Usage(code_interpreter_container_ids=["c"]).is_empty()


# --- every unit, from the span to the event and the ledger -----------------------------------


def _value(unit: units.Unit) -> Any:
    return {"count": 3, "seconds": 2.5, "text": "x", "ids": ["cntr_1", "cntr_2"]}[unit.kind]


def test_every_unit_goes_from_the_span_to_the_event_and_the_ledger(tmp_path: Path) -> None:
    usage = Usage(**{u.name: _value(u) for u in units.UNITS})
    attributes = {**usage.to_attributes(), A.CUSTOMER_ID: "acme", A.REQUEST_MODEL: "gpt-5"}
    event = build_event(attributes, trace_id=1, span_id=2, start_ns=0, end_ns=10**9, ok=True)
    for unit in units.UNITS:
        where = event if unit.top_level else event["units"]
        expected = 6 if unit.name == "total_tokens" else _value(unit)  # never below 3 + 3
        assert where[unit.name] == expected, unit.name
    conn = ledger.open_ledger(tmp_path / "ledger.sqlite3")
    assert ledger.record(conn, [(event, json.dumps(event))]) == 1
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM usage").fetchone()
    for unit in units.EVENT_UNITS:
        expected = _value(unit)
        stored = row[unit.name]
        assert (json.loads(stored) if unit.kind == "ids" else stored) == expected, unit.name


def test_invalid_unit_values_are_left_out_of_the_event() -> None:
    attributes = {
        "cmdrdata.usage.web_search_calls": -1,
        "cmdrdata.usage.audio_seconds": float("nan"),
        "cmdrdata.usage.image_size": "\x00",
        "cmdrdata.usage.code_interpreter_container_ids": ["", "\x07"],
        "cmdrdata.usage.file_search_calls": 2,
    }
    event = build_event(attributes, trace_id=1, span_id=2, start_ns=0, end_ns=0, ok=True)
    assert event["units"] == {"file_search_calls": 2}


def test_units_are_read_past_metadata_beyond_its_bound() -> None:
    """A span from elsewhere may hold any number of metadata attributes: the event keeps
    the first 64 of them, and still reads every unit attribute, before or after them."""
    from cmdrdata_autotrack.usage.event import MAX_METADATA_KEYS

    attributes: dict[Any, Any] = {"cmdrdata.usage.web_search_calls": 2}
    attributes.update({f"{A.METADATA_PREFIX}k{i}": i for i in range(MAX_METADATA_KEYS + 10)})
    attributes["cmdrdata.usage.file_search_calls"] = 3
    attributes[7] = "a key that is not text"
    attributes[f"{A.METADATA_PREFIX}late"] = "past the bound"
    event = build_event(attributes, trace_id=1, span_id=2, start_ns=0, end_ns=0, ok=True)
    assert event["units"] == {"web_search_calls": 2, "file_search_calls": 3}
    assert event["metadata"] == {f"k{i}": i for i in range(MAX_METADATA_KEYS)}


def test_an_old_ledger_gets_the_unit_columns_filled_from_its_units(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE usage (event_id TEXT PRIMARY KEY, timestamp REAL NOT NULL,
        customer_id TEXT NOT NULL, attributed INTEGER NOT NULL, model TEXT NOT NULL,
        provider TEXT, operation TEXT, endpoint TEXT, input_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
        estimated INTEGER NOT NULL, success INTEGER NOT NULL, units TEXT NOT NULL,
        metadata TEXT NOT NULL, event TEXT NOT NULL) WITHOUT ROWID;"""
    )
    old.execute(
        "INSERT INTO usage VALUES ('e1', 1, 'acme', 1, 'dall-e-3', 'openai', 'image_generation',"
        " 'images', 0, 0, 0, 0, 0, 0, 1, ?, '{}', ?)",
        (
            json.dumps({"image_count": 2, "image_size": "1024x1024"}),
            json.dumps({"service_tier": "flex"}),
        ),
    )
    old.commit()
    old.close()
    conn = ledger.open_ledger(path)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM usage").fetchone()
    assert (row["image_count"], row["image_size"], row["service_tier"]) == (2, "1024x1024", "flex")
    assert row["web_search_calls"] == 0 and row["audio_seconds"] == 0.0
    conn.close()
    ledger.open_ledger(path).close()  # opening again changes nothing


# --- extraction of the units that were dropped -----------------------------------------------

RESPONSE_WITH_TOOLS = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-5-2025-08-07",
    "output": [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_2", "status": "completed"},
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": []},
        {"type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "id": "ci_2", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "id": "ci_3", "container_id": "cntr_b"},
        {
            "type": "image_generation_call",
            "id": "ig_1",
            "status": "completed",
            "size": "1024x1536",
            "quality": "high",
            "svg_usage": {
                "input_tokens": 10,
                "model": "gpt-5",
                "output_tokens": 20,
                "reasoning_tokens": 5,
                "total_tokens": 30,
            },
        },
        {"type": "computer_call", "id": "cu_1"},
        {"type": "mcp_call", "id": "mcp_1"},
        {"type": "shell_call", "id": "sh_1", "environment": {"type": "container_reference"}},
        {"type": "shell_call", "id": "sh_2", "environment": {"type": "local"}},
        {"type": "local_shell_call", "id": "ls_1"},
        {"type": "tool_search_call", "id": "ts_1", "execution": "server"},
        {"type": "tool_search_call", "id": "ts_2", "execution": "client"},
        {"type": "function_call", "id": "fc_1"},
        {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
    ],
    "usage": {
        "input_tokens": 100,
        "input_tokens_details": {
            "cached_tokens": 40,
            "cache_write_tokens": 30,
            "cache_write_tokens_details": {"ttl_30m_tokens": 20, "ttl_12h_tokens": 10},
        },
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": 150,
    },
}
TOOL_UNITS = {
    "web_search_calls": 2,
    "file_search_calls": 1,
    "code_interpreter_calls": 3,
    "code_interpreter_sessions": 2,
    "code_interpreter_container_ids": ["cntr_a", "cntr_b"],
    "image_generation_calls": 1,
    "image_generation_size": "1024x1536",
    "image_generation_quality": "high",
    "svg_input_tokens": 10,
    "svg_output_tokens": 20,
    "svg_reasoning_tokens": 5,
    "svg_model": "gpt-5",
    "computer_calls": 1,
    "mcp_calls": 1,
    "shell_calls": 1,
    "tool_search_calls": 1,
}


def test_responses_tool_calls_and_cache_writes() -> None:
    usage, info = extract.extract_responses(RESPONSE_WITH_TOOLS)
    assert usage == Usage(
        input_tokens=100,
        cached_input_tokens=40,
        cache_write_tokens=30,
        cache_write_30m_tokens=20,
        cache_write_12h_tokens=10,
        output_tokens=50,
        reasoning_tokens=8,
        total_tokens=150,
        **TOOL_UNITS,
    )
    assert info.finish_reasons == ["tool_calls"]  # a function call among them


def test_tool_calls_from_sdk_objects_equal_those_from_json() -> None:
    from openai._models import construct_type
    from openai.types.responses import Response

    body = {
        **RESPONSE_WITH_TOOLS,
        "created_at": 1,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    obj = construct_type(type_=Response, value=body)  # as the SDK parses a response
    assert isinstance(obj, Response)
    assert extract.extract_responses(obj) == extract.extract_responses(RESPONSE_WITH_TOOLS)


def test_a_response_without_tools_counts_none() -> None:
    usage, _ = extract.extract_responses(
        {"output": [{"type": "message"}], "usage": {"input_tokens": 1, "output_tokens": 2}}
    )
    assert usage == Usage(input_tokens=1, output_tokens=2)


def test_chat_details_of_newer_sdks() -> None:
    usage, _ = extract.extract_chat(
        {
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "prompt_tokens_details": {
                    "cached_tokens": 20,
                    "cache_write_tokens": 30,
                    "text_tokens": 60,
                    "image_tokens": 40,
                },
                "completion_tokens_details": {"text_tokens": 10},
            }
        }
    )
    assert usage == Usage(
        input_tokens=100,
        output_tokens=10,
        cached_input_tokens=20,
        cache_write_tokens=30,
        input_text_tokens=60,
        input_image_tokens=40,
        output_text_tokens=10,
    )


def test_svg_image_usage() -> None:
    usage, _ = extract.extract_images(
        {
            "data": [{"b64_json": "PHN2Zz4="}],
            "output_format": "svg",
            "usage": {
                "input_tokens": 34,
                "input_tokens_details": {"text_tokens": 13, "image_tokens": 21},
                "output_tokens": 272,
                "output_tokens_details": {"image_tokens": 260, "text_tokens": 12},
                "total_tokens": 306,
            },
            "svg_usage": {
                "input_tokens": 120,
                "model": "gpt-5.4",
                "output_tokens": 900,
                "reasoning_tokens": 300,
                "total_tokens": 1020,
            },
        }
    )
    assert usage is not None and usage.problem is None
    assert (usage.svg_input_tokens, usage.svg_output_tokens, usage.svg_reasoning_tokens) == (
        120,
        900,
        300,
    )
    assert (usage.svg_model, usage.output_image_tokens, usage.output_text_tokens) == (
        "gpt-5.4",
        260,
        12,
    )
    bad, _ = extract.extract_images({"data": [], "svg_usage": {"input_tokens": -1}})
    assert bad is not None and bad.problem == "malformed_usage"


def test_decision_usage() -> None:
    usage, info = extract.extract_decision(
        {
            "answers": [],
            "model": "gpt-6-luna-2026-01-01",
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 10},
                "output_tokens": 4,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 54,
            },
        }
    )
    assert usage == Usage(
        input_tokens=50,
        cached_input_tokens=10,
        cache_write_tokens=0,
        output_tokens=4,
        reasoning_tokens=0,
        total_tokens=54,
    )
    assert info.model == "gpt-6-luna-2026-01-01"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": {"prompt_tokens": 11, "total_tokens": 11}}, Usage(input_tokens=11)),
        (
            {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
            Usage(input_tokens=5, output_tokens=2, total_tokens=7),
        ),
        (
            {"usage": {"input_tokens": 4, "output_tokens": 1, "input_tokens_details": {"x": 1}}},
            Usage(input_tokens=4, output_tokens=1),
        ),
        ({"usage": {"seconds": 3}}, None),
        ({"usage": None}, None),
        ({"usage": 5}, None),
        ({}, None),
    ],
)
def test_generic_usage_is_tokens_only(body: dict[str, Any], expected: Usage | None) -> None:
    usage, _ = extract.extract_generic(body)
    if expected is not None and expected.output_tokens is None:
        expected.total_tokens = 11
        expected.problem = "malformed_usage"  # no completion_tokens: a main count is missing
    assert usage == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("The quick brown fox jumps over the lazy dog.", 3.6),  # 9 words at 2.5 a second
        ("1\n00:00:00,000 --> 00:00:07,250\nhello\n\n", 7.25),
        ("WEBVTT\n\n00:00.000 --> 00:00:01.000\na\n\n00:00:01.000 --> 01:02:03.500\nb\n", 3723.5),
        ("   ", None),
    ],
)
def test_whisper_text_formats_estimate_their_seconds(text: str, seconds: float | None) -> None:
    assert estimate_audio_seconds(text) == seconds
    usage, _ = extract.extract_audio_text(text)
    expected = None if seconds is None else Usage(audio_seconds=seconds, estimated=True)
    assert usage == expected


def test_speech_tokens_are_estimated_for_token_billed_models_only() -> None:
    assert R.speech_token_estimate({"model": "tts-1-hd", "input": "Hello"}) is None
    assert R.speech_token_estimate({"model": "gpt-4o-mini-tts", "input": "x" * 100}) == Usage(
        input_tokens=25,
        input_text_tokens=25,
        output_tokens=140,
        output_audio_tokens=140,
        total_tokens=165,
        estimated=True,
    )


def test_chat_web_search_options_is_one_web_search() -> None:
    assert R.chat_request_units({"web_search_options": {}}) == Usage(web_search_calls=1)
    assert R.chat_request_units({"messages": []}) is None


# --- the endpoint table ---------------------------------------------------------------------


def test_terminal_event_types_come_from_the_table() -> None:
    assert set(endpoints.TERMINAL_EVENT_TYPES) == observers._TERMINAL_TYPE_NAMES


def test_routes_of_direct_calls() -> None:
    assert endpoints.ROUTES["POST", "/chat/completions"].method == "create"
    assert endpoints.ROUTES["POST", "/responses/compact"].operation == "compaction"
    assert endpoints.ROUTES["POST", "/decisions"].api_type == "decisions"
    assert ("GET", "/responses") not in endpoints.ROUTES
    assert all(row.role == "call" for row in endpoints.ROUTES.values())


@pytest.mark.parametrize(
    ("base", "path", "relative"),
    [
        ("/v1/", "/v1/chat/completions", "/chat/completions"),
        ("/v1", "/v1/responses/compact/", "/responses/compact"),
        ("/openai/", "/openai/deployments/my-gpt/chat/completions", "/chat/completions"),
        ("/", "/embeddings", "/embeddings"),
        ("/v1/", "/other/path", "/other/path"),
        ("/openai/", "/openai/deployments/", "/"),
    ],
)
def test_relative_path(base: str, path: str, relative: str) -> None:
    assert relative_path(base, path) == relative


# --- providers ------------------------------------------------------------------------------


class _Client:
    pass


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("api.openai.com", "openai"),
        ("eu.api.openai.com", "openai"),
        ("my-res.openai.azure.com", "azure.ai.openai"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "aws.bedrock"),
        ("bedrock-mantle.eu-west-1.api.aws", "aws.bedrock"),
        ("us-central1-aiplatform.googleapis.com", "gcp.vertex_ai"),
        ("generativelanguage.googleapis.com", "gcp.gemini"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "x_ai"),
        ("api.mistral.ai", "mistral_ai"),
        ("openrouter.ai", "openrouter"),
        ("api.together.xyz", "together_ai"),
        ("API.OPENAI.COM.", "openai"),
        ("127.0.0.1", "openai_compatible"),
        ("localhost", "openai_compatible"),
        ("evil-openai.azure.com.example", "openai_compatible"),
        (None, "openai_compatible"),
    ],
)
def test_provider_from_host(host: str | None, name: str) -> None:
    assert providers.provider_name(_Client(), host) == name


def test_provider_from_client_class_and_runtime() -> None:
    class BedrockOpenAI(_Client):
        pass

    class Runtime:
        name = "vertex"

    vertex = _Client()
    vertex._provider_runtime = Runtime()  # type: ignore[attr-defined]
    assert providers.provider_name(BedrockOpenAI(), "api.openai.com") == "aws.bedrock"
    assert providers.provider_name(vertex, "127.0.0.1") == "gcp.vertex_ai"


# --- prices ---------------------------------------------------------------------------------


def test_tool_fees_are_priced() -> None:
    table = load_prices()
    gpt5, mini = table.for_model("gpt-5-2025-08-07"), table.for_model("gpt-4o-mini-2024-07-18")
    assert gpt5 is not None and mini is not None
    fees = {k: v for k, v in TOOL_UNITS.items() if not k.startswith("svg")}
    # 2 web searches at $10/1k, 1 file search at $2.50/1k, 2 containers at $0.03,
    # 1 high 1024x1536 image at $0.25; computer, MCP, shell, tool search: tokens only
    assert cost(gpt5, input_tokens=0, units=fees) == pytest.approx(0.02 + 0.0025 + 0.06 + 0.25)
    # web search preview models: $25/1k calls
    assert cost(mini, input_tokens=0, units={"web_search_calls": 4}) == pytest.approx(0.1)
    image = {"image_generation_calls": 3, "image_generation_quality": "low"}
    assert cost(gpt5, input_tokens=0, units=image) == pytest.approx(3 * 0.011)
    assert cost(gpt5, input_tokens=0, units={"image_generation_calls": 1}) == pytest.approx(0.042)
    assert unpriced_units(gpt5, fees) == []
    assert unpriced_units(ModelPrice(1, 1, 1, 1), {"web_search_calls": 1}) == ["web_search_calls"]


def test_svg_tokens_are_priced_at_the_authoring_model() -> None:
    table = load_prices()
    image = table.for_model("gpt-image-1")
    assert image is not None
    svg = {"svg_input_tokens": 1_000_000, "svg_output_tokens": 1_000_000, "svg_model": "gpt-5"}
    assert cost(image, input_tokens=0, units=svg) == pytest.approx(1.25 + 10.00)
    unknown = {**svg, "svg_model": "mystery"}
    assert cost(image, input_tokens=0, units=unknown) == 0
    assert unpriced_units(image, unknown) == ["svg_input_tokens"]


def test_breakdowns_with_their_own_price() -> None:
    image = load_prices().for_model("gpt-image-1")
    assert image is not None
    # 1M input tokens of which 400k are image tokens: text at $5, image at $10
    tokens = cost(image, input_tokens=1_000_000, units={})
    units_part = cost(image, input_tokens=0, units={"input_image_tokens": 400_000})
    assert tokens + units_part == pytest.approx(5.0 + 0.4 * 5.0)
    assert cost(
        image, input_tokens=1_000_000, units={"input_image_tokens": 400_000}
    ) == pytest.approx(tokens + units_part)
    writes = ModelPrice(1, 0.5, 2, 2, cache_write=1.25, cache_write_12h=2.0)
    assert cost(
        writes,
        input_tokens=1_000_000,
        units={"cache_write_tokens": 400_000, "cache_write_12h_tokens": 100_000},
    ) == pytest.approx(0.6 + 0.4 * 1.25 + 0.1 * (2.0 - 1.25))
    # without a price of their own, cache writes cost what input costs
    assert (
        cost(ModelPrice(1, 1, 1, 1), input_tokens=10**6, units={"cache_write_tokens": 10**6}) == 1
    )


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        (None, 0.15 + 0.60),
        ("default", 0.15 + 0.60),
        ("flex", (0.15 + 0.60) * 0.5),
        ("batch", (0.15 + 0.60) * 0.5),
        ("priority", 0.25 + 1.00),  # gpt-4o-mini's own priority prices
        ("PRIORITY", 0.25 + 1.00),
        ("unheard-of", 0.15 + 0.60),
    ],
)
def test_service_tiers_are_priced(tier: str | None, expected: float) -> None:
    mini = load_prices().for_model("gpt-4o-mini")
    assert mini is not None
    got = cost(mini, input_tokens=1_000_000, output_tokens=1_000_000, service_tier=tier)
    assert got == pytest.approx(expected)


def test_a_tier_without_model_prices_uses_the_table_multiplier() -> None:
    nano = load_prices().for_model("gpt-5-nano")
    assert nano is not None
    assert cost(nano, input_tokens=1_000_000, service_tier="priority") == pytest.approx(0.10)


def test_token_billed_speech_and_whisper_text_are_not_free() -> None:
    table = load_prices()
    tts, whisper = table.for_model("gpt-4o-mini-tts"), table.for_model("whisper-1")
    assert tts is not None and whisper is not None
    estimate = R.speech_token_estimate({"model": "gpt-4o-mini-tts", "input": "x" * 1000})
    assert estimate is not None
    got = cost(tts, input_tokens=estimate.input_tokens, output_tokens=estimate.output_tokens)
    assert got == pytest.approx((250 * 0.60 + 1400 * 12.00) / 1e6)
    # whisper-1 text format: 9 words, an estimated 3.6 seconds at $0.006 a minute
    seconds = estimate_audio_seconds("The quick brown fox jumps over the lazy dog.")
    assert cost(whisper, input_tokens=0, units={"audio_seconds": seconds}) == pytest.approx(
        3.6 / 60 * 0.006
    )


def test_price_files_may_override_tools_and_tiers(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {
                "models": {"x": {"input": 1, "output": 1}},
                "tools": {"web_search_calls": {"per_call": 0.5, "models": {"x": 0.25}}},
                "service_tiers": {"flex": 0.25},
            }
        )
    )
    table = load_prices(path)
    x, gpt5 = table.for_model("x-2026"), table.for_model("gpt-5")
    assert x is not None and gpt5 is not None
    assert cost(x, input_tokens=0, units={"web_search_calls": 2}) == 0.5
    assert cost(gpt5, input_tokens=0, units={"web_search_calls": 2}) == 1.0
    assert cost(x, input_tokens=10**6, service_tier="flex") == 0.25
    assert table.tools["file_search_calls"]["per_call"] == 0.0025  # shipped, kept


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"models": {}, "tools": []}, "tools"),
        ({"models": {}, "tools": {"web_searches": {"per_call": 1}}}, "not a priced tool"),
        ({"models": {}, "tools": {"web_search_calls": {"price": 1}}}, "expected an object"),
        ({"models": {}, "tools": {"web_search_calls": {"per_call": -1}}}, "non-negative"),
        ({"models": {}, "service_tiers": {"flex": "half"}}, "a number"),
        ({"models": {"x": {"input": 1, "tiers": {"flex": {"inptu": 1}}}}}, "tier"),
        ({"models": {"x": {"input": 1, "cache_write": "1"}}}, "a number"),
    ],
)
def test_malformed_tool_and_tier_prices(tmp_path: Path, document: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        load_prices(path)


def test_a_table_price_still_equals_the_bare_model_price() -> None:
    table = PriceTable({"x": ModelPrice(1, 1, 1, 1)}, tools={"file_search_calls": {"per_call": 1}})
    assert table.for_model("x") == ModelPrice(1, 1, 1, 1)
    price = table.for_model("x")
    assert price is not None and price.tools["file_search_calls"].per_call == 1
