"""The ``pulse`` command: one sub-command per module ``pulse.cli.cmd_<name>``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status). This module wires them into argparse, configures
structlog output (the library itself never does) and turns Ctrl-C into a clean exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from pulse import __version__
from pulse.cli._errors import describe, reportable
from pulse.cli._run import only_interrupts
from pulse.cli.logs import configure_logging
from pulse.errors import NoPlugin

COMMANDS = ("serve", "ping", "keepalive", "agent", "watch", "demo", "member", "run")


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"pulse.cli.cmd_{name}")


def add_log_options(parser: argparse.ArgumentParser, *, default_format: str,
                    default_level: str) -> None:
    """``--log-format`` and ``--log-level``, accepted before and after the sub-command."""
    parser.add_argument(
        "--log-format", choices=("console", "json"), default=default_format,
        help="how state-change events are printed on stderr (default: console)",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=default_level,
        help="least severe event printed (default: warning)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by the tests)."""
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Keep connections and sessions alive and tell, fast, when a peer is gone.",
    )
    parser.add_argument("--version", action="version", version=f"pulse {__version__}")
    add_log_options(parser, default_format="console", default_level="warning")
    # The same options after the sub-command: SUPPRESS keeps an absent option from
    # overwriting a value given before the sub-command.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_log_options(common, default_format=argparse.SUPPRESS, default_level=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _load(name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP,
                                 parents=[common])
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pulse`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        status: int = args._run(args)
    except BaseException as error:
        if only_interrupts(error):
            print("interrupted", file=sys.stderr)
            return 130
        lone = reportable(error)
        if lone is not None:
            # A bad URL, an unknown scheme, a capability a plugin lacks, a port in use, an
            # unreachable or misbehaving server: one line saying what is wrong, no traceback.
            print(f"pulse {args.command}: {describe(lone)}", file=sys.stderr)
            return 2 if isinstance(lone, ValueError | NoPlugin) else 1
        raise
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
