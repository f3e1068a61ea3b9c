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
from pulse._trio.util import lone_exception
from pulse.cli._run import only_interrupts
from pulse.cli.logs import configure_logging
from pulse.errors import NoPlugin, PulseError

COMMANDS = ("serve", "ping", "keepalive", "agent", "watch", "demo")


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"pulse.cli.cmd_{name}")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by the tests)."""
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Keep connections and sessions alive and tell, fast, when a peer is gone.",
    )
    parser.add_argument("--version", action="version", version=f"pulse {__version__}")
    parser.add_argument(
        "--log-format", choices=("console", "json"), default="console",
        help="how state-change events are printed on stderr (default: console)",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="warning",
        help="least severe event printed (default: warning)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _load(name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
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
        lone = lone_exception(error) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(lone, PulseError | ValueError | OSError):
            # A bad URL, an unknown scheme, a capability a plugin lacks, a port in use:
            # one line saying what is wrong, not a traceback.
            print(f"pulse {args.command}: {lone}", file=sys.stderr)
            return 2 if isinstance(lone, ValueError | NoPlugin) else 1
        raise
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
