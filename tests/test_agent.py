"""The agent as a whole: clients of every kind, the explicit API, tracing set-up, configuration."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision

import cmdrdata_autotrack
from cmdrdata_autotrack import agent, bootstrap
from cmdrdata_autotrack.config import SETTINGS, Settings
from cmdrdata_autotrack.instrumentation.openai import instrumentor
from cmdrdata_autotrack.telemetry.logging import redact
from cmdrdata_autotrack.tracing.provider import TracerSource, exporter_names
from cmdrdata_autotrack.tracing.sampler import MeteringSampler

from conftest import Spans
from fake_openai import FakeOpenAI
from ingest_server import IngestServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_tracked_openai_is_a_drop_in(fake: FakeOpenAI, spans: Spans) -> None:
    from cmdrdata_autotrack import AsyncTrackedOpenAI, TrackedOpenAI

    running = agent.get()
    assert running is not None
    original = running.settings
    key = "tk-test-key-123456"
    try:
        with IngestServer(api_key=key) as ingest:
            client = TrackedOpenAI(
                api_key="sk-test",
                tracker_key=key,
                tracker_endpoint=ingest.url,
                tracker_timeout=3.0,
                base_url=fake.base_url,
                max_retries=0,
            )
            assert isinstance(client, openai.OpenAI)
            assert client.get_openai_client() is client
            assert client.get_tracker() is running
            assert running.settings.timeout == 3.0 and running.settings.api_key == key
            reply = client.chat.completions.create(**CHAT, customer_id="tracked")
            assert reply.usage.total_tokens == 26
            assert spans.attrs()["cmdrdata.customer.id"] == "tracked"
            # the tracker settings given to the client are the ones usage is delivered with
            assert ingest.wait_for_events(1, 10)
            (event,) = ingest.accepted().values()
            assert (event["customer_id"], event["total_tokens"]) == ("tracked", 26)
            # the old client's per-call switch
            spans.__init__()
            client.chat.completions.create(**CHAT, track_usage=False)
            assert spans.all == []
            assert isinstance(
                AsyncTrackedOpenAI(api_key="x", base_url=fake.base_url), openai.AsyncOpenAI
            )
    finally:
        running.reconfigure(original)


def test_azure_client(fake: FakeOpenAI, spans: Spans) -> None:
    client = openai.AzureOpenAI(
        api_key="az-key",
        api_version="2024-10-21",
        azure_endpoint=fake.root_url,
        azure_deployment="my-gpt",
        max_retries=0,
    )
    list(client.chat.completions.create(**CHAT, stream=True, customer_id="az"))
    attrs = spans.attrs()
    assert attrs["gen_ai.provider.name"] == "azure.ai.openai"
    assert attrs["cmdrdata.customer.id"] == "az"
    assert "/openai/deployments/my-gpt/chat/completions" in fake.requests[-1].path


def test_module_level_client(
    fake: FakeOpenAI, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai, "api_key", "sk-module")
    monkeypatch.setattr(openai, "base_url", fake.base_url + "/")
    monkeypatch.setattr(openai, "max_retries", 0)
    monkeypatch.setattr(openai, "_client", None)
    openai.embeddings.create(model="text-embedding-3-small", input="x", customer_id="module")
    assert spans.attrs()["cmdrdata.customer.id"] == "module"


def test_uninstrument_restores_and_instrument_again(
    fake: FakeOpenAI, spans: Spans, client: Any
) -> None:
    from openai.resources.embeddings import Embeddings

    running = agent.get()
    assert running is not None
    wrapped = Embeddings.__dict__["create"]
    cmdrdata_autotrack.uninstrument()
    try:
        original = Embeddings.__dict__["create"]
        assert original is wrapped.__wrapped__
        assert not instrumentor.is_instrumented()
        client.embeddings.create(model="text-embedding-3-small", input="x")
        assert spans.all == []
        with pytest.raises(TypeError):  # restored exactly: the SDK rejects unknown arguments
            client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="c")
    finally:
        # put the session's agent back, on the same tracer set-up
        agent._agent = running
        instrumentor.instrument(running.runtime)
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="again")
    assert spans.attrs()["cmdrdata.customer.id"] == "again"


def test_metering_off_at_run_time_still_accepts_agent_arguments(client: Any, spans: Spans) -> None:
    running = agent.get()
    assert running is not None
    running.runtime.metering = False
    try:
        reply = client.chat.completions.create(**CHAT, customer_id="c", tracking_metadata={"a": 1})
    finally:
        running.runtime.metering = True
    assert reply.usage.total_tokens == 26
    assert spans.all == []


def test_content_is_captured_only_when_enabled(
    client: Any, spans: Spans, agent_settings: Any
) -> None:
    client.chat.completions.create(**CHAT)
    assert "gen_ai.input.messages" not in spans.attrs()
    agent_settings(capture_content=True)
    spans.__init__()
    client.chat.completions.create(**CHAT)
    assert spans.attrs()["gen_ai.input.messages"] == '[{"role": "user", "content": "hi"}]'


def test_unsupported_sdk_version_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_version = types.ModuleType("openai._version")
    fake_version.__version__ = "0.28.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "openai._version", fake_version)
    assert instrumentor.sdk_supported() is False
    fake_version.__version__ = "4.0.0"  # type: ignore[attr-defined]
    assert instrumentor.sdk_supported() is False
    fake_version.__version__ = openai.__version__  # type: ignore[attr-defined]
    assert instrumentor.sdk_supported() is True


def test_bootstrap_failure_never_reaches_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(settings: Any = None) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(agent, "start", broken)
    monkeypatch.delattr(sys, "_cmdrdata_autotrack_bootstrapped", raising=False)
    bootstrap.run()  # logs, does not raise
    assert sys._cmdrdata_autotrack_bootstrapped  # type: ignore[attr-defined]
    bootstrap.run()  # and only once


# --- tracing set-up -------------------------------------------------------------------------


def test_metering_sampler_keeps_dropped_metered_spans_recorded() -> None:
    sampler = MeteringSampler(ALWAYS_OFF)
    metered = sampler.should_sample(None, 1, "chat m", attributes={"cmdrdata.metered": True})
    other = sampler.should_sample(None, 1, "GET /", attributes={"http.method": "GET"})
    assert metered.decision is Decision.RECORD_ONLY
    assert other.decision is Decision.DROP
    assert "AlwaysOffSampler" in sampler.get_description()


def test_own_provider_when_the_app_configured_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    source = TracerSource(Settings(traces_exporter="console"), [])
    tracer = source.tracer()
    assert isinstance(source.own_provider, TracerProvider)
    span = tracer.start_span("x", attributes={"cmdrdata.metered": True})
    assert span.is_recording()  # OTEL_SDK_DISABLED turns tracing off, not metering
    span.end()
    source.shutdown()


@pytest.mark.parametrize(
    ("configured", "env", "names"),
    [
        (None, {}, []),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ("console,otlp", {}, ["console", "otlp"]),
        ("none", {}, []),
        ("console", {"OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporter_names(configured: str | None, env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(Settings(traces_exporter=configured), env) == names


def test_joining_the_apps_provider_wraps_its_sampler_once() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    source = TracerSource(Settings(), [])
    source._attach(provider)
    source._attach(provider)
    assert isinstance(provider.sampler, MeteringSampler)
    assert provider.sampler.inner is ALWAYS_OFF


# --- configuration --------------------------------------------------------------------------


def test_settings_from_env_and_bad_values(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(
        {
            "CMDRDATA_DISABLED": "yes",
            "CMDRDATA_TIMEOUT": "-3",
            "CMDRDATA_STREAM_USAGE": "sometimes",
            "CMDRDATA_CUSTOMER_ID": "  acme  ",
            "CMDRDATA_API_KEY": "tk-abcdefghijkl",
        }
    )
    assert settings.disabled is True
    assert settings.timeout == 5.0
    assert settings.stream_usage == "auto"
    assert settings.customer_id == "acme"
    assert settings.masked()["CMDRDATA_API_KEY"] == "tk-a…"
    assert Settings.from_env({"CMDRDATA_TIMEOUT": "2"}, timeout=9.0).timeout == 9.0


def test_every_setting_is_documented() -> None:
    for setting in SETTINGS:
        assert setting.help and setting.env
        assert hasattr(Settings(), setting.name)


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer tk-live-abcdefgh12345",
        "headers={'Authorization': 'Bearer sk-proj-abcdef123456'}",
        "api_key=tk-secret-value-999",
        "key sk-abcdefghijklmnop in text",
    ],
)
def test_redaction(line: str) -> None:
    clean = redact(line)
    for secret in ("abcdefgh12345", "abcdef123456", "secret-value-999", "abcdefghijklmnop"):
        assert secret not in clean


def test_configuration_reference_is_generated_from_the_code() -> None:
    """docs/configuration.md embeds the generated table: it cannot drift from config.py."""
    from cmdrdata_autotrack.config import reference_markdown

    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    begin = text.index("<!-- BEGIN SETTINGS")
    body = text[text.index("\n", begin) + 1 : text.index("<!-- END SETTINGS -->")]
    assert body == reference_markdown(), "run: python -m cmdrdata_autotrack.config"
