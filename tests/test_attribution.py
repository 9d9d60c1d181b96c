"""Whose usage a call is: argument, context, baggage, process default; validation; metadata."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from cmdrdata_autotrack import (
    clear_customer,
    customer_context,
    get_customer,
    reset_customer,
    set_customer,
    set_customer_context,
)
from cmdrdata_autotrack.attribution.resolve import clean_metadata, customer_id_problem
from cmdrdata_autotrack.telemetry import metrics

from conftest import Spans
from fake_openai import FakeOpenAI

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def customer_of(spans: Spans) -> tuple[Any, Any]:
    attrs = spans.attrs()
    return attrs.get("cmdrdata.customer.id"), attrs.get("cmdrdata.customer.source")


def test_precedence_argument_context_baggage_env(
    client: Any, spans: Spans, agent_settings: Any
) -> None:
    agent_settings(customer_id="env-default")
    client.chat.completions.create(**CHAT)
    assert customer_of(spans) == ("env-default", "env")

    token = otel_context.attach(baggage.set_baggage("cmdrdata.customer_id", "from-baggage"))
    try:
        spans.__init__()
        client.chat.completions.create(**CHAT)
        assert customer_of(spans) == ("from-baggage", "baggage")

        with customer_context("from-context"):
            spans.__init__()
            client.chat.completions.create(**CHAT)
            assert customer_of(spans) == ("from-context", "context")

            spans.__init__()
            client.chat.completions.create(**CHAT, customer_id="from-argument")
            assert customer_of(spans) == ("from-argument", "argument")
    finally:
        otel_context.detach(token)


def test_no_customer_is_unattributed_and_counted(client: Any, spans: Spans) -> None:
    before = metrics.snapshot().get("calls_unattributed", 0)
    client.chat.completions.create(**CHAT)
    attrs = spans.attrs()
    assert attrs["cmdrdata.customer.unattributed"] is True
    assert "cmdrdata.customer.id" not in attrs
    assert metrics.snapshot()["calls_unattributed"] == before + 1


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "customer id is empty"),
        ("x" * 257, "customer id is 257 characters long (at most 256)"),
        ("bad\nid", "customer id contains non-printable characters"),
        (12345, "customer id must be a string, got int"),
    ],
)
def test_invalid_customer_ids_warn_and_the_call_succeeds(
    value: Any, problem: str, client: Any, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    from cmdrdata_autotrack.telemetry import logging as agent_logging

    # each kind of problem is warned once per process: forget earlier tests' warnings
    for key in [k for k in agent_logging._warned if k.startswith("customer:")]:
        agent_logging._warned.discard(key)
    logger = logging.getLogger("cmdrdata_autotrack")
    logger.addHandler(caplog.handler)
    try:
        reply = client.chat.completions.create(**CHAT, customer_id=value)
    finally:
        logger.removeHandler(caplog.handler)
    assert reply.usage.total_tokens == 26
    attrs = spans.attrs()
    assert attrs["cmdrdata.customer.unattributed"] is True
    assert attrs["cmdrdata.customer.problem"] == problem
    assert customer_id_problem(value) == problem
    assert any(problem in r.getMessage() for r in caplog.records)


def test_valid_edge_ids() -> None:
    assert customer_id_problem("x" * 256) is None
    assert customer_id_problem("cust with spaces/ünïcode") is None


def test_metadata_from_context_and_call_openai_params_untouched(
    client: Any, fake: FakeOpenAI, spans: Spans
) -> None:
    with customer_context("acme", plan="pro", region="eu"):
        client.chat.completions.create(
            **CHAT,
            tracking_metadata={"feature": "summary", "region": "us", "nested": {"a": [1, 2]}},
            metadata={"openai_side": "kept"},
            user="end-user-7",
        )
    attrs = spans.attrs()
    assert attrs["cmdrdata.metadata.plan"] == "pro"
    assert attrs["cmdrdata.metadata.region"] == "us"  # the call wins over the context
    assert attrs["cmdrdata.metadata.feature"] == "summary"
    assert attrs["cmdrdata.metadata.nested"] == '{"a": [1, 2]}'
    sent = fake.requests[-1].json
    assert sent["metadata"] == {"openai_side": "kept"}
    assert sent["user"] == "end-user-7"
    assert "tracking_metadata" not in sent


def test_hostile_metadata_is_bounded() -> None:
    cleaned = clean_metadata(
        {"big": "x" * 10_000, "obj": object(), "inf": float("inf"), "huge": 10**30, "bad\x00key": 1}
    )
    assert len(cleaned["big"]) == 1024
    assert cleaned["inf"] == "inf" and cleaned["huge"] == str(10**30)
    assert "badkey" in cleaned
    assert len(clean_metadata({str(i): i for i in range(500)})) == 64
    assert clean_metadata("not a mapping") == {}  # type: ignore[arg-type]


def test_set_customer_for_middleware_and_compat_names(client: Any, spans: Spans) -> None:
    token = set_customer("mw-cust", tier="gold")
    try:
        assert get_customer() == "mw-cust"
        client.chat.completions.create(**CHAT)
        attrs = spans.attrs()
        assert (attrs["cmdrdata.customer.id"], attrs["cmdrdata.metadata.tier"]) == (
            "mw-cust",
            "gold",
        )
    finally:
        reset_customer(token)
    assert get_customer() is None
    set_customer_context("old-style")
    assert get_customer() == "old-style"
    clear_customer()
    assert get_customer() is None


async def test_context_follows_await_and_tasks(aclient: Any, spans: Spans) -> None:
    async def handler(customer: str) -> None:
        with customer_context(customer):
            await asyncio.sleep(0)
            await asyncio.gather(
                aclient.embeddings.create(model="text-embedding-3-small", input="a"),
                asyncio.create_task(
                    aclient.embeddings.create(model="text-embedding-3-small", input="b")
                ),
            )

    await asyncio.gather(handler("task-a"), handler("task-b"))
    customers = sorted(s.attributes["cmdrdata.customer.id"] for s in spans.all)
    assert customers == ["task-a", "task-a", "task-b", "task-b"]


def test_thread_pools_with_copied_context(client: Any, spans: Spans) -> None:
    def call() -> None:
        client.embeddings.create(model="text-embedding-3-small", input="x")

    with customer_context("pooled"), ThreadPoolExecutor(2) as pool:
        plain = pool.submit(call)  # a plain submit does not carry the context
        carried = pool.submit(contextvars.copy_context().run, call)
        plain.result(), carried.result()
    customers = sorted(str(s.attributes.get("cmdrdata.customer.id")) for s in spans.all)
    assert customers == ["None", "pooled"]
