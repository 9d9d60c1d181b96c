"""What a call's reported usage becomes: flagged when missing or malformed, estimated where
it lacks counts, merged with what the request alone tells.

Pure functions of the usage read from a response, the endpoint's reading rules and the
request's arguments, so the same code settles a call on the app's thread and a response
read later off it (:mod:`.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..telemetry import metrics
from ..telemetry.logging import error_once
from .estimate import estimate_input_tokens, estimate_output_tokens
from .model import MALFORMED_USAGE, MISSING_USAGE, NON_JSON_BODY, Usage

PROBLEM_METRICS = {
    MISSING_USAGE: "usage_missing",
    MALFORMED_USAGE: "usage_malformed",
    NON_JSON_BODY: "usage_non_json_body",
}


class Rules(Protocol):
    """How an endpoint's usage is judged (an endpoint row has these fields)."""

    @property
    def reports_usage(self) -> bool: ...
    @property
    def estimates_output(self) -> bool: ...
    @property
    def fallback(self) -> Callable[[Mapping[str, Any]], Usage | None] | None: ...


def settle(
    rules: Rules,
    kwargs: Mapping[str, Any],
    usage: Usage | None,
    body: Any = None,
    streamed: int | None = None,
) -> Usage | None:
    """Flag usage the response did not report properly, and estimate what it lacks.

    ``body`` is the parsed response (to estimate output from its text); ``streamed``
    the content deltas of a stream. Endpoints that may carry no usage are not flagged
    for having none.
    """
    reports = rules.reports_usage
    if usage is None:
        if not reports:
            return None
        usage = Usage(problem=MISSING_USAGE)
    elif usage.problem in (MISSING_USAGE, NON_JSON_BODY) and not reports:
        usage.problem = None
        return None if usage.is_empty() else usage
    if usage.problem is None:
        return usage
    metrics.increment(PROBLEM_METRICS.get(usage.problem, "usage_malformed"))
    return _estimate(rules, kwargs, usage, body, streamed) if reports else usage


def _estimate(
    rules: Rules, kwargs: Mapping[str, Any], usage: Usage, body: Any, streamed: int | None
) -> Usage:
    """The reported counts that are valid, the others estimated (and marked so)."""
    estimate = Usage(input_tokens=estimate_input_tokens(kwargs))
    counts = ["input_tokens"]
    if rules.estimates_output:
        estimate.output_tokens = streamed if streamed is not None else estimate_output_tokens(body)
        counts.append("output_tokens")
    # Only a flaw in the details (all main counts valid) leaves the counts as reported.
    estimated = usage.estimated or any(getattr(usage, name) is None for name in counts)
    _derive_from_total(usage)
    estimate.merge(usage)  # what was reported validly wins over the estimate
    if usage.total_tokens is None:
        estimate.total_tokens = (estimate.input_tokens or 0) + (estimate.output_tokens or 0)
    estimate.estimated = estimated
    if estimated:
        metrics.increment("usage_estimated")
    return estimate


def _derive_from_total(usage: Usage) -> None:
    """One of input/output tokens missing but a valid total reported: the other is exact."""
    total, inp, out = usage.total_tokens, usage.input_tokens, usage.output_tokens
    if total is None or (inp is None) == (out is None):
        return
    if inp is None and out is not None and total >= out:
        usage.input_tokens = total - out
    elif out is None and inp is not None and total >= inp:
        usage.output_tokens = total - inp


def usage_source(usage: Usage | None) -> str:
    if usage is None or usage.is_empty():
        return "none"
    return "estimate" if usage.estimated else "response"


def with_request_units(
    rules: Rules, kwargs: Mapping[str, Any], usage: Usage | None, request_usage: Usage | None
) -> tuple[Usage | None, str]:
    """The response's usage with what the request alone tells, and where it comes from.

    What the response reported wins over the request's units, which win over the
    endpoint's fallback estimate (made only when the response reported no tokens).
    """
    source = usage_source(usage)
    fallback = rules.fallback
    estimate = None
    if fallback is not None and (
        usage is None or (usage.input_tokens is None and usage.output_tokens is None)
    ):
        try:
            estimate = fallback(kwargs)
        except Exception:
            error_once("fallback", "cmdrdata: could not estimate a call's usage")
    if request_usage is None and estimate is None:
        return usage, source
    merged = Usage()
    for part in (estimate, request_usage, usage):
        if part is not None:
            merged.merge(part)
    if merged.is_empty():
        return merged, "none"
    if estimate is not None:
        metrics.increment("usage_estimated")
        return merged, "estimate"
    return merged, "request" if source == "none" else source
