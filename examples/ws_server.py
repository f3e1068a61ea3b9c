"""A WebSocket server that heartbeats every client and drops the dead ones.

Run:  python examples/ws_server.py [PORT]      (default 8765; 0 picks a free port)

Every message is echoed back to its sender. Each client is pinged after 1 s of silence and
dropped (close code 1011) after 3 s without any frame from it; the server prints who came,
who left and why. Try it with examples/ws_client.py, then kill -STOP the client.
"""

from __future__ import annotations

import functools
import sys

import trio

from pulse import HeartbeatPolicy, PulseError
from pulse.plugins.websocket import Dropped, Overflow, ServerConnection, serve


async def handle(conn: ServerConnection) -> None:
    """Echo until the client leaves; say how it left."""
    print(f"{conn.remote} connected (path {conn.path})", flush=True)
    try:
        async for message in conn:
            await conn.send(message)
    except PulseError as exc:  # send() after the client was declared dead
        print(f"{conn.remote} send failed: {exc}", flush=True)
    print(f"{conn.remote} left: code {conn.close_code}, {conn.close_reason}", flush=True)


def report_drop(dropped: Dropped) -> None:
    """Nothing is lost silently: the server says which echoes it could not deliver."""
    certainty = "possibly lost" if dropped.possibly_delivered else "not sent"
    print(f"{dropped.peer} {certainty}: {dropped.message!r} ({dropped.reason})", flush=True)


async def main(port: int) -> None:
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    start = functools.partial(serve, handle, "127.0.0.1", port, policy=policy, queue_size=64,
                              overflow=Overflow.DROP_OLDEST, on_drop=report_drop)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(start)
        print(f"listening on ws://127.0.0.1:{server.port}/", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    except KeyboardInterrupt:
        pass
