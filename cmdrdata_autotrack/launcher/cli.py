"""``cmdrdata-run [options] [--] COMMAND [ARGS...]``

Puts the bootstrap ``sitecustomize`` first on ``PYTHONPATH``, turns options into
the environment variables they stand for, and replaces itself with COMMAND
(``exec``), so signals, exit codes and stdio are the app's own. Python
subprocesses inherit the environment and are instrumented too; a process is
never instrumented twice.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .._version import __version__
from ..config import SETTINGS, Setting, parse_value

BOOTSTRAP_DIR = str(Path(__file__).resolve().parent.parent / "_sitecustomize")
PROG = "cmdrdata-run"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] [--] COMMAND [ARGS...]",
        description=(
            "Run COMMAND with every billable OpenAI call metered per customer. "
            "Each option sets the environment variable named in its help; "
            "an option overrides its variable."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} python app.py\n"
            f"  {PROG} --customer-id acme -- gunicorn app:server\n"
            f"  {PROG} --traces-exporter console python -m mypkg"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for setting in SETTINGS:
        if setting.option is None:
            continue
        limits = f" ({setting.expects()})" if setting.kind in ("int", "float") else ""
        help_text = f"{setting.help}{limits} [{setting.env}]"
        if setting.kind == "bool":
            parser.add_argument(setting.option, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(
                setting.option,
                metavar=setting.name.upper(),
                choices=setting.choices or None,
                type=checked(setting),
                help=help_text,
            )
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def checked(setting: Setting) -> Callable[[str], str]:
    """An option type that refuses what the variable would refuse (exit status 2, at once,
    instead of a warning in the app); the text itself is passed on unchanged."""

    def check(text: str) -> str:
        try:
            parse_value(setting, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {setting.expects()}") from None
        return text

    check.__name__ = setting.name  # argparse names the type in some messages
    return check


def child_environment(options: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    for setting in SETTINGS:
        value = getattr(options, setting.name, None) if setting.option else None
        if value is None:
            continue
        env[setting.env] = "true" if value is True else str(value)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [BOOTSTRAP_DIR] + [p for p in paths if os.path.abspath(p) != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def resolve_command(command: str, path: str | None) -> str | None:
    if os.sep in command or (os.altsep and os.altsep in command):
        return command if os.path.isfile(command) else None
    return shutil.which(command, path=path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: no command given", file=sys.stderr)
        return 2
    env = child_environment(options, os.environ)
    executable = resolve_command(command[0], env.get("PATH"))
    if executable is None:
        print(f"{PROG}: {command[0]}: command not found", file=sys.stderr)
        return 127
    try:
        os.execve(executable, command, env)
    except OSError as exc:
        print(f"{PROG}: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
