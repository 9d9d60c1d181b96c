"""``cmdrdata-run`` in sh (``scripts/cmdrdata-run``): the usual command line costs no
interpreter start, and gives the command what the Python launcher would.

Each test lays out an install the way pip lays one out (the script in ``bin/``, the
package in the site-packages beside it, here a link to this checkout's), and puts a
stand-in ``cmdrdata-autotrack`` next to the script that says it was asked: so a test
sees whether the script handled the command line itself or left it to Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_startup import TOKENS

import cmdrdata_autotrack
from cmdrdata_autotrack.launcher import cli

pytestmark = pytest.mark.sdk_independent

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cmdrdata-run"
PACKAGE = Path(cmdrdata_autotrack.__file__).resolve().parent
BOOT = str(PACKAGE / "_sitecustomize")
# What the command saw: its arguments and environment.
SHOW = (
    "import json, os, sys; "
    "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), "
    "'boot': 'sitecustomize' in sys.modules and sys.modules['sitecustomize'].__file__}))"
)
FALLBACK = '#!/bin/sh\necho "python launcher: $*"\nexit 42\n'


def install(
    prefix: Path, where: str = "lib/python3.11/site-packages", fallback: bool = True
) -> Path:
    """A pip-like install under ``prefix``: bin/cmdrdata-run and the package in ``where``."""
    bin_dir = prefix / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "cmdrdata-run"
    shutil.copy(SCRIPT, script)
    if fallback:
        stand_in = bin_dir / "cmdrdata-autotrack"
        stand_in.write_text(FALLBACK)
        stand_in.chmod(0o755)
    if where:
        site = prefix / where
        site.mkdir(parents=True, exist_ok=True)
        (site / "cmdrdata_autotrack").symlink_to(PACKAGE)
    return script


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    base.update(PWD=os.getcwd())  # sh sets PWD to the current folder: the same here
    base.update(extra)
    return base


def run(
    args: list[str], environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=environment or env(), capture_output=True, text=True, timeout=60
    )


def shown(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr + result.stdout
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_the_usual_command_line_is_handled_in_sh(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    seen = shown(run([str(script), sys.executable, "-c", SHOW, "a b", "", "--help", "é"]))
    assert seen["argv"] == ["a b", "", "--help", "é"]
    assert seen["boot"] == os.path.join(BOOT, "sitecustomize.py")  # the bootstrap ran
    assert seen["env"]["PYTHONPATH"] == BOOT  # type: ignore[index]


def test_it_gives_the_command_what_the_python_launcher_gives(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    for extra in ({}, {"PYTHONPATH": "/some/where:/else"}):
        by_sh = shown(run([str(script), sys.executable, "-c", SHOW, "x"], env(**extra)))
        by_python = shown(
            run(
                [
                    sys.executable,
                    "-m",
                    "cmdrdata_autotrack.launcher.cli",
                    sys.executable,
                    "-c",
                    SHOW,
                    "x",
                ],
                env(**extra),
            )
        )
        assert by_sh == by_python
    assert by_sh["env"]["PYTHONPATH"] == f"{BOOT}:/some/where:/else"  # type: ignore[index]


def test_exit_status_and_stdio_are_the_commands(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    code = "import sys; print(sys.stdin.read().upper()); sys.exit(7)"
    result = subprocess.run(
        [str(script), sys.executable, "-c", code],
        env=env(),
        input="hi",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (7, "HI\n")
    assert "python launcher" not in result.stdout


@pytest.mark.parametrize(
    "where",
    [
        "lib/python3.12/site-packages",
        "lib/python3.11/dist-packages",  # Debian's pip, /usr/local
        "lib/python3/dist-packages",  # Debian's own packages
        "lib/python/site-packages",  # a macOS user install
    ],
)
def test_the_package_is_found_in_each_layout(tmp_path: Path, where: str) -> None:
    script = install(tmp_path / "prefix", where)
    assert shown(run([str(script), sys.executable, "-c", SHOW]))["boot"] == os.path.join(
        BOOT, "sitecustomize.py"
    )


def test_an_editable_install_is_found_through_its_pth_file(tmp_path: Path) -> None:
    script = install(tmp_path / "venv", where="")
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "_editable_impl_cmdrdata_autotrack.pth").write_text(f"{PACKAGE.parent}\n")
    assert shown(run([str(script), sys.executable, "-c", SHOW]))["env"]["PYTHONPATH"] == BOOT  # type: ignore[index]


def test_a_linked_script_finds_its_install(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")  # as pipx links it into ~/.local/bin
    links = tmp_path / "local" / "bin"
    links.mkdir(parents=True)
    (links / "cmdrdata-run").symlink_to(os.path.relpath(script, links))
    result = run([str(links / "cmdrdata-run"), sys.executable, "-c", SHOW])
    assert shown(result)["env"]["PYTHONPATH"] == BOOT  # type: ignore[index]


def test_the_real_physical_folder_is_put_on_the_path(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")  # the package is a link: its target is named
    seen = shown(run([str(script), sys.executable, "-c", SHOW]))
    assert seen["env"]["PYTHONPATH"] == cli.BOOTSTRAP_DIR  # type: ignore[index]


def test_the_command_is_looked_up_on_path(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "not-executable").write_text("#!/bin/sh\necho wrong\n")
    later = tmp_path / "later"
    later.mkdir()
    (later / "py").symlink_to(sys.executable)
    (later / "not-executable").write_text("#!/bin/sh\necho right\n")
    (later / "not-executable").chmod(0o755)
    path = f"{tools}:{later}:{os.environ['PATH']}"
    result = run([str(script), "not-executable"], env(PATH=path))
    assert (result.returncode, result.stdout) == (0, "right\n")
    assert shown(run([str(script), "py", "-c", SHOW], env(PATH=path)))["boot"]


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["--timeout", "5", "python"], {}),  # a number: the Python launcher checks it
        (["--cust", "acme", "python"], {}),  # an abbreviation (argparse takes it)
        (["--customer-id", "-x", "python"], {}),  # a value like an option: argparse says
        (["--stream-usage", "NEVER", "python"], {}),  # not a choice as written
        (["--disabled=1", "python"], {}),
        (["--customer-id"], {}),
        (["--disabled"], {}),
        (["--", "--", "python"], {}),
        (["-", "python"], {}),
        (["--help"], {}),
        (["--version"], {}),
        ([], {}),  # no command
        ([""], {}),
        (["no-such-command-xyz"], {}),  # "command not found", in the launcher's words
        (["./no/such/file"], {}),
        (["python"], {"PATH": f":{os.environ['PATH']}"}),  # the current folder on PATH
        (["python"], {"PATH": f"{os.environ['PATH']}::/bin"}),
        (["python"], {"PYTHONPATH": "/a::/b"}),  # an empty entry: the current folder
        (["python"], {"PYTHONPATH": f"{BOOT}:/a"}),  # a launcher under a launcher
    ],
)
def test_anything_unusual_goes_to_the_python_launcher(
    tmp_path: Path, args: list[str], extra: dict[str, str]
) -> None:
    script = install(tmp_path / "venv")
    result = run([str(script), *args], env(**extra))
    assert (result.returncode, result.stdout) == (
        42,
        f"python launcher: {' '.join(['run', *args])}\n",
    )


def test_a_file_that_is_not_executable_goes_to_the_python_launcher(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    assert run([str(script), str(plain)]).returncode == 42


def test_no_package_or_two_go_to_the_python_launcher(tmp_path: Path) -> None:
    none = install(tmp_path / "none", where="")
    assert run([str(none), sys.executable, "-c", "pass"]).returncode == 42
    two = install(tmp_path / "two", "lib/python3.11/site-packages")
    (tmp_path / "two" / "lib" / "python3.12" / "site-packages").mkdir(parents=True)
    (tmp_path / "two" / "lib" / "python3.12" / "site-packages" / "cmdrdata_autotrack").symlink_to(
        PACKAGE
    )
    assert run([str(two), sys.executable, "-c", "pass"]).returncode == 42


def test_without_its_python_launcher_it_says_so(tmp_path: Path) -> None:
    script = install(tmp_path / "venv", fallback=False)
    result = run([str(script), "--help"])
    assert result.returncode == 127
    assert result.stderr == f"cmdrdata-run: cmdrdata-autotrack is not installed next to {script}\n"


def test_the_installed_launchers_are_the_script_and_its_python_side() -> None:
    """The environment's own cmdrdata-run is this script; cmdrdata-autotrack run is the
    Python launcher, with its messages."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "cmdrdata-run").read_text() == SCRIPT.read_text()
    missing = run([str(bin_dir / "cmdrdata-autotrack"), "run", "no-such-command-xyz"])
    assert (missing.returncode, missing.stderr) == (
        127,
        "cmdrdata-run: no-such-command-xyz: command not found\n",
    )
    usage = run([str(bin_dir / "cmdrdata-autotrack"), "run"])
    assert usage.returncode == 2 and "cmdrdata-run: error: no command given" in usage.stderr
    helped = run([str(bin_dir / "cmdrdata-autotrack"), "--help"])
    assert helped.returncode == 0 and "run" in helped.stdout


def test_the_script_keeps_to_posix_sh(tmp_path: Path) -> None:
    """Run by bash in POSIX mode too (the script is meant for any /bin/sh)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    script = install(tmp_path / "venv")
    result = run([bash, "--posix", str(script), sys.executable, "-c", SHOW, "x"])
    assert shown(result)["argv"] == ["x"]


def test_options_are_read_in_sh_as_the_python_launcher_reads_them(tmp_path: Path) -> None:
    script = install(tmp_path / "venv")
    argv = [
        "--customer-id", "acme", "--stream-usage=never", "--disabled", "--log-level", "debug",
        "--customer-id=", "--service-name", "a b", "--capture-content", "--limits", "x=y",
        "--", sys.executable, "-c", SHOW, "--customer-id", "z",
    ]  # fmt: skip
    seen = shown(run([str(script), *argv]))
    variables, command = cli.quick_parse(argv) or ({}, [])
    assert seen["argv"] == command[3:] == ["--customer-id", "z"]
    assert {k: v for k, v in seen["env"].items() if k in variables} == variables  # type: ignore[union-attr]
    assert variables["CMDRDATA_CUSTOMER_ID"] == ""  # the last one wins, even if empty


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=5))
def test_a_command_line_is_read_in_sh_or_left_to_python(
    tmp_path_factory: pytest.TempPathFactory, words: list[str]
) -> None:
    """Whatever the options, the script runs the command with exactly the variables and
    arguments the Python launcher would give it, or leaves the command line to it; it
    leaves it only for a number, or for what the Python launcher itself would not read
    without argparse."""
    argv = [*words, sys.executable, "-c", SHOW]
    quick = cli.quick_parse(argv)
    assume(quick is None or quick[1][0] == sys.executable)  # a word of them is no command
    script = install(tmp_path_factory.mktemp("venv"))
    result = run([str(script), *argv], env(CMDRDATA_CUSTOMER_ID="from-env"))
    numbers = any(
        cli.OPTIONS.get(w.partition("=")[0], ("", "str"))[1] in ("int", "float") for w in words
    )
    if result.returncode == 42:  # left to the Python launcher
        assert quick is None or numbers, words
        return
    assert quick is not None, words
    variables, command = quick
    seen = shown(result)
    assert seen["argv"] == command[3:]
    expected = {"CMDRDATA_CUSTOMER_ID": "from-env", **variables}
    env_seen = seen["env"]
    assert isinstance(env_seen, dict)
    assert {k: env_seen.get(k) for k in expected} == expected


def test_the_scripts_option_table_is_the_launchers() -> None:
    found = re.findall(
        r'^ *(--[a-z-]+)\)\s+_cr_variable=(\S+) _cr_kind=("[^"]*"|\S+)', SCRIPT.read_text(), re.M
    )
    in_sh = {name: (variable, kind) for name, variable, kind in found}
    expected = {}
    for name, (variable, kind, choices, _) in cli.OPTIONS.items():
        if kind in ("int", "float"):
            continue  # checked by the Python launcher
        spelled = {"bool": "bool", "str": "text"}.get(kind, '" ' + " ".join(choices) + ' "')
        expected[name] = (variable, spelled)
    assert in_sh == expected


def test_the_callers_variables_reach_the_command_unchanged(tmp_path: Path) -> None:
    """The script's own variables never clash with the caller's: sh exports what it took
    from the environment, so an assignment to a name the caller set would change it."""
    script = install(tmp_path / "venv")
    text = SCRIPT.read_text()
    plain = set(re.findall(r"\b_cr_([a-z_]+?)(?:_\$|=|\b)", text))
    assert {"bin", "command", "name", "value", "count"} <= plain
    callers = {name: f"the caller's {name}" for name in plain}
    seen = shown(
        run([str(script), "--customer-id", "a", sys.executable, "-c", SHOW], env(**callers))
    )
    env_seen = seen["env"]
    assert isinstance(env_seen, dict)
    assert {name: env_seen.get(name) for name in callers} == callers
