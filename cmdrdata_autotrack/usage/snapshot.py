"""A response's billable fields, copied on the app's thread and read into usage off it.

Reading usage out of the SDK's objects (validating every count, building the usage
and the response facts, turning them into attributes) is most of what metering a
call costs the app's thread. When nothing but the metering processor reads the
call's span (a meter-only span), the thread only copies the fields the endpoint's
extractor reads into plain JSON (:func:`take`); the importer thread reads them with
that same extractor and settles them with the same rules (:func:`read`), so the
event is the one the app's thread would have made.

A copy is taken only when it needs nothing else to be read: the counts the endpoint
always reports are present and valid (so no estimate from the request's text is ever
needed), and a Responses output holds no hosted tool call. The copy holds the SDK's own
objects; the journal line writes them out as JSON (:func:`fields_of`) before the call
returns, so what the importer reads is what the response said.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from . import attributes as A
from . import extract, settle
from .fields import MAX_COUNT
from .model import Usage

_MODEL_TYPES: dict[type, bool] = {}  # whether a type is an SDK model (asking pydantic costs)


def fields_of(obj: Any) -> dict[str, Any]:
    """How the journal writes an object JSON has no form for (``JSONEncoder.default``).

    An SDK model is its fields, declared and extra, as a JSON object (its nested models
    in turn); anything else is an empty object, which every extractor reads as it reads
    an odd object: no count, no text, no list.
    """
    try:
        kind = type(obj)
        model = _MODEL_TYPES.get(kind)
        if model is None:  # pydantic 2, or 1 (whose models keep every field in __dict__)
            model = hasattr(kind, "model_fields") or hasattr(kind, "__fields__")
            _MODEL_TYPES[kind] = model
        if model:
            declared, extra = obj.__dict__, getattr(obj, "__pydantic_extra__", None)
            if type(declared) is dict:
                if not extra:
                    return declared
                if type(extra) is dict:
                    return {**declared, **extra}
    except Exception:
        pass
    return {}


def _valid_counts(usage: Any, required: tuple[str, ...]) -> bool:
    """The counts an endpoint always reports are there and valid (no estimate is needed)."""
    for name in required:
        value = getattr(usage, name, None)
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            return False
    return True


def _with_usage(
    response: Any, required: tuple[str, ...], names: tuple[str, ...]
) -> dict[str, Any] | None:
    """The copy's common part: the response's ``names`` and its usage, or ``None`` when
    the counts the endpoint always reports are not all there and valid."""
    usage = getattr(response, "usage", None)
    if not _valid_counts(usage, required):
        return None
    copy = {name: getattr(response, name, None) for name in names}
    copy["usage"] = usage
    return copy


_INFO = ("id", "model", "service_tier", "system_fingerprint")


def _chat(response: Any) -> dict[str, Any] | None:
    copy = _with_usage(response, ("prompt_tokens", "completion_tokens"), _INFO)
    if copy is None:
        return None
    choices = getattr(response, "choices", None)
    if choices is not None:
        if type(choices) is not list:
            return None
        copy["choices"] = [{"finish_reason": getattr(c, "finish_reason", None)} for c in choices]
    return copy


def _embeddings(response: Any) -> dict[str, Any] | None:
    return _with_usage(response, ("prompt_tokens",), _INFO)


_PLAIN_ITEMS = frozenset({"message", "reasoning", "function_call"})
_RESPONSE_INFO = (*_INFO, "status", "incomplete_details")


def _responses(response: Any) -> dict[str, Any] | None:
    """A response whose output holds no hosted tool call (those are read on the app's thread)."""
    copy = _with_usage(response, ("input_tokens", "output_tokens"), _RESPONSE_INFO)
    if copy is None:
        return None
    output = getattr(response, "output", None)
    if output is not None:
        if type(output) is not list:
            return None
        kinds = []
        for item in output:
            kind = getattr(item, "type", None)
            if type(kind) is not str or kind not in _PLAIN_ITEMS:
                return None
            kinds.append({"type": kind})
        copy["output"] = kinds
    return copy


class Reader(NamedTuple):
    take: Callable[[Any], dict[str, Any] | None]
    extractor: extract.Extractor


# An endpoint row names its reader; a journaled copy names it too, for the importer.
READERS: dict[str, Reader] = {
    "chat": Reader(_chat, extract.extract_chat),
    "embeddings": Reader(_embeddings, extract.extract_embeddings),
    "responses": Reader(_responses, extract.extract_responses),
}


def take(reader: str, response: Any) -> dict[str, Any] | None:
    """The copy of ``response`` that ``reader`` reads later, or ``None`` (read it now)."""
    try:
        return READERS[reader].take(response)
    except Exception:  # an odd object: the app's thread reads it as before
        return None


class Pending(NamedTuple):
    """A copied response as the journal carries it (``[reader, copy, reports, estimates]``)."""

    reader: str
    copy: dict[str, Any]
    reports_usage: bool
    estimates_output: bool

    fallback: None = None  # (settle.Rules) a copy is only taken when no estimate is needed


def read(pending: Any) -> tuple[Usage | None, Any]:
    """Usage and response facts of a journaled copy, settled as the app's thread would.

    Raises ``KeyError``/``TypeError``/``ValueError`` for a copy that is not one.
    """
    name, copy, reports, estimates = pending
    if type(copy) is not dict:
        raise TypeError("a response copy must be an object")
    rules = Pending(name, copy, bool(reports), bool(estimates))
    usage, info = READERS[name].extractor(copy)
    return settle.settle(rules, {}, usage), info


def attributes(pending: Any) -> dict[str, Any]:
    """The usage attributes a journaled copy gives its call's span (as ``finish`` sets them)."""
    usage, info = read(pending)
    attrs = usage.to_attributes() if usage is not None else {}
    attrs.update(info.to_attributes())
    attrs[A.USAGE_SOURCE] = settle.usage_source(usage)
    return attrs
