"""The rest of the ``cmdrdata-openai`` API: ``configure_logging``, ``configure_performance``,
``PerformanceContext`` (and the new names ``set_limits`` and ``CustomerLimitExceeded``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import StatusCode

import cmdrdata_autotrack
from cmdrdata_autotrack import compat, customer_context, tunables
from cmdrdata_autotrack.telemetry import logging as agent_logging

from conftest import EXPORTER, Spans

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_seed_names_import() -> None:
    from cmdrdata_autotrack import (  # noqa: F401
        CustomerLimitExceeded,
        PerformanceContext,
        configure_logging,
        configure_performance,
        set_limits,
    )

    assert set(cmdrdata_autotrack.__all__) >= {
        "CustomerLimitExceeded",
        "PerformanceContext",
        "configure_logging",
        "configure_performance",
        "set_limits",
    }


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("cmdrdata_autotrack")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    compat._logging_now.clear()
    agent_logging.configure("warning", "text")


def _formatter() -> logging.Formatter | None:
    handler = agent_logging._handler
    assert handler is not None
    return handler.formatter


def test_configure_logging_maps_onto_the_agents_logging(
    restore_logging: None, agent_log: pytest.LogCaptureFixture
) -> None:
    cmdrdata_autotrack.configure_logging(
        {"log_level": "DEBUG", "log_format": "structured", "security_mode": True}
    )
    assert agent_logging.logger.level == logging.DEBUG
    assert isinstance(_formatter(), agent_logging.JsonFormatter)
    assert agent_log.text == ""  # everything had a meaning
    cmdrdata_autotrack.configure_logging({"log_level": "ERROR"})  # the format stays
    assert agent_logging.logger.level == logging.ERROR
    assert isinstance(_formatter(), agent_logging.JsonFormatter)
    cmdrdata_autotrack.configure_logging({"log_format": "standard", "log_level": "warning"})
    assert isinstance(_formatter(), agent_logging.RedactingFormatter)


def test_configure_logging_names_what_it_ignores_in_one_warning(
    restore_logging: None, agent_log: pytest.LogCaptureFixture
) -> None:
    cmdrdata_autotrack.configure_logging(
        {"log_file": "/tmp/x.log", "console_logging": False, "log_level": "loud"}
    )
    warnings = [r.getMessage() for r in agent_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for part in ("log_file='/tmp/x.log'", "console_logging=False", "log_level='loud'"):
        assert part in warnings[0]
    assert agent_logging.logger.level == logging.WARNING  # the bad level changed nothing


@pytest.fixture
def restore_tunables() -> Iterator[None]:
    saved = (tunables.CACHE_SIZE, tunables.MAX_CONNECTIONS)
    yield
    tunables.CACHE_SIZE, tunables.MAX_CONNECTIONS = saved


def test_configure_performance_maps_what_the_agent_has_and_names_the_rest(
    restore_tunables: None, agent_log: pytest.LogCaptureFixture
) -> None:
    cmdrdata_autotrack.configure_performance(
        cache_size=500, cache_ttl=timedelta(minutes=10), max_connections=20, batch_size=3
    )
    assert (tunables.CACHE_SIZE, tunables.MAX_CONNECTIONS) == (500, 20)
    warnings = [r.getMessage() for r in agent_log.records]
    assert len(warnings) == 1
    assert "cache_ttl=datetime.timedelta(seconds=600)" in warnings[0]
    assert "batch_size=3" in warnings[0]
    cmdrdata_autotrack.configure_performance(cache_size=0, max_connections="lots")
    assert (tunables.CACHE_SIZE, tunables.MAX_CONNECTIONS) == (500, 20)  # refused, not raised


def test_max_connections_sizes_new_delivery_clients(restore_tunables: None) -> None:
    from cmdrdata_autotrack.export.client import DeliveryClient

    cmdrdata_autotrack.configure_performance(max_connections=12)
    client = DeliveryClient("https://api.cmdrdata.ai/api/events", None, "tk-test-key-123", 5.0)
    adapter = client.session.get_adapter("https://api.cmdrdata.ai/")
    assert adapter._pool_maxsize == 12  # type: ignore[attr-defined]


@pytest.fixture
def meter() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    original = compat._meter_provider
    compat._meter_provider = lambda: provider  # type: ignore[assignment]
    try:
        yield reader
    finally:
        compat._meter_provider = original  # type: ignore[assignment]
        provider.shutdown()


def _durations(reader: InMemoryMetricReader) -> list[tuple[dict[str, Any], int]]:
    data = reader.get_metrics_data()
    assert data is not None
    out = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == compat.DURATION_METRIC:
                    for point in metric.data.data_points:
                        out.append((dict(point.attributes or {}), int(point.count)))  # type: ignore[union-attr]
    return out


def test_performance_context_is_the_parent_span_of_the_calls_inside_it(
    client: Any, spans: Spans, meter: InMemoryMetricReader
) -> None:
    with customer_context("acme"), cmdrdata_autotrack.PerformanceContext("summarize") as ctx:
        client.chat.completions.create(**CHAT)
        ctx.add_metric("documents", 3)
    assert ctx.success is True and ctx.duration is not None and ctx.duration > 0
    block = next(s for s in EXPORTER.get_finished_spans() if s.name == "summarize")
    call = spans.one()  # the block itself is no usage event
    assert call.parent is not None and call.parent.span_id == block.context.span_id
    attrs = dict(block.attributes or {})
    assert attrs == {
        "cmdrdata.performance.name": "summarize",
        "cmdrdata.customer.id": "acme",
        "cmdrdata.performance.success": True,
        "cmdrdata.performance.metric.documents": 3,
    }
    assert _durations(meter) == [
        (
            {
                "cmdrdata.performance.name": "summarize",
                "cmdrdata.performance.success": True,
                "cmdrdata.customer.id": "acme",
            },
            1,
        )
    ]


def test_a_failing_block_records_its_error_type_and_the_error_passes_through(
    meter: InMemoryMetricReader, spans: Spans
) -> None:
    with pytest.raises(KeyError), cmdrdata_autotrack.PerformanceContext("lookup") as ctx:
        raise KeyError("nope")
    assert (ctx.success, ctx.error_type) == (False, "KeyError")
    block = next(s for s in EXPORTER.get_finished_spans() if s.name == "lookup")
    assert block.status.status_code == StatusCode.ERROR
    assert dict(block.attributes or {})["error.type"] == "KeyError"
    assert _durations(meter) == [
        (
            {
                "cmdrdata.performance.name": "lookup",
                "cmdrdata.performance.success": False,
                "error.type": "KeyError",
            },
            1,
        )
    ]


async def test_performance_context_works_with_async_with(
    aclient: Any, spans: Spans, meter: InMemoryMetricReader
) -> None:
    async with cmdrdata_autotrack.PerformanceContext("batch") as ctx:
        await aclient.chat.completions.create(**CHAT, customer_id="bob")
    assert ctx.success is True
    block = next(s for s in EXPORTER.get_finished_spans() if s.name == "batch")
    call = spans.one()
    assert call.parent is not None and call.parent.span_id == block.context.span_id
    assert [count for _, count in _durations(meter)] == [1]
