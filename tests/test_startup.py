"""Start-up cost, as behaviour (no timing is asserted): what the launcher, the bootstrap and the
first ``import openai`` load, and that what is deferred (the launcher's argparse, the agent's
start on a background thread) changes no answer and loses no call.

Module sets are compared with a plain interpreter in the same environment, so whatever the
environment itself loads (coverage's start-up hook, say) is not counted against the agent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_launcher import RUN, app_env

from cmdrdata_autotrack import bootstrap
from cmdrdata_autotrack.config import SETTINGS, parse_value
from cmdrdata_autotrack.launcher import cli

from fake_openai import FakeOpenAI

# What an interpreter that never imports openai must not pay for under the launcher.
HEAVY_AT_START = (
    "argparse",
    "logging",
    "typing",
    "dataclasses",
    "inspect",
    "tempfile",
    "importlib.abc",
    "threading",
    "enum",
    "opentelemetry",
    "requests",
    "sqlite3",
    "wrapt",
    "cmdrdata_autotrack.config",
    "cmdrdata_autotrack.agent",
)
# What the launcher itself must not import to read a usual command line.
HEAVY_IN_LAUNCHER = (
    "argparse",
    "shutil",
    "pathlib",
    "logging",
    "typing",
    "dataclasses",
    "cmdrdata_autotrack.config",
)
MODULES = "import sys; print(json.dumps(sorted(sys.modules)))"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def modules_of(args: list[str], env: dict[str, str]) -> set[str]:
    result = run(args, env)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


# --- the bootstrap ------------------------------------------------------------------------------


def test_a_process_under_the_launcher_loads_nothing_heavy_before_openai(
    fake: FakeOpenAI,
) -> None:
    env = app_env(fake)
    code = f"import json; {MODULES}"
    plain = modules_of([sys.executable, "-c", code], env)
    launched = modules_of([RUN, sys.executable, "-c", code], env)
    assert "cmdrdata_autotrack.bootstrap" in launched  # bootstrapped, and the hook installed
    assert "cmdrdata_autotrack.import_hook" in launched
    added = launched - plain
    assert sorted(m for m in added if m.startswith(HEAVY_AT_START)) == []


def test_the_bootstrap_still_installs_the_sigterm_flush(fake: FakeOpenAI) -> None:
    code = "import signal; h = signal.getsignal(signal.SIGTERM); print(callable(h), h.__module__)"
    result = run([RUN, sys.executable, "-c", code], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "cmdrdata_autotrack.lifecycle"]


def test_bad_settings_are_still_warned_about_once_when_openai_is_imported(
    fake: FakeOpenAI,
) -> None:
    """The bootstrap no longer reads the settings; the first ``import openai`` does."""
    env = app_env(fake, CMDRDATA_TIMEOUT="soon")
    quiet = run([RUN, sys.executable, "-c", "pass"], env)
    assert quiet.returncode == 0 and quiet.stderr == ""  # never imports openai: nothing to say
    loud = run([RUN, sys.executable, "-c", "import openai"], env)
    assert loud.returncode == 0
    assert loud.stderr.count("CMDRDATA_TIMEOUT") == 1, loud.stderr


# --- the first import of openai -----------------------------------------------------------------

FIRST_CALL_APP = """
import sys
from cmdrdata_autotrack.telemetry import metrics
# (coverage, when it measures this process, loads sqlite3 for its own data file)
before = sorted(m for m in {heavy!r} if m in sys.modules
                and not (m == "sqlite3" and "coverage" in sys.modules))
import openai
from openai._base_client import SyncAPIClient
patched = hasattr(SyncAPIClient.__dict__["_process_response"], "__wrapped__")
client = openai.OpenAI(max_retries=0)
client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="acme")
from cmdrdata_autotrack import agent
print(before, patched, agent.get() is not None, metrics.snapshot().get("spans_metered", 0))
"""


def test_import_openai_patches_at_once_and_the_first_call_is_metered(fake: FakeOpenAI) -> None:
    heavy = ("opentelemetry.sdk", "requests", "sqlite3", "wrapt", "cmdrdata_autotrack.agent")
    app = FIRST_CALL_APP.format(heavy=heavy)
    result = run([RUN, sys.executable, "-c", app], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True", "True", "1"]
    assert result.stderr == ""


# A call that comes before the background start has finished: the start is held until the
# call is known to be waiting for it.
EARLY_CALL_APP = """
import threading
from cmdrdata_autotrack import agent, bootstrap
from cmdrdata_autotrack.instrumentation.openai import instrumentor
from cmdrdata_autotrack.telemetry import metrics

waiting, go = threading.Event(), threading.Event()
real_start = bootstrap._start_agent

def held_start():
    if threading.current_thread().name != "cmdrdata-start":
        waiting.set()  # the app's call is here, and the agent has not started
    go.wait(60)
    return real_start()

bootstrap._start_agent = held_start
bootstrap.run()
import openai
client = openai.OpenAI(max_retries=0)
done = []
call = threading.Thread(target=lambda: done.append(
    client.embeddings.create(model="text-embedding-3-small", input="x", customer_id="early")))
call.start()
assert waiting.wait(60)
print(agent.get() is None, done == [], metrics.snapshot().get("spans_metered", 0))
go.set()
call.join(60)
print(len(done), metrics.snapshot().get("spans_metered", 0))
"""


def test_a_call_before_the_agent_has_started_waits_for_it_and_is_metered(
    fake: FakeOpenAI,
) -> None:
    env = app_env(fake)
    env.pop("PYTHONPATH", None)  # bootstrapped by hand, with the start held
    result = run([sys.executable, "-c", EARLY_CALL_APP], env)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.split() == ["True", "True", "0"]  # not started, the call not through yet
    assert second.split() == ["1", "1"]
    assert len(fake.requests) == 1


FORK_APP = """
import os
import openai
pid = os.fork()  # at once: the background start may still be under way
client = openai.OpenAI(max_retries=0)
client.embeddings.create(model="text-embedding-3-small", input="x", customer_id=str(os.getpid()))
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(status)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_fork_right_after_import_openai_meters_parent_and_child(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    env = app_env(fake, tmp_path, OTEL_TRACES_EXPORTER="console")
    result = run([RUN, sys.executable, "-c", FORK_APP], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert result.stderr.count('"cmdrdata.customer.id"') == 2, result.stderr
    # no fork hook ran half of a pair (an "Exception ignored" line), nothing else was said
    assert "Exception" not in result.stderr and "cmdrdata-autotrack" not in result.stderr
    assert len(fake.requests) == 2


def test_exit_right_after_the_first_call_leaves_its_usage_recorded(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    app = (
        "import openai\n"
        "openai.OpenAI(max_retries=0).embeddings.create("
        "model='text-embedding-3-small', input='x', customer_id='last')\n"
    )
    env = app_env(fake, tmp_path)
    assert run([RUN, sys.executable, "-c", app], env).returncode == 0
    cli_path = str(Path(sys.executable).parent / "cmdrdata-autotrack")
    report = run([cli_path, "report", "--ledger", str(tmp_path / "ledger.sqlite3"), "--json"], env)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["rows"]
    assert [(r["customer"], r["calls"]) for r in rows] == [("last", 1)]


def test_exit_right_after_import_openai_is_clean(fake: FakeOpenAI) -> None:
    result = run([RUN, sys.executable, "-c", "import openai"], app_env(fake))
    assert result.returncode == 0 and result.stderr == ""


TRACKED_APP = """
import openai
from cmdrdata_autotrack import TrackedOpenAI, agent
TrackedOpenAI(tracker_key="tk-startup-0123456789", max_retries=0)  # races the background start
print(agent.get().settings.api_key == "tk-startup-0123456789")
"""


def test_tracker_key_applies_whoever_starts_the_agent_first(fake: FakeOpenAI) -> None:
    result = run([RUN, sys.executable, "-c", TRACKED_APP], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


ANOTHER_START_FIRST = """
from cmdrdata_autotrack import agent
from cmdrdata_autotrack.config import Settings
started = agent.start(Settings.from_env())
real_get = agent.get
agent.get = lambda: None  # this caller looked before the other start had finished
agent.ensure_started(api_key="tk-startup-0123456789")
agent.get = real_get
print(agent.get() is started, started.settings.api_key == "tk-startup-0123456789")
"""


def test_ensure_started_applies_its_settings_when_another_start_came_first(
    fake: FakeOpenAI,
) -> None:
    result = run([sys.executable, "-c", ANOTHER_START_FIRST], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_the_lifecycle_flag_is_the_one_the_agent_reads() -> None:
    source = (Path(bootstrap.__file__).parent / "agent.py").read_text()
    assert f'"{bootstrap.LIFECYCLE_FLAG}"' in source


# --- the launcher -------------------------------------------------------------------------------

# The launcher's process, up to the exec: execve prints the modules and the environment.
LAUNCHER_PROBE = """
import json, os, sys
from cmdrdata_autotrack.launcher import cli
def execve(path, args, env):
    print(json.dumps([sorted(sys.modules), args, {{k: env[k] for k in env if k.startswith(("CMDRDATA_", "OTEL_"))}}]))
    os._exit(0)
os.execve = execve
sys.exit(cli.main({argv!r}))
"""


def launcher_probe(
    argv: list[str], env: dict[str, str]
) -> tuple[set[str], list[str], dict[str, str]]:
    result = run([sys.executable, "-c", LAUNCHER_PROBE.format(argv=argv)], env)
    assert result.returncode == 0, result.stderr
    modules, args, variables = json.loads(result.stdout)
    return set(modules), args, variables


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "-c", "pass"],
        ["--customer-id", "acme", "--stream-usage", "never", "--", "python", "-c", "pass"],
        ["--disabled", "--log-format=json", "python", "-c", "pass"],
    ],
)
def test_the_launcher_reads_a_usual_command_line_without_argparse(
    fake: FakeOpenAI, argv: list[str]
) -> None:
    env = app_env(fake)
    plain = modules_of([sys.executable, "-c", f"import json, os, sys; {MODULES}"], env)
    modules, args, _ = launcher_probe(argv, env)
    assert args == ["python", "-c", "pass"]
    assert sorted(m for m in modules - plain if m.startswith(HEAVY_IN_LAUNCHER)) == []


def test_the_launcher_checks_numbers_without_argparse(fake: FakeOpenAI) -> None:
    env = app_env(fake)
    modules, args, variables = launcher_probe(["--metrics-port", "9464", "python"], env)
    assert variables["CMDRDATA_METRICS_PORT"] == "9464" and args == ["python"]
    assert "argparse" not in modules and "cmdrdata_autotrack.config" not in modules
    # not plainly valid: the settings table decides, still without argparse
    modules, args, variables = launcher_probe(["--timeout", "1e1", "python"], env)
    assert variables["CMDRDATA_TIMEOUT"] == "1e1" and args == ["python"]
    assert "argparse" not in modules and "cmdrdata_autotrack.config" in modules


def test_help_is_still_argparse(fake: FakeOpenAI) -> None:
    """The probe can tell: argparse is loaded, and answers, when it has something to say."""
    code = (
        "import sys; from cmdrdata_autotrack.launcher import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n"
        "    print(e.code, 'argparse' in sys.modules)"
    )
    result = run([sys.executable, "-c", code], app_env(fake))
    assert result.stdout.strip().splitlines()[-1] == "0 True"
    assert "--customer-id" in result.stdout


def test_the_launcher_option_table_is_the_settings_table() -> None:
    table = {
        s.option: (
            s.env,
            s.kind,
            s.choices,
            (s.minimum, s.maximum) if s.kind in ("int", "float") else None,
        )
        for s in SETTINGS
        if s.option is not None
    }
    assert table == cli.OPTIONS
    for _, kind, choices, _ in cli.OPTIONS.values():  # an exact choice is one the table takes
        assert all(c == c.strip().lower() for c in choices)
        assert (kind == "choice") == bool(choices)


NUMBER_TEXT = st.text(alphabet="0123456789.+-eE _\u0660\u00b2", max_size=14) | st.sampled_from(
    ["7", " 7 ", "7.", ".5", "0", "600", "600.0", "600.01", "65535", "65536", "1e3", "٣"]
)


@pytest.mark.sdk_independent
@settings(max_examples=600, deadline=None)
@given(st.sampled_from([o for o, v in cli.OPTIONS.items() if v[3] is not None]), NUMBER_TEXT)
def test_a_plainly_valid_number_is_one_the_settings_table_accepts(option: str, text: str) -> None:
    _, kind, _, bounds = cli.OPTIONS[option]
    assert bounds is not None
    if cli.plainly_valid(kind, bounds, text):
        setting = next(s for s in SETTINGS if s.option == option)
        assert parse_value(setting, text) is not None


def argparse_reading(argv: list[str]) -> object:
    parser = cli.build_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            options = parser.parse_args(argv)
    except SystemExit as exc:
        return ("exit", exc.code)
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    return cli.option_variables(options), command


TOKENS = [
    *cli.OPTIONS,
    "--customer-id=a",
    "--customer-id=",
    "--disabled=yes",
    "--timeout=5",
    "--metrics-port=99999999999",
    "--log-level=INFO",
    "--cust",
    "--help",
    "-h",
    "--version",
    "--",
    "-",
    "-x",
    "-1",
    "",
    " 7 ",
    "0",
    "3",
    "nan",
    "acme",
    "a=b",
    "always",
    "never",
    "debug",
    "DEBUG",
    "json",
    "python",
    "app.py",
]


@pytest.mark.sdk_independent
@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_quick_parse_reads_every_command_line_as_argparse_does(argv: list[str]) -> None:
    quick = cli.quick_parse(argv)
    if quick is not None:
        assert quick == argparse_reading(argv)


def test_quick_parse_leaves_the_unusual_to_argparse() -> None:
    for argv in (
        [],
        ["--help"],
        ["--version"],
        ["--cust", "acme", "python"],  # an abbreviation argparse accepts
        ["--timeout", "nan", "python"],
        ["--log-level", "DEBUG", "python"],  # not one of the choices as written
        ["--customer-id"],
        ["--customer-id", "--", "python"],
        ["--disabled"],  # no command
        ["--", "--", "python"],
    ):
        assert cli.quick_parse(argv) is None, argv
    assert cli.quick_parse(["--customer-id", "a", "python", "--help"]) == (
        {"CMDRDATA_CUSTOMER_ID": "a"},
        ["python", "--help"],
    )


def test_which_finds_what_shutil_which_finds(tmp_path: Path) -> None:
    folders = [tmp_path / name for name in ("a", "b", "c", "d")]
    for folder in folders:
        folder.mkdir()
    (folders[0] / "tool").write_text("not executable")
    (folders[1] / "tool").mkdir()  # a folder of that name
    (folders[2] / "tool").write_text("#!/bin/sh\n")
    (folders[2] / "tool").chmod(0o755)
    (folders[3] / "tool").write_text("#!/bin/sh\n")
    (folders[3] / "tool").chmod(0o755)
    (folders[3] / "other").symlink_to(folders[2] / "tool")
    entries = [str(f) for f in folders]
    paths = [
        os.pathsep.join(entries),
        os.pathsep.join([entries[0], "", entries[0], entries[3]]),
        os.pathsep.join(entries[:2]),
        "",
        os.pathsep,
        str(tmp_path / "missing"),
    ]
    for path in paths:
        for name in ("tool", "other", "nothing"):
            assert cli.which(name, path) == shutil.which(name, path=path), (name, path)


def test_the_launcher_answers_as_before(fake: FakeOpenAI) -> None:
    env = app_env(fake)
    code = "import os; print(os.environ['CMDRDATA_CUSTOMER_ID'], os.environ['CMDRDATA_LOG_LEVEL'])"
    quick = run(
        [RUN, "--customer-id", "acme", "--log-level=debug", sys.executable, "-c", code], env
    )
    assert quick.returncode == 0 and quick.stdout.split() == ["acme", "debug"], quick.stderr
    customer = "import os; print(os.environ['CMDRDATA_CUSTOMER_ID'])"
    abbreviated = run([RUN, "--cust", "acme", sys.executable, "-c", customer], env)  # argparse's
    assert abbreviated.returncode == 0 and abbreviated.stdout.strip() == "acme"
    bad = run([RUN, "--log-level", "loud", sys.executable, "-c", code], env)
    assert bad.returncode == 2 and "--log-level: 'loud' is not one of" in bad.stderr
    assert run([RUN, "--customer-id"], env).returncode == 2
    missing = run([RUN, "--disabled", "no-such-command-xyz"], env)
    assert missing.returncode == 127
    assert missing.stderr.strip() == "cmdrdata-run: no-such-command-xyz: command not found"


@pytest.mark.parametrize("option", ["--ledger", "--ledg"])  # read by hand, and by argparse
def test_the_ledger_option_sets_its_variable(fake: FakeOpenAI, option: str) -> None:
    """It was dropped: argparse stored it as ``ledger``, the launcher read ``ledger_path``."""
    code = "import os; print(os.environ['CMDRDATA_LEDGER_PATH'])"
    result = run([RUN, option, "/tmp/given.sqlite3", sys.executable, "-c", code], app_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/tmp/given.sqlite3"


def test_every_option_reaches_its_variable_through_argparse() -> None:
    for option, (variable, kind, choices, _) in cli.OPTIONS.items():
        value = [] if kind == "bool" else [choices[0] if choices else "7"]
        argv = [option, *value, "python"]
        expected = {variable: value[0] if value else "true"}
        assert cli.quick_parse(argv) == (expected, ["python"])
        assert cli.option_variables(cli.build_parser().parse_args(argv)) == expected


def test_bootstrap_dir_is_the_sitecustomize_folder() -> None:
    folder = Path(cli.BOOTSTRAP_DIR)
    assert (folder / "sitecustomize.py").is_file() and folder.is_absolute()
    assert str(folder.resolve()) == cli.BOOTSTRAP_DIR
