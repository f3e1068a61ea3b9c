"""Run one ``pulse`` sub-command module on its own: ``python -m pulse.cli.cmd_<name> …``.

``pulse demo`` starts its agents this way (it imports only what an agent needs, so agents
start faster than through the full ``pulse`` parser) and tests use it to run a command in a
subprocess. Options are exactly the sub-command's, plus ``--log-format``/``--log-level``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from pulse.cli.logs import configure_logging


def standalone(module: ModuleType, name: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``module.add_arguments``, configure logging, run; exit status."""
    parser = argparse.ArgumentParser(prog=f"pulse {name}", description=module.HELP)
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="warning")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    status: int = module.run(args)
    return status
