"""OpenTelemetry-native: the instrumentor entry point, OTLP export, GenAI metrics, health server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_launcher import APP, app_env, console_spans

from cmdrdata_autotrack.config import Settings
from cmdrdata_autotrack.export import ledger as ledger_db
from cmdrdata_autotrack.export.pipeline import Pipeline
from cmdrdata_autotrack.telemetry import metrics
from cmdrdata_autotrack.telemetry.health_server import HealthServer, prometheus_text
from cmdrdata_autotrack.telemetry.otel_metrics import DURATION_BUCKETS, TOKEN_BUCKETS, AgentMetrics

from fake_openai import FakeOpenAI

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")


class OTLPReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that decodes what it gets."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            attrs = {a.key: _value(a.value) for a in span.attributes}
                            with receiver.arrived:
                                receiver.spans.append({"name": span.name, "attributes": attrs})
                                receiver.arrived.notify_all()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    yield server
    server.stop()


def ledger_events(env: dict[str, str]) -> list[dict[str, Any]]:
    conn = ledger_db.open_ledger(Path(env["CMDRDATA_LEDGER_PATH"]))
    return [json.loads(row[0]) for row in conn.execute("SELECT event FROM usage")]


def test_spans_over_otlp_carry_tokens_and_customer(
    fake: FakeOpenAI, receiver: OTLPReceiver, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = app_env(
        fake,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="otlp-test",
    )
    result = subprocess.run(
        [RUN, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # the batch span processor exported at exit, before the process ended
    names = sorted(s["name"] for s in receiver.spans)
    assert names == ["chat gpt-4o-mini", "chat gpt-4o-mini"]
    first = next(s for s in receiver.spans if s["attributes"].get("cmdrdata.customer.id") == "acme")
    assert first["attributes"]["gen_ai.usage.input_tokens"] == 17
    assert first["attributes"]["gen_ai.usage.output_tokens"] == 9
    assert first["attributes"]["gen_ai.provider.name"] == "openai_compatible"  # a local host


def test_opentelemetry_instrument_meters_like_cmdrdata_run(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = app_env(fake, OTEL_TRACES_EXPORTER="console")
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(console_spans(result.stderr)) == 2
    events = ledger_events(env)
    assert sorted(e["customer_id"] for e in events) == ["acme", "unattributed"]


def test_both_launchers_together_meter_once(fake: FakeOpenAI, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = app_env(fake, OTEL_TRACES_EXPORTER="console")
    for command in (
        [RUN, str(BIN / "opentelemetry-instrument"), sys.executable, str(app)],
        [str(BIN / "opentelemetry-instrument"), RUN, sys.executable, str(app)],
    ):
        env = app_env(fake, OTEL_TRACES_EXPORTER="console")
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert len(console_spans(result.stderr)) == 2, command
        assert len(ledger_events(env)) == 2, command


def test_official_instrumentation_alongside_gives_one_span_and_one_event(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """With opentelemetry-instrumentation-openai-v2 active, its span is the trace; ours meters."""
    script = tmp_path / "both.py"
    script.write_text(
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor\n"
        "OpenAIInstrumentor().instrument()\n"
        "import openai\n"
        "client = openai.OpenAI(max_retries=0)\n"
        "for i in range(3):\n"
        "    client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}], customer_id='both')\n"
        "import cmdrdata_autotrack\n"
        "cmdrdata_autotrack.flush()\n"
        "print(json.dumps([s.instrumentation_scope.name for s in exporter.get_finished_spans()]))\n".replace(
            "from opentelemetry import trace\n", "import json\nfrom opentelemetry import trace\n", 1
        )
    )
    env = app_env(fake)
    result = subprocess.run(
        [RUN, sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    scopes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(scopes) == 3 and "cmdrdata_autotrack.openai" not in scopes  # one span a call: theirs
    events = ledger_events(env)
    assert len(events) == 3 and {e["customer_id"] for e in events} == {"both"}


# --- GenAI metrics --------------------------------------------------------------------------


def test_genai_metrics_with_recommended_buckets() -> None:
    reader = InMemoryMetricReader()
    recorder = AgentMetrics(MeterProvider(metric_readers=[reader]), lambda: {"spool_depth": 3})
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 17,
        "gen_ai.usage.output_tokens": 9,
        "cmdrdata.customer.id": "never-a-metric-label",
    }
    recorder.record_call(attrs, 0.25, 0.05)
    recorder.record_call({**attrs, "cmdrdata.usage.estimated": True}, 0.5, None)
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric
    tokens = found["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    points = {p.attributes["gen_ai.token.type"]: p for p in tokens.data.data_points}
    assert (points["input"].sum, points["output"].sum) == (
        17,
        9,
    )  # the estimated call is not counted
    assert list(points["input"].explicit_bounds) == TOKEN_BUCKETS
    assert "cmdrdata.customer.id" not in points["input"].attributes  # no per-customer cardinality
    duration = found["gen_ai.client.operation.duration"]
    assert (
        duration.unit == "s"
        and list(duration.data.data_points[0].explicit_bounds) == DURATION_BUCKETS
    )
    assert duration.data.data_points[0].count == 2
    assert found["gen_ai.client.operation.time_to_first_chunk"].data.data_points[0].count == 1
    assert "cmdrdata.agent.calls_metered" in found
    assert found["cmdrdata.agent.spool"].data.data_points[0].value == 3


def test_metrics_exported_with_otel_metrics_exporter(fake: FakeOpenAI, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = app_env(fake, OTEL_METRICS_EXPORTER="console")
    result = subprocess.run(
        [RUN, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "gen_ai.client.token.usage" in result.stderr
    assert "gen_ai.client.operation.duration" in result.stderr


# --- /metrics, /healthz, /readyz --------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_server_endpoints(tmp_path: Path) -> None:
    pipeline = Pipeline(
        Settings(
            api_key="tk-health-0123456789",
            endpoint="http://127.0.0.1:9/api/events",
            spool_dir=str(tmp_path / "spool"),
        )
    )
    server = HealthServer(
        "127.0.0.1", 0, pipeline.gauges, pipeline.readiness, lambda: pipeline.breaker.state
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz")[0] == 200
        code, text = get(base + "/metrics")
        assert code == 200
        assert "# TYPE cmdrdata_events_delivered_total counter" in text
        assert "cmdrdata_circuit_breaker_state 0" in text
        for _ in range(pipeline.breaker.threshold):
            pipeline.breaker.failure()
        code, reason = get(base + "/readyz")
        assert code == 503 and "circuit breaker open" in reason
        assert "cmdrdata_circuit_breaker_state 2" in get(base + "/metrics")[1]
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_prometheus_text_format() -> None:
    text = prometheus_text(
        {"events_delivered": 5},
        {"delivery_seconds": {"count": 2, "sum": 0.5, "max": 0.3}},
        {"spool_depth": 7},
        "half-open",
    )
    assert "cmdrdata_events_delivered_total 5" in text
    assert (
        "cmdrdata_delivery_seconds_count 2" in text
        and "cmdrdata_delivery_seconds_sum 0.500000" in text
    )
    assert "cmdrdata_spool_depth 7" in text and "cmdrdata_circuit_breaker_state 1" in text
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_metrics_port_under_the_launcher(fake: FakeOpenAI, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = tmp_path / "app.py"
    app.write_text(APP + "\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n")
    env = app_env(fake, CMDRDATA_METRICS_PORT=str(port))
    process = subprocess.Popen(
        [RUN, sys.executable, str(app)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        while process.stdout.readline().strip() != "ready":
            pass
        code, text = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert "cmdrdata_calls_metered_total 2" in text
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    finally:
        process.communicate(input="", timeout=30)
    assert process.returncode == 0


def test_counters_are_described() -> None:
    assert set(metrics.DESCRIPTIONS) >= {
        "events_delivered",
        "events_dead_lettered",
        "events_dropped",
        "events_retried",
    }
    assert os.environ.get("CMDRDATA_METRICS_PORT") is None
