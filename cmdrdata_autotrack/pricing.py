"""Estimated cost of metered usage, from a price table of OpenAI's list prices.

The package ships ``prices.json`` (list prices as of its ``version`` date, for
estimates only). A JSON file of the same shape can override it: each model it
names replaces the shipped entry for that model; the other models are kept.

Token prices are per 1M tokens. ``cached_input`` defaults to ``input`` and
``reasoning`` to ``output``. Non-token units: ``per_image`` (by ``"SIZE"`` or
``"SIZE/QUALITY"``, ``"default"`` when the size is not known), ``per_minute`` of
audio, ``per_1m_characters`` of speech input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

SHIPPED_FILE = "prices.json"
TOKEN_UNIT = "per 1M tokens"

_TOKEN_FIELDS = ("input", "cached_input", "output", "reasoning")
_FIELDS = frozenset((*_TOKEN_FIELDS, "per_image", "per_minute", "per_1m_characters"))
_TOP_LEVEL = frozenset(("version", "currency", "unit", "note", "models"))


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

    def image_price(self, size: str | None, quality: str | None) -> float | None:
        """The price of one image of ``size``/``quality``: the most specific entry known."""
        if not self.per_image:
            return None
        size_key = (size or "").strip().lower() or "default"
        keys = [size_key, "default"]
        if quality and quality.strip():
            keys.insert(0, f"{size_key}/{quality.strip().lower()}")
        for key in keys:
            if key in self.per_image:
                return self.per_image[key]
        return None


class PriceTable:
    """Model prices by name; :meth:`for_model` also finds dated snapshots of a known model."""

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        *,
        version: str = "",
        currency: str = "USD",
        override_file: str | None = None,
    ) -> None:
        self.models: dict[str, ModelPrice] = {k.strip().lower(): v for k, v in models.items()}
        self.version = version
        self.currency = currency
        self.override_file = override_file  # the file merged over the shipped table, if any
        # Longest names first, so "gpt-4o-mini-…" finds gpt-4o-mini before gpt-4o.
        self._by_length = sorted(self.models, key=len, reverse=True)

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


def cost(
    price: ModelPrice,
    *,
    input_tokens: float,
    cached_input_tokens: float = 0,
    output_tokens: float = 0,
    reasoning_tokens: float = 0,
    units: Mapping[str, Any] | None = None,
) -> float:
    """Estimated cost of one call (or of summed calls), in the table's currency.

    Cached input tokens are part of ``input_tokens`` and reasoning tokens part of
    ``output_tokens``, as OpenAI reports them; each is clamped to its total so a
    cost is never negative. ``units`` may hold ``image_count`` (with ``image_size``
    and ``image_quality``), ``audio_seconds`` and ``input_characters``.
    """
    inp = _count(input_tokens)
    cached = min(_count(cached_input_tokens), inp)
    out = _count(output_tokens)
    reasoning = min(_count(reasoning_tokens), out)
    total = (
        (inp - cached) * price.input
        + cached * price.cached_input
        + (out - reasoning) * price.output
        + reasoning * price.reasoning
    ) / 1e6
    units = units or {}
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
    return max(total, 0.0)


def _count(value: object) -> float:
    """A non-negative finite number, or 0 for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0


# --- loading ----------------------------------------------------------------------------


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The shipped price table, with the models of the JSON file at ``path`` merged over it.

    Raises :class:`ValueError` (naming the file and the entry) for a malformed file
    and :class:`OSError` for one that cannot be read.
    """
    shipped_text = resources.files("cmdrdata_autotrack").joinpath(SHIPPED_FILE).read_text("utf-8")
    shipped = _parse_table(json.loads(shipped_text), SHIPPED_FILE)
    if path is None:
        return PriceTable(
            shipped["models"], version=shipped["version"], currency=shipped["currency"] or "USD"
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
    }


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
