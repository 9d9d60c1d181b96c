"""``cmdrdata-run`` as a real subprocess, against the fake OpenAI API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cmdrdata_autotrack._version import __version__

from conftest import STATE_DIR
from fake_openai import FakeOpenAI

BIN = Path(sys.executable).parent
RUN = str(BIN / "cmdrdata-run")

# An unmodified app: it knows nothing of the agent.
PLAIN_APP = """
import openai
client = openai.OpenAI(max_retries=0)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
)
print(reply.choices[0].message.content, reply.usage.total_tokens)
chunks = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
)
print([c.choices[0].delta.content for c in chunks])
"""

# An app that names its customer per call.
APP = """
import openai
client = openai.OpenAI(max_retries=0)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], customer_id="acme"
)
print(reply.choices[0].message.content, reply.usage.total_tokens)
chunks = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
)
print([c.choices[0].delta.content for c in chunks])
"""


def app_env(fake: FakeOpenAI, state: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CMDRDATA_", "OTEL_", "PYTEST_")) and k != "PYTHONPATH"
    }
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test-key",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        CMDRDATA_STREAM_USAGE="always",
    )
    state = state or Path(tempfile.mkdtemp(prefix="cmdrdata-app-", dir=STATE_DIR))
    env.update(
        CMDRDATA_SPOOL_DIR=str(state / "spool"), CMDRDATA_LEDGER_PATH=str(state / "ledger.sqlite3")
    )
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def console_spans(stderr: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (JSON objects, one after another)."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    index = stderr.find("{")
    while index != -1:
        try:
            obj, end = decoder.raw_decode(stderr, index)
        except ValueError:
            index = stderr.find("{", index + 1)
            continue
        if isinstance(obj, dict) and "attributes" in obj and "name" in obj:
            spans.append(obj)
        index = stderr.find("{", end)
    return spans


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def test_output_is_identical_with_and_without_the_launcher(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    app = tmp_path / "plain.py"
    app.write_text(PLAIN_APP)
    env = app_env(fake)
    plain = run([sys.executable, str(app)], env)
    metered = run([RUN, sys.executable, str(app)], env)
    assert plain.returncode == metered.returncode == 0, metered.stderr
    assert metered.stdout == plain.stdout
    assert "Hello from the fake server." in plain.stdout
    # the usage-only chunk the agent asked for never reached the app's loop
    assert "None]" in plain.stdout and metered.stdout.count("None") == 1


def test_console_exporter_shows_one_span_per_call_with_usage_and_customer(
    fake: FakeOpenAI, app: Path
) -> None:
    result = run(
        [RUN, "--traces-exporter", "console", "--", sys.executable, str(app)], app_env(fake)
    )
    assert result.returncode == 0, result.stderr
    spans = console_spans(result.stderr)
    assert [s["name"] for s in spans] == ["chat gpt-4o-mini", "chat gpt-4o-mini"]
    first, second = (s["attributes"] for s in spans)
    assert first["cmdrdata.customer.id"] == "acme"
    assert first["gen_ai.usage.input_tokens"] == 17
    assert first["gen_ai.usage.output_tokens"] == 9
    assert second["cmdrdata.customer.unattributed"] is True
    assert second["gen_ai.usage.output_tokens"] == 5  # one token per streamed word
    assert spans[0]["kind"] == "SpanKind.CLIENT"


def test_python_dash_c_pass_does_not_import_openai(fake: FakeOpenAI) -> None:
    code = (
        "import sys; print('openai' in sys.modules, getattr(sys, '_cmdrdata_autotrack_bootstrapped', False),"
        " any(m in sys.modules for m in ('requests', 'opentelemetry.sdk.trace', 'wrapt')))"
    )
    result = run([RUN, sys.executable, "-c", code], app_env(fake))
    assert result.returncode == 0, result.stderr
    # bootstrapped, and nothing heavy loaded until the app imports openai
    assert result.stdout.split() == ["False", "True", "False"]


def test_agent_starts_when_the_app_imports_openai(fake: FakeOpenAI) -> None:
    code = (
        "import sys; from cmdrdata_autotrack import agent, bootstrap; before = agent.get() is None; "
        "import openai; bootstrap._finish_starting(); "  # it starts in the background
        "print(before, agent.get() is not None, 'opentelemetry.sdk.trace' in sys.modules)"
    )
    result = run([RUN, sys.executable, "-c", code], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_missing_command_exits_127_with_one_line(fake: FakeOpenAI) -> None:
    result = run([RUN, "no-such-command-xyz", "arg"], app_env(fake))
    assert result.returncode == 127
    assert result.stderr.strip().splitlines() == [
        "cmdrdata-run: no-such-command-xyz: command not found"
    ]


def test_no_command_is_a_usage_error(fake: FakeOpenAI) -> None:
    result = run([RUN], app_env(fake))
    assert result.returncode == 2
    assert "no command given" in result.stderr


def test_help_and_version(fake: FakeOpenAI) -> None:
    version = run([RUN, "--version"], app_env(fake))
    assert version.stdout.strip() == f"cmdrdata-run {__version__}"
    helped = run([RUN, "--help"], app_env(fake))
    assert helped.returncode == 0
    for text in ("--customer-id", "CMDRDATA_CUSTOMER_ID", "--stream-usage", "OTEL_TRACES_EXPORTER"):
        assert text in helped.stdout


def test_option_overrides_its_environment_variable(fake: FakeOpenAI, app: Path) -> None:
    code = "import os; print(os.environ['CMDRDATA_CUSTOMER_ID'])"
    env = app_env(fake, CMDRDATA_CUSTOMER_ID="from-env")
    result = run([RUN, "--customer-id", "from-option", sys.executable, "-c", code], env)
    assert result.stdout.strip() == "from-option"


def test_user_sitecustomize_still_runs(fake: FakeOpenAI, app: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.user_site_ran = True\n")
    code = "import sys; print(getattr(sys, 'user_site_ran', False), sys._cmdrdata_autotrack_bootstrapped)"
    env = app_env(fake, PYTHONPATH=str(site))
    result = run([RUN, sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_python_dash_m_is_instrumented(fake: FakeOpenAI, tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(APP)
    result = run(
        [RUN, "--traces-exporter", "console", sys.executable, "-m", "mypkg"],
        app_env(fake),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len(console_spans(result.stderr)) == 2


def test_console_script_is_instrumented(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A console script (here pytest's own) runs under the launcher and is metered."""
    test_file = tmp_path / "test_calls.py"
    test_file.write_text(
        "import openai\n\n"
        "def test_call():\n"
        "    openai.OpenAI(max_retries=0).embeddings.create(model='text-embedding-3-small', input='x')\n"
    )
    result = run(
        [
            RUN,
            "--traces-exporter",
            "console",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(test_file),
        ],
        app_env(fake),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spans = console_spans(result.stderr)
    assert [s["name"] for s in spans] == ["embeddings text-embedding-3-small"]


def test_python_subprocess_is_instrumented_once(fake: FakeOpenAI, tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(APP)
    parent = tmp_path / "parent.py"
    parent.write_text(
        f"import subprocess, sys\n{APP}\nsubprocess.run([sys.executable, {str(child)!r}], check=True)\n"
    )
    # the launcher twice over must not bootstrap a process twice
    result = run(
        [RUN, "--traces-exporter", "console", RUN, sys.executable, str(parent)],
        app_env(fake),
    )
    assert result.returncode == 0, result.stderr
    assert len(console_spans(result.stderr)) == 4  # two calls in each process
    ids = {s["context"]["span_id"] for s in console_spans(result.stderr)}
    assert len(ids) == 4
    assert len(fake.requests) == 4


def test_disabled_app_still_runs_with_customer_arguments(fake: FakeOpenAI, app: Path) -> None:
    env = app_env(fake, CMDRDATA_DISABLED="true", OTEL_TRACES_EXPORTER="console")
    result = run([RUN, sys.executable, str(app)], env)
    assert result.returncode == 0, result.stderr
    assert console_spans(result.stderr) == []
    assert "Hello from the fake server." in result.stdout
    # nothing was added to the request either
    assert all("stream_options" not in (r.json or {}) for r in fake.requests)


def test_sampling_at_one_percent_still_meters_every_call(fake: FakeOpenAI, tmp_path: Path) -> None:
    """The app samples 1% of traces; metering still sees 100% of calls, exporters ~1%."""
    script = tmp_path / "sampled.py"
    script.write_text(
        textwrap.dedent(
            """
            import openai
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
            from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
            from cmdrdata_autotrack.telemetry import metrics

            exporter = InMemorySpanExporter()
            provider = TracerProvider(sampler=TraceIdRatioBased(0.01))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            client = openai.OpenAI(max_retries=0)
            for i in range(300):
                client.embeddings.create(model="text-embedding-3-small", input="x", customer_id=f"c{i % 3}")
            print(metrics.snapshot()["spans_metered"], len(exporter.get_finished_spans()))
            """
        )
    )
    result = run([RUN, sys.executable, str(script)], app_env(fake))
    assert result.returncode == 0, result.stderr
    metered, exported = map(int, result.stdout.split())
    assert metered == 300
    assert exported < 30  # about 3 of 300 are sampled for tracing


def test_auto_module_bootstraps_from_code(fake: FakeOpenAI, tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text("import cmdrdata_autotrack.auto\n" + APP)
    env = app_env(fake, OTEL_TRACES_EXPORTER="console")
    result = run([sys.executable, str(script)], env)
    assert result.returncode == 0, result.stderr
    assert len(console_spans(result.stderr)) == 2
