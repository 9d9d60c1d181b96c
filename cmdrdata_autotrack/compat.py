"""The rest of the ``cmdrdata-openai`` API, mapped onto what the agent really has.

* :func:`configure_logging` sets the agent's log level and format (its logs are
  always redacted, which is what ``security_mode`` asked for).
* :func:`configure_performance` sizes the agent's bounded lookup caches and the
  delivery client's connection pool; options that mean nothing here are accepted
  and named in one warning.
* :class:`PerformanceContext` times a block as an OpenTelemetry span (the parent
  of the OpenAI calls inside it) and a duration histogram, attributed to the
  current customer.

None of them raises for a value it cannot use: it says so once and carries on.
See docs/migrating.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import tunables
from ._version import __version__
from .telemetry import logging as agent_logging
from .usage import attributes as A

logger = logging.getLogger("cmdrdata_autotrack.compat")

SCOPE = "cmdrdata_autotrack.performance"
NAME_ATTRIBUTE = "cmdrdata.performance.name"
SUCCESS_ATTRIBUTE = "cmdrdata.performance.success"
METRIC_PREFIX = "cmdrdata.performance.metric."
DURATION_METRIC = "cmdrdata.performance.duration"

# --- configure_logging ----------------------------------------------------------------------

_FORMATS = {"structured": "json", "json": "json", "standard": "text", "text": "text"}
_LEVELS = ("debug", "info", "warning", "error", "critical")
_logging_now: dict[str, str] = {}  # what configure_logging set last: later calls keep it


def _current_logging() -> tuple[str, str]:
    from . import agent
    from .config import Settings

    running = agent.get()
    settings = running.settings if running is not None else Settings.from_env()
    return (
        _logging_now.get("level", settings.log_level),
        _logging_now.get("format", settings.log_format),
    )


def configure_logging(config: Mapping[str, Any] | None = None, **options: Any) -> None:
    """``cmdrdata-openai``'s ``configure_logging({...})``, onto the agent's own logging.

    ``log_level`` (``DEBUG`` ... ``CRITICAL``) and ``log_format`` (``structured``
    or ``json``: one JSON object a line; ``standard`` or ``text``) set
    ``CMDRDATA_LOG_LEVEL`` / ``CMDRDATA_LOG_FORMAT`` for this process.
    ``security_mode`` is accepted: the agent's logs are always redacted. Other
    keys (``log_file``, ``console_logging``, ...) are named in one warning.
    """
    given = {**(dict(config) if isinstance(config, Mapping) else {}), **options}
    if config is not None and not isinstance(config, Mapping):
        logger.warning("cmdrdata: configure_logging() takes a dict; got %s", type(config).__name__)
    level, fmt = _current_logging()
    ignored: list[str] = []
    for key, value in given.items():
        text = str(value).strip().lower() if isinstance(value, str) else None
        if key == "log_level":
            if text in _LEVELS:
                level = text
            else:
                ignored.append(f"log_level={value!r} (not one of {', '.join(_LEVELS)})")
        elif key == "log_format":
            if text in _FORMATS:
                fmt = _FORMATS[text]
            else:
                ignored.append(f"log_format={value!r} (not structured or standard)")
        elif key == "security_mode":
            if value is False:
                ignored.append("security_mode=False (the agent's logs are always redacted)")
        else:
            ignored.append(f"{key}={_short(value)}")
    _logging_now.update(level=level, format=fmt)
    agent_logging.configure(level, fmt)
    if ignored:
        logger.warning(
            "cmdrdata: configure_logging(): %s ignored (no meaning in cmdrdata-autotrack: "
            "its logs go to stderr, redacted; see docs/migrating.md)",
            "; ".join(ignored),
        )


# --- configure_performance ------------------------------------------------------------------


def configure_performance(
    cache_size: int | None = None,
    cache_ttl: Any = None,
    max_connections: int | None = None,
    **options: Any,
) -> None:
    """``cmdrdata-openai``'s ``configure_performance(...)``, onto what the agent has.

    ``cache_size`` bounds each of the agent's lookup caches (the limits resolved per
    customer, the price per model); ``max_connections`` sizes the connection pool of
    delivery clients created from now on. ``cache_ttl`` and any other option have no
    meaning here (those caches never go stale) and are named in one warning.
    """
    ignored: list[str] = []
    if cache_size is not None:
        if _whole(cache_size, 1, 10_000_000):
            tunables.CACHE_SIZE = int(cache_size)
        else:
            ignored.append(f"cache_size={_short(cache_size)} (not a whole number from 1)")
    if max_connections is not None:
        if _whole(max_connections, 1, 1000):
            tunables.MAX_CONNECTIONS = int(max_connections)
        else:
            ignored.append(f"max_connections={_short(max_connections)} (not 1 to 1000)")
    if cache_ttl is not None:
        ignored.append(f"cache_ttl={_short(cache_ttl)} (the agent's caches never go stale)")
    ignored += [f"{key}={_short(value)}" for key, value in options.items()]
    if ignored:
        logger.warning(
            "cmdrdata: configure_performance(): %s accepted and ignored: no meaning in "
            "cmdrdata-autotrack (see docs/migrating.md)",
            ", ".join(ignored),
        )


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


# --- PerformanceContext ---------------------------------------------------------------------

# meter provider -> its duration histogram (held weakly: a provider may be replaced)
_instruments: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _tracer() -> trace.Tracer:
    """A tracer of the provider the agent's spans go to (so the two nest and export together)."""
    from opentelemetry.sdk.trace import TracerProvider

    from . import agent

    provider: Any = trace.get_tracer_provider()
    running = agent.get()
    if running is not None and not isinstance(provider, TracerProvider):
        running.tracers.tracer()  # builds the agent's own provider if it has none yet
        provider = running.tracers.own_provider or provider
    return provider.get_tracer(SCOPE, __version__)  # type: ignore[no-any-return]


def _meter_provider() -> Any:
    """The meter provider the agent's metrics go to (the app's, or the agent's own)."""
    from opentelemetry import metrics as otel_metrics

    from . import agent

    running = agent.get()
    own = running.processor.metrics if running is not None else None
    return own.provider if own is not None else otel_metrics.get_meter_provider()


def _duration_histogram() -> Any:
    provider = _meter_provider()
    histogram = _instruments.get(provider)
    if histogram is None:
        meter = provider.get_meter(SCOPE, __version__)
        histogram = meter.create_histogram(
            DURATION_METRIC, unit="s", description="Duration of a PerformanceContext block"
        )
        with contextlib.suppress(TypeError):  # a provider that cannot be weakly referenced
            _instruments[provider] = histogram
    return histogram


def _customer() -> str | None:
    """The customer the block's calls are attributed to: context, baggage, then the default."""
    from . import agent
    from .attribution.resolve import resolve

    running = agent.get()
    if running is not None:
        default = running.settings.customer_id
    else:
        default = os.environ.get("CMDRDATA_CUSTOMER_ID", "").strip() or None
    return resolve(None, None, default).customer_id


class PerformanceContext:
    """Time a block: ``with PerformanceContext("summarize"):`` (or ``async with``).

    The block becomes a span named ``name`` (the OpenAI calls inside it are its
    children) with its duration, ``cmdrdata.performance.success``, ``error.type``
    on failure and the current customer; its duration is also recorded in the
    ``cmdrdata.performance.duration`` histogram. :meth:`add_metric` attaches a
    number to the span. Exceptions pass through unchanged.
    """

    def __init__(self, name: str, **attributes: Any) -> None:
        self.name = str(name)
        self.attributes = attributes
        self.customer_id: str | None = None
        self.duration: float | None = None
        self.success: bool | None = None
        self.error_type: str | None = None
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0

    def add_metric(self, name: str, value: float) -> None:
        """Attach a measurement to the block's span (``cmdrdata.performance.metric.NAME``)."""
        if self._span is not None and isinstance(value, int | float):
            try:
                self._span.set_attribute(METRIC_PREFIX + str(name), value)
            except Exception:
                agent_logging.warn_once("perf-metric", "cmdrdata: could not record a metric")

    def __enter__(self) -> PerformanceContext:
        try:
            self.customer_id = _customer()
            attrs: dict[str, Any] = {NAME_ATTRIBUTE: self.name}
            if self.customer_id is not None:
                attrs[A.CUSTOMER_ID] = self.customer_id
            for key, value in self.attributes.items():
                if isinstance(value, str | bool | int | float):
                    attrs[f"cmdrdata.performance.{key}"] = value
            self._span = _tracer().start_span(self.name, kind=SpanKind.INTERNAL, attributes=attrs)
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        except Exception:
            agent_logging.error_once("perf-enter", "cmdrdata: could not start a PerformanceContext")
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.duration = time.perf_counter() - self._started
        self.success = exc_type is None
        self.error_type = exc_type.__qualname__ if exc_type is not None else None
        try:
            token, self._token = self._token, None
            if token is not None:
                otel_context.detach(token)  # type: ignore[arg-type]
            span = self._span
            if span is not None:
                span.set_attribute(SUCCESS_ATTRIBUTE, self.success)
                if self.error_type is not None:
                    span.set_attribute(A.ERROR_TYPE, self.error_type)
                    span.set_status(Status(StatusCode.ERROR, self.error_type))
                span.end()
            labels: dict[str, Any] = {NAME_ATTRIBUTE: self.name, SUCCESS_ATTRIBUTE: self.success}
            if self.customer_id is not None:
                labels[A.CUSTOMER_ID] = self.customer_id
            if self.error_type is not None:
                labels[A.ERROR_TYPE] = self.error_type
            _duration_histogram().record(self.duration, labels)
        except Exception:
            agent_logging.error_once("perf-exit", "cmdrdata: could not record a PerformanceContext")

    async def __aenter__(self) -> PerformanceContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
