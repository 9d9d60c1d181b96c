"""Per-customer limits and budgets: opt-in, checked before a call is sent.

The call wrapper asks :data:`ENGINE`, which stays ``None`` until limits are
configured (``CMDRDATA_LIMITS_FILE`` or :func:`~.setup.set_limits`), so a
process without limits pays one attribute lookup per call::

    if limits.ENGINE is not None:
        limits.admit_call(call, client)     # may raise CustomerLimitExceeded
    ...
    limits.settle_call(call, usage, response_model, failed)   # in MeteredCall.finish

See docs/limits.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..telemetry import metrics
from ..telemetry.logging import error_once
from .engine import Engine, Refusal

if TYPE_CHECKING:
    from ..usage.model import Usage

ENGINE: Engine | None = None

# Span attributes (and usage event fields ``limit_exceeded`` and ``blocked``).
EXCEEDED_ATTRIBUTE = "cmdrdata.limit.exceeded"  # string[]: the limits the customer was over
BLOCKED_ATTRIBUTE = "cmdrdata.limit.blocked"  # true: refused before it was sent, not billed
PLAN_KEY = "plan"  # the metadata key that names the customer's plan


def plan_of(metadata: Mapping[str, Any]) -> str | None:
    plan = metadata.get(PLAN_KEY)
    if isinstance(plan, bool) or not isinstance(plan, str | int):
        return None
    return str(plan)


def admit_call(call: Any, client: Any = None) -> None:
    """Check a metered call against its customer's limits, before it is sent.

    Raises :class:`~.errors.CustomerLimitExceeded` for a call a ``block`` limit
    refuses, after recording it on the call's span (which it ends). Raises nothing
    else: a failure of the check lets the call through.
    """
    engine = ENGINE
    if engine is None:
        return
    try:
        attribution = call.attribution
        if attribution is None or attribution.customer_id is None:
            return  # unattributed calls are not any customer's: no limits apply
        kwargs = call.kwargs
        model = kwargs.get("model")
        estimate = None
        if kwargs.get("stream") is True:
            from ..usage.estimate import estimate_input_tokens

            def estimate() -> int:
                return estimate_input_tokens(kwargs)

        decision = engine.admit(
            attribution.customer_id,
            plan_of(attribution.metadata),
            model if isinstance(model, str) else None,
            estimate,
        )
        if decision is None:
            return
        if isinstance(decision, Refusal):
            base_url = getattr(client, "base_url", None)
            error = decision.error(str(base_url) if base_url is not None else None)
            with contextlib.suppress(Exception):
                call.span.set_attributes(
                    {EXCEEDED_ATTRIBUTE: list(decision.exceeded), BLOCKED_ATTRIBUTE: True}
                )
        else:
            call.limit = decision
            if decision.exceeded:
                with contextlib.suppress(Exception):
                    call.span.set_attribute(EXCEEDED_ATTRIBUTE, list(decision.exceeded))
            return
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once("limits-admit", "cmdrdata: could not check a call against its limits; sent")
        return
    call.fail(error)
    raise error


def settle_call(call: Any, usage: Usage | None, response_model: str | None, failed: bool) -> None:
    """The call ended: count its usage against the limits (never raises)."""
    reservation = call.limit
    if reservation is None:
        return
    call.limit = None
    try:
        reservation.settle(None if failed else usage, response_model)
    except Exception:
        metrics.increment("instrumentation_errors")
        error_once("limits-settle", "cmdrdata: could not count a call's usage against its limits")


__all__ = [
    "BLOCKED_ATTRIBUTE",
    "ENGINE",
    "EXCEEDED_ATTRIBUTE",
    "admit_call",
    "plan_of",
    "settle_call",
]
