"""``pulse serve`` on asyncio or uvloop: the same listeners, under ``asyncio.run``/``uvloop.run``.

Run: ``python benchmarks/pulse_aio_server.py --loop asyncio --listen ws://127.0.0.1:PORT --interval 1``

The ``pulse`` command is an application on trio; this script serves the same URLs with the
same plugin entries ``pulse serve`` uses (``serve_function(url)`` of :mod:`pulse.registry`:
for ``ws://`` :func:`pulse.plugins.websocket.serve_websocket` with the ``echo`` handler, for
``tcp://`` :func:`pulse.plugins.tcp.serve_tcp` with its ``echo``), the same
:class:`~pulse.registry.ServeOptions` and the same logging set-up, but on an asyncio loop
(``--loop asyncio``, the default) or on uvloop (``--loop uvloop``). It prints
``pulse: listening on URL`` once bound, as ``pulse serve`` does; SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from pulse.cli.cmd_serve import _describe  # the line pulse serve prints
from pulse.cli.logs import configure_logging
from pulse.registry import ServeOptions, serve_function


async def serve(urls: list[str], options: ServeOptions) -> None:
    """Start every listener, print where each listens, serve until SIGINT or SIGTERM."""
    targets = [serve_function(url) for url in urls]
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as group:
            for url, (endpoint, serve_one) in zip(urls, targets, strict=True):
                listeners = await group.start(serve_one, endpoint, options)
                print(f"pulse: listening on {_describe(url, listeners)}", flush=True)
            async for _ in signals:
                break
            group.cancel_scope.cancel()


def runner(loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``asyncio.run`` or ``uvloop.run``."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run
    import asyncio

    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--listen", action="append", required=True, metavar="URL")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S")
    parser.add_argument("--timeout", type=float, default=None, metavar="S")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="warning")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    options = ServeOptions(interval=args.interval, timeout=args.timeout, profile=args.profile)
    runner(args.loop)(serve(args.listen, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
