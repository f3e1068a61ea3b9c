"""The anchor of bench_hold: a ``websockets`` (asyncio) server keeping connections alive itself.

Run: ``python benchmarks/anchor_ws_server.py --port PORT [--interval 1] [--timeout 3]``

Every connection is held until the client leaves; the library's own keepalive pings each one
every ``--interval`` seconds and drops it when a pong is ``--timeout`` seconds late.
Compression is off (``compression=None``) so no extension is negotiated. Prints
``listening on ws://HOST:PORT`` once bound; SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from websockets.asyncio.server import ServerConnection, serve


async def hold(ws: ServerConnection) -> None:
    await ws.wait_closed()


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set_result, None)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(hold, args.host, args.port, ping_interval=args.interval,
                     ping_timeout=args.timeout, compression=None, backlog=args.backlog):
        print(f"listening on ws://{args.host}:{args.port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--backlog", type=int, default=4096,
                        help="listen backlog (trio listens with the system maximum, 4096 here)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
