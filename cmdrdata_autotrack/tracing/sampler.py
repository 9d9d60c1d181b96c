"""A sampler that never lets trace sampling drop metering.

It asks the configured sampler first. When that says DROP for a GenAI span of
the agent, the span is kept as RECORD_ONLY: span processors (metering) see it
end, exporters (which take sampled spans only) never send it as a trace.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from ..usage import attributes as A


class MeteringSampler(Sampler):
    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes and attributes.get(A.TRACE_SUPPRESSED):
            # another instrumentation exports this call's span: record ours for metering only
            return SamplingResult(Decision.RECORD_ONLY, attributes, None)
        result = self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP and attributes and A.METERED_MARK in attributes:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"MeteringSampler{{{self.inner.get_description()}}}"
