"""Choose the tracer for the agent's spans, at the first call and whenever the app's changes.

* The app configured an SDK ``TracerProvider`` (before or after the agent
  started): the agent joins it. Its span processors (metering) are added to
  that provider and its sampler is wrapped so metering never depends on trace
  sampling. The app's exporters carry the GenAI spans with its other spans.
* The app configured nothing: the agent builds its own provider from the
  standard ``OTEL_*`` variables. It is *not* installed as the global provider,
  so an app that configures OpenTelemetry later is never refused. When those
  variables name no exporter either, nothing but metering would ever read the
  agent's spans: they are meter-only spans (:mod:`.meter_only`), a fraction of
  an SDK span's cost on the app's thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import _get_from_env_or_default
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .._version import __version__
from ..config import Settings
from ..telemetry.logging import error_once, logger, warn_once
from ..usage.attributes import INSTRUMENTATION_SCOPE
from .meter_only import MeterOnlyTracer
from .sampler import MeteringSampler

_ATTACHED = "_cmdrdata_autotrack_attached"
_UNREAD = object()


def _global_set() -> bool | None:
    """Whether OpenTelemetry's global tracer provider was set (``None``: cannot tell, this
    version keeps it elsewhere). Read from its module: asking ``get_tracer_provider()``
    looks the environment up on every call until one is set, about a microsecond."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNREAD)
    return None if provider is _UNREAD else provider is not None


def exporter_names(settings: Settings, environ: os._Environ[str] | dict[str, str]) -> list[str]:
    """The trace exporters to use for the agent's own provider."""
    configured = settings.traces_exporter
    if configured is None:
        has_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        configured = "otlp" if has_endpoint else "none"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    return [
        n.strip().lower() for n in configured.split(",") if n.strip().lower() not in ("", "none")
    ]


def _exporter_processor(name: str) -> SpanProcessor | None:
    if name == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
    if name in ("otlp", "otlp_proto_http"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            warn_once(
                "otlp-missing",
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
                "pip install 'cmdrdata-autotrack[otlp]'; traces are not exported",
            )
            return None
        return BatchSpanProcessor(OTLPSpanExporter())
    warn_once("exporter:" + name, "unknown trace exporter %r ignored (console, otlp, none)", name)
    return None


class TracerSource:
    """Hands out the tracer for the agent's spans; re-checks the global provider cheaply."""

    def __init__(self, settings: Settings, processors: Sequence[SpanProcessor]) -> None:
        self._settings = settings
        self._processors = list(processors)
        self._lock = threading.Lock()
        self._seen: object = None
        self._tracer: trace.Tracer | None = None
        self._own: TracerProvider | None = None
        self._explicit: object = None
        self._held: object = None  # the own provider's processors, while spans are meter-only
        self._active: Any = None  # the own provider's multi-processor (holds them)
        # What get_tracer_provider() gave while no global provider was set (its proxy). A
        # provider named by OTEL_PYTHON_TRACER_PROVIDER is loaded and set by the first call,
        # at the agent's start; the proxy is handed out again only until one is set.
        self._proxy: object = None

    @property
    def own_provider(self) -> TracerProvider | None:
        return self._own

    def use_provider(self, provider: object) -> None:
        """Use this provider (``tracer_provider=`` of opentelemetry-instrument), not the global."""
        with self._lock:
            self._explicit = provider
            self._seen, self._tracer = None, None

    def warm_up(self) -> None:
        """Resolve the tracer now, off the request path (the bootstrap's background start):
        building the agent's own provider is the first call's slowest step otherwise. The
        choice is made again at each call, as always, so an app that configures
        OpenTelemetry later is still joined."""
        try:
            self.tracer()
        except Exception:  # e.g. the interpreter is exiting; the first call tries again
            logger.debug("cmdrdata: tracer not prepared ahead of the first call", exc_info=True)

    def _global_provider(self) -> object:
        """``trace.get_tracer_provider()``, without asking it again while none is set."""
        if self._proxy is not None and _global_set() is False:
            return self._proxy
        provider = trace.get_tracer_provider()
        self._proxy = provider if _global_set() is False else None
        return provider

    def tracer(self) -> trace.Tracer:
        provider = self._explicit or self._global_provider()
        tracer = self._tracer
        if provider is self._seen and tracer is not None:
            held = self._held
            if held is None or held is self._active._span_processors:
                return tracer
            # a processor was added to the agent's own provider: its spans must be SDK spans
        with self._lock:
            self._tracer = tracer = self._resolve(provider)
            self._seen = provider
        return tracer

    def tracer_for(self, scope: str) -> trace.Tracer:
        """A tracer of another scope, from the provider the agent's spans go to.

        The metering processor takes only spans of the agent's own scope (or marked
        metered): a span of this tracer, such as a Realtime session that parents its
        metered responses, is traced but never billed.
        """
        self.tracer()  # joins (or builds) the provider first
        provider = self._explicit or trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = self._own
        if isinstance(provider, TracerProvider):
            return provider.get_tracer(scope, __version__)
        return trace.NoOpTracer()

    def _resolve(self, provider: object) -> trace.Tracer:
        self._held = None
        if isinstance(provider, TracerProvider):
            try:
                self._attach(provider)
                tracer = provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)
                if not isinstance(tracer, trace.NoOpTracer):
                    return tracer
            except Exception:
                error_once(
                    "attach", "could not join the app's tracer provider; using the agent's own"
                )
        return self._own_tracer()

    def _attach(self, provider: TracerProvider) -> None:
        attached: set[int] = getattr(provider, _ATTACHED, None) or set()
        for processor in self._processors:
            if id(processor) not in attached:
                provider.add_span_processor(processor)
                attached.add(id(processor))
        setattr(provider, _ATTACHED, attached)
        sampler = getattr(provider, "sampler", None)
        if sampler is not None and not isinstance(sampler, MeteringSampler):
            try:
                setattr(provider, "sampler", MeteringSampler(sampler))  # noqa: B010
            except AttributeError:  # SDK versions where it is a read-only property
                setattr(provider, "_sampler", MeteringSampler(sampler))  # noqa: B010
            logger.debug("joined the app's tracer provider")

    def _own_tracer(self) -> trace.Tracer:
        if self._own is None:
            self._own = self._build_own()
        held = self._own_processors()
        if isinstance(held, tuple) and held == tuple(self._processors):
            self._held, self._active = held, self._own._active_span_processor
            scope = InstrumentationScope(INSTRUMENTATION_SCOPE, __version__)
            return MeterOnlyTracer(scope, held)
        return self._own.get_tracer(INSTRUMENTATION_SCOPE, __version__)

    def _own_processors(self) -> object:
        """The span processors of the agent's own provider (the SDK replaces the tuple when
        one is added, so an identity check sees any addition)."""
        active = getattr(self._own, "_active_span_processor", None)
        return getattr(active, "_span_processors", None)

    @property
    def meter_only(self) -> bool:
        """Whether the agent's spans are read by its own processors alone (its own provider
        is in use and holds nothing else: no exporter, no processor added since)."""
        return isinstance(self._tracer, MeterOnlyTracer) and self._held is self._own_processors()

    def _build_own(self) -> TracerProvider:
        attributes = {}
        if self._settings.service_name:
            attributes["service.name"] = self._settings.service_name
        provider = TracerProvider(
            sampler=MeteringSampler(_get_from_env_or_default()),
            resource=Resource.create(attributes),
        )
        # OTEL_SDK_DISABLED turns tracing off, not billing: keep recording for metering.
        setattr(provider, "_disabled", False)  # noqa: B010
        self._attach(provider)
        for name in exporter_names(self._settings, os.environ):
            exporter = _exporter_processor(name)
            if exporter is not None:
                provider.add_span_processor(exporter)
        return provider

    def shutdown(self) -> None:
        if self._own is not None:
            self._own.shutdown()
