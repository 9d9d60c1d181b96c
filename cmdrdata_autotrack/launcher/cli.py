"""``cmdrdata-run [options] [--] COMMAND [ARGS...]``

Puts the bootstrap ``sitecustomize`` first on ``PYTHONPATH``, turns options into
the environment variables they stand for, and replaces itself with COMMAND
(``exec``), so signals, exit codes and stdio are the app's own. Python
subprocesses inherit the environment and are instrumented too; a process is
never instrumented twice.

The launcher is one more interpreter start in front of the app, so its usual path
imports nothing the interpreter has not loaded already: a command line of exact
option names and good values is read by :func:`quick_parse`, with :data:`OPTIONS`,
and anything else (``--help``, ``--version``, an abbreviation, a bad value, no
command) goes to :mod:`argparse`, which answers exactly as it always has.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from ..config import Setting

    Option = tuple[str, str, tuple[str, ...], tuple[float, float] | None]

# The options of ``config.SETTINGS`` (variable, kind, choices, a number's range): enough to
# read the usual command line without importing the settings table, which costs more than
# the rest of the launcher (dataclasses, logging, typing). tests/test_startup.py checks that
# it is exactly the table's; the table checks any number that is not plainly valid, and
# argparse answers everything else.
OPTIONS: dict[str, Option] = {
    "--disabled": ("CMDRDATA_DISABLED", "bool", (), None),
    "--api-key": ("CMDRDATA_API_KEY", "str", (), None),
    "--endpoint": ("CMDRDATA_ENDPOINT", "str", (), None),
    "--timeout": ("CMDRDATA_TIMEOUT", "float", (), (0.01, 600)),
    "--batch-size": ("CMDRDATA_BATCH_SIZE", "int", (), (1, 1000)),
    "--spool-dir": ("CMDRDATA_SPOOL_DIR", "str", (), None),
    "--ledger": ("CMDRDATA_LEDGER_PATH", "str", (), None),
    "--metrics-port": ("CMDRDATA_METRICS_PORT", "int", (), (1, 65535)),
    "--customer-id": ("CMDRDATA_CUSTOMER_ID", "str", (), None),
    "--stream-usage": ("CMDRDATA_STREAM_USAGE", "choice", ("auto", "always", "never"), None),
    "--capture-content": ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "bool", (), None),
    "--traces-exporter": ("OTEL_TRACES_EXPORTER", "str", (), None),
    "--service-name": ("OTEL_SERVICE_NAME", "str", (), None),
    "--log-level": (
        "CMDRDATA_LOG_LEVEL",
        "choice",
        ("debug", "info", "warning", "error", "critical"),
        None,
    ),
    "--log-format": ("CMDRDATA_LOG_FORMAT", "choice", ("text", "json"), None),
    "--limits": ("CMDRDATA_LIMITS_FILE", "str", (), None),
}

BOOTSTRAP_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "_sitecustomize"
)
PROG = "cmdrdata-run"


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from .._version import __version__
    from ..config import SETTINGS

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
        # dest: the setting's name, which the option's spelling need not be (--ledger)
        if setting.kind == "bool":
            parser.add_argument(
                setting.option,
                dest=setting.name,
                action="store_true",
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                setting.option,
                dest=setting.name,
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
    import argparse

    from ..config import parse_value

    def check(text: str) -> str:
        try:
            parse_value(setting, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {setting.expects()}") from None
        return text

    check.__name__ = setting.name  # argparse names the type in some messages
    return check


def parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The variables the options set, and the command; argparse's answer when
    :func:`quick_parse` leaves the command line to it (it may exit: help, version, errors)."""
    quick = quick_parse(argv)
    if quick is not None:
        return quick
    parser = build_parser()
    options = parser.parse_args(argv)
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    return option_variables(options), command


def option_variables(options: argparse.Namespace) -> dict[str, str]:
    from ..config import SETTINGS

    variables: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(options, setting.name, None) if setting.option else None
        if value is not None:
            variables[setting.env] = "true" if value is True else str(value)
    return variables


def quick_parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str]] | None:
    """The usual command line, read without argparse, exactly as argparse reads it.

    ``None`` for anything argparse has more to say about: an option that is not
    spelled out in full (``--help``, ``--version``, an abbreviation, a typo), an
    option without its value, a value that starts with ``-`` or that the variable
    would refuse, and a missing command.
    """
    if not argv:
        return None
    if not argv[0].startswith("-"):
        return {}, list(argv)  # no options
    variables: dict[str, str] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            command = list(argv[index + 1 :])
            if not command or command[0] == "--":
                return None
            return variables, command
        if token == "-":
            return None
        if not token.startswith("-"):
            return variables, list(argv[index:])
        name, has_value, value = token.partition("=")
        if name not in OPTIONS:
            return None
        variable, kind, choices, bounds = OPTIONS[name]
        if kind == "bool":
            if has_value:
                return None
            variables[variable] = "true"
            index += 1
            continue
        if not has_value:
            if index + 1 == len(argv) or argv[index + 1].startswith("-"):
                return None
            index += 1
            value = argv[index]
        if not _accepted(name, kind, choices, bounds, value):
            return None
        variables[variable] = value
        index += 1
    return None  # options only: no command


def _accepted(
    option: str,
    kind: str,
    choices: tuple[str, ...],
    bounds: tuple[float, float] | None,
    value: str,
) -> bool:
    """What argparse accepts: any text, an exact choice, or a number the table accepts."""
    if kind == "choice":
        return value in choices  # exact, as argparse checks choices (and they parse)
    if kind not in ("int", "float"):
        return True  # text: every value parses
    if bounds is not None and plainly_valid(kind, bounds, value):
        return True
    from ..config import SETTINGS, parse_value

    setting = next(s for s in SETTINGS if s.option == option)
    try:
        parse_value(setting, value)
    except ValueError:
        return False
    return True


def plainly_valid(kind: str, bounds: tuple[float, float], value: str) -> bool:
    """A number the settings table surely accepts: ASCII digits (and one decimal point for
    a float) within its range. ``False`` says only "ask the table"."""
    text = value.strip()
    whole, point, fraction = text.partition(".")
    digits = whole + fraction
    if not 0 < len(whole) <= 9 or len(fraction) > 9 or (point and kind == "int"):
        return False
    if not (digits.isascii() and digits.isdigit()):
        return False
    number = int(text) if kind == "int" else float(text)
    return bounds[0] <= number <= bounds[1]


def child_environment(variables: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    env.update(variables)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [BOOTSTRAP_DIR] + [p for p in paths if os.path.abspath(p) != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def resolve_command(command: str, path: str | None) -> str | None:
    if os.sep in command or (os.altsep and os.altsep in command):
        return command if os.path.isfile(command) else None
    if os.name != "posix":
        import shutil

        return shutil.which(command, path=path)
    return which(command, path)


def which(command: str, path: str | None) -> str | None:
    """``shutil.which`` for a bare name on POSIX, without importing shutil (and with it
    fnmatch, zlib, bz2 and lzma): the first executable file of that name on ``path``."""
    if path is None:
        path = os.environ.get("PATH")
        if path is None:
            try:
                path = os.confstr("CS_PATH")
            except (AttributeError, ValueError):
                path = os.defpath
    if not path:
        return None
    seen: set[str] = set()
    for folder in os.fsdecode(path).split(os.pathsep):
        normal = os.path.normcase(folder)
        if normal in seen:
            continue
        seen.add(normal)
        candidate = os.path.join(folder, command)
        if (
            os.path.exists(candidate)
            and os.access(candidate, os.F_OK | os.X_OK)
            and not os.path.isdir(candidate)
        ):
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    variables, command = parse(sys.argv[1:] if argv is None else argv)
    if not command:
        build_parser().print_usage(sys.stderr)
        print(f"{PROG}: error: no command given", file=sys.stderr)
        return 2
    env = child_environment(variables, os.environ)
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
