"""``cmdrdata-autotrack COMMAND``: report and reconcile usage, check the set-up, flush the spool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from . import doctor, flush, reconcile, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmdrdata-autotrack",
        description="Operate the cmdrdata usage-metering agent. "
        "To run an app with metering, use cmdrdata-run.",
    )
    parser.add_argument("--version", action="version", version=f"cmdrdata-autotrack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report.add_parser(commands)
    reconcile.add_parser(commands)
    doctor.add_parser(commands)
    flush.add_parser(commands)
    flush.add_dead_letters_parser(commands)
    from . import limits  # per-customer limits (docs/limits.md)

    limits.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
