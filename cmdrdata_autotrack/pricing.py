"""Estimated cost of metered usage, from a price table of OpenAI's list prices.

The package ships ``prices.json`` (list prices as of its ``version`` date, for
estimates only). A JSON file of the same shape can override it: each model it
names replaces the shipped entry for that model; the other models are kept.

Token prices are per 1M tokens. ``cached_input`` defaults to ``input`` and
``reasoning`` to ``output``. Breakdowns of the input or output that cost more than
their total's rate have optional prices of their own: ``cache_write`` (defaults to
``input``), ``cache_write_12h`` (to ``cache_write``), ``input_audio``, ``input_image``,
``output_audio``. Non-token units: ``per_image`` (by ``"SIZE"`` or ``"SIZE/QUALITY"``,
``"default"`` when the size is not known), ``per_minute`` of audio,
``per_1m_characters`` of speech input.

Service tiers: a model's ``tiers`` give its token prices in a tier
(``{"priority": {"input": ..., "output": ...}}``); a tier it does not name is priced
at the standard prices times the table's ``service_tiers`` multiplier (``flex`` and
``batch`` 0.5...), and an unknown tier at the standard prices.

Built-in tools: the table's ``tools`` price each tool unit of
:mod:`cmdrdata_autotrack.usage.units` per call (``per_call``: a number, or prices by
``"SIZE/QUALITY"`` for image generation), optionally by model (``models``: the longest
model name that is a prefix of the priced model, as for :meth:`PriceTable.for_model`).
SVG images are priced with the authoring model's own prices (``svg_model``).

Every part of a cost is additive, so a caller may price a call's tokens and its
``units`` in two calls (``cost(price, input_tokens=..., units={})`` plus
``cost(price, input_tokens=0, units=units)``) and get the same sum.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from .usage.units import TOOL_UNITS

SHIPPED_FILE = "prices.json"
TOKEN_UNIT = "per 1M tokens"

_TOKEN_FIELDS = ("input", "cached_input", "output", "reasoning")
_BREAKDOWN_FIELDS = ("cache_write", "cache_write_12h", "input_audio", "input_image", "output_audio")
_FIELDS = frozenset(
    (
        *_TOKEN_FIELDS,
        *_BREAKDOWN_FIELDS,
        "per_image",
        "per_minute",
        "per_1m_characters",
        "tiers",
    )
)
_TOP_LEVEL = frozenset(("version", "currency", "unit", "note", "models", "tools", "service_tiers"))
_TOOL_NAMES = frozenset(unit.name for unit in TOOL_UNITS)
_TOOL_FIELDS = frozenset(("per_call", "models", "note"))


def _sized_price(table: Mapping[str, float] | None, size: Any, quality: Any) -> float | None:
    """The most specific of ``SIZE/QUALITY``, ``SIZE``, ``default/QUALITY``, ``default``."""
    if not table:
        return None
    size_key = (size.strip().lower() if isinstance(size, str) else "") or "default"
    keys = [size_key, "default"]
    if isinstance(quality, str) and quality.strip():
        q = quality.strip().lower()
        keys = [f"{size_key}/{q}", size_key, f"default/{q}", "default"]
    for key in keys:
        if key in table:
            return table[key]
    return None


@dataclass(frozen=True)
class ToolPrice:
    """What one call of a built-in tool costs (in the table's currency, not per 1M)."""

    per_call: float = 0.0
    per_size: Mapping[str, float] | None = None  # image generation: by SIZE/QUALITY

    def call_price(self, size: Any = None, quality: Any = None) -> float:
        sized = _sized_price(self.per_size, size, quality)
        return sized if sized is not None else self.per_call


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs. Token prices are per 1M tokens."""

    input: float
    cached_input: float
    output: float
    reasoning: float
    per_image: dict[str, float] | None = None
    per_minute: float | None = None
    per_1m_characters: float | None = None
    cache_write: float | None = None  # None: at the input price
    cache_write_12h: float | None = None  # None: at cache_write
    input_audio: float | None = None  # None: at the input price
    input_image: float | None = None
    output_audio: float | None = None  # None: at the output price
    # tier -> token prices in that tier (input, cached_input, output, reasoning)
    tiers: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Set by the table the price belongs to (not part of the model's own price):
    tier_multipliers: Mapping[str, float] = field(default_factory=dict, compare=False)
    tools: Mapping[str, ToolPrice] = field(default_factory=dict, compare=False)
    lookup: Callable[[str], ModelPrice | None] | None = field(
        default=None, compare=False, repr=False
    )

    def image_price(self, size: str | None, quality: str | None) -> float | None:
        """The price of one image of ``size``/``quality``: the most specific entry known."""
        return _sized_price(self.per_image, size, quality)

    def token_prices(self, service_tier: str | None) -> tuple[float, float, float, float, float]:
        """(input, cached_input, output, reasoning, multiplier) in ``service_tier``."""
        standard = (self.input, self.cached_input, self.output, self.reasoning)
        tier = service_tier.strip().lower() if isinstance(service_tier, str) else ""
        if not tier:
            return (*standard, 1.0)
        explicit = self.tiers.get(tier)
        if explicit is not None:
            inp = explicit.get("input", self.input)
            out = explicit.get("output", self.output)
            cached = explicit.get("cached_input", inp)
            reasoning = explicit.get("reasoning", out)
            return inp, cached, out, reasoning, (inp / self.input if self.input else 1.0)
        f = self.tier_multipliers.get(tier, 1.0)
        return self.input * f, self.cached_input * f, self.output * f, self.reasoning * f, f


class PriceTable:
    """Model prices by name; :meth:`for_model` also finds dated snapshots of a known model."""

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        *,
        version: str = "",
        currency: str = "USD",
        override_file: str | None = None,
        tools: Mapping[str, Mapping[str, Any]] | None = None,
        service_tiers: Mapping[str, float] | None = None,
    ) -> None:
        names = {k.strip().lower(): v for k, v in models.items()}
        self.version = version
        self.currency = currency
        self.override_file = override_file  # the file merged over the shipped table, if any
        self.tools: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (tools or {}).items()}
        self.service_tiers: dict[str, float] = dict(service_tiers or {})
        # Longest names first, so "gpt-4o-mini-…" finds gpt-4o-mini before gpt-4o.
        self._by_length = sorted(names, key=len, reverse=True)
        # Each model's price also knows the table's tool prices (for that model), tier
        # multipliers, and how to find another model's price (SVG authoring).
        self.models: dict[str, ModelPrice] = {
            name: replace(
                price,
                tier_multipliers=self.service_tiers,
                tools=self._tool_prices(name),
                lookup=self.for_model,
            )
            for name, price in names.items()
        }

    def _tool_prices(self, model: str) -> dict[str, ToolPrice]:
        prices: dict[str, ToolPrice] = {}
        for name, entry in self.tools.items():
            per_call = entry.get("per_call", 0.0)
            by_model = entry.get("models") or {}
            match = _longest_prefix(model, by_model)
            if match is not None:
                per_call = by_model[match]
            if isinstance(per_call, Mapping):
                prices[name] = ToolPrice(float(per_call.get("default", 0.0)), dict(per_call))
            else:
                prices[name] = ToolPrice(float(per_call))
        return prices

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and model.strip().lower() in self.models

    def for_model(self, model: str) -> ModelPrice | None:
        """The price of ``model``: an exact match, else the longest known name followed by "-".

        ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini`` (never as ``gpt-4o``);
        a model no known name is a prefix of has no price (``None``, not zero).
        """
        name = model.strip().lower()
        if not name:
            return None
        exact = self.models.get(name)
        if exact is not None:
            return exact
        for known in self._by_length:
            if name.startswith(known + "-"):
                return self.models[known]
        return None


def _longest_prefix(model: str, names: Mapping[str, Any]) -> str | None:
    """The entry of ``names`` that is ``model`` or the longest prefix of it followed by "-"."""
    best: str | None = None
    for name in names:
        key = name.strip().lower()
        if (model == key or model.startswith(key + "-")) and (best is None or len(key) > len(best)):
            best = name
    return best


def cost(
    price: ModelPrice,
    *,
    input_tokens: float,
    cached_input_tokens: float = 0,
    output_tokens: float = 0,
    reasoning_tokens: float = 0,
    units: Mapping[str, Any] | None = None,
    service_tier: str | None = None,
) -> float:
    """Estimated cost of one call (or of summed calls), in the table's currency.

    Cached input tokens are part of ``input_tokens`` and reasoning tokens part of
    ``output_tokens``, as OpenAI reports them; each is clamped to its total so a
    cost is never negative. ``units`` are the usage event's ``units``: breakdowns with
    their own price (cache writes, audio and image tokens), images (``image_count``
    with ``image_size`` and ``image_quality``), ``audio_seconds``,
    ``input_characters``, SVG authoring tokens and built-in tool calls. Token prices
    follow ``service_tier`` (see the module).
    """
    inp_price, cached_price, out_price, reasoning_price, factor = price.token_prices(service_tier)
    inp = _count(input_tokens)
    cached = min(_count(cached_input_tokens), inp)
    out = _count(output_tokens)
    reasoning = min(_count(reasoning_tokens), out)
    total = (
        (inp - cached) * inp_price
        + cached * cached_price
        + (out - reasoning) * out_price
        + reasoning * reasoning_price
    ) / 1e6
    if units:
        total += _units_cost(price, units, factor)
    return max(total, 0.0)


def _units_cost(price: ModelPrice, units: Mapping[str, Any], factor: float) -> float:
    """The part of a call's cost its ``units`` add (each part additive, see the module)."""
    total = 0.0
    # Breakdowns at their own rate: the difference from the rate their total was priced at.
    writes = _count(units.get("cache_write_tokens"))
    cache_write = price.cache_write if price.cache_write is not None else price.input
    if writes:
        total += writes * (cache_write - price.input) * factor / 1e6
    long_writes = _count(units.get("cache_write_12h_tokens"))
    if long_writes and price.cache_write_12h is not None:
        total += long_writes * (price.cache_write_12h - cache_write) * factor / 1e6
    for name, rate, base in (
        ("input_audio_tokens", price.input_audio, price.input),
        ("input_image_tokens", price.input_image, price.input),
        ("output_audio_tokens", price.output_audio, price.output),
    ):
        tokens = _count(units.get(name)) if rate is not None else 0.0
        if tokens and rate is not None:
            total += tokens * (rate - base) * factor / 1e6
    images = _count(units.get("image_count"))
    if images:
        size, quality = units.get("image_size"), units.get("image_quality")
        per_image = price.image_price(
            size if isinstance(size, str) else None,
            quality if isinstance(quality, str) else None,
        )
        if per_image is not None:
            total += images * per_image
    if price.per_minute is not None:
        total += _count(units.get("audio_seconds")) / 60 * price.per_minute
    if price.per_1m_characters is not None:
        total += _count(units.get("input_characters")) * price.per_1m_characters / 1e6
    total += _svg_cost(price, units)
    for name, tool in price.tools.items():
        calls = _count(units.get(name))
        if calls:
            if name == "image_generation_calls":
                each = tool.call_price(
                    units.get("image_generation_size"), units.get("image_generation_quality")
                )
            else:
                each = tool.per_call
            total += calls * each
    return total


def _svg_cost(price: ModelPrice, units: Mapping[str, Any]) -> float:
    """SVG authoring tokens, at the prices of the model that wrote the SVG."""
    svg_in, svg_out = _count(units.get("svg_input_tokens")), _count(units.get("svg_output_tokens"))
    model = units.get("svg_model")
    if not (svg_in or svg_out) or not isinstance(model, str) or price.lookup is None:
        return 0.0
    author = price.lookup(model)
    if author is None:
        return 0.0
    reasoning = min(_count(units.get("svg_reasoning_tokens")), svg_out)
    return (
        svg_in * author.input + (svg_out - reasoning) * author.output + reasoning * author.reasoning
    ) / 1e6


def unpriced_units(price: ModelPrice, units: Mapping[str, Any]) -> list[str]:
    """The billable units of ``units`` this price cannot price (to show, never to guess)."""
    missing: list[str] = []
    for name in _TOOL_NAMES:
        if _count(units.get(name)) and name not in price.tools:
            missing.append(name)
    svg_model = units.get("svg_model")
    if (_count(units.get("svg_input_tokens")) or _count(units.get("svg_output_tokens"))) and (
        not isinstance(svg_model, str) or price.lookup is None or price.lookup(svg_model) is None
    ):
        missing.append("svg_input_tokens")
    return sorted(missing)


def _count(value: object) -> float:
    """A non-negative finite number, or 0 for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0


# --- loading ----------------------------------------------------------------------------


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The shipped price table, with the models of the JSON file at ``path`` merged over it.

    The file's ``tools`` and ``service_tiers`` entries replace the shipped ones of the
    same name. Raises :class:`ValueError` (naming the file and the entry) for a
    malformed file and :class:`OSError` for one that cannot be read.
    """
    shipped_text = resources.files("cmdrdata_autotrack").joinpath(SHIPPED_FILE).read_text("utf-8")
    shipped = _parse_table(json.loads(shipped_text), SHIPPED_FILE)
    if path is None:
        return PriceTable(
            shipped["models"],
            version=shipped["version"],
            currency=shipped["currency"] or "USD",
            tools=shipped["tools"],
            service_tiers=shipped["service_tiers"],
        )
    source = os.fspath(path)
    with open(source, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
    override = _parse_table(raw, source)
    models = {**shipped["models"], **override["models"]}
    version = shipped["version"]
    if override["version"]:
        version = f"{version} + {override['version']}"
    return PriceTable(
        models,
        version=version,
        currency=override["currency"] or shipped["currency"] or "USD",
        override_file=source,
        tools={**shipped["tools"], **override["tools"]},
        service_tiers={**shipped["service_tiers"], **override["service_tiers"]},
    )


def _parse_table(raw: object, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f'{source}: expected a JSON object with a "models" object')
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}")
    unit = raw.get("unit", TOKEN_UNIT)
    if unit != TOKEN_UNIT:
        raise ValueError(f'{source}: "unit" must be {TOKEN_UNIT!r}, not {unit!r}')
    models = raw.get("models")
    if not isinstance(models, dict):
        raise ValueError(f'{source}: "models" must be an object of model name -> prices')
    for key in ("version", "currency"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{source}: {key!r} must be a string")
    parsed: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: a model name is empty")
        parsed[name.strip().lower()] = _parse_model(entry, f"{source}: model {name!r}")
    return {
        "version": raw.get("version", ""),
        "currency": raw.get("currency", ""),
        "models": parsed,
        "tools": _parse_tools(raw.get("tools", {}), f"{source}: tools"),
        "service_tiers": _parse_tiers(raw.get("service_tiers", {}), f"{source}: service_tiers"),
    }


def _parse_tools(raw: object, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object of tool unit -> prices")
    tools: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        at = f"{where}, {name!r}"
        if name not in _TOOL_NAMES:
            raise ValueError(
                f"{at}: not a priced tool unit (known: {', '.join(sorted(_TOOL_NAMES))})"
            )
        if not isinstance(entry, dict) or not set(entry) <= _TOOL_FIELDS:
            raise ValueError(f"{at}: expected an object of {', '.join(sorted(_TOOL_FIELDS))}")
        tool: dict[str, Any] = {"per_call": _call_price(entry.get("per_call", 0), at)}
        by_model = entry.get("models", {})
        if not isinstance(by_model, dict):
            raise ValueError(f"{at}: models must be an object of model name -> price per call")
        tool["models"] = {
            str(k).strip().lower(): _call_price(v, f"{at}, model {k!r}")
            for k, v in by_model.items()
        }
        tools[name] = tool
    return tools


def _call_price(value: object, where: str) -> float | dict[str, float]:
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"{where}: expected prices by SIZE/QUALITY")
        return {str(k).strip().lower(): _price(v, f"{where} {k!r}") for k, v in value.items()}
    return _price(value, where)


def _parse_tiers(raw: object, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object of tier -> price multiplier")
    return {str(k).strip().lower(): _price(v, f"{where}, {k!r}") for k, v in raw.items()}


def _parse_model(entry: object, where: str) -> ModelPrice:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object of prices")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_FIELDS))})"
        )
    if not entry:
        raise ValueError(f"{where}: no price given")
    inp = _price(entry.get("input", 0), f"{where}, input")
    out = _price(entry.get("output", 0), f"{where}, output")
    per_image: dict[str, float] | None = None
    if entry.get("per_image") is not None:
        images = entry["per_image"]
        if not isinstance(images, dict) or not images:
            raise ValueError(f"{where}: per_image must be an object of size[/quality] -> price")
        per_image = {
            str(k).strip().lower(): _price(v, f"{where}, per_image {k!r}")
            for k, v in images.items()
        }
    tiers: dict[str, dict[str, float]] = {}
    raw_tiers = entry.get("tiers", {})
    if not isinstance(raw_tiers, dict):
        raise ValueError(f"{where}: tiers must be an object of tier -> token prices")
    for tier, prices in raw_tiers.items():
        if not isinstance(prices, dict) or not prices or not set(prices) <= set(_TOKEN_FIELDS):
            raise ValueError(
                f"{where}: tier {tier!r} must be an object of {', '.join(_TOKEN_FIELDS)}"
            )
        tiers[str(tier).strip().lower()] = {
            k: _price(v, f"{where}, tier {tier!r} {k}") for k, v in prices.items()
        }

    def optional(name: str) -> float | None:
        return _optional_price(entry.get(name), f"{where}, {name}")

    return ModelPrice(
        input=inp,
        cached_input=_price(entry.get("cached_input", inp), f"{where}, cached_input"),
        output=out,
        reasoning=_price(entry.get("reasoning", out), f"{where}, reasoning"),
        per_image=per_image,
        per_minute=_optional_price(entry.get("per_minute"), f"{where}, per_minute"),
        per_1m_characters=_optional_price(
            entry.get("per_1m_characters"), f"{where}, per_1m_characters"
        ),
        cache_write=optional("cache_write"),
        cache_write_12h=optional("cache_write_12h"),
        input_audio=optional("input_audio"),
        input_image=optional("input_image"),
        output_audio=optional("output_audio"),
        tiers=tiers,
    )


def _price(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: expected a non-negative number, got {value!r}")
    return number


def _optional_price(value: object, where: str) -> float | None:
    return None if value is None else _price(value, where)
