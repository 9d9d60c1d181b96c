"""Metrics through the OpenTelemetry metrics API: the GenAI client metrics and the agent's health.

* ``gen_ai.client.token.usage`` ({token}, ``gen_ai.token.type`` input/output),
  ``gen_ai.client.operation.duration`` (s) and
  ``gen_ai.client.operation.time_to_first_chunk`` (s), with the bucket
  boundaries the GenAI conventions recommend. Estimated usage is never
  reported as tokens (the conventions forbid invented counts).
* The agent's own counters and spool state as ``cmdrdata.agent.*`` observable
  instruments, read only when a reader collects.

They go to the app's meter provider when it configured one, else to the agent's
own provider when ``OTEL_METRICS_EXPORTER`` names an exporter (``console``,
``otlp``); otherwise nothing is recorded at all (no cost per call).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..usage import attributes as A
from . import metrics
from .logging import warn_once

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

TOKEN_BUCKETS = [float(4**i) for i in range(14)]  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01, 0.02, ... 81.92
_COMMON = (
    A.OPERATION_NAME,
    A.PROVIDER_NAME,
    A.REQUEST_MODEL,
    A.RESPONSE_MODEL,
    A.SERVER_ADDRESS,
    A.SERVER_PORT,
)


def _meter_provider() -> Any:
    """The app's meter provider, or the agent's own from OTEL_METRICS_EXPORTER, or None.

    Resolved at the first metered call, on the app's thread: the metrics SDK is imported
    only when it is used (an app's SDK provider means the app imported it already)."""
    from opentelemetry import metrics as metrics_api

    provider = metrics_api.get_meter_provider()
    sdk = sys.modules.get("opentelemetry.sdk.metrics")
    if sdk is not None and isinstance(provider, sdk.MeterProvider):
        return provider
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_METRICS_EXPORTER", "none").split(",")
        if n.strip().lower() not in ("", "none")
    ]
    if not names:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    readers: list[MetricReader] = []
    for name in names:
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name in ("otlp", "otlp_proto_http"):
            try:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )
            except ImportError:
                warn_once(
                    "otlp-metrics", "OTEL_METRICS_EXPORTER=otlp needs cmdrdata-autotrack[otlp]"
                )
                continue
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            warn_once("metrics-exporter:" + name, "unknown metrics exporter %r ignored", name)
    return MeterProvider(metric_readers=readers, resource=Resource.create()) if readers else None


class AgentMetrics:
    """Records the GenAI metrics of each call; exposes the agent's counters as observables."""

    def __init__(self, provider: Any, spool_stats: Callable[[], Mapping[str, float]]) -> None:
        self.provider = provider
        meter = provider.get_meter("cmdrdata_autotrack", __version__)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._spool_stats = spool_stats
        for name, description in metrics.DESCRIPTIONS.items():
            meter.create_observable_counter(
                f"cmdrdata.agent.{name}",
                callbacks=[self._counter(name)],
                unit="1",
                description=description,
            )
        meter.create_observable_gauge(
            "cmdrdata.agent.spool", callbacks=[self._spool], description="Spool state"
        )

    @staticmethod
    def _counter(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            from opentelemetry.metrics import Observation

            return [Observation(metrics.snapshot().get(name, 0))]

        return observe

    def _spool(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        try:
            stats = self._spool_stats()
        except Exception:
            return []
        return [Observation(value, {"cmdrdata.spool.measure": key}) for key, value in stats.items()]

    def record_call(
        self, attributes: Mapping[str, Any], duration_s: float, ttfc_s: float | None
    ) -> None:
        common = {k: attributes[k] for k in _COMMON if k in attributes}
        error = attributes.get(A.ERROR_TYPE)
        self.duration.record(duration_s, {**common, A.ERROR_TYPE: error} if error else common)
        if ttfc_s is not None:
            self.first_chunk.record(ttfc_s, common)
        if attributes.get(A.USAGE_ESTIMATED) or error:
            return  # never invented counts
        for kind, key in (("input", A.INPUT_TOKENS), ("output", A.OUTPUT_TOKENS)):
            value = attributes.get(key)
            if isinstance(value, int):
                self.tokens.record(value, {**common, "gen_ai.token.type": kind})


def create(spool_stats: Callable[[], Mapping[str, float]]) -> AgentMetrics | None:
    provider = _meter_provider()
    return AgentMetrics(provider, spool_stats) if provider is not None else None
