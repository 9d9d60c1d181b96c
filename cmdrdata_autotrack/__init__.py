"""cmdrdata-autotrack: meter every billable OpenAI call per customer, without code changes.

Importing this package does not import ``openai`` (``TrackedOpenAI`` loads it on
first use) and does not start the agent: ``cmdrdata-run``, ``import
cmdrdata_autotrack.auto`` or :func:`instrument` do.
"""

from __future__ import annotations

from ._version import __version__

# Not ``typing.TYPE_CHECKING``: importing typing would cost every process under the
# launcher a few milliseconds (type checkers treat any ``TYPE_CHECKING`` as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .attribution.context import (
        clear_customer,
        customer_context,
        get_customer,
        reset_customer,
        set_customer,
    )
    from .compat import PerformanceContext, configure_logging, configure_performance
    from .limits.errors import CustomerLimitExceeded
    from .limits.setup import set_limits
    from .tracked_client import AsyncTrackedOpenAI, TrackedOpenAI

    set_customer_context = set_customer
    clear_customer_context = clear_customer
    get_customer_context = get_customer

# Loaded on first use, so that the launcher and the bootstrap import next to nothing.
_LAZY = {
    "customer_context": "attribution.context",
    "set_customer": "attribution.context",
    "reset_customer": "attribution.context",
    "clear_customer": "attribution.context",
    "get_customer": "attribution.context",
    "TrackedOpenAI": "tracked_client",
    "AsyncTrackedOpenAI": "tracked_client",
    "set_limits": "limits.setup",
    "CustomerLimitExceeded": "limits.errors",  # loads openai: it is an openai.RateLimitError
    "configure_logging": "compat",
    "configure_performance": "compat",
    "PerformanceContext": "compat",
}
# The names of the cmdrdata-openai package, so code written for it keeps working.
_ALIASES = {
    "set_customer_context": "set_customer",
    "clear_customer_context": "clear_customer",
    "get_customer_context": "get_customer",
}


def instrument(**settings: Any) -> None:
    """Start the agent from code; keyword arguments (names of :class:`Settings` fields)
    override the environment. Never raises: a bad setting is logged and ignored."""
    from . import agent
    from .config import Settings, known_overrides
    from .telemetry import logging as agent_logging

    try:
        resolved = Settings.from_env(**known_overrides(settings))
        agent_logging.configure(resolved.log_level, resolved.log_format)
        agent.start(resolved)
    except Exception:
        agent_logging.error_once("instrument", "cmdrdata: could not start; the app runs on")


def flush(timeout: float = 5.0) -> bool:
    """Deliver (or record in the ledger) every usage event so far, waiting up to ``timeout``.

    Returns ``True`` when nothing is left waiting. Call it before a serverless
    function returns, where the process may be frozen before the background
    threads run.
    """
    from . import agent

    running = agent.get()
    return running.flush(timeout) if running is not None else True


def uninstrument() -> None:
    """Restore the ``openai`` SDK's original methods and stop metering."""
    from . import agent

    agent.uninstrument()


def __getattr__(name: str) -> Any:
    import importlib

    target = _ALIASES.get(name, name)
    if target in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[target]}")
        value = getattr(module, target)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cmdrdata_autotrack' has no attribute {name!r}")


__all__ = [
    "AsyncTrackedOpenAI",
    "CustomerLimitExceeded",
    "PerformanceContext",
    "TrackedOpenAI",
    "__version__",
    "clear_customer",
    "clear_customer_context",
    "configure_logging",
    "configure_performance",
    "customer_context",
    "flush",
    "get_customer",
    "get_customer_context",
    "instrument",
    "reset_customer",
    "set_customer",
    "set_customer_context",
    "set_limits",
    "uninstrument",
]
