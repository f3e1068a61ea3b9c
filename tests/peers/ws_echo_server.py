"""A WebSocket echo server built on the `websockets` library (a peer pulse did not write).

Run as its own process by the end-to-end tests. It prints ``PORT <n>`` once listening, then
one JSON line per event on stdout: ``{"event": "open", "conn": n}``,
``{"event": "message", "conn": n, "data": ...}`` (text only; binary as ``"<N bytes>"``) and
``{"event": "close", "conn": n, "code": c}``. It echoes every message back. A text message
``!close <code> <reason>`` makes it close that connection with that code instead;
``!flood <count> <size>`` makes it send ``count`` text messages of ``size`` characters.

Options: ``--port`` (0: any free port), ``--ping-interval`` / ``--ping-timeout``
(seconds; default: the server sends no pings, so only the client's heartbeats are in play),
``--subprotocol`` (accepted when offered), ``--require-header NAME=VALUE`` (refuse the
upgrade with HTTP 403 without it), ``--certfile`` / ``--keyfile`` (serve wss://),
``--quiet`` (no message events).
"""

from __future__ import annotations

import argparse
import asyncio
import http
import itertools
import json
import ssl
import sys
import time

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)
QUIET = "--quiet" in sys.argv


def emit(**fields: object) -> None:
    """One JSON event line on stdout."""
    print(json.dumps(fields), flush=True)


async def handler(ws: ServerConnection) -> None:
    """Echo; log every message; obey ``!close``."""
    conn = next(_ids)
    emit(event="open", conn=conn, path=ws.request.path if ws.request else "",
         subprotocol=ws.subprotocol, t=time.monotonic())
    try:
        async for message in ws:
            if not QUIET:
                shown = message if isinstance(message, str) else f"<{len(message)} bytes>"
                emit(event="message", conn=conn, data=shown)
            if isinstance(message, str) and message.startswith("!close "):
                _, code, *reason = message.split(" ", 2)
                await ws.close(int(code), reason[0] if reason else "")
                break
            if isinstance(message, str) and message.startswith("!flood "):
                _, count, size = message.split()
                for i in range(int(count)):
                    await ws.send(f"f{i} ".ljust(int(size), "."))
                emit(event="flooded", conn=conn, count=int(count))
                continue
            await ws.send(message)
    except ConnectionClosed:
        pass
    emit(event="close", conn=conn, code=ws.close_code)


async def main() -> None:
    """Parse options, listen, print the port, serve forever."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ping-interval", type=float, default=None)
    parser.add_argument("--ping-timeout", type=float, default=None)
    parser.add_argument("--subprotocol", action="append", default=[])
    parser.add_argument("--require-header", default=None)
    parser.add_argument("--quiet", action="store_true", help="no message events (benchmarks)")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()

    def process_request(connection, request):  # type: ignore[no-untyped-def]
        if args.require_header:
            name, _, value = args.require_header.partition("=")
            if request.headers.get(name) != value:
                return connection.respond(http.HTTPStatus.FORBIDDEN, "missing header\n")
        return None

    context = None
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
    async with serve(
        handler, "127.0.0.1", args.port, ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        subprotocols=args.subprotocol or None, process_request=process_request, ssl=context,
        compression=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
