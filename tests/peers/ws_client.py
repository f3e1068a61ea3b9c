"""A WebSocket client built on the `websockets` library, run as its own process.

Prints one JSON line per event: ``{"event": "open"}``, ``{"event": "echo", "data": ...}``,
``{"event": "closed", "code": c, "reason": r}``, ``{"event": "error", "reason": r}``.

``--count N``: send N text messages ``m0``… and expect each echoed back (``--every S``
seconds apart). ``--hold``: afterwards stay connected, idle, until the server closes.
``--ping-interval`` / ``--ping-timeout``: the library's own keepalive (default: off, so only
the server's heartbeats are in play).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def emit(**fields: object) -> None:
    """One JSON event line on stdout."""
    print(json.dumps(fields), flush=True)


async def main() -> int:
    """Connect, exchange, report; exit status 0 when every echo came back."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--every", type=float, default=0.0)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--ping-interval", type=float, default=None)
    parser.add_argument("--ping-timeout", type=float, default=None)
    args = parser.parse_args()
    try:
        async with connect(args.url, ping_interval=args.ping_interval,
                           ping_timeout=args.ping_timeout, compression=None,
                           open_timeout=5) as ws:
            emit(event="open")
            for i in range(args.count):
                await ws.send(f"m{i}")
                reply = await asyncio.wait_for(ws.recv(), 5)
                emit(event="echo", data=reply)
                if reply != f"m{i}":
                    return 1
                if args.every:
                    await asyncio.sleep(args.every)
            if args.hold:
                try:
                    async for message in ws:
                        emit(event="message", data=message)
                except ConnectionClosed:
                    pass
                emit(event="closed", code=ws.close_code, reason=ws.close_reason)
    except (TimeoutError, OSError, ConnectionClosed) as exc:
        emit(event="error", reason=repr(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
