"""``cmdrdata-autotrack COMMAND``: report and reconcile usage, check the set-up, flush the spool.

``cmdrdata-autotrack run ...`` is the Python launcher, ``cmdrdata-run``'s answer to any
command line its shell script leaves to Python (options, ``--help``, a command not
found): it is read before anything else is imported, so it costs what the launcher
costs.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from .._version import __version__
    from . import doctor, flush, reconcile, report

    parser = argparse.ArgumentParser(
        prog="cmdrdata-autotrack",
        description="Operate the cmdrdata usage-metering agent. "
        "To run an app with metering, use cmdrdata-run.",
    )
    parser.add_argument("--version", action="version", version=f"cmdrdata-autotrack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(  # read by main() before argparse: listed here for --help
        "run",
        help="run COMMAND with metering: the same as cmdrdata-run [options] [--] COMMAND",
        add_help=False,
    )
    report.add_parser(commands)
    reconcile.add_parser(commands)
    doctor.add_parser(commands)
    flush.add_parser(commands)
    flush.add_dead_letters_parser(commands)
    from . import limits  # per-customer limits (docs/limits.md)

    limits.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from ..launcher.cli import main as launch

        return launch(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
